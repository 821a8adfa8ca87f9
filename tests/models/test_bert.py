"""BERT family: parity with transformers' BertModel / BertForMaskedLM through the production key map,
refusal of options it does not compute, Hugging Face save/load round trips, config, presets, training
behaviour (dropout, gradient checkpointing)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from bigmodel.hub.convert import from_published  # noqa: E402
from bigmodel.hub.pretrained import from_pretrained, save_pretrained  # noqa: E402
from bigmodel.models import create_model  # noqa: E402
from bigmodel.models.bert import FAMILY, Bert, BertConfig  # noqa: E402

HF = FAMILY.formats["hf"]
VOCAB, TYPES = 101, 3


def hf_config(**overrides) -> transformers.BertConfig:
    """Odd sizes catch shape bugs: head_dim 12 or 9, mlp 37, 3 token types."""
    kwargs = dict(
        hidden_size=36, num_attention_heads=3, intermediate_size=37, num_hidden_layers=2,
        vocab_size=VOCAB, max_position_embeddings=23, type_vocab_size=TYPES,
    )  # fmt: skip
    return transformers.BertConfig(**(kwargs | overrides))


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights everywhere (LayerNorm scales and biases included); tied tensors stay tied."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def native_from(ref: torch.nn.Module) -> Bert:
    """Native model built from the reference's config.json dict and state dict (the production path)."""
    published = ref.config.to_dict() | {"architectures": [type(ref).__name__]}
    config = BertConfig(**HF.config_from(published))
    model = Bert(config).eval()
    model.load_state_dict(from_published(HF, config, ref.state_dict(), model.state_dict()), strict=True)
    return model


