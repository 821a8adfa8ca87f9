"""End to end through the Python API: recipe → data → model → train → evaluate → predict."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

import bigmodel
from bigmodel.errors import DataError, RecipeError, RunDirError
from bigmodel.training.loop import TrainingDiverged
from helpers import write_diabetes_jsonl, write_wine_csv


def test_digits_mlp_learns_real_digits(tmp_path):
    run = bigmodel.train("digits-mlp", output=tmp_path, progress=False, train={"epochs": 15})
    assert run.metrics["test"]["accuracy"] >= 0.93
    assert run.metrics["test"]["f1_macro"] >= 0.92
    report = json.loads((run.path / "eval.json").read_text())
    assert set(report) == {"validation", "test"}
    sizes = json.loads((run.path / "data.json").read_text())["split_sizes"]
    assert np.asarray(report["test"]["confusion_matrix"]).sum() == sizes["test"]
    assert abs(sizes["test"] - 0.15 * 1797) <= 10 and sum(sizes.values()) == 1797  # stratified rounding
    assert {row["class"] for row in report["test"]["per_class"]} == {str(d) for d in range(10)}
    for name in (
        "recipe.yaml",
        "model.json",
        "data.json",
        "model.safetensors",
        "metrics.jsonl",
        "summary.json",
    ):
        assert (run.path / name).is_file(), name


@pytest.mark.report
def test_training_ends_with_a_report_of_curves_and_held_out_examples(tmp_path):
    run = bigmodel.train("digits-mlp", output=tmp_path, progress=False, train={"epochs": 2})
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert html.count('class="chart"') >= 4  # loss, metric curves, the confusion matrix
    assert html.count('<figure class="example') == 24  # held-out examples predicted at the end of training
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert "report.html" not in json.dumps(manifest)  # a redrawable view, outside the manifest
    again = bigmodel.report(run)  # redrawn on demand; the run stays verified
    assert again == run.path / "report.html"
    bigmodel.load(run)


def test_demo_recipe_reaches_97_percent(tmp_path):
    """The demo's promise (recipes/digits-cnn.yaml unchanged): >= 97 % test accuracy."""
    run = bigmodel.train("digits-cnn", output=tmp_path, progress=False)
    assert run.metrics["test"]["accuracy"] >= 0.97, run.metrics


def test_evaluate_matches_training_report_and_records_split(tmp_path):
    run = bigmodel.train("digits-mlp", output=tmp_path, progress=False, train={"epochs": 2})
    metrics = bigmodel.evaluate(run, split="validation")
    assert metrics["accuracy"] == pytest.approx(run.metrics["validation"]["accuracy"])
    train_metrics = bigmodel.evaluate(run.path, split="train")
    assert json.loads((run.path / "eval.json").read_text())["train"]["accuracy"] == train_metrics["accuracy"]


def test_predictor_agrees_with_evaluation(tmp_path):
    run = bigmodel.train("digits-mlp", output=tmp_path, progress=False, train={"epochs": 5})
    digits = load_digits()
    predictor = bigmodel.load(run.path)
    rows = predictor.predict(digits.data[:200])
    accuracy = np.mean([int(r["label"]) == t for r, t in zip(rows, digits.target[:200], strict=True)])
    assert accuracy > 0.9
    records = [{"image": x.reshape(1, 8, 8), "label": "ignored"} for x in digits.data[:5]]
    assert [r["label"] for r in predictor.predict(records)] == [r["label"] for r in rows[:5]]
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_csv_classification_with_text_labels(tmp_path):
    csv_path = write_wine_csv(tmp_path / "wine.csv")
    run = bigmodel.train(
        "tabular-csv", output=tmp_path / "runs", progress=False, **{"data.source": f"csv:{csv_path}"}
    )
    assert run.metrics["test"]["accuracy"] >= 0.9
    rows = bigmodel.load(run.path).predict(csv_path)  # the label column is ignored when predicting
    assert len(rows) == 178 and rows[0]["label"] in {"class_0", "class_1", "class_2"}


def test_jsonl_regression_in_original_units(tmp_path):
    path = write_diabetes_jsonl(tmp_path / "diabetes.jsonl")
    recipe = {
        "name": "diabetes",
        "data": {
            "source": f"jsonl:{path}",
            "label": "progression",
            "split": {"validation": 0.2, "test": 0.2},
        },
        "task": {"name": "regression", "loss": "mse"},
        "model": {"arch": "mlp", "hidden_sizes": [32], "dropout": 0.1},
        "train": {
            "epochs": 60,
            "batch_size": 32,
            "optimizer": {"name": "adam", "lr": 3e-3},
            "early_stopping": {"metric": "loss", "patience": 10},
        },
    }
    run = bigmodel.train(recipe, output=tmp_path / "runs", progress=False)
    assert run.metrics["test"]["r2"] > 0.3  # linear regression reaches ~0.45 on this table
    assert 40 < run.metrics["test"]["rmse"] < 80  # original units (targets span 25..346)
    prediction = bigmodel.load(run.path).predict(path)[0]["prediction"]
    assert 25 < prediction < 346


