"""Data sources: turn ``data.source`` into a :class:`Table` of features and raw targets.

``builtin:NAME`` reads the real data sets bundled with scikit-learn (handwritten digits, iris, wine,
breast cancer, diabetes); ``csv:``, ``jsonl:`` and ``parquet:`` read tabular files with declared
feature and label columns, or a text column (``data.text``) kept as raw strings for a tokenizer.
Every problem with a file names the file, the row and the column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel.errors import DataError, did_you_mean


@dataclass
class Table:
    """Records as arrays: ``features`` (N, *feature_shape) float32, ``targets`` (N,) raw labels and,
    for text data, ``texts`` (N,) raw strings (then ``features`` is (N, 0))."""

    features: np.ndarray
    targets: np.ndarray | None
    feature_names: list[str]
    fingerprint: str  # sha256 of the bytes read, so a later stage can tell the data changed
    texts: np.ndarray | None = None

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])


def load_source(
    source: str, features: list[str] | None = None, label: str | None = None, text: str | None = None
) -> Table:
    """Read the records named by ``source`` (``SCHEME:WHAT``, validated by the recipe schema).

    With ``text``, that column is read as strings and no feature columns are read.
    """
    scheme, _, what = source.partition(":")
    if scheme == "builtin":
        if text is not None:
            raise DataError(f"data.text: builtin data sets have no text column; {source!r} is numeric.")
        return _builtin(what)
    path = Path(what).expanduser()
    if not path.is_file():
        raise DataError(f"data.source: file not found: '{path}' (from {source!r}).")
    columns = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[scheme](path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return table_from_columns(columns, features, label, where=str(path), fingerprint=digest, text=text)


def table_from_columns(
    columns: dict[str, list],
    features: list[str] | None,
    label: str | None,
    where: str,
    fingerprint: str = "",
    text: str | None = None,
) -> Table:
    """Select and convert columns. ``label=None`` reads features only (for prediction); ``text``
    reads that column as strings instead of numeric features."""
    names = list(columns)
    if not names or not len(columns[names[0]]):
        raise DataError(f"{where}: no records found.")
    for field, name in (("label", label), ("text", text)):
        if name is not None and name not in columns:
            raise DataError(
                f"data.{field}: column '{name}' is not in {where}. "
                f"Columns: {', '.join(names)}.{did_you_mean(name, names)}"
            )
    texts = None
    if text is not None:
        texts = np.asarray(["" if v is None else str(v) for v in columns[text]], dtype=object)
        features = []
    else:
        features = features or [n for n in names if n != label]
    for name in features:
        if name not in columns:
            raise DataError(
                f"data.features: column '{name}' is not in {where}. "
                f"Columns: {', '.join(names)}.{did_you_mean(name, names)}"
            )
    matrix = np.empty((len(columns[names[0]]), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        matrix[:, j] = _numeric_column(columns[name], name, where)
    targets = None
    if label is not None:
        targets = np.asarray(columns[label], dtype=object)
        missing = [i for i, v in enumerate(targets) if v is None or v == ""]
        if missing:
            raise DataError(f"{where}: row {missing[0] + 1}, column '{label}': the label is empty.")
    return Table(matrix, targets, list(features), fingerprint, texts)


def _numeric_column(values: list, name: str, where: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float32)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: row {i + 1}, column '{name}': {v!r} is not a number. Feature columns must be "
                f"numeric; list the numeric ones in data.features or encode categories first."
            ) from None
        if not math.isfinite(out[i]):
            raise DataError(f"{where}: row {i + 1}, column '{name}': {v!r} is not a finite number.")
    return out


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
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_no} is not valid JSON: {exc.msg}.") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {line_no} is a {type(row).__name__}, expected a JSON object.")
            rows.append(row)
    return columns_from_records(rows, str(path))


def columns_from_records(rows: list[dict], where: str) -> dict[str, list]:
    """Records (dicts) to columns; every record must have the first record's keys."""
    if not rows:
        return {}
    keys = list(rows[0])
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise DataError(f"{where}: record {i + 1} lacks '{missing[0]}' (the first record has {keys}).")
    return {k: [row[k] for row in rows] for k in keys}


def _read_parquet(path: Path) -> dict[str, list]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet sources need pyarrow: pip install 'bigmodel[parquet]'.") from None
    try:
        return pq.read_table(path).to_pydict()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {exc}.") from None


def _builtin(name: str) -> Table:
    """scikit-learn's bundled data sets (shipped inside the wheel; nothing is downloaded)."""
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
    if name == "digits":  # 8x8 grey images, values 0..16
        features = features.reshape(-1, 1, 8, 8)
    targets = bunch.target
    if getattr(bunch, "target_names", None) is not None and name != "digits":
        targets = np.asarray(bunch.target_names)[bunch.target]
    digest = hashlib.sha256(features.tobytes() + np.asarray(targets).astype(str).tobytes()).hexdigest()
    return Table(features, np.asarray(targets, dtype=object), list(bunch.feature_names), digest)
