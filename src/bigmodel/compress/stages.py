"""The ``compress:`` stages of a recipe, run in order after training, each judged by measurement.

A stage is one technique module (``distill``, ``prune``, ``quantize``) with one entry point,
``apply(ctx, options) -> StageOutput``, and a ``load(spec, tensors, task)`` that rebuilds its model
from what the stage saved. The runner here:

1. measures the trained model (the baseline): the task's metric on the test split, size on disk,
   parameters;
2. runs each stage on the model the previous *accepted* stage left, saves its ``model.json`` and
   ``model.safetensors`` under ``compress/<i>-<stage>/``, rebuilds the model from those files with the
   technique's ``load`` (what is measured is what is on disk) and measures it;
3. times every model side by side (p50 latency at batch 1, throughput at batch 32; compress/measure.py);
4. keeps a stage only if its ``accept_if`` holds — ``max_metric_drop`` (in points: 100 x the metric for
   metrics in [0, 1], such as accuracy 0.95 = 95 points; other metrics in their own units, counted in
   the bad direction) and ``min_speedup`` (baseline p50 latency / the stage's) — and says why not;
5. writes ``compress/report.json`` (one row per model) that report.html draws as the trade-off chart.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from bigmodel.compress import measure
from bigmodel.data.records import Records
from bigmodel.errors import RecipeError, did_you_mean
from bigmodel.hub.files import load_tensors, save_tensors, write_json

STAGES = {
    "distill": "bigmodel.compress.distill",
    "prune": "bigmodel.compress.prune",
    "quantize": "bigmodel.compress.quantize",
}
REPORT = Path("compress") / "report.json"


@dataclass
class StageContext:
    """What a technique gets: the model to compress (eval mode, CPU), the fitted task, the run's splits
    and recipe, the stage's folder (for a fine-tune's checkpoints and metrics.jsonl), the seed,
    whether to show progress, and the stage's name in the recipe for messages."""

    model: nn.Module
    task: Any
    splits: dict[str, Records]
    recipe: Any
    folder: Path
    seed: int
    progress: bool = False
    field: str | None = None  # how messages name the stage: compress[i].<technique>

    def where(self, technique: str) -> str:
        """How messages name this stage: ``compress[i].<technique>``, or ``compress.<technique>`` for a
        context made outside the runner."""
        return self.field or f"compress.{technique}"


@dataclass
class StageOutput:
    """What a technique returns: the compressed model; ``spec``, what the stage's model.json holds to
    rebuild it (``family`` + ``config``, and a ``transform`` such as quantization applied after
    building); ``tensors``, the state to save when it is not ``model.state_dict()`` (int8 weights and
    scales as plain tensors); ``notes`` for the report (sparsity reached, channels kept, ...)."""

    model: nn.Module
    spec: dict
    tensors: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)


class AcceptIf(BaseModel):
    """When a stage is kept: both limits that are set must hold."""

    model_config = ConfigDict(extra="forbid")
    max_metric_drop: float | None = Field(None, ge=0, description="points of the task's metric lost at most")
    min_speedup: float | None = Field(None, gt=0, description="baseline p50 latency / the stage's, at least")


def parse_stages(items: list) -> list[tuple[str, dict, AcceptIf]]:
    """``[{"prune": {...}}, ...]`` as ``(stage, options, accept_if)``, refusing what is not a stage by
    its place in the list; each technique validates its own options (``Options``) here too, so a bad
    recipe fails before training rather than after it."""
    stages = []
    for i, item in enumerate(items):
        where = f"compress[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(
                f"{where}: each stage is a mapping of one technique to its options, e.g. "
                f"{{prune: {{method: channels, amount: 0.5}}}}; got {item!r:.80}. "
                f"Techniques: {', '.join(STAGES)}."
            )
        ((name, options),) = item.items()
        if name not in STAGES:
            raise RecipeError(
                f"{where}: unknown technique {name!r}. Allowed: {', '.join(STAGES)}."
                f"{did_you_mean(name, STAGES)}"
            )
        if options is not None and not isinstance(options, dict):
            raise RecipeError(f"{where}.{name}: expected a mapping of options, got {options!r:.80}.")
        options = dict(options or {})
        accept = _validated(AcceptIf, options.pop("accept_if", None) or {}, f"{where}.{name}.accept_if")
        _validated(technique(name).Options, options, f"{where}.{name}")
        stages.append((name, options, accept))
    return stages


def technique(name: str):
    return importlib.import_module(STAGES[name])


def _validated(model: type[BaseModel], options: dict, where: str) -> BaseModel:
    try:
        return model(**options)
    except ValidationError as exc:
        allowed = ", ".join(model.model_fields)
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(
                    f"{where}.{key}: unknown option. Allowed: {allowed}."
                    f"{did_you_mean(key, list(model.model_fields))}"
                )
            else:
                problems.append(
                    f"{where}.{key}: {err['msg'].removeprefix('Value error, ')} "
                    f"(got {err.get('input')!r:.60})."
                )
        raise RecipeError(" ".join(problems)) from None
    except TypeError as exc:
        raise RecipeError(f"{where}: {exc}.") from None


