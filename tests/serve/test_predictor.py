"""Predictor built by hand from a fitted task and a tiny model: arrays, single rows, records and files
in; readable dicts out, equal to a reference computed by hand; clear DataErrors; many threads at once.

(A TextClassificationTask restored from a trained run is covered by tests/test_text_classification.py.)
"""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel.data import ColumnRecords
from bigmodel.errors import DataError, UserError
from bigmodel.serve import Predictor
from bigmodel.tasks import ClassificationTask, RegressionTask

FEATURES = ["f0", "f1", "f2", "f3"]
CLASSES = ["2", "7", "10"]  # numeric order, not string order ("10" < "2")
DATA = {"label": "label", "features": None, "normalize": "standard", "categorical": None, "missing": "impute"}
SCALE, SHIFT = np.array([1, 10, 0.1, 3]), np.array([0, 50, 2, -4])


def rows(n: int, seed: int) -> np.ndarray:
    """Rows of the four features, on very different scales (so normalisation matters)."""
    return (np.random.default_rng(seed).normal(size=(n, 4)) * SCALE + SHIFT).astype(np.float32)


TRAIN = rows(40, seed=0)


def train_table(labels: list) -> ColumnRecords:
    return ColumnRecords(
        {**{f: TRAIN[:, j].tolist() for j, f in enumerate(FEATURES)}, "label": labels}, "arrays"
    )


def fitted(cls, labels: list):
    task = cls(cls.Options(), DATA)
    task.fit(train_table(labels))
    return task


def tiny_model(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, outputs))


@pytest.fixture
def predictor() -> Predictor:
    task = fitted(ClassificationTask, [2, 10, 7, 10] * 10)
    assert task.labels.names == CLASSES
    return Predictor(tiny_model(3).train(), task, batch_size=4)  # small batches: inputs span several


@pytest.fixture
def regressor() -> Predictor:
    targets = (TRAIN @ np.array([1.0, 0.1, -2.0, 0.5]) + 100.0).tolist()
    task = fitted(RegressionTask, targets)
    assert task.mean == pytest.approx(np.mean(targets)) and task.std == pytest.approx(np.std(targets))
    return Predictor(tiny_model(1), task)


def normalised(x: np.ndarray) -> torch.Tensor:
    """The training split's per-feature standardisation, by hand."""
    train = TRAIN.astype(np.float64)
    return torch.from_numpy(((x - train.mean(axis=0)) / train.std(axis=0)).astype(np.float32))


def reference(p: Predictor, x: np.ndarray) -> torch.Tensor:
    """What the classifier must compute: normalise with the training statistics, then softmax."""
    with torch.no_grad():
        return p.model.eval()(normalised(x)).softmax(-1)


def assert_matches(out: list[dict], probs: torch.Tensor) -> None:
    assert len(out) == len(probs)
    for row, p in zip(out, probs, strict=True):
        assert set(row) == {"label", "probabilities"}
        assert row["label"] == CLASSES[int(p.argmax())]
        assert list(row["probabilities"]) == CLASSES
        np.testing.assert_allclose(list(row["probabilities"].values()), p.numpy(), atol=2e-6)


def as_records(x: np.ndarray) -> list[dict]:
    return [{name: float(v) for name, v in reversed(list(zip(FEATURES, r, strict=True)))} for r in x]


def test_model_is_put_in_eval_mode(predictor):
    assert not any(module.training for module in predictor.model.modules())
    x = rows(5, seed=9)
    assert predictor.predict(x) == predictor.predict(x), "dropout is off"


def test_predict_array(predictor):
    x = rows(10, seed=1)
    out = predictor.predict(x)
    assert_matches(out, reference(predictor, x))
    # the normalisation matters: raw inputs would give other probabilities
    with torch.no_grad():
        raw = predictor.model(torch.from_numpy(x)).softmax(-1)
    assert not np.allclose(list(out[0]["probabilities"].values()), raw[0].numpy(), atol=1e-3)
    assert predictor.predict(torch.from_numpy(x)) == out
    assert predictor.predict(x.tolist()) == out
    assert predictor.predict(x.astype(np.float64)) == out


