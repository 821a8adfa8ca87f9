"""Generation: processors equal HF's, greedy and beam search equal HF GPT-2's generate through the
production key map, cached == uncached, stop tokens, reproducible sampling, and the encoder-decoder
protocol on a minimal fake model."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from bigmodel.hub.convert import from_published
from bigmodel.models.generate import (
    apply_repetition_penalty,
    beam_search,
    generate,
    process_logits,
    top_k_filter,
    top_p_filter,
)
from bigmodel.models.gpt import FAMILY, GPT, GPTConfig

HF_FORMAT = FAMILY.formats["hf"]
V, EOS, PAD = 97, 96, 95


@pytest.fixture(scope="module")
def pair() -> tuple[GPT2LMHeadModel, GPT]:
    """A tiny random HF GPT-2 and the native model loaded from it through the production key map."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=36,
        n_head=3,
        n_layer=2,
        vocab_size=V,
        n_positions=64,
        n_inner=37,
        bos_token_id=EOS,
        eos_token_id=EOS,
        initializer_range=0.3,
    )
    hf = GPT2LMHeadModel(config).eval()  # a wide init gives peaked, input-dependent distributions
    native_config = GPTConfig(**HF_FORMAT.config_from(config.to_dict()))
    native = GPT(native_config)
    native.load_state_dict(from_published(HF_FORMAT, native_config, hf.state_dict(), native.state_dict()))
    return hf, native.eval()


def prompts(lengths=(7, 4, 6), seed=1) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts (PAD on the left), as a decoder-only batch must be."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]
    ids = torch.randint(0, 90, (len(lengths), T), generator=g).masked_fill(~mask, PAD)
    return ids, mask


def hf_generate(hf, ids, mask, **kwargs):
    return hf.generate(ids, attention_mask=mask.long(), pad_token_id=PAD, **kwargs)


# --- processors ---------------------------------------------------------------------------------------


def test_processors_equal_hf():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g) * 3
    logits[0, :10] = logits[0, 10]  # ties at the top-k boundary
    ids = torch.randint(0, 50, (5, 9), generator=g)
    for k in (1, 3, 10, 60):
        assert torch.equal(top_k_filter(logits, k), TopKLogitsWarper(k)(ids, logits)), k
    for p in (0.05, 0.5, 0.9, 0.999):
        assert torch.equal(top_p_filter(logits, p), TopPLogitsWarper(p)(ids, logits)), p
    assert torch.equal(top_p_filter(logits, 0.3, 3), TopPLogitsWarper(0.3, min_tokens_to_keep=3)(ids, logits))
    for penalty in (1.3, 0.7):
        ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        assert torch.equal(apply_repetition_penalty(logits, ids, penalty), ref)
    # Left padding is not counted (HF: prompt_ignore_length = number of leading pads per row).
    pads = torch.tensor([0, 2, 9, 1, 4])
    ignore = torch.arange(9)[None, :] < pads[:, None]
    ref = RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=pads)(ids, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, ids, 1.5, ignore), ref)
    # The chain, in HF's order: repetition penalty, temperature, top-k, top-p.
    chain = [
        RepetitionPenaltyLogitsProcessor(1.2),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(20),
        TopPLogitsWarper(0.8),
    ]
    ref = logits
    for proc in chain:
        ref = proc(ids, ref.clone())
    ours = process_logits(
        logits, ids, do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.2
    )
    assert torch.equal(ours, ref)
    # Greedy ignores the sampling warpers, as HF does.
    assert torch.equal(process_logits(logits, ids, temperature=0.5, top_k=2, top_p=0.1), logits)


# --- greedy / sampling against HF and against itself --------------------------------------------------


@pytest.mark.parametrize("penalty", [1.0, 1.4])
def test_greedy_equals_hf_generate(pair, penalty):
    hf, native = pair
    ids, mask = prompts()
    ref = hf_generate(
        hf, ids, mask, max_new_tokens=12, do_sample=False, eos_token_id=None, repetition_penalty=penalty
    )
    ours = generate(
        native, ids, mask, max_new_tokens=12, stop_tokens=(), pad_token_id=PAD, repetition_penalty=penalty
    )
    assert torch.equal(ours, ref)


def test_stop_tokens_end_rows_like_hf(pair):
    hf, native = pair
    ids, mask = prompts()
    free = generate(native, ids, mask, max_new_tokens=12, stop_tokens=(), pad_token_id=PAD)
    T = ids.shape[1]
    stop = int(free[0, T + 2])  # row 0 emits this at its third step
    ours = generate(native, ids, mask, max_new_tokens=12, stop_tokens=[stop], pad_token_id=PAD)
    ref = hf_generate(hf, ids, mask, max_new_tokens=12, do_sample=False, eos_token_id=stop)
    assert torch.equal(ours, ref)
    row = ours[0, T:]
    end = int((row == stop).nonzero()[0]) + 1
    assert (row[end:] == PAD).all() and torch.equal(row[:end], free[0, T : T + end])
    # Every row stopping ends generation before max_new_tokens.
    first = free[:, T]
    short = generate(native, ids, mask, max_new_tokens=12, stop_tokens=first.tolist(), pad_token_id=PAD)
    assert short.shape[1] == T + 1 and torch.equal(short[:, T], first)


