"""Values: missing tokens, canonical class names, labels with missing values refused or dropped."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from bigmodel.data.values import (
    MISSING_TOKENS,
    class_name,
    clean_labels,
    is_missing,
    missing_labels,
    parse_number,
    parse_numbers,
)
from bigmodel.errors import DataError


def test_missing_tokens_and_non_missing():
    assert MISSING_TOKENS == {"", "na", "n/a", "#n/a", "<na>", "null", "none", "?", "nan"}
    assert is_missing(float("nan")) and is_missing(np.float32("nan")) and is_missing(" #N/A ")
    assert not any(is_missing(v) for v in (0, 0.0, "0", "-", "nana", False, [None]))


def test_clean_labels_drops_missing_with_a_note():
    labels = ["a", "b", "c", "", "b", None, "NA", "a"]
    kept, notes = clean_labels(labels, "train.csv", "y", row_numbers=[2 * i for i in range(8)], policy="drop")
    np.testing.assert_array_equal(kept, [0, 1, 2, 4, 7])
    assert notes == ["3 rows with a missing label in column 'y' were left out (rows 6, 10, 12)"]
    kept, notes = clean_labels([1, None] + [2] * 3 + [None] * 7, "t", "y", policy="drop")
    assert notes == [
        "8 rows with a missing label in column 'y' were left out (rows 2, 6, 7, 8, 9 and 3 more)"
    ]
    assert clean_labels(["x", "?"], "t", "y", policy="drop")[1] == [
        "1 row with a missing label in column 'y' was left out (row 2)"
    ]
    assert clean_labels([1, 2], "t", "y")[1] == []
    for policy in ("drop", "refuse"):
        with pytest.raises(DataError, match="t: every value of the label column 'y' is missing \\(2 rows\\)"):
            clean_labels(["", None], "t", "y", policy=policy)


@pytest.mark.parametrize("marker", ["", " ", "NA", "n/a", "N/A", "NaN", "nan", "?", "null", "None", None,
                                    float("nan"), "-", "--", "#N/A", "<NA>"])  # fmt: skip
def test_missing_label_markers_are_refused_by_default_naming_rows_and_column(marker):
    labels = ["a", "b"] * 5 + [marker] + ["a"] * 3 + [marker] * 6
    with pytest.raises(DataError) as info:
        clean_labels(labels, "train.csv (train split)", "kind", row_numbers=range(2, 22))
    msg = str(info.value)
    assert "train.csv (train split): 7 rows of 20 have a missing label in column 'kind'" in msg
    assert "rows 12, 16, 17, 18, 19 and 2 more" in msg and "task.missing_labels: drop" in msg
    kept, notes = clean_labels(labels, "t", "kind", policy="drop")
    assert len(kept) == 13 and notes[0].startswith("7 rows with a missing label")


def test_one_missing_label_is_named_in_the_singular():
    expected = r"t: 1 row of 3 has a missing label in column 'y' \(row 2; written as '\?'\)\. Fill it in"
    with pytest.raises(DataError, match=expected):
        clean_labels(["a", "?", "b"], "t", "y")


def test_dashes_are_classes_when_plus_is_one():
    assert missing_labels(["+", "-", " - ", "+"]).tolist() == [False] * 4
    assert missing_labels(["a", "-", "--", "b"]).tolist() == [False, True, True, False]
    with pytest.raises(DataError, match="unknown value 'keep'"):
        clean_labels(["a"], "t", "y", policy="keep")


def test_class_names_are_canonical():
    assert {class_name(v) for v in (1, 1.0, "1", " 1.0 ", np.int64(1), np.float32(1.0))} == {"1"}
    assert class_name(0.5) == "0.5" and class_name("cat ") == "cat" and class_name(True) == "True"
    assert {class_name(v) for v in (True, np.bool_(True), "true", " TRUE ", "True")} == {"True"}
    assert class_name("false") == "False" and class_name(0) == "0"  # a boolean is not the number 0
    assert class_name("12345678901234567890") == "12345678901234567890"  # no float rounding
    assert class_name("NA") is None and class_name(float("nan")) is None


def test_numbers_beyond_float_range_are_infinite_not_an_exception():
    assert parse_number(10**400, allow_bool=False) == math.inf
    assert parse_number(-(10**400), allow_bool=False) == -math.inf
    assert parse_number(np.int64(3), allow_bool=False) == 3.0
    assert parse_number(Fraction(10**400, 3), allow_bool=False) == math.inf
    x, bad = parse_numbers([1, 10**400, "2"], allow_bool=False)
    assert x.tolist() == [1.0, math.inf, 2.0] and bad == []
