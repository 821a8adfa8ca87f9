"""GPT: parity with Hugging Face GPT2LMHeadModel through the production key map (logits, padding,
cache, loss, gradients), the round trip back to HF, config conversion, presets and the training flags."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

import bigmodel.models.base as base_module
from bigmodel.hub.convert import CheckpointMismatch, from_published, to_published
from bigmodel.models import create_model, get_family
from bigmodel.models.gpt import FAMILY, GPT, GPTConfig

HF = FAMILY.formats["hf"]
V, ATOL = 97, 1e-5
# Odd sizes: 3 heads of 12, an MLP width (37) that is not 4 x 36, a prime vocabulary.
HF_TINY = dict(n_embd=36, n_head=3, n_layer=2, vocab_size=V, n_positions=32, n_inner=37, bos_token_id=96,
               eos_token_id=96)  # fmt: skip


def hf_model(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**HF_TINY, **overrides}))
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or missing tensor shows
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def native_from(hf: GPT2LMHeadModel, **overrides) -> GPT:
    config = GPTConfig(**{**HF.config_from(hf.config.to_dict()), **overrides})
    model = GPT(config)
    model.load_state_dict(from_published(HF, config, hf.state_dict(), model.state_dict()), strict=True)
    return model.eval()


def left_padded(lengths: list[int], T: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (len(lengths), T), generator=g)
    mask = torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]  # (B, T), pads on the left
    return ids.masked_fill(~mask, 0), mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """What HF generate passes as position_ids for a padded batch."""
    return (mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_hf(tie):
    hf = hf_model(tie_word_embeddings=tie)
    model = native_from(hf)
    ids = torch.randint(0, V, (3, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=ATOL, rtol=0)
    assert model.config.tie_embeddings is tie


def test_left_padding_matches_hf_and_the_unpadded_rows():
    hf, ids_mask = hf_model(), left_padded([9, 4, 6], 9)
    model = native_from(hf)
    ids, mask = ids_mask
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        ref = hf(ids, attention_mask=mask.long(), position_ids=hf_positions(mask)).logits
        torch.testing.assert_close(ours[mask], ref[mask], atol=ATOL, rtol=0)
        assert torch.isfinite(ours).all()  # padding queries see no key: zeros from SDPA, never NaN
        # A left-padded row gives the logits of the same tokens without padding.
        for b in range(ids.shape[0]):
            alone = model(ids[b : b + 1][:, mask[b]])  # the row's real tokens only
            torch.testing.assert_close(ours[b, mask[b]], alone[0], atol=ATOL, rtol=0)


def test_cached_decoding_equals_full_forward():
    model = native_from(hf_model())
    ids, mask = left_padded([10, 7], 10)
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_cache()
        steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]  # prefill
        for t in range(6, 10):
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache))
        assert cache[0].length == 10 and len(cache) == 2
        torch.testing.assert_close(torch.cat(steps, dim=1)[mask], full[mask], atol=ATOL, rtol=0)
        # Without a mask, positions continue from the cache length.
        cache = model.new_cache(max_length=10)
        steps = [
            model(ids[:, :4], cache=cache),
            model(ids[:, 4:9], cache=cache),
            model(ids[:, 9:], cache=cache),
        ]
        torch.testing.assert_close(torch.cat(steps, dim=1), model(ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_to_hf_layout(tie):
    torch.manual_seed(3)
    model = create_model("gpt-tiny", tie_embeddings=tie).eval()
    published = to_published(HF, model.config, model.state_dict())
    hf = GPT2LMHeadModel(GPT2Config(**HF.config_to(model.config))).eval()
    hf_keys = set(hf.state_dict())
    if tie:  # a tied head is not written (as HF's save_pretrained); HF re-ties it to wte
        assert set(published) == hf_keys - {"lm_head.weight"}
        published["lm_head.weight"] = published["transformer.wte.weight"]
    assert set(published) == hf_keys
    hf.load_state_dict(published, strict=True)
    ids = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=ATOL, rtol=0)
    assert published["transformer.h.0.attn.c_attn.weight"].shape == (36, 108)  # Conv1D: (in, 3 x out)


def test_loading_ignores_mask_buffers_and_names_what_does_not_fit():
    hf = hf_model()
    config = GPTConfig(**HF.config_from(hf.config.to_dict()))
    expected = GPT(config).state_dict()
    published = dict(hf.state_dict())
    published.pop("lm_head.weight")  # published GPT-2 files do not store the tied head
    published["transformer.h.1.attn.bias"] = torch.ones(1, 1, 32, 32).tril()  # older checkpoints' buffers
    published["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e4)
    from_published(HF, config, published, expected)
    bad = {**published, "transformer.h.0.attn.c_attn.weight": torch.zeros(36, 107)}
    with pytest.raises(CheckpointMismatch, match=r"transformer\.h\.0\.attn\.c_attn\.weight"):
        from_published(HF, config, bad, expected)
    with pytest.raises(CheckpointMismatch, match="lacks 'transformer.h.1.mlp.c_fc.bias'"):
        from_published(
            HF, config, {k: v for k, v in published.items() if "h.1.mlp.c_fc.bias" not in k}, expected
        )
    with pytest.raises(CheckpointMismatch, match="'transformer.h.2.ln_1.weight' is not used"):
        from_published(HF, config, {**published, "transformer.h.2.ln_1.weight": torch.ones(36)}, expected)


def test_config_round_trips():
    hf_config = GPT2Config(
        **HF_TINY, resid_pdrop=0.2, embd_pdrop=0.0, attn_pdrop=0.05, layer_norm_epsilon=1e-6
    )
    native = HF.config_from(hf_config.to_dict())
    assert native["ffn_dim"] == 37 and native["dropout"] == 0.2 and native["embed_dropout"] == 0.0
    assert native["norm_eps"] == 1e-6 and native["attn_dropout"] == 0.05
    config = GPTConfig(**native)
    back = HF.config_to(config)
    rebuilt = GPT2Config(**back)  # HF accepts what we write
    for key in ("n_embd", "n_head", "n_layer", "n_inner", "n_positions", "vocab_size", "activation_function",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "tie_word_embeddings",
                "eos_token_id", "bos_token_id"):  # fmt: skip
        assert getattr(rebuilt, key) == getattr(hf_config, key), key
    assert GPTConfig(**HF.config_from(back)) == config
    assert HF.config_from({"model_type": "gpt2", "n_inner": None})["ffn_dim"] is None  # 4 x n_embd
    assert GPTConfig(**HF.config_from(GPT2Config().to_dict())) == GPTConfig(**FAMILY.presets["gpt2"])


def test_dropout_is_one_rate_unless_the_published_ones_differ():
    same = HF.config_from(GPT2Config(**HF_TINY, resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.0).to_dict())
    assert same["dropout"] == 0.2 and same["embed_dropout"] is None and same["attn_dropout"] == 0.0
    model = GPT(GPTConfig(**same))
    assert model.drop.p == model.blocks[0].drop.p == 0.2  # `dropout` governs embeddings and residuals
    assert HF.config_to(model.config)["embd_pdrop"] == 0.2
    differ = GPT(GPTConfig(**{**same, "embed_dropout": 0.0}))
    assert differ.drop.p == 0.0 and differ.blocks[0].drop.p == 0.2
    assert HF.config_to(differ.config)["embd_pdrop"] == 0.0


@pytest.mark.parametrize(
    "option, value",
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("add_cross_attention", True),
        ("scale_attn_weights", False),
        ("activation_function", "gelu_fast"),
        ("model_type", "gpt_neo"),
    ],
)
def test_refuses_what_it_does_not_compute(option, value):
    with pytest.raises(ValueError, match=option if option != "model_type" else "gpt_neo"):
        HF.config_from({**GPT2Config(**HF_TINY).to_dict(), option: value})


def test_tied_embeddings_share_storage():
    tied, untied = create_model("gpt-tiny"), create_model("gpt-tiny", tie_embeddings=False)
    assert tied.head.weight is tied.embed.weight
    assert tied.state_dict()["head.weight"].data_ptr() == tied.state_dict()["embed.weight"].data_ptr()
    assert untied.head.weight.data_ptr() != untied.embed.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == V * 36


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Shift the labels, not the logits (a logits slice would copy B x T x V floats)."""
    labels = F.pad(ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1))


