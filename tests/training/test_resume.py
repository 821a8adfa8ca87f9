"""Exact resume: N steps == k steps + SIGKILL + resume + (N - k) steps, bit for bit on CPU."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bigmodel
from bigmodel.errors import RunDirError
from bigmodel.training import loop
from bigmodel.training.checkpoint import STATE_DIR
from helpers import write_text_csv, write_tiny_bert, write_wine_csv

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


# --- in-process: crashes at chosen points, damaged checkpoints, changed data, a second process ------

FAST = {"train.epochs": 2, "train.batch_size": 64, "train.checkpoint_every": 5, "train.log_every": 1}
DIGITS = {**FAST, "model.norm": "batch"}  # running statistics to restore; dropout draws on the global RNG
# 1,257 training rows / 64 = 20 steps per epoch, 40 in all.


def _run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _same_weights(a: Path, b: Path) -> None:
    expected, actual = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{key} differs after resume"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted digits run the interrupted ones must reproduce bit for bit."""
    return bigmodel.train("digits-mlp", output=tmp_path_factory.mktemp("ref"), progress=False, **DIGITS)


def _crashed(tmp_path, monkeypatch, at_step: int, saved: bool, spec="digits-mlp", **overrides) -> Path:
    """Train until the checkpoint of ``at_step`` (written or not), then die as a kill would."""
    save = loop.ckpt.save_train_state

    def save_then_crash(run_dir, step, *args, **kwargs):
        if step == at_step and not saved:
            raise KeyboardInterrupt
        save(run_dir, step, *args, **kwargs)
        if step == at_step:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop.ckpt, "save_train_state", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            bigmodel.train(spec, output=tmp_path, progress=False, **(overrides or DIGITS))
    (run_dir,) = (p for p in tmp_path.rglob("data.json"))
    return run_dir.parent


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, monkeypatch, reference):
    run_dir = _crashed(tmp_path, monkeypatch, at_step=5, saved=False)
    assert not loop.ckpt.has_train_state(run_dir)
    assert len(_losses(run_dir)) == 5  # metrics were logged before the crash: they must not repeat
    resumed = bigmodel.train(None, resume=run_dir, progress=False)
    assert resumed.metrics["train"]["steps"] == reference.metrics["train"]["steps"] == 40
    _same_weights(reference.path, run_dir)
    assert _losses(run_dir) == _losses(reference.path)


def test_a_pretrained_run_killed_before_its_first_checkpoint_starts_from_the_pretrained_weights(
    tmp_path, monkeypatch
):
    csv, folder = write_text_csv(tmp_path / "t.csv", n=60), write_tiny_bert(tmp_path / "bert")
    spec = {
        "name": "text-tiny",
        "data": {"source": f"csv:{csv}", "text": "text", "label": "label", "max_length": 16},
        "task": "text_classification",
        "model": {"arch": "bert", "pretrained": str(folder), "dropout": 0.1},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 3e-3}},
    }
    overrides = {**FAST, "train.epochs": 1, "train.batch_size": 8}  # 42 rows to train on: 6 steps
    full = bigmodel.train(spec, output=tmp_path / "a", progress=False, **overrides)
    run_dir = _crashed(tmp_path / "b", monkeypatch, 5, False, spec, **overrides)
    bigmodel.train(None, resume=run_dir, progress=False)
    _same_weights(full.path, run_dir)


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: (folder / "latest.json").unlink(),
        lambda folder: (folder / "latest.json").write_text(""),
        lambda folder: (folder / "latest.json").write_text('{"step": 3'),
        lambda folder: (folder / "latest.json").write_text('{"step": 15}'),
    ],
    ids=["pointer-deleted", "pointer-empty", "pointer-truncated", "pointer-lacks-keys"],
)
def test_a_damaged_pointer_resumes_from_the_step_file_exactly(tmp_path, monkeypatch, reference, damage):
    run_dir = _crashed(tmp_path, monkeypatch, at_step=15, saved=True)
    damage(run_dir / STATE_DIR)
    resumed = bigmodel.train(None, resume=run_dir, progress=False)
    assert resumed.metrics["train"]["steps"] == 40
    _same_weights(reference.path, run_dir)
    assert _losses(run_dir) == _losses(reference.path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.unlink(),
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        lambda p: p.write_bytes(bytes(range(256)) * 64),
    ],
    ids=["deleted", "truncated", "random"],
)
def test_a_damaged_step_file_without_an_older_one_is_named_and_nothing_changes(tmp_path, monkeypatch, damage):
    run_dir = _crashed(tmp_path, monkeypatch, at_step=15, saved=True)
    step_file = run_dir / STATE_DIR / "step-000000015.safetensors"
    damage(step_file)
    before = _run_files(run_dir)
    with pytest.raises(RunDirError, match="step-000000015.safetensors"):
        bigmodel.train(None, resume=run_dir, progress=False)
    assert _run_files(run_dir) == before


def test_resume_refuses_changed_data_and_leaves_the_run_untouched(tmp_path, monkeypatch):
    csv = write_wine_csv(tmp_path / "wine.csv")
    spec = {"name": "wine", "data": {"source": f"csv:{csv}", "label": "label"}, "task": "classification",
            "model": {"arch": "mlp", "hidden_sizes": [8]}, "train": {"epochs": 3}}  # fmt: skip
    run_dir = _crashed(
        tmp_path / "runs", monkeypatch, at_step=5, saved=True, spec=spec, **{**FAST, "train.batch_size": 16}
    )
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # one row fewer
    before = _run_files(run_dir)
    result = subprocess.run(
        [sys.executable, "-m", "bigmodel", "train", "--resume", str(run_dir)],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data changed" in result.stderr and "wine.csv" in result.stderr
    assert _run_files(run_dir) == before


def test_a_run_being_trained_cannot_be_resumed_by_another_process(tmp_path, monkeypatch):
    run_dir = _crashed(tmp_path, monkeypatch, at_step=5, saved=True)
    with loop.ckpt.run_lock(run_dir):  # as a live process training it would hold it
        before = _run_files(run_dir)
        with pytest.raises(RunDirError, match="another process"):
            bigmodel.train(None, resume=run_dir, progress=False)
        assert _run_files(run_dir) == before


def test_stale_temporaries_are_removed_on_resume(tmp_path, monkeypatch):
    run_dir = _crashed(tmp_path, monkeypatch, at_step=35, saved=True)
    torn = [
        run_dir / STATE_DIR / f".step-000000040.safetensors.tmp-{os.getpid()}-1",  # this pid, reused
        run_dir / f".model.safetensors.tmp-{2**22 + 7}-1",  # a writer that no longer exists
    ]
    for path in torn:
        path.write_bytes(b"torn")
    bigmodel.train(None, resume=run_dir, progress=False)
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("keep", ["last", "none"])
def test_a_finished_run_keeps_its_train_state_as_the_recipe_says(tmp_path, keep):
    overrides = {**DIGITS, "train.epochs": 1, "train.keep_train_state": keep}
    run = bigmodel.train("digits-mlp", output=tmp_path, progress=False, **overrides)
    state = run.path / STATE_DIR
    if keep == "last":
        assert sorted(p.name for p in state.iterdir()) == ["latest.json", "step-000000020.safetensors"]
        shutil.rmtree(state)  # as keep_train_state=none does: a finished run must not retrain from step 0
    assert not state.exists()
    with pytest.raises(RunDirError, match="nothing to resume"):
        bigmodel.train(None, resume=run.path, progress=False)
