"""Image families expose one feature map per resolution for dense heads (detection, segmentation)."""

import pytest
import torch

from bigmodel.models.registry import build_config, get_family

FAMILIES = ["cnn", "resnet", "efficientnet", "mobilenet_v2"]


@pytest.mark.parametrize("name", FAMILIES)
def test_feature_maps_are_finest_first_and_pool_into_the_features(name):
    family = get_family(name)
    torch.manual_seed(0)
    for preset in family.tiny_presets:
        config = build_config(family, {**family.presets[preset], "num_outputs": 0})
        model = family.model_cls(config).eval()
        (x,) = family.example_input(config)
        maps = model.feature_maps(x)
        assert [m.shape[1] for m in maps] == model.feature_channels
        sides = [m.shape[-1] for m in maps]
        assert sides == sorted(sides, reverse=True) and len(maps) >= 2, (preset, sides)
        assert maps[-1].shape[1] == model.feature_dim
        with torch.no_grad():  # the headless forward is the last map, pooled (dropout is off in eval)
            torch.testing.assert_close(model(x), maps[-1].mean(dim=(2, 3)))
