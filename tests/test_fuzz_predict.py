"""Fuzzing predict inputs: tiny classification, regression and text_classification runs trained once,
then fed random records (cells of random types: NaN, inf, None, booleans, nested lists and dicts,
unicode, huge numbers), arrays of random shapes and dtypes, and random texts and non-texts.

Every case either returns finite, well-formed results (strict JSON) or raises a UserError: never
another exception, never a NaN.
"""

from __future__ import annotations

import csv
import json
import math
from decimal import Decimal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigmodel
from bigmodel.errors import UserError
from helpers import write_text_csv, write_tiny_bert

FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FEATURES = ["age", "height", "city", "pet"]


def write_table(path, n: int = 48):
    """Numbers with and without gaps, categories with and without gaps, a class and a target."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURES, "kind", "value"])
        for i in range(n):
            age = "" if i % 7 == 0 else f"{rng.normal(40, 10):.2f}"
            city = "NA" if i % 5 == 0 else ["Paris", "Nice", "Lyon"][i % 3]
            writer.writerow([age, f"{rng.normal(170, 8):.1f}", city, ["cat", "dog"][i % 2],
                             ["a", "b", "c"][i % 3], f"{rng.normal():.3f}"])  # fmt: skip
    return path


def tabular_recipe(path, task: str, label: str) -> dict:
    return {
        "name": f"fuzz-{task}",
        "data": {"source": f"csv:{path}", "label": label, "features": FEATURES},
        "task": {"name": task},
        "model": {"arch": "mlp", "hidden_sizes": [8]},
        "train": {"epochs": 1, "batch_size": 16},
    }


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    table = write_table(tmp / "table.csv")
    out = {}
    for task, label in (("classification", "kind"), ("regression", "value")):
        run = bigmodel.train(tabular_recipe(table, task, label), output=tmp / "runs", progress=False)
        out[task] = bigmodel.load(run.path)
    text_csv, folder = write_text_csv(tmp / "text.csv", n=40), write_tiny_bert(tmp / "bert")
    run = bigmodel.train(
        {
            "name": "fuzz-text",
            "data": {"source": f"csv:{text_csv}", "text": "text", "label": "label", "max_length": 16},
            "task": {"name": "text_classification"},
            "model": {"arch": "bert", "pretrained": str(folder)},
            "train": {"epochs": 1, "batch_size": 16},
        },
        output=tmp / "runs",
        progress=False,
    )
    out["text"] = bigmodel.load(run.path)
    return out


def check(predictor, inputs) -> None:
    """The property: finite, well-formed results in strict JSON, or a UserError."""
    try:
        results = predictor.predict(inputs)
    except UserError:
        return
    assert isinstance(results, list) and results
    text = json.dumps(results, allow_nan=False)  # raises on NaN or inf anywhere
    assert json.loads(text) == results
    for row in results:
        if "probabilities" in row:
            probs = row["probabilities"]
            assert row["label"] in probs and math.isclose(sum(probs.values()), 1.0, abs_tol=1e-4)
        else:
            assert math.isfinite(row["prediction"])


# --- strategies ----------------------------------------------------------------------------------

scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e3, max_value=1e3),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.integers(min_value=-100, max_value=100),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "NA",
            "?",
            "null",
            "nan",
            "inf",
            "-inf",
            "1e400",
            "-",
            "Paris",
            "cat",
            "3.5",
            "true",
            " 12 ",
            "1,234",
            "\x00",
            "é🙂",
        ]
    ),  # fmt: skip
    st.builds(np.float32, st.floats(width=32, allow_nan=True)),
    st.builds(np.int64, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.just(np.bool_(True)),
    st.builds(Decimal, st.sampled_from(["1.5", "NaN", "1e999", "-0"])),
)
cells = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)
good_cells = {
    "age": st.one_of(st.floats(min_value=0, max_value=100), st.none()),
    "height": st.floats(min_value=100, max_value=220),
    "city": st.sampled_from(["Paris", "Nice", "Lyon", "NA", "Rome"]),
    "pet": st.sampled_from(["cat", "dog"]),
}


@st.composite
def records(draw):
    """Mostly plausible rows with a few random cells, absent columns and extra keys."""
    row = {}
    for name in FEATURES:
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # absent
        row[name] = draw(cells if choice <= 3 else good_cells[name])
    row.update(draw(st.dictionaries(st.sampled_from(["kind", "value", "extra", "x"]), cells, max_size=2)))
    return row


record_inputs = st.one_of(records(), st.lists(records(), min_size=0, max_size=4))
dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.bool_, np.uint8, "U3", np.float16])
arrays = st.one_of(
    hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)),
    st.lists(st.lists(scalars, min_size=0, max_size=5), max_size=3),
    st.lists(scalars, max_size=5),
    hnp.arrays(np.float64, st.tuples(st.integers(0, 3), st.just(2)), elements=st.floats(allow_nan=True)),
)
texts = st.one_of(
    st.text(max_size=40), st.text(alphabet=" \t\n", max_size=3), st.text(min_size=300, max_size=400)
)
text_values = st.one_of(
    texts, scalars, st.lists(texts, max_size=2), st.dictionaries(st.text(max_size=3), texts, max_size=2)
)
text_inputs = st.one_of(
    text_values,
    st.lists(text_values, max_size=4),
    st.lists(st.tuples(texts, text_values), max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["text", "label", "id"]), text_values, max_size=3), max_size=3),
    st.dictionaries(st.sampled_from(["text", "label"]), text_values, max_size=2),
)


# --- properties ----------------------------------------------------------------------------------


@FUZZ
@given(inputs=record_inputs)
def test_classification_records(predictors, inputs):
    check(predictors["classification"], inputs)


@FUZZ
@given(inputs=record_inputs)
def test_regression_records(predictors, inputs):
    check(predictors["regression"], inputs)


@FUZZ
@given(inputs=arrays)
def test_tabular_arrays(predictors, inputs):
    check(predictors["regression"], inputs)  # this model reads categories: arrays are refused clearly


@FUZZ
@given(inputs=text_inputs)
def test_text_inputs(predictors, inputs):
    check(predictors["text"], inputs)


@settings(max_examples=30, deadline=None, database=None)
@given(inputs=arrays)
def test_numeric_only_model_arrays(inputs, numeric_predictor):
    check(numeric_predictor, inputs)


@pytest.fixture(scope="module")
def numeric_predictor():
    """A classifier of two numeric columns, built by hand, so arrays of rows reach the encoder."""
    from bigmodel.data import ColumnRecords
    from bigmodel.serve import Predictor
    from bigmodel.tasks import ClassificationTask

    data = {
        "label": "label",
        "features": None,
        "normalize": "standard",
        "categorical": None,
        "missing": "impute",
    }
    task = ClassificationTask(ClassificationTask.Options(), data)
    rng = np.random.default_rng(1)
    task.fit(ColumnRecords({"a": rng.normal(size=30).tolist(), "b": [None, *rng.normal(size=29).tolist()],
                            "label": ["x", "y", "z"] * 10}, "arrays"))  # fmt: skip
    torch.manual_seed(0)
    return Predictor(torch.nn.Linear(2, 3), task)


def test_known_bad_inputs_are_user_errors(predictors, numeric_predictor):
    """The classes of the issue, spelled out (hypothesis finds their neighbours)."""
    good = {"age": 40.0, "height": 170.0, "city": "Paris", "pet": "cat"}
    for p in (predictors["classification"], predictors["regression"]):
        check(p, good)
        for name, bad in [("height", math.nan), ("height", math.inf), ("height", None), ("height", True),
                          ("height", [1]), ("pet", None), ("pet", {"a": 1}), ("age", math.inf)]:  # fmt: skip
            with pytest.raises(UserError, match=f"row 1, column '{name}'"):
                p.predict({**good, name: bad})
        assert p.predict({**good, "age": None})  # imputed: 'age' had gaps in training
        assert p.predict({**good, "city": "NA"})  # its own <missing> category
    for bad in (np.array([[np.nan, 1.0]]), np.array([[True, False]]), np.array([["1", "2"]]), [[1.0, None]]):
        with pytest.raises(UserError, match="row 1"):
            numeric_predictor.predict(bad)
    assert numeric_predictor.predict(np.array([[1.0, np.nan]]))  # 'b' had a gap in training: imputed
    text = predictors["text"]
    for bad in ("", "   ", None, ["fine text", None], [["a", "b"]], {"text": 5}, [{"text": "ok"}, {"id": 1}]):
        with pytest.raises(UserError):
            text.predict(bad)
    assert len(text.predict(["the home team won the cup", "x" * 5000])) == 2  # long texts are texts
