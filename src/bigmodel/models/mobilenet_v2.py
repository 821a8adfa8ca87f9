"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

A stack of *inverted residual* blocks: a 1×1 conv expands a narrow input ``expand_ratio`` times, a
depthwise 3×3 conv filters each channel on its own, and a 1×1 conv projects back to a narrow output
with **no** activation (the "linear bottleneck": ReLU on a narrow tensor destroys information). The
shortcut joins the narrow ends, where a block keeps width and resolution. ReLU6 (``min(max(x, 0), 6)``)
everywhere else, for low-precision inference.

The layout is torchvision's ``mobilenet_v2``: a 3×3 stride-2 stem of 32 channels, the paper's seven
stages (Table 2), a 1×1 conv to 1280 channels, global average pooling, dropout and a linear ``head``;
widths scale with ``width_mult`` and are rounded to multiples of 8. The ``torchvision`` key map at the
bottom loads its checkpoints (IMAGENET1K_V1) one to one.

The block pieces here (:class:`ConvBNAct`, :class:`InvertedResidual`, :func:`make_divisible`) are also
EfficientNet-Lite's (``models/efficientnet.py``), whose MBConv block is this block with 5×5 kernels
allowed and TensorFlow's "SAME" padding.

With ``num_outputs=0`` there is no head: ``forward`` returns the pooled features after dropout,
``(B, feature_dim)``, exactly what the head would have read (``features`` gives them before dropout).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import CheckpointFormat, Family

# The paper's Table 2 after the stem: (expand_ratio, channels, repeats, stride) per stage.
MOBILENET_V2_STAGES = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                       [6, 160, 3, 2], [6, 320, 1, 1]]  # fmt: skip
PADDINGS = ("symmetric", "same")


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more than
    10 % below ``value`` — the width rounding of both MobileNetV2 and EfficientNet."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _check_stages(stages: list[list[int]], width: int) -> list[list[int]]:
    """Each stage as ``width`` positive ints; raises ValueError naming the first bad one."""
    stages = [[int(v) for v in stage] for stage in stages]
    if not stages or any(len(s) != width or min(s) < 1 for s in stages):
        raise ValueError(f"stages must be a non-empty list of {width} positive ints each, got {stages}")
    return stages


@dataclass
class MobileNetV2Config:
    """MobileNetV2 hyper-parameters; the defaults are torchvision's ``mobilenet_v2`` for ImageNet.

    Attributes:
        input_shape: (channels, height, width) of one image.
        num_outputs: size of the linear ``head``; 0 = no head (``forward`` returns the features).
        width_mult: multiplies every width (then rounded to a multiple of 8).
        stages: ``[expand_ratio, channels, repeats, stride]`` per stage, before ``width_mult``.
        stem_width: output channels of the stem conv, before ``width_mult``.
        head_width: output channels of the last 1×1 conv; scaled only by a ``width_mult`` above 1,
            as in the paper (a thin network keeps a wide final layer).
        dropout: dropout on the pooled features, before the head.
        norm_eps: BatchNorm epsilon.
        norm_momentum: BatchNorm running-statistics momentum (PyTorch's convention: the weight of the
            new batch).
        gradient_checkpointing: in training, recompute each block's activations in the backward pass
            instead of storing them (less memory, ~1/3 more compute).
    """

    input_shape: tuple[int, ...] = (3, 224, 224)
    num_outputs: int = 1000
    width_mult: float = 1.0
    stages: list[list[int]] = field(default_factory=lambda: [list(s) for s in MOBILENET_V2_STAGES])
    stem_width: int = 32
    head_width: int = 1280
    dropout: float = 0.2
    norm_eps: float = 1e-5
    norm_momentum: float = 0.1
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.stages = _check_stages(self.stages, 4)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width), got {self.input_shape}")
        if self.num_outputs < 0:
            raise ValueError(f"num_outputs must be >= 0 (0 = no head), got {self.num_outputs}")
        if not (math.isfinite(self.width_mult) and self.width_mult > 0):
            raise ValueError(f"width_mult must be > 0, got {self.width_mult}")
        if self.stem_width < 1 or self.head_width < 1:
            raise ValueError(
                f"stem_width and head_width must be >= 1, got {self.stem_width}, {self.head_width}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0 or not 0.0 <= self.norm_momentum <= 1.0:
            raise ValueError(f"norm_eps must be > 0 and norm_momentum in [0, 1], got {self.norm_eps}, "
                             f"{self.norm_momentum}")  # fmt: skip


class SamePad2d(nn.Module):
    """TensorFlow's "SAME" padding for a ``kernel_size`` / ``stride`` conv: the output is
    ``ceil(input / stride)`` and an odd total pad puts the extra row/column at the bottom/right.

    Computed from each input's size, so any resolution works (PyTorch's symmetric padding would shift a
    stride-2 conv by one pixel against weights trained in TensorFlow).
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def _pad(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = self._pad(x.shape[-2]), self._pad(x.shape[-1])
        return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x


class ConvBNAct(nn.Sequential):
    """``Conv2d(no bias, groups) → BatchNorm2d → ReLU6`` (no activation with ``act=False``).

    Keys ``conv.weight`` and ``norm.*``, as ``nn.conv.ConvNormAct``; ``padding="same"`` pads as
    TensorFlow does (:class:`SamePad2d`, no tensors) instead of ``(kernel_size - 1) // 2`` per side.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__()
        if padding == "same":
            self.pad = SamePad2d(kernel_size, stride)
        symmetric = (kernel_size - 1) // 2 if padding == "symmetric" else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, symmetric, groups=groups, bias=False
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=norm_eps, momentum=norm_momentum)
        self.act = nn.ReLU6() if act else nn.Identity()


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero a residual branch for a random ``rate`` of the samples
    and scale the rest by ``1 / (1 - rate)``, so the expectation is unchanged; identity in eval."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device))
    return x / keep * mask