def test_full_batch_gradient_descent_takes_one_step_per_epoch(tmp_path):
    run = bigmodel.train(
        "digits-mlp",
        output=tmp_path,
        progress=False,
        train={
            "epochs": 7,
            "batch_size": "all",
            "optimizer": {"name": "sgd", "lr": 0.5},
            "early_stopping": None,
        },
    )
    assert run.metrics["train"]["steps"] == 7 and run.metrics["train"]["epochs"] == 7


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    # 1,257 training rows / 100 = 13 batches per epoch; groups of 4 -> 4 optimizer steps per epoch.
    run = bigmodel.train(
        "digits-mlp",
        output=tmp_path,
        progress=False,
        train={"epochs": 2, "batch_size": 100, "grad_accum_steps": 4, "early_stopping": None},
    )
    assert run.metrics["train"]["steps"] == 8


def test_early_stopping_restores_best_weights(tmp_path):
    run = bigmodel.train(
        "digits-mlp",
        output=tmp_path,
        progress=False,
        train={"epochs": 40, "early_stopping": {"metric": "accuracy", "patience": 2}},
    )
    best = run.metrics["train"]["best"]
    assert run.metrics["train"]["stopped_early"] and run.metrics["train"]["epochs"] < 40
    assert run.metrics["validation"]["accuracy"] == pytest.approx(best["value"])


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"at step \d+") as info:
        bigmodel.train(
            "digits-mlp",
            output=tmp_path,
            progress=False,
            train={"optimizer": {"name": "sgd", "lr": 1e12}, "checkpoint_every": 1, "early_stopping": None},
        )
    run_dir = next((tmp_path / "digits-mlp").iterdir())
    latest = json.loads((run_dir / "train_state" / "latest.json").read_text())
    failed_step = int(str(info.value).split("at step ")[1].split()[0])
    assert latest["step"] == failed_step - 1
    assert (run_dir / "train_state" / latest["tensors"]).is_file()


def test_unknown_early_stopping_metric_is_a_clear_error(tmp_path):
    with pytest.raises(bigmodel.UserError, match="train.early_stopping.metric.*Allowed: loss, accuracy"):
        bigmodel.train(
            "digits-mlp", output=tmp_path, progress=False, train={"early_stopping": {"metric": "r2"}}
        )


def test_model_option_errors_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"model\.hiden_sizes.*Did you mean 'hidden_sizes'"):
        bigmodel.load_recipe("digits-mlp", **{"model.hiden_sizes": [3]})
    with pytest.raises(RecipeError, match=r"model.*dropout must be in \[0, 1\)"):
        bigmodel.train("digits-mlp", output=tmp_path, progress=False, model={"dropout": 1.5})


def test_label_column_must_exist(tmp_path):
    csv_path = write_wine_csv(tmp_path / "wine.csv")
    with pytest.raises(DataError, match=r"data.label: column 'lable'.*Did you mean 'label'"):
        bigmodel.train(
            "tabular-csv",
            output=tmp_path,
            progress=False,
            **{"data.source": f"csv:{csv_path}", "data.label": "lable"},
        )


def test_evaluate_refuses_changed_data_and_non_runs(tmp_path):
    csv_path = write_wine_csv(tmp_path / "wine.csv")
    run = bigmodel.train(
        "tabular-csv",
        output=tmp_path / "runs",
        progress=False,
        **{"data.source": f"csv:{csv_path}", "train.epochs": 1},
    )
    with open(csv_path, "a") as f:
        f.write(",".join(["1"] * 13) + ",class_0\n")
    with pytest.raises(DataError, match="changed since this run was trained"):
        bigmodel.evaluate(run)
    with pytest.raises(RunDirError, match="not a finished run directory"):
        bigmodel.evaluate(tmp_path)


