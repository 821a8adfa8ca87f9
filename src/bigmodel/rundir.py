"""A run directory, opened: every file it holds checked, then the model and the fitted task rebuilt.

``open_run`` is the one way in (evaluate, predict, resume and later stages use it). A finished run is
first checked against its ``manifest.json`` (hub/manifest.py); then each file is validated — the JSON
files' shape and keys, the recipe, the task's state (tasks/__init__.py), the weights' names, shapes,
dtypes and finiteness against the model that model.json describes (hub/files.py). Anything wrong
is a :class:`~bigmodel.errors.RunDirError` naming the file and what is wrong; nothing is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bigmodel import recipe as recipes
from bigmodel.compress.lora import add_lora, lora_options, merge_lora
from bigmodel.data import SPLITS
from bigmodel.errors import RecipeError, RunDirError, UserError, did_you_mean
from bigmodel.hub.files import load_weights
from bigmodel.hub.manifest import MANIFEST, verify_manifest
from bigmodel.models.registry import family_names, get_family
from bigmodel.recipe import Recipe
from bigmodel.tasks import restore_task
from bigmodel.training.checkpoint import STATE_DIR

MODEL_FORMAT = 1  # model.json's format version
RUN_FILES = ("recipe.yaml", "model.json", "task.json", "data.json", "model.safetensors")
# What training (re)writes after the run directory's inputs: a resumed run's manifest may not match them.
# task.json too: a task may fix what it chose on the validation split (Task.calibrate) after training
TRAINING_OUTPUTS = ("model.safetensors", "metrics.jsonl", "eval.json", "summary.json", "task.json")


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


def check_run_dir(path: str | Path, need=RUN_FILES) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise RunDirError(f"run: expected a run directory (a path or a Run), got {type(path).__name__}.")
    path = Path(path)
    if not path.is_dir():
        what = "a file, not a run directory" if path.exists() else "no such run directory"
        raise RunDirError(f"{path}: {what}. Runs are made by 'bigmodel train' under ./runs/.")
    missing = [name for name in need if not (path / name).is_file()]
    if missing:
        runs = sorted(p.parent for p in path.glob("*/model.json"))
        hint = f" Did you mean the latest run inside it, '{runs[-1]}'?" if runs else ""
        unfinished = " (it was interrupted: continue it with --resume)" if (path / STATE_DIR).is_dir() else ""
        raise RunDirError(
            f"{path}: not a finished run directory{unfinished}; it lacks {', '.join(missing)}.{hint}"
        )
    return path


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: damaged or unreadable ({exc}).") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: damaged: expected a JSON object, found {type(data).__name__}.")
    return data


def _require(data: dict, path: Path, key: str, kind: type | tuple, what: str):
    """``data[key]``, refused naming the file and the key when it is missing or not ``kind``."""
    if key not in data:
        raise RunDirError(f"{path}: damaged: missing key {key!r} ({what}).")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RunDirError(
            f"{path}: damaged: {key!r} should be {what}, found {type(value).__name__} {value!r:.60}."
        )
    return value


def _model_spec(path: Path) -> dict:
    """model.json: format, and ``family`` + ``config`` (checked against the family) or ``module``."""
    spec = read_json(path)
    if spec.get("format") != MODEL_FORMAT:
        raise RunDirError(
            f"{path}: format {spec.get('format')!r}; this version of bigmodel reads format {MODEL_FORMAT}. "
            "Retrain the run with this version."
        )
    if "module" in spec:
        _require(spec, path, "module", str, "the 'package.module:Class' of your own module")
        return spec
    name = _require(spec, path, "family", str, "a model family name")
    if ":" not in name and name not in family_names():
        raise RunDirError(
            f"{path}: unknown model family {name!r}. Known: {', '.join(family_names())}."
            f"{did_you_mean(name, family_names())}"
        )
    try:
        family = get_family(name)
    except UserError as exc:
        raise RunDirError(f"{path}: the model family {name!r} cannot be loaded: {exc}") from None
    config = _require(spec, path, "config", dict, f"an object of the '{name}' config's fields")
    unknown = sorted(set(config) - set(family.config_fields()))
    if unknown:
        raise RunDirError(
            f"{path}: config: unknown fields for model family '{name}': {', '.join(map(str, unknown))}. "
            f"Allowed: {', '.join(family.config_fields())}."
        )
    return spec


def _data_info(path: Path) -> dict:
    """data.json: where the data came from, its fingerprint, the split sizes and the notes."""
    info = read_json(path)
    _require(info, path, "source", str, "the recipe's data.source")
    _require(info, path, "fingerprint", str, "the data's fingerprint")
    sizes = _require(info, path, "split_sizes", dict, "an object of split name -> number of examples")
    for split, size in sizes.items():
        if split not in SPLITS or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RunDirError(
                f"{path}: damaged: split_sizes.{split} = {size!r}; expected a count of examples for one of "
                f"{', '.join(SPLITS)}."
            )
    notes = _require(info, path, "notes", list, "a list of notes")
    if not all(isinstance(note, str) for note in notes):
        raise RunDirError(f"{path}: damaged: 'notes' should be a list of strings.")
    return info


def _run_recipe(path: Path) -> Recipe:
    try:
        return recipes.load_recipe(path)
    except RecipeError as exc:
        reason = " ".join(str(exc).removeprefix(f"{path}: ").split())  # one paragraph
        raise RunDirError(f"{path}: damaged: {reason}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: damaged or unreadable ({exc}).") from None


def _build_model(task, spec: dict, path: Path, merged: bool = True) -> nn.Module:
    """The model model.json describes, built by the task; a config it refuses names model.json.
    With an ``adapter`` (LoRA), the adapters are added; ``merge`` means model.safetensors holds them
    folded into the base (``merged``), while a checkpoint being resumed holds them apart."""
    name = spec["family"]
    try:
        model = task.build_model(get_family(name), spec["config"], None)
    except (UserError, TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise RunDirError(f"{path}: its config does not build a '{name}' model: {exc}") from None
    adapter = spec.get("adapter")
    if adapter is not None:
        try:
            add_lora(model, **lora_options(adapter["lora"]))
        except (UserError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise RunDirError(f"{path}: damaged: its 'adapter' does not apply to the model: {exc}") from None
        if merged and adapter.get("merge") is True:
            merge_lora(model)
    return model


def open_run(
    path: str | Path, model: nn.Module | None = None, weights: bool = True
) -> tuple[nn.Module, Any, dict]:
    """Rebuild a run's model and fitted task from its directory alone, checking every file it reads.

    A finished run's files are first checked against its ``manifest.json`` (sizes and SHA-256), then
    each is validated: the JSON files' shape and keys, the recipe, the task's state, and the weights'
    tensor names, shapes, dtypes and finiteness against the model model.json describes.

    Args:
        path: the run directory (or a :class:`Run`).
        model: your own module, for a run trained with :func:`fit` on a module bigmodel cannot rebuild.
        weights: load ``model.safetensors`` (False for a run being resumed: the checkpoint has them;
            an unfinished run has no manifest yet; a finished one is checked but for the files
            training rewrites, :data:`TRAINING_OUTPUTS`).

    Returns:
        ``(model, task, info)``: the module in eval mode, the fitted task, and ``info`` (``run_dir``,
        ``recipe``, data.json's fields).

    Raises:
        RunDirError: naming the file that is missing, damaged, changed or inconsistent, and what is wrong.
    """
    run_dir = check_run_dir(path.path if isinstance(path, Run) else path,
                             RUN_FILES if weights else RUN_FILES[:-1])  # fmt: skip
    if weights:
        verify_manifest(run_dir)
    elif (run_dir / MANIFEST).is_file():  # a finished run being resumed: what training rewrites may differ
        verify_manifest(run_dir, skip=TRAINING_OUTPUTS)
    for other in sorted(run_dir.glob("*.json")):  # tokenizer.json, eval.json, ...: readable objects
        read_json(other)
    spec = _model_spec(run_dir / "model.json")
    state = read_json(run_dir / "task.json")
    info = _data_info(run_dir / "data.json")
    recipe = _run_recipe(run_dir / "recipe.yaml")
    task = restore_task(state, run_dir)
    if "module" in spec:
        if model is None:
            raise RunDirError(
                f"{run_dir}: trained on your own module {spec['module']}; "
                "pass it: bigmodel.load(run, model=...)."
            )
        source = f"your module (model.json: {spec['module']})"
    elif model is None:
        model = _build_model(task, spec, run_dir / "model.json", merged=weights)
        source = "the model in model.json"
    else:
        source = f"the module you passed ({type(model).__name__})"
    if weights:
        load_weights(model, run_dir / "model.safetensors", source)
    return model.eval(), task, {**info, "run_dir": run_dir, "recipe": recipe}
