"""Fast generation: the static-cache greedy decoder equals ``generate``, speculative decoding equals
greedy decoding of the target exactly, and the int8 decode layers are in place and close to float."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.compress.fast_decode import (
    MAX_KERNEL_ROWS,
    GemvLinear,
    Int4DecodeLinear,
    Int8DecodeLinear,
    _per_group_uint4,
    gemv_layout,
    int4_decode,
    int8_decode,
)
from bigmodel.models import create_model
from bigmodel.models.fast_generate import StaticDecoder, greedy_generate
from bigmodel.models.generate import generate
from bigmodel.models.speculative import speculative_generate

V = 97
PRESETS = ["gpt-tiny", "llama-tiny", "llama-tiny-qwen2"]


def tiny(preset: str, seed: int = 0) -> nn.Module:
    """A tiny random decoder with peaked distributions (a wide init), so greedy choices are not near-ties."""
    torch.manual_seed(seed)
    return create_model(preset, max_positions=96, init_std=0.3, dropout=0.0).eval()


def perturbed(model: nn.Module, noise: float, seed: int = 1) -> nn.Module:
    """A copy with noisy weights: a draft that agrees with ``model`` often but not always."""
    torch.manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * noise * p.std().clamp(min=1e-3))
    return other


def left_padded(lengths, T: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V - 2, (len(lengths), T), generator=g)
    mask = torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]  # pads on the left
    return ids.masked_fill(~mask, 0), mask


# --- static-cache greedy decoding -----------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_generate_equals_generate_with_left_padding(preset):
    model = tiny(preset)
    ids, mask = left_padded([9, 4, 7], 9)
    expected = generate(model, ids, attention_mask=mask, max_new_tokens=12, stop_tokens=())
    got = greedy_generate(model, ids, attention_mask=mask, max_new_tokens=12, stop_tokens=())
    assert torch.equal(got, expected)


def test_greedy_generate_stops_and_pads_as_generate():
    model = tiny("gpt-tiny")
    ids, mask = left_padded([6, 3], 6, seed=4)
    free = generate(model, ids, attention_mask=mask, max_new_tokens=10, stop_tokens=())
    stop = int(free[0, 6 + 2])  # row 0 emits this third: it finishes there, row 1 goes on
    for max_new in (0, 1, 10):
        expected = generate(
            model, ids, attention_mask=mask, max_new_tokens=max_new, stop_tokens=[stop], pad_token_id=5
        )
        got = greedy_generate(
            model, ids, attention_mask=mask, max_new_tokens=max_new, stop_tokens=[stop], pad_token_id=5
        )
        assert torch.equal(got, expected)
    # Both rows stopping ends the generation early, as in generate.
    one = ids[:1, :]
    expected = generate(model, one, max_new_tokens=10, stop_tokens=[stop])
    assert torch.equal(greedy_generate(model, one, max_new_tokens=10, stop_tokens=[stop]), expected)
    assert expected.shape[1] < 6 + 10


def test_static_decoder_rollback_recomputes_the_same_logits():
    model = tiny("llama-tiny")
    ids = torch.randint(0, V, (1, 10))
    dec = StaticDecoder(model, 1, 16)
    with torch.no_grad():
        dec.feed(ids[:, :6])
        first = dec.feed(ids[:, 6:9], last=3)
        dec.rollback(7)  # keep token 6, forget 7 and 8
        again = dec.feed(ids[:, 7:9], last=2)
        torch.testing.assert_close(again, first[:, 1:], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="cannot roll back"):
            dec.rollback(20)
        with pytest.raises(ValueError, match="max_length"):
            dec.feed(torch.zeros(1, 8, dtype=torch.long))


# --- speculative decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_speculative_equals_greedy_of_the_target(preset, k):
    target = tiny(preset)
    draft = perturbed(target, noise=0.5)
    for seed in range(3):
        prompt = torch.randint(0, V, (1, 3 + 2 * seed), generator=torch.Generator().manual_seed(seed))
        expected = greedy_generate(target, prompt, max_new_tokens=20, stop_tokens=())
        got, stats = speculative_generate(
            target, draft, prompt, max_new_tokens=20, k=k, stop_tokens=(), return_stats=True
        )
        assert torch.equal(got, expected), (seed, got, expected)
        assert stats.proposed >= stats.accepted >= 0


def test_speculative_acceptance_follows_the_draft():
    target = tiny("gpt-tiny")
    prompt = torch.randint(0, V, (1, 5))
    expected = greedy_generate(target, prompt, max_new_tokens=24, stop_tokens=())
    same, stats = speculative_generate(
        target, target, prompt, max_new_tokens=24, k=4, stop_tokens=(), return_stats=True
    )
    assert torch.equal(same, expected)
    assert stats.acceptance_rate == 1.0 and stats.rounds <= 24 // 5 + 1  # k + 1 tokens per round
    stranger = tiny("gpt-tiny", seed=7)  # an unrelated draft: output unchanged, little accepted
    other, stats = speculative_generate(
        target, stranger, prompt, max_new_tokens=24, k=4, stop_tokens=(), return_stats=True
    )
    assert torch.equal(other, expected)
    assert stats.acceptance_rate < 0.5


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_stops_at_eos_and_budget(preset, k):
    target = tiny(preset)
    draft = perturbed(target, noise=0.3)
    prompt = torch.randint(0, V, (1, 4), generator=torch.Generator().manual_seed(3))
    free = greedy_generate(target, prompt, max_new_tokens=16, stop_tokens=())
    for position in (0, 1, 5, 11):  # the stop token as the first, second, ... new token
        stop = int(free[0, 4 + position])
        expected = greedy_generate(target, prompt, max_new_tokens=16, stop_tokens=[stop])
        got = speculative_generate(target, draft, prompt, max_new_tokens=16, k=k, stop_tokens=[stop])
        assert torch.equal(got, expected)
        assert int(got[0, -1]) == stop
    for max_new in (0, 1, 2, 7):
        expected = greedy_generate(target, prompt, max_new_tokens=max_new, stop_tokens=())
        assert torch.equal(
            speculative_generate(target, draft, prompt, max_new_tokens=max_new, k=k, stop_tokens=()), expected
        )
    # The config's eos_token_id is the default stop token, as in generate.
    expected = greedy_generate(target, prompt, max_new_tokens=16)
    assert torch.equal(speculative_generate(target, draft, prompt, max_new_tokens=16, k=k), expected)


def test_speculative_takes_a_left_padded_row_and_refuses_batches():
    target = tiny("gpt-tiny")
    ids, mask = left_padded([5], 8)
    expected = greedy_generate(target, ids[:, 3:], max_new_tokens=8, stop_tokens=())
    assert torch.equal(
        speculative_generate(target, target, ids, mask, max_new_tokens=8, stop_tokens=()), expected
    )
    with pytest.raises(ValueError, match="batch 1"):
        speculative_generate(target, target, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be"):
        speculative_generate(target, target, ids[:, 3:], k=0)


# --- int8 decode layers -----------------------------------------------------------------------------


def test_int8_decode_swaps_every_linear_and_keeps_the_float_model():
    model = tiny("gpt-tiny")
    q = int8_decode(model)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert linears and all(isinstance(q.get_submodule(n), Int8DecodeLinear) for n in linears)
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert all(type(model.get_submodule(n)) is nn.Linear for n in linears)  # the original is untouched
    assert q.get_submodule("blocks.0.mlp.fc1").weight_int8.dtype == torch.int8
    assert isinstance(q.embed, nn.Embedding)  # lookups read one row: the table stays float


@pytest.mark.parametrize("rows", [1, 3, MAX_KERNEL_ROWS + 5])  # the kernel and the dequantized fallback
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("width", [64, 36])  # 36: a width the kernel gets wrong, so never given to it
def test_int8_decode_linear_matches_float_within_int8_and_bf16_error(rows, bias, width):
    torch.manual_seed(0)
    linear = nn.Linear(width, 37, bias=bias)
    q = Int8DecodeLinear.from_linear(linear)
    assert q.kernel == (width == 64)
    x = torch.randn(rows, width)
    with torch.no_grad():
        ref, got = linear(x), q(x)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        # int8 rows (<= half a step of scale/127 per weight) and bf16 activations/output (2^-8 relative).
        err = (got - ref).abs().max() / ref.abs().max()
        assert err < 0.02
        torch.testing.assert_close(q(x.bfloat16()).float(), got, atol=0.02 * ref.abs().max(), rtol=0)
        torch.testing.assert_close(
            q.weight, linear.weight, atol=float(linear.weight.abs().max()) / 127, rtol=0
        )


@pytest.mark.parametrize(
    "preset, widths",
    [("gpt-tiny", {}), ("llama-tiny", {}), ("gpt-tiny", {"embed_dim": 64, "num_heads": 4, "ffn_dim": 128})],
)
def test_int8_decode_model_logits_close_and_greedy_mostly_agrees(preset, widths):
    torch.manual_seed(0)
    model = create_model(preset, max_positions=96, init_std=0.3, dropout=0.0, **widths).eval()
    q = int8_decode(model)
    ids = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = model(ids), q(ids)
    assert ((got - ref).abs().max() / ref.abs().max()) < 0.05
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    prompt = ids[:1, :6]
    assert greedy_generate(q, prompt, max_new_tokens=8, stop_tokens=()).shape == (1, 14)


@pytest.mark.parametrize("shape", [(64, 37), (96, 48), (32, 5)])  # 37, 5: outputs padded to 16
@pytest.mark.parametrize("rows", [1, 7, 40])
def test_int4_decode_linear_computes_its_dequantized_matrix(shape, rows):
    torch.manual_seed(0)
    K, N = shape
    linear = nn.Linear(K, N)
    q = Int4DecodeLinear.from_linear(linear, group_size=32)
    levels, sz = _per_group_uint4(linear.weight, 32)
    scale, zero = sz[..., 0].T.repeat_interleave(32, 1), sz[..., 1].T.repeat_interleave(32, 1)  # (N, K)
    dequantized = (levels - 8) * scale + zero
    assert (dequantized - linear.weight).abs().max() <= scale.max() / 2 + 1e-6  # half a level at most
    x = torch.randn(rows, K)
    with torch.no_grad():
        got = q(x)
        exact = x.bfloat16().float() @ dequantized.T + linear.bias
        assert got.shape == (rows, N) and got.dtype == torch.float32
        torch.testing.assert_close(got, exact, atol=0.02 * float(exact.abs().max()), rtol=0)  # bf16 only


def test_int4_decode_swaps_the_linears_it_can_and_decodes():
    torch.manual_seed(0)
    model = create_model("gpt-tiny", embed_dim=64, num_heads=4, ffn_dim=96, max_positions=96, init_std=0.3)
    q = int4_decode(model.eval(), group_size=32)
    kinds = {
        n: type(m).__name__ for n, m in q.named_modules() if n.endswith((".q", ".o", "fc1", "fc2", "head"))
    }
    assert set(kinds.values()) == {"Int4DecodeLinear"}  # every width here is a multiple of 32
    odd = int4_decode(tiny("gpt-tiny"))  # width 36: nothing fits, nothing changes
    assert not any(isinstance(m, Int4DecodeLinear) for m in odd.modules())
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        ref, got = model(ids), q(ids)
    # 4-bit noise compounds through the layers of this peaked random model: a loose, structural check.
    assert F.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.8
    assert greedy_generate(q, ids[:1, :5], max_new_tokens=6, stop_tokens=()).shape == (1, 11)


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny-qwen2"])
def test_gemv_layout_is_the_same_function_and_decodes_the_same_tokens(preset):
    model = tiny(preset)
    fast = gemv_layout(model)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert all(isinstance(fast.get_submodule(n), GemvLinear) for n in linears)
    assert fast.get_submodule(linears[0]).weight_t.is_contiguous()
    ids = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), model(ids), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(fast.head.weight, model.head.weight, atol=0, rtol=0)
    prompt = ids[:1, :5]
    expected = greedy_generate(model, prompt, max_new_tokens=10, stop_tokens=())
    assert torch.equal(greedy_generate(fast, prompt, max_new_tokens=10, stop_tokens=()), expected)
