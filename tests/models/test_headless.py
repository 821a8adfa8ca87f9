"""Headless models and the text-encoder protocol: what a task puts its own head on.

mlp, cnn, resnet and rnn with ``num_outputs=0`` return the features their head would have read;
every family reports their width as ``feature_dim``; bert, gpt, rnn (tokens), t5 and transformer share
``encode(input_ids, attention_mask) -> (B, T, feature_dim)``. Headless and encoder-only models hold no
parameter that the output does not use (DDP refuses unused parameters).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bigmodel.models.registry import all_families, create_model

TINY = [(family, preset) for family in all_families() for preset in family.tiny_presets]
HEADED = [
    "mlp-tiny",
    "cnn-tiny",
    "resnet-tiny",
    "resnet-tiny-bottleneck",
    "rnn-tiny",
    "lstm-tiny",
    "gru-tiny",
]
TEXT_ENCODERS = ["bert-tiny", "gpt-tiny", "rnn-tiny", "lstm-tiny", "t5-tiny-gated", "transformer-tiny"]
B = 3


def _family_of(preset: str):
    return next(family for family, p in TINY if p == preset)


def _unused(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize(("family", "preset"), TINY, ids=[p for _, p in TINY])
def test_every_family_reports_its_feature_width(family, preset):
    model = create_model(preset)
    assert isinstance(model.feature_dim, int) and model.feature_dim > 0


@pytest.mark.parametrize("preset", HEADED)
def test_headless_forward_is_what_the_head_reads(preset):
    """Same weights without the head: ``head(headless(x)) == headed(x)``, and no parameter idles."""
    family = _family_of(preset)
    torch.manual_seed(0)
    headed = create_model(preset).eval()
    headless = create_model(preset, num_outputs=0).eval()
    assert headless.head is None and not any(n.startswith("head.") for n, _ in headless.named_parameters())
    trunk = {k: v for k, v in headed.state_dict().items() if not k.startswith("head.")}
    headless.load_state_dict(trunk, strict=True)
    inputs = family.example_input(headless.config, B)
    with torch.no_grad():
        features = headless(*inputs)
        torch.testing.assert_close(headed.head(features), headed(*inputs))
    tagging = getattr(headless.config, "head", None) == "tagging"
    assert features.shape == ((B, inputs[0].shape[1]) if tagging else (B,)) + (headless.feature_dim,)

    headless.train()
    headless(*inputs).sum().backward()
    assert not _unused(headless)


def test_mlp_without_hidden_layers_returns_the_flattened_input():
    model = create_model("mlp", input_shape=(2, 3), hidden_sizes=[], num_outputs=0)
    x = torch.randn(B, 2, 3)
    assert model.feature_dim == 6 and torch.equal(model(x), x.flatten(1))
    assert model.num_params() == 0


@pytest.mark.parametrize("preset", ["cnn-tiny", "resnet-tiny"])
def test_cnn_and_resnet_headless_features_are_after_dropout(preset):
    model = create_model(preset, num_outputs=0, dropout=0.5).eval()
    x = _family_of(preset).example_input(model.config, 8)[0]
    with torch.no_grad():
        clean = model(x)
        model.drop.train()  # only the dropout before the (absent) head
        dropped = model(x)
    kept = dropped != 0
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(dropped[kept], clean[kept] * 2)  # inverted dropout scales by 1/(1-p)


@pytest.mark.parametrize("preset", TEXT_ENCODERS)
def test_encode_gives_hidden_states_per_token(preset):
    torch.manual_seed(0)
    model = create_model(preset).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (B, 6))
    mask = torch.ones(B, 6, dtype=torch.long)
    mask[1, 4:] = 0  # right padding
    with torch.no_grad():
        hidden = model.encode(ids, mask)
        assert hidden.shape == (B, 6, model.feature_dim) and torch.isfinite(hidden).all()
        assert model.encode(ids).shape == (B, 6, model.feature_dim)  # the mask is optional
        # a padded row's real positions equal that row encoded alone, unpadded
        alone = model.encode(ids[1:2, :4])
        torch.testing.assert_close(hidden[1, :4], alone[0], atol=1e-5, rtol=1e-5)


def test_bert_encode_is_forward_and_gpt_head_reads_encode():
    torch.manual_seed(0)
    bert, gpt = create_model("bert-tiny").eval(), create_model("gpt-tiny").eval()
    ids = torch.randint(0, 97, (B, 5))
    with torch.no_grad():
        assert torch.equal(bert.encode(ids), bert(ids))
        assert torch.equal(gpt.head(gpt.encode(ids)), gpt(ids))


def test_rnn_encode_zeroes_padding_and_concatenates_both_directions():
    torch.manual_seed(0)
    model = create_model("lstm-tiny").eval()  # bidirectional, hidden 9
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        hidden = model.encode(ids, mask)
        out, _ = model.rnn(model.embed(ids[:1]))  # torch's own module, both directions
    assert model.feature_dim == 18 and hidden.shape == (2, 5, 18)
    assert torch.equal(hidden[1, 3:], torch.zeros(2, 18))
    torch.testing.assert_close(hidden[0], out[0])


@pytest.mark.parametrize("preset", ["transformer-tiny", "t5-tiny"])
def test_encoder_only_has_no_decoder_and_encodes_like_the_full_model(preset):
    torch.manual_seed(0)
    full = create_model(preset).eval()
    encoder = create_model(preset, num_decoder_layers=0).eval()
    names = [n for n, _ in encoder.named_parameters()]
    assert encoder.encoder_only and encoder.decoder is None and encoder.head is None
    assert not [n for n in names if n.startswith(("decoder.", "head.", "tgt_embed."))]
    encoder.load_state_dict({k: v for k, v in full.state_dict().items() if k in encoder.state_dict()})
    ids = torch.randint(3, encoder.config.vocab_size, (B, 7))
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(ids), full.encode(ids))
    with pytest.raises(ValueError, match="encoder-only .* call encode"):
        encoder(ids, decoder_input_ids=ids)
    with pytest.raises(ValueError, match="encoder-only"):
        encoder.new_cache()

    encoder.train()
    encoder.encode(ids).sum().backward()
    assert not _unused(encoder)
    config = type(encoder.config)(**dataclasses.asdict(encoder.config))  # 0 survives the round trip
    assert config.num_decoder_layers == 0 and config == encoder.config