def test_evaluate_on_another_source_records_it_beside_the_splits(tmp_path):
    csv_path = write_wine_csv(tmp_path / "wine.csv")
    run = bigmodel.train(
        "tabular-csv", output=tmp_path / "runs", progress=False, **{"data.source": f"csv:{csv_path}"}
    )
    rows = csv_path.read_text().splitlines()
    other = tmp_path / "other.csv"  # a table the run never opened: every 3rd row, shuffled in order
    other.write_text("\n".join([rows[0], *rows[1::3][::-1]]) + "\n")
    metrics = bigmodel.evaluate(run, data=f"csv:{other}")
    key = f"csv:{other} (all)"
    report = json.loads((run.path / "eval.json").read_text())
    assert set(report) == {"validation", "test", key}  # the run's own splits are untouched
    assert np.asarray(metrics["confusion_matrix"]).sum() == len(rows[1::3])
    predicted = [r["label"] for r in bigmodel.load(run).predict(other)]
    truth = [line.rsplit(",", 1)[1] for line in rows[1::3][::-1]]
    hits = [p == t for p, t in zip(predicted, truth, strict=True)]
    assert metrics["accuracy"] == pytest.approx(np.mean(hits))
    with pytest.raises(DataError, match=r"--split validation: .* one table with no splits; --split test"):
        bigmodel.evaluate(run, split="validation", data=f"csv:{other}")
    with pytest.raises(RecipeError, match="data.source"):
        bigmodel.evaluate(run, data="nosuchscheme:x")
    with pytest.raises(DataError, match="file not found"):
        bigmodel.evaluate(run, data=f"csv:{tmp_path / 'missing.csv'}")
    assert set(json.loads((run.path / "eval.json").read_text())) == {"validation", "test", key}


def test_early_stopping_without_validation_split_is_refused():
    with pytest.raises(RecipeError, match=r"train.early_stopping.*data.split.validation is 0"):
        bigmodel.load_recipe("digits-mlp", **{"data.split.validation": 0})


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,label\n" + "".join(f"{i},{'xy'[i % 2]}\n" for i in range(30)) + "1.5 kg,x\n")
    with pytest.raises(DataError, match=r"row 31.*'1.5 kg'"):
        bigmodel.train(
            "tabular-csv", output=tmp_path / "runs", progress=False, **{"data.source": f"csv:{bad}"}
        )
    assert not (tmp_path / "runs").exists()


def test_export_data_writes_each_split_as_training_sees_it(tmp_path):
    csv_path = write_wine_csv(tmp_path / "wine.csv")
    source = {"data.source": f"csv:{csv_path}"}
    parts = {}
    for split in ("train", "validation", "test"):
        path = tmp_path / f"{split}.jsonl"
        written = bigmodel.export_data("tabular-csv", path, split=split, **source)
        parts[split] = [json.loads(line) for line in path.read_text().splitlines()]
        assert written == len(parts[split]) > 0
    rows = [tuple(row.values()) for part in parts.values() for row in part]
    assert len(rows) == len(set(rows)) == 178  # disjoint, and together the whole table
    run = bigmodel.train(
        "tabular-csv", output=tmp_path / "runs", progress=False, **source, **{"train.epochs": 2}
    )
    exported_test = bigmodel.evaluate(run, data=f"jsonl:{tmp_path / 'test.jsonl'}")
    own_test = json.loads((run.path / "eval.json").read_text())["test"]
    assert exported_test["confusion_matrix"] == own_test["confusion_matrix"]  # the very held-out rows
    bigmodel.export_data("tabular-csv", tmp_path / "labels.jsonl", columns=["label"], **source)
    assert set(json.loads((tmp_path / "labels.jsonl").read_text().splitlines()[0])) == {"label"}
    with pytest.raises(DataError, match=r"--column: column 'lable' .* Did you mean 'label'"):
        bigmodel.export_data("tabular-csv", tmp_path / "x.jsonl", columns=["lable"], **source)
    with pytest.raises(RecipeError, match=r"--split test: the recipe holds out no test data"):
        bigmodel.export_data(
            "tabular-csv", tmp_path / "x.jsonl", split="test", **source, **{"data.split.test": 0}
        )
    with pytest.raises(DataError, match=r"--column image: its values are ndarray"):
        bigmodel.export_data("digits-cnn", tmp_path / "x.jsonl", columns=["image"])
    assert not (tmp_path / "x.jsonl").exists()  # a refused export leaves no file behind


def test_write_jsonl_writes_missing_values_as_null_and_refuses_infinity(tmp_path):
    from bigmodel.data.records import ColumnRecords, write_jsonl

    records = ColumnRecords({"x": [1.5, float("nan"), np.float32(2.0)], "label": ["a", "b", "a"]}, "rows")
    write_jsonl(records, tmp_path / "out.jsonl", ["x", "label"])
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["x"] for row in lines] == [1.5, None, 2.0]
    with pytest.raises(DataError, match=r"--column x: inf is not a JSON number"):
        write_jsonl(ColumnRecords({"x": [float("inf")]}, "rows"), tmp_path / "bad.jsonl", ["x"])
    assert not (tmp_path / "bad.jsonl").exists()
