"""ResNet: torchvision-layout parity through the production key map, shapes, parameter counts, config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigmodel.hub.convert import CheckpointMismatch, from_published, to_published
from bigmodel.models import create_model
from bigmodel.models.registry import build_config
from bigmodel.models.resnet import FAMILY, ResNet, ResNetConfig

TORCHVISION = FAMILY.formats["torchvision"]


# --- a reference ResNet in torchvision's exact module naming (torchvision/models/resnet.py) --------


class RefBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class RefResNet(nn.Module):
    """torchvision's ResNet, generalised to any number of stages and widths and a small stem."""

    def __init__(self, block, layers, widths, in_channels=3, stem_width=64, small_stem=False, num_classes=10):
        super().__init__()
        self.inplanes = stem_width
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.num_stages = len(layers)
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def reference_for(config: ResNetConfig) -> RefResNet:
    block = RefBottleneck if config.block == "bottleneck" else RefBasicBlock
    return RefResNet(
        block, config.layers, config.widths, config.input_shape[0], config.stem_width,
        config.stem == "small", config.num_outputs,
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


def load_native(config: ResNetConfig, published: dict[str, torch.Tensor]) -> ResNet:
    model = ResNet(config)
    model.load_state_dict(from_published(TORCHVISION, config, published, model.state_dict()), strict=True)
    return model


PARITY_CASES = {
    "tiny-basic-small-stem": ("resnet-tiny", {}),
    "tiny-bottleneck-imagenet-stem": ("resnet-tiny-bottleneck", {}),
    "bottleneck-3-stages-small-stem": (
        "resnet-tiny-bottleneck",
        {"stem": "small", "layers": [1, 2, 1], "widths": [3, 5, 7]},
    ),
    "resnet18-small-stem": ("resnet18", {"input_shape": (3, 8, 8), "num_outputs": 10, "stem": "small"}),
}


@pytest.mark.parametrize("preset, overrides", PARITY_CASES.values(), ids=PARITY_CASES.keys())
def test_torchvision_layout_parity_and_round_trip(preset, overrides):
    torch.manual_seed(0)
    # torchvision has no dropout; without it training-mode outputs must match too.
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
    assert saved.keys() == ref.state_dict().keys()
    for key, tensor in ref.state_dict().items():
        torch.testing.assert_close(saved[key], tensor, atol=1e-6, rtol=1e-6, msg=key)
    assert int(saved["bn1.num_batches_tracked"]) == int(published["bn1.num_batches_tracked"]) + 1


def test_headless_model_reads_the_trunk_of_a_classifier_checkpoint():
    """``num_outputs=0`` loads a torchvision classifier without its ``fc`` and saves the trunk alone."""
    config = build_config(FAMILY, {**FAMILY.presets["resnet-tiny"], "dropout": 0.0})
    ref = randomize(reference_for(config)).eval()
    headless = build_config(FAMILY, {**FAMILY.presets["resnet-tiny"], "dropout": 0.0, "num_outputs": 0})
    model = load_native(headless, ref.state_dict()).eval()
    x = torch.randn(3, *config.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(ref.fc(model(x)), ref(x), atol=1e-5, rtol=1e-5)
    saved = to_published(TORCHVISION, headless, model.state_dict())
    assert saved.keys() == ref.state_dict().keys() - {"fc.weight", "fc.bias"}


def test_torchvision_layout_keys_for_resnet50():
    """The key map names torchvision's resnet50 tensors, including projections only where they sit."""
    config = build_config(FAMILY, FAMILY.presets["resnet50"])
    with torch.device("meta"):
        ref = reference_for(config)
        model = ResNet(config)
    key_map = TORCHVISION.key_map(config)
    assert set(key_map) == set(model.state_dict())
    assert set(key_map.values()) == set(ref.state_dict())
    assert key_map["stages.0.0.downsample.norm.running_var"] == "layer1.0.downsample.1.running_var"
    assert key_map["stages.3.2.conv3.norm.num_batches_tracked"] == "layer4.2.bn3.num_batches_tracked"
    assert not any(k.startswith("stages.0.1.downsample") for k in key_map)


def test_wrong_architecture_checkpoint_is_refused():
    config = build_config(FAMILY, FAMILY.presets["resnet-tiny"])
    published = reference_for(config).state_dict()
    deeper = build_config(FAMILY, {**FAMILY.presets["resnet-tiny"], "layers": [1, 3]})
    with pytest.raises(CheckpointMismatch, match="layer2.2"):
        load_native(deeper, published)
    wider = build_config(FAMILY, {**FAMILY.presets["resnet-tiny"], "widths": [7, 10]})
    with pytest.raises(CheckpointMismatch, match="shape mismatch"):
        load_native(wider, published)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parity_with_real_torchvision(arch):
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    ref = randomize(getattr(tv_models, arch)(weights=None)).eval()
    config = build_config(FAMILY, FAMILY.presets[arch])
    model = load_native(config, ref.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
    assert to_published(TORCHVISION, config, model.state_dict()).keys() == ref.state_dict().keys()


@pytest.mark.parametrize(
    "arch, expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("resnet101", 44_549_160)]
)
def test_num_params_match_torchvision(arch, expected):
    with torch.device("meta"):  # counting needs shapes, not memory
        model = create_model(arch)
    assert model.num_params() == expected


SHAPE_CASES = {
    "8x8-grey-small": ("resnet18", (1, 8, 8), "small"),
    "28x28-grey-small": ("resnet18", (1, 28, 28), "small"),
    "32x32-rgb-small": ("resnet18", (3, 32, 32), "small"),
    "64x64-rgb-imagenet": ("resnet18", (3, 64, 64), "imagenet"),
    "64x64-bottleneck-imagenet": ("resnet50", (3, 64, 64), "imagenet"),
}


@pytest.mark.parametrize("arch, shape, stem", SHAPE_CASES.values(), ids=SHAPE_CASES.keys())
def test_forward_shapes(arch, shape, stem):
    model = create_model(arch, input_shape=shape, num_outputs=7, stem=stem).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)
        if shape[0] == 1:  # (B, H, W) grey batches are accepted too
            assert model(torch.randn(2, *shape[1:])).shape == (2, 7)


def test_stem_resolution():
    """The ImageNet stem divides resolution by 4; the small stem keeps it (then stages halve it)."""
    for stem, expected in [("imagenet", 2), ("small", 8)]:
        model = create_model("resnet-tiny", stem=stem, layers=[1, 1, 1], widths=[3, 3, 3])
        x = model.stem(torch.randn(1, 3, 32, 32))
        for stage in model.stages:
            x = stage(x)
        assert x.shape[-2:] == (expected, expected)


def test_dropout_only_in_training():
    model = create_model("resnet-tiny", dropout=0.5)
    x = torch.randn(4, *model.config.input_shape)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model.head(model.drop(model.features(x)))
    torch.manual_seed(1)
    torch.testing.assert_close(model(x), a)
    assert not torch.allclose(model(x), model(x))


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = create_model("resnet-tiny", zero_init_residual=True, layers=[2, 2]).eval()
    block = model.stages[1][1]  # no projection: the output is relu(0 + x)
    x = torch.randn(2, 9, 4, 4)
    torch.testing.assert_close(block(x), torch.relu(x))
    plain = create_model("resnet-tiny", layers=[2, 2]).eval()
    assert not torch.allclose(plain.stages[1][1](x), torch.relu(x))


def test_gradients_reach_every_parameter():
    model = create_model("resnet-tiny-bottleneck")
    (x,) = FAMILY.example_input(model.config, 3)
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"num_outputs": -1}, "num_outputs"),
        ({"block": "wide"}, "block"),
        ({"layers": []}, "layers"),
        ({"layers": [2, 0]}, "layers"),
        ({"widths": [64, 128]}, "widths"),
        ({"stem": "cifar"}, "stem"),
        ({"stem_width": 0}, "stem_width"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        ResNetConfig(**overrides)
