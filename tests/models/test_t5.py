"""T5: parity with Hugging Face ``T5ForConditionalGeneration`` (v1.0 and v1.1) through the production
key map, cached decoding, saving back to the published layout, config conversion and refusals, and
generation token for token against ``transformers``' ``generate``."""

from __future__ import annotations

import json

import pytest
import torch

from bigmodel.hub.convert import CheckpointMismatch, from_published, to_published
from bigmodel.models import create_model
from bigmodel.models.base import shift_right
from bigmodel.models.registry import build_config
from bigmodel.models.t5 import FAMILY, T5, T5Config

transformers = pytest.importorskip("transformers")
HF = FAMILY.formats["hf"]
V = 101
ATOL = 1e-5
# Reference configs as the brief of this family: odd sizes, and few buckets with a short maximum
# distance so that sequences of ~12 tokens reach the log-spaced and the clipped buckets.
HF_COMMON = dict(
    d_model=36, d_kv=9, num_heads=4, d_ff=37, num_layers=2, num_decoder_layers=2, vocab_size=V,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, relative_attention_num_buckets=8,
    relative_attention_max_distance=12, dropout_rate=0.1,
)  # fmt: skip
VERSIONS = {
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf_model(version: str, seed: int = 0, init_factor: float = 1.0):
    """A randomly initialised HF T5 of the given version, in eval mode.

    ``init_factor`` is T5Config's ``initializer_factor``: it scales every initial std.
    """
    torch.manual_seed(seed)
    config = transformers.T5Config(**HF_COMMON, **VERSIONS[version], initializer_factor=init_factor)
    model = transformers.T5ForConditionalGeneration(config)
    if version == "v1.1":
        # transformers 5 ties lm_head to shared on construction whatever the config says (and unties
        # on from_pretrained when the checkpoint has both); v1.1 checkpoints carry their own lm_head.
        lm_head = torch.randn(V, HF_COMMON["d_model"]) * init_factor
        model.lm_head.weight = torch.nn.Parameter(lm_head)
    return model.eval()


def native_from_hf(hf) -> T5:
    """Build the native model from the HF config and load the HF weights through the ``hf`` format."""
    config = T5Config(**HF.config_from(hf.config.to_dict()))
    model = T5(config).eval()
    model.load_state_dict(from_published(HF, config, hf.state_dict(), model.state_dict()))
    return model


@pytest.fixture(params=list(VERSIONS), scope="module")
def pair(request):
    hf = hf_model(request.param)
    return hf, native_from_hf(hf)


def batch(seed: int = 1):
    """Source ids with a right-padded and a left-padded row, and decoder ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (3, 13), generator=g)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, :4] = 0
    ids = ids.masked_fill(mask == 0, 0)
    dec = torch.randint(2, V, (3, 11), generator=g)
    dec[:, 0] = 0  # decoder_start_token_id
    return ids, mask, dec


# --- parity -----------------------------------------------------------------------------------------


@torch.no_grad()
def test_logits_match_hf_with_padding(pair):
    hf, model = pair
    ids, mask, dec = batch()
    theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    ours = model(ids, mask, dec)
    assert ours.shape == (3, 11, V)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # the mask matters: without it the padded rows' logits change
    assert not torch.allclose(model(ids, None, dec)[1:], ours[1:], atol=1e-3)


@torch.no_grad()
def test_encoder_output_and_decoder_mask_match_hf(pair):
    hf, model = pair
    ids, mask, dec = batch(2)
    enc_theirs = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    enc_ours = model.encode(ids, mask)
    torch.testing.assert_close(enc_ours, enc_theirs, atol=ATOL, rtol=0)
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 8:] = 0  # right-padded target
    theirs = hf(
        input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
    ).logits
    ours = model.decode(dec, enc_ours, mask, decoder_mask=dec_mask.bool())
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_training_mode_applies_dropout_and_gradients_flow(pair):
    _, model = pair
    ids, mask, dec = batch()
    model.train()
    try:
        a, b = model(ids, mask, dec), model(ids, mask, dec)
        assert not torch.allclose(a, b)
        a.sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert grads["decoder.position_bias.weight"].abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@torch.no_grad()
@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("max_length", [None, 11])
def test_cached_decoding_equals_full_decode(pair, chunk, max_length):
    _, model = pair
    ids, mask, dec = batch(3)
    encoder_out = model.encode(ids, mask)
    full = model.decode(dec, encoder_out, mask)
    cache = model.new_cache(max_length)
    assert len(cache) == model.config.num_decoder_layers
    steps = [model.decode(dec[:, t : t + chunk], encoder_out, mask, cache=cache) for t in range(0, 11, chunk)]
    assert cache[0][0].length == 11 and cache[0][1].length == 13  # self: decoded so far; cross: source
    # v1.1 logits are ~10 (untied head, no rescale): compare relative to their size as well
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=1e-5)


# --- published layout: save, reload in transformers, config -----------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("version", list(VERSIONS))
def test_saved_checkpoint_loads_in_transformers(version, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = hf_model(version)
    hf.save_pretrained(tmp_path / "hf")
    hf_keys = set(load_file(tmp_path / "hf" / "model.safetensors"))

    torch.manual_seed(5)  # fresh native weights, unrelated to hf's
    model = T5(T5Config(**HF.config_from(hf.config.to_dict()))).eval()
    published = to_published(HF, model.config, model.state_dict())
    assert set(published) == hf_keys  # exactly what transformers itself writes
    out = tmp_path / "ours"
    out.mkdir()
    save_file(published, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(HF.config_to(model.config)))
    reloaded, info = transformers.T5ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert (reloaded.lm_head.weight is reloaded.shared.weight) == (version == "v1.0")
    ids, mask, dec = batch()
    torch.testing.assert_close(
        model(ids, mask, dec),
        reloaded.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
        atol=ATOL,
        rtol=0,
    )


@pytest.mark.parametrize("name", ["t5-small", "google/t5-v1_1-base", "t5-tiny", "t5-tiny-gated"])
def test_config_round_trips_through_hf(name):
    config = build_config(FAMILY, FAMILY.presets[name])
    hf_dict = HF.config_to(config)
    # Compared as configs: training-only fields (gradient_checkpointing) are not in config.json.
    assert T5Config(**HF.config_from(hf_dict)) == config
    # and through transformers' own T5Config (which rewrites tie_word_embeddings in v5)
    hf_config = transformers.T5Config(**hf_dict)
    assert T5Config(**HF.config_from(hf_config.to_dict())) == config
    assert hf_config.is_gated_act == (config.feed_forward_proj == "gated-gelu")


def test_config_from_published_v1_1_json():
    """The config.json of google/t5-v1_1-small as published (transformers 4 era)."""
    published = {
        "architectures": ["T5ForConditionalGeneration"], "d_ff": 1024, "d_kv": 64, "d_model": 512,
        "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": 8, "num_heads": 6,
        "num_layers": 8, "output_past": True, "pad_token_id": 0, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False, "vocab_size": 32128,
    }  # fmt: skip
    config = T5Config(**HF.config_from(published))
    assert config == build_config(FAMILY, FAMILY.presets["google/t5-v1_1-small"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"feed_forward_proj": "gated-swish"}, "feed_forward_proj"),
        ({"feed_forward_proj": "relu-gated"}, "feed_forward_proj"),
        ({"is_encoder_decoder": False}, "is_encoder_decoder"),
        ({"is_decoder": True}, "is_decoder"),
        ({"model_type": "mt5"}, "model_type"),
        ({"eos_token_id": [1, 2]}, "eos_token_id"),
    ],
)
def test_config_from_refuses_what_it_does_not_implement(override, named):
    hf_dict = {**HF.config_to(T5Config()), **override}
    with pytest.raises(ValueError, match=named):
        HF.config_from(hf_dict)


def test_loader_names_a_missing_untied_head():
    hf = hf_model("v1.1")
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    model = T5(T5Config(**HF.config_from(hf.config.to_dict())))
    with pytest.raises(CheckpointMismatch, match="lm_head.weight"):
        from_published(HF, model.config, state, model.state_dict())


# --- encoder-only (T5EncoderModel) -------------------------------------------------------------------


@torch.no_grad()
def test_encoder_only_matches_t5_encoder_model_and_saves_back(tmp_path):
    from bigmodel.hub.pretrained import from_pretrained, save_pretrained

    torch.manual_seed(0)
    ref = transformers.T5EncoderModel(transformers.T5Config(**HF_COMMON, **VERSIONS["v1.1"])).eval()
    ref.save_pretrained(tmp_path / "hf")
    model = from_pretrained(tmp_path / "hf")
    assert model.encoder_only and model.config.num_decoder_layers == 0
    ids, mask, _ = batch()
    expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(model.encode(ids, mask), expected, atol=ATOL, rtol=0)

    save_pretrained(model, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == ["T5EncoderModel"]
    assert T5Config(**HF.config_from(config)) == model.config
    again, info = transformers.T5EncoderModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    got = again.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_full_checkpoint_loads_as_an_encoder(tmp_path):
    """``num_decoder_layers=0`` reads the encoder of a T5ForConditionalGeneration folder, as
    transformers' T5EncoderModel does: the decoder and lm_head are left unread."""
    from bigmodel.hub.pretrained import from_pretrained

    hf = hf_model("v1.1")
    hf.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path, num_decoder_layers=0)
    assert model.decoder is None and model.head is None
    ids, mask, _ = batch()
    expected = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(model.encode(ids, mask), expected, atol=ATOL, rtol=0)


