"""SIGKILL a training run at random moments, resume it each time, and compare with an uninterrupted run.

The moments (seeded): before the first checkpoint, while an atomic write is under way (the poller
kills as soon as a temporary of the running process appears: a checkpoint, latest.json, a trimmed
metrics.jsonl), and after a random delay into training. The resumed run must end bit-identical to
the uninterrupted one, with the same loss at every step, and leave no temporary or lock behind.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

# 1,257 training rows / 64 = 20 steps per epoch, 40 in all; a checkpoint every 2 steps (~2.4 MB with
# AdamW moments, so a write lasts long enough to be hit); batch norm, dropout and a cosine schedule.
OVERRIDES = [
    "model.hidden_sizes=[384,384]",
    "model.norm=batch",
    "model.dropout=0.2",
    "train.epochs=2",
    "train.batch_size=64",
    "train.optimizer.name=adamw",
    "train.schedule.name=cosine",
    "train.checkpoint_every=2",
    "train.log_every=1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MOMENTS = ["before-first-checkpoint", "during-write", "delay", "during-write"]


def _start(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bigmodel", "train", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _temporaries_of(run_dir: Path | None, pid: int) -> bool:
    """Whether a temporary written by process ``pid`` exists in the run directory or its train_state."""
    if run_dir is None:
        return False
    mark = re.compile(rf"\.tmp-{pid}-\d+$")
    for folder in (run_dir, run_dir / "train_state"):
        try:
            if any(mark.search(name) for name in os.listdir(folder)):
                return True
        except FileNotFoundError:
            pass
    return False


def _kill_at(proc: subprocess.Popen, moment: str, out: Path, run_dir: Path | None, rng) -> Path | None:
    """Wait for ``moment`` in ``proc``'s run, SIGKILL it, and return the run directory (None when the
    process finished first)."""
    deadline, started, delay = time.monotonic() + 120, None, rng.uniform(0.0, 0.6)
    while time.monotonic() < deadline and proc.poll() is None:
        if run_dir is None:
            found = list(out.glob("digits-mlp/*/data.json"))
            run_dir = found[0].parent if found else None
        if moment == "before-first-checkpoint" and run_dir is not None:
            break
        if _temporaries_of(run_dir, proc.pid):
            if moment == "during-write":
                break
            started = started or time.monotonic()  # training is under way: now wait a random while
        if moment == "delay" and started and time.monotonic() - started > delay:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return run_dir


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "split" not in r]


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    rng = random.Random(11)
    reference = _start("digits-mlp", *OVERRIDES, "--output", str(tmp_path / "a"))  # runs alongside

    victim = _start("digits-mlp", *OVERRIDES, "--output", str(tmp_path / "b"))
    run_dir, kills = None, []
    for moment in MOMENTS:
        run_dir = _kill_at(victim, moment, tmp_path / "b", run_dir, rng)
        assert run_dir is not None, victim.stderr.read().decode()
        state = run_dir / "train_state" / "latest.json"
        kills.append((moment, json.loads(state.read_text())["step"] if state.is_file() else None, victim.pid))
        assert victim.returncode in (0, -signal.SIGKILL), victim.stderr.read().decode()
        if victim.returncode == 0:
            break  # the process finished before the kill landed
        victim = _start("--resume", str(run_dir))
    else:
        assert victim.wait(timeout=300) == 0, victim.stderr.read().decode()
    assert kills[0][:2] == ("before-first-checkpoint", None), (
        kills
    )  # the first kill came before any checkpoint
    assert len(kills) >= 3, kills
    print("kills (moment, committed step, pid):", kills)
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    (ref_dir,) = (tmp_path / "a" / "digits-mlp").iterdir()
    expected, actual = load_file(ref_dir / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert expected[key].equal(actual[key]), f"{key} differs after the kills {kills}"
    assert _losses(run_dir) == _losses(ref_dir)
    assert json.loads((run_dir / "eval.json").read_text()) == json.loads((ref_dir / "eval.json").read_text())
    leftovers = [str(p.relative_to(run_dir)) for p in run_dir.rglob(".*")]
    assert leftovers == [], (
        f"temporaries or a lock left behind: {leftovers} (kills: {kills}, last pid {victim.pid})"
    )
