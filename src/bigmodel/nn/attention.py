"""Multi-head attention on ``F.scaled_dot_product_attention``, with masks and a KV cache.

One module covers the attention of every Transformer family here: self- and cross-attention
(Vaswani et al. 2017), causal and padding masks, an additive logit bias (T5's relative positions,
Raffel et al. 2020), multi-query / grouped-query heads (Shazeer 2019; Ainslie et al. 2023), rotary
queries and keys (Su et al. 2021), and incremental decoding through ``KVCache``.

Masks follow SDPA's convention: boolean True = attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.nn.positions import apply_rotary


class KVCache:
    """Keys and values of one attention layer, kept across decoding steps.

    Self-attention appends each step's keys/values and attends over everything so far. A
    cross-attention cache is filled once, from the encoder output, on the first step;
    ``MultiHeadAttention`` reads it on later steps instead of projecting the encoder output again.
    A decoder keeps one cache per attention layer (two per block with cross-attention).

    Tensors are ``(B, H_kv, S, D)``: grouped-query models store only their ``H_kv`` heads.

    Args:
        max_length: if given, keys/values go into a buffer of that many positions allocated on the
            first update (no re-allocation per step); otherwise each step concatenates.
    """

    def __init__(self, max_length: int | None = None):
        self.max_length = max_length
        self.length = 0  # positions held; the next query's position offset
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    @property
    def keys(self) -> torch.Tensor | None:
        """Cached keys ``(B, H_kv, length, D)``, or None when empty."""
        return None if self._k is None else self._k[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor | None:
        """Cached values ``(B, H_kv, length, D)``, or None when empty."""
        return None if self._v is None else self._v[:, :, : self.length]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new ``k``/``v`` ``(B, H_kv, T, D)``; return all so far, ``(B, H_kv, length, D)``."""
        T = k.shape[2]
        if self.max_length is None:
            self._k = k if self._k is None else torch.cat([self._k, k], dim=2)
            self._v = v if self._v is None else torch.cat([self._v, v], dim=2)
        else:
            if self.length + T > self.max_length:
                raise ValueError(
                    f"KVCache of max_length={self.max_length} cannot take {self.length} + {T} positions"
                )
            if self._k is None:
                self._k = k.new_zeros(*k.shape[:2], self.max_length, k.shape[3])
                self._v = v.new_zeros(*v.shape[:2], self.max_length, v.shape[3])
            self._k[:, :, self.length : self.length + T] = k
            self._v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.keys, self.values

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search: follow each surviving beam's parent)."""
        if self._k is not None:
            self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)

    def __repr__(self) -> str:
        return f"KVCache(length={self.length}, max_length={self.max_length})"


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` heads, projections ``q``, ``k``, ``v``, ``o``.

    Args:
        embed_dim: features of the query input and of the output.
        num_heads: query heads ``H``.
        num_kv_heads: key/value heads ``H_kv`` dividing ``H`` (default ``H``; 1 = multi-query, Shazeer
            2019; in between = grouped-query, Ainslie et al. 2023). Query head ``h`` reads kv head
            ``h // (H / H_kv)``, as Hugging Face's ``repeat_kv``.
        head_dim: features per head ``D`` (default ``embed_dim // num_heads``). T5 sets it apart from
            ``embed_dim``: inner width ``H * D`` may differ from ``embed_dim``.
        kv_dim: features of the cross-attention ``context`` (default ``embed_dim``).
        bias: biases on the projections (BERT, GPT-2: True; T5, Llama: False).
        out_bias: bias on the output projection ``o`` when it differs from ``bias`` (default
            ``bias``); Qwen2 has q/k/v biases and none on ``o``.
        dropout: dropout on the attention probabilities, in training only.
        scale: logit scale (default ``1/sqrt(D)``; T5 folds it into its init and uses 1.0).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        kv_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
        out_bias: bool | None = None,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}; set head_dim"
                )
            head_dim = embed_dim // num_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads {num_kv_heads} must divide num_heads {num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        kv_dim = embed_dim if kv_dim is None else kv_dim
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.dropout, self.scale = dropout, scale
        self.q = nn.Linear(embed_dim, num_heads * head_dim, bias=bias)
        self.k = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=bias)
        self.v = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=bias)
        self.o = nn.Linear(num_heads * head_dim, embed_dim, bias=bias if out_bias is None else out_bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` to itself, or to ``context`` (cross-attention).

        Args:
            x: queries' input ``(B, T, embed_dim)``.
            context: keys'/values' input ``(B, S, kv_dim)`` for cross-attention; None for
                self-attention. With a filled cross-attention ``cache`` it is not read again.
            causal: query ``i`` sees only keys at or before its own position. With a cache holding
                ``P`` positions the queries sit at ``P .. P+T-1`` (mask aligned bottom-right).
            key_padding_mask: ``(B, S)`` bool, True = real token, over *all* keys: cached and new
                for self-attention, the encoder sequence for cross-attention.
            attn_bias: float ``(B or 1, H, T, S)`` added to the logits (T5 relative position bias).
            cache: self-attention: appended to, then attended over. Cross-attention: filled with the
                projected ``context`` when empty, reused when not.
            rope: ``(cos, sin)`` from ``RotaryEmbedding`` at the queries' positions, applied to
                queries and new keys before caching (self-attention only).

        Returns:
            ``(B, T, embed_dim)``. Query rows with no key to attend to (padding queries under a
            causal mask) come out of SDPA as zeros (PyTorch >= 2.5), not NaN; ignore them.
        """
        B, T, _ = x.shape  # (batch, query time, channels)
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        cross = context is not None
        if rope is not None and cross:
            raise ValueError("rope applies to self-attention only; got a cross-attention context")

        q = self.q(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if rope is not None:
            q = apply_rotary(q, *rope)
        if cross and cache is not None and cache.length:
            k, v = cache.keys, cache.values  # encoder K/V were projected on the first step
        else:
            src = context if cross else x
            S_new = src.shape[1]
            k = self.k(src).view(B, S_new, Hkv, D).transpose(1, 2)  # (B, Hkv, S_new, D)
            v = self.v(src).view(B, S_new, Hkv, D).transpose(1, 2)
            if rope is not None:
                k = apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.update(k, v)  # (B, Hkv, S, D), S = cached + new
        if Hkv != H:  # grouped-query: each kv head serves H / Hkv consecutive query heads
            k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(H // Hkv, dim=1)

        mask, is_causal = _merge_masks(T, k.shape[2], causal, key_padding_mask, attn_bias, q)
        dropout_p = self.dropout if self.training else 0.0
        if is_causal and not dropout_p and _bf16_cpu_unfused_wins(q):
            y = _causal_attention_bf16(q, k, v, self.scale)  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.scale
            )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.o(y)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"dropout={self.dropout}, scale={self.scale}"
        )


# Longest sequence for which the unfused bf16 path below beat SDPA's CPU flash kernel (B·T = 2048,
# 6 heads of 64, forward + backward, 2 threads): T=64 6 vs 22 ms, 256 14 vs 24 ms, 512 30 vs 41 ms,
# 1024 55 vs 48 ms (slower, and the (T, T) scores would cost B·H·T² memory).
_UNFUSED_MAX_T = 512


def _bf16_cpu_unfused_wins(q: torch.Tensor) -> bool:
    return q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.shape[2] <= _UNFUSED_MAX_T


def _causal_attention_bf16(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """Causal attention spelled out in bf16, for bf16 autocast training on CPU.

    Why: SDPA's CPU flash kernel is far from the bf16 matmul peak at these sizes; its backward
    especially (18 ms vs 9 ms for this path at B=8, H=6, T=256, D=64). In the 6 × 384 GPT bf16
    training step this path took the native/HF speed-up from ~1.01× to ~1.15× (bench/models.py
    ``gpt_training_bf16``; docs/results.md).
    Precision: the scores are rounded to bf16 before the softmax, as any attention built from
    autocast's bf16 matmuls (e.g. Hugging Face's eager GPT-2 attention under autocast); the flash
    kernel keeps them in fp32. The softmax itself accumulates in fp32.
    """
    T, S = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-1, -2)  # (B, H, T, S)
    # -inf above the diagonal, 0 elsewhere. Adding it in place equals masked_fill_ on finite scores
    # and was 4x faster in bf16 (0.3 vs 1.4 ms on (8, 6, 256, 256)); the matmul's backward does not
    # need the scores.
    scores.add_(torch.full((T, S), float("-inf"), dtype=q.dtype, device=q.device).triu_(S - T + 1))
    return torch.softmax(scores, dim=-1) @ v  # (B, H, T, D)


def _merge_masks(
    T: int,
    S: int,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
    attn_bias: torch.Tensor | None,
    q: torch.Tensor,
) -> tuple[torch.Tensor | None, bool]:
    """Fold causal, padding and bias into the one ``attn_mask`` SDPA takes; return (mask, is_causal).

    The mask is bool ``(B or 1, 1, T, S)`` without a bias and float ``(B or 1, H, T, S)`` with one.
    """
    if causal and T == S and key_padding_mask is None and attn_bias is None:
        return None, True  # nothing cached: SDPA's own causal mask lets it pick fused kernels
    mask = None
    if key_padding_mask is not None:
        if key_padding_mask.shape[-1] != S:
            raise ValueError(
                f"key_padding_mask covers {key_padding_mask.shape[-1]} keys but attention has {S} "
                "(with a cache, pass the mask of the whole sequence so far)"
            )
        mask = key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    if causal and T > 1:  # a single query is the newest position and sees every key
        # Query i sits at position S - T + i (the cache holds the first S - T) and sees keys up to it.
        # SDPA's is_causal aligns top-left, which is wrong once a prefix is cached.
        c = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # (T, S)
        mask = c if mask is None else mask & c
    if attn_bias is not None:
        bias = attn_bias.to(q.dtype)
        mask = bias if mask is None else torch.where(mask, bias, float("-inf"))  # broadcasts B and H
    return mask, False
