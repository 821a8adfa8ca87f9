"""Regression of rows: one numeric target, standardised for training, reported in the original units."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from bigmodel.data.values import parse_number, short_repr
from bigmodel.errors import DataError
from bigmodel.evaluation.metrics import regression_metrics
from bigmodel.tasks.base import LabelOptions, Metric, check_targets
from bigmodel.tasks.tabular import TabularTask


class RegressionOptions(LabelOptions):
    loss: Literal["mse", "mae"] = "mse"


class RegressionMetric(Metric):
    """Sums of errors, targets and squared targets (float64): MSE, MAE and R² merge by addition."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def update(self, outputs: torch.Tensor, batch: dict) -> None:
        scale = lambda t: t.double() * self.task.std + self.task.mean  # noqa: E731  (original units)
        pred, target = scale(outputs.squeeze(-1)), scale(batch["y"])
        err = pred - target
        self.count_non_finite(outputs)
        self.add("loss", self.task.loss_from(outputs, batch).float())
        self.add("count", torch.tensor(len(target), dtype=torch.float64))
        self.add("sq_err", (err**2).sum())
        self.add("abs_err", err.abs().sum())
        self.add("target", target.sum())
        self.add("target_sq", (target**2).sum())

    def compute(self) -> dict:
        self.check_finite()
        s = {k: float(v) for k, v in self.sums.items()}
        return {"loss": s["loss"] / s["count"], **regression_metrics(s)}


class RegressionTask(TabularTask):
    """Predict one number. The target is standardised with training-split statistics so the learning
    rate does not depend on its units; predictions and metrics are in original units."""

    name = "regression"
    Options = RegressionOptions
    metric_names = ("loss", "mse", "rmse", "mae", "r2")
    higher_is_better = {"loss": False, "mse": False, "rmse": False, "mae": False, "r2": True}
    num_outputs = 1

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.mean, self.std = 0.0, 1.0

    def fit(self, train) -> None:
        check_targets(self.data, train, "train", self.number)  # a bad target named by its row first
        super().fit(train)

    def fit_targets(self, values: list, where: str) -> None:
        numbers = np.asarray([self.number(v) for v in values], dtype=np.float64)
        self.mean, self.std = float(numbers.mean()), float(numbers.std()) or 1.0

    @staticmethod
    def number(value) -> float:
        number = None if isinstance(value, bool | np.bool_) else parse_number(value, allow_bool=False)
        if number is None:
            raise DataError(f"data.label: regression needs numeric labels, found {short_repr(value)}.")
        if not np.isfinite(number):
            raise DataError(f"data.label: regression needs finite numeric labels, found {short_repr(value)}.")
        return number

    def encode_target(self, value) -> float:
        return (self.number(value) - self.mean) / self.std

    def collate(self, items: list[dict]) -> dict:
        batch = super().collate(items)
        if "y" in batch:
            batch["y"] = batch["y"].float()
        return batch

    def state(self) -> dict:
        return {**super().state(), "mean": self.mean, "std": self.std}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        task.mean, task.std = state["mean"], state["std"]
        return task

    def loss_from(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        pred = outputs.float().squeeze(-1)
        if self.options.loss == "mse":
            return F.mse_loss(pred, batch["y"], reduction="sum")
        return F.l1_loss(pred, batch["y"], reduction="sum")

    def metric(self) -> RegressionMetric:
        return RegressionMetric(self)

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        """Per row: its features as ``name=value, ...``, its target and the prediction (no right/wrong)."""
        return [{"input": self.report_row_input(r), "truth": self._target_text(r),
                 "prediction": f"{p['prediction']:.6g}", "correct": None}
                for r, p in zip(records, predictions, strict=True)]  # fmt: skip

    def _target_text(self, record: dict) -> str | None:
        try:
            return f"{self.number(record[self.data.get('label') or 'label']):.6g}"
        except (KeyError, DataError):  # no target, or a missing one
            return None

    def predict(self, model, batch: dict) -> list[dict]:
        outputs = self.forward(model, batch).float().squeeze(-1).cpu()
        return [{"prediction": float(v) * self.std + self.mean} for v in outputs]
