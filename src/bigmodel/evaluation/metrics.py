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

    The conventions are scikit-learn's (``precision_recall_fscore_support`` with ``labels=None`` and
    ``zero_division=0``):

    * **Macro averages** run over the classes *present*: those in the labels or in the predictions
      (scikit-learn's default ``labels`` is the union of ``y_true`` and ``y_pred``). A class of the
      training split that is absent from both neither scores 0 nor counts; ``macro_classes`` lists
      the classes averaged over, so a report states it.
    * A present class with no predictions scores precision 0; with no support, recall 0 (and F1 0).
    * The **per-class table** lists every class; an absent one has ``"absent": true`` and zeros.
    * No examples at all: every number is 0, never NaN.
    """
    k = len(class_names)
    confusion = np.asarray(confusion).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = (predicted > 0) | (support > 0)

    def macro(values: np.ndarray) -> float:
        return float(values[present].mean()) if present.any() else 0.0

    return {
        "accuracy": float(tp.sum() / max(int(support.sum()), 1)),
        "precision_macro": macro(precision),
        "recall_macro": macro(recall),
        "f1_macro": macro(f1),
        "macro_classes": [name for name, p in zip(class_names, present, strict=True) if p],
        "macro_average": "over the classes present in the labels or the predictions (scikit-learn's "
        "labels=None, zero_division=0); classes absent from both are listed in per_class as absent",
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "absent": not bool(present[i]),
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