def test_predict_single_row(predictor):
    x = rows(3, seed=2)
    single = predictor.predict(x[1])
    assert len(single) == 1 and single == [predictor.predict(x)[1]]
    assert predictor.predict(x[1].tolist()) == single


def test_predict_records(predictor):
    x = rows(6, seed=3)
    records = [
        {**r, "comment": "extra keys are ignored", "label": "?"} for r in as_records(x)
    ]  # keys reordered
    out = predictor.predict(records)
    assert_matches(out, reference(predictor, x))
    assert predictor.predict(records[2]) == [out[2]]  # one record as a dict
    assert predictor.predict({**records[3], "label": 7}) == [out[3]]
    assert predictor.predict(as_records(x)) == out


def test_predict_records_with_extra_keys_on_some_records_only(predictor):
    x = rows(4, seed=3)
    records = as_records(x)
    records[0]["comment"] = "only the first record has this key"
    records[1]["label"] = "only the second record has a label"
    assert_matches(predictor.predict(records), reference(predictor, x))


def test_predict_csv_with_extra_columns(tmp_path, predictor):
    x = rows(6, seed=4)
    path = tmp_path / "new.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "f3", "note", "f1", "f0", "f2", "label"])
        for i, r in enumerate(x):
            writer.writerow(
                [i, repr(float(r[3])), "n", repr(float(r[1])), repr(float(r[0])), repr(float(r[2])), "?"]
            )
    out = predictor.predict(path)
    assert_matches(out, reference(predictor, x))
    assert predictor.predict(str(path)) == out


def test_predict_jsonl_file(tmp_path, predictor):
    x = rows(5, seed=5)
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps({**r, "label": 10}) + "\n" for r in as_records(x)))
    out = predictor.predict(path)
    assert_matches(out, reference(predictor, x))
    assert predictor.predict(str(path)) == out


@pytest.mark.parametrize("shape", [(3, 5), (5,), (2, 2, 3), (), (0, 3)])
def test_wrong_shape_is_a_data_error(predictor, shape):
    with pytest.raises(DataError) as info:
        predictor.predict(np.zeros(shape, dtype=np.float32))
    msg = str(info.value)
    assert str(tuple(shape)) in msg and "(N, 4)" in msg


def test_nothing_to_predict(predictor):
    with pytest.raises(DataError, match="nothing to predict"):
        predictor.predict(np.zeros((0, 4), dtype=np.float32))


def test_record_lacking_a_feature(predictor):
    records = as_records(rows(2, seed=6))
    del records[0]["f2"]
    with pytest.raises(DataError, match="'f2'"):
        predictor.predict(records[0])
    records = as_records(rows(3, seed=6))
    for r in records[1:]:
        del r["f1"]  # every record must have the first one's keys, or the feature is absent
    with pytest.raises(DataError, match="'f1'"):
        predictor.predict(records)


@pytest.mark.parametrize("bad", ["four", [1, 2], {"a": 1}])
def test_non_numeric_record_value(predictor, bad):
    with pytest.raises(DataError, match="'f3'"):
        predictor.predict({"f0": 1, "f1": 2, "f2": 3, "f3": bad})


def test_non_numeric_array(predictor):
    with pytest.raises(
        DataError, match=r"row 1, value 1 is 'a' \(str\); an array of rows holds plain numbers"
    ):
        predictor.predict(np.array([["a", "b", "c", "d"]]))


