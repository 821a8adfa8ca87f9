"""U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image Segmentation").

An encoder of conv–norm–act blocks, each level after the first starting with a 2×2 max-pool, and a
decoder that climbs back level by level: upsample the coarser map, concatenate the encoder's map of
that level (the skip connection), run a conv block. Upsampling is bilinear followed by convolutions
rather than a transposed convolution, which avoids checkerboard artefacts (Odena et al. 2016) and fits
any size: each upsampled map is resized to its skip's exact size, so odd heights and widths work.

With ``num_outputs=0`` there is no head: ``forward`` returns per-pixel features ``(B, feature_dim, H,
W)`` at the input's resolution; with a head, per-pixel logits ``(B, num_outputs, H, W)``.

:class:`UNetDecoder` is the decoder alone, for any backbone with ``feature_maps(x)`` and
``feature_channels`` (cnn, resnet, efficientnet, mobilenet_v2); :class:`SegmentationModel` puts it, a
full-resolution stem and a 1×1 head on such a backbone (or a head alone on a ``unet``): the semantic
segmentation task's model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import Family
from bigmodel.nn.activations import ACTIVATIONS
from bigmodel.nn.conv import ConvNormAct

MAX_DECODER_WIDTH = 256  # default decoder widths follow the skips' widths up to this (resnet50's are 2048)


def conv_block(in_channels: int, out_channels: int, convs: int, kernel_size: int, norm: str, act: str):
    """``convs`` conv–norm–act units, the first from ``in_channels`` (spatial size kept)."""
    return nn.Sequential(
        *(ConvNormAct(in_channels if i == 0 else out_channels, out_channels, kernel_size, norm=norm, act=act)
          for i in range(convs))
    )  # fmt: skip


class UNetDecoder(nn.Module):
    """U-Net's expanding path over feature maps given finest first.

    Starting from the coarsest map, each step upsamples (bilinear) to the next finer map's size,
    concatenates that map and runs a conv block of ``widths[i]`` channels. The output has the finest
    map's resolution and ``widths[0]`` channels (``out_channels``).

    Args:
        in_channels: channels of each input map, finest first (a backbone's ``feature_channels``).
        widths: output channels of the decoder block at each level but the coarsest (one fewer than
            ``in_channels``); default: the skip's own channels, as in U-Net.
        convs_per_block, kernel_size, norm, activation: of each block's conv–norm–act units.
        gradient_checkpointing: recompute each block in the backward pass (training only).
    """

    def __init__(
        self,
        in_channels: list[int],
        widths: list[int] | None = None,
        convs_per_block: int = 2,
        kernel_size: int = 3,
        norm: str = "batch",
        activation: str = "relu",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        widths = list(in_channels[:-1]) if widths is None else [int(w) for w in widths]
        if not in_channels or min(in_channels) < 1:
            raise ValueError(f"in_channels must be a non-empty list of positive ints, got {in_channels}")
        if len(widths) != len(in_channels) - 1 or (widths and min(widths) < 1):
            raise ValueError(
                f"widths must hold {len(in_channels) - 1} positive ints (one per level but the coarsest), "
                f"got {widths}"
            )
        self.gradient_checkpointing = gradient_checkpointing
        below = in_channels[-1]
        blocks = [None] * len(widths)
        for i in reversed(range(len(widths))):  # coarse to fine: each block reads the one below it
            blocks[i] = conv_block(
                below + in_channels[i], widths[i], convs_per_block, kernel_size, norm, activation
            )
            below = widths[i]
        self.blocks = nn.ModuleList(blocks)  # blocks[i] outputs level i
        self.out_channels = widths[0] if widths else in_channels[0]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """``maps[i]``: ``(B, in_channels[i], H_i, W_i)``, finest first -> ``(B, out_channels, H_0, W_0)``."""
        if len(maps) != len(self.blocks) + 1:
            raise ValueError(f"the decoder reads {len(self.blocks) + 1} feature maps, got {len(maps)}")
        x = maps[-1]
        for i in reversed(range(len(self.blocks))):
            skip = maps[i]
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = maybe_checkpoint(
                self.blocks[i], torch.cat([x, skip], dim=1), enabled=self.gradient_checkpointing
            )
        return x


class SegmentationModel(nn.Module):
    """A backbone and a 1×1 conv ``head`` giving per-pixel logits ``(B, classes, H, W)``.

    A per-pixel backbone (``unet``) is used as it is. Any other needs ``feature_maps(x)``: a
    :class:`UNetDecoder` climbs its maps, the finest skip being a two-conv ``stem`` on the image at
    full resolution (``stem_channels``). Whatever the stride of the backbone's finest map — 1 or 2
    for cnn and resnet, 2 for efficientnet and mobilenet_v2, whose first conv has stride 2 — the
    decoder upsamples each level to its skip's exact size, so with a stem the logits are computed at
    the image's resolution; without one they are computed at the finest map's and upsampled
    bilinearly to the image's size.

    Args:
        backbone: the family built headless (possibly with pretrained weights).
        num_classes: logits per pixel.
        in_channels: the image's channels (what the stem reads).
        decoder_channels: decoder widths, finest first (default: the skips', at most
            :data:`MAX_DECODER_WIDTH`).
        stem_channels: width of the full-resolution stem; 0 = none.
        frozen: the backbone does not train: no gradients, and it stays in eval mode, so its BatchNorm
            statistics stay too (the stem, decoder and head train).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        in_channels: int,
        decoder_channels: list[int] | None = None,
        stem_channels: int = 16,
        frozen: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.stem = self.decoder = None
        if getattr(backbone, "per_pixel", False):
            width = backbone.feature_dim
        else:
            if stem_channels:
                self.stem = conv_block(in_channels, stem_channels, 2, 3, "batch", "relu")
            skips = ([stem_channels] if stem_channels else []) + list(backbone.feature_channels)
            widths = decoder_channels or [min(c, MAX_DECODER_WIDTH) for c in skips[:-1]]
            self.decoder = UNetDecoder(skips, widths)
            width = self.decoder.out_channels
        self.head = nn.Conv2d(width, num_classes, 1)
        self.frozen = frozen
        if frozen:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # keep BatchNorm's pretrained statistics and no dropout in the frozen part
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)`` -> logits ``(B, num_classes, H, W)``."""
        if self.decoder is None:
            features = self.backbone(x)  # (B, feature_dim, H, W)
        else:
            maps = self.backbone.feature_maps(x)  # finest first, at stride 1 or 2, then coarser
            if self.stem is not None:
                maps = [self.stem(x), *maps]  # the finest skip at stride 1, whatever the backbone's
            features = self.decoder(maps)  # (B, widths[0], H_0, W_0)
        logits = self.head(features)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


@dataclass
class UNetConfig:
    """U-Net hyper-parameters.

    Attributes:
        input_shape: (channels, height, width) of one image (any size fits; this is the example size).
        num_outputs: classes per pixel (a 1×1 conv ``head``); 0 = no head (per-pixel features).
        channels: encoder widths per level, finest first; the decoder mirrors them, so the per-pixel
            features have ``channels[0]``. Each level after the first halves the resolution (while the
            map is at least 2×2).
        convs_per_block: conv–norm–act units per block (U-Net: 2).
        kernel_size: odd kernel size of every conv (padding keeps the spatial size).
        norm: ``batch`` or ``none``.
        activation: a name from ``nn.activations.ACTIVATIONS``.
        dropout: channel dropout on the deepest map, the end of the contracting path (as in U-Net).
        gradient_checkpointing: in training, recompute each block's activations in the backward pass.
    """

    input_shape: tuple[int, ...] = (1, 128, 128)  # (channels, height, width)
    num_outputs: int = 2
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    convs_per_block: int = 2
    kernel_size: int = 3
    norm: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.channels = [int(c) for c in self.channels]
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width), got {self.input_shape}")
        if self.num_outputs < 0:
            raise ValueError(f"num_outputs must be >= 0 (0 = no head), got {self.num_outputs}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {self.kernel_size}")
        if self.convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, got {self.convs_per_block}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"norm {self.norm!r} is not one of ['batch', 'none']")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class _Down(nn.Module):
    """One encoder level: a 2×2 max-pool (skipped at the first level and below 2×2) then a conv block."""

    def __init__(self, block: nn.Module, pool: bool):
        super().__init__()
        self.pool = pool
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool and min(x.shape[-2:]) >= 2:
            x = F.max_pool2d(x, 2)
        return self.block(x)


class UNet(Model):
    """Encoder levels ``down`` → ``decoder`` (skip connections) → 1×1 conv ``head`` per pixel."""

    per_pixel = True  # forward returns per-pixel outputs: a segmentation task puts only a 1×1 head on it

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        c = config
        down, in_ch = [], c.input_shape[0]
        for i, out_ch in enumerate(c.channels):
            block = conv_block(in_ch, out_ch, c.convs_per_block, c.kernel_size, c.norm, c.activation)
            down.append(_Down(block, pool=i > 0))
            in_ch = out_ch
        self.down = nn.ModuleList(down)
        self.drop = nn.Dropout2d(c.dropout)
        self.decoder = UNetDecoder(
            c.channels, None, c.convs_per_block, c.kernel_size, c.norm, c.activation, c.gradient_checkpointing
        )
        self.head = nn.Conv2d(self.feature_dim, c.num_outputs, 1) if c.num_outputs else None

    @property
    def feature_dim(self) -> int:
        """Channels of the per-pixel features the head reads: ``channels[0]``."""
        return self.decoder.out_channels

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each encoder map :meth:`feature_maps` returns."""
        return list(self.config.channels)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each encoder level's output ``(B, C_i, H_i, W_i)``, finest first (level 0 at full size)."""
        if x.dim() == 3:  # (B, H, W) grey images -> (B, 1, H, W)
            x = x.unsqueeze(1)
        maps = []
        for level in self.down:
            x = maybe_checkpoint(level, x, enabled=self.config.gradient_checkpointing)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs, H, W)``, or without a head the features ``(B, feature_dim, H, W)``."""
        maps = self.feature_maps(x)
        maps[-1] = self.drop(maps[-1])
        features = self.decoder(maps)  # (B, channels[0], H, W)
        return features if self.head is None else self.head(features)


def _example_input(config: UNetConfig, batch_size: int = 2) -> tuple[torch.Tensor]:
    return (torch.randn(batch_size, *config.input_shape),)


FAMILY = Family(
    name="unet",
    config_cls=UNetConfig,
    model_cls=UNet,
    presets={
        "unet-small": {"channels": [16, 32, 64, 128]},
        "unet-paper": {"channels": [64, 128, 256, 512, 1024]},  # Ronneberger et al.'s widths
        # Odd sizes catch shape bugs: 13 -> 6 -> 3 rows, 11 -> 5 -> 2 columns, then back up exactly.
        "unet-tiny": {"input_shape": (3, 13, 11), "num_outputs": 4, "channels": [5, 7, 6], "dropout": 0.1},
    },
    tiny_presets=("unet-tiny",),
    example_input=_example_input,
)
