"""Data sources: turn ``data.source`` (and ``data.validation``/``data.test``) into :class:`Records`.

``builtin:NAME`` reads real data sets that installed packages ship (data/builtin.py); ``csv:``,
``jsonl:`` and ``parquet:`` read files as raw columns (the task decides what a value means);
``hf:NAME`` and ``hf-disk:PATH`` go through Hugging Face ``datasets``; ``images:FOLDER`` (class
folders) and ``idx:FILE`` (MNIST layout) read images (data/images.py). Every problem with a file
names the file and the line.

What a text file may be (anything else is refused with the file, line and byte named, never guessed):

- Encoding: UTF-8, with or without a byte-order mark, or UTF-16 with its byte-order mark (what
  spreadsheets save as "Unicode text"). Other bytes (latin-1, cp1252) are refused rather than decoded
  by guess, since a wrong guess silently changes labels; re-save the file as UTF-8. A NUL character
  is refused too: it means a binary file or UTF-16 without a byte-order mark.
- CSV delimiter: the first of comma, semicolon and tab that splits the header into several columns
  and the first rows into as many (so ``1,5;2,5`` reads as two decimal-comma cells); failing that,
  the one that splits the header into the most columns (comma on a tie). Fields may be quoted with
  ``"``; a quote left open is an error, and so is a row whose field count differs from the header's.
  Every header name must be non-empty and unique.
- JSONL: one JSON object per line (blank lines skipped); ``NaN``/``Infinity``, numbers out of
  range and duplicate keys are refused (write ``null`` for a missing value).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np

from bigmodel.data.audio import read_audio_source
from bigmodel.data.builtin import read_builtin
from bigmodel.data.conll import read_conll_columns
from bigmodel.data.conll2012 import read_srl_columns
from bigmodel.data.images import read_idx_pair, read_image_folder
from bigmodel.data.records import ColumnRecords, HFRecords, Records, records_from_rows
from bigmodel.data.splits import split_indices
from bigmodel.data.squad import read_squad_columns
from bigmodel.errors import DataError, did_you_mean

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
    if scheme == "builtin":  # data/builtin.py: one table, or the set's published splits
        found = read_builtin(what)
        return found if isinstance(found, dict) else {"data": found}
    if scheme == "memory":
        raise DataError(
            f"data.source {source!r}: in-memory data exists only inside the Python call that made it."
        )
    if scheme in ("hf", "hf-disk"):
        return _hf(scheme, what, subset, source)
    if scheme == "images":  # class folders of image files (data/images.py)
        return read_image_folder(what)
    if scheme == "audio":  # class folders of clips, or a manifest (data/audio.py)
        return read_audio_source(what)
    if scheme == "idx":  # MNIST-layout images + labels files
        return {"data": read_idx_pair(what)}
    path = Path(what).expanduser()
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"data.source: file not found: '{path}' (from {source!r}).") from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a name too long, a NUL byte
        raise DataError(
            f"data.source: cannot read '{path}' (from {source!r}): {getattr(exc, 'strerror', None) or exc}."
        ) from None
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet, "conll": read_conll_columns,
               "squad": read_squad_columns, "conll2012": read_srl_columns}  # fmt: skip
    columns = readers[scheme](path, data)
    if not columns or not len(next(iter(columns.values()))):
        raise DataError(f"{path}: no records found.")
    return {"data": ColumnRecords(columns, str(path), hashlib.sha256(data).hexdigest())}


def open_external(source: str, split: str, subset: str | None = None) -> tuple[Records, str]:
    """Records of another source to evaluate a trained run on, and which part they are.

    The source's own ``split`` (a builtin's held-out voices, a Hugging Face test split) when it has
    splits; a source that is one table (a file, a folder, a builtin without splits) is evaluated whole
    for ``split="test"`` (``"all"``): none of it was seen in training, and carving a share of it would
    waste the rest.
    """
    parts = {}
    for name, records in load_source(source, subset).items():
        parts.setdefault(_SPLIT_ALIASES.get(name, name), records)
    if split in parts:
        return parts[split], split
    if len(parts) == 1 and split == "test":
        ((_, records),) = parts.items()
        return records, "all"
    if len(parts) == 1:
        raise DataError(
            f"--split {split}: {source!r} is one table with no splits; --split test evaluates all of it."
        )
    raise DataError(
        f"--split {split}: {source!r} has no {split} split; it has {', '.join(parts)}."
        f"{did_you_mean(split, list(parts))}"
    )


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
    if not len(given["train"]):
        raise DataError(
            f"data.split: {cfg.source!r} has {len(train)} records and holding out validation/test "
            f"{carve} leaves none to train on; give more data or smaller data.split fractions."
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


def _decode(path: Path, data: bytes) -> str:
    """The text of a UTF-8 (optional BOM) or BOM-marked UTF-16 file; anything else is refused."""
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise DataError(
            f"{path}: not {encoding.removesuffix('-sig').upper()} text: {exc.reason} at byte {exc.start} "
            f"(line {line}). Re-save the file as UTF-8."
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise DataError(
            f"{path}: line {line} holds a NUL character; is it a binary file, or UTF-16 without a "
            "byte-order mark? Re-save it as UTF-8."
        )
    return text


_DELIMITERS = (",", ";", "\t")
csv.field_size_limit(2**31 - 1)  # a long document is one legitimate cell; the file is in memory anyway


def _read_csv(path: Path, data: bytes) -> dict[str, list]:
    text = _decode(path, data)
    delimiter = _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next((row for row in reader if row), None)  # blank lines before the header are skipped
        if header is None:
            raise DataError(f"{path}: empty file; expected a header row of column names.")
        header = [h.strip() for h in header]
        if "" in header:
            raise DataError(f"{path}: column {header.index('') + 1} of the header has no name: {header}.")
        if len(set(header)) != len(header):
            raise DataError(f"{path}: duplicate column names in the header: {header}.")
        columns: dict[str, list] = {h: [] for h in header}
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)} "
                    f"(delimiter {delimiter!r})."
                )
            for h, v in zip(header, row, strict=True):
                columns[h].append(v.strip())
        return columns
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV at line {reader.line_num}: {exc}.") from None


def _sniff_delimiter(text: str, rows: int = 20) -> str:
    """The delimiter that gives the header several columns and the next ``rows`` records as many."""
    heads = {d: _head(text, d, rows + 1) for d in _DELIMITERS}
    for d, (header, *records) in heads.items():
        if len(header) > 1 and all(len(r) == len(header) for r in records):
            return d
    return max(_DELIMITERS, key=lambda d: len(heads[d][0]))  # comma (first) on a tie


def _head(text: str, delimiter: str, n: int) -> list[list[str]]:
    """The first of ``n`` records that are not blank (``[[]]`` when they do not parse)."""
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        return [r for r in itertools.islice(reader, n) if r] or [[]]
    except csv.Error:
        return [[]]


def _read_jsonl(path: Path, data: bytes) -> dict[str, list]:
    rows = []
    for line_no, line in enumerate(_decode(path, data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(
                line, parse_constant=_refuse, object_pairs_hook=_unique_keys, parse_float=_finite
            )
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {line_no} is not valid JSON: {exc.msg} (column {exc.colno})."
            ) from None
        except ValueError as exc:  # from _refuse, _unique_keys, _finite, or an int of too many digits
            raise DataError(f"{path}: line {line_no}: {exc}.") from None
        except RecursionError:
            raise DataError(f"{path}: line {line_no}: JSON nested too deeply.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {line_no} is a {type(row).__name__}, expected a JSON object.")
        rows.append(row)
    if not rows:
        return {}
    return records_from_rows(rows, str(path))._data


def _refuse(constant: str):
    raise ValueError(f"{constant} is not a JSON value; write null for a missing value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        keys = [k for k, _ in pairs]
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {twice!r} appears twice in one object")
    return row


def _read_parquet(path: Path, data: bytes) -> dict[str, list]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("parquet sources need pyarrow: pip install 'bigmodel[parquet]'.") from None
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()  # one file; no dataset discovery
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {exc}.") from None
    if len(set(table.column_names)) != len(table.column_names):
        raise DataError(f"{path}: duplicate column names: {table.column_names}.")
    return table.to_pydict()
