"""What a single cell means: missing values, numbers, canonical class names, labels, and how
messages name a cell.

* **Missing values** are ``None``, NaN and the strings ``""``, ``NA``, ``N/A``, ``#N/A``, ``<NA>``,
  ``null``, ``None``, ``?`` and ``nan`` (case-insensitive, surrounding spaces ignored):
  :func:`is_missing`. In a *label* column a lone ``-`` or ``--`` also means "no label", unless the
  column also holds ``+`` (then they are signs): :func:`missing_labels`.
* **Numbers** are Python/NumPy numbers and numeric strings such as ``"1e-3"`` or ``" 3 "``
  (:func:`parse_number`, :func:`parse_numbers`); booleans count only where the caller allows them.
* **Formatted numbers** are numbers a person wrote, which ``float()`` refuses: ``"1,234"``, ``"12%"``,
  ``"$3.50"``, ``"3.5 kg"`` (thousands separators, %, a currency sign, a space and a unit of up to 3
  letters): :func:`looks_formatted`.
* **Class and category names** are canonical strings, so ``1``, ``1.0``, ``"1"`` and ``" 1.0 "`` are
  one class (whole numbers print as integers), and ``True``, ``"true"`` and ``"TRUE"`` are one class
  ``"True"`` (a boolean is not the number 1: a label column mixing both is refused by the task):
  :func:`class_name`.
* **Labels.** :func:`clean_labels` refuses rows whose label is missing, naming them, or (policy
  ``drop``) leaves them out with a note saying how many.

Messages name a cell by file, row (as the user's file counts rows) and column
(:func:`resolve_row_numbers`, :func:`cell_location`, :func:`describe_rows`) and show values
shortened (:func:`short_repr`).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from decimal import Decimal

import numpy as np

from bigmodel.errors import DataError

MISSING_TOKENS = frozenset({"", "na", "n/a", "#n/a", "<na>", "null", "none", "?", "nan"})
LABEL_PLACEHOLDERS = frozenset({"-", "--"})  # "no label" in a label column, unless "+" is a class
MISSING_LABELS = ("refuse", "drop")  # what a task does with rows whose label is missing
_UNSET = object()

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_FORMATTED = re.compile(
    rf"(?P<currency>[$€£¥]\s?)?{_NUMBER}(?P<percent>\s?%)?(?P<unit>\s[^\W\d_]{{1,3}}(?:/[^\W\d_]{{1,3}})?)?"
)


# --------------------------------------------------------------------------------------------- values


def is_missing(value: object) -> bool:
    """Whether ``value`` is a missing value: None, NaN, or one of :data:`MISSING_TOKENS`."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in MISSING_TOKENS
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def class_name(value: object) -> str | None:
    """The canonical string of a label or category; None when the value is missing.

    Numbers and numeric strings print as numbers, whole ones as integers, so ``1``, ``1.0``, ``"1"``
    and ``" 1.0 "`` all give ``"1"``; other strings are stripped; booleans and the strings ``true`` /
    ``false`` in any case give ``"True"``/``"False"`` (CSV writes them as text, JSON as booleans).
    """
    if value is None:
        return None
    if isinstance(value, str):
        s = value.strip()
        low = s.lower()
        if low in MISSING_TOKENS:
            return None
        if low in ("true", "false"):
            return "True" if low == "true" else "False"
        try:
            return str(int(s))  # exact for big integers, which float() would round
        except ValueError:
            pass
        try:
            return _number_name(float(s))
        except ValueError:
            return s
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real | Decimal):
        f = float(value)
        return None if math.isnan(f) else _number_name(f)
    return str(value)


def _number_name(f: float) -> str | None:
    if math.isnan(f):
        return None
    if math.isfinite(f) and f.is_integer() and abs(f) < 2**63:
        return str(int(f))
    return repr(f)


def missing_labels(values: Sequence) -> np.ndarray:
    """Which labels are missing: :func:`is_missing`, and a lone ``-``/``--`` unless ``+`` is a label."""
    missing = np.fromiter((is_missing(v) for v in values), dtype=bool, count=len(values))
    dashes = np.fromiter(
        (isinstance(v, str) and v.strip() in LABEL_PLACEHOLDERS for v in values),
        dtype=bool,
        count=len(values),
    )
    if dashes.any() and not any(isinstance(v, str) and v.strip() == "+" for v in values):
        missing |= dashes
    return missing