# --- prediction inputs are refused naming the row and the column, never predicted on ---------------


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (float("nan"), "missing value nan, and the column had no missing values in training"),
        (None, "missing value None"),
        ("NA", "missing value 'NA'"),
        (float("inf"), "inf is not a finite number"),
        ("-inf", "'-inf' is not a finite number"),
        (10**400, "1000.* is not a finite number"),
        (True, "True is not a number"),
        ([1.0], r"\[1.0\] is not a number"),
        ({"v": 1}, r"\{'v': 1\} is not a number"),
    ],
)
def test_bad_cells_in_records_are_refused_naming_row_and_column(predictor, bad, match):
    records = as_records(rows(3, seed=4))
    records[1]["f2"] = bad
    with pytest.raises(DataError, match=rf"inputs: row 2, column 'f2': {match}"):
        predictor.predict(records)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array([[1.0, 2.0, np.nan, 4.0]]), r"row 1, column 'f2': missing value nan"),
        (
            np.array([[1.0, 2.0, 3.0, 4.0], [1.0, np.inf, 3.0, 4.0]]),
            r"row 2, column 'f1': inf is not a finite",
        ),
        (np.ones((2, 4), dtype=bool), r"row 1, value 1 is True \(bool\)"),
        (np.array([[1.0, 2.0, None, 4.0]], dtype=object), r"row 1, value 3 is None"),
        ([[1.0, 2.0, 3.0, True]], r"row 1, value 4 is True"),
        ([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], "rows of different lengths"),
        ([[1.0, 2.0, 3.0, [4.0]]], "rows of different lengths"),
        (np.array([["1", "2", "3", "4"]]), r"row 1, value 1 is '1' \(str\)"),
        (torch.ones(2, 4, dtype=torch.bool), "a tensor of torch.bool"),
        (np.ones((2, 4, 1)), r"shape \(2, 4, 1\) does not fit"),
        (None, "got NoneType"),
        ([], "nothing to predict"),
    ],
)
def test_bad_arrays_are_refused_naming_the_row(predictor, array, match):
    with pytest.raises(DataError, match=match):
        predictor.predict(array)


def test_jsonl_file_with_true_or_null_for_a_number_is_refused_naming_file_row_and_column(tmp_path, predictor):
    records = as_records(rows(3, seed=5))
    for value, match in ((True, "True is not a number"), (None, "missing value None")):
        records[2]["f0"] = value
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        with pytest.raises(DataError, match=rf"in.jsonl: row 3, column 'f0': {match}"):
            predictor.predict(path)


