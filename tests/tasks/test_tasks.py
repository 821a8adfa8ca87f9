"""Classification and regression of rows: labels, fitting, encoding and collating, summed losses,
streaming metrics (mergeable, checked against scikit-learn), prediction, parsing input, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import datasets as skdatasets
from sklearn import metrics as skm
from torch import nn

from bigmodel.data import ColumnRecords, load_source
from bigmodel.errors import DataError, RecipeError, RunDirError, UserError
from bigmodel.models.registry import get_family
from bigmodel.recipe import load_recipe
from bigmodel.tasks import ClassificationTask, RegressionTask, create_task, restore_task, task_class
from bigmodel.tasks.base import label_column
from bigmodel.tasks.classification import Labels, class_name
from helpers import write_diabetes_jsonl, write_wine_csv

DATA = {"label": "label", "features": None, "normalize": "standard", "categorical": None, "missing": "impute"}


def make(cls, data=None, **options):
    return cls(cls.Options(**options), {**DATA, **(data or {})})


def records(labels, **columns) -> ColumnRecords:
    """A table with one feature ``x`` (unless given) and the label column."""
    columns = columns or {"x": [float(i) for i in range(len(labels))]}
    return ColumnRecords({**columns, "label": list(labels)}, "arrays")


def fitted(cls, labels, **options):
    task = make(cls, **options)
    task.fit(records(labels))
    return task


def batch_of(task, rows):
    return task.collate([task.encode(row, None) for row in rows])


class Fixed(nn.Module):
    """A stand-in model that returns given outputs whatever the input."""

    def __init__(self, outputs: torch.Tensor):
        super().__init__()
        self.outputs = outputs

    def forward(self, x):
        assert len(x) == len(self.outputs)
        return self.outputs


def compute(task, outputs, batch, chunks=1):
    metric = task.metric()
    for part in np.array_split(np.arange(len(outputs)), chunks):
        idx = torch.from_numpy(part)
        metric.update(outputs[idx], {**batch, "y": batch["y"][idx], "num_items": len(part)})
    return metric.compute()


# ----------------------------------------------------------------------------- labels


def test_numeric_labels_sort_numerically():
    labels = Labels()
    labels.fit(["10", "2", "1", "2", "9", "10"], "train")
    assert labels.names == ["1", "2", "9", "10"]
    assert [labels.index(v) for v in ("2", "10", "1")] == [1, 3, 0]
    task = fitted(ClassificationTask, ["10", "2", "1", "2", "9", "10"])
    assert task.labels.names == ["1", "2", "9", "10"] and task.num_outputs == 4
    assert [task.encode({"x": 0.0, "label": v}, None)["y"] for v in ("2", "10", "1")] == [1, 3, 0]


def test_string_labels_sort_alphabetically():
    labels = Labels()
    labels.fit(["cat", "ant", "bee", "cat", "10"], "train")
    assert labels.names == ["10", "ant", "bee", "cat"]


def test_equal_numbers_are_one_class():
    labels = Labels()
    labels.fit([3, "3", 3.0, 1, np.float64(1.0)], "train")
    assert labels.names == ["1", "3"]
    assert [labels.index(v) for v in ("3", 3, 3.0, np.int64(3), "3.0", 1.0)] == [1, 1, 1, 1, 1, 0]
    assert [class_name(v) for v in (3, 3.0, "3", "3.0", " 3 ", np.int64(3), np.float32(3.0))] == ["3"] * 7
    assert [class_name(v) for v in (2.5, "2.5", " cat ", "cat")] == ["2.5", "2.5", "cat", "cat"]


def test_float_labels_from_a_file_map_to_integer_names(tmp_path):
    path = tmp_path / "t.jsonl"  # JSON numbers written as floats, as a float parquet column reads
    path.write_text("".join(json.dumps({"x": float(i), "label": float(i % 3)}) + "\n" for i in range(9)))
    task = make(ClassificationTask)
    task.fit(load_source(f"jsonl:{path}")["data"])
    assert task.labels.names == ["0", "1", "2"]
    assert [task.encode({"x": 1.0, "label": v}, None)["y"] for v in (2, "1", 0.0)] == [2, 1, 0]


def test_encode_unseen_label_names_it():
    task = fitted(ClassificationTask, ["a", "b", "a"])
    with pytest.raises(DataError) as info:
        task.encode({"x": 1.0, "label": "zebra"}, None)
    msg = str(info.value)
    assert "'zebra'" in msg and "a, b" in msg and "training split" in msg
    with pytest.raises(DataError, match="3.5"):
        Labels(["3", "4"]).index(3.5)


def test_needs_two_classes():
    with pytest.raises(DataError, match="at least 2 classes"):
        Labels().fit(["a", "a"], "train")
    with pytest.raises(DataError, match="at least 2 classes in arrays"):
        fitted(ClassificationTask, [1, 1.0, "1"])


def test_label_column_must_exist():
    task = make(ClassificationTask, data={"label": "lable"})
    with pytest.raises(DataError) as info:
        task.fit(records(["a", "b"]))
    msg = str(info.value)
    assert msg.startswith("data.label: column 'lable' is not in arrays") and "Did you mean 'label'?" in msg
    assert label_column({"label": None}, records(["a", "b"])) == "label"  # the default name


def test_clean_refuses_missing_labels_naming_rows_or_drops_them_when_told(tmp_path):
    path = write_wine_csv(tmp_path / "wine.csv")
    lines = path.read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 1)[0] + ","  # row 6 (line 7) has an empty label
    lines[9] = lines[9].rsplit(",", 1)[0] + ",?"  # row 9: a question mark
    path.write_text("\n".join(lines) + "\n")
    data = load_source(f"csv:{path}")["data"]
    with pytest.raises(DataError) as info:
        make(ClassificationTask).clean(data.select(range(3, 20)), "train")
    assert "wine.csv (train split): 2 rows of 17 have a missing label in column 'label' (rows 6, 9;" in str(
        info.value
    )
    assert "task.missing_labels: drop" in str(info.value)
    assert make(ClassificationTask).clean(data.select([0, 1]), "test").column("label") == data.select(
        [0, 1]
    ).column("label")
    task = make(ClassificationTask, missing_labels="drop")
    kept = task.clean(data.select(range(3, 20)), "train")
    assert len(kept) == 15 and {6, 9}.isdisjoint(kept.row_number(i) for i in range(len(kept)))
    assert task.notes() == ["2 rows with a missing label in column 'label' were left out (rows 6, 9)"]
    everything_missing = records(["", "NA", None])
    with pytest.raises(DataError, match="every value of the label column"):
        task.clean(everything_missing, "train")


@pytest.mark.parametrize("cls", [ClassificationTask, RegressionTask])
def test_missing_labels_option_is_validated_by_the_task(cls):
    assert cls.Options().missing_labels == "refuse"
    with pytest.raises(RecipeError, match=r"task.missing_labels: .*got 'skip'"):
        create_task(load_recipe({"name": "t", "data": {"source": "builtin:wine"}, "model": {"arch": "mlp"},
                                 "task": {"name": cls.name, "missing_labels": "skip"}}))  # fmt: skip


def test_boolean_labels_are_one_class_per_truth_value_and_never_mixed_with_numbers():
    task = fitted(ClassificationTask, [True, "false", "TRUE", np.bool_(False), " true "])
    assert task.labels.names == ["False", "True"]
    assert [task.labels.index(v) for v in (True, "True", "false", np.bool_(True))] == [1, 1, 0, 1]
    with pytest.raises(DataError, match=r"mixes booleans \(False, True\) with numbers \(0, 1\)"):
        fitted(ClassificationTask, [True, False, 1, 0])


def test_numeric_labels_equal_as_numbers_are_one_class_through_clean_and_fit():
    task = make(ClassificationTask)
    table = task.clean(records([1, "1.0", 1.0, " 1 ", 2, "2.0", np.int64(3), "3.00"]), "train")
    task.fit(table)
    assert task.labels.names == ["1", "2", "3"]


@pytest.mark.parametrize("target", ["inf", float("-inf"), "nan", True, "abc", [1], 10**400])
def test_regression_targets_that_are_not_finite_numbers_are_refused_naming_the_row(target):
    table = records([1.5, 2.0, target, 3.0])
    with pytest.raises(DataError, match=r"arrays \(train split\), row 3, column 'label': .*regression needs"):
        make(RegressionTask).fit(table)


def test_strata_are_class_names():
    task = make(ClassificationTask)
    assert task.strata(records([3, "3.0", "b"])) == ["3", "3", "b"]
    assert make(RegressionTask).strata(records([1.0, 2.0])) is None


# ----------------------------------------------------------------------------- fit, encode, collate


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    return load_source(f"csv:{write_wine_csv(tmp_path_factory.mktemp('wine') / 'wine.csv')}")["data"]


def test_fit_encode_collate_on_wine(wine):
    task = make(ClassificationTask)
    task.fit(wine)
    assert task.labels.names == ["class_0", "class_1", "class_2"] and task.num_outputs == 3
    assert task.features.input_shape == (13,) and task.features.columns == wine.columns[:-1]
    item = task.encode(wine[0], None)
    assert item["x"].dtype == torch.float32 and item["x"].shape == (13,) and item["y"] == 0
    batch = batch_of(task, list(wine))
    assert batch["x"].shape == (178, 13) and batch["num_items"] == 178
    assert batch["y"].dtype == torch.int64
    assert batch["y"].tolist() == [task.labels.index(v) for v in wine.column("label")]
    # standardised with the train split's statistics (CSV text parsed as numbers)
    torch.testing.assert_close(batch["x"].mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch["x"].double().std(0, unbiased=False).float(), torch.ones(13))
    unlabelled = batch_of(
        task, [{k: v for k, v in row.items() if k != "label"} for row in wine.select([0, 1])]
    )
    assert set(unlabelled) == {"x", "num_items"} and unlabelled["num_items"] == 2
    assert any("normalize=standard" in note for note in task.notes())


def test_fit_respects_features_and_normalize(wine):
    task = make(ClassificationTask, data={"features": ["proline", "hue"], "normalize": "none"})
    task.fit(wine)
    assert task.features.columns == ["proline", "hue"]
    x = task.encode(wine[3], None)["x"]
    torch.testing.assert_close(x, torch.tensor([float(wine[3]["proline"]), float(wine[3]["hue"])]))


# ----------------------------------------------------------------------------- classification loss and metric


def test_label_smoothing_loss_is_a_sum_matching_formula_and_torch():
    torch.manual_seed(0)
    logits, targets = torch.randn(9, 4), torch.randint(0, 4, (9,))
    batch = {"y": targets, "num_items": 9}
    eps = 0.2
    plain = fitted(ClassificationTask, "abcd").loss_from(logits, batch)
    smooth = fitted(ClassificationTask, "abcd", label_smoothing=eps).loss_from(logits, batch)
    logp = logits.log_softmax(-1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    expected = ((1 - eps) * nll + eps * (-logp.mean(-1))).sum()
    torch.testing.assert_close(smooth, expected)
    torch.testing.assert_close(smooth, F.cross_entropy(logits, targets, label_smoothing=eps, reduction="sum"))
    torch.testing.assert_close(plain, nll.sum())
    assert not torch.isclose(plain, smooth)
    half = fitted(ClassificationTask, "abcd").loss_from(logits.half(), batch)  # computed in float32
    assert half.dtype == torch.float32


def test_loss_runs_the_model_on_the_batch():
    task = fitted(ClassificationTask, "abc")
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    batch = {"x": torch.zeros(2, 1), "y": torch.tensor([0, 1]), "num_items": 2}
    torch.testing.assert_close(
        task.loss(Fixed(logits), batch), F.cross_entropy(logits, batch["y"], reduction="sum")
    )


def test_classification_metric_uses_argmax():
    task = fitted(ClassificationTask, "xyz")
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [5.0, 0, 0]])
    batch = {"y": torch.tensor([0, 1, 1, 2]), "num_items": 4}
    m = compute(task, logits, batch)
    assert m["accuracy"] == 0.5
    assert set(task.metric_names) <= set(m) and set(task.higher_is_better) == set(task.metric_names)
    assert m["loss"] == pytest.approx(float(F.cross_entropy(logits, batch["y"])))
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert [row["class"] for row in m["per_class"]] == ["x", "y", "z"]


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_metric_merges_batches_and_matches_sklearn(seed):
    k = 5
    task = fitted(ClassificationTask, [str(c) for c in range(k)], label_smoothing=0.1)
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k - 1, (83,), generator=gen)  # the last class never occurs
    logits = torch.randn(83, k, generator=gen) + 2.5 * F.one_hot(target, k)
    logits[:, 2] -= 10  # class 2 is never predicted
    batch = {"y": target, "num_items": 83}
    whole = compute(task, logits, batch)
    pieces = compute(task, logits, batch, chunks=7)
    assert {k_: v for k_, v in pieces.items() if k_ != "loss"} == {
        k_: v for k_, v in whole.items() if k_ != "loss"
    }
    assert pieces["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert whole["loss"] == pytest.approx(float(task.loss_from(logits, batch)) / 83, rel=1e-6)
    pred, y = logits.argmax(-1).numpy(), target.numpy()
    labels = list(range(k))
    assert whole["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    for ours, fn in (("precision_macro", skm.precision_score), ("recall_macro", skm.recall_score),
                     ("f1_macro", skm.f1_score)):  # fmt: skip
        expected = fn(y, pred, labels=labels, average="macro", zero_division=0)
        assert whole[ours] == pytest.approx(expected, abs=1e-12), ours
    assert whole["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()


def test_predict_probabilities():
    torch.manual_seed(1)
    task = fitted(ClassificationTask, ["2", "10", "cat"])
    assert task.labels.names == ["10", "2", "cat"]
    logits = torch.randn(5, 3) * 3
    out = task.predict(Fixed(logits), {"x": torch.zeros(5, 1), "num_items": 5})
    assert len(out) == 5
    probs = logits.softmax(-1)
    for row, p in zip(out, probs, strict=True):
        assert set(row) == {"label", "probabilities"}
        assert list(row["probabilities"]) == ["10", "2", "cat"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == task.labels.names[int(p.argmax())]
        np.testing.assert_allclose(list(row["probabilities"].values()), p.numpy(), atol=1e-6)
    json.dumps(out)  # what a person reads is plain JSON


def test_build_model_and_predict_end_to_end(wine):
    recipe = load_recipe({"name": "t", "data": {"source": "builtin:wine"}, "model": {"arch": "mlp"}})
    task = create_task(recipe)
    family = get_family("mlp")
    task.check(recipe, family)
    task.fit(wine)
    torch.manual_seed(0)
    model = task.build_model(family, {"hidden_sizes": [8]}, None).eval()
    batch = batch_of(task, list(wine.select(range(6))))
    with torch.no_grad():
        assert task.forward(model, batch).shape == (6, 3)
        assert {row["label"] for row in task.predict(model, batch)} <= set(task.labels.names)
        loss = task.loss(model, batch)
    assert loss.shape == () and float(loss) > 0


def test_check_refuses_what_a_row_task_cannot_train():
    def refused(data=None, model=None):
        recipe = load_recipe(
            {
                "name": "t",
                "data": {"source": "builtin:wine", **(data or {})},
                "model": {"arch": "mlp", **(model or {})},
            }
        )
        with pytest.raises(RecipeError) as info:
            create_task(recipe).check(recipe, get_family(recipe.model.arch))
        return str(info.value)

    assert refused(model={"arch": "gpt"}).startswith("model.arch:")
    assert refused(model={"num_outputs": 3}).startswith("model.num_outputs:")
    assert refused(model={"input_shape": [13]}).startswith("model.input_shape:")
    assert refused(data={"text": "review"}).startswith("data.text:")
    assert refused(model={"pretrained": "some/model"}).startswith("model.pretrained:")


# ----------------------------------------------------------------------------- parse


def test_parse_files_records_and_arrays(tmp_path, wine):
    task = make(ClassificationTask)
    task.fit(wine)
    path = write_wine_csv(tmp_path / "wine.csv")
    from_file = task.parse(str(path))
    assert len(from_file) == 178 and "label" not in from_file[0]
    assert task.parse(path) == from_file
    one = {k: v for k, v in wine[5].items() if k != "label"}
    assert task.parse(wine[5]) == [one]  # the label of a record is not an input
    assert task.parse([wine[5], wine[6]])[1]["proline"] == wine[6]["proline"]

    x = batch_of(task, list(wine.select(range(4))))["x"]
    numbers = np.array([[float(row[c]) for c in task.features.columns] for row in wine.select(range(4))])
    rows = task.parse(numbers)
    assert len(rows) == 4 and list(rows[0]) == task.features.columns
    torch.testing.assert_close(batch_of(task, rows)["x"], x)
    torch.testing.assert_close(batch_of(task, task.parse(torch.from_numpy(numbers)))["x"], x)
    assert len(task.parse(numbers[0])) == 1  # one row, flat
    for bad in (np.zeros((2, 12)), np.zeros(5), np.float32(3.0)):
        with pytest.raises(DataError) as info:
            task.parse(bad)
        assert "shape" in str(info.value) and "13 values per row" in str(info.value)
    with pytest.raises(
        DataError, match=r"row 1, value 1 is .a. \(str\); an array of rows holds plain numbers"
    ):
        task.parse([["a"] * 13])
    with pytest.raises(DataError, match="expected a .csv/.jsonl/.parquet file"):
        task.parse("not a file")


def test_parse_image_arrays_for_digits():
    digits = load_source("builtin:digits")["data"].select(range(40))
    task = make(ClassificationTask, data={"normalize": "global"})
    task.fit(digits)
    assert task.features.input_shape == (1, 8, 8)
    images = np.stack(digits.column("image"))[:3]
    expected = batch_of(task, list(digits.select(range(3))))["x"]
    for raw in (images, images.reshape(3, 64), images.reshape(3, 8, 8)):
        rows = task.parse(raw)
        assert [r["image"].shape for r in rows] == [(1, 8, 8)] * 3
        torch.testing.assert_close(batch_of(task, rows)["x"], expected)


def test_parse_arrays_need_numeric_columns():
    task = make(ClassificationTask)
    task.fit(records(list("abab" * 3), x=[float(i) for i in range(12)], city=["paris", "rome"] * 6))
    with pytest.raises(DataError, match="categorical"):
        task.parse(np.zeros((1, task.features.input_shape[0])))
    rows = task.parse([{"x": 1.0, "city": "rome"}])
    assert batch_of(task, rows)["x"].shape == (1, task.features.input_shape[0])


# ----------------------------------------------------------------------------- state


def test_classification_state_round_trip(tmp_path, wine):
    task = make(ClassificationTask, label_smoothing=0.1)
    task.fit(wine)
    state = json.loads(json.dumps(task.state()))  # task.json is plain JSON
    assert state["name"] == "classification" and state["class_names"] == ["class_0", "class_1", "class_2"]
    for again in (ClassificationTask.restore(state, tmp_path), restore_task(state, tmp_path)):
        assert isinstance(again, ClassificationTask)
        assert again.labels.names == task.labels.names and again.options.label_smoothing == 0.1
        assert again.data == task.data and again.num_outputs == 3
        batch, same = (
            batch_of(task, list(wine.select(range(7)))),
            batch_of(again, list(wine.select(range(7)))),
        )
        torch.testing.assert_close(same["x"], batch["x"], rtol=0, atol=0)
        assert same["y"].tolist() == batch["y"].tolist()
        logits = torch.randn(7, 3)
        torch.testing.assert_close(again.loss_from(logits, same), task.loss_from(logits, batch))
        assert again.parse(np.zeros(13))[0].keys() == task.parse(np.zeros(13))[0].keys()
    with pytest.raises(RunDirError, match="format"):
        restore_task({**state, "format": 99}, tmp_path)


def test_create_task_from_recipe():
    def recipe(task):
        return load_recipe({"name": "t", "data": {"source": "builtin:wine", "label": "label"},
                            "model": {"arch": "mlp"}, "task": task})  # fmt: skip

    task = create_task(recipe({"name": "classification", "label_smoothing": 0.05}))
    assert isinstance(task, ClassificationTask) and task.options.label_smoothing == 0.05
    assert task.data["source"] == "builtin:wine" and task.data["label"] == "label"
    task = create_task(recipe({"name": "regression", "loss": "mae"}))
    assert isinstance(task, RegressionTask) and task.options.loss == "mae"
    assert isinstance(create_task(recipe("classification")), ClassificationTask)
    assert task_class("bigmodel.tasks.regression:RegressionTask") is RegressionTask
    with pytest.raises(
        RecipeError, match=r"task\.label_smothing: unknown option.*Did you mean 'label_smoothing'"
    ):
        create_task(recipe({"name": "classification", "label_smothing": 0.1}))
    with pytest.raises(RecipeError, match=r"task\.label_smoothing"):
        create_task(recipe({"name": "classification", "label_smoothing": 1.5}))
    with pytest.raises(RecipeError, match=r"task\.loss"):
        create_task(recipe({"name": "regression", "loss": "huber"}))
    with pytest.raises(RecipeError, match="task.name"):
        create_task(recipe({"name": "clasification"}))


# ----------------------------------------------------------------------------- regression

Y = [151.0, 75.0, 141.0, 206.0, 135.0, 97.0, 138.0, 63.0, 110.0]


def test_regression_standardises_targets():
    task = fitted(RegressionTask, Y)
    y = np.array(Y)
    assert task.mean == pytest.approx(y.mean()) and task.std == pytest.approx(y.std())
    batch = batch_of(task, list(records(Y)))
    assert batch["y"].dtype == torch.float32 and batch["num_items"] == len(Y)
    assert float(batch["y"].mean()) == pytest.approx(0, abs=1e-6)
    assert float(batch["y"].double().std(unbiased=False)) == pytest.approx(1, abs=1e-6)
    # string numbers (CSV) work too, for fitting and encoding
    text = fitted(RegressionTask, [f" {v} " for v in Y])
    assert (text.mean, text.std) == (task.mean, task.std)
    torch.testing.assert_close(batch_of(text, list(records([str(v) for v in Y])))["y"], batch["y"])


def test_regression_metric_in_original_units_merges_and_matches_sklearn():
    task = fitted(RegressionTask, Y)
    batch = batch_of(task, list(records(Y)))
    rng = np.random.default_rng(0)
    outputs = (batch["y"] + torch.from_numpy(rng.normal(0, 0.3, len(Y))).float()).unsqueeze(-1)
    m = compute(task, outputs, batch)
    pred = outputs.squeeze(-1).double().numpy() * task.std + task.mean
    y = batch["y"].double().numpy() * task.std + task.mean  # the float32 targets, in original units
    np.testing.assert_allclose(y, Y, rtol=1e-6)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-9)
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)), rel=1e-9)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-9)
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-9)
    assert m["r2"] == pytest.approx(skm.r2_score(Y, pred), rel=1e-5)
    assert m["mse"] > 10  # original units, not standardised ones
    assert m["loss"] == pytest.approx(float(F.mse_loss(outputs.squeeze(-1), batch["y"])), rel=1e-6)
    assert set(task.metric_names) <= set(m)
    pieces = compute(task, outputs, batch, chunks=4)
    assert pieces.keys() == m.keys()
    for name in m:  # float64 sums; the loss is summed in float32 per batch
        assert pieces[name] == pytest.approx(m[name], rel=1e-6 if name == "loss" else 1e-12), name
    out = task.predict(Fixed(outputs), {"x": torch.zeros(len(Y), 1), "num_items": len(Y)})
    assert all(set(o) == {"prediction"} for o in out)
    np.testing.assert_allclose([o["prediction"] for o in out], pred, rtol=1e-6)


def test_regression_losses_are_sums():
    outputs, batch = (
        torch.tensor([[1.0], [2.0], [-1.0]]),
        {"y": torch.tensor([0.0, 4.0, -1.0]), "num_items": 3},
    )
    assert float(make(RegressionTask, loss="mse").loss_from(outputs, batch)) == pytest.approx(1 + 4 + 0)
    assert float(make(RegressionTask, loss="mae").loss_from(outputs, batch)) == pytest.approx(1 + 2 + 0)


def test_regression_constant_target_does_not_divide_by_zero():
    task = fitted(RegressionTask, [5.0, 5.0, 5.0])
    assert (task.mean, task.std) == (5.0, 1.0)
    assert [task.encode({"x": 0.0, "label": v}, None)["y"] for v in (5.0, 6.0)] == [0.0, 1.0]


def test_regression_non_numeric_label():
    with pytest.raises(DataError) as info:
        fitted(RegressionTask, ["1.5", "2", "high"])
    assert "'high'" in str(info.value) and "numeric" in str(info.value) and "data.label" in str(info.value)
    task = fitted(RegressionTask, [1.0, 2.0])
    for bad, match in (("n/a", "'n/a'"), (True, "True"), (float("inf"), "finite"), (None, "None")):
        with pytest.raises(DataError, match=match):
            task.encode({"x": 0.0, "label": bad}, None)


def test_regression_on_diabetes_jsonl_and_state_round_trip(tmp_path):
    data = load_source(f"jsonl:{write_diabetes_jsonl(tmp_path / 'd.jsonl')}")["data"]
    task = make(RegressionTask, data={"label": "progression"}, loss="mae")
    task.fit(data)
    target = skdatasets.load_diabetes().target
    assert task.mean == pytest.approx(target.mean()) and task.std == pytest.approx(target.std())
    assert task.features.input_shape == (10,) and task.num_outputs == 1
    state = json.loads(json.dumps(task.state()))
    again = restore_task(state, tmp_path)
    assert isinstance(again, RegressionTask)
    assert (again.options.loss, again.mean, again.std) == ("mae", task.mean, task.std)
    rows = list(data.select(range(5)))
    torch.testing.assert_close(batch_of(again, rows)["x"], batch_of(task, rows)["x"], rtol=0, atol=0)
    torch.testing.assert_close(batch_of(again, rows)["y"], batch_of(task, rows)["y"])
    one = {"x": torch.zeros(1, 10), "num_items": 1}
    assert math.isclose(again.predict(Fixed(torch.ones(1, 1)), one)[0]["prediction"], task.mean + task.std)


@pytest.mark.parametrize("cls", [ClassificationTask, RegressionTask])
def test_metrics_refuse_non_finite_outputs(cls):
    task = fitted(cls, ["a", "b", "a", "b"] if cls is ClassificationTask else [1.0, 2.0, 3.0, 4.0])
    batch = batch_of(
        task, list(records(["a", "b", "a", "b"] if cls is ClassificationTask else [1.0, 2, 3, 4]))
    )
    outputs = torch.zeros(4, task.num_outputs)
    outputs[2, 0] = float("nan")
    with pytest.raises(UserError, match="non-finite outputs \\(NaN or inf\\) for 1 example; no metric"):
        compute(task, outputs, batch, chunks=2)
    assert math.isfinite(compute(task, torch.zeros(4, task.num_outputs), batch)["loss"])


@pytest.mark.parametrize("name", sorted(__import__("bigmodel.tasks", fromlist=["TASKS"]).TASKS))
def test_options_predict_may_change_are_options_of_the_task(name):
    cls = task_class(name)
    assert set(cls.predict_options) <= set(cls.Options.model_fields), cls.predict_options


def test_predict_options_are_checked_and_others_refused():
    task = make(ClassificationTask)
    with pytest.raises(
        RecipeError, match=r"task.label_smoothing: not an option predict can change .* Allowed: none"
    ):
        task.set_predict_options({"label_smoothing": 0.1})
    from bigmodel.tasks.causal_lm import CausalLMTask

    lm = CausalLMTask(CausalLMTask.Options(), {"text": "text"})
    lm.set_predict_options({"temperature": 0, "top_k": 3})
    assert (lm.options.temperature, lm.options.top_k, lm.options.max_new_tokens) == (0, 3, 200)
    with pytest.raises(
        RecipeError, match=r"task.temperatur: .* Allowed: max_new_tokens, .*Did you mean 'temperature'"
    ):
        lm.set_predict_options({"temperatur": 1.0})
    with pytest.raises(RecipeError, match=r"task.top_p: .* \(got 2\)"):
        lm.set_predict_options({"top_p": 2})
    assert lm.options.top_k == 3  # a refused change leaves the options as they were