def clean_labels(
    values: Sequence,
    where: str,
    label: str,
    row_numbers: Sequence[int] | None = None,
    policy: str = "refuse",
    option: str = "task.missing_labels",
) -> tuple[np.ndarray, list[str]]:
    """Find the rows whose label is present; rows with a missing label are refused or dropped with a
    note, never silently.

    Args:
        values: the label column.
        where: the file (or split) the column came from, for messages.
        label: the label column's name, for messages.
        row_numbers: each value's row number as the user's file counts them (default: index + 1).
        policy: ``refuse`` (a DataError names the rows) or ``drop`` (left out, with a note).
        option: the recipe field that sets ``policy``, for messages.

    Returns:
        ``(kept_indices, notes)``: int64 indices of the rows to keep, and human-readable notes.
        Use :func:`class_name` on the kept values for canonical class names.

    Raises:
        DataError: a label is missing and ``policy`` is ``refuse``, or every label is missing.
    """
    if policy not in MISSING_LABELS:
        raise DataError(f"{option}: unknown value {policy!r}. Allowed: {', '.join(MISSING_LABELS)}.")
    rows = resolve_row_numbers(row_numbers, len(values), where)
    missing = missing_labels(values)
    kept = np.flatnonzero(~missing)
    if len(values) and not len(kept):
        raise DataError(
            f"{where}: every value of the label column '{label}' is missing ({len(values)} rows). "
            f"Check data.label names the right column."
        )
    notes = []
    if missing.any():
        dropped = np.flatnonzero(missing)
        rows_text = describe_rows(rows, dropped)
        n = len(dropped)
        if policy == "refuse":
            markers = sorted({short_repr(values[i]) for i in dropped[:20]})
            raise DataError(
                f"{where}: {n} row{'s' * (n > 1)} of {len(values)} {'have' if n > 1 else 'has'} a missing "
                f"label in column '{label}' ({rows_text}; written as {', '.join(markers)}). "
                f"Fill {'them' if n > 1 else 'it'} in, or set {option}: drop to leave such rows out."
            )
        if n == 1:
            notes.append(f"1 row with a missing label in column '{label}' was left out ({rows_text})")
        else:
            notes.append(f"{n} rows with a missing label in column '{label}' were left out ({rows_text})")
    return kept.astype(np.int64), notes


def parse_number(value: object, allow_bool: bool) -> float | None:
    """A float for a number (NaN for a missing value, inf kept), None for anything that is no number."""
    t = type(value)
    if t is float:  # the common case first: this runs once per cell
        return value
    if t is int:
        return _int_to_float(value)
    if isinstance(value, str):
        try:
            return float(value)  # accepts " 3 ", "1e-3", "nan", "inf"
        except ValueError:
            s = value.strip().lower()
            if s in MISSING_TOKENS:
                return math.nan
            if allow_bool and s in ("true", "false"):
                return float(s == "true")
            return None
    if value is None:
        return math.nan
    if isinstance(value, bool | np.bool_):
        return float(value) if allow_bool else None
    if isinstance(value, numbers.Integral):
        return _int_to_float(int(value))
    if isinstance(value, numbers.Real | Decimal):
        try:
            return float(value)
        except OverflowError:  # a Fraction beyond float range
            return math.inf if value > 0 else -math.inf
    return None


def _int_to_float(value: int) -> float:
    """An int as a float; ±inf beyond float range (10**400), as ``float("1e400")`` gives."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def parse_numbers(values: Sequence, allow_bool: bool) -> tuple[np.ndarray, list[int]]:
    """Column to float64 (NaN where missing or not a number) and the indices that are not numbers."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        return values.astype(np.float64).reshape(-1), []
    refused: dict[str, float | None] = {}  # strings float() refuses (NA, categories) repeat: parse once
    parsed = []
    for v in values:
        if type(v) is str:
            f = refused.get(v, _UNSET)
            if f is _UNSET:
                try:
                    f = float(v)
                except ValueError:
                    f = refused[v] = parse_number(v, allow_bool)
        else:
            f = parse_number(v, allow_bool)
        parsed.append(f)
    bad = [i for i, f in enumerate(parsed) if f is None]
    for i in bad:
        parsed[i] = math.nan
    return np.array(parsed, dtype=np.float64), bad


def category_keys(values: Sequence) -> list[str | None]:
    """:func:`class_name` of every value of a column (None where missing)."""
    cache: dict = {}  # local, so concurrent calls share nothing; categories repeat a lot
    keys = []
    for v in values:
        try:
            key = (v.__class__, v)  # the class too: True == 1 == 1.0 as dict keys
            k = cache.get(key)
            if k is None and key not in cache:
                k = cache[key] = class_name(v)
        except TypeError:  # unhashable
            k = class_name(v)
        keys.append(k)
    return keys


def looks_formatted(value: object) -> bool:
    """'1,234', '12%', '$3.50', '3.5 kg': a number a person wrote, which float() refuses."""
    if not isinstance(value, str):
        return False
    m = _FORMATTED.fullmatch(value.strip())
    return bool(m and (m["currency"] or m["percent"] or m["unit"] or "," in value))


# ------------------------------------------------------------------------------------------- messages


def cell_location(where: str, rows: Sequence[int] | None, i: int, name: str) -> str:
    """``where: row 12, column 'age'`` for value ``i`` of a column (no row when ``rows`` is None)."""
    return f"{where}: column '{name}'" if rows is None else f"{where}: row {rows[i]}, column '{name}'"


def short_repr(value: object) -> str:
    """The value's repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_rows(rows: Sequence[int], indices: Sequence[int], limit: int = 5) -> str:
    """``rows 2, 6, 7, 8, 9 and 3 more``: the row numbers of ``indices``, the first ``limit`` shown."""
    shown = ", ".join(str(rows[i]) for i in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


def resolve_row_numbers(row_numbers: Sequence[int] | None, n: int, where: str) -> Sequence[int]:
    """The row numbers of ``n`` rows: the given ones (checked to be ``n``), else 1 to ``n``."""
    if row_numbers is None:
        return range(1, n + 1)
    if len(row_numbers) != n:
        raise DataError(f"{where}: {len(row_numbers)} row numbers were given for {n} rows.")
    return row_numbers
