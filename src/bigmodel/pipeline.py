"""The one module that wires the stages together: recipe → data → task → model → train → evaluate.

It knows no task: what a record means, the model's head, the loss and the metrics all come from the
task (``tasks/``). Every stage reads and writes the run directory (see docs/design.md), so
``evaluate`` and ``load`` work on any finished run, on any machine, through
:func:`~bigmodel.rundir.open_run`, which checks every file it reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel import recipe as recipes
from bigmodel.compress.lora import add_lora, lora_options, merge_lora
from bigmodel.compress.stages import parse_stages, run_stages
from bigmodel.data import SPLITS, ColumnRecords, Records, open_external, open_splits
from bigmodel.data.records import write_jsonl
from bigmodel.errors import DataError, RecipeError, RunDirError, UserError, did_you_mean
from bigmodel.evaluation.metrics import scalar_metrics
from bigmodel.evaluation.report import write_report
from bigmodel.hub.files import save_weights, write_json, write_text
from bigmodel.hub.manifest import update_manifest, write_manifest
from bigmodel.hub.peft import AdapterError, save_peft_adapter
from bigmodel.hub.pretrained import save_pretrained
from bigmodel.models.registry import get_family
from bigmodel.recipe import Recipe
from bigmodel.rundir import MODEL_FORMAT, Run, check_run_dir, open_run
from bigmodel.serve import Predictor
from bigmodel.tasks import Task, create_task, restore_task
from bigmodel.training import dist as dists
from bigmodel.training import state
from bigmodel.training.checkpoint import finish_train_state, has_train_state
from bigmodel.training.loop import fit as fit_loop
from bigmodel.training.plan import parameter_report
from bigmodel.training.precision import resolve_precision
from bigmodel.training.validate import evaluate_records, resolve_device


def load_recipe(source: str | Path | Mapping | Recipe, **overrides: Any) -> Recipe:
    """Load a recipe (path, shipped name or dict) with overrides; check its model and task options.

    Overrides are dotted (``**{"train.epochs": 5}``) or nested (``train={"epochs": 5}``).
    """
    recipe = recipes.load_recipe(source, overrides)
    family = get_family(recipe.model.arch)
    known = family.config_fields()
    for key in recipe.model.options():
        if key not in known:
            raise RecipeError(
                f"model.{key}: unknown option for model '{family.name}'. "
                f"Allowed: {', '.join(sorted(known))}.{did_you_mean(key, known)}"
            )
    create_task(recipe).check(recipe, family)
    return recipe


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
    if resume is None and dists.launched_by_torchrun():
        resume = _restarted_run(recipe, Path(output), overrides)  # torchrun restarted the group
        overrides = {} if resume is not None else overrides
    if resume is not None:
        run_dir = check_run_dir(resume, need=("recipe.yaml", "model.json", "task.json", "data.json"))
        if overrides:
            raise RecipeError(
                "--resume continues a run with its own recipe; overrides are not allowed with it."
            )
        recipe = load_recipe(run_dir / "recipe.yaml")
    else:
        recipe = load_recipe(recipe, **overrides)
        parse_stages(recipe.compress)  # a bad compression stage fails now, not after training
    dist = _join(recipe, module=None)
    try:
        if resume is not None:
            model, task, info = open_run(run_dir, weights=False)  # checks every file it reads
            splits, fingerprint = _open_data(recipe, task)  # cleaned by the run's own fitted task
            if info["fingerprint"] != fingerprint:
                raise DataError(
                    f"{recipe.data.source}: the data changed since this run started, so resuming would train "
                    "on other examples and another split. Resume with the original data, or start a new run."
                )
            return _train(recipe, task, splits, fingerprint, Path(output), progress, resumed=(run_dir, model))
        task = create_task(recipe)
        splits, fingerprint = _open_data(recipe, task)
        return _train(recipe, task, splits, fingerprint, Path(output), progress)
    finally:
        if dist.active:
            dists.teardown()


def _join(recipe: Recipe, module) -> dists.Dist:
    """Join the process group when torchrun launched this process (else one process), refusing
    what the chosen strategy cannot do."""
    device = resolve_device(recipe.train.device)
    resolve_precision(recipe.train.precision, device)  # refused now, before a run directory appears
    dist, _ = dists.setup(device, recipe.train.distributed.strategy)
    if dist.active and dist.strategy == "fsdp":
        if module is not None:
            raise RecipeError(
                "train.distributed.strategy: 'fsdp' shards a model built from the recipe; a Python module "
                "trains with 'ddp'."
            )
        if recipe.model.adapter is not None:
            raise RecipeError(
                "train.distributed.strategy: 'fsdp' with model.adapter (LoRA) is not supported: LoRA "
                "trains few parameters, so 'ddp' costs little more memory. Use ddp."
            )
    return dist


LAUNCH_FILE = "launch.json"  # which torchrun launch trains a run: an elastic restart resumes it


def _restarted_run(recipe, output: Path, overrides: dict) -> Path | None:
    """After torchrun restarted a failed group (``--max-restarts``), the run directory its first
    attempt created (matched by torchrun's run id), to resume; None on a first attempt."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    name = load_recipe(recipe, **overrides).name
    for launch in sorted((output / name).glob(f"*/{LAUNCH_FILE}"), reverse=True):
        try:
            if json.loads(launch.read_text(encoding="utf-8")).get("run_id") == run_id:
                return launch.parent
        except (OSError, ValueError):
            continue
    return None


def plan(recipe: str | Path | Mapping | Recipe, nproc: int = 1, probe: bool = True, **overrides: Any) -> dict:
    """What training the recipe will cost before you spend it: parameters, FLOPs per step, memory per
    precision and strategy, a step-time estimate from a short measured probe, and whether it fits.

    Args:
        nproc: processes the run would use (memory per process under ddp/fsdp).
        probe: run the short measured probe (a few real steps and a matmul peak); False = analysis only.
    """
    from bigmodel.training.plan import training_plan

    recipe = load_recipe(recipe, **overrides)
    task = create_task(recipe)
    splits, _ = _open_data(recipe, task)
    task.fit(splits["train"])
    model, _ = _build_model(recipe, task)
    return training_plan(
        model, task, splits["train"], recipe.train, world_size=nproc, probe=probe, seed=recipe.seed
    )  # the probe times the run's own first batches


def export_data(
    recipe: str | Path | Mapping | Recipe,
    path: str | Path,
    split: str = "train",
    columns: list[str] | None = None,
    **overrides: Any,
) -> int:
    """Write one split of a recipe's data as JSON lines, exactly as training sees it (the recipe's
    source, split fractions, seed and the task's cleaning); returns the rows written.

    What it is for: pretraining on the train split's own text (``masked_lm`` on the train tweets, then
    fine-tuning on the labels) without one validation or test example leaking into the pretraining.

    Args:
        columns: the columns to write (default: all of them).
    """
    recipe = load_recipe(recipe, **overrides)
    _check_split_name(split, RecipeError)
    splits, _ = _open_data(recipe, create_task(recipe))
    records = _held_out(splits, split)
    return write_jsonl(records, path, columns or records.columns)


def _check_split_name(split: str, error: type[UserError]) -> None:
    """Refuse a split that is not train, validation or test, before any data is opened."""
    if split not in SPLITS:
        raise error(
            f"--split: unknown split {split!r}. Allowed: {', '.join(SPLITS)}.{did_you_mean(split, SPLITS)}"
        )


def _held_out(splits: dict[str, Records], split: str) -> Records:
    """``splits[split]``, refused naming the recipe field when the recipe holds none out."""
    if split not in splits:
        raise RecipeError(f"--split {split}: the recipe holds out no {split} data (data.split.{split} = 0).")
    return splits[split]


def _open_data(recipe: Recipe, task) -> tuple[dict[str, Records], str]:
    splits, fingerprint = open_splits(recipe.data, recipe.seed, task.strata)
    return {name: task.clean(records, name) for name, records in splits.items()}, fingerprint


def _train(recipe, task, splits, fingerprint, output: Path, progress: bool, module=None, resumed=None) -> Run:
    """Fit the task, build the model, train, evaluate, and fill the run directory; or, with
    ``resumed=(run_dir, model)``, continue that run from its last checkpoint.

    With many processes every rank trains and evaluates; rank 0 alone fits the task, creates and
    writes the run directory, compresses and reports, and the other ranks read the fitted task back.
    """
    dist = replace(dists.current(), strategy=recipe.train.distributed.strategy)
    progress = progress and dist.main
    if resumed is not None:
        run_dir, model = resumed
        if not has_train_state(run_dir):
            if (run_dir / "manifest.json").is_file():
                raise RunDirError(
                    f"{run_dir}: this run has finished and kept no checkpoint (train.keep_train_state = "
                    "none): there is nothing to resume. Start a new run to train further."
                )
            # Stopped before its first checkpoint: build the model as the fresh run did (its seed,
            # its pretrained weights), which is exact and free, where a step-0 checkpoint would
            # cost a model-sized write (~90 MB for MiniLM) and time at the start of every run.
            model, _ = _build_model(recipe, task)
    else:
        run_dir = None
        if dist.main:
            try:
                model, run_dir = _start_run(recipe, task, splits, fingerprint, output, progress, module)
            finally:
                dists.broadcast(str(run_dir) if run_dir else None, dist)  # the others wait for it
        else:
            run_dir = dists.broadcast(None, dist)
            if run_dir is None:
                raise RunDirError("rank 0 could not start the run (its message says why); this rank stops.")
            run_dir = Path(run_dir)
            task = restore_task(json.loads((run_dir / "task.json").read_text(encoding="utf-8")), run_dir)
            model = module if module is not None else _build_model(recipe, task)[0]  # the same seed

    params = parameter_report(model, recipe.train.optimizer.name)
    if progress:
        mib = {k: v / 2**20 for k, v in params["memory_bytes"].items()}
        print(
            f"parameters: {params['trainable_params']:,} trainable of {params['params']:,} "
            f"({params['trainable_percent']:.3g}%); weights {mib['weights']:.1f} MiB, gradients "
            f"{mib['gradients']:.1f} MiB, optimizer state {mib['optimizer_state']:.1f} MiB",
            flush=True,
        )
    result = fit_loop(
        model, task, splits["train"], splits.get("validation"), recipe.train, run_dir, recipe.seed,
        resume=resumed is not None, show_progress=progress,
    )  # fmt: skip
    trained = result.model  # the module that trained (DDP wrapper, FSDP-sharded, or the model itself)
    if dist.active and dist.strategy == "fsdp":  # a plain model with the whole weights, for what follows
        weights = state.full_model_state(trained, dist)
        if dist.main:
            model = _build_model(recipe, task)[0].to(next(iter(weights.values())).device)
            model.load_state_dict(weights)
    if result.precision.weight_dtype != torch.float32:
        model.float()  # bf16-true trained bf16 weights: kept exactly, stored and served as fp32
    if dist.main:
        if recipe.model.adapter is not None:
            _save_adapter(model, recipe, task, run_dir, progress)
        save_weights(model, run_dir / "model.safetensors")
        finish_train_state(run_dir, recipe.train.keep_train_state)

    device = next(trained.parameters()).device
    batch_size, workers = recipe.train.evaluation_batch_size, recipe.train.num_workers
    report = {}
    for name, records in splits.items():  # validation before test
        if name == "train":
            continue
        evaluated = trained if dist.active else model
        report[name] = evaluate_records(evaluated, task, records, batch_size, device, workers, dist=dist)
        if name == "validation" and task.calibrate(report[name]) and dist.main:  # a threshold, say
            write_json(run_dir / "task.json", task.state())
    metrics = {
        "train": {
            "steps": result.steps,
            "epochs": result.epochs,
            "time_s": round(result.time_s, 3),
            "samples_per_s": round(result.samples_per_s, 1),
            "stopped_early": result.stopped_early,
            **({"processes": dist.world, "strategy": dist.strategy} if dist.active else {}),
            **params,
            **({"best": result.best} if result.best else {}),
        },
        **{name: scalar_metrics(m) for name, m in report.items()},
    }
    if dist.main:
        write_json(run_dir / "eval.json", report)
        write_json(run_dir / "summary.json", metrics)
        write_manifest(run_dir)  # last: a run directory with a manifest is a finished one
        if recipe.compress:  # compress/ is a sub-folder: later stages' results, outside the manifest
            run_stages(model.cpu(), task, splits, recipe, run_dir, run_dir / "model.safetensors", progress)
        _finish_report(run_dir, model, task, splits, progress)
    dists.barrier(dist)
    return Run(run_dir, recipe, metrics)


def _start_run(recipe, task, splits, fingerprint, output: Path, progress: bool, module):
    """Fit the task, check the splits, build the model, and create the run directory with everything
    needed to rebuild them; returns ``(model, run_dir)``."""
    task.fit(splits["train"])
    for name, records in splits.items():
        task.validate(records, name)
    for note in task.notes():
        if progress:
            print(f"note: {note}", flush=True)
    if module is None:
        model, spec = _build_model(recipe, task)
    else:
        _check_module(module, task, splits["train"])
        model = module
        spec = {"format": MODEL_FORMAT, "module": _qualified_name(module)}
    # Only now, with data, task and model checked, does the run directory appear.
    run_dir = _new_run_dir(output, recipe.name)
    write_text(run_dir / "recipe.yaml", recipes.to_yaml(recipe))
    write_json(run_dir / "model.json", spec)
    write_json(run_dir / "task.json", task.state())
    task.save(run_dir)
    write_json(
        run_dir / "data.json",
        {
            "source": recipe.data.source,
            "fingerprint": fingerprint,
            "notes": task.notes(),
            "split_sizes": {name: len(records) for name, records in splits.items()},
        },  # fmt: skip
    )
    if dists.launched_by_torchrun():  # an elastic restart of this launch finds its run by this
        write_json(run_dir / LAUNCH_FILE, {"run_id": os.environ.get("TORCHELASTIC_RUN_ID", "")})
    return model, run_dir


def _finish_report(run_dir: Path, model: nn.Module, task, splits: dict, progress: bool) -> None:
    """report.html, written after the manifest: ``bigmodel report`` may rewrite it, so the manifest
    leaves it out (verify_manifest ignores added .html files). The run has finished by now, so a
    report that cannot be drawn is a note, never a failed run."""
    held_out = splits.get("test") or splits.get("validation")
    try:
        path = write_report(run_dir, _report_rows(model, task, held_out))
    except (UserError, OSError, ValueError, RuntimeError) as exc:
        if progress:
            print(f"note: report.html was not written: {exc}", flush=True)
        return
    if progress:
        print(f"report: {path}", flush=True)


REPORT_EXAMPLES = 64  # held-out examples predicted for the report's grid (it shows 24, wrong ones first)


def _report_rows(model: nn.Module, task, records: Records | None) -> list[dict] | None:
    """The task's report rows for the first held-out records (None when the task shows none)."""
    if records is None or not len(records) or type(task).report_rows is Task.report_rows:
        return None
    count = min(8 if hasattr(task, "stream") else REPORT_EXAMPLES, len(records))  # sampling text is slow
    sample = [records[i] for i in range(count)]
    return task.report_rows(sample, Predictor(model, task).predict(sample))


def _build_model(recipe: Recipe, task) -> tuple[nn.Module, dict]:
    """The recipe's model with the task's head (seeded: the same weights every time) and its LoRA
    adapters; and what model.json records to rebuild it."""
    torch.manual_seed(recipe.seed)  # weight initialisation
    family = get_family(recipe.model.arch)
    try:
        model = task.build_model(family, recipe.model.options(), recipe.model.pretrained)
    except RuntimeError as exc:
        if "allocate" not in str(exc):
            raise
        raise RecipeError(
            f"model: a '{recipe.model.arch}' with {recipe.model.options()} needs more memory than this "
            f"machine has ({str(exc).splitlines()[0][:160]}). Make it smaller."
        ) from None
    spec = {"format": MODEL_FORMAT, "family": recipe.model.arch, "config": task.model_config(model)}
    adapter = _add_adapter(model, recipe)
    if adapter is not None:  # open_run rebuilds base + adapter (merged into the base if "merge")
        spec["adapter"] = adapter
    return model, spec


def _add_adapter(model: nn.Module, recipe: Recipe) -> dict | None:
    """Put the recipe's LoRA adapters on the built model and freeze its base (the task's head trains);
    returns what model.json records for open_run to rebuild it, or None without ``model.adapter``."""
    adapter = recipe.model.adapter
    if adapter is None:
        return None
    options = lora_options(adapter.lora.model_dump())
    add_lora(model, **options)
    return {"lora": options, "merge": adapter.merge}


def _save_adapter(model: nn.Module, recipe: Recipe, task, run_dir: Path, progress: bool) -> None:
    """The PEFT files (adapter_model.safetensors + adapter_config.json) beside the run's weights; then,
    with ``model.adapter.merge``, the adapters folded into the weights model.safetensors holds."""
    adapter = recipe.model.adapter
    try:
        notes = save_peft_adapter(
            model, run_dir, get_family(recipe.model.arch), task.name, adapter.lora.dropout,
            recipe.model.pretrained,
        )  # fmt: skip
    except AdapterError as exc:
        notes = [f"no PEFT files: {exc}"]
    for note in notes:
        if progress:
            print(f"note: {note}", flush=True)
    if adapter.merge:
        merge_lora(model)


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


# --- your own module on your own arrays --------------------------------------------------------------


def fit(
    module: nn.Module,
    x,
    y,
    task: str = "classification",
    validation: float = 0.1,
    test: float = 0.0,
    epochs: int = 10,
    batch_size: int | str = 32,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    normalize: str = "none",
    seed: int = 0,
    name: str = "fit",
    output: str | Path = "runs",
    progress: bool = True,
    **train: Any,
) -> Run:
    """Train your own ``nn.Module`` on your own arrays, the way Keras' ``model.fit`` does.

    Args:
        module: called as ``module(x_batch)``; returns ``(B, classes)`` logits (classification) or
            ``(B, 1)`` (regression).
        x: features, an array (or tensor) ``(N, ...)``.
        y: labels or targets ``(N,)``.
        task: ``classification`` or ``regression`` (or another task that reads rows).
        validation, test: fractions held out (stratified for classification).
        epochs, batch_size, lr, optimizer, seed: as in a recipe's ``train`` section.
        normalize: ``none`` (your module sees x as given), ``standard`` or ``global`` (fitted on train).
        name, output: the run directory is ``output/name/<timestamp>``.
        **train: any other ``train`` field of a recipe (``grad_clip=1.0``, ``early_stopping={...}``).

    Returns:
        The :class:`Run`; ``bigmodel.load(run, model=module)`` predicts with it.
    """
    if not isinstance(module, nn.Module):
        raise UserError(f"module: expected a torch.nn.Module, got {type(module).__name__}.")
    x, y = _array("x", x, np.float32), _array("y", y, None)
    if x.ndim < 2 or len(x) != len(y) or y.ndim != 1:
        raise DataError(
            f"x, y: expected x of shape (N, ...) and y of shape (N,); got {x.shape} and {y.shape}."
        )
    recipe = load_recipe(
        {
            "name": name,
            "seed": seed,
            "data": {
                "source": "memory:arrays",
                "features": ["x"],
                "label": "label",
                "normalize": normalize,
                "split": {"validation": validation, "test": test},
            },  # fmt: skip
            "task": task,
            "model": {"arch": "mlp"},  # a placeholder the task checks against; the module is yours
            "train": {
                "epochs": epochs,
                "batch_size": batch_size,
                "optimizer": {"name": optimizer, "lr": lr},
                **train,
            },
        }
    )
    task_ = create_task(recipe)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + y.astype(str).tobytes()).hexdigest()
    records = ColumnRecords({"x": x.astype(np.float32), "label": y.tolist()}, "arrays", digest)
    splits, fingerprint = open_splits(recipe.data, recipe.seed, task_.strata, given={"data": records})
    splits = {n: task_.clean(r, n) for n, r in splits.items()}
    dist = _join(recipe, module)
    try:
        return _train(recipe, task_, splits, fingerprint, Path(output), progress, module=module)
    finally:
        if dist.active:
            dists.teardown()


