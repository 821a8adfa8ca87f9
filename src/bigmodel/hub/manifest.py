"""A run directory's integrity manifest: ``manifest.json`` lists the size and SHA-256 of its files.

What it covers: every file of the finished run directory except ``manifest.json`` itself, the
``train_state/`` folder and hidden files. ``train_state/`` is the resumable checkpoint: it is mutable
by design (rewritten by ``--resume``, thinned or removed as ``train.keep_train_state`` says) and has
its own commit point (``latest.json``); hidden files are the atomic writers' temporaries
(``.name.tmp-PID-TID``) that a kill may leave behind. Everything a stage reads (recipe.yaml,
model.json, task.json, data.json, model.safetensors, tokenizer files) and every result a person
reads (metrics.jsonl, eval.json, summary.json) is covered.

:func:`write_manifest` is called last, when the run has finished, and writes atomically, so a run
directory with a manifest is a finished one. :func:`update_manifest` re-hashes only the files a
later stage rewrote (``evaluate`` updates eval.json), keeping the verified entries of the others.
:func:`verify_manifest` names every file that changed, is missing, or was added at the top level of
the run when it is of a kind a stage reads (``.json``, ``.yaml``, ``.safetensors``: a tokenizer.json
the run never had); other files a user keeps beside the run (predictions.jsonl) are left alone, as is
``report.html`` (a view drawn from the covered files after the manifest, which ``bigmodel report``
may redraw), and so are sub-folders later stages add after training (``compress/``, ``export/``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from bigmodel.errors import RunDirError
from bigmodel.hub.files import write_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
EXCLUDED = ("train_state",)  # top-level folders the manifest leaves out (see the module docstring)
CHUNK = 1 << 20
# Kinds of top-level file a stage reads: one of these appearing after the run finished is refused;
# anything else a user puts beside the run (predictions.jsonl, notes.txt) is not the run's business.
READ_SUFFIXES = (".json", ".yaml", ".safetensors")


def file_digest(path: Path) -> tuple[int, str]:
    """``(size in bytes, SHA-256 hex digest)`` of a file, read in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def artifact_files(run_dir: Path) -> list[str]:
    """The run's files the manifest covers, as sorted POSIX paths relative to ``run_dir``."""
    found = []
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in EXCLUDED or any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and rel.as_posix() != MANIFEST:
            found.append(rel.as_posix())
    return sorted(found)


def write_manifest(run_dir: Path) -> dict:
    """Hash every artifact of ``run_dir`` and write ``manifest.json`` atomically; returns it."""
    files = []
    for name in artifact_files(run_dir):
        size, sha = file_digest(run_dir / name)
        files.append({"path": name, "size": size, "sha256": sha})
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def update_manifest(run_dir: Path, names: list[str]) -> dict:
    """Re-hash ``names`` (files a stage just rewrote) in an already verified manifest."""
    entries = {entry["path"]: entry for entry in read_manifest(run_dir)["files"]}
    for name in names:
        size, sha = file_digest(run_dir / name)
        entries[name] = {"path": name, "size": size, "sha256": sha}
    manifest = {"format": MANIFEST_FORMAT, "files": [entries[name] for name in sorted(entries)]}
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def read_manifest(run_dir: Path) -> dict:
    """The manifest of ``run_dir``, its shape checked; a missing or damaged one names manifest.json."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise RunDirError(
            f"{path}: missing. A finished run directory lists the size and SHA-256 of its files there, so "
            "without it the run cannot be checked: it was written by an older bigmodel, interrupted "
            "before it finished (continue it with --resume), or the file was deleted. Retrain the run."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: damaged or unreadable ({exc}).") from None
    if not isinstance(manifest, dict):
        raise RunDirError(f"{path}: damaged: expected a JSON object, found {type(manifest).__name__}.")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise RunDirError(
            f"{path}: format {manifest.get('format')!r}; this version of bigmodel reads format "
            f"{MANIFEST_FORMAT}."
        )
    files = manifest.get("files")
    if not isinstance(files, list):
        raise RunDirError(f"{path}: damaged: 'files' must be a list of {{path, size, sha256}} entries.")
    for i, entry in enumerate(files):
        if not _valid_entry(entry):
            raise RunDirError(
                f"{path}: damaged: files[{i}] must be {{path: a relative path inside the run, "
                f"size: bytes, sha256: 64 hex digits}}; found {entry!r}."
            )
    return manifest


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict) or set(entry) != {"path", "size", "sha256"}:
        return False
    name, size, sha = entry["path"], entry["size"], entry["sha256"]
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    if ".." in PurePosixPath(name).parts or name == MANIFEST:
        return False
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return False
    return isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)


def verify_manifest(run_dir: Path, skip: Collection[str] = ()) -> None:
    """Check every file the manifest lists (size, then SHA-256) and that no top-level file was added.

    Args:
        run_dir: the run directory.
        skip: files left unchecked (what a resumed run is about to rewrite: weights and results).

    Raises:
        RunDirError: naming manifest.json and every file that changed, is missing or was added.
    """
    listed = {entry["path"]: entry for entry in read_manifest(run_dir)["files"]}
    changed, missing = [], []
    for name, entry in listed.items():
        if name in skip:
            continue
        path = run_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            changed.append(f"{name} ({entry['size']} bytes when the run finished, {size} now)")
        elif file_digest(path)[1] != entry["sha256"]:
            changed.append(f"{name} (same size, different content)")
    added = [
        n for n in artifact_files(run_dir)
        if "/" not in n and n not in listed and n not in skip and n.endswith(READ_SUFFIXES)
    ]  # fmt: skip
    problems = [f"changed: {', '.join(changed)}" if changed else "",
                f"missing: {', '.join(missing)}" if missing else "",
                f"added after the run finished: {', '.join(added)}" if added else ""]  # fmt: skip
    problems = [p for p in problems if p]
    if problems:
        raise RunDirError(
            f"{run_dir}: its files no longer match {MANIFEST}, written when the run finished; "
            f"{'; '.join(problems)}. Restore the original files or retrain the run."
        )
