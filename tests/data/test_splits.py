"""Deterministic, stratified train/validation/test splits."""

from __future__ import annotations

import numpy as np
import pytest

from bigmodel.data import split_indices


def assert_partition(splits: dict, n: int) -> None:
    assert set(splits) == {"train", "validation", "test"}
    parts = list(splits.values())
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n, "splits overlap or repeat"
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64
        np.testing.assert_array_equal(p, np.sort(p))


@pytest.mark.parametrize(
    ("n", "val", "test"), [(1, 0.2, 0.2), (10, 0.0, 0.0), (101, 0.15, 0.15), (37, 0.5, 0.3)]
)
def test_partition_and_sizes(n, val, test):
    splits = split_indices(n, val, test, seed=0)
    assert_partition(splits, n)
    assert len(splits["test"]) == round(n * test)
    assert len(splits["validation"]) == round(n * val)


def test_deterministic_per_seed():
    a = split_indices(200, 0.2, 0.1, seed=3)
    b = split_indices(200, 0.2, 0.1, seed=3)
    c = split_indices(200, 0.2, 0.1, seed=4)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["test"], c["test"])
    assert not np.array_equal(a["validation"], c["validation"])


def test_not_simply_the_last_rows():
    test = split_indices(100, 0.2, 0.2, seed=0)["test"]
    assert not np.array_equal(test, np.arange(80, 100)) and not np.array_equal(test, np.arange(20))


def test_stratified_proportions():
    rng = np.random.default_rng(0)
    strata = np.array(["a"] * 53 + ["b"] * 31 + ["c"] * 9 + ["d"] * 4, dtype=object)
    strata = strata[rng.permutation(len(strata))]
    val, test = 0.2, 0.15
    splits = split_indices(len(strata), val, test, seed=1, strata=strata)
    assert_partition(splits, len(strata))
    for c in np.unique(strata):
        size = int((strata == c).sum())
        n_val = int((strata[splits["validation"]] == c).sum())
        n_test = int((strata[splits["test"]] == c).sum())
        assert abs(n_val - size * val) <= 1, (c, n_val)
        assert abs(n_test - size * test) <= 1, (c, n_test)
        assert (strata[splits["train"]] == c).sum() == size - n_val - n_test
        assert n_test >= 1 and n_val >= 1  # even the 4-member class reaches every split


def test_stratified_with_numeric_labels_deterministic():
    strata = np.arange(120) % 4
    a = split_indices(120, 0.25, 0.25, seed=0, strata=strata)
    b = split_indices(120, 0.25, 0.25, seed=0, strata=strata)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for c in range(4):
        assert (strata[a["test"]] == c).sum() == round(30 * 0.25)