def _array(name: str, value, dtype) -> np.ndarray:
    """A user's array (or tensor, or nested lists) as NumPy; numbers only for ``x``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        wanted = "numbers in a rectangular array (N, ...)" if dtype is not None else "one label per example"
        raise DataError(f"{name}: expected {wanted}; {exc}.") from None
    if array.dtype == object:
        raise DataError(f"{name}: expected one label per example (N,); got nested or mixed values.")
    return array


def _check_module(module: nn.Module, task, records: Records) -> None:
    """Call the user's module once on two examples, so a wrong output shape is a clear error now."""
    batch = task.collate([task.encode(records[i], None) for i in range(min(2, len(records)))])
    try:
        with torch.no_grad():
            outputs = task.forward(module, batch)
    except (IndexError, RuntimeError, ValueError, TypeError) as exc:
        name = type(module).__name__
        raise UserError(f"module: {name} cannot be called on this data's batches: {exc}") from None
    task.check_outputs(outputs, batch)


def _qualified_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


# --- open a run: evaluate and predict ---------------------------------------------------------------


def evaluate(
    run: Run | str | Path, split: str = "test", model: nn.Module | None = None, data: str | None = None
) -> dict:
    """Evaluate a trained run on one split of its own data, or of another source, and record it in
    ``eval.json``: under the split's name, or ``"SOURCE (split)"`` for another source.

    Args:
        data: another source (``builtin:NAME``, ``audio:FOLDER``, ``csv:FILE``...) with the columns
            the run's recipe names: its own ``split`` if it has splits, else all of it — how the model
            does on data from elsewhere (other voices, other recordings, another domain).

    Returns:
        The full metrics (scalars, per-class table and confusion matrix for classification).
    """
    _check_split_name(split, RunDirError)
    model, task, info = open_run(run, model=model)
    recipe, run_dir = info["recipe"], info["run_dir"]
    if data is not None:
        source = recipes.load_recipe(recipe, {"data.source": data}).data.source  # the schema checks it
        records, part = open_external(source, split, recipe.data.subset)
        records, key = task.clean(records, "test"), f"{source} ({part})"
    else:
        records, key = _own_split(recipe, task, info, split), split
    device = resolve_device(recipe.train.device)
    model.to(device)
    metrics = evaluate_records(model, task, records, recipe.train.evaluation_batch_size, device)
    path = run_dir / "eval.json"
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json(path, {**report, key: metrics})
    update_manifest(run_dir, ["eval.json"])
    return metrics