def test_missing_values_are_imputed_at_predict_time_only_where_training_imputed_them():
    n = 24
    columns = {
        "age": [float(20 + i) if i % 6 else None for i in range(n)],  # missing in training: imputed
        "height": [150.0 + i for i in range(n)],  # never missing in training
        "city": [["Paris", "Nice", "Lyon"][i % 3] if i % 5 else "" for i in range(n)],  # a <missing> slot
        "pet": [["cat", "dog"][i % 2] for i in range(n)],  # never missing: no slot
        "label": ["a", "b"] * (n // 2),
    }
    task = ClassificationTask(
        ClassificationTask.Options(), {**DATA, "features": ["age", "height", "city", "pet"]}
    )
    task.fit(ColumnRecords(columns, "arrays"))
    p = Predictor(nn.Linear(task.features.input_shape[0], 2), task)
    full = {"age": 31.0, "height": 160.0, "city": "Nice", "pet": "cat"}
    filled = p.predict({**full, "age": task.features.state()["columns"][0]["fill"]})
    assert p.predict({**full, "age": None}) == p.predict({**full, "age": "NA"}) == filled
    missing_city = task.features.encode({**full, "city": None})
    assert missing_city[task.features.feature_names.index("city=<missing>")] == 1.0
    assert len(p.predict({**full, "city": float("nan")})) == 1
    for column in ("height", "pet"):
        with pytest.raises(
            DataError, match=rf"row 1, column '{column}': missing value None, and the column had no"
        ):
            p.predict({**full, column: None})
    with pytest.raises(DataError, match=r"row 2, column 'pet': \['cat'\] is a list, not a category"):
        p.predict([full, {**full, "pet": ["cat"]}])
    assert len(p.predict({**full, "pet": "parrot"})) == 1  # an unseen category is all zeros, as documented


def test_refuse_policy_refuses_missing_values_at_predict_time():
    columns = {"x": [1.0, None, 3.0, 4.0], "c": ["u", "v", None, "u"], "label": ["a", "b", "a", "b"]}
    task = ClassificationTask(ClassificationTask.Options(), {**DATA, "missing": "impute"})
    task.fit(ColumnRecords(columns, "arrays"))
    strict = ClassificationTask(ClassificationTask.Options(), {**DATA, "missing": "refuse"})
    strict.fit(
        ColumnRecords({"x": [1.0, 2.0, 3.0, 4.0], "c": ["u", "v", "v", "u"], "label": ["a", "b"] * 2}, "t")
    )
    for t in (task, strict):
        assert t.parse({"x": 2.0, "c": "u"})
    assert task.parse({"x": None, "c": None})
    with pytest.raises(DataError, match="missing value None, and data.missing is 'refuse'"):
        strict.parse({"x": None, "c": "u"})


# --- outputs that are not finite are refused, never returned or printed ------------------------------


def nan_weights(model: nn.Module, rows_to_break=None) -> nn.Module:
    with torch.no_grad():
        model[-1].bias[:] = float("nan")
    return model


@pytest.mark.parametrize("make", ["classifier", "regressor"])
def test_non_finite_outputs_are_a_user_error_naming_the_rows(make, predictor, regressor):
    p = predictor if make == "classifier" else regressor
    nan_weights(p.model)
    with pytest.raises(
        UserError, match=r"non-finite outputs \(NaN or inf\) for rows 1, 2, 3 of 3; its weights"
    ):
        p.predict(rows(3, seed=1))


def test_outputs_that_overflow_for_some_rows_only_are_named():
    class Explode(nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 3)
            out[x[:, 0] > 0] = float("inf")
            return out

    task = fitted(ClassificationTask, [2, 10, 7, 10] * 10)
    x = rows(6, seed=2)
    x[:, 0] = [-1.0, 5.0, -1.0, -1.0, 6.0, -1.0]
    with pytest.raises(UserError, match=r"for rows 2, 5 of 6"):
        Predictor(Explode(), task).predict(x)


def test_cli_predict_with_nan_weights_exits_2_and_prints_no_json(tmp_path, predictor, monkeypatch, capsys):
    import sys

    import bigmodel.pipeline
    from bigmodel.cli import main

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in as_records(rows(2, seed=3))))
    broken = Predictor(nan_weights(predictor.model), predictor.task)
    monkeypatch.setattr(bigmodel.pipeline, "load", lambda run, options=None: broken)
    monkeypatch.setattr(sys, "argv", ["bigmodel", "predict", str(tmp_path), str(path)])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    assert info.value.code == 2 and out.out == ""
    assert "non-finite outputs" in out.err and "Traceback" not in out.err


def test_cli_predict_writes_strict_json(tmp_path, predictor, monkeypatch, capsys):
    import sys

    import bigmodel.pipeline
    from bigmodel.cli import main

    path = tmp_path / "in.csv"
    x = rows(3, seed=8)
    path.write_text("f0,f1,f2,f3\n" + "".join(",".join(map(str, r)) + "\n" for r in x))
    monkeypatch.setattr(bigmodel.pipeline, "load", lambda run, options=None: predictor)
    monkeypatch.setattr(sys, "argv", ["bigmodel", "predict", str(tmp_path), str(path)])
    with pytest.raises(SystemExit) as info:
        main()
    lines = capsys.readouterr().out.splitlines()
    assert info.value.code in (0, None) and len(lines) == 3
    parsed = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the output")) for line in lines]
    assert [r["label"] for r in parsed] == [r["label"] for r in predictor.predict(x)]


def test_unknown_file_type(tmp_path, predictor):
    path = tmp_path / "rows.txt"
    path.write_text("1,2,3,4\n")
    with pytest.raises(DataError, match=r"\.txt"):
        predictor.predict(path)


def test_missing_file(tmp_path, predictor):
    with pytest.raises(DataError, match="absent.csv.*not found|not found.*absent.csv"):
        predictor.predict(tmp_path / "absent.csv")
    with pytest.raises(DataError):  # a str that names no existing file is no file at all
        predictor.predict(str(tmp_path / "absent.csv"))


