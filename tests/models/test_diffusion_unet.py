"""The diffusion U-Net: noise of the input's shape for any image size and patch size, conditioned on the
time step and the class ("no class" = the extra embedding row), and configs refused by field."""

from __future__ import annotations

import math

import pytest
import torch

from bigmodel.errors import RecipeError
from bigmodel.models.diffusion_unet import DiffusionUNetConfig, timestep_embedding
from bigmodel.models.registry import build_config, create_model, get_family

SMALL = {"channels": 8, "channel_mults": [1, 2, 3], "num_res_blocks": 1, "attention_levels": [1],
         "num_heads": 2, "norm_groups": 4, "dropout": 0.0}  # fmt: skip


@pytest.mark.parametrize(("patch_size", "size"), [(1, (9, 7)), (2, (9, 7)), (2, (28, 28)), (3, (10, 11))])
def test_output_has_the_input_shape_for_odd_sizes_and_patches(patch_size, size):
    torch.manual_seed(0)
    model = create_model(
        "diffusion_unet", in_channels=2, num_classes=4, patch_size=patch_size, **SMALL
    ).eval()
    x = torch.randn(3, 2, *size)
    eps = model(x, torch.tensor([0, 500, 999]), torch.tensor([0, 3, 4]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert model.stem.in_channels == 2 * patch_size**2  # a folded patch's pixels


def test_patches_are_folded_not_mixed_across_the_batch():
    """Each image's output depends on that image alone (padding and unshuffle are per image)."""
    torch.manual_seed(0)
    model = create_model("diffusion_unet", patch_size=2, **SMALL).eval()
    x, t = torch.randn(4, 1, 9, 7), torch.tensor([3, 30, 300, 900])
    with torch.no_grad():
        together = model(x, t)
        alone = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_class_and_time_step_change_the_prediction_and_none_is_the_null_class():
    torch.manual_seed(0)
    model = create_model("diffusion_unet", num_classes=3, **SMALL).eval()
    x = torch.randn(1, 1, 8, 8).repeat(2, 1, 1, 1)
    with torch.no_grad():
        by_class = model(x, torch.tensor([10, 10]), torch.tensor([0, 1]))
        by_time = model(x, torch.tensor([10, 700]), torch.tensor([0, 0]))
        none = model(x[:1], torch.tensor([10]), None)
        null = model(x[:1], torch.tensor([10]), torch.tensor([3]))
    assert not torch.allclose(by_class[0], by_class[1], atol=1e-4)
    assert not torch.allclose(by_time[0], by_time[1], atol=1e-4)
    assert torch.equal(none, null)
    assert model.class_embed.num_embeddings == 4  # 3 classes + "no class"
    assert create_model("diffusion_unet", num_classes=0, **SMALL).class_embed is None


def test_timestep_embedding_is_cosines_then_sines():
    t = torch.tensor([0.0, 1.0, 250.0])
    emb = timestep_embedding(t, 7)  # odd: a zero column at the end
    assert emb.shape == (3, 7) and torch.equal(emb[:, -1], torch.zeros(3))
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(3)]
    expected = [
        [math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in (0.0, 1.0, 250.0)
    ]
    torch.testing.assert_close(emb[:, :6], torch.tensor(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"norm_groups": 3}, "norm_groups 3 does not divide"),
        ({"attention_levels": [3]}, r"attention_levels \[3\]"),
        ({"num_heads": 3, "norm_groups": 1}, "num_heads 3 does not divide"),
        ({"channel_mults": []}, "channel_mults"),
        ({"patch_size": 0}, "patch_size must be >= 1"),
        ({"num_classes": -1}, "num_classes must be >= 0"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(override, message):
    with pytest.raises(RecipeError, match=message):
        build_config(get_family("diffusion_unet"), {**SMALL, **override})


def test_defaults_and_preset_build():
    config = DiffusionUNetConfig()
    assert config.time_dim == 4 * config.channels and config.widths == [32, 64, 64]
    model = create_model("diffusion-unet-small", num_classes=10)
    assert model.feature_dim == 64 and 0.5e6 < model.num_params() < 2e6