def _own_split(recipe: Recipe, task, info: dict, split: str) -> Records:
    """The run's own held-out ``split``, refused when the data changed since training."""
    if recipe.data.source.startswith("memory:"):
        raise RunDirError(
            f"{info['run_dir']}: trained on in-memory arrays (bigmodel.fit); its eval.json has its metrics."
        )
    splits, fingerprint = _open_data(recipe, task)
    if fingerprint != info["fingerprint"]:
        raise DataError(
            f"{recipe.data.source}: the data changed since this run was trained, so its '{split}' split "
            f"would not be the held-out one. Evaluate on the original file."
        )
    return _held_out(splits, split)


def export_pretrained(run: Run | str | Path, folder: str | Path | None = None) -> Path:
    """Write a run's model as a Hugging Face folder — ``config.json``, ``model.safetensors`` in the
    family's published layout, and the run's tokenizer — so another recipe starts from it
    (``model.pretrained: FOLDER``) and transformers reads it. A task's head is left out: the backbone
    is what another task builds on (a masked_lm run keeps BERT's own MLM head, which is the family's).

    Args:
        run: a finished run directory (or a :class:`Run`).
        folder: where to write; default ``RUN/hf`` (a sub-folder: the run's manifest is untouched).

    Returns:
        The folder.
    """
    model, task, info = open_run(run)
    backbone = getattr(model, "backbone", model)
    folder = Path(info["run_dir"]) / "hf" if folder is None else Path(folder)
    try:
        save_pretrained(backbone, folder)
    except (KeyError, ValueError, TypeError) as exc:
        raise RunDirError(
            f"{info['run_dir']}: its model ({type(backbone).__name__}) has no Hugging Face layout to "
            f"export to ({exc})."
        ) from None
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder


