"""Normalisation layers over the last (feature) dimension."""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension with the two knobs the families differ in.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the variance; BERT uses 1e-12, GPT-2 and the Transformer 1e-5.
        bias: learn an additive bias (``False`` for bias-free variants).
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019) as in T5 (Raffel et al. 2020).

    ``y = w * x / sqrt(mean(x²) + eps)``: no mean subtraction, no bias. The mean of squares is taken
    in fp32 whatever the input dtype, so half-precision inputs do not overflow; the result is cast to
    the weight's dtype when that is fp16/bf16. Matches Hugging Face ``T5LayerNorm`` operation by
    operation.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square (T5: 1e-6).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)  # (..., 1), fp32
        x = x * torch.rsqrt(var + self.eps)  # promotes to fp32
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


NORMS: dict[str, type[nn.Module]] = {"layer": LayerNorm, "rms": RMSNorm}


def norm(name: str, dim: int, eps: float) -> nn.Module:
    """Return a fresh norm layer by name (``"layer"`` or ``"rms"``) over ``dim`` features."""
    if name not in NORMS:
        raise ValueError(f"norm {name!r} is not one of {sorted(NORMS)}")
    return NORMS[name](dim, eps=eps)
