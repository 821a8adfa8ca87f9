"""Low-rank adaptation of a linear layer (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"): ``y = W x + b + (alpha / r) · B A dropout(x)`` with ``W``, ``b`` frozen and only the rank-``r``
factors ``A`` (r × in) and ``B`` (out × r) trained.

``LoRALinear`` *is* an ``nn.Linear`` (same ``weight`` and ``bias`` tensors, same state-dict keys) with
``lora_A`` and ``lora_B`` beside them, so a family's checkpoint key map still names the base weights and
the adapter adds only ``<path>.lora_A.weight`` / ``<path>.lora_B.weight`` — the names PEFT uses.
Initialisation is PEFT's (and loralib's): ``A`` as ``nn.Linear`` initialises its weight (Kaiming-uniform,
a = √5), ``B`` zeros, so a fresh adapter leaves the model's outputs unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a trainable low-rank update; see the module docstring.

    Build it around an existing layer with :meth:`from_linear` (the weights are shared, not copied).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        r: rank of the update (>= 1).
        alpha: scale numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the input of ``A`` (PEFT's ``lora_dropout``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        r: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._add_adapter(r, alpha, dropout)

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> LoRALinear:
        """Wrap ``linear``: its ``weight`` and ``bias`` Parameters are shared, and frozen."""
        if isinstance(linear, LoRALinear):
            raise ValueError("this layer already has a LoRA adapter")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer._add_adapter(r, alpha, dropout)
        return layer

    def _add_adapter(self, r: int, alpha: float, dropout: float) -> None:
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"r must be a whole number >= 1, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.r, self.alpha = r, float(alpha)
        self.scaling = self.alpha / r
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        self.merged = False
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A as ``nn.Linear`` initialises a weight (Kaiming-uniform, a = √5); B zeros: ``ΔW = 0``."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) · B A``, shaped like ``weight`` (out × in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # (..., out)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``weight`` (the forward then costs one matmul); undone by :meth:`unmerge`."""
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from ``weight`` again (exact up to rounding)."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weights (the adapter folded in for good)."""
        self.merge()
        linear = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(linear)
        linear.in_features, linear.out_features = self.in_features, self.out_features
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"
