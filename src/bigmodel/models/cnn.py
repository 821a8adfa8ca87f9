"""Small convolutional network: conv–norm–act(–pool) blocks, global average pooling, a linear head.

Each entry of ``channels`` is one block; a 2×2 max-pool follows every block while the feature map
is still at least 2×2 on both sides, so the same config fits 8×8 digits and 28×28 images.

With ``num_outputs=0`` there is no head: ``forward`` returns the pooled features after dropout,
``(B, channels[-1])``, exactly what the head would have read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import Family
from bigmodel.nn.activations import ACTIVATIONS
from bigmodel.nn.conv import ConvNormAct


@dataclass
class CNNConfig:
    """CNN hyper-parameters.

    Attributes:
        input_shape: (channels, height, width) of one image.
        num_outputs: size of the linear ``head``; 0 = no head (``forward`` returns the features).
        channels: output channels of each block.
        kernel_size: odd kernel size of every conv (padding keeps the spatial size).
        convs_per_block: conv–norm–act units per block, before its pool.
        norm: ``batch`` or ``none``.
        activation: a name from ``nn.activations.ACTIVATIONS``.
        dropout: on the pooled features, before the head.
        gradient_checkpointing: in training, recompute each block's activations in the backward
            pass instead of storing them (less memory, ~1/3 more compute).
    """

    input_shape: tuple[int, ...] = (1, 28, 28)  # (channels, height, width)
    num_outputs: int = 10
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    convs_per_block: int = 1
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


class CNN(Model):
    """Conv ``blocks`` → global average pool → dropout → linear ``head`` (absent with ``num_outputs=0``)."""

    def __init__(self, config: CNNConfig):
        super().__init__(config)
        c = config
        blocks, in_ch, size = [], c.input_shape[0], min(c.input_shape[1:])
        for out_ch in c.channels:
            layers = [
                ConvNormAct(in_ch if i == 0 else out_ch, out_ch, c.kernel_size, norm=c.norm, act=c.activation)
                for i in range(c.convs_per_block)
            ]
            if size >= 2:  # pool while there is something left to pool
                layers.append(nn.MaxPool2d(2))
                size //= 2
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(in_ch, c.num_outputs) if c.num_outputs else None

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features the head reads: the last block's channels."""
        return self.config.channels[-1]

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each map :meth:`feature_maps` returns (one per block)."""
        return list(self.config.channels)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output ``(B, C_i, H_i, W_i)``, finest first (halved by each block's pool), for
        dense heads (detection, segmentation)."""
        if x.dim() == 3:  # (B, H, W) grey images -> (B, 1, H, W)
            x = x.unsqueeze(1)
        maps = []
        for block in self.blocks:
            x = maybe_checkpoint(block, x, enabled=self.config.gradient_checkpointing)  # (B, C, H', W')
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs)``, or the pooled features after dropout ``(B, feature_dim)``
        without a head."""
        x = self.drop(self.feature_maps(x)[-1].mean(dim=(2, 3)))  # global average pool -> (B, C)
        return x if self.head is None else self.head(x)


def _example_input(config: CNNConfig, batch_size: int = 2) -> tuple[torch.Tensor]:
    return (torch.randn(batch_size, *config.input_shape),)


FAMILY = Family(
    name="cnn",
    config_cls=CNNConfig,
    model_cls=CNN,
    presets={"cnn-tiny": {"input_shape": (3, 9, 7), "num_outputs": 5, "channels": [6, 11], "dropout": 0.1}},
    tiny_presets=("cnn-tiny",),
    example_input=_example_input,
)
