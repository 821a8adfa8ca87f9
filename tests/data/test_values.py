"""Values: missing tokens, canonical class names, labels with missing values."""

from __future__ import annotations

import numpy as np
import pytest

from bigmodel.data.values import MISSING_TOKENS, class_name, clean_labels, is_missing
from bigmodel.errors import DataError


def test_missing_tokens_and_non_missing():
    assert MISSING_TOKENS == {"", "na", "n/a", "null", "none", "?", "nan"}
    assert is_missing(float("nan")) and is_missing(np.float32("nan"))
    assert not any(is_missing(v) for v in (0, 0.0, "0", "-", "nana", False, [None]))


def test_clean_labels_drops_missing_with_a_note():
    labels = ["a", "b", "c", "", "b", None, "NA", "a"]
    kept, notes = clean_labels(labels, "train.csv", "y", row_numbers=[2 * i for i in range(8)])
    np.testing.assert_array_equal(kept, [0, 1, 2, 4, 7])
    assert notes == ["3 rows with a missing label in column 'y' were left out (rows 6, 10, 12)"]
    kept, notes = clean_labels([1, None] + [2] * 3 + [None] * 7, "t", "y")
    assert notes == [
        "8 rows with a missing label in column 'y' were left out (rows 2, 6, 7, 8, 9 and 3 more)"
    ]
    assert clean_labels(["x", "?"], "t", "y")[1] == [
        "1 row with a missing label in column 'y' was left out (row 2)"
    ]
    assert clean_labels([1, 2], "t", "y")[1] == []
    with pytest.raises(DataError, match="t: every value of the label column 'y' is missing \\(2 rows\\)"):
        clean_labels(["", None], "t", "y")


def test_class_names_are_canonical():
    assert {class_name(v) for v in (1, 1.0, "1", " 1.0 ", np.int64(1), np.float32(1.0))} == {"1"}
    assert class_name(0.5) == "0.5" and class_name("cat ") == "cat" and class_name(True) == "True"
    assert class_name("12345678901234567890") == "12345678901234567890"  # no float rounding
    assert class_name("NA") is None and class_name(float("nan")) is None
