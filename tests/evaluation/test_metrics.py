"""Metrics from merged sums (a confusion matrix; error and target sums) agree with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from bigmodel.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    regression_metrics,
    scalar_metrics,
)
from bigmodel.tasks.classification import Labels

K = 6
NAMES = [f"c{i}" for i in range(K)]


def random_predictions(seed=0, n=157):
    rng = np.random.default_rng(seed)
    target = rng.choice([0, 1, 2, 4, 5], size=n)  # class 3 absent from targets
    pred = rng.choice([0, 1, 2, 3, 5], size=n)  # class 4 never predicted
    pred[:40] = target[:40]  # some signal, so the scores are not all tiny
    pred[pred == 4] = 0
    return pred, target


def metrics_of(pred, target, names=NAMES) -> dict:
    return classification_metrics(confusion_matrix(pred, target, len(names)), names)


def sums(pred, target) -> dict[str, float]:
    """What a streaming regression metric accumulates (here in one go)."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    err = pred - target
    return {
        "count": float(len(target)),
        "sq_err": float((err**2).sum()),
        "abs_err": float(np.abs(err).sum()),
        "target": float(target.sum()),
        "target_sq": float((target**2).sum()),
    }


def add(*parts: dict) -> dict:
    return {k: sum(p[k] for p in parts) for k in parts[0]}


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn_and_merges_by_addition(seed):
    pred, target = random_predictions(seed)
    confusion = confusion_matrix(pred, target, K)
    assert confusion.shape == (K, K) and confusion.sum() == len(target)
    assert confusion.tolist() == skm.confusion_matrix(target, pred, labels=list(range(K))).tolist()
    halves = confusion_matrix(pred[:70], target[:70], K) + confusion_matrix(pred[70:], target[70:], K)
    np.testing.assert_array_equal(halves, confusion)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_parity_with_sklearn(seed):
    pred, target = random_predictions(seed)
    assert 3 not in target and 4 not in pred
    m = metrics_of(pred, target)
    labels = list(range(K))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(target, pred))
    for ours, fn in [
        ("precision_macro", skm.precision_score),
        ("recall_macro", skm.recall_score),
        ("f1_macro", skm.f1_score),
    ]:
        expected = fn(target, pred, labels=labels, average="macro", zero_division=0)
        assert m[ours] == pytest.approx(expected, abs=1e-12), ours
    p, r, f, s = skm.precision_recall_fscore_support(
        target, pred, labels=labels, average=None, zero_division=0
    )
    assert [row["class"] for row in m["per_class"]] == NAMES
    np.testing.assert_allclose([row["precision"] for row in m["per_class"]], p, atol=1e-12)
    np.testing.assert_allclose([row["recall"] for row in m["per_class"]], r, atol=1e-12)
    np.testing.assert_allclose([row["f1"] for row in m["per_class"]], f, atol=1e-12)
    assert [row["support"] for row in m["per_class"]] == s.tolist()
    assert m["confusion_matrix"] == skm.confusion_matrix(target, pred, labels=labels).tolist()
    # the degenerate classes score zero rather than NaN
    assert m["per_class"][3]["recall"] == 0 and m["per_class"][3]["support"] == 0
    assert m["per_class"][4]["precision"] == 0 and m["per_class"][4]["f1"] == 0


def test_metrics_from_a_merged_confusion_equal_metrics_of_all_predictions():
    pred, target = random_predictions(3, n=300)
    parts = [confusion_matrix(pred[i : i + 64], target[i : i + 64], K) for i in range(0, 300, 64)]
    assert classification_metrics(sum(parts), NAMES) == metrics_of(pred, target)


def test_confusion_may_come_as_nested_or_flat_lists():
    pred, target = random_predictions(1)
    confusion = confusion_matrix(pred, target, K)
    expected = classification_metrics(confusion, NAMES)
    assert classification_metrics(confusion.tolist(), NAMES) == expected  # e.g. read back from JSON
    assert classification_metrics(confusion.reshape(-1), NAMES) == expected
    assert classification_metrics(confusion.astype(np.float64), NAMES)["accuracy"] == expected["accuracy"]


def test_perfect_and_all_wrong():
    t = np.array([0, 1, 2, 2, 1])
    perfect = metrics_of(t, t, ["a", "b", "c"])
    assert perfect["accuracy"] == perfect["f1_macro"] == perfect["precision_macro"] == 1.0
    assert perfect["recall_macro"] == 1.0
    wrong = metrics_of((t + 1) % 3, t, ["a", "b", "c"])
    assert wrong["accuracy"] == wrong["f1_macro"] == 0.0
    assert np.trace(np.array(wrong["confusion_matrix"])) == 0


def test_confusion_rows_are_targets():
    assert confusion_matrix(np.array([1, 1]), np.array([0, 0]), 2).tolist() == [[0, 2], [0, 0]]
    m = metrics_of(np.array([1, 1]), np.array([0, 0]), ["a", "b"])
    assert m["confusion_matrix"] == [[0, 2], [0, 0]]


def test_no_examples_give_zeros_not_nan():
    m = classification_metrics(np.zeros((3, 3), dtype=np.int64), ["a", "b", "c"])
    assert m["accuracy"] == m["precision_macro"] == m["recall_macro"] == m["f1_macro"] == 0.0
    assert all(row["support"] == 0 for row in m["per_class"])


