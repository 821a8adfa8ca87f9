"""Records: map-style, unprocessed examples — ``len(records)``, ``records[i] -> dict`` — from any source.

Two kinds, one interface: :class:`ColumnRecords` holds columns in memory (CSV/JSONL/parquet files,
scikit-learn's bundled tables, the user's own arrays); :class:`HFRecords` wraps a Hugging Face
``datasets.Dataset`` (Arrow, memory-mapped, so a corpus larger than memory is never a Python list).
Tasks read records one example at a time (``task.encode``); a split is a view through an index array,
never a copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel.data.io import atomic_path
from bigmodel.errors import DataError, did_you_mean


class Records:
    """Examples addressed by position. Subclasses implement ``_row``, ``_column`` and ``_size``.

    Attributes:
        columns: the column names every example has.
        fingerprint: a digest of the source's content, so a later stage can tell the data changed.
        where: a human name for messages (a file path, ``hf:imdb``, ``arrays``).
    """

    columns: list[str]
    fingerprint: str
    where: str

    def __init__(self, indices: np.ndarray | None = None):
        self._indices = indices  # a view's positions in the underlying source, or None for all of it

    def __len__(self) -> int:
        return self._size() if self._indices is None else len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._row(int(i) if self._indices is None else int(self._indices[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def column(self, name: str) -> list:
        """All values of one column, in order (labels for stratification, texts for a tokenizer)."""
        self.require(name, "data")
        values = self._column(name)
        return values if self._indices is None else [values[int(i)] for i in self._indices]

    def row_number(self, i: int) -> int:
        """The 1-based row number of example ``i`` in its source, as messages should name it."""
        return (int(i) if self._indices is None else int(self._indices[i])) + 1

    def select(self, indices: Sequence[int] | np.ndarray) -> Records:
        """A view of the examples at ``indices`` (positions in this view)."""
        indices = np.asarray(indices, dtype=np.int64)
        base = indices if self._indices is None else self._indices[indices]
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._indices = base
        return view

    def require(self, name: str, field: str) -> None:
        """Refuse a column the records lack, naming the recipe field and the columns there are."""
        if name not in self.columns:
            raise DataError(
                f"{field}: column '{name}' is not in {self.where}. "
                f"Columns: {', '.join(self.columns)}.{did_you_mean(name, self.columns)}"
            )

    def _row(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def _column(self, name: str) -> Sequence:
        raise NotImplementedError

    def _size(self) -> int:
        raise NotImplementedError


class ColumnRecords(Records):
    """Records held as columns (lists or arrays of equal length).

    Args:
        columns: name -> values; an array column's first axis indexes the examples.
        where: a human name for messages.
        fingerprint: a digest of the content.
    """

    def __init__(self, columns: Mapping[str, Sequence], where: str, fingerprint: str = ""):
        super().__init__()
        sizes = {name: len(values) for name, values in columns.items()}
        if len(set(sizes.values())) > 1:
            raise DataError(f"{where}: columns have different lengths: {sizes}.")
        self._data = dict(columns)
        self.columns = list(columns)
        self.where = where
        self.fingerprint = fingerprint

    def _row(self, i: int) -> dict[str, Any]:
        return {name: values[i] for name, values in self._data.items()}

    def _column(self, name: str) -> Sequence:
        return self._data[name]

    def _size(self) -> int:
        return len(next(iter(self._data.values()))) if self._data else 0


class HFRecords(Records):
    """A Hugging Face ``datasets.Dataset`` as records (rows are read from Arrow on demand)."""

    def __init__(self, dataset, where: str):
        super().__init__()
        self._dataset = dataset
        self.columns = list(dataset.column_names)
        self.where = where
        self.fingerprint = str(getattr(dataset, "_fingerprint", "") or "")

    def _row(self, i: int) -> dict[str, Any]:
        return self._dataset[i]

    def _column(self, name: str) -> Sequence:
        return list(self._dataset[name])

    def _size(self) -> int:
        return len(self._dataset)


def evenly_spaced(total: int, n: int) -> np.ndarray:
    """``min(n, total)`` evenly spaced positions of ``range(total)``, first and last included (a fixed,
    spread-out subset of a split: the examples evaluation generates or judges)."""
    if n <= 0 or total <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, total - 1, num=min(n, total)).round().astype(np.int64))


class MarkedRecords(Records):
    """``base`` whose row ``i`` also carries the field ``name`` = ``values[i]``: how a task marks held-out
    examples for extra work in evaluation (generate and judge this one) while the loader, the views,
    the columns and the messages treat the split as before."""

    def __init__(self, base: Records, name: str, values: Sequence):
        super().__init__()
        if len(values) != len(base):
            raise ValueError(f"{len(values)} marks for {len(base)} records")
        self.base, self.name, self.values = base, name, list(values)
        self.columns, self.where, self.fingerprint = list(base.columns), base.where, base.fingerprint

    def _row(self, i: int) -> dict[str, Any]:
        return {**self.base[i], self.name: self.values[i]}

    def _column(self, name: str) -> Sequence:
        return self.base.column(name)

    def _size(self) -> int:
        return len(self.base)

    def row_number(self, i: int) -> int:
        return self.base.row_number(int(i) if self._indices is None else int(self._indices[i]))


def records_from_rows(rows: Sequence[Mapping], where: str) -> ColumnRecords:
    """Records from dicts; every dict must have the first one's keys (extra keys are ignored)."""
    if not rows:
        raise DataError(f"{where}: no records.")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: record {i + 1} is a {type(row).__name__}, expected an object.")
    keys = list(rows[0])
    if not keys:
        raise DataError(f"{where}: record 1 has no fields; the first record names the columns.")
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise DataError(f"{where}: record {i + 1} lacks '{missing[0]}' (the first record has {keys}).")
    return ColumnRecords({k: [row[k] for row in rows] for k in keys}, where)


def write_jsonl(records: Records, path: str | Path, columns: Sequence[str]) -> int:
    """Write ``columns`` of ``records`` to ``path`` as JSON lines, atomically; returns the rows written.

    Values must be JSON values (text, numbers, booleans, lists of them): an image or a waveform is
    refused, naming its column, rather than written as something no reader takes back.
    """
    for name in columns:
        records.require(name, "--column")

    def plain(value, name: str):
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            if math.isnan(value):
                return None  # missing: JSON's null, as the jsonl reader asks for
            raise DataError(f"--column {name}: {value} is not a JSON number ({records.where}).")
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v, name) for v in value]
        raise DataError(
            f"--column {name}: its values are {type(value).__name__} ({records.where}), not text, numbers "
            "or lists of them; JSON lines cannot hold them. Export the text and label columns."
        )

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for row in records:
            out.write(
                json.dumps({name: plain(row[name], name) for name in columns}, ensure_ascii=False) + "\n"
            )
    return len(records)
