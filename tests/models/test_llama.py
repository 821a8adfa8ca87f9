"""Llama / Qwen2: parity with Hugging Face LlamaForCausalLM and Qwen2ForCausalLM through the production
hub loader (logits, padding, cache, greedy and beam generation, loss and gradients), saving back to the
HF layout, config conversion, the options refused by name, and the presets."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from bigmodel.hub.convert import from_published  # noqa: E402
from bigmodel.hub.pretrained import PretrainedError, from_pretrained, save_pretrained  # noqa: E402
from bigmodel.models import create_model, get_family  # noqa: E402
from bigmodel.models.generate import beam_search, generate  # noqa: E402
from bigmodel.models.llama import FAMILY, Llama, LlamaConfig  # noqa: E402

HF = FAMILY.formats["hf"]
V, PAD, ATOL = 97, 94, 1e-5  # PAD not 0: HF beam search fills finished rows with eos when pad is 0
# Odd sizes: 4 query heads of 10 features sharing 2 kv heads (H·D = 40 != hidden 36), MLP width 37.
LLAMA = dict(hidden_size=36, num_attention_heads=4, num_key_value_heads=2, head_dim=10, num_hidden_layers=2,
             intermediate_size=37, vocab_size=V, max_position_embeddings=64, bos_token_id=95, eos_token_id=96,
             initializer_range=0.3)  # fmt: skip
QWEN2 = dict(hidden_size=36, num_attention_heads=3, num_key_value_heads=1, num_hidden_layers=2,
             intermediate_size=37, vocab_size=V, max_position_embeddings=64, eos_token_id=96,
             initializer_range=0.3, tie_word_embeddings=True, rope_theta=1e6)  # fmt: skip
KINDS = {
    "llama-gqa": (transformers.LlamaForCausalLM, transformers.LlamaConfig, LLAMA),
    "llama-gqa-tied": (transformers.LlamaForCausalLM, transformers.LlamaConfig,
                       {**LLAMA, "tie_word_embeddings": True, "num_key_value_heads": 1}),
    "llama-biases": (transformers.LlamaForCausalLM, transformers.LlamaConfig,
                     {**LLAMA, "attention_bias": True, "mlp_bias": True}),
    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config, QWEN2),
}  # fmt: skip


def hf_model(kind: str, seed: int = 0, **overrides):
    """A tiny random HF model; a wide init gives peaked, input-dependent next-token distributions."""
    cls, config_cls, kwargs = KINDS[kind]
    torch.manual_seed(seed)
    model = cls(config_cls(**{**kwargs, **overrides}))
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or missing tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=list(KINDS))
def pair(request, tmp_path_factory):
    """(HF model, native model loaded from HF's own save_pretrained folder by the hub loader)."""
    hf = hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return request.param, hf, from_pretrained(folder)


def left_padded(lengths, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]  # (B, T), pads on the left
    return torch.randint(1, 90, (len(lengths), T), generator=g).masked_fill(~mask, PAD), mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """What HF generate passes as position_ids for a padded batch."""
    return (mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)


def test_loaded_config_and_layout(pair):
    kind, hf, model = pair
    c = model.config
    assert isinstance(model, Llama) and not model.training
    h = hf.config
    head_dim = getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads  # Qwen2Config has none
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (
        h.num_attention_heads,
        h.num_key_value_heads,
        head_dim,
    )
    assert c.tie_embeddings is hf.config.tie_word_embeddings
    assert (model.head.weight is model.embed.weight) is c.tie_embeddings
    assert c.qkv_bias is (kind in ("qwen2", "llama-biases"))
    assert c.out_bias is c.mlp_bias is (kind == "llama-biases")
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert (attn.q.bias is not None) is c.qkv_bias and (attn.o.bias is not None) is c.out_bias
    assert (mlp.gate.bias is not None) is c.mlp_bias
    assert c.rope_theta == hf.config.rope_parameters["rope_theta"]


def test_logits_match_hf(pair):
    _, hf, model = pair
    ids = torch.randint(0, V, (3, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert ref.abs().max() > 1  # the comparison is not between near-zero logits


def test_padding_mask_matches_hf_and_the_unpadded_rows(pair):
    _, hf, model = pair
    ids, mask = left_padded([9, 4, 6])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        ref = hf(ids, attention_mask=mask.long(), position_ids=hf_positions(mask)).logits
        torch.testing.assert_close(ours[mask], ref[mask], atol=ATOL, rtol=0)
        assert torch.isfinite(ours).all()  # padding queries see no key: zeros from SDPA, never NaN
        for b in range(ids.shape[0]):  # a left-padded row gives the logits of its tokens alone
            alone = model(ids[b : b + 1][:, mask[b]])
            torch.testing.assert_close(ours[b, mask[b]], alone[0], atol=ATOL, rtol=0)
        # right padding (how a text task batches): the real tokens' hidden states are the unpadded ones
        right = torch.stack([torch.cat([ids[b, mask[b]], ids[b, ~mask[b]]]) for b in range(3)])
        rmask = mask.flip(1)
        hidden = model.encode(right, rmask)
        assert hidden.shape == (3, 9, model.feature_dim)
        torch.testing.assert_close(hidden[1, :4], model.encode(right[1:2, :4])[0], atol=ATOL, rtol=0)


def test_cached_decoding_equals_full_forward(pair):
    _, _, model = pair
    ids, mask = left_padded([10, 7])
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_cache()
        steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache)]  # prefill
        for t in range(6, 10):
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache))
        # not a parity check: SDPA's one-query and masked kernels round differently (|logits| ~ 7)
        torch.testing.assert_close(torch.cat(steps, dim=1)[mask], full[mask], atol=ATOL, rtol=1e-4)
        # the cache holds only the kv heads (grouped-query attention's saving)
        assert cache[0].keys.shape == (2, model.config.num_kv_heads, 10, model.config.head_dim)


