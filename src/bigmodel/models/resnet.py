"""Residual networks (He et al. 2016, "Deep Residual Learning for Image Recognition").

Each block learns a residual ``F(x)`` added to a shortcut, ``relu(F(x) + shortcut(x))``; the shortcut
is the identity, or a 1×1 conv + BatchNorm projection where the block changes width or stride
(option B of the paper). ``basic`` blocks are two 3×3 convs (ResNet-18/34); ``bottleneck`` blocks are
1×1 reduce → 3×3 → 1×1 expand ×4 (ResNet-50/101).

The layout is torchvision's "ResNet v1.5": a bottleneck strides on its 3×3 conv, not on the first
1×1 as in the paper (the 1×1 would skip three quarters of the input; v1.5 is ~0.5 % top-1 better),
so torchvision checkpoints load one to one through the ``torchvision`` key map at the bottom.

Stems: ``imagenet`` is the paper's 7×7 stride-2 conv + 3×3 stride-2 max-pool (224 → 56 px);
``small`` is one 3×3 stride-1 conv and no pool, as in the paper's CIFAR networks (§4.2), so 8×8,
28×28 and 32×32 images are not reduced to nothing before the first stage.

With ``num_outputs=0`` there is no head: ``forward`` returns the pooled features after dropout,
``(B, feature_dim)``, exactly what the head would have read (``features`` gives them before dropout).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import CheckpointFormat, Family
from bigmodel.nn.conv import ConvNormAct

BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "small")


@dataclass
class ResNetConfig:
    """ResNet hyper-parameters; the defaults are ResNet-18 for ImageNet.

    Attributes:
        input_shape: (channels, height, width) of one image.
        num_outputs: size of the linear ``head``; 0 = no head (``forward`` returns the features).
        block: ``basic`` (two 3×3 convs) or ``bottleneck`` (1×1, 3×3, 1×1 with 4× expansion).
        layers: residual blocks per stage; every stage after the first halves height and width.
        widths: per-stage width (a bottleneck's inner width; its output is 4× wider).
        stem: ``imagenet`` (7×7/2 conv + max-pool) or ``small`` (3×3/1 conv, no pool).
        stem_width: output channels of the stem conv.
        dropout: dropout on the pooled features, before the head.
        zero_init_residual: start every block's last BatchNorm scale at 0, so each block begins as
            the identity (Goyal et al. 2017); helps large-batch training.
        gradient_checkpointing: in training, recompute each residual block's activations in the
            backward pass instead of storing them (less memory, ~1/3 more compute).
    """

    input_shape: tuple[int, ...] = (3, 224, 224)
    num_outputs: int = 1000
    block: str = "basic"
    layers: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    stem: str = "imagenet"
    stem_width: int = 64
    dropout: float = 0.0
    zero_init_residual: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.layers = [int(n) for n in self.layers]
        self.widths = [int(w) for w in self.widths]
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width), got {self.input_shape}")
        if self.num_outputs < 0:
            raise ValueError(f"num_outputs must be >= 0 (0 = no head), got {self.num_outputs}")
        if self.block not in BLOCKS:
            raise ValueError(f"block {self.block!r} is not one of {list(BLOCKS)}")
        if not self.layers or min(self.layers) < 1:
            raise ValueError(f"layers must be a non-empty list of positive ints, got {self.layers}")
        if len(self.widths) != len(self.layers) or min(self.widths) < 1:
            raise ValueError(
                f"widths must be {len(self.layers)} positive ints (one per stage), got {self.widths}"
            )
        if self.stem not in STEMS:
            raise ValueError(f"stem {self.stem!r} is not one of {list(STEMS)}")
        if self.stem_width < 1:
            raise ValueError(f"stem_width must be >= 1, got {self.stem_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _projects(in_channels: int, out_channels: int, stride: int) -> bool:
    """Whether a block's shortcut needs a projection (it changes width or resolution)."""
    return stride != 1 or in_channels != out_channels


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity, or a 1×1 conv + BN projection (option B of He et al. 2016)."""
    if not _projects(in_channels, out_channels, stride):
        return nn.Identity()
    return ConvNormAct(in_channels, out_channels, 1, stride, act="identity")


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))`` — ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, width, 3, stride)
        self.conv2 = ConvNormAct(width, width, 3, act="identity")  # ReLU comes after the sum
        self.downsample = _shortcut(in_channels, width, stride)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.downsample(x))


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride, v1.5) → 1×1 expand ×4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvNormAct(in_channels, width, 1)
        self.conv2 = ConvNormAct(width, width, 3, stride)
        self.conv3 = ConvNormAct(width, out_channels, 1, act="identity")
        self.downsample = _shortcut(in_channels, out_channels, stride)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))


BLOCK_TYPES: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _block_plan(config: ResNetConfig) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(stage, index, in_channels, width, stride)`` for every block, in order.

    The model and the key map both read this, so they cannot disagree on where projections sit.
    """
    expansion = BLOCK_TYPES[config.block].expansion
    in_channels = config.stem_width
    for i, (depth, width) in enumerate(zip(config.layers, config.widths, strict=True)):
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1  # the first block of every later stage downsamples
            yield i, j, in_channels, width, stride
            in_channels = width * expansion


class ResNet(Model):
    """Stem → stages of residual blocks → global average pool → dropout → linear ``head`` (absent with
    ``num_outputs=0``)."""

    def __init__(self, config: ResNetConfig):
        super().__init__(config)
        c = config
        if c.stem == "imagenet":
            self.stem = ConvNormAct(c.input_shape[0], c.stem_width, 7, stride=2)
            self.stem.add_module("pool", nn.MaxPool2d(3, stride=2, padding=1))
        else:
            self.stem = ConvNormAct(c.input_shape[0], c.stem_width, 3)
        block = BLOCK_TYPES[c.block]
        stages: list[list[nn.Module]] = [[] for _ in c.layers]
        for i, _, in_channels, width, stride in _block_plan(c):
            stages[i].append(block(in_channels, width, stride))
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(self.feature_dim, c.num_outputs) if c.num_outputs else None
        self._init_weights()

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features: the last stage's output channels."""
        return self.config.widths[-1] * BLOCK_TYPES[self.config.block].expansion

    def _init_weights(self) -> None:
        # He init with fan_out, as torchvision does (He et al. 2015, "Delving Deep into Rectifiers").
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    last = m.conv3 if isinstance(m, Bottleneck) else m.conv2
                    nn.init.zeros_(last.norm.weight)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each map :meth:`feature_maps` returns (one per stage)."""
        return [w * BLOCK_TYPES[self.config.block].expansion for w in self.config.widths]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output ``(B, C_i, H_i, W_i)``, finest first, for dense heads (detection,
        segmentation): H and W halve from the second stage on (after /4 with the imagenet stem)."""
        if x.dim() == 3:  # (B, H, W) grey images -> (B, 1, H, W)
            x = x.unsqueeze(1)
        x = self.stem(x)  # (B, stem_width, H/4, W/4) imagenet stem | (B, stem_width, H, W) small stem
        maps = []
        for stage in self.stages:
            for block in stage:
                x = maybe_checkpoint(block, x, enabled=self.config.gradient_checkpointing)
            maps.append(x)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before dropout and the head, ``(B, C)``."""
        return self.feature_maps(x)[-1].mean(dim=(2, 3))  # global average pool -> (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs)``, or the pooled features after dropout ``(B, feature_dim)``
        without a head."""
        x = self.drop(self.features(x))  # (B, C)
        return x if self.head is None else self.head(x)


def _example_input(config: ResNetConfig, batch_size: int = 2) -> tuple[torch.Tensor]:
    return (torch.randn(batch_size, *config.input_shape),)


PRESETS = {
    "resnet18": {"block": "basic", "layers": [2, 2, 2, 2]},
    "resnet34": {"block": "basic", "layers": [3, 4, 6, 3]},
    "resnet50": {"block": "bottleneck", "layers": [3, 4, 6, 3]},
    "resnet101": {"block": "bottleneck", "layers": [3, 4, 23, 3]},
    # Odd sizes catch shape bugs; the two tiny presets cover both blocks and both stems.
    "resnet-tiny": {
        "input_shape": (3, 11, 9), "num_outputs": 5, "block": "basic", "layers": [1, 2],
        "widths": [7, 9], "stem": "small", "stem_width": 5, "dropout": 0.1,
    },
    "resnet-tiny-bottleneck": {
        "input_shape": (3, 17, 13), "num_outputs": 3, "block": "bottleneck", "layers": [2, 1],
        "widths": [3, 5], "stem": "imagenet", "stem_width": 5,
    },
}  # fmt: skip


# --- torchvision checkpoint layout -----------------------------------------------------------------

_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_norm(native: str, conv: str, norm: str) -> dict[str, str]:
    """Keys of one native ConvNormAct mapped to torchvision's separate conv and BatchNorm modules."""
    norm_keys = {f"{native}.norm.{t}": f"{norm}.{t}" for t in _BN_TENSORS}
    return {f"{native}.conv.weight": f"{conv}.weight", **norm_keys}


def _torchvision_key_map(config: ResNetConfig) -> dict[str, str]:
    """Native key -> torchvision ``resnet*`` state-dict key (conv1, bn1, layer1.0.conv1, ..., fc)."""
    key_map = _conv_norm("stem", "conv1", "bn1")
    convs = 3 if config.block == "bottleneck" else 2
    expansion = BLOCK_TYPES[config.block].expansion
    for i, j, in_channels, width, stride in _block_plan(config):
        ours, theirs = f"stages.{i}.{j}", f"layer{i + 1}.{j}"
        for k in range(1, convs + 1):
            key_map |= _conv_norm(f"{ours}.conv{k}", f"{theirs}.conv{k}", f"{theirs}.bn{k}")
        if _projects(in_channels, width * expansion, stride):
            key_map |= _conv_norm(f"{ours}.downsample", f"{theirs}.downsample.0", f"{theirs}.downsample.1")
    if config.num_outputs:  # a headless model maps onto torchvision's trunk; its fc is not read
        key_map |= {"head.weight": "fc.weight", "head.bias": "fc.bias"}
    return key_map


def _torchvision_optional(config: ResNetConfig) -> set[str]:
    """A headless model loads a classifier checkpoint's trunk and leaves its ``fc`` unread."""
    return set() if config.num_outputs else {"fc.weight", "fc.bias"}


FAMILY = Family(
    name="resnet",
    config_cls=ResNetConfig,
    model_cls=ResNet,
    presets=PRESETS,
    tiny_presets=("resnet-tiny", "resnet-tiny-bottleneck"),
    example_input=_example_input,
    formats={"torchvision": CheckpointFormat(key_map=_torchvision_key_map, optional=_torchvision_optional)},
)
