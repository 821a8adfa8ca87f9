"""Run directories read as plain data: list the runs under a folder, compare two runs side by side.

A run directory is what ``bigmodel train`` makes, ``RUNS/<recipe>/<timestamp>/``; it is recognised by
its ``model.json`` (written before training starts, so an interrupted run is listed too) and is
*finished* once ``manifest.json`` exists (written last). Nothing here imports torch or checks weights:
these readers only describe runs (``rundir.open_run`` is the way to load one), and one damaged file
makes its fields ``None`` with a note in ``problems`` instead of stopping a listing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigmodel.errors import RunDirError

RUN_MARKER = "model.json"
MANIFEST = "manifest.json"
SPLIT_ORDER = ("validation", "test", "train")
# The numbers a one-line listing shows first, when a split has them (the rest stay in "metrics").
KEY_METRICS = (
    "accuracy", "f1_macro", "f1", "exact_match", "mean_iou", "map", "map_50", "bleu", "chrf", "roc_auc",
    "verification_accuracy", "rank1", "recognisability", "frechet_judge", "perplexity", "bpc", "r2",
    "rmse", "mae", "loss",
)  # fmt: skip
_STAMP = re.compile(r"^(\d{8}-\d{6})(?:-\d+)?$")  # pipeline._new_run_dir: YYYYmmdd-HHMMSS[-N]


@dataclass
class RunFiles:
    """What a run directory holds, each file parsed or its problem noted (``problems[file]``)."""

    path: Path
    recipe: dict | None = None
    model: dict | None = None
    task: dict | None = None
    data: dict | None = None
    summary: dict | None = None
    eval: dict | None = None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return (self.path / MANIFEST).is_file()

    @property
    def name(self) -> str:
        """The recipe's name (the folder above the timestamp when recipe.yaml cannot tell)."""
        name = (self.recipe or {}).get("name")
        return str(name) if name else self.path.parent.name

    @property
    def task_name(self) -> str | None:
        name = (self.task or {}).get("name") or ((self.recipe or {}).get("task") or {}).get("name")
        return str(name) if name else None

    @property
    def family(self) -> str | None:
        model = self.model or {}
        found = model.get("family") or model.get("module")
        return str(found) if found else None

    @property
    def train_stats(self) -> dict:
        """summary.json's ``train`` block: steps, epochs, time_s, params, best, ..."""
        stats = (self.summary or {}).get("train")
        return stats if isinstance(stats, dict) else {}

    def split_metrics(self) -> dict[str, dict[str, float]]:
        """Single-number metrics per evaluated split: eval.json's (``evaluate`` adds splits to it),
        else summary.json's, in the order validation, test, train, others."""
        source = self.eval if self.eval is not None else {
            k: v for k, v in (self.summary or {}).items() if k != "train"
        }  # fmt: skip
        found = {name: scalars(values) for name, values in source.items() if isinstance(values, dict)}
        return dict(sorted(found.items(), key=lambda item: _split_rank(item[0])))


