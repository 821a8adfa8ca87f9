"""Positional encodings: T5 buckets/bias and RoPE against Hugging Face, sinusoidal against the
PyTorch tutorial formula, learned positions."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, T5Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.t5.modeling_t5 import T5Attention

from bigmodel.nn.positions import (
    LearnedPositionalEmbedding,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    apply_rotary,
    relative_position_bucket,
    sinusoidal_table,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- T5 relative position bias --------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 20), (7, 9)])
def test_relative_buckets_match_hf(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-300, 301)[None, :] - torch.arange(0, 5)[:, None]  # (5, 601), both signs, far
    ours = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    assert ours.dtype == torch.long and torch.equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() < num_buckets


@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize(("T", "S", "offset"), [(7, 7, 0), (1, 8, 7), (2, 9, 7), (3, 5, 0)])
def test_relative_bias_matches_hf_compute_bias(is_decoder, T, S, offset):
    cfg = T5Config(
        d_model=36,
        d_kv=12,
        num_heads=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=6,
        is_decoder=is_decoder,
    )
    ref = T5Attention(cfg, has_relative_attention_bias=True, layer_idx=0)
    ours = RelativePositionBias(3, num_buckets=8, max_distance=6, bidirectional=not is_decoder)
    with torch.no_grad():
        ours.weight.copy_(ref.relative_attention_bias.weight)
    bias = ours(T, S, offset=offset)
    assert bias.shape == (1, 3, T, S)
    assert torch.equal(bias, ref.compute_bias(T, S, past_seen_tokens=offset))


def test_relative_bias_offset_rows_equal_full_rows():
    """A cached step's bias is the matching row of the full-sequence bias."""
    rel = RelativePositionBias(3, num_buckets=8, max_distance=6, bidirectional=False)
    full = rel(7, 7)
    assert torch.equal(rel(2, 6, offset=4), full[:, :, 4:6, :6])
    assert "weight" in dict(rel.named_parameters())


# --- sinusoidal --------------------------------------------------------------------------------


def tutorial_table(max_len: int, d_model: int) -> torch.Tensor:
    """PositionalEncoding from the PyTorch nn.Transformer tutorial / Annotated Transformer."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def test_sinusoidal_matches_tutorial_and_formula():
    assert torch.equal(sinusoidal_table(50, 36), tutorial_table(50, 36))
    table = sinusoidal_table(50, 37)  # odd width: sines get the extra column
    p, i = 13, 5
    assert table[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 37)), abs=1e-6)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 37)), abs=1e-6)
    assert table[p, 36].item() == pytest.approx(math.sin(p / 10000 ** (36 / 37)), abs=1e-6)


def test_sinusoidal_module_lookup_and_state_dict():
    pe = SinusoidalPositionalEmbedding(36, max_positions=64)
    assert pe.state_dict() == {}  # fixed, never saved
    torch.testing.assert_close(pe(torch.arange(3, 10)), tutorial_table(64, 36)[3:10])
    assert pe(torch.tensor([[0, 1], [5, 6]])).shape == (2, 2, 36)


def test_learned_positions_lookup():
    emb = LearnedPositionalEmbedding(16, 36)
    assert emb(torch.arange(4, 11)).shape == (7, 36)
    assert torch.equal(emb(torch.arange(4, 11)), emb.weight[4:11])
    assert list(emb.state_dict()) == ["weight"]


# --- rotary ------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_rotary_matches_hf_llama(base):
    D = 12
    cfg = LlamaConfig(
        hidden_size=36,
        num_attention_heads=3,
        head_dim=D,
        rope_parameters={"rope_type": "default", "rope_theta": base},
    )
    ref = LlamaRotaryEmbedding(cfg)
    rope = RotaryEmbedding(D, base=base)
    q, k = torch.randn(2, 3, 7, D), torch.randn(2, 1, 7, D)
    positions = torch.arange(5, 12)[None].expand(2, -1)  # an offset, as after a cached prefix
    cos, sin = rope(positions)
    ref_cos, ref_sin = ref(q, positions)
    assert cos.shape == (2, 7, D) and torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, ref_cos, ref_sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin), ref_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rotary(k, cos, sin), ref_k, atol=1e-6, rtol=0)
    cos1, sin1 = rope(torch.arange(5, 12))  # shared positions (T, D) broadcast the same way
    torch.testing.assert_close(apply_rotary(q, cos1, sin1), ref_q, atol=1e-6, rtol=0)


def test_rotary_scores_depend_only_on_distance():
    rope = RotaryEmbedding(12)
    q, k = torch.randn(12), torch.randn(12)

    def score(pq: int, pk: int) -> torch.Tensor:
        (cq, sq), (ck, sk) = rope(torch.tensor([pq])), rope(torch.tensor([pk]))
        return (apply_rotary(q[None, None, None], cq, sq) * apply_rotary(k[None, None, None], ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(40, 38), atol=1e-4, rtol=0)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)
    torch.testing.assert_close(score(0, 0), q @ k)  # position 0 is the identity rotation


def test_rotary_keeps_dtype_and_rejects_odd_head_dim():
    rope = RotaryEmbedding(12)
    x = torch.randn(1, 2, 3, 12, dtype=torch.bfloat16)
    assert apply_rotary(x, *rope(torch.arange(3))).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(9)