def test_loss_and_gradients_match_hf():
    hf = hf_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).train()
    model = native_from(hf).train()
    ids = torch.randint(0, V, (3, 12))
    ref = hf(ids, labels=ids).loss
    ours = lm_loss(model(ids), ids)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    ref.backward(), ours.backward()
    # HF's gradients, mapped through the same key map, are the native gradients.
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    grads = from_published(HF, model.config, hf_grads, model.state_dict())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    calls = []
    real = base_module.checkpoint  # every family checkpoints through models.base.maybe_checkpoint
    monkeypatch.setattr(base_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = torch.randint(0, V, (2, 10))
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = create_model("gpt-tiny", gradient_checkpointing=flag).train()  # dropout 0.1 everywhere
        torch.manual_seed(1)
        lm_loss(model(ids), ids).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(calls) == 2  # one per block, with the flag only
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_presets_are_gpt2_sizes():
    counts = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
              "gpt2-xl": 1_557_611_200}  # fmt: skip
    for name, count in counts.items():
        with torch.device("meta"):
            model = create_model(name)
        assert model.num_params() == count, name
    assert FAMILY.tiny_presets == ("gpt-tiny",) and get_family("gpt") is FAMILY


def test_flops_per_token_follows_palm():
    model = create_model("gpt-tiny")
    c = model.config
    n = model.num_params() - c.max_positions * c.embed_dim  # tied head counted once, positions excluded
    assert model.flops_per_token() == 6 * n + 12 * c.num_layers * c.embed_dim * c.max_positions
    untied = create_model("gpt-tiny", tie_embeddings=False)
    assert untied.flops_per_token(seq_len=8) == 6 * n + 12 * c.num_layers * c.embed_dim * 8


def test_config_validation_and_limits():
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(embed_dim=36, num_heads=5)
    with pytest.warns(UserWarning, match="eos_token_id=10 is outside the vocabulary"):
        GPTConfig(vocab_size=10, eos_token_id=10)  # generation never meets it: a warning, not an error
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(dropout=1.0)
    with pytest.raises(ValueError, match="activation"):
        GPTConfig(activation="swish2")
    assert dataclasses.asdict(GPTConfig())["ffn_dim"] == 3072  # None resolves to 4 * embed_dim
    model = create_model("gpt-tiny")
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
