"""Positional information: learned and sinusoidal absolute embeddings, T5 relative bias, rotary.

Absolute embeddings and rotary take ``positions``, a LongTensor ``(T,)`` or ``(B, T)``. During cached
decoding pass ``torch.arange(past, past + T)`` where ``past = cache.length``; per-row positions
``(B, T)`` serve left-padded batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LearnedPositionalEmbedding(nn.Embedding):
    """Learned absolute positions (BERT, GPT-2): one trained vector per position.

    Call with ``positions`` ``(T,)`` or ``(B, T)`` → ``(T, C)`` or ``(B, T, C)``; positions must be
    below ``max_positions``.

    Args:
        max_positions: number of positions with a vector (BERT, GPT-2: 512 / 1024).
        embed_dim: size of each vector.
    """

    def __init__(self, max_positions: int, embed_dim: int):
        super().__init__(max_positions, embed_dim)
        self.max_positions = max_positions


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed encoding of Vaswani et al. 2017, ``(num_positions, dim)`` in fp32.

    ``PE[p, 2i] = sin(p / 10000^(2i/dim))`` and ``PE[p, 2i+1] = cos(p / 10000^(2i/dim))``: sines on
    even features and cosines on odd ones, interleaved, computed exactly as in the PyTorch
    tutorial and the Annotated Transformer (not the [sin | cos] halves of tensor2tensor/fairseq).
    """
    position = torch.arange(num_positions).unsqueeze(1)  # (P, 1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term[: dim // 2])  # odd dim: one cosine fewer
    return table


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al. 2017), see ``sinusoidal_table``.

    The table is a non-persistent buffer: it follows ``.to(device)`` but is not in the state dict.
    Call with ``positions`` ``(T,)`` or ``(B, T)`` → ``(T, C)`` or ``(B, T, C)``.

    Args:
        embed_dim: size of each vector.
        max_positions: rows precomputed.
    """

    def __init__(self, embed_dim: int, max_positions: int = 5000):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_positions, embed_dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Map ``key_pos - query_pos`` to T5's buckets (Raffel et al. 2020; from Mesh TensorFlow).

    Half the buckets hold exact small distances, the other half log-spaced distances up to
    ``max_distance``; farther distances share the last bucket. Bidirectional (encoder) splits the
    buckets between keys before and after the query; causal (decoder) only sees keys before it,
    so future distances fall into bucket 0. Op for op the Hugging Face computation, so buckets are
    bit-identical.

    Args:
        relative_position: integer tensor of ``key_pos - query_pos``, any shape.
        bidirectional: encoder (True) or causal decoder (False).
        num_buckets: buckets in total.
        max_distance: distances at or beyond this share the last bucket.

    Returns:
        LongTensor of the same shape, values in ``[0, num_buckets)``.
    """
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    # relative_position is now a distance in [0, inf)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # log(0) = -inf at distance 0 is harmless: torch.where below picks the exact bucket there
    if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, if_large)


class RelativePositionBias(nn.Module):
    """T5's learned per-head scalar bias on attention logits, indexed by bucketed distance.

    Raffel et al. 2020 (after Shaw et al. 2018). The result is added to the logits through
    ``MultiHeadAttention(attn_bias=...)``; T5 computes it once in the first layer and reuses it in all.

    Args:
        num_heads: one scalar per head and bucket.
        num_buckets: T5: 32.
        max_distance: T5: 128.
        bidirectional: True for the encoder, False for the causal decoder.
    """

    def __init__(
        self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_buckets, num_heads))  # (buckets, H)
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional

    def forward(self, query_len: int, key_len: int, offset: int = 0) -> torch.Tensor:
        """Bias for queries at ``offset .. offset+query_len-1`` over keys ``0 .. key_len-1``.

        With a KV cache pass ``offset = cache.length`` (before the update) and
        ``key_len = offset + query_len``.

        Returns:
            ``(1, H, query_len, key_len)`` float bias.
        """
        device = self.weight.device
        q_pos = torch.arange(query_len, dtype=torch.long, device=device)[:, None] + offset  # (T, 1)
        k_pos = torch.arange(key_len, dtype=torch.long, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(
            k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance
        )
        bias = F.embedding(buckets, self.weight)  # (T, S, H)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, H, T, S)

    def extra_repr(self) -> str:
        h = self.weight.shape[1]
        return (
            f"heads={h}, buckets={self.num_buckets}, max_distance={self.max_distance}, "
            f"bidirectional={self.bidirectional}"
        )


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, RoPE (Su et al. 2021, RoFormer), "rotate_half" layout as in HF Llama.

    Feature ``i`` and ``i + D/2`` of each head form a pair rotated by ``position · base^(-2i/D)``.
    Returns the ``(cos, sin)`` tables that ``apply_rotary`` (or ``MultiHeadAttention(rope=...)``)
    uses on queries and keys; they stay fp32 and are cast to the activations' dtype there.

    Args:
        head_dim: per-head features rotated (even).
        base: frequency base θ (10000 in RoFormer and Llama 2).
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))  # (D/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions`` ``(T,)`` or ``(B, T)`` → ``(cos, sin)``, each ``(T, D)`` or ``(B, T, D)``, fp32."""
        freqs = positions[..., None].float() * self.inv_freq.float()  # (..., T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., T, D)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] → [-x2, x1]`` over the last dimension."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, D)`` by ``RotaryEmbedding``'s ``cos``/``sin``, ``(T, D)`` or ``(B, T, D)``."""
    if cos.dim() == 3:  # per-row positions: broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
