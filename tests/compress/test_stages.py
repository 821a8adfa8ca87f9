"""The compress: stage runner (compress/stages.py) with a stand-in technique: order, what is saved and
rebuilt, accept_if, the report rows, and clear errors."""

import copy
import json
import types

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

import bigmodel
from bigmodel.compress import measure, stages
from bigmodel.compress.stages import StageOutput
from bigmodel.errors import RecipeError
from bigmodel.models.registry import get_family


class ScaleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float = Field(1.0, gt=0)


def _apply(ctx, options):
    """Scale every weight by ``factor``: the same architecture, other weights."""
    opts = ScaleOptions(**options)
    model = copy.deepcopy(ctx.model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(opts.factor)
    spec = {"family": ctx.recipe.model.arch, "config": ctx.task.model_config(model)}
    return StageOutput(model, spec, notes=[f"scaled by {opts.factor}"])


def _load(spec, tensors, task):
    model = task.build_model(get_family(spec["family"]), spec["config"], None)
    model.load_state_dict(tensors)
    return model


SCALE = types.SimpleNamespace(Options=ScaleOptions, apply=_apply, load=_load)


@pytest.fixture
def scale_technique(monkeypatch):
    monkeypatch.setattr(stages, "technique", lambda name: SCALE)
    monkeypatch.setattr(measure, "ROUNDS", 1)  # timings are exercised, not judged, here
    monkeypatch.setattr(measure, "SECONDS", 0.01)


def test_stages_run_in_order_and_a_refused_stage_is_left_aside(tmp_path, scale_technique):
    compress = [
        {"prune": {"factor": 1.0, "accept_if": {"min_speedup": 10.0}}},  # a copy is not 10x faster
        {"prune": {"factor": 1.0, "accept_if": {"max_metric_drop": 1.0}}},
    ]
    run = bigmodel.train(
        "digits-mlp", output=tmp_path, progress=False, train={"epochs": 1}, compress=compress
    )
    report = json.loads((run.path / "compress" / "report.json").read_text())
    rows = report["stages"]
    assert [r["stage"] for r in rows] == ["trained", "1-prune", "2-prune"]
    assert report["metric"] == "accuracy" and report["higher_is_better"] is True
    trained, first, second = rows
    assert trained["metric"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert first["accepted"] is False and "accept_if.min_speedup 10" in first["why"]
    assert second["input"] == "trained"  # the refused stage's model is not built on
    # An exact copy, saved and rebuilt from its files: the same predictions.
    assert second["accepted"] is True and second["metric"] == trained["metric"] and second["metric_drop"] == 0
    for row in rows:
        assert row["latency_ms_p50"] > 0 and row["throughput"] > 0 and row["params"] == trained["params"]
    folder = run.path / "compress" / "2-prune"
    spec = json.loads((folder / "model.json").read_text())
    assert spec["stage"] == "prune" and spec["options"] == {"factor": 1.0} and spec["input"] == "trained"
    assert json.loads((folder / "metrics.json").read_text())["notes"] == ["scaled by 1.0"]
    assert (folder / "model.safetensors").stat().st_size == second["size_bytes"]
    bigmodel.load(run)  # the run itself is untouched (compress/ lies outside its manifest)


@pytest.mark.report
def test_compress_a_finished_run_redraws_the_report_with_the_trade_off(tmp_path, scale_technique):
    run = bigmodel.train("digits-mlp", output=tmp_path, progress=False, train={"epochs": 1})
    rows = bigmodel.compress_run(run, [{"prune": {"factor": 2.0}}], progress=False)
    assert [r["stage"] for r in rows] == ["trained", "1-prune"] and rows[1]["accepted"]
    html = (run.path / "report.html").read_text(encoding="utf-8")
    assert "Compression trade-off" in html and "1-prune" in html
    again = bigmodel.compress_run(
        run, [{"prune": {"factor": 3.0}}], progress=False
    )  # replaces the last results
    assert json.loads((run.path / "compress" / "1-prune" / "model.json").read_text())["options"] == {
        "factor": 3.0
    }
    assert len(again) == 2


@pytest.mark.parametrize(
    ("compress", "message"),
    [
        ([{"prune": {"factor": -1}}], "compress[0].prune.factor"),
        ([{"prune": {"factr": 2}}], "compress[0].prune.factr: unknown option"),
        ([{"prune": {"accept_if": {"min_speed": 2}}}], "compress[0].prune.accept_if.min_speed"),
        ([{"prune": "fast"}], "compress[0].prune: expected a mapping"),
    ],
)
def test_bad_stages_are_refused_before_training_naming_the_field(
    tmp_path, scale_technique, compress, message
):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        bigmodel.train("digits-mlp", output=tmp_path, progress=False, compress=compress)
    assert not (tmp_path / "digits-mlp").exists()


def test_unknown_technique_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown technique 'prun'"):
        bigmodel.load_recipe("digits-mlp", compress=[{"prun": {}}])


def test_metric_drop_is_in_points_for_fractions_and_in_the_bad_direction():
    assert stages._drop(0.95, 0.94, higher=True) == pytest.approx(1.0)
    assert stages._drop(0.95, 0.97, higher=True) == pytest.approx(-2.0)
    assert stages._drop(20.0, 22.5, higher=False) == pytest.approx(2.5)  # perplexity went up 2.5