def test_cached_equals_uncached(pair):
    _, native = pair
    ids, mask = prompts()
    for kwargs in ({}, {"do_sample": True, "top_k": 30, "top_p": 0.9, "temperature": 0.8}):
        runs = [
            generate(
                native,
                ids,
                mask,
                max_new_tokens=10,
                stop_tokens=(),
                use_cache=use_cache,
                generator=torch.Generator().manual_seed(5),
                **kwargs,
            )
            for use_cache in (True, False)
        ]
        assert torch.equal(runs[0], runs[1]), kwargs


def test_sampling_is_reproducible_with_a_generator(pair):
    _, native = pair
    ids, mask = prompts()

    def sample(seed, **kw):
        return generate(
            native,
            ids,
            mask,
            max_new_tokens=15,
            do_sample=True,
            stop_tokens=(),
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1, temperature=3.0), sample(2, temperature=3.0))
    greedy = generate(native, ids, mask, max_new_tokens=15, stop_tokens=())
    assert torch.equal(sample(3, top_k=1), greedy)  # top-1 sampling is greedy
    # Default stop token is the config's eos; the model is left in the mode it was in.
    native.train()
    generate(native, ids, mask, max_new_tokens=2)
    assert native.training
    native.eval()


def test_beam_search_equals_hf(pair):
    hf, native = pair
    ids, mask = prompts((6, 4))
    for kwargs in (
        {"num_beams": 3, "length_penalty": 1.0},
        {"num_beams": 4, "length_penalty": 0.0, "early_stopping": True, "num_return_sequences": 2},
    ):
        stop = int(generate(native, ids, mask, max_new_tokens=3, stop_tokens=())[0, -1])  # a likely token
        ref = hf_generate(hf, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=stop, **kwargs)
        ours = beam_search(
            native, ids, mask, max_new_tokens=8, stop_tokens=[stop], pad_token_id=PAD, **kwargs
        )
        assert torch.equal(ours, ref), kwargs


# --- the encoder-decoder protocol ----------------------------------------------------------------------


class FakeSeq2Seq(nn.Module):
    """encode: mean of embedded source tokens -> (B, V) bias; decode: a GPT over the target + that bias."""

    def __init__(self, decoder: GPT):
        super().__init__()
        self.decoder = decoder
        self.source = nn.Embedding(V, V)
        self.config = SimpleNamespace(decoder_start_token_id=3, eos_token_id=None, pad_token_id=0)
        self.seen_masks = []

    def encode(self, input_ids, attention_mask):
        m = attention_mask.float()[..., None]  # (B, S, 1)
        return (self.source(input_ids) * m).sum(1) / m.sum(1)  # (B, V)

    def decode(self, decoder_input_ids, encoder_out, encoder_mask=None, cache=None):
        self.seen_masks.append(encoder_mask.shape)
        return self.decoder(decoder_input_ids, cache=cache) + encoder_out[:, None, :]

    def new_cache(self):
        return self.decoder.new_cache()


@pytest.fixture(scope="module")
def seq2seq(pair) -> FakeSeq2Seq:
    torch.manual_seed(4)
    return FakeSeq2Seq(pair[1]).eval()


def test_encoder_decoder_generate_and_beam_search(seq2seq):
    src, mask = prompts((5, 3))
    out = generate(seq2seq, src, mask, max_new_tokens=6)
    assert out.shape == (2, 7) and (out[:, 0] == 3).all()
    assert torch.equal(out, generate(seq2seq, src, mask, max_new_tokens=6, use_cache=False))
    assert set(seq2seq.seen_masks) == {(2, 5)}
    # Without stop tokens one beam is greedy; the cache follows the beams through reorder.
    assert torch.equal(beam_search(seq2seq, src, mask, num_beams=1, max_new_tokens=6), out)
    for early_stopping in (False, True):
        beams = [
            beam_search(
                seq2seq,
                src,
                mask,
                num_beams=3,
                max_new_tokens=6,
                stop_tokens=[int(out[0, 2])],
                early_stopping=early_stopping,
                use_cache=use_cache,
            )
            for use_cache in (True, False)
        ]
        assert torch.equal(beams[0], beams[1])
    assert (beams[0][:, 0] == 3).all()


def test_beam_search_is_exact_when_the_beam_holds_everything():
    """V=5, 3 new tokens: 25 beams keep every prefix, so the result is the best of all 125 sequences."""
    torch.manual_seed(0)
    decoder = GPT(
        GPTConfig(
            vocab_size=5,
            max_positions=8,
            embed_dim=12,
            num_heads=2,
            num_layers=1,
            init_std=1.0,
            dropout=0,
            attn_dropout=0,
        )
    ).eval()
    prompt = torch.tensor([[1, 4]])
    best = beam_search(decoder, prompt, num_beams=25, max_new_tokens=3, stop_tokens=())
    with torch.no_grad():
        seqs = torch.tensor([[1, 4, *c] for c in itertools.product(range(5), repeat=3)])  # (125, 5)
        logp = decoder(seqs).log_softmax(-1)[:, 1:-1].gather(-1, seqs[:, 2:, None]).squeeze(-1).sum(-1)
    assert torch.equal(best[0], seqs[logp.argmax()])
