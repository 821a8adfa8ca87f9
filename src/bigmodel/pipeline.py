"""The one module that wires the stages together: recipe → data → model → train → evaluate.

Every stage reads and writes the run directory (see DESIGN.md), so ``evaluate`` and ``load`` work
on any finished or interrupted run, on any machine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel import recipe as recipes
from bigmodel.data import Normalizer, load_source, split_indices
from bigmodel.errors import DataError, RecipeError, RunDirError, did_you_mean
from bigmodel.evaluate.metrics import scalar_metrics
from bigmodel.hub.files import load_weights, save_weights, write_json, write_text
from bigmodel.models.base import predict_outputs
from bigmodel.models.registry import build_config, get_family
from bigmodel.recipe import Recipe
from bigmodel.serve import Predictor
from bigmodel.tasks import create_task, restore_task
from bigmodel.train.checkpoint import STATE_DIR
from bigmodel.train.loop import fit

SPLITS = ("train", "validation", "test")


@dataclass
class Run:
    """A run directory and what training measured.

    Attributes:
        path: the run directory.
        recipe: the resolved recipe.
        metrics: ``{"train": {...}, "validation": {...}, "test": {...}}`` single-number metrics.
    """

    path: Path
    recipe: Recipe
    metrics: dict


def load_recipe(source: str | Path | Mapping | Recipe, **overrides: Any) -> Recipe:
    """Load a recipe (path, shipped name or dict) with overrides and check its model options.

    Overrides are dotted (``**{"train.epochs": 5}``) or nested (``train={"epochs": 5}``).
    """
    recipe = recipes.load_recipe(source, overrides)
    family = get_family(recipe.model.arch)
    known = {f.name for f in dataclasses.fields(family.config_cls)}
    for key in recipe.model.options():
        if key not in known:
            raise RecipeError(
                f"model.{key}: unknown option for model '{family.name}'. "
                f"Allowed: {', '.join(sorted(known))}.{did_you_mean(key, known)}"
            )
    return recipe


# --- data ------------------------------------------------------------------------------------------


def _split_data(recipe: Recipe, task, fit_task: bool):
    """Load the source and split it; fit the task's label vocabulary/scaling on the train split."""
    cfg = recipe.data
    if not cfg.source.startswith("builtin:") and cfg.label is None:
        raise RecipeError(
            f"data.label: required for {cfg.source.split(':')[0]} sources; name the target column."
        )
    table = load_source(cfg.source, cfg.features, cfg.label)
    strata = np.asarray([str(t) for t in table.targets]) if task.name == "classification" else None
    indices = split_indices(len(table.features), cfg.split.validation, cfg.split.test, recipe.seed, strata)
    if fit_task:
        task.fit(table.targets[indices["train"]])
    return table, indices


def _tensors(table, indices, normalizer, task, name):
    idx = indices[name]
    x = torch.from_numpy(normalizer(table.features[idx]))
    return x, task.encode(table.targets[idx], where=f"{name} split")


def _score(model, task, x: torch.Tensor, y: torch.Tensor) -> dict:
    outputs = predict_outputs(model, x)
    return {**task.metrics(outputs, y), "loss": float(task.loss(outputs, y))}


# --- train -----------------------------------------------------------------------------------------