def batch(B: int = 4, T: int = 11, seed: int = 0):
    """Ids, a right-padding mask with rows of different lengths, and token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    lengths = torch.tensor([T, 7, 3, 1][:B])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    types = (torch.arange(T)[None] >= (lengths[:, None] // 2)).long() * torch.randint(
        1, TYPES, (B, 1), generator=g
    )
    return ids, mask, types


@pytest.mark.parametrize("heads", [3, 4])
def test_bert_model_parity(heads):
    ref = randomized(transformers.BertModel(hf_config(num_attention_heads=heads)))
    model = native_from(ref)
    assert model.config.add_pooler and not model.config.add_mlm_head
    ids, mask, types = batch()
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = model(ids, mask, types)
        torch.testing.assert_close(hidden, out.last_hidden_state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.pool(hidden), out.pooler_output, atol=1e-5, rtol=1e-5)
        # No mask, no token types: both default the same way.
        torch.testing.assert_close(model(ids), ref(input_ids=ids).last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_masked_lm_parity(act):
    ref = randomized(transformers.BertForMaskedLM(hf_config(num_attention_heads=4, hidden_act=act)))
    model = native_from(ref)
    assert model.config.add_mlm_head and not model.config.add_pooler  # as BertForMaskedLM is built
    ids, mask, types = batch(seed=3)
    with torch.no_grad():
        logits = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        torch.testing.assert_close(model.mlm_logits(model(ids, mask, types)), logits, atol=1e-5, rtol=1e-5)


def test_mlm_decoder_is_the_word_embedding():
    model = create_model("bert-tiny-mlm").eval()
    assert not any("decoder" in k for k in model.state_dict())  # the matrix is stored once, as embed
    ids, mask = FAMILY.example_input(model.config, 2)
    with torch.no_grad():
        before = model.mlm_logits(model(ids, mask))
        model.embed.weight[5] += 1.0
        after = model.mlm_logits(model(ids, mask))
    assert not torch.allclose(before[..., 5], after[..., 5])


def test_padding_never_changes_real_positions():
    model = create_model("bert-tiny").eval()
    ids, mask, types = batch(seed=5)
    junk = torch.where(mask.bool(), ids, torch.randint(0, VOCAB, ids.shape))
    with torch.no_grad():
        a, b = model(ids, mask, types), model(junk, mask, types)
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real])
    # Each row alone, unpadded, gives the same real positions as the padded batch.
    for i, n in enumerate(mask.sum(1).tolist()):
        with torch.no_grad():
            alone = model(ids[i : i + 1, :n], token_type_ids=types[i : i + 1, :n])
        torch.testing.assert_close(alone[0], a[i, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("option", "published"),
    [
        ("position_embedding_type", {"position_embedding_type": "relative_key"}),
        ("is_decoder", {"is_decoder": True}),
        ("add_cross_attention", {"add_cross_attention": True}),
        ("hidden_act", {"hidden_act": "quick_gelu"}),
        ("pruned_heads", {"pruned_heads": {"0": [1]}}),
        ("architectures", {"architectures": ["BertForSequenceClassification"]}),
        ("tie_word_embeddings", {"architectures": ["BertForMaskedLM"], "tie_word_embeddings": False}),
    ],
)
def test_refuses_options_it_does_not_compute(option, published):
    config = hf_config().to_dict() | published
    with pytest.raises(ValueError, match=option):
        HF.config_from(config)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("bert-tiny", {}),
        ("bert-tiny", {"add_pooler": True}),
        ("bert-tiny-mlm", {}),
        ("bert-tiny-mlm", {"add_pooler": True}),
    ],
)
def test_config_round_trip(preset, overrides):
    model = create_model(preset, **overrides)
    published = HF.config_to(model.config)
    assert published["model_type"] == "bert"
    back = BertConfig(**HF.config_from(published))
    assert back == model.config
    # ... and transformers reads the same numbers.
    ref = transformers.BertConfig(**{k: v for k, v in published.items() if k != "model_type"})
    assert (ref.hidden_size, ref.num_attention_heads, ref.intermediate_size) == (
        model.config.embed_dim, model.config.num_heads, model.config.ffn_dim,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "overrides", "auto", "arch", "kwargs"),
    [
        ("bert-tiny", {"add_pooler": True}, "AutoModel", "BertModel", {}),
        ("bert-tiny", {}, "AutoModel", "BertModel", {"add_pooling_layer": False}),
        ("bert-tiny-mlm", {}, "AutoModelForMaskedLM", "BertForMaskedLM", {}),
    ],
)
def test_save_pretrained_loads_in_transformers(preset, overrides, auto, arch, kwargs, tmp_path):
    model = randomized(create_model(preset, **overrides))
    save_pretrained(model, tmp_path)
    ref, info = getattr(transformers, auto).from_pretrained(tmp_path, output_loading_info=True, **kwargs)
    ref.eval()
    assert type(ref).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, types = batch(seed=7)
    types = types.clamp(max=model.config.type_vocab_size - 1)
    with torch.no_grad():
        hidden = model(ids, mask, types)
        out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        if model.config.add_mlm_head:
            torch.testing.assert_close(out.logits, model.mlm_logits(hidden), atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(out.last_hidden_state, hidden, atol=1e-5, rtol=1e-5)
        if model.config.add_pooler:
            torch.testing.assert_close(out.pooler_output, model.pool(hidden), atol=1e-5, rtol=1e-5)
    # The MLM folder also loads as the bare encoder (AutoModel strips the "bert." prefix).
    if model.config.add_mlm_head:
        encoder = transformers.AutoModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
        with torch.no_grad():
            torch.testing.assert_close(
                encoder(input_ids=ids).last_hidden_state, model(ids), atol=1e-5, rtol=1e-5
            )
    # And back into the native family, bit for bit.
    again = from_pretrained(tmp_path)
    assert again.config == model.config
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], tensor, atol=0, rtol=0)


def test_dropout_only_in_training():
    model = create_model("bert-tiny", dropout=0.3, attn_dropout=0.3)
    ids, mask = FAMILY.example_input(model.config, 3)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), model(ids, mask))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(ids, mask), model(ids, mask))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask, types = batch(seed=2)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = create_model("bert-tiny", add_pooler=True, gradient_checkpointing=checkpointing).train()
        torch.manual_seed(123)  # same dropout masks in both runs (checkpointing replays the RNG)
        model.pool(model(ids, mask, types)).square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-6, rtol=1e-5)


def test_presets_match_the_published_shapes():
    with torch.device("meta"):
        for preset, hf_kwargs in {
            "bert-base-uncased": {},
            "bert-large-uncased": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                       intermediate_size=4096),
            "minilm-l6-h384": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                   intermediate_size=1536),
        }.items():  # fmt: skip
            native = create_model(preset).num_params()
            ref = sum(
                p.numel() for p in transformers.BertModel(transformers.BertConfig(**hf_kwargs)).parameters()
            )
            assert native == ref, preset
    assert native == 22_713_216  # all-MiniLM-L6-v2
    with torch.device("meta"):
        assert create_model("bert-base-uncased").num_params() == 109_482_240


def test_flops_per_token():
    with torch.device("meta"):
        model = create_model("bert-base-uncased")
    n = 12 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768) + 768 * 768 + 768
    assert model.flops_per_token(128) == 6 * n + 12 * 12 * 768 * 128
    assert model.flops_per_token(128, training=False) * 3 == model.flops_per_token(128)
    with torch.device("meta"):
        mlm = create_model("bert-base-uncased", add_mlm_head=True)
    assert mlm.flops_per_token(128) > model.flops_per_token(128)  # the tied decoder is a matmul


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(embed_dim=36, num_heads=5)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="swishy")
    with pytest.raises(ValueError, match="dropout"):
        BertConfig(dropout=1.0)
    assert dataclasses.replace(BertConfig(), pad_token_id=None).pad_token_id is None
    model = create_model("bert-tiny")
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.zeros(1, model.config.max_positions + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="add_mlm_head"):
        model.mlm_logits(torch.zeros(1, 2, model.config.embed_dim))
    with pytest.raises(ValueError, match="add_pooler"):
        model.pool(torch.zeros(1, 2, model.config.embed_dim))
