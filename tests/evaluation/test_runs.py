"""Listing and comparing real run directories: two tiny digits runs that differ in one recipe key."""

from __future__ import annotations

import shutil

import pytest

import bigmodel
from bigmodel.errors import RunDirError
from bigmodel.evaluation.runs import compare_runs, flatten, list_runs, run_date


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(root, [run with 1 epoch, run with 2 epochs])`` under one output folder."""
    root = tmp_path_factory.mktemp("runs")
    trained = [
        bigmodel.train("digits-mlp", output=root, progress=False, train={"epochs": epochs, "batch_size": 64})
        for epochs in (1, 2)
    ]
    return root, trained


def test_list_runs_finds_both_with_their_metrics(runs):
    root, trained = runs
    listed = list_runs(root)
    assert [r["path"] for r in listed] == [str(run.path) for run in trained]  # oldest first
    for row, run in zip(listed, trained, strict=True):
        assert row["name"] == "digits-mlp" and row["task"] == "classification" and row["family"] == "mlp"
        assert row["finished"] is True and row["split"] == "test" and row["problems"] == []
        assert row["metrics"] == run.metrics["test"]
        assert row["key_metrics"] == {k: run.metrics["test"][k] for k in ("accuracy", "f1_macro", "loss")}
        assert row["params"] == run.metrics["train"]["params"] == 17_226
        assert (
            row["steps"] == run.metrics["train"]["steps"] and row["time_s"] == run.metrics["train"]["time_s"]
        )
        assert row["date"] == run_date(run.path) and len(row["date"]) == 19
    assert list_runs(root / "digits-mlp") == listed  # one recipe's folder
    assert list_runs(trained[0].path) == listed[:1]  # a run itself


def test_list_runs_describes_unfinished_and_damaged_runs(runs, tmp_path):
    _, trained = runs
    unfinished = shutil.copytree(trained[0].path, tmp_path / "r" / "a" / "20250101-000000")
    (unfinished / "manifest.json").unlink()
    damaged = shutil.copytree(trained[1].path, tmp_path / "r" / "a" / "20250102-000000")
    (damaged / "summary.json").write_text("[1, 2]")
    (tmp_path / "r" / "not-a-run" / "x").mkdir(parents=True)
    first, second = list_runs(tmp_path / "r")
    assert first["finished"] is False and first["date"] == "2025-01-01 00:00:00"
    assert first["metrics"] == trained[0].metrics["test"]
    assert second["problems"] == ["summary.json: expected an object, found list"]
    assert second["metrics"] == {} and second["split"] is None and second["params"] is None


def test_list_runs_refuses_a_missing_folder(tmp_path):
    assert list_runs(tmp_path) == []
    with pytest.raises(RunDirError, match=rf"{tmp_path / 'nope'}: no such folder"):
        list_runs(tmp_path / "nope")


def test_compare_runs_shows_recipe_difference_and_metrics(runs):
    _, (one, two) = runs
    rows = compare_runs(one.path, two)  # a path or a Run
    table = {key: (a, b) for key, a, b in rows}
    assert len(table) == len(rows)
    recipe_rows = [key for key in table if key.startswith("recipe.")]
    assert recipe_rows == ["recipe.train.epochs"] and table["recipe.train.epochs"] == (1, 2)
    for split in ("validation", "test"):
        for metric in ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro"):
            assert table[f"{split}.{metric}"] == (one.metrics[split][metric], two.metrics[split][metric])
    assert [k for k in table if not k.startswith("recipe.")][0] == "validation.loss"  # validation, then test
    assert table["training.steps"] == (one.metrics["train"]["steps"], two.metrics["train"]["steps"])
    assert table["training.epochs"] == (1, 2)


def test_compare_runs_reads_metrics_evaluate_added(runs, tmp_path):
    """eval.json (which `bigmodel evaluate --split train` extends) is preferred to summary.json."""
    import json

    _, (one, two) = runs
    copy = shutil.copytree(one.path, tmp_path / "run")
    report = json.loads((copy / "eval.json").read_text())
    (copy / "eval.json").write_text(json.dumps({**report, "train": {"accuracy": 0.5}}))
    table = {key: (a, b) for key, a, b in compare_runs(copy, two.path)}
    assert table["train.accuracy"] == (0.5, None)


def test_compare_runs_refuses_non_runs(runs, tmp_path):
    _, (one, _) = runs
    with pytest.raises(RunDirError, match=rf"{tmp_path}: not a run directory"):
        compare_runs(one.path, tmp_path)
    with pytest.raises(RunDirError, match="no such run directory"):
        compare_runs(tmp_path / "missing", one.path)
    latest = runs[1][1].path
    with pytest.raises(RunDirError, match=f"Did you mean the latest run inside it, '{latest}'"):
        compare_runs(one.path, runs[0])  # the folder of all runs
    copy = shutil.copytree(one.path, tmp_path / "run")
    (copy / "recipe.yaml").write_text("name: [unclosed")
    with pytest.raises(RunDirError, match=r"recipe.yaml: not valid YAML"):
        compare_runs(copy, one.path)


def test_flatten_keeps_lists_whole():
    recipe = {
        "name": "x",
        "model": {"hidden_sizes": [128, 64], "extra": {}},
        "train": {"optimizer": {"lr": 1e-3}},
    }
    assert flatten(recipe) == {
        "name": "x",
        "model.hidden_sizes": [128, 64],
        "model.extra": {},
        "train.optimizer.lr": 1e-3,
    }