# --- model behaviour ---------------------------------------------------------------------------------


def test_shift_right_matches_hf():
    labels = torch.tensor([[5, 6, -100, -100], [7, 8, 9, 1]])
    hf = hf_model("v1.0")
    torch.testing.assert_close(shift_right(labels, 0, 0), hf._shift_right(labels))
    model = create_model("t5-tiny")
    ids = torch.randint(0, V, (2, 5))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, labels=labels), model(ids, decoder_input_ids=hf._shift_right(labels))
        )
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        model(ids)


def test_tying_and_presets():
    v10, v11 = create_model("t5-tiny"), create_model("t5-tiny-gated")
    assert v10.head.weight is v10.embed.weight and v11.head.weight is not v11.embed.weight
    assert hasattr(v11.encoder.blocks[0].mlp, "gate") and not hasattr(v10.encoder.blocks[0].mlp, "gate")
    assert len(v11.decoder.blocks) == 3 and len(v11.encoder.blocks) == 2
    with torch.device("meta"):  # sizes from the papers / model cards, without allocating
        assert create_model("t5-small").num_params() == 60_506_624
        assert create_model("google/t5-v1_1-small").num_params() == 76_961_152


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"feed_forward_proj": "gated-tanh"}, "feed_forward_proj"),
        ({"relative_buckets": 7}, "relative_buckets"),
        ({"relative_max_distance": 16}, "relative_max_distance"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_decoder_layers": -1}, "num_decoder_layers"),
    ],
)
def test_config_validation(override, message):
    with pytest.raises(ValueError, match=message):
        T5Config(**override)


