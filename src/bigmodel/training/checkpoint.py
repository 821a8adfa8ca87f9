"""Training state on disk, for exact resume: tensors in safetensors, the rest in JSON.

The state is committed by ``train_state/latest.json``, which names the tensor file it belongs to;
that file is written (atomically, see hub/files.py) before the pointer moves, so the pair is
always consistent and a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bigmodel.hub.files import load_tensors, save_tensors, write_json

STATE_DIR = "train_state"


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able metadata."""
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_train_state(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``train_state/step-N.safetensors``, point ``latest.json`` at it, then drop other step files
    (older ones, and any a crashed run wrote but never committed)."""
    folder = Path(run_dir) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:09d}.safetensors"
    save_tensors(folder / name, tensors)
    write_json(folder / "latest.json", {**meta, "step": step, "tensors": name})
    for old in folder.glob("step-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_train_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Return (tensors, meta) of the last committed checkpoint, or None when there is none."""
    pointer = Path(run_dir) / STATE_DIR / "latest.json"
    if not pointer.is_file():
        return None
    meta = json.loads(pointer.read_text(encoding="utf-8"))
    return load_tensors(pointer.parent / meta["tensors"]), meta
