"""PEFT parity: our LoRA adapters, saved in PEFT's layout, load onto the transformers model through
``peft.PeftModel.from_pretrained`` and give the same outputs; PEFT's own adapters load onto ours.

Tiny random models built with transformers, saved with ``save_pretrained`` and read by our hub loader,
so the base weights are the same on both sides; the LoRA B factors are random (a fresh B is zero and
would prove nothing)."""

import json

import pytest
import torch
from torch import nn

from bigmodel.compress.lora import add_lora, load_lora
from bigmodel.hub.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, save_peft_adapter
from bigmodel.hub.pretrained import from_pretrained
from bigmodel.models.registry import get_family
from bigmodel.tasks.heads import TextModel

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
MASK = torch.ones_like(IDS)
MASK[1, 6:] = 0


def _randomize_lora(model: nn.Module, head: bool = False) -> None:
    """Random B factors (and a random task head): a fresh B is zero and would prove nothing."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or (head and name.startswith("head.")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _bert_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=36, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _ours_bert(folder) -> TextModel:
    return TextModel(from_pretrained(folder), 3, dropout=0.0, pooling="pooler").eval()


def _peft(hf_model, folder):
    return peft.PeftModel.from_pretrained(hf_model, folder).eval()


def test_bert_sequence_classification_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    base = _bert_folder(tmp_path)
    ours = _ours_bert(base)
    adapted = add_lora(ours, r=2, alpha=5.0, targets=["q", "v", "fc1"])
    assert adapted[:3] == [
        "backbone.blocks.0.attn.q",
        "backbone.blocks.0.attn.v",
        "backbone.blocks.0.mlp.fc1",
    ]
    _randomize_lora(ours, head=True)
    notes = save_peft_adapter(ours, tmp_path / "adapter", get_family("bert"), "text_classification")
    assert notes == []
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    assert (config["r"], config["lora_alpha"]) == (2, 5.0)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.bert.encoder.layer.1.intermediate.dense.lora_B.weight" in keys
    assert "base_model.model.classifier.weight" in keys

    hf = transformers.BertForSequenceClassification.from_pretrained(base, num_labels=3)
    reference = _peft(hf, tmp_path / "adapter")
    with torch.no_grad():
        expected = reference(input_ids=IDS, attention_mask=MASK).logits
        got = ours(IDS, MASK)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    again = _ours_bert(base)  # our loader reads the files back: same model
    load_lora(again, tmp_path / "adapter", get_family("bert"), "text_classification")
    with torch.no_grad():
        torch.testing.assert_close(again(IDS, MASK), got, atol=1e-6, rtol=0)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == {
        n for n, p in ours.named_parameters() if p.requires_grad
    }


def test_an_adapter_peft_wrote_loads_onto_our_bert(tmp_path):
    base = _bert_folder(tmp_path)
    hf = transformers.BertForSequenceClassification.from_pretrained(base, num_labels=3)
    config = peft.LoraConfig(r=3, lora_alpha=7, target_modules=["key", "value"], task_type="SEQ_CLS")
    made = peft.get_peft_model(hf, config)
    with torch.no_grad():
        for name, p in made.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    made.save_pretrained(tmp_path / "adapter")
    ours = _ours_bert(base)
    paths = load_lora(ours, tmp_path / "adapter", get_family("bert"), "text_classification")
    assert len(paths) == 4
    with torch.no_grad():
        expected = made.eval()(input_ids=IDS, attention_mask=MASK).logits
        torch.testing.assert_close(ours(IDS, MASK), expected, atol=1e-5, rtol=1e-5)


def _gpt_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=32, n_embd=36, n_layer=2, n_head=3, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_gpt2_adapters_on_fused_c_attn_load_in_peft_with_the_same_logits(tmp_path):
    base = _gpt_folder(tmp_path)
    ours = from_pretrained(base).eval()
    add_lora(ours, r=2, alpha=3.0, targets=["q", "v", "o", "fc2"])
    _randomize_lora(ours)
    save_peft_adapter(ours, tmp_path / "adapter", get_family("gpt"))
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"] is True
    assert config["rank_pattern"] == {
        r"transformer\.h\.0\.attn\.c_attn": 4,
        r"transformer\.h\.1\.attn\.c_attn": 4,
    }
    reference = _peft(transformers.GPT2LMHeadModel.from_pretrained(base), tmp_path / "adapter")
    with torch.no_grad():
        expected = reference(input_ids=IDS, attention_mask=MASK).logits
        got = ours(IDS, MASK)
    torch.testing.assert_close(got[MASK.bool()], expected[MASK.bool()], atol=1e-5, rtol=1e-5)

    again = from_pretrained(base).eval()  # c_attn's LoRA read back: every part gets A and its rows of B
    load_lora(again, tmp_path / "adapter", get_family("gpt"))
    with torch.no_grad():
        torch.testing.assert_close(again(IDS, MASK), got, atol=1e-5, rtol=1e-5)


def test_llama_adapters_load_in_peft_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=40, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    ours = from_pretrained(tmp_path / "base").eval()
    add_lora(ours, r=2, alpha=4.0, targets=["q", "k", "v", "o", "gate", "fc1", "fc2"])
    _randomize_lora(ours)
    save_peft_adapter(ours, tmp_path / "adapter", get_family("llama"))
    reference = _peft(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    ids = IDS[:1]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_errors_name_the_folder_and_what_is_wrong(tmp_path):
    base = _bert_folder(tmp_path)
    ours = _ours_bert(base)
    with pytest.raises(AdapterError, match="no LoRA layers"):
        save_peft_adapter(ours, tmp_path / "a", get_family("bert"), "text_classification")
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        load_lora(ours, tmp_path / "missing", get_family("bert"), "text_classification")
    add_lora(ours, targets=["head"])  # the task's head has no place in transformers' layout as an adapter
    with pytest.raises(AdapterError, match="'head' has no counterpart"):
        save_peft_adapter(ours, tmp_path / "a", get_family("bert"), "text_classification")
