"""Atomic files, tensors with aliases, optimizer state round trip, and committed train states."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bigmodel.hub.files import atomic_path, load_tensors, save_tensors, write_json
from bigmodel.training.checkpoint import (
    STATE_DIR,
    load_train_state,
    optimizer_from_flat,
    optimizer_to_flat,
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
    assert load_train_state(tmp_path) is None
    folder = tmp_path / STATE_DIR
    save_train_state(tmp_path, 10, {"w": torch.full((2,), 1.0)}, {"epoch": 0})
    # a crashed run wrote a step file but never moved the pointer
    folder.joinpath("step-000000015.safetensors").write_bytes(b"torn")
    save_train_state(tmp_path, 20, {"w": torch.full((2,), 2.0)}, {"epoch": 1})
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["latest.json", "step-000000020.safetensors"]
    latest = json.loads((folder / "latest.json").read_text())
    assert latest == {"epoch": 1, "step": 20, "tensors": "step-000000020.safetensors"}
    tensors, meta = load_train_state(tmp_path)
    assert torch.equal(tensors["w"], torch.full((2,), 2.0)) and meta["step"] == 20 and meta["epoch"] == 1
