"""Tasks: what a record means, the loss, the metrics, and how outputs read back."""

from __future__ import annotations

from bigmodel.tasks.classification import ClassificationTask
from bigmodel.tasks.regression import RegressionTask
from bigmodel.tasks.text_classification import TextClassificationTask, TextClassifier

TASKS = {
    "classification": ClassificationTask,
    "text_classification": TextClassificationTask,
    "regression": RegressionTask,
}


def create_task(config) -> ClassificationTask | RegressionTask:
    """Build the task named by a recipe's ``task`` section."""
    if config.name in ("classification", "text_classification"):
        return TASKS[config.name](label_smoothing=config.label_smoothing)
    return RegressionTask(loss=config.loss)


def restore_task(state: dict) -> ClassificationTask | RegressionTask:
    """Rebuild a fitted task from ``state()`` saved in a run's data.json."""
    state = dict(state)
    return TASKS[state.pop("name")](**state)


__all__ = [
    "TASKS",
    "ClassificationTask",
    "RegressionTask",
    "TextClassificationTask",
    "TextClassifier",
    "create_task",
    "restore_task",
]