class InvertedResidual(nn.Module):
    """1×1 ``expand`` (absent when ``expand_ratio`` is 1) → depthwise k×k (carries the stride) →
    linear 1×1 ``project``; plus the input where the block keeps width and resolution."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        kernel_size: int = 3,
        path_dropout: float = 0.0,
        **conv: object,  # norm_eps, norm_momentum, padding: passed to every ConvBNAct
    ):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.expand = ConvBNAct(in_channels, hidden, 1, **conv) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, **conv)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False, **conv)
        self.residual = stride == 1 and in_channels == out_channels
        self.path_dropout = path_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)  # (B, hidden, H, W)
        y = self.project(self.depthwise(y))  # (B, out, H / stride, W / stride)
        return x + drop_path(y, self.path_dropout, self.training) if self.residual else y


def _block_plan(config: MobileNetV2Config) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(index, in_channels, out_channels, stride, expand_ratio)`` for every block, in order;
    the model and the key map both read it."""
    in_channels, index = make_divisible(config.stem_width * config.width_mult), 0
    for expand_ratio, channels, repeats, stride in config.stages:
        out_channels = make_divisible(channels * config.width_mult)
        for j in range(repeats):
            yield index, in_channels, out_channels, stride if j == 0 else 1, expand_ratio
            in_channels, index = out_channels, index + 1