def run_stages(
    model: nn.Module,
    task,
    splits: dict[str, Records],
    recipe,
    run_dir: Path,
    baseline_weights: Path,
    progress: bool = False,
) -> list[dict]:
    """Run the recipe's ``compress:`` stages on a trained ``model``; returns the report's rows (the
    trained model first) and writes them to ``compress/report.json``. Every stage is judged against the
    trained model: its metric drop and its speedup (timed side by side with it)."""
    stages = parse_stages(recipe.compress)
    held_out = splits.get("test") or splits.get("validation")
    if held_out is None or not len(held_out):
        raise RecipeError(
            "compress: stages are judged on held-out data, but the run has no test or validation split."
        )
    metric_name, higher = measure.primary_metric(task)
    batches = measure.example_batches(task, held_out)
    root = Path(run_dir) / "compress"
    if root.exists():  # a new compression of this run replaces the last one's results
        shutil.rmtree(root)
    root.mkdir(parents=True)

    def judged(m: nn.Module, weights: Path) -> dict:
        metrics = measure.task_metrics(m, task, held_out, recipe.train.evaluation_batch_size, "cpu")
        return {"metric": float(metrics[metric_name]), "metrics": _scalars(metrics),
                "params": measure.parameters(m), "size_bytes": measure.file_size(weights)}  # fmt: skip

    model = model.eval()
    rows = [{"stage": "trained", "folder": None, **judged(model, baseline_weights), "accepted": True,
             "why": "the trained model (the baseline)"}]  # fmt: skip
    models = {"trained": model}
    current = "trained"
    for i, (name, options, accept) in enumerate(stages):
        label = f"{i + 1}-{name}"
        folder = root / label
        folder.mkdir()
        if progress:
            print(f"compress: stage {label} on the {current} model", flush=True)
        module = technique(name)
        out = module.apply(
            StageContext(
                models[current], task, splits, recipe, folder, recipe.seed, progress, f"compress[{i}].{name}"
            ),
            options,
        )
        write_json(folder / "model.json", {"stage": name, "options": options, "input": current, **out.spec})
        tensors = out.tensors if out.tensors is not None else out.model.state_dict()
        save_tensors(folder / "model.safetensors", dict(tensors), {"format": "pt"})
        # What is measured is what is on disk: the model rebuilt from the stage's files.
        rebuilt = module.load(out.spec, load_tensors(folder / "model.safetensors"), task).eval()
        models[label] = rebuilt
        row = {"stage": label, "folder": str(folder.relative_to(run_dir)), "input": current,
               **judged(rebuilt, folder / "model.safetensors"), "notes": list(out.notes)}  # fmt: skip
        timed = measure.time_models({"trained": model, label: rebuilt}, task, batches)
        row["speedup"] = timed["trained"]["latency_ms_p50"] / timed[label]["latency_ms_p50"]
        row["metric_drop"] = _drop(rows[0]["metric"], row["metric"], higher)
        reasons = _refusals(accept, row, metric_name)
        row["accepted"], row["why"] = not reasons, "; ".join(reasons) or "accepted"
        if not reasons:
            current = label  # the next stage starts from this one; a refused stage is left aside
        if progress:
            print(f"compress: {label}: {metric_name} {row['metric']:.4f}, {row['speedup']:.2f}x, "
                  f"{row['why']}", flush=True)  # fmt: skip
        write_json(folder / "metrics.json", row)
        rows.append(row)
    # The report's figures: every model timed side by side in the same rounds.
    for row, timing in zip(rows, measure.time_models(models, task, batches).values(), strict=True):
        row.update(timing, metric_name=metric_name)
    write_json(Path(run_dir) / REPORT, {"metric": metric_name, "higher_is_better": higher, "stages": rows})
    return rows


def _refusals(accept: AcceptIf, row: dict, metric_name: str) -> list[str]:
    reasons = []
    if accept.max_metric_drop is not None and row["metric_drop"] > accept.max_metric_drop:
        reasons.append(
            f"{metric_name} dropped {row['metric_drop']:.2f} points (accept_if.max_metric_drop "
            f"{accept.max_metric_drop:g})"
        )
    if accept.min_speedup is not None and row["speedup"] < accept.min_speedup:
        reasons.append(f"{row['speedup']:.2f}x faster (accept_if.min_speedup {accept.min_speedup:g})")
    return reasons


def _drop(base: float, new: float, higher: bool) -> float:
    """Points lost: 100 x the metric for metrics in [0, 1], the metric's own units otherwise; a gain
    is a negative drop."""
    scale = 100.0 if 0.0 <= base <= 1.0 and 0.0 <= new <= 1.0 else 1.0
    return (base - new) * scale if higher else (new - base) * scale


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