def test_greedy_and_beam_generation_equal_hf(pair):
    _, hf, model = pair
    ids, mask = left_padded([7, 3, 5])
    ref = hf.generate(ids, attention_mask=mask.long(), max_new_tokens=12, do_sample=False, pad_token_id=PAD)
    ours = generate(model, ids, mask, max_new_tokens=12, pad_token_id=PAD)
    assert torch.equal(ours, ref)
    assert ours.shape[1] > ids.shape[1] + 3  # it generated, and not just the stop token
    stop = int(ours[0, ids.shape[1] + 2])  # a token the model likes, so some beams finish early
    ref = hf.generate(ids, attention_mask=mask.long(), max_new_tokens=8, do_sample=False, num_beams=3,
                      eos_token_id=stop, pad_token_id=PAD)  # fmt: skip
    ours = beam_search(model, ids, mask, num_beams=3, max_new_tokens=8, stop_tokens=[stop], pad_token_id=PAD)
    assert torch.equal(ours, ref)


def test_saved_folder_loads_in_transformers_with_equal_logits(pair, tmp_path):
    kind, hf, model = pair
    save_pretrained(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == ("qwen2" if kind == "qwen2" else "llama")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is type(hf)
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids), atol=ATOL, rtol=0)
    assert from_pretrained(tmp_path).config == model.config  # and our loader reads what we wrote


def test_loss_and_gradients_match_hf():
    hf = hf_model("qwen2").train()
    model = Llama(LlamaConfig(**HF.config_from(hf.config.to_dict())))
    model.load_state_dict(from_published(HF, model.config, hf.state_dict(), model.state_dict()))
    model.train()
    ids = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(4))
    ref = hf(ids, labels=ids).loss
    logits = model(ids)
    ours = F.cross_entropy(logits.view(-1, V), F.pad(ids[:, 1:], (0, 1), value=-100).reshape(-1))
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    ref.backward(), ours.backward()
    grads = from_published(
        HF, model.config, {k: p.grad for k, p in hf.named_parameters()}, model.state_dict()
    )
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_type='linear'"),
        ("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "llama3"),
        ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "dynamic"),  # transformers 4.x spelling
        ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "yarn"),
        ("partial_rotary_factor", 0.5, "partial_rotary_factor"),
        ("hidden_act", "gelu_fast", "hidden_act"),
        ("model_type", "mistral", "mistral"),
    ],
)  # fmt: skip
def test_refuses_what_it_does_not_compute(option, value, message):
    published = {**transformers.LlamaConfig(**LLAMA).to_dict(), option: value}
    with pytest.raises(ValueError, match=message):
        HF.config_from(published)