def init_weights(model: nn.Module) -> None:
    """torchvision's initialisation of mobile networks: He (fan_out) convs, unit BatchNorm, N(0, 0.01)
    linear weights, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class InvertedResidualNet(Model):
    """What MobileNetV2 and EfficientNet-Lite share once built: ``stem`` → inverted residual ``blocks``
    → 1×1 ``last_conv`` → global average pool → dropout → ``head``; ``_taps`` are the blocks whose
    output ends a resolution (set by the subclass from its block plan)."""

    _taps: list[int]
    _tap_channels: list[int]

    def _set_taps(self, plan: list[tuple[int, int]]) -> None:
        """From each block's ``(out_channels, stride)``: tap the last block before every stride-2
        block (the last block's map goes through ``last_conv`` first)."""
        self._taps = [i for i in range(len(plan) - 1) if plan[i + 1][1] == 2]
        self._tap_channels = [plan[i][0] for i in self._taps]

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each map :meth:`feature_maps` returns."""
        return [*self._tap_channels, self.feature_dim]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last map at each resolution (strides 2, 4, 8, 16; then the 1×1 last conv's at 32),
        finest first, for dense heads (detection, segmentation)."""
        if x.dim() == 3:  # (B, H, W) grey images -> (B, 1, H, W)
            x = x.unsqueeze(1)
        x = self.stem(x)  # (B, stem, H/2, W/2)
        maps = []
        for i, block in enumerate(self.blocks):  # the stride-2 stages halve H and W: H/32 at the end
            x = maybe_checkpoint(block, x, enabled=self.config.gradient_checkpointing)
            if i in self._taps:
                maps.append(x)
        return [*maps, self.last_conv(x)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before dropout and the head, ``(B, feature_dim)``."""
        return self.feature_maps(x)[-1].mean(dim=(2, 3))  # global average pool -> (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs)``, or the pooled features after dropout ``(B, feature_dim)``
        without a head."""
        x = self.drop(self.features(x))
        return x if self.head is None else self.head(x)


class MobileNetV2(InvertedResidualNet):
    """Stem → inverted residual ``blocks`` → 1×1 ``last_conv`` → global average pool → dropout → linear
    ``head`` (absent with ``num_outputs=0``)."""

    def __init__(self, config: MobileNetV2Config):
        super().__init__(config)
        c = config
        norm = {"norm_eps": c.norm_eps, "norm_momentum": c.norm_momentum}
        self.stem = ConvBNAct(c.input_shape[0], make_divisible(c.stem_width * c.width_mult), 3, 2, **norm)
        plan = list(_block_plan(c))
        self.blocks = nn.ModuleList(InvertedResidual(i, o, s, t, **norm) for _, i, o, s, t in plan)
        self.last_conv = ConvBNAct(plan[-1][2], self.feature_dim, 1, **norm)
        self._set_taps([(out, stride) for _, _, out, stride, _ in plan])
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(self.feature_dim, c.num_outputs) if c.num_outputs else None
        init_weights(self)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features: the last 1×1 conv's channels."""
        return make_divisible(self.config.head_width * max(1.0, self.config.width_mult))


def example_image(config, batch_size: int = 2) -> tuple[torch.Tensor]:
    return (torch.randn(batch_size, *config.input_shape),)


PRESETS = {
    "mobilenet_v2-1.0": {},
    "mobilenet_v2-0.5": {"width_mult": 0.5},
    "mobilenet_v2-1.4": {"width_mult": 1.4},
    # Odd sizes catch shape bugs; the stages cover a block without expansion, strides 1 and 2 and the
    # shortcut; width_mult 1.5 rounds widths and scales the last conv.
    "mobilenet_v2-tiny": {
        "input_shape": (3, 19, 13), "num_outputs": 5, "width_mult": 1.5, "stem_width": 8, "head_width": 12,
        "stages": [[1, 8, 1, 1], [3, 8, 2, 2], [2, 16, 2, 1]], "dropout": 0.1,
    },
}  # fmt: skip


# --- torchvision checkpoint layout -----------------------------------------------------------------

_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_bn_keys(native: str, conv: str, norm: str) -> dict[str, str]:
    """Keys of one native :class:`ConvBNAct` mapped to a published conv and BatchNorm pair."""
    return {
        f"{native}.conv.weight": f"{conv}.weight",
        **{f"{native}.norm.{t}": f"{norm}.{t}" for t in _BN_TENSORS},
    }


def _torchvision_key_map(config: MobileNetV2Config) -> dict[str, str]:
    """Native key -> torchvision ``mobilenet_v2`` key (``features.0`` stem, ``features.1..N`` blocks,
    ``features.N+1`` last conv, ``classifier.1`` head)."""
    key_map = conv_bn_keys("stem", "features.0.0", "features.0.1")
    last = 0
    for i, _, _, _, expand_ratio in _block_plan(config):
        ours, theirs, last = f"blocks.{i}", f"features.{i + 1}.conv", i + 1
        n = 0  # torchvision numbers the pieces of its block's Sequential from 0
        if expand_ratio != 1:
            key_map |= conv_bn_keys(f"{ours}.expand", f"{theirs}.0.0", f"{theirs}.0.1")
            n = 1
        key_map |= conv_bn_keys(f"{ours}.depthwise", f"{theirs}.{n}.0", f"{theirs}.{n}.1")
        key_map |= conv_bn_keys(f"{ours}.project", f"{theirs}.{n + 1}", f"{theirs}.{n + 2}")
    key_map |= conv_bn_keys("last_conv", f"features.{last + 1}.0", f"features.{last + 1}.1")
    if config.num_outputs:  # a headless model maps onto the trunk; the classifier is not read
        key_map |= {"head.weight": "classifier.1.weight", "head.bias": "classifier.1.bias"}
    return key_map


def _torchvision_optional(config: MobileNetV2Config) -> set[str]:
    return set() if config.num_outputs else {"classifier.1.weight", "classifier.1.bias"}


FAMILY = Family(
    name="mobilenet_v2",
    config_cls=MobileNetV2Config,
    model_cls=MobileNetV2,
    presets=PRESETS,
    tiny_presets=("mobilenet_v2-tiny",),
    example_input=example_image,
    formats={"torchvision": CheckpointFormat(key_map=_torchvision_key_map, optional=_torchvision_optional)},
)