def test_special_token_outside_the_vocabulary_warns():
    """transformers loads such a config; so do we, saying what the id can no longer do."""
    with pytest.warns(UserWarning, match="decoder_start_token_id=32128 .* encode is unaffected"):
        T5Config(decoder_start_token_id=32128)
    with pytest.warns(UserWarning, match="eos_token_id=40000"):
        T5Config(eos_token_id=40000)


# --- generation, token for token against transformers ----------------------------------------------
# A fresh tiny T5 repeats one token forever and never ends. Larger initial weights (factor 3) and a
# more likely end-of-sequence token (its output row doubled) give varied sequences that end at
# different steps, so that stopping, padding of finished rows and beam bookkeeping are exercised.
# The seeds were picked so that beam search differs from greedy search.

GENERATION_SEEDS = {"v1.0": 2, "v1.1": 1}


@pytest.fixture(params=list(VERSIONS), scope="module")
def gen_pair(request):
    hf = hf_model(request.param, seed=GENERATION_SEEDS[request.param], init_factor=3.0)
    with torch.no_grad():
        hf.lm_head.weight[HF_COMMON["eos_token_id"]] *= (
            2.0  # (v1.0: shared by the embedding; unused as input)
        )
    return hf, native_from_hf(hf), generation_inputs(GENERATION_SEEDS[request.param])


def generation_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (4, 10), generator=g)
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    mask[3, :2] = 0  # left padding too
    return ids.masked_fill(mask == 0, 0), mask


def tokens(sequences: torch.Tensor, eos: int = 1) -> list[list[int]]:
    """Rows as lists, cut after the first end-of-sequence (what follows is padding)."""
    rows = []
    for row in sequences.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@torch.no_grad()
def test_greedy_generation_matches_hf(gen_pair):
    generate = pytest.importorskip("bigmodel.models.generate")
    hf, model, (ids, mask) = gen_pair
    theirs = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=10)
    ours = generate.generate(model, ids, attention_mask=mask, max_new_tokens=10)
    assert tokens(ours) == tokens(theirs)
    assert (theirs == 1).any()  # the reference does stop somewhere


@torch.no_grad()
@pytest.mark.parametrize("early_stopping", [True, False])
def test_beam_search_matches_hf(gen_pair, early_stopping):
    generate = pytest.importorskip("bigmodel.models.generate")
    hf, model, (ids, mask) = gen_pair
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10)
    theirs = hf.generate(**kwargs, num_beams=3, early_stopping=early_stopping, length_penalty=1.0)
    ours = generate.beam_search(
        model, ids, attention_mask=mask, num_beams=3, max_new_tokens=10, early_stopping=early_stopping
    )
    assert tokens(ours) == tokens(theirs)


@torch.no_grad()
def test_generation_references_are_not_degenerate(gen_pair):
    """The comparisons above would pass vacuously if no row stopped or beams changed nothing."""
    hf, _, (ids, mask) = gen_pair
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10)
    greedy = tokens(hf.generate(**kwargs))
    beams = {es: tokens(hf.generate(**kwargs, num_beams=3, early_stopping=es)) for es in (True, False)}
    assert any(row[-1] == 1 for row in greedy) and any(row[-1] != 1 for row in greedy)
    assert beams[True] != greedy
    if hf.config.feed_forward_proj == "gated-gelu":
        assert beams[True] != beams[False]  # early stopping decides a row