def test_unsupported_rope_scaling_folder_is_refused_before_loading(tmp_path):
    hf_model("llama-gqa").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match="rope_type='linear'.*not implemented"):
        from_pretrained(tmp_path)


def test_qwen2_sliding_window_is_refused_only_where_it_applies():
    layers = {**QWEN2, "use_sliding_window": True, "sliding_window": 8}
    with pytest.raises(ValueError, match=r"sliding-window attention in layers \[1\]"):
        HF.config_from(transformers.Qwen2Config(**layers, max_window_layers=1).to_dict())
    # max_window_layers >= num layers: every layer attends fully, as Qwen2's published configs do
    assert HF.config_from(transformers.Qwen2Config(**layers, max_window_layers=2).to_dict())["qkv_bias"]
    legacy = {"model_type": "qwen2", "num_hidden_layers": 4, "use_sliding_window": True, "sliding_window": 8,
              "max_window_layers": 3}  # fmt: skip  # a config without layer_types (transformers 4.x)
    with pytest.raises(ValueError, match=r"layers \[3\]"):
        HF.config_from(legacy)


def test_config_round_trips_and_legacy_spellings():
    hf = transformers.LlamaConfig(**LLAMA, attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5)
    native = HF.config_from(hf.to_dict())
    assert native["qkv_bias"] and native["out_bias"] and native["mlp_bias"] and native["norm_eps"] == 1e-5
    config = LlamaConfig(**native)
    back = HF.config_to(config)
    rebuilt = transformers.LlamaConfig(**back)
    keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers",
            "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps", "attention_bias",
            "mlp_bias", "tie_word_embeddings", "bos_token_id", "eos_token_id", "rope_parameters")  # fmt: skip
    for key in keys:
        assert getattr(rebuilt, key) == getattr(hf, key), key
    assert LlamaConfig(**HF.config_from(back)) == config
    # transformers 4.x files: rope_theta at the top level, rope_scaling null, eos as a list
    legacy = {"model_type": "llama", "rope_theta": 5e5, "rope_scaling": None, "eos_token_id": [7, 9]}
    old = HF.config_from(legacy)
    assert old["rope_theta"] == 5e5 and old["eos_token_id"] == [7, 9] and old["num_kv_heads"] == 32
    assert LlamaConfig(**HF.config_from(transformers.LlamaConfig().to_dict())) == LlamaConfig()
    with pytest.raises(ValueError, match="no Hugging Face layout"):
        HF.config_to(LlamaConfig(out_bias=True))


def test_eos_list_stops_generation():
    model = create_model("llama-tiny", eos_token_id=list(range(V))).eval()  # every token stops
    ids = torch.randint(0, V, (2, 4))
    assert generate(model, ids, max_new_tokens=5).shape == (2, 5)
    assert dataclasses.asdict(model.config)["eos_token_id"] == list(range(V))


def test_presets():
    counts = {"tinyllama-1.1b": 1_100_048_384, "smollm2-135m": 134_515_008, "qwen2.5-0.5b": 494_032_768}
    for name, count in counts.items():
        with torch.device("meta"):
            model = create_model(name)
        assert model.num_params() == count, name
    small = create_model("llama-small")
    assert 1_000_000 < small.num_params() < 5_000_000
    assert get_family("llama") is FAMILY and FAMILY.tiny_presets == ("llama-tiny", "llama-tiny-qwen2")
    c = small.config
    n = small.num_params()  # tied: the embedding table counts once, as the head
    assert small.flops_per_token(seq_len=8) == 6 * n + 12 * c.num_layers * c.num_heads * c.head_dim * 8


def test_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads 3 must divide num_heads 4"):
        LlamaConfig(embed_dim=36, num_heads=4, num_kv_heads=3, head_dim=10)
    with pytest.raises(ValueError, match="not divisible"):
        LlamaConfig(embed_dim=36, num_heads=5)
    with pytest.raises(ValueError, match="even"):
        LlamaConfig(embed_dim=36, num_heads=4, head_dim=9)
    with pytest.warns(UserWarning, match="eos_token_id=10 is outside the vocabulary"):
        LlamaConfig(vocab_size=10, bos_token_id=None, eos_token_id=[3, 10])
    with pytest.raises(ValueError, match="dropout"):
        LlamaConfig(dropout=1.0)
    model = create_model("llama-tiny")
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
