"""from_pretrained / save_pretrained on folders written by transformers itself: safetensors, sharded
safetensors, legacy pickles (with the TF-era names bert-base-uncased ships), prefixes, and the errors a
user meets (missing files, unknown model types, unsupported options, offline repo ids)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from bigmodel.errors import UserError  # noqa: E402
from bigmodel.hub.convert import CheckpointMismatch  # noqa: E402
from bigmodel.hub.pretrained import PretrainedError, from_pretrained, save_pretrained  # noqa: E402
from bigmodel.models import create_model  # noqa: E402
from bigmodel.models.bert import Bert  # noqa: E402

VOCAB = 97


def tiny_config(**overrides) -> transformers.BertConfig:
    kwargs = dict(
        hidden_size=20, num_attention_heads=4, intermediate_size=29, num_hidden_layers=2,
        vocab_size=VOCAB, max_position_embeddings=17,
    )  # fmt: skip
    return transformers.BertConfig(**(kwargs | overrides))


def reference(cls=transformers.BertModel, **overrides):
    torch.manual_seed(0)
    model = cls(tiny_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def inputs():
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask, types


def assert_same_encoder(model, ref):
    ids, mask, types = inputs()
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = model(ids, mask, types)
    torch.testing.assert_close(hidden, out.last_hidden_state, atol=1e-5, rtol=1e-5)
    return out, hidden


def test_folder_written_by_transformers(tmp_path):
    ref = reference()
    ref.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert isinstance(model, Bert) and not model.training
    out, hidden = assert_same_encoder(model, ref)
    torch.testing.assert_close(model.pool(hidden), out.pooler_output, atol=1e-5, rtol=1e-5)
    assert from_pretrained(str(tmp_path)).config == model.config  # str works as well as Path


def test_sharded_safetensors(tmp_path):
    ref = reference()
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert_same_encoder(from_pretrained(tmp_path), ref)


def test_masked_lm_folder(tmp_path):
    ref = reference(transformers.BertForMaskedLM)
    ref.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert model.config.add_mlm_head and not model.config.add_pooler
    ids, mask, types = inputs()
    with torch.no_grad():
        logits = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        torch.testing.assert_close(model.mlm_logits(model(ids, mask, types)), logits, atol=1e-5, rtol=1e-5)


def test_legacy_pickle_as_bert_base_uncased_ships_it(tmp_path):
    """pytorch_model.bin from BertForPreTraining (pooler + NSP head, LayerNorm gamma/beta, position_ids
    buffer) under a config.json that says BertForMaskedLM, as the published bert-base-uncased."""
    ref = reference(transformers.BertForPreTraining)
    state = {}
    for key, tensor in ref.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[key] = tensor
    state["bert.embeddings.position_ids"] = torch.arange(17)[None]
    assert "cls.seq_relationship.weight" in state and "bert.pooler.dense.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    ref.config.architectures = ["BertForMaskedLM"]
    ref.config.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors").exists()

    model = from_pretrained(tmp_path)
    assert model.config.add_mlm_head
    ids, mask, types = inputs()
    with torch.no_grad():
        logits = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits
        torch.testing.assert_close(model.mlm_logits(model(ids, mask, types)), logits, atol=1e-5, rtol=1e-5)


def test_prefixed_weights_under_a_bare_encoder_config(tmp_path):
    """An encoder saved inside a task model (keys under ``bert.``) loads as the bare BertModel."""
    ref = reference()
    ref.config.save_pretrained(tmp_path)
    save_file(
        {f"bert.{k}": v.contiguous() for k, v in ref.state_dict().items()},
        str(tmp_path / "model.safetensors"),
    )
    assert_same_encoder(from_pretrained(tmp_path), ref)


def test_overrides_and_native_round_trip(tmp_path):
    reference().save_pretrained(tmp_path / "hf")
    model = from_pretrained(tmp_path / "hf", dropout=0.0, gradient_checkpointing=True)
    assert model.config.dropout == 0.0 and model.config.gradient_checkpointing
    with pytest.raises(UserError, match="dropuot"):
        from_pretrained(tmp_path / "hf", dropuot=0.0)
    save_pretrained(model, tmp_path / "native")
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    again = from_pretrained(tmp_path / "native")
    for key, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key


def test_save_refuses_a_model_without_hf_layout(tmp_path):
    with pytest.raises(PretrainedError, match="no Hugging Face layout"):
        save_pretrained(create_model("resnet-tiny"), tmp_path)


def test_missing_config(tmp_path):
    with pytest.raises(PretrainedError, match="config.json"):
        from_pretrained(tmp_path)


def test_missing_weights(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(PretrainedError, match="model.safetensors"):
        from_pretrained(tmp_path)


def test_missing_shard(tmp_path):
    reference().save_pretrained(tmp_path, max_shard_size="20KB")
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(PretrainedError, match="missing"):
        from_pretrained(tmp_path)


def test_unknown_model_type_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(PretrainedError, match="'mistral'") as err:
        from_pretrained(tmp_path)
    assert "bert" in str(err.value)


def test_unsupported_option_is_named(tmp_path):
    reference().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"position_embedding_type": "relative_key"}))
    with pytest.raises(PretrainedError, match="position_embedding_type"):
        from_pretrained(tmp_path)


def test_special_tokens_outside_a_smaller_vocabulary_load_with_a_warning(tmp_path):
    """A GPT-2 config with a custom small vocabulary keeps GPT-2's bos/eos 50256: transformers loads it
    with a warning, so do we, and the logits are the same (generation then simply never meets them)."""
    from bigmodel.models.generate import generate

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=24, n_head=2, n_layer=2, n_positions=16)
    assert config.eos_token_id == config.bos_token_id == 50256
    ref = transformers.GPT2LMHeadModel(config).eval()
    ref.save_pretrained(tmp_path / "hf")
    with pytest.warns(UserWarning, match=r"_token_id=50256 is outside the vocabulary \[0, 97\)") as seen:
        model = from_pretrained(tmp_path / "hf")
    assert {str(w.message).split("=")[0] for w in seen} == {
        "GPTConfig: bos_token_id",
        "GPTConfig: eos_token_id",
    }
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids).logits, atol=1e-5, rtol=0)
    assert generate(model, ids[:, :3], max_new_tokens=4).shape == (2, 7)  # runs to the end
    save_pretrained(model, tmp_path / "native")  # written back as published
    assert json.loads((tmp_path / "native" / "config.json").read_text())["eos_token_id"] == 50256


def test_weights_that_do_not_fit_the_config(tmp_path):
    reference().save_pretrained(tmp_path)
    tiny_config(intermediate_size=31).save_pretrained(tmp_path)  # config.json now disagrees
    with pytest.raises(CheckpointMismatch, match="intermediate.dense"):
        from_pretrained(tmp_path)


def test_missing_folder_is_not_mistaken_for_a_repo(tmp_path):
    with pytest.raises(PretrainedError, match="no such folder"):
        from_pretrained(tmp_path / "nope" / "model")


def test_repo_id_offline_gives_a_clear_error(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **kwargs):
        raise LocalEntryNotFoundError("outgoing traffic has been disabled")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(PretrainedError) as err:
        from_pretrained("google-bert/bert-base-uncased")
    message = str(err.value)
    assert "google-bert/bert-base-uncased" in message and "local folder" in message


def test_repo_id_uses_the_snapshot(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    ref = reference()
    ref.save_pretrained(tmp_path)
    calls = []

    def snapshot(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", snapshot)
    assert_same_encoder(from_pretrained("org/tiny-bert", revision="main"), ref)
    assert calls[0][:2] == ("org/tiny-bert", "main") and "*.safetensors" in calls[0][2]


def test_real_snapshot_download_offline():
    """The real huggingface_hub call, with HF_HUB_OFFLINE set (nothing is fetched)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    if not constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was not set before huggingface_hub was imported")
    with pytest.raises(PretrainedError, match="bigmodel-test/not-a-real-repo"):
        from_pretrained("bigmodel-test/not-a-real-repo")
