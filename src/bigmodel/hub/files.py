"""Files that must never be torn: atomic writes, and tensors in safetensors (never pickle).

Atomic writes come from ``data/io.py``: temporary file, fsync, rename, fsync the folder.

Weights are written deterministically: the same tensors give the same bytes (and so the same SHA-256
in a run's manifest.json). safetensors orders the data by dtype and name but writes its metadata map
in hash order, so the header is rewritten with sorted keys before the rename. Files get the mode a
plain ``open()`` gives (0666 minus the umask), not the 0600 the safetensors writer uses.

Reading weights into a model checks them first (:func:`load_weights`): a damaged file, missing or
extra tensors, other shapes or dtypes, and non-finite values are a :class:`RunDirError` naming the
file and each tensor, never a traceback from ``load_state_dict``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from bigmodel.data.io import atomic_path, atomic_write_text
from bigmodel.errors import RunDirError

__all__ = ["atomic_path", "load_tensors", "load_weights", "save_tensors", "save_weights", "write_json",
           "write_text"]  # fmt: skip

MAX_LISTED = 8  # problems named in one message; the rest are counted


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 minus the process umask."""
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


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
    """Write tensors atomically; identical tensors and metadata give identical bytes."""
    unique, aliases = _dedupe(tensors)
    meta = {**(metadata or {}), "aliases": json.dumps(aliases, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(unique, str(tmp), metadata=meta)
        _sort_header(tmp)
        os.chmod(tmp, file_mode())


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors header as compact JSON with sorted keys (tensor names, metadata keys).
    The data section does not move: its offsets are in the header and stay valid."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the usual case: same content, another order, same length
            f.seek(8)
            f.write(text.ljust(size, b" "))
            return
        data = f.read()
        text = text.ljust(-(-len(text) // 8) * 8, b" ")  # keep the data 8-byte aligned
        f.seek(0)
        f.write(len(text).to_bytes(8, "little") + text + data)
        f.truncate()


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (with its aliases); a damaged file is a :class:`RunDirError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: file missing.")
    if path.stat().st_size == 0:
        raise RunDirError(f"{path}: damaged: the file is empty.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(
            f"{path}: damaged: not a readable safetensors file (empty, truncated or overwritten): {exc}."
        ) from None
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
        if not isinstance(aliases, dict):
            raise ValueError(f"expected an object, found {type(aliases).__name__}")
        missing = sorted(str(key) for key in aliases.values() if key not in tensors)
        if missing:
            raise ValueError(f"they name tensors the file lacks: {', '.join(missing)}")
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path}: damaged: the aliases in its metadata are unreadable ({exc}).") from None
    for alias, key in aliases.items():
        tensors[alias] = tensors[key]
    return tensors


def save_weights(model: nn.Module, path: Path) -> None:
    save_tensors(path, model.state_dict(), {"format": "pt"})


def load_weights(model: nn.Module, path: Path, source: str = "the model") -> None:
    """Load weights strictly after checking them against ``model``.

    Every model tensor must be present with the model's shape and dtype, nothing extra, every
    floating-point value finite.

    Args:
        model: the module to fill.
        path: a safetensors file.
        source: how messages name what the model was built from ("the model in model.json").

    Raises:
        RunDirError: naming the file and, for each wrong tensor, what is wrong with it.
    """
    tensors = load_tensors(path)
    problems = check_tensors(tensors, model.state_dict(), source)
    if problems:
        more = len(problems) - MAX_LISTED
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise RunDirError(f"{path}: these weights do not fit {source}: {listed}.")
    model.load_state_dict(tensors, strict=True)


def check_tensors(
    found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str
) -> list[str]:
    """What is wrong with ``found`` (a file's tensors) for a model whose state dict is ``expected``."""
    problems = [f"{key}: missing from the file" for key in expected if key not in found]
    problems += [f"{key}: in the file but not in {source}" for key in sorted(found) if key not in expected]
    for key, want in expected.items():
        got = found.get(key)
        if got is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{key}: shape {tuple(got.shape)} in the file, {tuple(want.shape)} for {source}")
        elif got.dtype != want.dtype:
            problems.append(f"{key}: dtype {_dtype(got)} in the file, {_dtype(want)} for {source}")
        elif got.is_floating_point() or got.is_complex():
            bad = got.numel() - int(torch.isfinite(got).sum())
            if bad:
                problems.append(f"{key}: {bad} of {got.numel()} values are not finite (NaN or inf)")
    return problems


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")