def test_regression_in_original_units(tmp_path, regressor):
    x = rows(7, seed=7)
    out = regressor.predict(x)
    assert all(set(r) == {"prediction"} for r in out)
    with torch.no_grad():
        expected = (
            regressor.model(normalised(x)).squeeze(-1).double() * regressor.task.std + regressor.task.mean
        )
    np.testing.assert_allclose([r["prediction"] for r in out], expected.numpy(), rtol=1e-6)
    assert regressor.predict(as_records(x)) == out
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in as_records(x)))
    assert regressor.predict(path) == out


def test_image_shaped_model_accepts_flat_or_shaped_rows():
    rng = np.random.default_rng(0)
    images = rng.normal(3.0, 2.0, size=(30, 1, 8, 8)).astype(np.float32)
    task = RegressionTask(RegressionTask.Options(), {**DATA, "normalize": "global"})
    task.fit(ColumnRecords({"image": images, "label": rng.normal(size=30).tolist()}, "arrays"))
    assert task.features.columns == ["image"] and tuple(task.features.input_shape) == (1, 8, 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 1))
    p = Predictor(model, task)
    x = rng.normal(3.0, 2.0, size=(4, 1, 8, 8)).astype(np.float32)
    shaped, flat = p.predict(x), p.predict(x.reshape(4, 64))
    assert shaped == flat and len(shaped) == 4 and set(shaped[0]) == {"prediction"}
    assert p.predict(x[2]) == p.predict(x[2].reshape(64)) == [shaped[2]]  # a single image
    assert p.predict([{"image": img} for img in x]) == shaped
    with torch.no_grad():
        z = torch.from_numpy(((x - images.mean()) / images.std()).astype(np.float32))
        expected = model(z).squeeze(-1).double() * task.std + task.mean
    np.testing.assert_allclose([r["prediction"] for r in shaped], expected.numpy(), rtol=1e-5)
    with pytest.raises(DataError) as info:
        p.predict(np.zeros((2, 63), dtype=np.float32))
    assert "(2, 63)" in str(info.value) and "(N, 64)" in str(info.value) and "(N, 1, 8, 8)" in str(info.value)


def test_threads_get_the_results_of_sequential_calls(predictor):
    inputs = [rows(3 + i, seed=100 + i) for i in range(8)]
    inputs[3] = as_records(inputs[3])  # records and arrays mixed
    expected = [predictor.predict(x) for x in inputs]
    results: list[list] = [[] for _ in inputs]
    start = threading.Barrier(len(inputs))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(20):
                results[i].append(predictor.predict(inputs[i]))
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, got in enumerate(results):
        assert got == [expected[i]] * 20, f"thread {i}"


# --- parse + run: what the server's micro-batcher calls -------------------------------------------------


def test_run_on_the_examples_of_several_parses_equals_predict_of_each(predictor):
    a, b = rows(3, seed=20), as_records(rows(5, seed=21))
    merged = predictor.run(predictor.parse(a) + predictor.parse(b))
    assert merged[:3] == predictor.predict(a) and merged[3:] == predictor.predict(b)
    assert_matches(merged[:3], reference(predictor, a))


def test_parse_refuses_nothing_to_predict_and_run_names_rows_of_the_merged_examples(predictor):
    with pytest.raises(DataError, match="nothing to predict"):
        predictor.parse(np.zeros((0, 4), dtype=np.float32))
    examples = predictor.parse(rows(2, seed=22)) + predictor.parse(rows(3, seed=23))
    nan_weights(predictor.model)
    with pytest.raises(UserError, match=r"for rows 1, 2, 3, 4, 5 of 5"):
        predictor.run(examples)


def test_numpy_outputs_are_checked_for_finiteness():
    from bigmodel.serve.predictor import _finite

    assert _finite({"a": np.array([1.0, 2.0]), "b": np.float32(3.0), "c": np.array([1, 2])})
    assert not _finite({"a": [np.array([1.0, np.nan])]})
    assert not _finite(np.float32("inf"))
    assert _finite(torch.tensor([1, 2])) and not _finite(torch.tensor([0.0, float("nan")]))
