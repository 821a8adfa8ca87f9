"""Transformer (Vaswani et al. 2017): parity with ``torch.nn.Transformer`` through the production
``torch`` key map (post-norm and pre-norm, padding and causal masks), cached decoding, the sinusoid
table against its formula, embedding sharing and config validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bigmodel.hub.convert import from_published, to_published
from bigmodel.models import create_model
from bigmodel.models.registry import build_config
from bigmodel.models.transformer import FAMILY, Transformer, TransformerConfig
from bigmodel.nn.positions import sinusoidal_table

TORCH = FAMILY.formats["torch"]
ATOL = 1e-5
B, S, T = 3, 9, 7

pytestmark = pytest.mark.filterwarnings(
    "ignore:enable_nested_tensor is True:UserWarning"  # torch notes it skips its fast path for odd heads
)


def tiny_config(**overrides) -> TransformerConfig:
    return build_config(FAMILY, {**FAMILY.presets["transformer-tiny"], **overrides})


def torch_reference(config: TransformerConfig) -> nn.Transformer:
    """``torch.nn.Transformer`` of the same sizes; without final norms when the config has none."""
    ref = nn.Transformer(
        config.embed_dim, config.num_heads, config.num_layers, config.num_decoder_layers, config.ffn_dim,
        dropout=config.dropout, activation=config.activation, layer_norm_eps=config.norm_eps,
        batch_first=True, norm_first=config.norm_first,
    )  # fmt: skip
    if not config.final_norm:
        ref.encoder.norm = ref.decoder.norm = None  # the paper's post-norm stack has no final norm
    return ref.eval()


def load_from_torch(ref: nn.Transformer, config: TransformerConfig, seed: int = 0) -> Transformer:
    """Native model carrying ``ref``'s weights, loaded through the production ``torch`` format."""
    torch.manual_seed(seed)
    donor = Transformer(config)  # supplies the embeddings and head the tutorial layout adds
    published = {
        **{
            k: v
            for k, v in to_published(TORCH, config, donor.state_dict()).items()
            if "transformer." not in k
        },
        **{f"transformer.{k}": v for k, v in ref.state_dict().items()},
    }
    model = Transformer(config).eval()
    model.load_state_dict(from_published(TORCH, config, published, model.state_dict()))
    assert to_published(TORCH, config, model.state_dict()).keys() == published.keys()
    return model


def masks():
    src_mask = torch.ones(B, S, dtype=torch.bool)
    src_mask[1, 6:] = False
    src_mask[2, 3:] = False
    tgt_mask = torch.ones(B, T, dtype=torch.bool)
    tgt_mask[0, 5:] = False
    return src_mask, tgt_mask


def embedded(model: Transformer, embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """§3.4 / §3.5 written out: token embedding × sqrt(d_model) + sinusoids."""
    D = model.config.embed_dim
    return embedding(ids) * math.sqrt(D) + sinusoidal_table(ids.shape[1], D)


# --- parity with torch.nn.Transformer --------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize(
    "overrides",
    [
        {"final_norm": True},  # post-norm, as torch.nn.Transformer (which always adds final norms)
        {"final_norm": False},  # post-norm, as the paper
        {"norm_first": True, "activation": "gelu"},  # pre-norm, final norms by default
    ],
    ids=["post-norm", "post-norm-paper", "pre-norm"],
)
def test_matches_torch_transformer(overrides):
    config = tiny_config(**overrides)
    torch.manual_seed(1)
    ref = torch_reference(config)
    model = load_from_torch(ref, config)
    src = torch.randint(3, config.vocab_size, (B, S))
    tgt = torch.randint(3, config.tgt_vocab_size, (B, T))
    src_mask, tgt_mask = masks()

    enc_ours = model.encode(src, src_mask)
    enc_theirs = ref.encoder(embedded(model, model.embed, src), src_key_padding_mask=~src_mask)
    # padded source positions are don't-care (torch's fast path may zero them): compare real ones
    torch.testing.assert_close(enc_ours[src_mask], enc_theirs[src_mask], atol=ATOL, rtol=0)

    dec_theirs = ref.decoder(
        embedded(model, model.tgt_embed, tgt),
        enc_theirs,
        tgt_mask=~torch.ones(T, T, dtype=torch.bool).tril(),  # torch: True = masked out
        tgt_key_padding_mask=~tgt_mask,
        memory_key_padding_mask=~src_mask,
        tgt_is_causal=True,
    )
    logits = model.decode(tgt, enc_ours, src_mask, decoder_mask=tgt_mask)
    assert logits.shape == (B, T, config.tgt_vocab_size)
    torch.testing.assert_close(logits, model.head(dec_theirs), atol=ATOL, rtol=0)
    assert config.final_norm == (overrides.get("final_norm", overrides.get("norm_first", False)))


@torch.no_grad()
def test_saved_layout_loads_into_torch_transformer():
    config = tiny_config(final_norm=True)
    torch.manual_seed(2)
    model = Transformer(config).eval()
    published = to_published(TORCH, config, model.state_dict())
    ref = torch_reference(config)
    ref.load_state_dict(
        {k.removeprefix("transformer."): v for k, v in published.items() if k.startswith("transformer.")}
    )  # strict
    src = torch.randint(3, config.vocab_size, (B, S))
    x = embedded(model, model.embed, src)
    torch.testing.assert_close(model.encode(src), ref.encoder(x), atol=ATOL, rtol=0)
    # q, k, v are stacked into in_proj_weight in that order
    q, k, v = ref.encoder.layers[0].self_attn.in_proj_weight.chunk(3)
    torch.testing.assert_close(k, model.encoder.blocks[0].attn.k.weight, atol=0, rtol=0)


