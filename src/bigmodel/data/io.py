"""Files that must never be torn: atomic writes (``hub/files.py`` builds on these for tensors).

Atomic = write a temporary file in the same folder, fsync it, rename it over the target, fsync the
folder: a crash at any instant leaves the old file or the new one, never a torn one. A writer killed
mid-write (SIGKILL, power loss) cannot delete its temporary, ``.<name>.tmp-<pid>-<thread>``;
:func:`remove_temporaries` clears those a dead writer left.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-(\d+)$")


def temporary_path(path: str | Path) -> Path:
    """The temporary :func:`atomic_path` writes ``path`` through: pid + thread id, so two writers of
    the same file never share one, and a leftover names the process that wrote it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and rename it to ``path``."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def temporaries(folder: str | Path) -> list[Path]:
    """The temporaries of :func:`atomic_path` in ``folder`` (not in its subfolders)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMPORARY.match(p.name) and not p.is_dir())


def remove_temporaries(folder: str | Path, every: bool = False) -> list[Path]:
    """Delete the temporaries crashed writers left in ``folder``; return what was deleted.

    A temporary is stale when the process that wrote it is gone, or is this process but the thread
    that wrote it is gone. With ``every=True`` all are deleted: only for a folder the caller alone
    writes (one it holds a lock on), where even a live pid is a reused one.
    """
    removed = []
    live_threads = {t.ident for t in threading.enumerate()}
    for path in temporaries(folder):
        pid, thread = (int(g) for g in _TEMPORARY.match(path.name).groups())
        mine = pid == os.getpid()
        if every or (mine and thread not in live_threads) or (not mine and not _process_alive(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True  # exists but belongs to another user (or cannot be asked): keep its files
    return True
