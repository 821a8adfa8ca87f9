"""Files that must never be torn: atomic writes, and tensors in safetensors (never pickle).

Atomic writes come from ``data/io.py``: temporary file, fsync, rename, fsync the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from bigmodel.data.io import atomic_path, atomic_write_text
from bigmodel.errors import RunDirError


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage (tied embeddings): keep one name, remember aliases.
    A tensor that only overlaps another's storage (a slice of it) is stored as its own copy."""
    unique, aliases, seen, storages = {}, {}, {}, set()
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        ident = (ptr, t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
        else:
            seen[ident] = key
            unique[key] = t.detach().cpu().contiguous()
            if t.numel() and ptr in storages:
                unique[key] = unique[key].clone()
            storages.add(ptr)
    return unique, aliases


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    unique, aliases = _dedupe(tensors)
    meta = {**(metadata or {}), "aliases": json.dumps(aliases)}
    with atomic_path(path) as tmp:
        save_file(unique, str(tmp), metadata=meta)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    tensors = load_file(str(path))
    for alias, key in aliases.items():
        tensors[alias] = tensors[key]
    return tensors


def save_weights(model: nn.Module, path: Path) -> None:
    save_tensors(path, model.state_dict(), {"format": "pt"})


def load_weights(model: nn.Module, path: Path) -> None:
    """Load weights strictly: every model tensor present, nothing extra."""
    if not Path(path).is_file():
        raise RunDirError(f"{path}: weights file missing.")
    model.load_state_dict(load_tensors(path), strict=True)
