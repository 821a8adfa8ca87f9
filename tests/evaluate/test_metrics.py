"""Metrics agree with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from bigmodel.evaluate.metrics import classification_metrics, regression_metrics, scalar_metrics

K = 6
NAMES = [f"c{i}" for i in range(K)]


def random_predictions(seed=0, n=157):
    rng = np.random.default_rng(seed)
    target = rng.choice([0, 1, 2, 4, 5], size=n)  # class 3 absent from targets
    pred = rng.choice([0, 1, 2, 3, 5], size=n)  # class 4 never predicted
    pred[:40] = target[:40]  # some signal, so the scores are not all tiny
    pred[pred == 4] = 0
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_parity_with_sklearn(seed):
    pred, target = random_predictions(seed)
    assert 3 not in target and 4 not in pred
    m = classification_metrics(pred, target, NAMES)
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


def test_perfect_and_all_wrong():
    t = np.array([0, 1, 2, 2, 1])
    perfect = classification_metrics(t, t, ["a", "b", "c"])
    assert perfect["accuracy"] == perfect["f1_macro"] == perfect["precision_macro"] == 1.0
    wrong = classification_metrics((t + 1) % 3, t, ["a", "b", "c"])
    assert wrong["accuracy"] == wrong["f1_macro"] == 0.0
    assert np.trace(np.array(wrong["confusion_matrix"])) == 0


def test_confusion_rows_are_targets():
    m = classification_metrics(np.array([1, 1]), np.array([0, 0]), ["a", "b"])
    assert m["confusion_matrix"] == [[0, 2], [0, 0]]


def test_scalar_metrics_drops_tables():
    pred, target = random_predictions()
    scalars = scalar_metrics(classification_metrics(pred, target, NAMES))
    assert set(scalars) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_parity_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    target = rng.normal(50, 20, size=61)
    pred = target + rng.normal(0, 7, size=61)
    m = regression_metrics(pred, target)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(target, pred), rel=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(target, pred)), rel=1e-12)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(target, pred), rel=1e-12)
    assert m["r2"] == pytest.approx(skm.r2_score(target, pred), rel=1e-12)


def test_r2_can_be_negative_and_constant_target_is_zero():
    target = np.array([1.0, 2.0, 3.0])
    bad = regression_metrics(np.array([3.0, 2.0, 1.0]), target)
    assert bad["r2"] == pytest.approx(skm.r2_score(target, [3.0, 2.0, 1.0])) and bad["r2"] < 0
    assert regression_metrics(np.array([1.0, 2.0]), np.array([2.0, 2.0]))["r2"] == 0.0
