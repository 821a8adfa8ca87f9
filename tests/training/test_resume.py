"""Exact resume: N steps == k steps + SIGKILL + resume + (N - k) steps, bit for bit on CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

# MLP with batch norm (running stats) and dropout (global RNG), AdamW (moments), cosine schedule:
# every piece of state that resume must restore. 1,257 training rows / 32 = 40 batches per epoch.
OVERRIDES = [
    "model.norm=batch",
    "model.dropout=0.2",
    "train.epochs=25",
    "train.batch_size=32",
    "train.optimizer.name=adamw",
    "train.schedule.name=cosine",
    "train.schedule.warmup_steps=15",
    "train.checkpoint_every=7",
    "train.log_every=1",
    "train.early_stopping.patience=1000",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bigmodel", "train", "digits-mlp", *OVERRIDES, "--output", str(out), *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "split" not in r]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    reference = _train(tmp_path / "a")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    (ref_dir,) = (tmp_path / "a" / "digits-mlp").iterdir()

    victim = _train(tmp_path / "b")
    pointer = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for a mid-epoch checkpoint past step 100, then kill
        found = list((tmp_path / "b").glob("digits-mlp/*/train_state/latest.json"))
        if found:
            try:
                step = json.loads(found[0].read_text())["step"]
            except (json.JSONDecodeError, OSError):
                continue
            if step >= 100 and step % 40:
                pointer = found[0]
                break
        if victim.poll() is not None:
            pytest.fail("training finished before it could be killed; make the run longer")
        time.sleep(0.002)
    assert pointer is not None, "no checkpoint appeared"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run_dir = pointer.parent.parent
    assert not (run_dir / "model.safetensors").exists()  # the run really was cut short
    killed_at = json.loads(pointer.read_text())["step"]
    assert 100 <= killed_at < 1000

    resumed = subprocess.run(
        [sys.executable, "-m", "bigmodel", "train", "--resume", str(run_dir)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr

    expected, actual = load_file(ref_dir / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert expected[key].equal(actual[key]), f"{key} differs after resume"
    assert _losses(run_dir) == _losses(ref_dir)  # same loss at every step, no duplicated lines
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads((ref_dir / "eval.json").read_text())


def test_resume_refuses_overrides_and_non_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bigmodel", "train", "--resume", str(tmp_path), "train.epochs=3"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "recipe.yaml" in result.stderr or "overrides" in result.stderr
