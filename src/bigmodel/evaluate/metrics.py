"""Metrics computed from predictions and targets (NumPy; checked against scikit-learn in tests)."""

from __future__ import annotations

import numpy as np


def classification_metrics(pred: np.ndarray, target: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1, per-class table and confusion matrix.

    Classes with no predictions (or no support) score 0 for precision (recall), as scikit-learn's
    ``zero_division=0``; macro averages run over every class in ``class_names``.
    """
    k = len(class_names)
    confusion = np.bincount(target * k + pred, minlength=k * k).reshape(k, k)  # rows: true, cols: predicted
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(len(target), 1)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": confusion.tolist(),
    }


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """MSE, RMSE, MAE and R² (coefficient of determination). For a constant target R² is 1 when
    every prediction is exact and 0 otherwise, as scikit-learn's ``r2_score``."""
    err = pred.astype(np.float64) - target.astype(np.float64)
    mse = float(np.mean(err**2))
    total = float(np.sum((target - target.mean()) ** 2))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - np.sum(err**2) / total) if total > 0 else float(not np.any(err)),
    }


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The single-number metrics (what is logged per evaluation and usable for early stopping)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
