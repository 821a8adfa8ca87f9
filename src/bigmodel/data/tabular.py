"""Tabular features as users have them: a :class:`TabularEncoder` fitted on the train split.

Everything is decided on the train split alone, so validation and test data never leak in:

* **Missing values** are those of :func:`~bigmodel.data.values.is_missing` (``None``, NaN, ``""``,
  ``NA``, ...). Infinite numbers count as missing.
* **Column kinds.** ``numeric``: every non-missing value is a number (Python/NumPy numbers, numeric
  strings such as ``"1e-3"`` or ``" 3 "``; a column holding only booleans is numeric 1/0).
  ``array``: every value is a list/array of one numeric shape (an image). ``categorical``: anything
  else, and the columns listed in ``categorical_columns``. ``id`` (left out, unless the user listed
  ``features``): named like an id (``id``, ``uuid``, ``index``, ``row_id``, ``customer_id``,
  ``CustomerId``, ``Unnamed: 0``), or integers/strings (not floats) that are all distinct in at
  least 20 rows. ``categorical_columns`` are never dropped as ids.
* **Dirty numbers.** A column where at least 90 % of the non-missing values are plain numbers, or
  at least 90 % look numeric once formatted numbers (``"1,234"``, ``"12%"``, ``"$3.50"``, ``"3.5 kg"``:
  see :func:`~bigmodel.data.values.looks_formatted`) are counted, is never silently made categorical:
  its first other value raises a DataError naming the row and the value. Below that share the column
  is categorical.
* **Missing policy.** ``impute``: numbers take the train median; categories take their own one-hot
  slot ``name=<missing>`` (present only when the train split had missing values; otherwise a missing
  value encodes as all zeros, like an unseen category). ``refuse``: a DataError names the row and
  value. Arrays are never imputed.
* **Prediction inputs** (``encode_many(..., predict=True)``, what a task's ``parse`` checks) are held
  to what training showed the model: a missing value is imputed only in a column that had missing
  values in the train split under ``impute`` (numbers take the median, categories the ``<missing>``
  slot); anywhere else it is refused naming the row and column, as are infinite numbers, booleans in
  a column of numbers and lists or dicts in a cell of numbers or categories. Unseen categories still
  encode as all zeros.
* **Output.** A single array feature keeps its own shape (digits: ``(1, 8, 8)``). Otherwise a flat
  vector: numeric and array columns in feature order (arrays flattened in C order), then one one-hot
  block per categorical column in feature order, categories sorted as strings, ``<missing>`` last.
  Normalisation (``standard``: per input; ``global``: one mean/std; ``none``) is fitted on the train
  split and applied to the numeric part only; one-hot slots stay 0/1.

Category names are canonical strings (:func:`~bigmodel.data.values.class_name`), so ``1``, ``1.0``,
``"1"`` and ``" 1.0 "`` are one category. A fitted encoder is read-only: ``encode`` may run in many
threads or DataLoader workers at once.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bigmodel.data.values import (
    category_keys,
    cell_location,
    class_name,
    describe_rows,
    is_missing,
    looks_formatted,
    parse_number,
    parse_numbers,
    resolve_row_numbers,
    short_repr,
)
from bigmodel.errors import DataError, did_you_mean, unknown_name

NUMERIC_SHARE = 0.9  # a column this numeric is a numeric column with dirty values, not categories
ID_MIN_ROWS = 20  # fewer distinct values than this prove nothing about a column being an id
MANY_CATEGORIES = 100  # above this a note warns about a wide one-hot input
FORMAT_VERSION = 1

NORMALIZE = ("standard", "global", "none")
MISSING = ("impute", "refuse")
CATEGORICAL = ("onehot",)
MISSING_SLOT = "<missing>"

_ID_NAMES = {"id", "uuid", "guid", "index", "idx", "row", "row_id", "rowid", "row_number", "unnamed:_0"}
_INTEGER = re.compile(r"\s*[-+]?\d+\s*")


# ------------------------------------------------------------------------------------- column kinds


def _is_array(value: object) -> bool:
    return isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim > 0)


def _named_like_id(name: str) -> bool:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())  # CustomerId -> Customer_Id
    snake = re.sub(r"[\s\-]+", "_", snake).lower()
    return snake in _ID_NAMES or snake.endswith(("_id", "_uuid", "_guid"))


def _all_integers(values: Sequence) -> bool:
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        return values.dtype.kind in "iu"
    return all(
        (isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_))
        or (isinstance(v, str) and _INTEGER.fullmatch(v) is not None)
        for v in values
    )


# ------------------------------------------------------------------------------------------- messages


def _fmt(x: float) -> str:
    return repr(round(float(x), 6))


def _num_rows(columns: Mapping[str, Sequence], names: Sequence[str], where: str) -> int:
    lengths = {name: len(columns[name]) for name in names}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"'{k}': {v}" for k, v in lengths.items())
        raise DataError(
            f"{where}: the columns have different lengths ({shown}); every row needs every column."
        )
    return next(iter(lengths.values()), 0)


def _absent(name: str, columns: Mapping, where: str, field_name: str) -> DataError:
    names = list(columns)
    return DataError(
        f"{field_name}: column '{name}' is not in {where}. "
        f"Columns: {', '.join(names)}.{did_you_mean(name, names)}"
    )


# -------------------------------------------------------------------------------------------- columns


@dataclass
class _Column:
    """One feature column as fitted: what it is and what its encoding needs."""

    name: str
    kind: str  # numeric | categorical | array
    boolean: bool = False  # numeric: a column of booleans, read as 1/0
    fill: float | None = None  # numeric: the train median, used for missing values when imputing
    imputed: bool = False  # numeric: the train split had missing values, and they were imputed
    categories: list[str] = field(default_factory=list)  # categorical: sorted
    missing_slot: bool = False  # categorical: a one-hot slot for missing values
    shape: tuple[int, ...] = ()  # array: the shape of one value
    index: dict[str, int] = field(default_factory=dict, repr=False)  # categorical: name -> slot

    def __post_init__(self):
        self.shape = tuple(self.shape)
        self.index = {c: i for i, c in enumerate(self.categories)}

    @property
    def width(self) -> int:
        if self.kind == "array":
            return math.prod(self.shape)
        if self.kind == "categorical":
            return len(self.categories) + self.missing_slot
        return 1

    def names(self) -> list[str]:
        if self.kind == "array":
            return [f"{self.name}[{','.join(map(str, ix))}]" for ix in np.ndindex(*self.shape)]
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.categories] + (
                [f"{self.name}={MISSING_SLOT}"] if self.missing_slot else []
            )
        return [self.name]

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            d |= {"boolean": self.boolean, "fill": self.fill, "imputed": self.imputed}
        elif self.kind == "categorical":
            d |= {"categories": list(self.categories), "missing_slot": self.missing_slot}
        else:
            d |= {"shape": list(self.shape)}
        return d


def _stack_arrays(
    values: Sequence, name: str, where: str, rows: Sequence[int] | None, shape: tuple[int, ...] | None
) -> np.ndarray:
    """An array column as one float64 array (N, *shape); any missing, ragged or non-finite cell raises."""
    if isinstance(values, np.ndarray) and values.ndim >= 2 and values.dtype.kind in "biuf":
        out = values.astype(np.float64)
        if shape is not None and out.shape[1:] != shape:
            raise DataError(
                f"{where}: column '{name}' holds arrays of shape {out.shape[1:]}; expected {shape}."
            )
    else:
        cells = []
        for i, v in enumerate(values):
            try:
                a = np.asarray(v, dtype=np.float64) if _is_array(v) else None
            except (TypeError, ValueError):
                a = None
            if a is None:
                raise DataError(
                    f"{cell_location(where, rows, i, name)}: {short_repr(v)} is not a numeric array; "
                    f"the column holds arrays{'' if shape is None else f' of shape {shape}'}, which cannot "
                    f"be imputed. Fix or drop this row."
                )
            shape = a.shape if shape is None else shape
            if a.shape != shape:
                raise DataError(
                    f"{cell_location(where, rows, i, name)}: an array of shape {a.shape}; the column's "
                    f"arrays have shape {shape}. Every value of an array column needs the same shape."
                )
            cells.append(a)
        out = np.stack(cells) if cells else np.zeros((0, *(shape or ())))
    bad = ~np.isfinite(out.reshape(len(out), -1))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(
            f"{cell_location(where, rows, int(i), name)}: the array holds a non-finite value "
            f"({out.reshape(len(out), -1)[i, j]} at flat index {j}); array columns cannot be imputed. "
            f"Fix or drop this row."
        )
    return out


def _fit_column(
    name: str, values: Sequence, *, forced: bool, explicit: bool, missing: str, where: str, rows
) -> tuple[_Column | None, np.ndarray | None, list[str]]:
    """Decide a column's kind and fit it. Returns (column or None when excluded, train values, notes).

    Train values are float64 (N,) for numeric (imputed), (N, *shape) for arrays, int64 slot codes
    (-1: no slot) for categorical.
    """
    n = len(values)
    first = next((v for v in values if not is_missing(v)), None)
    if not forced and _is_array(first):
        arrays = _stack_arrays(values, name, where, rows, None)
        return _Column(name, "array", shape=arrays.shape[1:]), arrays, []
    if not forced and not explicit and _named_like_id(name):
        return None, None, [_id_note(name, _id_reason(values))]
    if not forced:
        x, bad = parse_numbers(values, allow_bool=False)
        n_present = n - int(np.isnan(x).sum()) + len(bad)
        if bad and len(bad) == n_present and all(isinstance(values[i], bool | np.bool_) for i in bad):
            x, bad = parse_numbers(values, allow_bool=True)
            column, x, notes = _fit_numeric(name, values, x, explicit, missing, where, rows)
            if column is not None:
                column.boolean = True
                notes.insert(0, f"column '{name}': booleans encoded as 1/0")
            return column, x, notes
        if not bad:
            return _fit_numeric(name, values, x, explicit, missing, where, rows)
        _refuse_dirty_numbers(name, values, bad, n_present, where, rows)
    return _fit_categorical(name, values, forced or explicit, missing, where, rows)


def _id_reason(values: Sequence) -> str:
    """Why a column named like an id is one: its values when they show it, else its name."""
    n, keys = len(values), category_keys(values)
    if n >= ID_MIN_ROWS and None not in keys and len(set(keys)) == n:
        if _all_integers(values):
            return f"all {n} values distinct integers"
        if all(isinstance(v, str) for v in values):
            return f"all {n} values distinct strings"
    return "by its name"


def _id_note(name: str, why: str) -> str:
    return (
        f"column '{name}' looks like a row id ({why}); excluded from the features — "
        f"list it in data.features to keep it"
    )


def _all_missing(name: str, n: int, explicit: bool, where: str) -> tuple[None, None, list[str]]:
    if explicit:
        raise DataError(
            f"{where}: column '{name}' (listed by you) has no value in any of the {n} train "
            f"rows, so nothing can be learnt from it. Remove it from data.features / "
            f"data.categorical or fill it in."
        )
    return None, None, [f"column '{name}' has no value in the train split (all {n} missing); excluded"]


def _refuse_dirty_numbers(name, values, bad: list[int], n_present: int, where: str, rows) -> None:
    """Raise when a column is mostly numbers, so dirty numbers never become categories silently."""
    plain = (n_present - len(bad)) / n_present
    bad_strings = Counter(values[i] for i in bad if isinstance(values[i], str))  # few distinct ones
    formatted = sum(count for v, count in bad_strings.items() if looks_formatted(v))
    if plain < NUMERIC_SHARE and (not formatted or plain + formatted / n_present < NUMERIC_SHARE):
        return
    i = bad[0]
    share = math.floor(100 * (plain if plain >= NUMERIC_SHARE else plain + formatted / n_present))
    what = "plain numbers" if plain >= NUMERIC_SHARE else "numbers (some with formatting)"
    raise DataError(
        f"{cell_location(where, rows, i, name)}: {short_repr(values[i])} is not a plain number, yet "
        f"{share}% of the column's {n_present} non-missing train values are {what} ({len(bad)} such values: "
        f"{describe_rows(rows, bad)}). A mostly numeric column is not silently turned into categories: "
        f"clean the column (plain numbers like 1234.5, without thousands separators, units, % or currency "
        f"signs; write a missing value as an empty field or NA) or list it as categorical in "
        f"data.categorical."
    )


def _fit_numeric(name, values, x: np.ndarray, explicit: bool, missing: str, where: str, rows):
    n, notes = len(x), []
    if not explicit and n >= ID_MIN_ROWS and not np.isnan(x).any():
        if np.all(x == np.round(x)) and len(np.unique(x)) == n and _all_integers(values):
            return None, None, [_id_note(name, f"all {n} values distinct integers")]
    infinite = np.isinf(x)
    if infinite.any():
        notes.append(
            f"column '{name}': {int(infinite.sum())} non-finite values (inf) in the train split "
            f"treated as missing"
        )
        x = np.where(infinite, np.nan, x)
    absent = np.isnan(x)
    if absent.all():
        return _all_missing(name, n, explicit, where)
    if absent.any() and missing == "refuse":
        i = int(np.flatnonzero(absent)[0])
        raise _missing_error(cell_location(where, rows, i, name), values[i])
    fill = float(np.median(x[~absent]))
    if absent.any():
        notes.append(
            f"column '{name}': {int(absent.sum())} missing values in the train split, imputed with "
            f"the train median {_fmt(fill)}"
        )
        x = np.where(absent, fill, x)
    imputed = bool(absent.any()) and missing == "impute"
    return _Column(name, "numeric", fill=fill if missing == "impute" else None, imputed=imputed), x, notes


def _fit_categorical(name, values, keep: bool, missing: str, where: str, rows):
    n, notes = len(values), []
    keys = category_keys(values)
    present = [k for k in keys if k is not None]
    if not present:
        return _all_missing(name, n, keep, where)
    categories = sorted(set(present))
    if not keep and n >= ID_MIN_ROWS and len(categories) == n:
        return None, None, [_id_note(name, f"all {n} values distinct strings")]
    n_missing = n - len(present)
    if n_missing and missing == "refuse":
        i = keys.index(None)
        raise _missing_error(cell_location(where, rows, i, name), values[i])
    column = _Column(name, "categorical", categories=categories, missing_slot=n_missing > 0)
    notes.append(
        f"column '{name}': {len(categories)} categories one-hot encoded; values unseen in training map "
        f"to all zeros"
    )
    if len(categories) > MANY_CATEGORIES:
        notes[-1] += (
            f" (that many categories make a wide input; if '{name}' is free text or an id, "
            f"list data.features without it)"
        )
    if n_missing:
        notes.append(
            f"column '{name}': {n_missing} missing values in the train split, encoded as their own "
            f"category '{name}={MISSING_SLOT}'"
        )
    return column, _codes(column, keys), notes


def _codes(column: _Column, keys: list[str | None]) -> np.ndarray:
    """One-hot slot per row: the category's slot, the missing slot, or -1 (all zeros)."""
    missing_code = len(column.categories) if column.missing_slot else -1
    index = column.index
    return np.fromiter(
        (missing_code if k is None else index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys)
    )