def compress_run(run: Run | str | Path, stages: list | None = None, progress: bool = True) -> list[dict]:
    """Run compression stages on a finished run: the recipe's ``compress:`` list, or ``stages`` (the
    same form: ``[{"prune": {...}}, {"quantize": {...}}]``). Each stage's model and metrics go to
    ``RUN/compress/<i>-<stage>/``, the trade-off table to ``RUN/compress/report.json``, and report.html
    is redrawn with its chart.

    Returns:
        One row per model (the trained one first): metric, size on disk, parameters, p50 latency at
        batch 1, throughput at batch 32, speedup, whether the stage was accepted and why.
    """
    model, task, info = open_run(run)
    recipe, run_dir = info["recipe"], info["run_dir"]
    if stages is not None:  # the run's recipe with other stages (validated as the recipe's own)
        recipe = load_recipe(recipe, compress=stages)
    if not recipe.compress:
        raise RecipeError(f"{run_dir}: its recipe has no compress: stages; give some (--stages FILE).")
    parse_stages(recipe.compress)
    if recipe.data.source.startswith("memory:"):
        raise RunDirError(f"{run_dir}: trained on in-memory arrays (bigmodel.fit), which are not kept.")
    splits, fingerprint = _open_data(recipe, task)
    if fingerprint != info["fingerprint"]:
        raise DataError(
            f"{recipe.data.source}: the data changed since this run was trained, so its held-out split "
            "would not be the one it was judged on. Compress with the original data."
        )
    rows = run_stages(model, task, splits, recipe, run_dir, run_dir / "model.safetensors", progress)
    _finish_report(run_dir, model, task, splits, progress)
    return rows


