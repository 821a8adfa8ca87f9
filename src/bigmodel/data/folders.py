"""Folders of files as records: one sub-folder per class (``cat/``, ``dog/``), optionally inside split
folders (``train/``, ``validation/``, ``test/``). Images (``images:FOLDER``) and audio clips
(``audio:FOLDER``) share this reader; each names its column and the file suffixes it takes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bigmodel.data.records import ColumnRecords, Records
from bigmodel.errors import DataError

SPLIT_FOLDERS = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}  # fmt: skip


def names_file(value, suffixes: tuple[str, ...]) -> bool:
    """Whether ``value`` names a file with one of ``suffixes`` (a ``Path``, or a short one-line ``str``)."""
    if isinstance(value, Path):
        return value.suffix.lower() in suffixes
    short_line = isinstance(value, str) and len(value) < 4096 and "\n" not in value
    return short_line and Path(value).suffix.lower() in suffixes


def read_class_folders(
    root: str | Path, scheme: str, column: str, suffixes: tuple[str, ...], example: str
) -> dict[str, Records]:
    """Class folders of files, or split folders of them.

    Args:
        root: the folder.
        scheme: the source scheme, for messages (``images``, ``audio``).
        column: the column the files' paths go in (``image``, ``audio``); the class is ``label``.
        suffixes: the file suffixes that are examples (others, such as a README, and hidden files are not).
        example: how messages illustrate a class folder ("cat/, dog/").

    Returns:
        ``{"data": records}`` or the folder's splits. The fingerprint hashes every file's bytes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.source '{scheme}:{root}': not a folder.")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = {SPLIT_FOLDERS[p.name.lower()]: p for p in subfolders if p.name.lower() in SPLIT_FOLDERS}
    if splits and "train" not in splits:
        raise DataError(
            f"data.source '{scheme}:{root}': split folders {sorted(splits)} but no train/ folder."
        )
    folders = splits or {"data": root}
    return {split: _class_folders(folder, column, suffixes, example) for split, folder in folders.items()}


def _class_folders(root: Path, column: str, suffixes: tuple[str, ...], example: str) -> ColumnRecords:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"'{root}': no class folders; it should hold one sub-folder per class ({example}) with the "
            "files inside."
        )
    paths, labels, digest = [], [], hashlib.sha256()
    for folder in classes:
        files = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
        )  # fmt: skip
        for path in files:
            paths.append(str(path))
            labels.append(folder.name)
            digest.update(f"{path.relative_to(root)}\0{folder.name}\0".encode())
            digest.update(path.read_bytes())
    if not paths:
        raise DataError(f"'{root}': the class folders hold no {column} files ({', '.join(suffixes)}).")
    return ColumnRecords({column: paths, "label": labels}, str(root), digest.hexdigest())