def test_float_class_names_are_reported_as_the_task_names_them():
    labels = Labels()
    labels.fit([0.0, 2.0, 1.0, 2.5, 2.0], "train")  # a float label column (JSONL, parquet)
    assert labels.names == ["0", "1", "2", "2.5"]
    target = np.array([labels.index(v) for v in (0.0, 1.0, 2.0, 2.5, "2", 1)])
    pred = np.array([0, 1, 2, 3, 1, 1])
    m = metrics_of(pred, target, labels.names)
    assert [row["class"] for row in m["per_class"]] == ["0", "1", "2", "2.5"]
    assert [row["support"] for row in m["per_class"]] == [1, 2, 2, 1]
    assert m["accuracy"] == pytest.approx(5 / 6)


def test_scalar_metrics_drops_tables():
    pred, target = random_predictions()
    scalars = scalar_metrics(metrics_of(pred, target))
    assert set(scalars) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    assert scalar_metrics({"loss": 0.5, "steps": 3, "r2": np.float64(0.1), "done": True, "name": "x"}) == {
        "loss": 0.5,
        "steps": 3,
        "r2": 0.1,
    }


# ----------------------------------------------------------------------------- regression


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_parity_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    target = rng.normal(50, 20, size=61)
    pred = target + rng.normal(0, 7, size=61)
    m = regression_metrics(sums(pred, target))
    assert set(m) == {"mse", "rmse", "mae", "r2"}
    assert m["mse"] == pytest.approx(skm.mean_squared_error(target, pred), rel=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(target, pred)), rel=1e-12)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(target, pred), rel=1e-12)
    assert m["r2"] == pytest.approx(skm.r2_score(target, pred), rel=1e-10)


def test_regression_sums_merge_by_addition():
    rng = np.random.default_rng(4)
    target = rng.normal(-3, 5, size=100)
    pred = target + rng.normal(0, 2, size=100)
    merged = regression_metrics(add(*(sums(pred[i : i + 17], target[i : i + 17]) for i in range(0, 100, 17))))
    whole = regression_metrics(sums(pred, target))
    for name, value in whole.items():
        assert merged[name] == pytest.approx(value, rel=1e-12), name


def test_r2_can_be_negative_and_constant_target_follows_sklearn():
    target = np.array([1.0, 2.0, 3.0])
    bad = regression_metrics(sums([3.0, 2.0, 1.0], target))
    assert bad["r2"] == pytest.approx(skm.r2_score(target, [3.0, 2.0, 1.0])) and bad["r2"] < 0
    # a constant target: R² is 0 unless every prediction is exact, then 1 (as scikit-learn)
    assert (
        regression_metrics(sums([1.0, 2.0], [2.0, 2.0]))["r2"] == 0.0 == skm.r2_score([2.0, 2.0], [1.0, 2.0])
    )
    assert (
        regression_metrics(sums([2.0, 2.0], [2.0, 2.0]))["r2"] == 1.0 == skm.r2_score([2.0, 2.0], [2.0, 2.0])
    )


@pytest.mark.parametrize(("value", "n"), [(123456.789, 33), (98765.4321, 7), (0.1, 10)])
def test_r2_of_a_constant_target_ignores_rounding_noise(value, n):
    """Σy² − (Σy)²/n cancels catastrophically for a constant target; it still counts as constant."""
    target = np.full(n, value)
    s = sums(target, target)
    assert s["target_sq"] - s["target"] ** 2 / n != 0  # the noise the rule must see through
    m = regression_metrics(sums(target + 0.5, target))
    assert m["r2"] == 0.0 and m["mse"] == pytest.approx(0.25) and m["mae"] == pytest.approx(0.5)
    assert regression_metrics(sums(target, target))["r2"] == 1.0


# ------------------------------------------------------------------ classes absent from a split


@pytest.mark.parametrize("seed", range(12))
def test_macro_averages_follow_sklearn_default_on_random_absent_classes(seed):
    """scikit-learn's labels=None: macro averages over the union of y_true and y_pred."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = int(rng.integers(1, 60))
    seen = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)  # some classes never occur
    target, pred = rng.choice(seen, size=n), rng.choice(seen, size=n)
    pred[: n // 2] = target[: n // 2]
    names = [f"k{i}" for i in range(k)]
    m = metrics_of(pred, target, names)
    p, r, f, _ = skm.precision_recall_fscore_support(target, pred, average="macro", zero_division=0)
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx((p, r, f), abs=1e-12)
    union = sorted(set(target.tolist()) | set(pred.tolist()))
    assert m["macro_classes"] == [names[i] for i in union]
    assert [row["absent"] for row in m["per_class"]] == [i not in union for i in range(k)]
    assert len(m["per_class"]) == k  # every class is still listed
    assert all(row["f1"] == row["support"] == 0 for row in m["per_class"] if row["absent"])


def test_a_class_absent_from_labels_and_predictions_does_not_lower_the_macro_f1():
    target = np.array([0] * 30 + [1] * 30 + [2] * 10)
    pred = target.copy()
    pred[0] = 1  # one mistake; class 3 is a training class never seen in this split
    m = metrics_of(pred, target, ["a", "b", "c", "d"])
    expected = skm.f1_score(target, pred, average="macro", zero_division=0)
    assert m["f1_macro"] == pytest.approx(expected) and m["f1_macro"] > 0.98
    assert m["macro_classes"] == ["a", "b", "c"] and m["per_class"][3]["absent"] is True
    assert "labels or the predictions" in m["macro_average"]
