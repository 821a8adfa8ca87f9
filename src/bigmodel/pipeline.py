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
from bigmodel.hub.pretrained import PretrainedError, from_pretrained, resolve_folder
from bigmodel.hub.tokenizers import TextTokenizer, TokenizerError, load_tokenizer
from bigmodel.models.base import predict_outputs
from bigmodel.models.registry import all_families, build_config, get_family
from bigmodel.recipe import Recipe
from bigmodel.serve import Predictor
from bigmodel.tasks import ClassificationTask, TextClassifier, create_task, restore_task
from bigmodel.train.checkpoint import STATE_DIR
from bigmodel.train.loop import fit

SPLITS = ("train", "validation", "test")
TEXT_FAMILIES = ("bert",)  # families text_classification can fine-tune: encoders with a [CLS] vector


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
    _check_text_and_pretrained(recipe, family)
    return recipe


def _check_text_and_pretrained(recipe: Recipe, family) -> None:
    """``model.pretrained`` and ``data.text`` come together, with task text_classification and bert."""
    model, data, task = recipe.model, recipe.data, recipe.task.name
    if model.pretrained is not None and "hf" not in family.formats:
        able = [f.name for f in all_families() if "hf" in f.formats]
        raise RecipeError(
            f"model.pretrained: model '{family.name}' has no Hugging Face checkpoint format, so it cannot "
            f"start from {model.pretrained!r}. Families that load one: {', '.join(able)}."
        )
    if task != "text_classification":
        if data.text is not None:
            raise RecipeError(
                f"data.text: only task text_classification reads a text column (the task is {task}). "
                "Set task: text_classification, or remove data.text."
            )
        if model.pretrained is not None:
            raise RecipeError(
                f"model.pretrained: fine-tuning a pretrained checkpoint is supported for task "
                f"text_classification (with model.arch bert); the task is {task}."
            )
        return
    if family.name not in TEXT_FAMILIES:
        raise RecipeError(
            f"model.arch: task text_classification needs a text encoder: {', '.join(TEXT_FAMILIES)} "
            f"(got '{family.name}')."
        )
    if data.text is None:
        raise RecipeError("data.text: task text_classification needs the name of the text column.")
    if data.features:
        raise RecipeError("data.features: task text_classification reads only data.text; remove it.")
    if model.pretrained is None:
        raise RecipeError(
            "model.pretrained: task text_classification fine-tunes a pretrained checkpoint; set it to a "
            "Hugging Face folder or Hub repo id (its tokenizer turns the text into tokens)."
        )


# --- data ------------------------------------------------------------------------------------------


def _split_data(recipe: Recipe, task, fit_task: bool):
    """Load the source and split it; fit the task's label vocabulary/scaling on the train split."""
    cfg = recipe.data
    if not cfg.source.startswith("builtin:") and cfg.label is None:
        raise RecipeError(
            f"data.label: required for {cfg.source.split(':')[0]} sources; name the target column."
        )
    table = load_source(cfg.source, cfg.features, cfg.label, cfg.text)
    strata = np.asarray([str(t) for t in table.targets]) if isinstance(task, ClassificationTask) else None
    indices = split_indices(len(table.features), cfg.split.validation, cfg.split.test, recipe.seed, strata)
    if fit_task:
        task.fit(table.targets[indices["train"]])
    return table, indices


def _tensors(table, indices, normalizer, tokenizer, max_length, task, name) -> tuple[torch.Tensor, ...]:
    """One split as ``(*inputs, targets)``: normalised features, or token ids and attention mask
    (padded to the split's longest text, truncated at ``max_length``)."""
    idx = indices[name]
    if tokenizer is None:
        inputs = (torch.from_numpy(normalizer(table.features[idx])),)
    else:
        batch = tokenizer.encode(list(table.texts[idx]), max_length=max_length, return_token_type_ids=False)
        inputs = (batch["input_ids"], batch["attention_mask"])
    return (*inputs, task.encode(table.targets[idx], where=f"{name} split"))


def _score(model, task, *data: torch.Tensor) -> dict:
    *inputs, targets = data
    outputs = predict_outputs(model, *inputs)
    return {**task.metrics(outputs, targets), "loss": float(task.loss(outputs, targets))}


# --- model -----------------------------------------------------------------------------------------


def _pretrained_text_model(recipe: Recipe, task) -> tuple[torch.nn.Module, TextTokenizer]:
    """The ``model.pretrained`` backbone (other model keys override its config) with the task's head,
    and the checkpoint's tokenizer."""
    try:
        folder = resolve_folder(recipe.model.pretrained)
    except PretrainedError as exc:
        raise PretrainedError(f"model.pretrained: {exc}") from None
    try:
        tokenizer = load_tokenizer(folder)
    except TokenizerError as exc:
        raise RecipeError(
            f"model.pretrained: {exc} A text model needs the tokenizer it was trained with, in its folder."
        ) from None
    backbone = from_pretrained(folder, **recipe.model.options())
    family = get_family(recipe.model.arch)
    if type(backbone) is not family.model_cls:
        raise RecipeError(
            f"model.arch: '{family.name}', but model.pretrained {recipe.model.pretrained!r} holds a "
            f"{type(backbone).__name__} checkpoint."
        )
    config = backbone.config
    if recipe.data.max_length > config.max_positions:
        raise RecipeError(
            f"data.max_length: {recipe.data.max_length} exceeds the model's {config.max_positions} positions."
        )
    if tokenizer.vocab_size > config.vocab_size:
        raise RecipeError(
            f"model.pretrained: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size} embeddings; the folder's tokenizer does not belong to its weights."
        )
    return task.build_model(backbone), tokenizer


