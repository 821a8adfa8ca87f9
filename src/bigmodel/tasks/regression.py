"""Regression: one numeric target, standardised for training, reported in the original units."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bigmodel.errors import DataError
from bigmodel.evaluate.metrics import regression_metrics


class RegressionTask:
    """Predict one number. The target is standardised with training-split statistics so the
    learning rate does not depend on its units; predictions and metrics are in original units.

    Args:
        loss: ``mse`` or ``mae`` (L1).
    """

    name = "regression"
    metric_names = ("loss", "mse", "rmse", "mae", "r2")
    higher_is_better = {"loss": False, "mse": False, "rmse": False, "mae": False, "r2": True}
    num_outputs = 1

    def __init__(self, loss: str = "mse", mean: float = 0.0, std: float = 1.0):
        self.loss_name = loss
        self.mean, self.std = float(mean), float(std)

    def fit(self, raw_targets: np.ndarray) -> None:
        values = self._numbers(raw_targets, "data.label")
        self.mean = float(values.mean())
        self.std = float(values.std()) or 1.0

    def encode(self, raw_targets: np.ndarray, where: str = "data") -> torch.Tensor:
        return torch.from_numpy((self._numbers(raw_targets, where) - self.mean) / self.std).float()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pred = outputs.squeeze(-1)
        return F.mse_loss(pred, targets) if self.loss_name == "mse" else F.l1_loss(pred, targets)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        scale = lambda t: t.double().numpy() * self.std + self.mean  # noqa: E731
        return regression_metrics(scale(outputs.squeeze(-1)), scale(targets))

    def postprocess(self, outputs: torch.Tensor) -> list[dict]:
        return [{"prediction": float(v) * self.std + self.mean} for v in outputs.squeeze(-1)]

    def state(self) -> dict:
        return {"name": self.name, "loss": self.loss_name, "mean": self.mean, "std": self.std}

    @staticmethod
    def _numbers(raw: np.ndarray, where: str) -> np.ndarray:
        try:
            return np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(v for v in raw if not _is_number(v))
            raise DataError(f"{where}: regression needs numeric labels, found {bad!r}.") from None


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