def train(
    recipe: str | Path | Mapping | Recipe,
    output: str | Path = "runs",
    resume: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Run:
    """Train a recipe end to end and evaluate it on the validation and test splits.

    Args:
        recipe: a path, a shipped recipe name, a dict or a Recipe. Ignored with ``resume``.
        output: parent folder of run directories (``output/<recipe name>/<timestamp>``).
        resume: an interrupted run directory to continue exactly where its last checkpoint left off.
        progress: show progress (a bar on a terminal, plain lines otherwise).
        **overrides: recipe overrides, dotted or nested (``train={"epochs": 2}``).

    Returns:
        The :class:`Run`, with ``run.path`` and ``run.metrics``.
    """
    if resume is not None:
        run_dir = _check_run_dir(resume, need=("recipe.yaml",))
        if overrides:
            raise RecipeError(
                "--resume continues a run with its own recipe; overrides are not allowed with it."
            )
        recipe = load_recipe(run_dir / "recipe.yaml")
    else:
        recipe = load_recipe(recipe, **overrides)
        run_dir = _new_run_dir(Path(output), recipe.name)

    task = create_task(recipe.task)
    table, indices = _split_data(recipe, task, fit_task=True)
    normalizer = Normalizer(recipe.data.normalize).fit(table.features[indices["train"]])
    data = {name: _tensors(table, indices, normalizer, task, name) for name in SPLITS if len(indices[name])}

    torch.manual_seed(recipe.seed)  # weight initialisation
    family = get_family(recipe.model.arch)
    options = {"input_shape": table.feature_shape, "num_outputs": task.num_outputs, **recipe.model.options()}
    config = build_config(family, options)
    model = family.model_cls(config)

    if resume is None:
        write_text(run_dir / "recipe.yaml", recipes.to_yaml(recipe))
        write_json(run_dir / "model.json", {"family": family.name, "config": dataclasses.asdict(config)})
        write_json(
            run_dir / "data.json",
            {
                "source": recipe.data.source,
                "fingerprint": table.fingerprint,
                "feature_names": table.feature_names,
                "input_shape": list(table.feature_shape),
                "normalizer": normalizer.to_dict(),
                "task": task.state(),
                "split_sizes": {name: len(idx) for name, idx in indices.items()},
            },
        )

    result = fit(
        model,
        task,
        data["train"],
        data.get("validation"),
        recipe.train,
        run_dir,
        recipe.seed,
        resume=resume is not None,
        show_progress=progress,
    )
    save_weights(model, run_dir / "model.safetensors")

    report = {name: _score(model, task, x, y) for name, (x, y) in data.items() if name != "train"}
    write_json(run_dir / "eval.json", report)
    metrics = {
        "train": {
            "steps": result.steps,
            "epochs": result.epochs,
            "time_s": round(result.time_s, 3),
            "samples_per_s": round(result.samples_per_s, 1),
            "stopped_early": result.stopped_early,
            "params": sum(p.numel() for p in model.parameters()),
            **({"best": result.best} if result.best else {}),
        },
        **{name: scalar_metrics(m) for name, m in report.items()},
    }
    write_json(run_dir / "summary.json", metrics)
    return Run(run_dir, recipe, metrics)


def _new_run_dir(output: Path, name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        path = output / name / f"{stamp}{suffix}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"{output / name}: could not create a new run directory.")


# --- evaluate and predict --------------------------------------------------------------------------


def _check_run_dir(
    path: str | Path, need=("recipe.yaml", "model.json", "data.json", "model.safetensors")
) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory. Runs are made by 'bigmodel train' under ./runs/.")
    missing = [name for name in need if not (path / name).is_file()]
    if missing:
        runs = sorted(p.parent for p in path.glob("*/model.json"))
        hint = f" Did you mean the latest run inside it, '{runs[-1]}'?" if runs else ""
        unfinished = " (it was interrupted: continue it with --resume)" if (path / STATE_DIR).is_dir() else ""
        raise RunDirError(
            f"{path}: not a finished run directory{unfinished}; it lacks {', '.join(missing)}.{hint}"
        )
    return path


def _open_run(path: str | Path):
    """Rebuild the trained model, fitted task and normaliser from a run directory."""
    run_dir = _check_run_dir(path)
    try:
        info = json.loads((run_dir / "data.json").read_text(encoding="utf-8"))
        spec = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{run_dir}: damaged metadata file: {exc}.") from None
    family = get_family(spec["family"])
    model = family.model_cls(family.config_cls(**spec["config"]))
    load_weights(model, run_dir / "model.safetensors")
    return run_dir, model.eval(), restore_task(info["task"]), Normalizer.from_dict(info["normalizer"]), info


def evaluate(run: Run | str | Path, split: str = "test") -> dict:
    """Evaluate a trained run on one split of its own data and record it in ``eval.json``.

    Returns:
        The full metrics (scalars, per-class table and confusion matrix for classification).
    """
    if split not in SPLITS:
        raise RunDirError(
            f"--split: unknown split {split!r}. Allowed: {', '.join(SPLITS)}.{did_you_mean(split, SPLITS)}"
        )
    run_dir, model, task, normalizer, info = _open_run(run.path if isinstance(run, Run) else run)
    recipe = load_recipe(run_dir / "recipe.yaml")
    table, indices = _split_data(recipe, task, fit_task=False)
    if table.fingerprint != info["fingerprint"]:
        raise DataError(
            f"{recipe.data.source}: the data changed since this run was trained, so its '{split}' split "
            f"would not be the held-out one. Evaluate on the original file."
        )
    if not len(indices[split]):
        raise RecipeError(
            f"--split {split}: this run's recipe holds out no {split} data (data.split.{split} = 0)."
        )
    metrics = _score(model, task, *_tensors(table, indices, normalizer, task, split))
    path = run_dir / "eval.json"
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json(path, {**report, split: metrics})
    return metrics


def load(run: Run | str | Path) -> Predictor:
    """Load a trained run for prediction: ``bigmodel.load(path).predict(rows)``."""
    _, model, task, normalizer, info = _open_run(run.path if isinstance(run, Run) else run)
    return Predictor(model, task, normalizer, info["feature_names"], tuple(info["input_shape"]))
