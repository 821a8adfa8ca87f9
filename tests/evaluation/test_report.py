"""report.html of a real tiny run: its sections, charts that decode, the per-class table, examples
misclassified first and HTML-escaped, and a report that still comes out of a damaged run."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import bigmodel
from bigmodel.errors import RunDirError, UserError
from bigmodel.evaluation.report import BUCKETS, MAX_EXAMPLES, downsample, write_report

DATA_PNG = re.compile(r'<img (?:class="chart" )?src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """digits-mlp for two epochs with a cosine schedule (so the learning rate has a curve)."""
    output = tmp_path_factory.mktemp("runs")
    run = bigmodel.train(
        "digits-mlp", output=output, progress=False,
        train={"epochs": 2, "batch_size": 64, "schedule": {"name": "cosine"}},
    )  # fmt: skip
    return run.path


@pytest.fixture
def copy(run_dir, tmp_path):
    """A copy of the run to damage."""
    return shutil.copytree(run_dir, tmp_path / "run")


def _pngs(page: str) -> list[Image.Image]:
    images = []
    for data in DATA_PNG.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()  # decodes every pixel: a truncated PNG fails here
        assert image.format == "PNG"
        images.append(image)
    return images


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def _digit_rows(count: int) -> list[dict]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = []
    for i in range(count):
        image = Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8))
        truth = str(digits.target[i])
        prediction = truth if i % 5 else str((digits.target[i] + 1) % 10)  # every 5th one wrong
        rows.append(
            {"input": image, "truth": truth, "prediction": prediction, "correct": truth == prediction}
        )
    return rows


def test_report_of_a_real_run(run_dir):
    rows = _digit_rows(10)
    path = write_report(run_dir, rows)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    for section in ("overview", "metrics", "loss", "curves", "lr", "confusion", "per-class", "examples"):
        assert f'<section id="{section}">' in page, section
    assert "<script" not in page  # static: no JavaScript at all
    charts = _pngs("".join(re.findall(r'<img class="chart"[^>]*>', page)))
    # loss, 4 validation metrics (accuracy, precision/recall/F1 macro), learning rate, confusion matrix
    assert len(charts) == 7 and all(image.width >= 300 and image.height >= 200 for image in charts)
    assert len(_pngs(_section(page, "examples"))) == 10

    summary = json.loads((run_dir / "summary.json").read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    overview = _section(page, "overview")
    assert "digits-mlp" in overview and "classification" in overview and "mlp" in overview
    assert (
        f"{summary['train']['params']:,}" in overview and f"{summary['train']['steps']:,} steps" in overview
    )
    metrics = _section(page, "metrics")
    assert f"{evaluation['test']['accuracy']:.4f}" in metrics
    assert f"{evaluation['validation']['f1_macro']:.4f}" in metrics
    per_class = _section(page, "per-class")
    first_cells = re.findall(r"<tr[^>]*><td[^>]*>([^<]*)</td>", per_class)
    assert first_cells == [row["class"] for row in evaluation["test"]["per_class"]]
    assert f"{evaluation['test']['per_class'][8]['recall']:.4f}" in per_class
    assert "test split, 10 classes" in _section(page, "confusion")
    assert "10 examples, 2 of 10 misclassified" in _section(page, "examples")


def test_examples_misclassified_first_and_escaped(run_dir, tmp_path):
    rows = _digit_rows(30)
    rows[7]["truth"] = "<script>alert(1)</script>"
    rows[8]["correct"] = None  # no label: between the wrong and the right ones
    rows.append(
        {"input": '<img src=x onerror="alert(2)">', "truth": "a&b", "prediction": "b", "correct": False}
    )
    page = write_report(run_dir, rows, path=tmp_path / "r.html").read_text(encoding="utf-8")
    examples = _section(page, "examples")
    kinds = re.findall(r'<figure class="example (\w+)"', examples)
    wrong = sum(row["correct"] is False for row in rows)
    assert len(kinds) == MAX_EXAMPLES
    assert kinds == ["wrong"] * wrong + ["unjudged"] + ["right"] * (MAX_EXAMPLES - wrong - 1)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in examples
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in examples and "a&amp;b" in examples
    assert f"{len(rows)} examples, {wrong} of {len(rows) - 1} misclassified" in examples


def test_rows_must_be_dicts(run_dir, tmp_path):
    with pytest.raises(UserError, match=r"rows\[1\]: expected a dict"):
        write_report(run_dir, [{"prediction": "1"}, "not a row"], path=tmp_path / "r.html")
    with pytest.raises(UserError, match="rows: expected a list"):
        write_report(run_dir, "rows", path=tmp_path / "r.html")


def test_damaged_metrics_log_still_reports(copy):
    log = copy / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "garbage {", *lines[1:], '{"step": 9999, "epo']) + "\n")
    page = write_report(copy).read_text(encoding="utf-8")
    assert f"metrics.jsonl: 2 of {len(lines) + 2} lines could not be read (line 2, {len(lines) + 2})" in page
    assert len(_pngs(_section(page, "loss"))) == 1  # the readable lines are still drawn

    log.unlink()
    page = write_report(copy).read_text(encoding="utf-8")
    assert "metrics.jsonl is missing" in _section(page, "loss")
    assert 'id="curves"' not in page and "confusion" in page  # eval.json's sections are unaffected


def test_damaged_eval_json_falls_back_to_summary(copy):
    (copy / "eval.json").write_text("{not json")
    page = write_report(copy).read_text(encoding="utf-8")
    metrics = _section(page, "metrics")
    assert "eval.json: not valid JSON" in metrics
    test_accuracy = json.loads((copy / "summary.json").read_text())["test"]["accuracy"]
    assert f"{test_accuracy:.4f}" in metrics
    assert 'id="confusion"' not in page and 'id="per-class"' not in page


def test_odd_class_names_are_drawn_and_shown_as_text(copy):
    """Class names are data: a ``$x^$`` would be a malformed matplotlib formula, ``<b>`` markup."""
    report = json.loads((copy / "eval.json").read_text())
    names = ["$x^$", "<b>bold</b>", "$\\foo$", *(f"c{i}" for i in range(7))]
    for row, name in zip(report["test"]["per_class"], names, strict=True):
        row["class"] = name
    (copy / "eval.json").write_text(json.dumps(report))
    page = write_report(copy).read_text(encoding="utf-8")
    assert len(_pngs(_section(page, "confusion"))) == 1
    per_class = _section(page, "per-class")
    assert "&lt;b&gt;bold&lt;/b&gt;" in per_class and "<b>bold" not in per_class and "$x^$" in per_class


def test_long_run_is_downsampled(copy):
    lines = [{"step": s, "epoch": 0, "loss": 1.0 / s, "lr": 1e-3 * (1 - s / 8000)} for s in range(1, 7001)]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    page = write_report(copy).read_text(encoding="utf-8")
    assert f"drawn as {BUCKETS:,} means" in _section(page, "loss")
    assert len(_pngs(_section(page, "lr"))) == 1
    assert "No metric was logged during training" in _section(page, "curves")


def test_downsample_takes_bucket_means():
    x = np.arange(10_000, dtype=float)
    xs, ys, thinned = downsample(x, 2 * x)
    assert thinned and len(xs) == BUCKETS
    np.testing.assert_allclose(xs, 2.0 + 5 * np.arange(BUCKETS))  # buckets of 5: means 2, 7, 12, ...
    np.testing.assert_allclose(ys, 2 * xs)
    xs, ys, thinned = downsample(x[:5000], x[:5000])
    assert not thinned and np.array_equal(xs, x[:5000])


def test_compression_chart(copy):
    stages = [
        {"stage": "fp32", "metric": 0.95, "size_bytes": 69_000, "latency_ms_p50": 0.8, "throughput": 1200.0},
        {
            "stage": "<int8>",
            "metric": 0.94,
            "size_bytes": 18_000,
            "latency_ms_p50": 0.5,
            "throughput": 2000.0,
        },
    ]
    (copy / "compress").mkdir()
    (copy / "compress" / "report.json").write_text(json.dumps(stages))
    page = write_report(copy).read_text(encoding="utf-8")
    section = _section(page, "compression")
    assert len(_pngs(section)) == 1
    assert "&lt;int8&gt;" in section and "<int8>" not in section and "67.4 KiB" in section

    (copy / "compress" / "report.json").write_text('{"stages": 3}')
    assert "expected a list of stages" in write_report(copy).read_text(encoding="utf-8")


def test_not_a_run_is_refused(tmp_path):
    with pytest.raises(RunDirError, match=rf"{tmp_path}: not a run directory \(it has no model.json\)"):
        write_report(tmp_path)
    with pytest.raises(RunDirError, match="no such run directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunDirError, match="a file, not a run directory"):
        write_report(tmp_path / "file.txt")
