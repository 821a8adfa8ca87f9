"""The unet family, its decoder on other backbones' feature maps, and the segmentation model built of
them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigmodel.errors import RecipeError
from bigmodel.models.registry import create_model, get_family
from bigmodel.models.unet import SegmentationModel, UNetDecoder


@pytest.mark.parametrize("size", [(16, 16), (13, 11), (3, 2), (1, 1)])
def test_logits_per_pixel_at_any_input_size(size):
    """Odd sizes pool down unevenly; every decoder step resizes to its skip, so the output is the input's
    size. Below 2x2 nothing more is pooled."""
    model = create_model("unet", input_shape=(2, 16, 16), num_outputs=3, channels=[4, 6, 8, 5]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, *size))
    assert out.shape == (2, 3, *size)
    maps = model.feature_maps(torch.randn(1, 2, 13, 11))
    assert [tuple(m.shape[-2:]) for m in maps] == [(13, 11), (6, 5), (3, 2), (1, 1)]
    assert [m.shape[1] for m in maps] == model.feature_channels == [4, 6, 8, 5]


def test_headless_returns_the_per_pixel_features_the_head_reads():
    torch.manual_seed(0)
    headed = create_model("unet-tiny").eval()
    headless = create_model("unet-tiny", num_outputs=0).eval()
    assert headless.head is None and headless.per_pixel
    headless.load_state_dict({k: v for k, v in headed.state_dict().items() if not k.startswith("head.")})
    x = torch.randn(3, 3, 13, 11)
    with torch.no_grad():
        features = headless(x)
        assert features.shape == (3, headless.feature_dim, 13, 11) and headless.feature_dim == 5
        torch.testing.assert_close(headed.head(features), headed(x))


def test_skip_connections_carry_fine_detail():
    """Level 0 reaches the head directly through the decoder: a change to one input pixel changes the
    output there, even when the deeper levels see nothing of it (their weights zeroed)."""
    torch.manual_seed(0)
    model = create_model("unet", input_shape=(1, 12, 12), num_outputs=1, channels=[3, 4], norm="none").eval()
    with torch.no_grad():
        for p in model.down[1].parameters():
            p.zero_()
        x = torch.zeros(1, 1, 12, 12)
        y = x.clone()
        y[0, 0, 9, 2] = 5.0
        diff = (model(y) - model(x)).abs()[0, 0]
    # four 3x3 convs at full size reach 4 pixels: the far corner does not move
    assert diff[9, 2] > 0 and diff[0:4, 7:12].sum() == 0


def _backbone(name: str, **overrides) -> nn.Module:
    return create_model(name, num_outputs=0, **overrides).eval()


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("cnn", {"input_shape": (3, 15, 13), "channels": [5, 7, 9]}),
        ("resnet", {"input_shape": (3, 17, 13), "layers": [1, 1], "widths": [4, 6], "stem_width": 5}),
        (
            "resnet",
            {
                "input_shape": (3, 17, 13),
                "layers": [1, 1],
                "widths": [4, 6],
                "stem": "small",
                "stem_width": 5,
            },
        ),
    ],
)
def test_decoder_climbs_any_backbones_feature_maps(name, overrides):
    backbone = _backbone(name, **overrides)
    decoder = UNetDecoder(backbone.feature_channels, widths=[3] * (len(backbone.feature_channels) - 1)).eval()
    x = torch.randn(2, 3, 15, 13)
    maps = backbone.feature_maps(x)
    with torch.no_grad():
        out = decoder(maps)
    assert out.shape == (2, decoder.out_channels, *maps[0].shape[-2:]) and decoder.out_channels == 3
    # default widths mirror the skips, as U-Net does
    assert UNetDecoder(backbone.feature_channels).out_channels == backbone.feature_channels[0]


def test_decoder_refuses_a_wrong_number_of_maps_or_widths():
    decoder = UNetDecoder([4, 6, 8])
    with pytest.raises(ValueError, match="reads 3 feature maps, got 2"):
        decoder([torch.zeros(1, 4, 8, 8), torch.zeros(1, 6, 4, 4)])
    with pytest.raises(ValueError, match="widths must hold 2 positive ints"):
        UNetDecoder([4, 6, 8], widths=[3])


def test_bad_configs_are_refused_by_field():
    family = get_family("unet")
    assert "unet-tiny" in family.presets and "unet-paper" in family.presets
    with pytest.raises(RecipeError, match="channels must be a non-empty list"):
        create_model("unet", channels=[])
    with pytest.raises(RecipeError, match="kernel_size must be a positive odd int"):
        create_model("unet", kernel_size=4)
    with pytest.raises(RecipeError, match="model.channels: every item must be a whole number"):
        create_model("unet", channels=[8, 1.5])


TINY_EFFICIENTNET = {"stages": [[1, 8, 1, 1, 3], [3, 12, 1, 2, 3], [2, 16, 1, 2, 3]], "stem_width": 8,
                     "head_width": 12}  # fmt: skip
TINY_MOBILENET = {"stages": [[1, 8, 1, 1], [3, 12, 1, 2], [2, 16, 1, 2]], "stem_width": 8, "head_width": 12}


def _decoder_input_sizes(model: SegmentationModel, x: torch.Tensor) -> list[tuple[int, int]]:
    """The spatial size of every decoder block's input, finest level first."""
    sizes = {}

    def record(i):
        def hook(module, args):
            sizes[i] = tuple(args[0].shape[-2:])

        return hook

    hooks = [block.register_forward_pre_hook(record(i)) for i, block in enumerate(model.decoder.blocks)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return [sizes[i] for i in range(len(sizes))]


@pytest.mark.parametrize("name", ["efficientnet", "mobilenet_v2"])
def test_the_stem_is_the_full_resolution_skip_over_a_stride_2_encoder(name):
    """EfficientNet's and MobileNetV2's first conv has stride 2 (their finest map is at H/2, rounded up by
    SAME padding). With a stem the decoder's last block runs at the image's own size; without one it runs
    at H/2 and the logits are upsampled to the image's size."""
    options = TINY_EFFICIENTNET if name == "efficientnet" else TINY_MOBILENET
    backbone = _backbone(name, input_shape=(3, 13, 11), **options)
    x = torch.randn(2, 3, 13, 11)
    assert [tuple(m.shape[-2:]) for m in backbone.feature_maps(x)] == [(7, 6), (4, 3), (2, 2)]
    with_stem = SegmentationModel(backbone, 4, 3, stem_channels=5).eval()
    assert _decoder_input_sizes(with_stem, x) == [(13, 11), (7, 6), (4, 3)]
    without = SegmentationModel(backbone, 4, 3, stem_channels=0).eval()
    assert _decoder_input_sizes(without, x) == [(7, 6), (4, 3)]
    for model in (with_stem, without):
        with torch.no_grad():
            assert model(x).shape == (2, 4, 13, 11)
    # default decoder widths: each skip's (stem, then the encoder's maps but the coarsest)
    assert [b[0].conv.out_channels for b in with_stem.decoder.blocks] == [5, *backbone.feature_channels[:-1]]


def test_a_frozen_backbone_neither_learns_nor_updates_its_batchnorm_statistics():
    torch.manual_seed(0)
    backbone = _backbone("efficientnet", input_shape=(3, 16, 16), **TINY_EFFICIENTNET)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = SegmentationModel(backbone, 3, 3, stem_channels=4, frozen=True).train()
    assert not model.backbone.training and model.decoder.training and model.stem.training
    head_before = model.head.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = model(torch.randn(4, 3, 16, 16) * 3 + 1).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    for key, value in model.backbone.state_dict().items():  # weights and running statistics alike
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.head.weight, head_before)
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("backbone."))
    unfrozen = SegmentationModel(
        _backbone("efficientnet", input_shape=(3, 16, 16), **TINY_EFFICIENTNET), 3, 3
    )
    assert unfrozen.train().backbone.training  # only a frozen backbone stays in eval mode


def test_a_per_pixel_backbone_gets_only_a_head():
    unet = create_model("unet-tiny", num_outputs=0)
    model = SegmentationModel(unet, 3, 3, stem_channels=16).eval()
    assert model.decoder is None and model.stem is None and model.head.in_channels == unet.feature_dim
    with torch.no_grad():
        x = torch.randn(1, 3, 13, 11)
        torch.testing.assert_close(model(x), model.head(unet(x)))
