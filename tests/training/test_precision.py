"""train.precision and the memory switches: bf16 autocast stays close to fp32, bf16-true keeps bf16
weights, fp16 on a CPU is refused with the bf16 suggestion, and activation checkpointing changes
memory, never the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bigmodel
from bigmodel.errors import RecipeError
from bigmodel.training.dist import blocks_of, checkpoint_blocks
from bigmodel.training.precision import resolve_precision
from helpers import text_rows
from test_cli import bigmodel as bigmodel_cli

# A small character GPT: matmuls, softmax, norms and a token-level loss.
LM = {
    "name": "lm-precision",
    "seed": 0,
    "data": {"source": "", "max_length": 32, "split": {"validation": 0.1, "test": 0.1}},
    "task": {"name": "causal_lm", "tokenizer": {"kind": "char"}, "eval_tokens": None},
    "model": {"arch": "gpt", "embed_dim": 48, "num_heads": 3, "num_layers": 2, "ffn_dim": 96, "dropout": 0.0,
              "max_positions": 32},
    "train": {"max_steps": 30, "epochs": 1, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 3e-3},
              "log_every": 1, "eval_every": 30, "eval_batch_size": 64},
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "lines.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text, _ in text_rows(400)))
    return path


def _train(tmp_path, name, corpus, **train):
    recipe = {**LM, "data": {**LM["data"], "source": f"jsonl:{corpus}"}, "train": {**LM["train"], **train}}
    return bigmodel.train(recipe, output=tmp_path / name, progress=False)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, corpus):
    return _train(tmp_path_factory.mktemp("fp32"), "fp32", corpus)


def test_bf16_autocast_trains_within_a_stated_tolerance_of_fp32(tmp_path, corpus, fp32):
    bf16 = _train(tmp_path, "bf16", corpus, precision="bf16")
    # Stated tolerance: after 30 steps the validation loss is within 2 % of fp32's (bf16 keeps 8 bits
    # of mantissa in the matmuls; weights, gradients and Adam's moments stay fp32).
    a, b = fp32.metrics["validation"]["loss"], bf16.metrics["validation"]["loss"]
    assert abs(a - b) / a < 0.02
    weights = load_file(bf16.path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    first = json.loads((bf16.path / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert b < 0.8 * first  # it learned


def test_bf16_true_trains_bf16_weights_and_stores_them_as_fp32(tmp_path, corpus, fp32):
    run = _train(tmp_path, "bf16-true", corpus, precision="bf16-true")
    weights = load_file(run.path / "model.safetensors")
    # every stored weight is exactly a bf16 value (the model trained in bf16), kept as fp32 for serving
    assert all(torch.equal(t, t.bfloat16().float()) for t in weights.values() if t.is_floating_point())
    a, b = fp32.metrics["validation"]["loss"], run.metrics["validation"]["loss"]
    assert abs(a - b) / a < 0.05


def test_fp16_on_a_cpu_is_refused_with_the_bf16_suggestion(tmp_path):
    with pytest.raises(RecipeError, match=r"train.precision: 'fp16' on cpu.*train.precision=bf16"):
        resolve_precision("fp16", torch.device("cpu"))
    result = bigmodel_cli("train", "digits-mlp", "train.precision=fp16", "-o", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "train.precision=bf16" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # refused before a run directory appears


def test_activation_checkpointing_changes_memory_not_the_weights(tmp_path, corpus, fp32):
    run = _train(tmp_path, "ac", corpus, activation_checkpointing=True)
    a, b = load_file(fp32.path / "model.safetensors"), load_file(run.path / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_activation_checkpointing_keeps_fewer_tensors_for_backward():
    from bigmodel.models.gpt import GPT, GPTConfig

    def saved_bytes(model) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = torch.randint(0, 64, (4, 32))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum().backward()
        return total

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, max_positions=32, embed_dim=48, num_heads=3, num_layers=4, ffn_dim=96)
    plain = GPT(config)
    checkpointed = GPT(config)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpoint_blocks(checkpointed) == len(blocks_of(checkpointed)) == 4
    assert saved_bytes(checkpointed) < 0.5 * saved_bytes(plain)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # names unchanged


def test_activation_checkpointing_without_blocks_names_the_field():
    with pytest.raises(RecipeError, match="train.activation_checkpointing"):
        checkpoint_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_compile_trains_the_same_model_with_the_same_names(tmp_path):
    overrides = {
        "train": {"max_steps": 15, "log_every": 1, "early_stopping": None},
        "model": {"dropout": 0.0},
    }
    eager = bigmodel.train("digits-mlp", output=tmp_path / "eager", progress=False, **overrides)
    overrides["train"]["compile"] = True
    compiled = bigmodel.train("digits-mlp", output=tmp_path / "compiled", progress=False, **overrides)
    a, b = load_file(eager.path / "model.safetensors"), load_file(compiled.path / "model.safetensors")
    assert a.keys() == b.keys()  # compiling in place renames nothing: checkpoints and serving unchanged
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