def scalars(values: dict) -> dict[str, float]:
    """The single numbers of one split's metrics (no lists, tables, strings or booleans)."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _split_rank(name: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


def check_run(path: str | os.PathLike) -> Path:
    """The run directory ``path`` (or a :class:`~bigmodel.rundir.Run`'s ``path``); else RunDirError."""
    path = getattr(path, "path", path)
    if not isinstance(path, (str, os.PathLike)):
        raise RunDirError(f"run: expected a run directory (a path or a Run), got {type(path).__name__}.")
    path = Path(path)
    if not path.is_dir():
        what = "a file, not a run directory" if path.exists() else "no such run directory"
        raise RunDirError(f"{path}: {what}. Runs are made by 'bigmodel train' under ./runs/<recipe>/.")
    if not (path / RUN_MARKER).is_file():
        inside = [
            m.parent for pattern in (f"*/{RUN_MARKER}", f"*/*/{RUN_MARKER}") for m in path.glob(pattern)
        ]
        latest = max(inside, key=lambda run: (run_date(run), str(run)), default=None)
        hint = f" Did you mean the latest run inside it, '{latest}'?" if latest else ""
        raise RunDirError(
            f"{path}: not a run directory (it has no {RUN_MARKER}). A run directory is the folder "
            "'bigmodel train' prints at the end, RUNS/<recipe>/<timestamp> ('bigmodel runs' lists them)."
            + hint
        )
    return path


FILES = {"recipe": "recipe.yaml", "model": "model.json", "task": "task.json", "data": "data.json",
         "summary": "summary.json", "eval": "eval.json"}  # fmt: skip


def read_run(path: str | os.PathLike, parts: tuple[str, ...] = tuple(FILES)) -> RunFiles:
    """Read the files ``parts`` names (keys of :data:`FILES`) of the run at ``path``.

    Raises:
        RunDirError: ``path`` is not a run directory. A missing or damaged file is not an error: its
            field stays ``None`` and ``problems[file name]`` says what is wrong.
    """
    run = RunFiles(check_run(path))
    for part in parts:
        name = FILES[part]
        value, problem = _read_mapping(run.path / name)
        setattr(run, part, value)
        if problem:
            run.problems[name] = problem
    return run


def _read_mapping(path: Path) -> tuple[dict | None, str | None]:
    """A JSON or YAML file holding one object: ``(value, None)`` or ``(None, what is wrong)``."""
    if not path.is_file():
        return None, "missing"
    try:
        text = path.read_text(encoding="utf-8")
        value = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        return None, f"not valid {path.suffix[1:].upper()} ({str(exc).splitlines()[0][:120]})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    if not isinstance(value, dict):
        return None, f"expected an object, found {type(value).__name__}"
    return value, None


# --- metrics.jsonl -----------------------------------------------------------------------------------


@dataclass
class MetricsLog:
    """metrics.jsonl split by kind: training lines (step, epoch, loss, lr, ...) and evaluation lines
    (the same with ``split`` and the task's metrics). ``problem`` says what could not be read."""

    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    problem: str | None = None


def read_metrics_log(path: Path) -> MetricsLog:
    """Every readable line of a metrics.jsonl; damaged lines (a torn last line, garbage) are left out
    and named in ``problem``, a missing file is a ``problem`` too."""
    log = MetricsLog()
    if not path.is_file():
        log.problem = f"{path.name} is missing: this run logged nothing (or the file was removed)."
        return log
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        log.problem = f"{path.name} cannot be read ({exc.strerror})."
        return log
    bad, total = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        total += 1
        try:
            entry = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if not isinstance(entry, dict) or not is_number(entry.get("step")):
            bad.append(number)
            continue
        (log.evals if "split" in entry else log.train).append(entry)
    if bad:
        shown = ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        log.problem = (
            f"{path.name}: {len(bad)} of {total} lines could not be read (line {shown}) and are left out."
        )
    return log


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a curve or a table can show as a number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- list and compare --------------------------------------------------------------------------------


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """Every run directory under ``root`` (``root/<recipe>/<timestamp>/``; ``root`` may also be one
    recipe's folder or a run itself), oldest first.

    Returns:
        One dict per run: ``name`` (recipe), ``path``, ``date`` (``YYYY-mm-dd HH:MM:SS``), ``task``,
        ``family``, ``finished`` (has manifest.json), ``split`` (``test``, else ``validation``, else
        None) with its single-number ``metrics`` and up to three ``key_metrics``, ``params``,
        ``time_s``, ``steps``, and ``problems`` (files that could not be read).

    Raises:
        RunDirError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise RunDirError(
            f"{root}: {what}. Give the folder runs are written to ('bigmodel train -o FOLDER', "
            "default ./runs)."
        )
    listed = [_describe(read_run(path, ("recipe", "model", "task", "summary"))) for path in _run_dirs(root)]
    return sorted(listed, key=lambda run: (run["date"], run["path"]))


def _run_dirs(root: Path) -> Iterator[Path]:
    for pattern in (RUN_MARKER, f"*/{RUN_MARKER}", f"*/*/{RUN_MARKER}"):
        for marker in sorted(root.glob(pattern)):
            if marker.is_file() and not marker.parent.name.startswith("."):
                yield marker.parent


def _describe(run: RunFiles) -> dict:
    metrics = {k: v for k, v in run.split_metrics().items() if k != "train"}
    split = "test" if "test" in metrics else "validation" if "validation" in metrics else None
    values = metrics.get(split, {})
    stats = run.train_stats
    return {
        "name": run.name,
        "path": str(run.path),
        "date": run_date(run.path),
        "task": run.task_name,
        "family": run.family,
        "finished": run.finished,
        "split": split,
        "metrics": values,
        "key_metrics": key_metrics(values),
        "params": stats.get("params"),
        "time_s": stats.get("time_s"),
        "steps": stats.get("steps"),
        "problems": [f"{name}: {problem}" for name, problem in run.problems.items()],
    }


def key_metrics(metrics: dict[str, float], count: int = 3) -> dict[str, float]:
    """Up to ``count`` of the metrics a person looks at first (accuracy, F1, mIoU, perplexity, ...)."""
    chosen = [k for k in KEY_METRICS if k in metrics][:count]
    return {k: metrics[k] for k in chosen}


def run_date(path: Path) -> str:
    """When the run started: its timestamp folder name, else model.json's modification time."""
    match = _STAMP.match(path.name)
    if match:
        try:
            return dt.datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            pass
    stamp = (path / RUN_MARKER).stat().st_mtime
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def compare_runs(a: str | os.PathLike, b: str | os.PathLike) -> list[tuple[str, Any, Any]]:
    """Two runs side by side: ``(key, value in a, value in b)`` rows.

    Rows, in order: ``recipe.<dotted key>`` for every recipe value that differs (absent on one side:
    None); ``<split>.<metric>`` for every single-number metric of every evaluated split (eval.json,
    else summary.json), equal or not; ``training.<stat>`` (steps, epochs, time, parameters, ...).

    Raises:
        RunDirError: either path is not a run directory, or its recipe.yaml cannot be read.
    """
    runs = [read_run(path, ("recipe", "summary", "eval")) for path in (a, b)]
    for run in runs:
        if run.recipe is None:
            raise RunDirError(
                f"{run.path / 'recipe.yaml'}: {run.problems['recipe.yaml']}; the runs' recipes cannot be "
                "compared without it."
            )
    recipes = [flatten(run.recipe) for run in runs]
    rows: list[tuple[str, Any, Any]] = [
        (f"recipe.{key}", recipes[0].get(key), recipes[1].get(key))
        for key in _union(recipes)
        if recipes[0].get(key, _ABSENT) != recipes[1].get(key, _ABSENT)
    ]
    metrics = [run.split_metrics() for run in runs]
    for split in sorted(_union(metrics), key=_split_rank):
        sides = [m.get(split, {}) for m in metrics]
        rows += [(f"{split}.{key}", sides[0].get(key), sides[1].get(key)) for key in _union(sides)]
    stats = [{k: v for k, v in run.train_stats.items() if not isinstance(v, (dict, list))} for run in runs]
    rows += [(f"training.{key}", stats[0].get(key), stats[1].get(key)) for key in _union(stats)]
    return rows


_ABSENT = object()


def _union(dicts: list[dict]) -> list[str]:
    """Keys of all the dicts, in order of first appearance."""
    return list(dict.fromkeys(key for d in dicts for key in d))


def flatten(value: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"optimizer": {"lr": 1e-3}}}`` -> ``{"train.optimizer.lr": 1e-3}``; lists stay whole
    (``model.hidden_sizes: [128, 64]`` is one value), an empty mapping is kept as ``{}``."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            flat.update(flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat
