"""Position-wise feed-forward networks: the plain two-layer MLP and its gated (GLU) variant."""

from __future__ import annotations

import torch
from torch import nn

from bigmodel.nn.activations import activation


class FeedForward(nn.Module):
    """``fc1 → act → dropout → fc2``, the Transformer's position-wise FFN (Vaswani et al. 2017).

    The dropout after ``fc2`` (residual dropout) belongs to the block that adds the residual.

    Args:
        embed_dim: input and output features.
        hidden_dim: inner features (usually 4 × ``embed_dim``).
        act: activation name from ``nn.activations.ACTIVATIONS`` (BERT "gelu", GPT-2 "gelu_new").
        dropout: dropout on the inner activations.
        bias: biases on ``fc1`` and ``fc2`` (T5 has none).
    """

    def __init__(
        self, embed_dim: int, hidden_dim: int, act: str = "gelu", dropout: float = 0.0, bias: bool = True
    ):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.fc1(x)))  # (..., hidden_dim)
        return self.fc2(h)  # (..., embed_dim)


class GatedFeedForward(nn.Module):
    """Gated linear unit FFN (Shazeer 2020, "GLU Variants Improve Transformer").

    ``fc2(dropout(act(gate(x)) * fc1(x)))``. With ``act="gelu_new"`` this is T5 v1.1's gated-GELU
    (HF ``wi_0`` = ``gate``, ``wi_1`` = ``fc1``, ``wo`` = ``fc2``); with ``act="silu"`` it is SwiGLU
    (Llama ``gate_proj`` = ``gate``, ``up_proj`` = ``fc1``, ``down_proj`` = ``fc2``). Keeping ``fc1``
    and ``fc2`` as the in/out projections keeps the internal vocabulary ``mlp.{fc1,fc2}`` uniform.

    Args:
        embed_dim: input and output features.
        hidden_dim: inner features of each of ``gate`` and ``fc1``.
        act: activation applied to the gate branch.
        dropout: dropout on the gated product.
        bias: biases on all three projections (T5 and Llama have none).
    """

    def __init__(
        self, embed_dim: int, hidden_dim: int, act: str = "silu", dropout: float = 0.0, bias: bool = False
    ):
        super().__init__()
        self.gate = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.fc1 = nn.Linear(embed_dim, hidden_dim, bias=bias)
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.gate(x)) * self.fc1(x)  # (..., hidden_dim)
        return self.fc2(self.drop(h))  # (..., embed_dim)
