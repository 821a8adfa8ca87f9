"""Atomic file writes for ``data/`` (which may not import ``hub/files.py``; see tests/test_layering.py).

Atomic = write a temporary file in the same folder, fsync it, rename it over the target, fsync the
folder: a crash at any instant leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    path = Path(path)
    # pid + thread id: two writers of the same file never share a temporary.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)
    return path
