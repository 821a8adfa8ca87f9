"""Training state on disk, for exact resume: one self-contained safetensors file per checkpoint.

``train_state/step-N.safetensors`` holds the tensors (weights, optimizer moments, RNG states, best
weights) and, in its safetensors metadata, everything else (step, schedule, sampler cursor, early
stopping, the optimizer's scalars) plus a SHA-256 of the tensor bytes. Written atomically (see
data/io.py), a step file is either absent or complete, and it alone is enough to resume exactly.

``train_state/latest.json`` names the committed step file: it moves only after that file is on disk,
and older step files are deleted only after it moved. When it is missing or damaged, or names a
damaged file, resume falls back to the newest step file that checks out, so losing the pointer never
loses the run. A run killed before its first checkpoint has neither; it starts again from step 0.

A run of many processes (torchrun) writes ``train_state/step-N/`` instead: a folder written with
``torch.distributed.checkpoint`` in which every rank saves its own share as safetensors (no gather to
one rank; no pickle), plus ``meta.json`` from rank 0. It is written as ``step-N.partial`` and renamed
when every rank has finished, then committed by ``latest.json`` as above. Either kind resumes on any
number of processes (see training/state.py).

While a process trains a run it holds ``train_state/.lock`` (``flock``: the kernel releases it when
the process dies, even by SIGKILL), so two processes never train, resume or checkpoint one run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from bigmodel.data.io import remove_temporaries
from bigmodel.errors import RunDirError
from bigmodel.hub.files import load_tensors, save_tensors, write_json

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

STATE_DIR = "train_state"
POINTER = "latest.json"
LOCK = ".lock"
META_KEY = "train_state"  # the step file's metadata entry holding the JSON state
_STEP_FILE = re.compile(r"^step-(\d+)(?:\.safetensors)?$")  # a file (one process) or a folder (many)
SHARD_META = "meta.json"
PARTIAL = ".partial"


def step_file(step: int) -> str:
    return f"step-{step:09d}.safetensors"


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
    """Write ``train_state/step-N.safetensors`` (tensors + ``meta`` + checksum), point ``latest.json``
    at it, then drop other step files (older ones, and any a crashed run wrote but never committed)
    and the temporaries of writers that died."""
    folder = Path(run_dir) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = step_file(step)
    state = json.dumps({**meta, "step": step}, sort_keys=True)
    save_tensors(folder / name, tensors, {META_KEY: state, "sha256": _digest(tensors)})
    write_json(folder / POINTER, {"step": step, "tensors": name})
    _drop_other_steps(folder, name)
    remove_temporaries(folder)


def _drop_other_steps(folder: Path, keep: str) -> None:
    for _, old in _steps(folder):
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def save_sharded_state(run_dir: Path, step: int, tensors: dict, meta: dict, dist) -> None:
    """Every rank writes its share of ``tensors`` (DTensor shards, or its part of replicated tensors:
    the planner spreads those over ranks) into ``train_state/step-N/`` with
    ``torch.distributed.checkpoint`` in safetensors files; rank 0 adds ``meta.json`` (the state, and
    the global shape of every tensor, checked on resume) and commits it. Call on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from bigmodel.training.dist import barrier

    folder = Path(run_dir) / STATE_DIR
    name = step_file(step).removesuffix(".safetensors")
    partial = folder / (name + PARTIAL)
    if dist.main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier(dist)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(partial), save_distributed=True))
    barrier(dist)
    if dist.main:
        shapes = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in tensors.items()}
        write_json(partial / SHARD_META, {**meta, "step": step, "tensors": shapes})
        for path in partial.iterdir():  # on disk before the rename makes the folder a checkpoint
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.replace(partial, folder / name)
        write_json(folder / POINTER, {"step": step, "tensors": name})
        _drop_other_steps(folder, name)
        remove_temporaries(folder)
    barrier(dist)


def read_sharded(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Fill ``tensors`` (shaped, or sharded, like this process's state) in place from the
    ``step-N/`` folder ``path``: each process reads only what it holds, whatever the number of
    processes that wrote it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path)))


@dataclass
class TrainState:
    """A checkpoint read back: its file, tensors, metadata (with ``step``), and what was skipped."""

    path: Path
    tensors: dict[str, torch.Tensor] | None  # None for a sharded folder: read it with read_sharded
    meta: dict
    skipped: list[str] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        return self.path.is_dir()  # "<file>: <what is wrong>" for each file passed over


def has_train_state(run_dir: Path) -> bool:
    """Whether the run ever wrote a checkpoint (a pointer or a step file, valid or not)."""
    folder = Path(run_dir) / STATE_DIR
    return (folder / POINTER).exists() or any(_steps(folder))


