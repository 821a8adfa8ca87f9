"""Predictor built by hand: arrays, single rows, records and files in; readable dicts out."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel.data import Normalizer
from bigmodel.errors import DataError
from bigmodel.serve import Predictor
from bigmodel.tasks import ClassificationTask, RegressionTask

FEATURES = ["f0", "f1", "f2", "f3"]
CLASSES = ["2", "7", "10"]  # numeric order


def train_rows(n=40, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4)) * [1, 10, 0.1, 3] + [0, 50, 2, -4]).astype(np.float32)


@pytest.fixture
def predictor() -> Predictor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 3))
    task = ClassificationTask()
    task.fit(np.array([2, 10, 7, 10], dtype=object))
    assert task.class_names == CLASSES
    normalizer = Normalizer("standard").fit(train_rows())
    return Predictor(model.train(), task, normalizer, FEATURES, (4,))


def reference(p: Predictor, rows: np.ndarray) -> torch.Tensor:
    """What the predictor must compute: normalise with the training statistics, then softmax."""
    x = (rows - p.normalizer.mean) / p.normalizer.std
    with torch.no_grad():
        return p.model(torch.from_numpy(x.astype(np.float32))).softmax(-1)


def assert_matches(out: list[dict], probs: torch.Tensor) -> None:
    assert len(out) == len(probs)
    for row, p in zip(out, probs, strict=True):
        assert row["label"] == CLASSES[int(p.argmax())]
        assert list(row["probabilities"]) == CLASSES
        np.testing.assert_allclose(list(row["probabilities"].values()), p.numpy(), atol=2e-6)


def test_model_is_put_in_eval_mode(predictor):
    assert not predictor.model.training


def test_predict_array(predictor):
    rows = train_rows(5, seed=1)
    out = predictor.predict(rows)
    assert_matches(out, reference(predictor, rows))
    # the normaliser matters: raw inputs would give different probabilities
    raw = predictor.model(torch.from_numpy(rows)).softmax(-1).detach()
    assert not np.allclose(list(out[0]["probabilities"].values()), raw[0].numpy(), atol=1e-3)
    assert predictor.predict(torch.from_numpy(rows)) == out
    assert predictor.predict(rows.tolist()) == out


def test_predict_single_row(predictor):
    rows = train_rows(3, seed=2)
    single = predictor.predict(rows[1])
    assert len(single) == 1 and single[0] == predictor.predict(rows)[1]


def test_predict_records(predictor):
    rows = train_rows(3, seed=3)
    records = [{name: float(v) for name, v in reversed(list(zip(FEATURES, r, strict=True)))} for r in rows]
    records[0]["comment"] = "extra keys are ignored"
    for r in records[1:]:
        r["comment"] = "x"
    out = predictor.predict(records)
    assert_matches(out, reference(predictor, rows))
    assert predictor.predict(records[2]) == [out[2]]  # one record as a dict


def test_predict_csv_with_extra_columns(tmp_path, predictor):
    rows = train_rows(6, seed=4)
    path = tmp_path / "new.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "f3", "note", "f1", "f0", "f2", "label"])
        for i, r in enumerate(rows):
            writer.writerow([i, r[3], "n", r[1], r[0], r[2], "?"])
    assert_matches(predictor.predict(path), reference(predictor, rows))
    assert predictor.predict(str(path)) == predictor.predict(path)


def test_predict_jsonl_file(tmp_path, predictor):
    rows = train_rows(2, seed=5)
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps(dict(zip(FEATURES, map(float, r), strict=True))) + "\n" for r in rows))
    assert_matches(predictor.predict(path), reference(predictor, rows))


@pytest.mark.parametrize("shape", [(3, 5), (5,), (2, 2, 3), ()])
def test_wrong_shape_is_a_data_error(predictor, shape):
    with pytest.raises(DataError) as info:
        predictor.predict(np.zeros(shape, dtype=np.float32))
    msg = str(info.value)
    assert str(tuple(shape)) in msg and "(N, 4)" in msg


def test_record_lacking_a_feature(predictor):
    records = [dict(zip(FEATURES, [1.0, 2.0, 3.0, 4.0], strict=True)) for _ in range(2)]
    del records[0]["f2"]
    with pytest.raises(DataError, match="'f2'"):
        predictor.predict(records)
    records = [dict(zip(FEATURES, [1.0, 2.0, 3.0, 4.0], strict=True)) for _ in range(2)]
    del records[1]["f1"]
    with pytest.raises(DataError, match="'f1'"):
        predictor.predict(records)


def test_non_numeric_record_value(predictor):
    with pytest.raises(DataError, match="'f3'"):
        predictor.predict({"f0": 1, "f1": 2, "f2": 3, "f3": "four"})


def test_unknown_file_type(tmp_path, predictor):
    with pytest.raises(DataError, match=r"\.txt"):
        predictor.predict(tmp_path / "rows.txt")


def test_missing_file(tmp_path, predictor):
    with pytest.raises(DataError, match="not found"):
        predictor.predict(tmp_path / "absent.csv")


def test_image_shaped_model_accepts_flat_or_shaped_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Flatten(), nn.Linear(2 * 2 * 2, 1))
    task = RegressionTask(mean=10.0, std=2.0)
    x = np.random.default_rng(0).normal(size=(4, 1, 3, 3)).astype(np.float32)
    normalizer = Normalizer("global").fit(x)
    p = Predictor(model, task, normalizer, [f"p{i}" for i in range(9)], (1, 3, 3))
    shaped, flat = p.predict(x), p.predict(x.reshape(4, 9))
    assert shaped == flat and set(shaped[0]) == {"prediction"}
    with torch.no_grad():
        expected = model(torch.from_numpy(normalizer(x))).squeeze(-1) * 2.0 + 10.0
    np.testing.assert_allclose([r["prediction"] for r in shaped], expected.numpy(), rtol=1e-5)
