"""The gpt2-lora recipe's chain on a tiny slice: pretrain (shakespeare-char-gpt's model) -> export
--format hf (a GPT-2 folder) -> LoRA fine-tune on another text (recipes/gpt2-lora.yaml). The adapters
are under 1 % of the weights, the base stays bit-identical, the loss falls, and peft puts the adapter
files onto transformers' GPT2LMHeadModel with the same logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bigmodel
from bigmodel.compress.lora import add_lora, lora_options, parameter_report
from bigmodel.hub.pretrained import from_pretrained
from bigmodel.models.registry import get_family
from bigmodel.pipeline import export_pretrained
from bigmodel.recipe import shipped_recipes
from bigmodel.rundir import open_run

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

PLAYS = ["To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"] * 30
NEWS = ["the company said its profit rose N N in the third quarter <unk> analysts said\n"] * 30
SMALL = {
    "data.max_length": 16,
    "data.split": {"validation": 0.2, "test": 0.2},
    "task.eval_tokens": 256,
    "train.batch_size": 8,
    "train.eval_every": None,
    "train.log_every": 1,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))


def _jsonl(path, texts) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return f"jsonl:{path}"


def _train_losses(run_dir) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r and "loss" in r]


def test_the_recipe_configuration_trains_under_one_percent_of_the_weights_for_any_vocabulary():
    """On the real sizes (shakespeare-char-gpt's 4 x 128 model): the adapters' share is largest with
    the smallest vocabulary, and even then under 1 %."""
    recipe = bigmodel.load_recipe(shipped_recipes()["gpt2-lora"])
    base = bigmodel.load_recipe(shipped_recipes()["shakespeare-char-gpt"])
    arch = ("embed_dim", "num_heads", "num_layers")
    assert {k: recipe.model.options()[k] for k in arch} == {k: base.model.options()[k] for k in arch}
    family = get_family("gpt")
    with torch.device("meta"):
        model = family.model_cls(family.config_cls(vocab_size=3, max_positions=64, **recipe.model.options()))
    add_lora(model, **lora_options(recipe.model.adapter.lora.model_dump()))
    report = parameter_report(model)
    per_block = 2 * (128 + 128) + 2 * (128 + 512)  # r=1 on q, v and the MLP's two layers
    assert report["trainable_params"] == 4 * per_block + (128 + 3)  # and the output layer, r=1
    assert report["trainable_percent"] < 1.0


def test_pretrain_export_then_lora_fine_tune_keeps_the_base_and_loads_in_peft(tmp_path):
    pre = bigmodel.train(
        "shakespeare-char-gpt", output=tmp_path / "runs", progress=False,
        **{**SMALL, "data.source": _jsonl(tmp_path / "plays.jsonl", PLAYS), "train.max_steps": 5},
    )  # fmt: skip
    hf = export_pretrained(pre.path, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    assert json.loads((hf / "config.json").read_text())["model_type"] == "gpt2"

    run = bigmodel.train(
        "gpt2-lora", output=tmp_path / "runs", progress=False,
        **{**SMALL, "data.source": _jsonl(tmp_path / "news.jsonl", NEWS), "train.max_steps": 30,
           "model.pretrained": str(hf)},
    )  # fmt: skip
    summary = json.loads((run.path / "summary.json").read_text())["train"]
    vocab = json.loads((hf / "config.json").read_text())["vocab_size"]
    per_block = 2 * (128 + 128) + 2 * (128 + 512)  # r=1 on q, v and the MLP's two layers
    assert summary["trainable_params"] == 4 * per_block + 128 + vocab  # and the output layer
    assert summary["trainable_percent"] < 1.0
    losses = _train_losses(run.path)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2  # the adapters learn the new text

    # The base is untouched: every weight of the run but the adapters is the exported checkpoint's, bit
    # for bit (merge: false keeps them apart in model.safetensors too).
    base = from_pretrained(hf).state_dict()
    saved = load_file(run.path / "model.safetensors")
    assert set(base) - {k for k in saved if ".lora_" not in k} == {"head.weight"}  # tied to the embedding
    for key, tensor in base.items():
        if key != "head.weight":
            assert torch.equal(saved[key], tensor), key
    assert any(".lora_B." in k and saved[k].abs().sum() > 0 for k in saved)  # the adapters did train

    # PEFT's files, read by peft onto transformers' GPT-2: the same logits as our run's model.
    assert (run.path / "adapter_model.safetensors").is_file()
    config = json.loads((run.path / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["r"] == 1
    assert set(config["rank_pattern"].values()) == {2}  # q and v's r=1 stacked in the fused c_attn
    assert "lm_head" in config["target_modules"]  # the output layer, not the tied input embedding
    ours, _, _ = open_run(run.path)
    reference = peft.PeftModel.from_pretrained(
        transformers.GPT2LMHeadModel.from_pretrained(hf), run.path
    ).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = ours.eval()(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
