"""Tasks: what a record means, the head, the loss, the metrics, and what a person reads back.

``task: {name: NAME}`` in a recipe names one of :data:`TASKS` or a user's own ``package.module:Class``
(a subclass of :class:`Task`, or any class with the same methods).
"""

from __future__ import annotations

from pathlib import Path

from bigmodel.errors import RecipeError, RunDirError, unknown_name
from bigmodel.tasks.base import TASK_FORMAT, Metric, Task, load_object
from bigmodel.tasks.classification import ClassificationTask
from bigmodel.tasks.regression import RegressionTask
from bigmodel.tasks.text_classification import TextClassificationTask

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "regression": RegressionTask,
    "text_classification": TextClassificationTask,
}


def task_class(name: str) -> type[Task]:
    """The task class a recipe's ``task.name`` names: built-in, or ``package.module:Class``."""
    if name in TASKS:
        return TASKS[name]
    if ":" not in name:
        raise unknown_name("task.name", name, [*TASKS, "package.module:Class"])
    cls = load_object(name, "task.name")
    if not isinstance(cls, type) or not all(hasattr(cls, m) for m in ("encode", "collate", "loss", "metric")):
        raise RecipeError(
            f"task.name: {name!r} is not a task class (see bigmodel.tasks.Task for the contract)."
        )
    return cls


def create_task(recipe) -> Task:
    """The (unfitted) task of a recipe, with its options validated."""
    return task_class(recipe.task.name).from_recipe(recipe)


def restore_task(state: dict, run_dir: Path) -> Task:
    """The fitted task of a run directory, from task.json (and files beside it)."""
    if not isinstance(state, dict) or state.get("format") != TASK_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise RunDirError(
            f"{run_dir / 'task.json'}: format {found!r}; this version of bigmodel reads format "
            f"{TASK_FORMAT}. "
            "Retrain the run with this version."
        )
    name = state.get("name")
    return task_class(name if name in TASKS else state.get("class", name)).restore(state, run_dir)


__all__ = ["TASKS", "ClassificationTask", "Metric", "RegressionTask", "Task", "TextClassificationTask",
           "create_task", "restore_task", "task_class"]  # fmt: skip
