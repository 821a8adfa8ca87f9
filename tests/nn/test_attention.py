"""MultiHeadAttention and KVCache: parity with torch.nn.MultiheadAttention, HF T5Attention and a
naive softmax(QKᵀ)V reference; cached decoding equals the full causal forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigmodel.nn.attention import KVCache, MultiHeadAttention
from bigmodel.nn.positions import RelativePositionBias, RotaryEmbedding

B, T, C = 2, 7, 36
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def right_padding(lengths: list[int], S: int) -> torch.Tensor:
    """(B, S) bool, True for the first ``length`` positions of each row."""
    return torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]


def causal_bool(T: int, S: int) -> torch.Tensor:
    return torch.ones(T, S, dtype=torch.bool).tril(S - T)


def torch_mha_like(attn: MultiHeadAttention, kdim: int | None = None) -> nn.MultiheadAttention:
    """A torch.nn.MultiheadAttention carrying ``attn``'s weights."""
    ref = nn.MultiheadAttention(C, attn.num_heads, batch_first=True, kdim=kdim, vdim=kdim).eval()
    with torch.no_grad():
        if kdim is None:
            ref.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
        else:
            ref.q_proj_weight.copy_(attn.q.weight)
            ref.k_proj_weight.copy_(attn.k.weight)
            ref.v_proj_weight.copy_(attn.v.weight)
        ref.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
        ref.out_proj.weight.copy_(attn.o.weight)
        ref.out_proj.bias.copy_(attn.o.bias)
    return ref


