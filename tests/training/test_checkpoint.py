"""Atomic files, tensors with aliases, optimizer state round trip, committed train states, the fallback
when the pointer or a step file is damaged, temporaries of killed writers, and the run lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from bigmodel.data.io import remove_temporaries, temporaries
from bigmodel.errors import RunDirError
from bigmodel.hub.files import atomic_path, load_tensors, save_tensors, write_json
from bigmodel.training.checkpoint import (
    STATE_DIR,
    finish_train_state,
    has_train_state,
    load_train_state,
    optimizer_from_flat,
    optimizer_to_flat,
    run_lock,
    save_train_state,
)


def test_atomic_path_keeps_old_file_when_writer_raises(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            assert tmp != target and tmp.parent == target.parent
            tmp.write_text("half-writ")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left behind


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    write_json(target, {"step": 3})
    assert json.loads(target.read_text()) == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_tensors_round_trip_with_aliases(tmp_path):
    embed = torch.randn(7, 5)
    tensors = {
        "embed.weight": embed,
        "head.weight": embed,  # tied: the same storage
        "bias": torch.arange(5, dtype=torch.float64),
        "view": embed[2],  # shares storage but is a different tensor: must be stored as itself
        "scalar": torch.tensor(3, dtype=torch.int64),
        "half": torch.randn(2, 3).to(torch.bfloat16),
    }
    path = tmp_path / "w.safetensors"
    save_tensors(path, tensors, {"format": "pt"})
    back = load_tensors(path)
    assert set(back) == set(tensors)
    for key, t in tensors.items():
        assert back[key].dtype == t.dtype and torch.equal(back[key], t), key
    assert back["head.weight"] is back["embed.weight"]
    assert back["view"].data_ptr() != back["embed.weight"].data_ptr()
    # and the file holds the tied tensor once
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert "head.weight" not in set(f.keys()) and f.metadata()["format"] == "pt"


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


@pytest.mark.parametrize(
    "make", [lambda p: torch.optim.Adam(p, lr=0.01), lambda p: torch.optim.SGD(p, 0.1, 0.9)]
)
def test_optimizer_flat_round_trip_is_bit_exact(tmp_path, make):
    model = tiny_model()
    opt = make(model.parameters())
    for s in range(3):
        step(model, opt, s)

    tensors, meta = optimizer_to_flat(opt.state_dict())
    assert tensors and all(k.startswith("optim.") for k in tensors)
    save_tensors(tmp_path / "o.safetensors", tensors)
    meta = json.loads(json.dumps(meta))  # it goes to latest.json
    restored_state = optimizer_from_flat(load_tensors(tmp_path / "o.safetensors"), meta)

    twin = tiny_model()
    twin.load_state_dict(model.state_dict())
    twin_opt = make(twin.parameters())
    twin_opt.load_state_dict(restored_state)
    for s in range(3, 6):
        step(model, opt, s)
        step(twin, twin_opt, s)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_flat_keeps_non_tensor_slots():
    state = {"state": {0: {"step": 5, "buf": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    tensors, meta = optimizer_to_flat(state)
    assert set(tensors) == {"optim.0.buf"} and meta["scalars"] == {"0.step": 5}
    back = optimizer_from_flat(tensors, json.loads(json.dumps(meta)))
    assert back["state"][0]["step"] == 5 and torch.equal(back["state"][0]["buf"], torch.ones(2))
    assert back["param_groups"] == [{"lr": 0.1, "params": [0]}]


def test_train_state_keeps_only_the_committed_step(tmp_path):
    assert load_train_state(tmp_path) is None and not has_train_state(tmp_path)
    folder = tmp_path / STATE_DIR
    save_train_state(tmp_path, 10, {"w": torch.full((2,), 1.0)}, {"epoch": 0})
    # a crashed run wrote a step file but never moved the pointer, and left a torn temporary
    folder.joinpath("step-000000015.safetensors").write_bytes(b"torn")
    folder.joinpath(".step-000000016.safetensors.tmp-999999999-1").write_bytes(b"torn")
    save_train_state(tmp_path, 20, {"w": torch.full((2,), 2.0)}, {"epoch": 1})
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["latest.json", "step-000000020.safetensors"]
    latest = json.loads((folder / "latest.json").read_text())
    assert latest == {"step": 20, "tensors": "step-000000020.safetensors"}
    state = load_train_state(tmp_path)
    assert torch.equal(state.tensors["w"], torch.full((2,), 2.0)) and state.meta == {"epoch": 1, "step": 20}
    assert state.skipped == [] and has_train_state(tmp_path)


def _two_checkpoints(run_dir):
    """Step 10 and step 20 both on disk (a save deletes older files, so step 10 is put back by hand)."""
    folder = run_dir / STATE_DIR
    save_train_state(run_dir, 10, {"w": torch.full((3,), 1.0)}, {"epoch": 0, "cursor": 7})
    older = folder.joinpath("step-000000010.safetensors").read_bytes()
    save_train_state(run_dir, 20, {"w": torch.full((3,), 2.0)}, {"epoch": 1, "cursor": 3})
    folder.joinpath("step-000000010.safetensors").write_bytes(older)
    return folder


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.unlink(),
        lambda p: p.write_text(""),
        lambda p: p.write_text('{"step": 20, "tens'),
        lambda p: p.write_text('{"step": 20}'),
        lambda p: p.write_text("[1, 2]"),
        lambda p: p.write_bytes(b"\xff\xfe random"),
        lambda p: p.write_text('{"step": 20, "tensors": "../../model.safetensors"}'),
    ],
    ids=["deleted", "empty", "truncated", "no-tensors-key", "a-list", "binary", "outside"],
)
def test_a_damaged_pointer_falls_back_to_the_newest_valid_step_file(tmp_path, damage):
    folder = _two_checkpoints(tmp_path)
    damage(folder / "latest.json")
    state = load_train_state(tmp_path)
    # the step file alone carries everything: the metadata comes back exactly
    assert state.path.name == "step-000000020.safetensors"
    assert state.meta == {"epoch": 1, "cursor": 3, "step": 20}
    assert torch.equal(state.tensors["w"], torch.full((3,), 2.0))
    if (folder / "latest.json").exists():
        assert len(state.skipped) == 1 and "latest.json" in state.skipped[0]


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.unlink(),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(p.read_bytes()[:-5]),
        lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"),
        lambda p: p.write_bytes(bytes(range(256)) * 4),
        _flip_last_byte,
    ],
    ids=["deleted", "empty", "truncated", "bad-header", "random", "altered-data"],
)
def test_a_damaged_step_file_falls_back_to_an_older_one_or_is_named(tmp_path, damage):
    folder = _two_checkpoints(tmp_path)
    damage(folder / "step-000000020.safetensors")
    state = load_train_state(tmp_path)
    assert state.path.name == "step-000000010.safetensors" and state.meta["step"] == 10
    assert torch.equal(state.tensors["w"], torch.full((3,), 1.0))
    assert "step-000000020.safetensors" in state.skipped[0]

    (folder / "step-000000010.safetensors").unlink()  # no older one: a clear error naming the file
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(RunDirError, match="step-000000020.safetensors") as info:
        load_train_state(tmp_path)
    assert "from step 0" in str(info.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing touched


def test_a_step_file_that_fails_the_runs_check_is_passed_over(tmp_path):
    _two_checkpoints(tmp_path)

    def check(tensors, meta):
        if meta["step"] == 20:
            raise ValueError("its weights do not fit this run's model")

    state = load_train_state(tmp_path, check)
    assert state.meta["step"] == 10 and "do not fit" in state.skipped[0]


def test_plain_weights_are_not_a_checkpoint(tmp_path):
    folder = tmp_path / STATE_DIR
    folder.mkdir()
    save_tensors(folder / "step-000000005.safetensors", {"w": torch.ones(2)})
    with pytest.raises(RunDirError, match="no training state"):
        load_train_state(tmp_path)


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f".a.json.tmp-{dead.pid}-1",
        "alive": f".b.json.tmp-{os.getppid()}-1",  # our parent: alive, maybe writing
        "mine-gone-thread": f".c.json.tmp-{os.getpid()}-1",
        "mine-live-thread": f".d.json.tmp-{os.getpid()}-{threading.get_ident()}",
        "not-a-temporary": ".lock",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    assert {p.name for p in temporaries(tmp_path)} == set(list(names.values())[:4])
    removed = {p.name for p in remove_temporaries(tmp_path)}
    assert removed == {names["dead"], names["mine-gone-thread"]}
    assert {p.name for p in remove_temporaries(tmp_path, every=True)} == {
        names["alive"],
        names["mine-live-thread"],
    }
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]


def test_one_process_at_a_time_trains_a_run(tmp_path):
    with run_lock(tmp_path):
        lock = tmp_path / STATE_DIR / ".lock"
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            with run_lock(tmp_path):
                pass
    assert not lock.exists()  # released: the file goes with it
    # a lock file left by a killed process holds no lock: the next process takes it
    lock.write_text("999999999\n")
    with run_lock(tmp_path):
        assert lock.read_text().strip() == str(os.getpid())


def test_a_killed_holder_releases_the_lock(tmp_path):
    code = (
        "import sys, time; from bigmodel.training.checkpoint import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / STATE_DIR / ".lock").exists()  # the file stays, the lock does not
    with run_lock(tmp_path):
        pass


@pytest.mark.parametrize("keep", ["last", "none"])
def test_finish_keeps_the_train_state_as_the_recipe_says(tmp_path, keep):
    save_train_state(tmp_path, 3, {"w": torch.ones(2)}, {})
    finish_train_state(tmp_path, keep)
    assert (tmp_path / STATE_DIR).exists() == (keep == "last")
