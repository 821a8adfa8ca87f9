"""Data sources: turn ``data.source`` (and ``data.validation``/``data.test``) into :class:`Records`.

``builtin:NAME`` reads the real data sets bundled with scikit-learn (handwritten digits, iris, wine,
breast cancer, diabetes); ``csv:``, ``jsonl:`` and ``parquet:`` read files as raw columns (the task
decides what a value means); ``hf:NAME`` and ``hf-disk:PATH`` go through Hugging Face ``datasets``.
Every problem with a file names the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from bigmodel.data.records import ColumnRecords, HFRecords, Records, records_from_rows
from bigmodel.data.splits import split_indices
from bigmodel.errors import DataError

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
                  "test": "test"}  # fmt: skip


def load_source(source: str, subset: str | None = None) -> dict[str, Records]:
    """Read the records named by ``source`` (``SCHEME:WHAT``, validated by the recipe schema).

    Returns:
        ``{"data": records}`` for one table, or the source's own splits (``train``, ``validation``,
        ``test``) for a Hugging Face ``DatasetDict``.
    """
    scheme, _, what = source.partition(":")
    if scheme == "builtin":
        return {"data": _builtin(what)}
    if scheme == "memory":
        raise DataError(
            f"data.source {source!r}: in-memory data exists only inside the Python call that made it."
        )
    if scheme in ("hf", "hf-disk"):
        return _hf(scheme, what, subset, source)
    path = Path(what).expanduser()
    if not path.is_file():
        raise DataError(f"data.source: file not found: '{path}' (from {source!r}).")
    columns = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[scheme](path)
    if not columns or not len(next(iter(columns.values()))):
        raise DataError(f"{path}: no records found.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"data": ColumnRecords(columns, str(path), digest)}


def open_splits(
    cfg, seed: int, strata=None, given: dict[str, Records] | None = None
) -> tuple[dict[str, Records], str]:
    """The train/validation/test records a recipe's ``data`` section describes, and their fingerprint.

    A split comes from, in order: its own source (``data.validation``, ``data.test``), the source's
    predefined split (a Hugging Face dataset's ``validation``/``test``), or a seeded share of the
    training records (``data.split`` fractions; stratified by ``strata(records)`` when given).
    ``given`` replaces reading ``data.source`` (in-memory records from the Python API).
    """
    main = given if given is not None else load_source(cfg.source, cfg.subset)
    given = {}
    for name, part in main.items():
        alias = _SPLIT_ALIASES.get(name)
        if alias is not None and alias not in given:
            given[alias] = part
    if "data" in main:
        given["train"] = main["data"]
    if "train" not in given:
        raise DataError(f"data.source: {cfg.source!r} has no train split; it has {', '.join(main)}.")
    for name in ("validation", "test"):
        extra = getattr(cfg, name)
        if extra is not None:
            (given[name],) = load_source(extra, cfg.subset).values()
    carve = {name: getattr(cfg.split, name) for name in ("validation", "test") if name not in given}
    train = given["train"]
    if any(carve.values()):
        labels = strata(train) if strata is not None else None
        labels = None if labels is None else np.asarray([str(v) for v in labels])
        parts = split_indices(len(train), carve.get("validation", 0.0), carve.get("test", 0.0), seed, labels)
        given.update(
            {name: train.select(idx) for name, idx in parts.items() if name in carve or name == "train"}
        )
    splits = {name: given[name] for name in SPLITS if name in given and len(given[name])}
    digest = hashlib.sha256(
        "|".join(r.fingerprint for r in {id(r): r for r in main.values()}.values()).encode()
    )
    for name in ("validation", "test"):
        if getattr(cfg, name) is not None:
            digest.update(given[name].fingerprint.encode())
    return splits, digest.hexdigest()


def _hf(scheme: str, what: str, subset: str | None, source: str) -> dict[str, Records]:
    """``hf:NAME`` through ``datasets.load_dataset`` (the Hub, or a local script/folder),
    ``hf-disk:PATH`` through ``datasets.load_from_disk`` (a folder ``save_to_disk`` wrote)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.source {source!r}: needs the datasets package: pip install 'bigmodel[hf]'."
        ) from None
    try:
        if scheme == "hf-disk":
            if not Path(what).expanduser().is_dir():
                raise DataError(f"data.source: folder not found: '{what}' (from {source!r}).")
            loaded = datasets.load_from_disk(str(Path(what).expanduser()))
        else:
            loaded = datasets.load_dataset(what, subset)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError)
        raise DataError(f"data.source {source!r}: could not load it: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return {name: HFRecords(part, f"{source} [{name}]") for name, part in loaded.items()}
    return {"data": HFRecords(loaded, source)}


def _read_csv(path: Path) -> dict[str, list]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file; expected a header row of column names.")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise DataError(f"{path}: duplicate column names in the header: {header}.")
            columns: dict[str, list] = {h: [] for h in header}
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {line_no} has {len(row)} fields, the header has {len(header)}."
                    )
                for h, v in zip(header, row, strict=True):
                    columns[h].append(v.strip())
            return columns
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}.") from None


def _read_jsonl(path: Path) -> dict[str, list]:
    rows = []
    try:
        with path.open(encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {line_no} is not valid JSON: {exc.msg}.") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}: line {line_no} is a {type(row).__name__}, expected a JSON object."
                    )
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    if not rows:
        return {}
    return records_from_rows(rows, str(path))._data


def _read_parquet(path: Path) -> dict[str, list]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet sources need pyarrow: pip install 'bigmodel[parquet]'.") from None
    try:
        return pq.read_table(path).to_pydict()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {exc}.") from None


def _builtin(name: str) -> ColumnRecords:
    """scikit-learn's bundled data sets (shipped inside the wheel; nothing is downloaded): one column per
    feature (digits: one ``image`` column of 1x8x8 arrays) and a ``label`` column."""
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
    }[name]
    bunch = loader()
    features = bunch.data.astype(np.float32)
    targets = bunch.target
    if getattr(bunch, "target_names", None) is not None and name != "digits":
        targets = np.asarray(bunch.target_names)[bunch.target]
    if name == "digits":  # 8x8 grey images, values 0..16
        columns = {"image": features.reshape(-1, 1, 8, 8)}
    else:
        columns = {str(f): features[:, j] for j, f in enumerate(bunch.feature_names)}
    columns["label"] = np.asarray(targets).tolist()
    digest = hashlib.sha256(features.tobytes() + np.asarray(targets).astype(str).tobytes()).hexdigest()
    return ColumnRecords(columns, f"builtin:{name}", digest)