def naive_attention(attn, x, context=None, causal=False, key_padding_mask=None, attn_bias=None):
    """softmax(scale · QKᵀ + bias, masked) V written out, kv head of query head h = h // (H / H_kv)."""
    H, Hkv, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    src = x if context is None else context
    Bx, Tq, S = x.shape[0], x.shape[1], src.shape[1]
    q = attn.q(x).view(Bx, Tq, H, D).transpose(1, 2)
    k = attn.k(src).view(Bx, S, Hkv, D).transpose(1, 2)[:, torch.arange(H) // (H // Hkv)]
    v = attn.v(src).view(Bx, S, Hkv, D).transpose(1, 2)[:, torch.arange(H) // (H // Hkv)]
    scale = D**-0.5 if attn.scale is None else attn.scale
    scores = q @ k.transpose(-1, -2) * scale  # (B, H, T, S)
    if attn_bias is not None:
        scores = scores + attn_bias
    allowed = torch.ones(Bx, 1, Tq, S, dtype=torch.bool)
    if causal:
        allowed = allowed & causal_bool(Tq, S)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    y = (probs @ v).transpose(1, 2).reshape(Bx, Tq, H * D)
    return attn.o(y)


# --- parity with torch.nn.MultiheadAttention ---------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_self_attention_matches_torch(causal, padded):
    attn = MultiHeadAttention(C, num_heads=4).eval()  # head_dim 9
    ref = torch_mha_like(attn)
    x = torch.randn(B, T, C)
    kpm = right_padding([T, 4], T) if padded else None
    ours = attn(x, causal=causal, key_padding_mask=kpm)
    theirs, _ = ref(
        x,
        x,
        x,
        key_padding_mask=None if kpm is None else ~kpm,  # torch: True = ignore
        attn_mask=~causal_bool(T, T) if causal else None,
        need_weights=False,
    )
    valid = kpm if padded and not causal else torch.ones(B, T, dtype=torch.bool)
    torch.testing.assert_close(ours[valid], theirs[valid], atol=ATOL, rtol=0)


def test_cross_attention_matches_torch():
    attn = MultiHeadAttention(C, num_heads=3, kv_dim=20).eval()  # head_dim 12, context of another width
    ref = torch_mha_like(attn, kdim=20)
    x, ctx = torch.randn(B, T, C), torch.randn(B, 5, 20)
    kpm = right_padding([5, 2], 5)
    ours = attn(x, ctx, key_padding_mask=kpm)
    theirs, _ = ref(x, ctx, ctx, key_padding_mask=~kpm, need_weights=False)
    assert ours.shape == (B, T, C)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


# --- naive reference: GQA / MQA, head_dim apart from embed_dim, scale, additive bias -------------


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("bias_batch", [1, B])
def test_gqa_bias_padding_causal_match_naive(kv_heads, bias_batch):
    attn = MultiHeadAttention(
        C, num_heads=4, num_kv_heads=kv_heads, head_dim=12, bias=False, scale=1.0
    ).eval()
    assert attn.k.weight.shape == (kv_heads * 12, C) and attn.o.weight.shape == (C, 48)
    x = torch.randn(B, T, C)
    bias = torch.randn(bias_batch, 4, T, T)
    kpm = right_padding([T, 5], T)
    for causal in (False, True):
        ours = attn(x, causal=causal, key_padding_mask=kpm, attn_bias=bias)
        ref = naive_attention(attn, x, causal=causal, key_padding_mask=kpm, attn_bias=bias)
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_cross_attention_gqa_matches_naive():
    attn = MultiHeadAttention(C, num_heads=4, num_kv_heads=2, head_dim=9).eval()
    x, ctx = torch.randn(B, T, C), torch.randn(B, 5, C)
    kpm = right_padding([3, 5], 5)
    torch.testing.assert_close(
        attn(x, ctx, key_padding_mask=kpm),
        naive_attention(attn, x, ctx, key_padding_mask=kpm),
        atol=ATOL,
        rtol=0,
    )


# --- parity with Hugging Face T5Attention (relative bias, no scaling, d_kv * heads != d_model) ---


@pytest.mark.parametrize("is_decoder", [False, True])
def test_matches_hf_t5_attention(is_decoder):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    cfg = T5Config(
        d_model=C,
        d_kv=12,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=5,
        is_decoder=is_decoder,
        dropout_rate=0.0,
    )
    cfg._attn_implementation = "eager"
    ref = T5Attention(cfg, has_relative_attention_bias=True, layer_idx=0, is_causal=is_decoder).eval()
    attn = MultiHeadAttention(C, 4, head_dim=12, bias=False, scale=1.0).eval()
    rel = RelativePositionBias(4, num_buckets=8, max_distance=5, bidirectional=not is_decoder)
    with torch.no_grad():
        for name in "qkvo":
            getattr(attn, name).weight.copy_(getattr(ref, name).weight)
        rel.weight.copy_(ref.relative_attention_bias.weight)

    x = torch.randn(B, T, C)
    kpm = right_padding([T, 5], T)
    allowed = kpm[:, None, None, :] & (causal_bool(T, T) if is_decoder else True)
    hf_mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    theirs = ref(x, mask=hf_mask)[0]
    ours = attn(x, causal=is_decoder, key_padding_mask=kpm, attn_bias=rel(T, T))
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


# --- KV cache: incremental decoding equals the full causal forward --------------------------------


def decode_in_chunks(attn, x, chunk, cache, kpm=None, rope=None, rel=None):
    outs = []
    for start in range(0, x.shape[1], chunk):
        xs = x[:, start : start + chunk]
        end = start + xs.shape[1]
        assert cache.length == start
        outs.append(
            attn(
                xs,
                causal=True,
                key_padding_mask=None if kpm is None else kpm[:, :end],
                attn_bias=None if rel is None else rel(xs.shape[1], end, offset=start),
                rope=None if rope is None else rope(torch.arange(start, end)),
                cache=cache,
            )
        )
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("max_length", [None, 9])
@pytest.mark.parametrize("kv_heads", [3, 1])
def test_cache_with_rope_and_left_padding_matches_full(chunk, max_length, kv_heads):
    attn = MultiHeadAttention(C, num_heads=3, num_kv_heads=kv_heads).eval()  # head_dim 12
    rope = RotaryEmbedding(12)
    x = torch.randn(B, T, C)
    kpm = torch.ones(B, T, dtype=torch.bool)
    kpm[1, :2] = False  # left padding, as in batched generation
    full = attn(x, causal=True, key_padding_mask=kpm, rope=rope(torch.arange(T)))
    cache = KVCache(max_length=max_length)
    inc = decode_in_chunks(attn, x, chunk, cache, kpm=kpm, rope=rope)
    assert cache.length == T and cache.keys.shape == (B, kv_heads, T, 12)
    assert torch.isfinite(inc).all()  # padded queries see no key: zeros, not NaN
    torch.testing.assert_close(inc, full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2])
def test_cache_without_masks_matches_full(chunk):
    """The is_causal fast path (full pass) against the explicit bottom-right mask (cached chunks)."""
    attn = MultiHeadAttention(C, num_heads=4).eval()
    x = torch.randn(B, T, C)
    torch.testing.assert_close(
        decode_in_chunks(attn, x, chunk, KVCache()), attn(x, causal=True), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("chunk", [1, 2])
def test_cache_with_t5_relative_bias_matches_full(chunk):
    attn = MultiHeadAttention(C, num_heads=4, head_dim=12, bias=False, scale=1.0).eval()
    rel = RelativePositionBias(4, num_buckets=8, max_distance=5, bidirectional=False)
    x = torch.randn(B, T, C)
    full = attn(x, causal=True, attn_bias=rel(T, T))
    torch.testing.assert_close(decode_in_chunks(attn, x, chunk, KVCache(), rel=rel), full, atol=ATOL, rtol=0)


def test_cross_attention_cache_projects_encoder_once():
    attn = MultiHeadAttention(C, num_heads=4, num_kv_heads=2).eval()
    x, ctx = torch.randn(B, T, C), torch.randn(B, 5, C)
    kpm = right_padding([5, 3], 5)
    calls = []
    attn.k.register_forward_hook(lambda *_: calls.append(1))
    full = attn(x, ctx, key_padding_mask=kpm)
    cache = KVCache()
    steps = [attn(x[:, t : t + 1], ctx, key_padding_mask=kpm, cache=cache) for t in range(T)]
    assert len(calls) == 2  # once for the full pass, once for the first cached step
    assert cache.length == 5
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


def test_cache_reorder_follows_beams():
    attn = MultiHeadAttention(C, num_heads=4).eval()
    x = torch.randn(B, T, C)
    cache = KVCache()
    decode_in_chunks(attn, x[:, :4], 2, cache)
    cache.reorder(torch.tensor([1, 1]))
    last = attn(x[[1, 1], 4:5], causal=True, cache=cache)
    full = attn(x[[1, 1], :5], causal=True)
    torch.testing.assert_close(last, full[:, 4:5], atol=ATOL, rtol=0)


def test_preallocated_cache_overflow_and_mask_length_are_checked():
    attn = MultiHeadAttention(C, num_heads=4).eval()
    x = torch.randn(B, 3, C)
    cache = KVCache(max_length=4)
    attn(x, causal=True, cache=cache)
    with pytest.raises(ValueError, match="max_length"):
        attn(x, causal=True, cache=cache)
    cache = KVCache()
    attn(x, causal=True, cache=cache)
    with pytest.raises(ValueError, match="whole sequence"):  # mask of the new tokens only
        attn(x[:, :1], causal=True, key_padding_mask=torch.ones(B, 1, dtype=torch.bool), cache=cache)


# --- behaviour -----------------------------------------------------------------------------------


def test_padding_content_does_not_leak():
    attn = MultiHeadAttention(C, num_heads=4).eval()
    x = torch.randn(B, T, C)
    kpm = right_padding([T, 4], T)
    y = x.clone()
    y[1, 4:] = torch.randn(3, C)  # change only the padded positions
    torch.testing.assert_close(attn(x, key_padding_mask=kpm)[1, :4], attn(y, key_padding_mask=kpm)[1, :4])


def test_bias_is_trained_through_attention():
    attn = MultiHeadAttention(C, num_heads=4, bias=False, scale=1.0)
    rel = RelativePositionBias(4, num_buckets=8, max_distance=5)
    attn(
        torch.randn(B, T, C), key_padding_mask=right_padding([T, 5], T), attn_bias=rel(T, T)
    ).sum().backward()
    assert rel.weight.grad is not None and rel.weight.grad.abs().sum() > 0


def test_dropout_only_in_training():
    attn = MultiHeadAttention(C, num_heads=4, dropout=0.5)
    x = torch.randn(B, T, C)
    assert not torch.allclose(attn(x), attn(x))
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultiHeadAttention(C, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        MultiHeadAttention(C, num_heads=5)
    attn = MultiHeadAttention(C, num_heads=4)
    cos_sin = RotaryEmbedding(10)(torch.arange(T))
    with pytest.raises(ValueError, match="self-attention"):
        attn(torch.randn(B, T, C), torch.randn(B, 5, C), rope=cos_sin)


def test_bf16_causal_path_matches_sdpa(monkeypatch):
    # bf16 causal self-attention on CPU skips SDPA's flash kernel (faster there): same function.
    import bigmodel.nn.attention as attention

    attn = MultiHeadAttention(64, num_heads=4).to(torch.bfloat16)
    x = torch.randn(2, 24, 64, dtype=torch.bfloat16)

    def run():
        xg = x.clone().requires_grad_()
        y = attn(xg, causal=True)
        y.float().square().sum().backward()
        return y.float(), xg.grad.float()

    y, grad = run()
    monkeypatch.setattr(attention, "_UNFUSED_MAX_T", 0)  # force SDPA
    y_sdpa, grad_sdpa = run()
    torch.testing.assert_close(y, y_sdpa, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grad, grad_sdpa, atol=5e-2, rtol=5e-2)
    ref = naive_attention(attn.float(), x.float(), causal=True)
    torch.testing.assert_close(y, ref, atol=2e-2, rtol=2e-2)
