"""Feed-forward network (multi-layer perceptron).

Input of any shape ``(B, *input_shape)`` is flattened; each hidden layer is
Linear → [BatchNorm | LayerNorm] → activation → dropout, then a linear ``head``.

With ``num_outputs=0`` there is no head: ``forward`` returns the last hidden layer's output
``(B, feature_dim)`` (the flattened input when there are no hidden layers), for a task to put its own
head on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bigmodel.models.base import Model, maybe_checkpoint
from bigmodel.models.registry import Family
from bigmodel.nn.activations import ACTIVATIONS, activation

NORMS = ("none", "batch", "layer")


@dataclass
class MLPConfig:
    """MLP hyper-parameters.

    Attributes:
        input_shape: shape of one example; flattened to ``prod(input_shape)`` features.
        num_outputs: size of the linear ``head``; 0 = no head (``forward`` returns the features).
        hidden_sizes: width of each hidden layer, in order.
        activation: a name from ``nn.activations.ACTIVATIONS``.
        dropout: after every hidden layer's activation.
        norm: ``none``, ``batch`` or ``layer`` normalisation after each hidden Linear.
        gradient_checkpointing: in training, recompute each hidden layer's activations in the
            backward pass instead of storing them (less memory, ~1/3 more compute).
    """

    input_shape: tuple[int, ...] = (64,)
    num_outputs: int = 10
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 64])
    activation: str = "relu"
    dropout: float = 0.0
    norm: str = "none"
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        if not self.input_shape or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be positive sizes, got {self.input_shape}")
        if self.num_outputs < 0:
            raise ValueError(f"num_outputs must be >= 0 (0 = no head), got {self.num_outputs}")
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must all be >= 1, got {self.hidden_sizes}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} is not one of {list(NORMS)}")


class MLPBlock(nn.Sequential):
    def __init__(self, in_features: int, out_features: int, config: MLPConfig):
        norm = {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}[config.norm]
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.norm = norm(out_features) if config.norm != "none" else nn.Identity()
        self.act = activation(config.activation)
        self.drop = nn.Dropout(config.dropout)


class MLP(Model):
    """Flatten → hidden ``blocks`` → linear ``head`` (absent with ``num_outputs=0``)."""

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        sizes = [math.prod(config.input_shape), *config.hidden_sizes]
        self.blocks = nn.ModuleList(MLPBlock(i, o, config) for i, o in zip(sizes, sizes[1:], strict=False))
        self.head = nn.Linear(sizes[-1], config.num_outputs) if config.num_outputs else None

    @property
    def feature_dim(self) -> int:
        """Width of the features the head reads: the last hidden size, or the flattened input."""
        return (
            self.config.hidden_sizes[-1] if self.config.hidden_sizes else math.prod(self.config.input_shape)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs)``, or the features ``(B, feature_dim)`` without a head."""
        x = x.flatten(1)  # (B, features)
        for block in self.blocks:
            x = maybe_checkpoint(block, x, enabled=self.config.gradient_checkpointing)
        return x if self.head is None else self.head(x)


def _example_input(config: MLPConfig, batch_size: int = 2) -> tuple[torch.Tensor]:
    return (torch.randn(batch_size, *config.input_shape),)


FAMILY = Family(
    name="mlp",
    config_cls=MLPConfig,
    model_cls=MLP,
    presets={"mlp-tiny": {"input_shape": (7,), "num_outputs": 3, "hidden_sizes": [13, 5], "norm": "batch"}},
    tiny_presets=("mlp-tiny",),
    example_input=_example_input,
)
