"""Activation functions by name, so configs stay plain strings."""

from __future__ import annotations

import math

import torch
from torch import nn


class NewGELU(nn.Module):
    """GELU, tanh approximation, written out as in the OpenAI GPT-2 / Google BERT code.

    Hugging Face calls this ``gelu_new`` (GPT-2, T5 v1.1). Spelled out rather than
    ``nn.GELU(approximate="tanh")`` because the fused kernel rounds differently, and checkpoint
    parity is checked to 1e-5.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GELUTanh(nn.GELU):
    """The same tanh approximation through PyTorch's fused kernel (HF ``gelu_pytorch_tanh``)."""

    def __init__(self):
        super().__init__(approximate="tanh")


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,  # exact, erf-based (BERT)
    "gelu_new": NewGELU,  # tanh approximation, HF formula (GPT-2, T5 v1.1)
    "gelu_tanh": GELUTanh,  # tanh approximation, fused kernel
    "silu": nn.SiLU,  # a.k.a. swish (SwiGLU)
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """Return a fresh activation module; ``name`` must be a key of ``ACTIVATIONS``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