def _unimputed_error(loc: str, value: object, missing: str) -> DataError:
    why = (
        "data.missing is 'refuse'"
        if missing == "refuse"
        else "the column had no missing values in training, so the model never learnt an imputed value"
    )
    return DataError(
        f"{loc}: missing value {short_repr(value)}, and {why}. Send the value (rows with missing values "
        f"are predicted only for columns that had missing values in training, with data.missing: impute)."
    )


def _check_categories(values: Sequence, keys: list, column: _Column, missing: str, where: str, rows) -> None:
    """Prediction inputs of a categorical column: a missing value only where training imputed one
    (the ``<missing>`` slot), and no lists, dicts or other containers as categories."""
    for i, (value, key) in enumerate(zip(values, keys, strict=True)):
        if key is None and not (column.missing_slot and missing == "impute"):
            raise _unimputed_error(cell_location(where, rows, i, column.name), value, missing)
        if isinstance(value, list | tuple | dict | set | np.ndarray | Mapping):
            raise DataError(
                f"{cell_location(where, rows, i, column.name)}: {short_repr(value)} is a "
                f"{type(value).__name__}, not a category; the column held categories such as "
                f"{', '.join(repr(c) for c in column.categories[:3])} in training."
            )


def _missing_error(loc: str, value: object) -> DataError:
    return DataError(
        f"{loc}: missing value {short_repr(value)}, and data.missing is 'refuse'. Fill the value in, "
        f"drop the row, or set data.missing to 'impute' (numbers take the train median, categories "
        f"get a 'missing' category)."
    )