def report(run: Run | str | Path, path: str | Path | None = None) -> Path:
    """Write (or rewrite) a run's report.html: curves, final metrics, confusion matrix, per-class table
    and, when the run opens and its data is at hand unchanged, a grid of held-out examples.

    Returns:
        The report's path (default ``RUN/report.html``).
    """
    run_dir = Path(getattr(run, "path", run))
    rows, why = None, None
    try:
        model, task, info = open_run(run_dir)
        recipe = info["recipe"]
        if recipe.data.source.startswith("memory:"):
            raise RunDirError("trained on in-memory arrays (bigmodel.fit), which are not kept")
        splits, fingerprint = _open_data(recipe, task)
        if fingerprint != info["fingerprint"]:
            raise DataError(f"{recipe.data.source} changed since the run was trained")
        rows = _report_rows(model, task, splits.get("test") or splits.get("validation"))
    except UserError as exc:  # an unfinished run, data that moved: the report without examples
        why = f"No examples: {exc}"
    return write_report(run_dir, rows, path, examples_note=why)


EXPORT_FORMATS = ("onnx", "torch-export", "hf")


def export_run(run: Run | str | Path, format: str = "onnx", folder: str | Path | None = None) -> Path:
    """Export a finished run as a folder that runs without bigmodel's training code.

    - ``onnx``: ``model.onnx`` (what ``task.export_signature`` names) and, for a model that decodes
      with a KV cache, ``decoder/`` (prefill, decode, encoder graphs and decoder.json); each graph is
      checked in ONNX Runtime against PyTorch within 1e-4 on a batch other than the traced one.
    - ``torch-export``: ``model.pt2``, a ``torch.export`` program (``bigmodel.export.load_program``),
      checked the same way.
    - ``hf``: a Hugging Face folder (:func:`export_pretrained`) transformers loads.

    Beside the graphs: ``model.json`` and ``task.json`` (labels, image/audio/feature preprocessing),
    the tokenizer files of a text task, and ``export.json`` (format, graph input/output names, dtypes
    and shapes with their dynamic axes, opset, the measured max |difference| against PyTorch, the
    versions of torch/onnx/onnxruntime, the command).

    Args:
        run: a finished run directory (or a :class:`Run`) whose data is at hand (the traced and the
            checked batches are encoded from its held-out records).
        format: ``onnx``, ``torch-export`` or ``hf``.
        folder: where to write; default ``RUN/export/<format>``.

    Returns:
        The folder.
    """
    if format not in EXPORT_FORMATS:
        raise UserError(
            f"--format: unknown export format {format!r}. Allowed: {', '.join(EXPORT_FORMATS)}."
            f"{did_you_mean(format, EXPORT_FORMATS)}"
        )
    run_dir = Path(getattr(run, "path", run))
    command = f"bigmodel export {run_dir} --format {format}" + (f" -o {folder}" if folder is not None else "")
    folder = run_dir / "export" / format if folder is None else Path(folder)
    if format == "hf":
        export_pretrained(run_dir, folder)
        return _write_export_json(folder, {"format": "hf", "graphs": {}}, command)
    from bigmodel import export

    model, task, info = open_run(run_dir)
    example, check = _export_batches(task, info)
    folder.mkdir(parents=True, exist_ok=True)
    module, _, dynamic = export.program.task_signature(task, model, example)
    _, check_inputs, _ = export.program.task_signature(task, model, check)
    if format == "onnx":
        paths = export.export_task_onnx(task, model, example, folder, check_batch=check)
        difference = export.verify_onnx(paths["model"], module, check_inputs)
        described = {name: _onnx_graph(path, folder) for name, path in paths.items()}
        described["model"]["max_abs_difference"] = difference
        if "prefill" in paths:
            described["decoder"] = "decoder/decoder.json"
    else:
        path = export.export_task_program(task, model, example, folder / "model.pt2")
        program = export.load_program(path)
        difference = export.verify_program(program, module, check_inputs)
        described = {"model": {"file": path.name, "inputs": program.inputs, "outputs": program.outputs,
                               "max_abs_difference": difference}}  # fmt: skip
    import shutil

    for name in ("model.json", "task.json"):
        shutil.copy2(run_dir / name, folder / name)
    task.save(folder)
    info = {"format": format, "task": task.name, "graphs": described, "dynamic_axes": dynamic,
            "checked_on": {n: list(t.shape) for n, t in check_inputs.items()}, "atol": 1e-4}  # fmt: skip
    return _write_export_json(folder, info, command)