@torch.no_grad()
def test_encoder_only_reads_and_writes_the_encoder_side_of_the_layout():
    full_config = tiny_config(final_norm=True)
    torch.manual_seed(2)
    full = Transformer(full_config).eval()
    published = to_published(TORCH, full_config, full.state_dict())
    config = tiny_config(final_norm=True, num_decoder_layers=0)
    model = Transformer(config).eval()
    model.load_state_dict(from_published(TORCH, config, published, model.state_dict()))  # target side unread
    src = torch.randint(3, config.vocab_size, (B, S))
    torch.testing.assert_close(model.encode(src), full.encode(src), atol=0, rtol=0)
    saved = to_published(TORCH, config, model.state_dict())
    assert saved.keys() == {k for k in published if k.startswith(("src_tok_emb.", "transformer.encoder."))}


# --- incremental decoding ---------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("preset", ["transformer-tiny", "transformer-tiny-prenorm"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_decoding_equals_full_decode(preset, chunk):
    torch.manual_seed(3)
    model = create_model(preset).eval()
    c = model.config
    src = torch.randint(3, c.vocab_size, (B, S))
    tgt = torch.randint(3, c.tgt_vocab_size, (B, T))
    src_mask, _ = masks()
    encoder_out = model.encode(src, src_mask)
    full = model.decode(tgt, encoder_out, src_mask)
    cache = model.new_cache(max_length=T if chunk == 1 else None)
    steps = [
        model.decode(tgt[:, t : t + chunk], encoder_out, src_mask, cache=cache) for t in range(0, T, chunk)
    ]
    assert cache[0][0].length == T and cache[-1][1].length == S
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=1e-5)


# --- positions, embeddings, config ------------------------------------------------------------------


@pytest.mark.parametrize("dim", [30, 33])
def test_sinusoid_table_matches_the_formula(dim):
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d)) (§3.5), odd d included."""
    expected = torch.zeros(50, dim, dtype=torch.float64)
    for p in range(50):
        for i in range(0, dim, 2):
            angle = p / 10000 ** (i / dim)
            expected[p, i] = math.sin(angle)
            if i + 1 < dim:
                expected[p, i + 1] = math.cos(angle)
    torch.testing.assert_close(sinusoidal_table(50, dim).double(), expected, atol=1e-5, rtol=0)
    model = Transformer(tiny_config(embed_dim=dim, num_heads=3, max_positions=50))
    torch.testing.assert_close(model.positions.table.double(), expected, atol=1e-5, rtol=0)
    assert "positions.table" not in model.state_dict()  # fixed, not a weight


def test_embedding_sharing_and_tying():
    shared = create_model("transformer", vocab_size=29, embed_dim=12, num_heads=2, ffn_dim=16, num_layers=1)
    assert shared.tgt_embed is shared.embed and shared.head.weight is shared.embed.weight
    separate = create_model("transformer-tiny")
    assert separate.tgt_embed is not separate.embed and separate.head.weight is separate.tgt_embed.weight
    assert separate.embed.num_embeddings == 61 and separate.head.out_features == 47
    untied = create_model("transformer-tiny-prenorm")
    assert untied.head.weight is not untied.tgt_embed.weight and untied.head.bias is not None
    with torch.device("meta"):
        assert 60e6 < create_model("transformer-base").num_params() < 66e6  # "65M" in Table 3
        assert 205e6 < create_model("transformer-big").num_params() < 215e6  # "213M"


def test_forward_shifts_labels_and_rejects_long_inputs():
    model = create_model("transformer-tiny").eval()
    src = torch.randint(3, 61, (2, 5))
    labels = torch.tensor([[4, 5, 2, -100], [6, 7, 8, 2]])
    shifted = model.shift_right(labels)
    assert shifted.tolist() == [[1, 4, 5, 2], [1, 6, 7, 8]]
    with torch.no_grad():
        torch.testing.assert_close(model(src, labels=labels), model(src, decoder_input_ids=shifted))
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(torch.zeros(1, 65, dtype=torch.long))


def test_training_mode_applies_dropout():
    torch.manual_seed(4)
    model = create_model("transformer-tiny").train()
    src, tgt = torch.randint(3, 61, (2, 5)), torch.randint(3, 47, (2, 4))
    assert not torch.allclose(model(src, decoder_input_ids=tgt), model(src, decoder_input_ids=tgt))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embed_dim": 30, "num_heads": 4}, "divisible"),
        ({"tgt_vocab_size": 50}, "share_embeddings"),
        ({"activation": "swish"}, "activation"),
        ({"dropout": -0.1}, "dropout"),
        ({"num_decoder_layers": -1}, "num_decoder_layers"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**overrides)


def test_special_token_outside_the_target_vocabulary_warns():
    with pytest.warns(UserWarning, match="eos_token_id=2 is outside the vocabulary"):
        TransformerConfig(vocab_size=3, share_embeddings=False, tgt_vocab_size=2)


@pytest.mark.parametrize("preset", ["transformer-tiny", "transformer-tiny-prenorm"])
def test_generation_through_the_cache_equals_recomputation(preset):
    from bigmodel.models.generate import beam_search, generate

    torch.manual_seed(5)
    model = create_model(preset)
    src = torch.randint(3, model.config.vocab_size, (B, S))
    src_mask, _ = masks()
    for search, kwargs in ((generate, {}), (beam_search, {"num_beams": 3})):
        cached = search(model, src, src_mask, max_new_tokens=6, **kwargs)
        recomputed = search(model, src, src_mask, max_new_tokens=6, use_cache=False, **kwargs)
        assert cached[:, 0].eq(model.config.decoder_start_token_id).all()
        assert torch.equal(cached, recomputed)
    assert model.training  # generation restored the mode