# -------------------------------------------------------------------------------------------- encoder


class TabularEncoder:
    """Turns tabular records (numbers, categories, arrays, missing values) into float32 model inputs.

    Fit once on the train split's columns, then encode one record at a time (``encode``) or many at
    once (``encode_many``). A fitted encoder is never mutated by encoding, so it is safe to share
    between threads and DataLoader workers. See the module docstring for the rules.
    """

    def __init__(self):
        self._columns: list[_Column] | None = None
        self.notes: list[str] = []
        self.excluded: list[str] = []

    # ---------------------------------------------------------------------------------------- fit

    def fit(
        self,
        columns: Mapping[str, Sequence],
        label: str | None = None,
        features: list[str] | None = None,
        *,
        normalize: str = "standard",
        categorical: str = "onehot",
        missing: str = "impute",
        categorical_columns: list[str] | None = None,
        where: str = "data",
        row_numbers: Sequence[int] | None = None,
    ) -> list[str]:
        """Decide each column's kind and fit imputation, categories and normalisation on these rows.

        Args:
            columns: the train split, column-oriented: name -> values (list, tuple or NumPy array; an
                array column may also be one NumPy array of shape (N, *shape)).
            label: the label column, never a feature.
            features: the feature columns, in order. None: every column but the label, minus id-like
                columns. Given: exactly these.
            normalize: ``standard``, ``global`` or ``none``.
            categorical: ``onehot`` (the only encoding so far).
            missing: ``impute`` or ``refuse``.
            categorical_columns: columns to treat as categories even when they hold numbers (these
                are never dropped as ids).
            where: the file or split, for messages.
            row_numbers: each row's number as the user's file counts them (default: index + 1).

        Returns:
            Human-readable notes on what was decided (excluded ids, imputations, one-hot blocks).

        Raises:
            DataError: an absent column, a mostly numeric column with non-numbers, a missing value
                under ``missing="refuse"``, a bad array, or no feature left.
        """
        for option, value, allowed in (
            ("normalize", normalize, NORMALIZE),
            ("categorical", categorical, CATEGORICAL),
            ("missing", missing, MISSING),
        ):
            if value not in allowed:
                raise unknown_name(f"data.{option}", value, allowed, error=DataError)
        n = _num_rows(columns, list(columns), where)
        if n == 0:
            raise DataError(f"{where}: no records to fit the features on.")
        rows = resolve_row_numbers(row_numbers, n, where)
        if label is not None and label not in columns:
            raise _absent(label, columns, where, "data.label")
        forced = list(categorical_columns or [])
        for name in forced:
            if name not in columns:
                raise _absent(name, columns, where, "data.categorical")
        explicit = features is not None
        if explicit:
            for name in features:
                if name not in columns:
                    raise _absent(name, columns, where, "data.features")
            if label in features:
                raise DataError(f"data.features: '{label}' is the label column; it cannot also be a feature.")
            if len(set(features)) != len(features):
                raise DataError(f"data.features: a column is listed twice: {features}.")
        candidates = list(features) if explicit else [c for c in columns if c != label]

        fitted, notes, excluded = [], [], []
        for name in candidates:
            column, values, column_notes = _fit_column(
                name,
                columns[name],
                forced=name in forced,
                explicit=explicit,
                missing=missing,
                where=where,
                rows=rows,
            )
            notes += column_notes
            if column is None:
                excluded.append(name)
            else:
                fitted.append((column, values))
        if not fitted:
            raise DataError(
                f"{where}: no feature columns left (excluded: {', '.join(excluded) or 'none'}). "
                f"List the columns to use in data.features."
            )
        ordered = _order([c for c, _ in fitted])
        numeric_train = [v.reshape(n, -1) for c, v in fitted if c.kind != "categorical"]
        k = sum(v.shape[1] for v in numeric_train)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below
            mean, std = _fit_normalizer(numeric_train, normalize)
        numeric_columns = [c for c in ordered if c.kind != "categorical"]
        _refuse_overflow(np.broadcast_to(mean + std, (1, k)), numeric_columns, where, None, "normalise")
        if numeric_train and normalize != "none":
            notes.append(
                f"normalize={normalize}: {k} numeric input{'s' * (k != 1)} scaled with the train split's "
                f"mean and std (constant inputs keep std 1); one-hot slots stay 0/1"
            )
        # Assigned last, so a fit that raises leaves a previously fitted encoder intact.
        self._set(ordered, mean, std, normalize=normalize, missing=missing)
        self.notes, self.excluded = notes, excluded
        return list(notes)

    def _set(self, columns: list[_Column], mean, std, *, normalize: str, missing: str) -> None:
        self._columns = columns
        self._normalize, self._missing = normalize, missing
        self._mean = np.asarray(mean, dtype=np.float64)
        self._std = np.asarray(std, dtype=np.float64)
        for a in (self._mean, self._std):
            a.flags.writeable = False  # shared between threads: nothing may write to it
        self._numeric = [c for c in columns if c.kind != "categorical"]
        self._num_width = sum(c.width for c in self._numeric)
        self._onehot, offset = [], self._num_width
        for c in columns:
            if c.kind == "categorical":
                self._onehot.append((c, offset))
                offset += c.width
        self._width = offset
        single = len(columns) == 1 and columns[0].kind == "array"
        self._shape = columns[0].shape if single else (self._width,)

    # ------------------------------------------------------------------------------------- properties

    def _fitted(self) -> list[_Column]:
        if self._columns is None:
            raise RuntimeError("TabularEncoder is not fitted: call fit() or from_state() first.")
        return self._columns

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one encoded record: an array feature's own shape, else ``(width,)``."""
        self._fitted()
        return self._shape

    @property
    def feature_names(self) -> list[str]:
        """One name per output value in flat order: ``age``, ``image[0,2,5]``, ``city=Paris``."""
        return [name for c in self._fitted() for name in c.names()]

    @property
    def columns(self) -> list[str]:
        """The feature columns a record must have, in output order."""
        return [c.name for c in self._fitted()]

    @property
    def kinds(self) -> dict[str, str]:
        """Column name -> ``numeric``, ``categorical`` or ``array``."""
        return {c.name: c.kind for c in self._fitted()}

    # ----------------------------------------------------------------------------------------- encode

    def encode(self, record: Mapping, *, where: str = "record") -> np.ndarray:
        """Encode one record (extra keys are ignored) to float32 of shape ``input_shape``.

        Raises:
            DataError: a feature column is absent, a numeric column holds a non-number, an array is
                malformed, or a value is missing under ``missing="refuse"``.
        """
        self._fitted()
        out = np.zeros(self._width, dtype=np.float64)
        pos = 0
        for column in self._numeric:
            value = _get(record, column.name, where)
            if column.kind == "array":
                size = column.width
                out[pos : pos + size] = _stack_arrays([value], column.name, where, None, column.shape).ravel()
                pos += size
            else:
                out[pos] = self._number(value, column, where)
                pos += 1
        out[: self._num_width] = (out[: self._num_width] - self._mean) / self._std
        with np.errstate(over="ignore"):  # a float32 overflow is refused just below
            block = out[None, : self._num_width].astype(np.float32)
        _refuse_overflow(block, self._numeric, where, None)
        for column, offset in self._onehot:
            value = _get(record, column.name, where)
            key = class_name(value)
            if key is None:
                if self._missing == "refuse":
                    raise _missing_error(cell_location(where, None, 0, column.name), value)
                slot = len(column.categories) if column.missing_slot else -1
            else:
                slot = column.index.get(key, -1)
            if slot >= 0:
                out[offset + slot] = 1.0
        return out.astype(np.float32).reshape(self._shape)

    def _number(self, value: object, column: _Column, where: str, rows=None, i: int = 0) -> float:
        f = parse_number(value, column.boolean)
        if f is None:
            raise _not_a_number(cell_location(where, rows, i, column.name), value)
        if not math.isfinite(f):
            if self._missing == "refuse":
                raise _missing_error(cell_location(where, rows, i, column.name), value)
            f = column.fill
        return f

    def encode_many(
        self,
        columns: Mapping[str, Sequence],
        *,
        where: str = "data",
        row_numbers: Sequence[int] | None = None,
        predict: bool = False,
    ) -> np.ndarray:
        """Encode a whole table at once (column-oriented, like ``fit``): float32 ``(N, *input_shape)``.

        Gives the same values as ``encode`` on each row, column by column in NumPy. ``predict=True``
        holds the values to the rules for prediction inputs (module docstring): what it accepts
        encodes exactly as without it.
        """
        fitted = self._fitted()
        for c in fitted:
            if c.name not in columns:
                raise _absent_feature(c.name, columns, where)
        n = _num_rows(columns, [c.name for c in fitted], where)
        rows = resolve_row_numbers(row_numbers, n, where)
        numeric = np.empty((n, self._num_width), dtype=np.float64)
        pos = 0
        for column in self._numeric:
            values = columns[column.name]
            if column.kind == "array":
                block = _stack_arrays(values, column.name, where, rows, column.shape).reshape(n, -1)
            else:
                block = self._numbers(values, column, where, rows, predict)[:, None]
            numeric[:, pos : pos + block.shape[1]] = block
            pos += block.shape[1]
        out = np.zeros((n, self._width), dtype=np.float32)
        with np.errstate(over="ignore"):  # a float32 overflow is refused just below
            out[:, : self._num_width] = (numeric - self._mean) / self._std
        _refuse_overflow(out[:, : self._num_width], self._numeric, where, rows)
        for column, offset in self._onehot:
            values = columns[column.name]
            keys = category_keys(values)
            if predict:
                _check_categories(values, keys, column, self._missing, where, rows)
            elif self._missing == "refuse" and None in keys:
                i = keys.index(None)
                raise _missing_error(cell_location(where, rows, i, column.name), values[i])
            codes = _codes(column, keys)
            hit = np.flatnonzero(codes >= 0)
            out[hit, offset + codes[hit]] = 1.0
        return out.reshape(n, *self._shape)

    def _numbers(
        self, values: Sequence, column: _Column, where: str, rows, predict: bool = False
    ) -> np.ndarray:
        x, bad = parse_numbers(values, column.boolean)
        if bad:
            raise _not_a_number(cell_location(where, rows, bad[0], column.name), values[bad[0]])
        absent = ~np.isfinite(x)
        if predict and absent.any():
            infinite = np.flatnonzero(np.isinf(x))
            if len(infinite):
                i = int(infinite[0])
                raise DataError(
                    f"{cell_location(where, rows, i, column.name)}: {short_repr(values[i])} is not a finite "
                    f"number. Send a plain finite number (or leave the value empty when it is unknown)."
                )
            if not (column.imputed and self._missing == "impute"):
                i = int(np.flatnonzero(absent)[0])
                raise _unimputed_error(cell_location(where, rows, i, column.name), values[i], self._missing)
        if absent.any():
            if self._missing == "refuse":
                i = int(np.flatnonzero(absent)[0])
                raise _missing_error(cell_location(where, rows, i, column.name), values[i])
            x[absent] = column.fill
        return x

    # ------------------------------------------------------------------------------------------ state

    def state(self) -> dict:
        """Everything needed to encode again, JSON-serialisable (goes into ``task.json``)."""
        columns = self._fitted()

        def floats(a: np.ndarray):
            return float(a) if a.ndim == 0 else [float(v) for v in a]

        return {
            "format": FORMAT_VERSION,
            "normalize": self._normalize,
            "categorical": "onehot",
            "missing": self._missing,
            "columns": [c.to_dict() for c in columns],
            "mean": floats(self._mean),
            "std": floats(self._std),
            "excluded": list(self.excluded),
            "notes": list(self.notes),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> TabularEncoder:
        """Rebuild an encoder saved by :meth:`state`; it encodes exactly as the original did."""
        if state.get("format") != FORMAT_VERSION:
            raise DataError(
                f"tabular feature encoder: format {state.get('format')!r} is not supported "
                f"(this version reads format {FORMAT_VERSION}); re-run training with this version."
            )
        encoder = cls()
        columns = [
            _Column(**c) if c["kind"] != "numeric" or "imputed" in c
            else _Column(**c, imputed=c.get("fill") is not None)  # before "imputed" was recorded
            for c in state["columns"]
        ]  # fmt: skip
        encoder._set(
            columns, state["mean"], state["std"], normalize=state["normalize"], missing=state["missing"]
        )
        encoder.excluded = list(state.get("excluded", []))
        encoder.notes = list(state.get("notes", []))
        return encoder


def _get(record: Mapping, name: str, where: str) -> object:
    try:
        return record[name]
    except KeyError:
        raise _absent_feature(name, record, where) from None


def _absent_feature(name: str, available: Mapping, where: str) -> DataError:
    names = [str(k) for k in available]
    return DataError(
        f"{where}: column '{name}' is absent, but the model was trained with it as a feature. "
        f"Present: {', '.join(names) or 'nothing'}.{did_you_mean(name, names)}"
    )


def _not_a_number(loc: str, value: object) -> DataError:
    return DataError(
        f"{loc}: {short_repr(value)} is not a number, but the column held numbers in training. "
        f"Send a plain number such as 1234.5 (or leave the value empty when it is unknown)."
    )


def _refuse_overflow(
    block: np.ndarray, numeric: list[_Column], where: str, rows, what: str = "encode as float32"
) -> None:
    """Raise when a huge number overflowed: the encoder promises finite inputs, never inf or NaN."""
    if np.isfinite(block).all():
        return
    i, j = (int(k) for k in np.argwhere(~np.isfinite(block))[0])
    owners = [c.name for c in numeric for _ in range(c.width)]
    raise DataError(
        f"{cell_location(where, rows, i, owners[j])}: a value too large to {what} (beyond ±3.4e38 after "
        f"normalisation). Rescale the column (e.g. other units) or clip its outliers."
    )


def _order(columns: list[_Column]) -> list[_Column]:
    """Output order: numeric and array columns first, then categorical, each in feature order."""
    return [c for c in columns if c.kind != "categorical"] + [c for c in columns if c.kind == "categorical"]


def _fit_normalizer(blocks: list[np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the train numeric inputs; std 1 where an input (or all of them) is constant."""
    if mode == "none" or not blocks:
        return np.zeros(()), np.ones(())
    if mode == "standard":
        x = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        mean, std = x.mean(axis=0), x.std(axis=0)
        constant = x.max(axis=0) == x.min(axis=0)  # exact, unlike std > eps on big constant values
        return mean, np.where(constant | (std == 0), 1.0, std)
    total = sum(b.size for b in blocks)
    mean = sum(b.sum() for b in blocks) / total
    std = math.sqrt(sum(((b - mean) ** 2).sum() for b in blocks) / total)
    constant = min(b.min() for b in blocks) == max(b.max() for b in blocks)
    return np.asarray(mean), np.asarray(1.0 if constant or std == 0 else std)