def load_train_state(
    run_dir: Path, check: Callable[[dict[str, torch.Tensor], dict], None] | None = None
) -> TrainState | None:
    """Read the committed checkpoint, or the newest valid step file when the pointer or the file it
    names is damaged; None when the run never wrote a checkpoint.

    Args:
        check: raises ``ValueError(what is wrong)`` for a state that does not belong to this run
            (missing metadata keys, weights of another model); such a file is passed over too.

    Raises:
        RunDirError: checkpoints were written but none is valid; names each file and its fault.
    """
    folder = Path(run_dir) / STATE_DIR
    pointer = folder / POINTER
    skipped, candidates, latest = [], [], None
    if pointer.exists():
        try:
            latest = json.loads(pointer.read_text(encoding="utf-8"))
            name = latest["tensors"] if isinstance(latest, dict) else None
            if not (isinstance(name, str) and _STEP_FILE.match(name)):
                raise ValueError("it does not name a step file")
            candidates.append(folder / name)
        except (OSError, UnicodeDecodeError, ValueError, KeyError) as exc:
            skipped.append(f"{pointer}: damaged ({_reason(exc)})")
            latest = None
    candidates += [p for _, p in sorted(_steps(folder), reverse=True) if p not in candidates]
    for path in candidates:
        try:
            tensors, meta = _read_step(path, latest, check)
        except (RunDirError, SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            skipped.append(f"{path}: {_reason(exc)}")
            continue
        return TrainState(path, tensors, meta, skipped)
    if not skipped:
        return None
    raise RunDirError(
        f"{run_dir}: cannot resume: no valid checkpoint in {folder}. "
        + "; ".join(skipped)
        + f". Delete {folder} to train this run again from step 0, or start a new run."
    )


def _steps(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]


def _read_step(path: Path, latest: dict | None, check) -> tuple[dict[str, torch.Tensor] | None, dict]:
    if path.is_dir():
        return None, _read_sharded_meta(path, check)
    if not path.is_file():
        raise ValueError("missing")
    if path.stat().st_size == 0:
        raise ValueError("empty")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    tensors = load_tensors(path)
    if META_KEY in metadata:
        meta = json.loads(metadata[META_KEY])
        if metadata.get("sha256") != _digest(tensors):
            raise ValueError("its tensors do not match their checksum (the file was altered or damaged)")
    elif latest is not None and latest.get("tensors") == path.name:
        meta = latest  # a checkpoint of an earlier version: its state lived in latest.json
    else:
        raise ValueError("no training state in its metadata (not a checkpoint)")
    if not isinstance(meta, dict) or meta.get("step") != int(_STEP_FILE.match(path.name).group(1)):
        raise ValueError("its metadata does not hold the step its name says")
    if check is not None:
        check(tensors, meta)
    return tensors, meta


def _read_sharded_meta(path: Path, check) -> dict:
    """A sharded checkpoint's meta.json, checked: its step, its shard files, the saved tensors' shapes."""
    meta_path = path / SHARD_META
    if not meta_path.is_file():
        raise ValueError(f"no {SHARD_META} (not a complete checkpoint)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("step") != int(_STEP_FILE.match(path.name).group(1)):
        raise ValueError("its metadata does not hold the step its name says")
    if not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise ValueError("it holds no tensor files")
    if not isinstance(meta.get("tensors"), dict):
        raise ValueError("its metadata lacks the list of saved tensors")
    if check is not None:
        check(None, meta)
    return meta


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order (an altered file fails it)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"lacks {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    return str(exc).rstrip(".")


def clean_temporaries(run_dir: Path) -> None:
    """Delete what writers killed mid-write left: every temporary in ``train_state`` (call it holding
    the run's lock: no one else writes there) and, in the run directory, those of dead processes."""
    remove_temporaries(Path(run_dir) / STATE_DIR, every=True)
    for partial in (Path(run_dir) / STATE_DIR).glob(f"step-*{PARTIAL}"):  # a sharded save never committed
        shutil.rmtree(partial, ignore_errors=True)
    remove_temporaries(run_dir)


def finish_train_state(run_dir: Path, keep: str) -> None:
    """Apply ``train.keep_train_state`` to a finished run, after its final weights are on disk:
    ``last`` keeps the final checkpoint (to train on from it), ``none`` deletes ``train_state``."""
    if keep == "none":
        shutil.rmtree(Path(run_dir) / STATE_DIR, ignore_errors=True)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's training lock; a second process gets a :class:`RunDirError` naming the holder.

    A lock file left by a killed process is not stale: ``flock`` dies with its holder, so the next
    process simply takes it. The file is unlinked before it is released; a process that opened the
    old file meanwhile sees it is gone from the folder and tries again.
    """
    folder = Path(run_dir) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{run_dir}: another process (pid {holder}) is training this run; wait for it to finish "
                "or stop it before resuming."
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