def _rebuild_model(spec: dict) -> torch.nn.Module:
    """The module model.json describes: a family model, or a text backbone with its task head."""
    family = get_family(spec["family"])
    model = family.model_cls(family.config_cls(**spec["config"]))
    if "head" in spec:
        head = dict(spec["head"])
        if head.pop("task") != "text_classification":
            raise RunDirError(f"model.json: unknown head {spec['head']!r}.")
        model = TextClassifier(model, **head)
    return model


# --- train -----------------------------------------------------------------------------------------


def _build_model(recipe: Recipe, task, table, resumed_run: Path | None):
    """The model to train, its tokenizer (text tasks) and its model.json spec.

    A resumed text run is rebuilt from its own run directory (the checkpoint supplies the weights),
    never from the pretrained folder, which may have moved.
    """
    if recipe.data.text is None:
        family = get_family(recipe.model.arch)
        options = {"input_shape": table.feature_shape, "num_outputs": task.num_outputs}
        config = build_config(family, {**options, **recipe.model.options()})
        return family.model_cls(config), None, {"family": family.name, "config": dataclasses.asdict(config)}
    if resumed_run is None:
        model, tokenizer = _pretrained_text_model(recipe, task)
        spec = {"family": recipe.model.arch, "config": dataclasses.asdict(model.backbone.config)}
        return model, tokenizer, {**spec, "head": model.head_spec()}
    spec = json.loads((resumed_run / "model.json").read_text(encoding="utf-8"))
    return _rebuild_model(spec), load_tokenizer(resumed_run), spec


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

    task = create_task(recipe.task)
    table, indices = _split_data(recipe, task, fit_task=True)
    text = recipe.data.text
    normalizer = Normalizer("none" if text else recipe.data.normalize).fit(table.features[indices["train"]])
    torch.manual_seed(recipe.seed)  # weight initialisation
    model, tokenizer, spec = _build_model(recipe, task, table, run_dir if resume is not None else None)
    data = {
        name: _tensors(table, indices, normalizer, tokenizer, recipe.data.max_length, task, name)
        for name in SPLITS
        if len(indices[name])
    }

    if resume is None:  # only now, with data and model checked, does the run directory appear
        run_dir = _new_run_dir(Path(output), recipe.name)
        write_text(run_dir / "recipe.yaml", recipes.to_yaml(recipe))
        write_json(run_dir / "model.json", spec)
        if tokenizer is not None:
            tokenizer.save(run_dir)
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
                **({"text": text, "max_length": recipe.data.max_length} if text else {}),
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

    report = {name: _score(model, task, *tensors) for name, tensors in data.items() if name != "train"}
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
    model = _rebuild_model(spec)
    load_weights(model, run_dir / "model.safetensors")
    tokenizer = None
    if info.get("text"):
        if not (run_dir / "tokenizer.json").is_file():
            raise RunDirError(f"{run_dir}: a text run, but it lacks tokenizer.json.")
        tokenizer = load_tokenizer(run_dir)
    normalizer = Normalizer.from_dict(info["normalizer"])
    return run_dir, model.eval(), restore_task(info["task"]), normalizer, tokenizer, info


def evaluate(run: Run | str | Path, split: str = "test") -> dict:
    """Evaluate a trained run on one split of its own data and record it in ``eval.json``.

    Returns:
        The full metrics (scalars, per-class table and confusion matrix for classification).
    """
    if split not in SPLITS:
        raise RunDirError(
            f"--split: unknown split {split!r}. Allowed: {', '.join(SPLITS)}.{did_you_mean(split, SPLITS)}"
        )
    run_dir, model, task, normalizer, tokenizer, info = _open_run(run.path if isinstance(run, Run) else run)
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
    tensors = _tensors(table, indices, normalizer, tokenizer, info.get("max_length"), task, split)
    metrics = _score(model, task, *tensors)
    path = run_dir / "eval.json"
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json(path, {**report, split: metrics})
    return metrics


def load(run: Run | str | Path) -> Predictor:
    """Load a trained run for prediction: ``bigmodel.load(path).predict(rows)``."""
    _, model, task, normalizer, tokenizer, info = _open_run(run.path if isinstance(run, Run) else run)
    return Predictor(
        model,
        task,
        normalizer,
        info["feature_names"],
        tuple(info["input_shape"]),
        tokenizer=tokenizer,
        text=info.get("text"),
        max_length=info.get("max_length"),
    )
