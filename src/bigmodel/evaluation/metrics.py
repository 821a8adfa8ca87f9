"""Metrics from the merged sums of streaming metrics (NumPy; checked against scikit-learn in tests)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """``(k, k)`` counts; rows are true classes, columns predicted ones."""
    k = num_classes
    return np.bincount(np.asarray(target) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def classification_metrics(confusion: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1, per-class table and confusion matrix, from the confusion
    matrix (rows: true, columns: predicted).

    Classes with no predictions (or no support) score 0 for precision (recall), as scikit-learn's
    ``zero_division=0``; macro averages run over every class in ``class_names``.
    """
    k = len(class_names)
    confusion = np.asarray(confusion).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(int(support.sum()), 1)),
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


def regression_metrics(sums: dict[str, float]) -> dict:
    """MSE, RMSE, MAE and R² from ``count``, ``sq_err``, ``abs_err``, ``target`` and ``target_sq`` sums.

    R² = 1 − SS_res / SS_tot with SS_tot = Σy² − (Σy)²/n. For a constant target R² is 1 when every
    prediction is exact and 0 otherwise, as scikit-learn's ``r2_score``.
    """
    n = sums["count"]
    mse = sums["sq_err"] / n
    total = max(sums["target_sq"] - sums["target"] ** 2 / n, 0.0)
    # Σy² − (Σy)²/n cancels catastrophically for a near-constant target: treat tiny totals as zero.
    constant = total <= 1e-12 * max(sums["target_sq"], 1e-300)
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": sums["abs_err"] / n,
        "r2": float(not sums["sq_err"]) if constant else 1.0 - sums["sq_err"] / total,
    }


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The single-number metrics (what is logged per evaluation and usable for early stopping)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
