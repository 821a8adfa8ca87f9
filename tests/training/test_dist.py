"""Many processes give the answer of one: torchrun + gloo on this CPU, DDP and FSDP2, sharded
checkpoints that resume on another number of processes, an elastic restart after a killed worker,
and two "nodes" joined on loopback.

The reference is one process with the same global batch (per-process batch × processes). Runs use
no dropout (each rank draws its own masks) and no batch norm (statistics are per rank).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("torchrun_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TOLERANCE = 1e-6

# digits (1,257 training rows), an MLP of two blocks, AdamW and a cosine schedule, 12 steps.
MLP = [
    "digits-mlp", "model.dropout=0", "model.hidden_sizes=[48,32]", "train.max_steps=12",
    "train.optimizer.name=adamw", "train.schedule.name=cosine", "train.checkpoint_every=4",
    "train.log_every=1", "train.early_stopping=null", "train.eval_every=6",
]  # fmt: skip


def _torchrun(out: Path, args: list[str], nproc: int = 2, extra_env: dict | None = None, launcher=()):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", *(launcher or ["--standalone"]),
        f"--nproc-per-node={nproc}", str(WORKER), "train", *args, "-o", str(out),
    ]  # fmt: skip
    return subprocess.run(cmd, env={**ENV, **(extra_env or {})}, capture_output=True, text=True, timeout=300)


def _single(out: Path, args: list[str], extra_env: dict | None = None):
    cmd = [sys.executable, str(WORKER), "train", *args, "-o", str(out)]
    return subprocess.run(cmd, env={**ENV, **(extra_env or {})}, capture_output=True, text=True, timeout=300)


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _run_dir(out: Path) -> Path:
    (run,) = [p for p in out.glob("*/*") if p.is_dir()]
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line and "split" not in line]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, global batch 16."""
    out = tmp_path_factory.mktemp("one")
    _ok(_single(out, [*MLP, "train.batch_size=16"]))
    return _run_dir(out)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_the_weights_of_one(tmp_path, reference, strategy):
    proc = _torchrun(tmp_path, [*MLP, "train.batch_size=8", f"train.distributed.strategy={strategy}"])
    _ok(proc)
    run = _run_dir(tmp_path)
    assert _max_difference(run, reference) <= TOLERANCE
    assert _losses(run) == pytest.approx(_losses(reference), abs=1e-6)
    ones, twos = (json.loads((r / "eval.json").read_text()) for r in (reference, run))
    assert twos["test"]["accuracy"] == pytest.approx(ones["test"]["accuracy"])  # merged over ranks
    summary = json.loads((run / "summary.json").read_text())["train"]
    assert (summary["processes"], summary["strategy"]) == (2, strategy)
    # The sharded checkpoint: one safetensors file per rank, the state in JSON, no pickle anywhere.
    (step,) = (run / "train_state").glob("step-*")
    assert step.is_dir() and sorted(p.name for p in step.iterdir()) == [
        "meta.json",
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    assert proc.stdout.count("Training finished") == 1  # rank 0 alone reports


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_accumulation_under_two_processes_equals_one_big_batch(tmp_path, reference, strategy):
    args = [*MLP, "train.batch_size=4", "train.grad_accum_steps=2", f"train.distributed.strategy={strategy}"]
    _ok(_torchrun(tmp_path, args))
    assert _max_difference(_run_dir(tmp_path), reference) <= TOLERANCE


def _write_ner(path: Path, n: int = 120) -> Path:
    """Sentences of 2 to 14 words: per-token losses over unequal lengths."""
    import random

    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "in", "Paris", "with", "Anna", "and", "Bob", "near", "London"]
    with open(path, "w") as f:
        for _ in range(n):
            tokens = [rng.choice(words) for _ in range(rng.randint(2, 14))]
            tags = [
                "B-PER" if t in ("Anna", "Bob") else "B-LOC" if t in ("Paris", "London") else "O"
                for t in tokens
            ]
            f.write(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
    return path


def _ner_recipe(tmp_path: Path) -> Path:
    data = _write_ner(tmp_path / "ner.jsonl")
    recipe = {
        "name": "ner-dist",
        "data": {"source": f"jsonl:{data}", "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "token_classification", "tokenizer": {"vocab_size": 60, "min_frequency": 1}},
        "model": {"arch": "transformer", "embed_dim": 16, "num_heads": 2, "num_layers": 2, "ffn_dim": 24,
                  "dropout": 0.0},
        # SGD: attention's key bias has a true gradient of exactly 0 (softmax ignores a shift shared by
        # all keys), so its gradient is rounding noise, which Adam would scale up to lr-sized steps.
        "train": {"max_steps": 6, "epochs": 5, "optimizer": {"name": "momentum", "lr": 0.5}, "log_every": 1},
    }  # fmt: skip
    path = tmp_path / "ner.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_token_losses_of_unequal_lengths_match_one_process(tmp_path, strategy):
    recipe = str(_ner_recipe(tmp_path))
    _ok(_single(tmp_path / "one", [recipe, "train.batch_size=12"]))
    _ok(_torchrun(tmp_path / "two", [recipe, "train.batch_size=6", f"train.distributed.strategy={strategy}"]))
    assert _max_difference(_run_dir(tmp_path / "two"), _run_dir(tmp_path / "one")) <= TOLERANCE


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_run_resumes_on_another_number_of_processes(tmp_path, reference, first, then):
    crash = {"CRASH_AFTER_STEP": "8"}
    args = [*MLP, f"train.batch_size={16 // first}"]
    crashed = _torchrun(tmp_path, args, extra_env=crash) if first == 2 else _single(tmp_path, args, crash)
    assert crashed.returncode != 0
    run = _run_dir(tmp_path)
    assert not (run / "model.safetensors").exists()
    # batch_size is per process: the resumed run keeps the recipe's, so set the global batch back.
    if then == 1:
        (run / "recipe.yaml").write_text(
            (run / "recipe.yaml").read_text().replace("batch_size: 8", "batch_size: 16")
        )
        resumed = _single(tmp_path, ["--resume", str(run)])
    else:
        (run / "recipe.yaml").write_text(
            (run / "recipe.yaml").read_text().replace("batch_size: 16", "batch_size: 8")
        )
        resumed = _torchrun(tmp_path, ["--resume", str(run)])
    _ok(resumed)
    assert "resumed at step 8/12" in resumed.stdout
    assert _max_difference(run, reference) <= TOLERANCE
    assert _losses(run) == pytest.approx(_losses(reference), abs=1e-6)


def test_a_killed_worker_restarts_the_group_which_resumes_and_finishes_the_same(tmp_path, reference):
    crash = {"CRASH_AFTER_STEP": "4", "CRASH_RANK": "1", "CRASH_ATTEMPT": "0"}
    proc = _torchrun(
        tmp_path, [*MLP, "train.batch_size=8"], extra_env=crash, launcher=["--standalone", "--max-restarts=1"]
    )
    _ok(proc)
    run = _run_dir(tmp_path)  # one run directory: the restarted group found its own
    assert "resumed at step 4/12" in proc.stdout
    assert _max_difference(run, reference) <= TOLERANCE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_train_the_weights_of_one_process(tmp_path, reference):
    port = _free_port()
    nodes = []
    for node in range(2):
        launcher = ["--nnodes=2", f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}"]
        cmd = [
            sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc-per-node=1", str(WORKER),
            "train", *MLP, "train.batch_size=8", "-o", str(tmp_path),
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for proc in nodes:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert _max_difference(_run_dir(tmp_path), reference) <= TOLERANCE


def test_nproc_launches_torchrun_from_the_cli(tmp_path, reference):
    cmd = [
        sys.executable,
        "-m",
        "bigmodel",
        "train",
        *MLP,
        "train.batch_size=8",
        "--nproc",
        "2",
        "-o",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    _ok(proc)
    assert _max_difference(_run_dir(tmp_path), reference) <= TOLERANCE


def test_fsdp_with_bf16_and_activation_checkpointing_stays_close_to_fp32(tmp_path, reference):
    args = [*MLP, "train.batch_size=8", "train.distributed.strategy=fsdp", "train.precision=bf16",
            "train.activation_checkpointing=true"]  # fmt: skip
    _ok(_torchrun(tmp_path, args))
    run = _run_dir(tmp_path)
    # bf16 parameters in the forward (FSDP's mixed-precision policy), fp32 master weights and
    # reductions: the losses follow fp32's within 1 %.
    assert _losses(run) == pytest.approx(_losses(reference), rel=0.01)
    assert 0 < _max_difference(run, reference) < 0.01