def _export_batches(task, info: dict) -> tuple[dict, dict]:
    """Two batches of the run's own records (held-out first), of 2 and 3 examples: the first is traced,
    the second, of another size, checks the exported graph."""
    recipe = info["recipe"]
    if recipe.data.source.startswith("memory:"):
        raise RunDirError(
            f"{info['run_dir']}: trained on in-memory arrays (bigmodel.fit), which are not kept; export "
            "traces the model on the run's own records."
        )
    splits, _ = _open_data(recipe, task)
    records = [r for name in ("test", "validation", "train") if name in splits for r in splits[name]]
    if len(records) < 5:
        raise DataError(
            f"{recipe.data.source}: export needs 5 records to trace and check on; it has {len(records)}."
        )
    items = [task.encode(record, None) for record in records[:5]]
    return task.collate(items[:2]), task.collate(items[2:5])


def _onnx_graph(path: Path, folder: Path) -> dict:
    """A graph's file, opset, inputs and outputs (name, dtype, shape with named dynamic axes)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def values(entries) -> list[dict]:
        found = []
        for value in entries:
            kind = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in kind.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name
            found.append({"name": value.name, "dtype": dtype, "shape": dims})
        return found

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"file": str(path.relative_to(folder)), "opset": opset, "inputs": values(proto.graph.input),
            "outputs": values(proto.graph.output)}  # fmt: skip


def _write_export_json(folder: Path, info: dict, command: str) -> Path:
    import importlib.metadata as metadata

    versions = {}
    for package in ("bigmodel", "torch", "onnx", "onnxruntime", "onnxscript", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    write_json(folder / "export.json", {**info, "versions": versions, "command": command})
    return folder


def load(
    run: Run | str | Path, model: nn.Module | None = None, options: Mapping[str, Any] | None = None
) -> Predictor:
    """Load a trained run for prediction: ``bigmodel.load(path).predict(inputs)``. An export folder
    (``bigmodel export``) predicts through its graph, without the model's code. A pretrained image
    classifier's name (``efficientnet-lite0``, ``mobilenet_v2``) that is not a folder here loads that
    checkpoint with its ImageNet head and class names.

    Args:
        options: task options that change only what predict returns (the task's ``predict_options``:
            ``{"draw": True}`` for boxes drawn, ``{"temperature": 0}`` for greedy text, ...).
    """
    predictor = _open_predictor(run, model)
    predictor.task.set_predict_options({k.removeprefix("task."): v for k, v in (options or {}).items()})
    return predictor


def _open_predictor(run: Run | str | Path, model: nn.Module | None) -> Predictor:
    from bigmodel.export.runtime import is_export_folder

    folder = getattr(run, "path", run)
    if model is None and is_export_folder(folder):
        return Predictor.from_export(folder)
    if isinstance(run, (str, Path)) and not Path(run).exists():
        from bigmodel.hub.vision import IMAGE_CHECKPOINTS

        if str(run) in IMAGE_CHECKPOINTS:
            from bigmodel.tasks.image_classification import ImageClassificationTask

            return Predictor(*ImageClassificationTask.for_checkpoint(str(run)))
    model, task, _ = open_run(run, model=model)
    return Predictor(model, task)
