"""Classification and regression tasks: vocabulary, encoding, losses, metrics, postprocessing, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from bigmodel.errors import DataError
from bigmodel.recipe.schema import TaskConfig
from bigmodel.tasks import ClassificationTask, RegressionTask, create_task, restore_task


def labels(*values) -> np.ndarray:
    return np.array(values, dtype=object)


# ----------------------------------------------------------------------------- classification


def test_numeric_labels_sort_numerically():
    task = ClassificationTask()
    task.fit(labels("10", "2", "1", "2", "9", "10"))
    assert task.class_names == ["1", "2", "9", "10"]
    assert task.num_outputs == 4
    assert task.encode(labels("2", "10", "1")).tolist() == [1, 3, 0]


def test_string_labels_sort_alphabetically():
    task = ClassificationTask()
    task.fit(labels("cat", "ant", "bee", "cat", "10"))
    assert task.class_names == ["10", "ant", "bee", "cat"]


def test_equal_numbers_are_one_class():
    task = ClassificationTask()
    task.fit(labels(3, "3", 3.0, 1, np.float64(1.0)))
    assert task.class_names == ["1", "3"]
    assert task.encode(labels("3", 3, 3.0, np.int64(3), "3.0", 1.0)).tolist() == [1, 1, 1, 1, 1, 0]


def test_float_labels_from_a_file_map_to_integer_names():
    task = ClassificationTask()
    task.fit(np.array([0.0, 2.0, 1.0]))  # e.g. a float parquet column
    assert task.class_names == ["0", "1", "2"]
    assert task.encode(labels(2, "1", 0.0)).tolist() == [2, 1, 0]


def test_encode_unseen_label_names_it():
    task = ClassificationTask()
    task.fit(labels("a", "b"))
    with pytest.raises(DataError) as info:
        task.encode(labels("a", "b", "zebra"), where="test split")
    msg = str(info.value)
    assert "'zebra'" in msg and "row 3" in msg and "test split" in msg and "a, b" in msg
    with pytest.raises(DataError, match="3.5"):
        ClassificationTask(class_names=["3"]).encode(labels(3.5))


def test_needs_two_classes():
    with pytest.raises(DataError, match="at least 2 classes"):
        ClassificationTask().fit(labels("a", "a"))


def test_label_smoothing_matches_formula_and_torch():
    torch.manual_seed(0)
    logits, targets = torch.randn(9, 4), torch.randint(0, 4, (9,))
    eps = 0.2
    plain = ClassificationTask(class_names=list("abcd")).loss(logits, targets)
    smooth = ClassificationTask(label_smoothing=eps, class_names=list("abcd")).loss(logits, targets)
    logp = logits.log_softmax(-1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    expected = ((1 - eps) * nll + eps * (-logp.mean(-1))).mean()
    torch.testing.assert_close(smooth, expected)
    torch.testing.assert_close(smooth, F.cross_entropy(logits, targets, label_smoothing=eps))
    torch.testing.assert_close(plain, nll.mean())
    assert not torch.isclose(plain, smooth)


def test_classification_metrics_use_argmax():
    task = ClassificationTask(class_names=["x", "y", "z"])
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [5.0, 0, 0]])
    m = task.metrics(logits, torch.tensor([0, 1, 1, 2]))
    assert m["accuracy"] == 0.5
    assert set(task.metric_names) - {"loss"} <= set(m)


def test_postprocess_probabilities():
    torch.manual_seed(1)
    task = ClassificationTask(class_names=["2", "10", "cat"])
    logits = torch.randn(5, 3) * 3
    out = task.postprocess(logits)
    assert len(out) == 5
    probs = logits.softmax(-1)
    for row, p in zip(out, probs, strict=True):
        assert list(row["probabilities"]) == ["2", "10", "cat"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == task.class_names[int(p.argmax())]
        np.testing.assert_allclose(list(row["probabilities"].values()), p.numpy(), atol=1e-6)


def test_classification_state_round_trip():
    task = ClassificationTask(label_smoothing=0.1)
    task.fit(labels("b", "a", "c"))
    again = restore_task(task.state())
    assert isinstance(again, ClassificationTask)
    assert again.class_names == ["a", "b", "c"] and again.label_smoothing == 0.1
    logits, targets = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(again.loss(logits, targets), task.loss(logits, targets))
    assert again.encode(labels("c", "a")).tolist() == [2, 0]


def test_create_task_from_config():
    task = create_task(TaskConfig(name="classification", label_smoothing=0.05))
    assert isinstance(task, ClassificationTask) and task.label_smoothing == 0.05
    task = create_task(TaskConfig.model_validate({"name": "regression", "loss": "mae"}))
    assert isinstance(task, RegressionTask) and task.loss_name == "mae"


# ----------------------------------------------------------------------------- regression

Y = np.array([151.0, 75.0, 141.0, 206.0, 135.0, 97.0, 138.0, 63.0, 110.0], dtype=object)


def test_regression_standardises_targets():
    task = RegressionTask()
    task.fit(Y)
    y = Y.astype(np.float64)
    assert task.mean == pytest.approx(y.mean()) and task.std == pytest.approx(y.std())
    enc = task.encode(Y)
    assert enc.dtype == torch.float32
    assert float(enc.mean()) == pytest.approx(0, abs=1e-6)
    assert float(enc.double().std(unbiased=False)) == pytest.approx(1, abs=1e-6)
    # string numbers (CSV) work too
    torch.testing.assert_close(task.encode(np.array([str(v) for v in Y], dtype=object)), enc)


def test_regression_metrics_in_original_units():
    task = RegressionTask()
    task.fit(Y)
    targets = task.encode(Y)
    rng = np.random.default_rng(0)
    outputs = (targets + torch.from_numpy(rng.normal(0, 0.3, len(Y))).float()).unsqueeze(-1)
    m = task.metrics(outputs, targets)
    pred = outputs.squeeze(-1).double().numpy() * task.std + task.mean
    y = Y.astype(np.float64)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-5)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-5)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-5)
    assert m["mse"] > 10  # original units, not standardised ones
    out = task.postprocess(outputs)
    np.testing.assert_allclose([o["prediction"] for o in out], pred, rtol=1e-6)


def test_regression_losses():
    outputs, targets = torch.tensor([[1.0], [2.0], [-1.0]]), torch.tensor([0.0, 4.0, -1.0])
    assert float(RegressionTask("mse").loss(outputs, targets)) == pytest.approx((1 + 4 + 0) / 3)
    assert float(RegressionTask("mae").loss(outputs, targets)) == pytest.approx((1 + 2 + 0) / 3)


def test_regression_constant_target_does_not_divide_by_zero():
    task = RegressionTask()
    task.fit(np.array([5.0, 5.0, 5.0]))
    assert task.std == 1.0
    assert task.encode(np.array([5.0, 6.0])).tolist() == [0.0, 1.0]


def test_regression_non_numeric_label():
    with pytest.raises(DataError) as info:
        RegressionTask().fit(labels("1.5", "2", "high"))
    assert "'high'" in str(info.value) and "numeric" in str(info.value)
    with pytest.raises(DataError, match="'n/a'"):
        RegressionTask().encode(labels(1.0, "n/a"), where="validation split")


def test_regression_state_round_trip():
    task = RegressionTask(loss="mae")
    task.fit(Y)
    again = restore_task(task.state())
    assert isinstance(again, RegressionTask)
    assert (again.loss_name, again.mean, again.std) == ("mae", task.mean, task.std)
    torch.testing.assert_close(again.encode(Y), task.encode(Y))
    assert math.isclose(again.postprocess(torch.ones(1, 1))[0]["prediction"], task.mean + task.std)
