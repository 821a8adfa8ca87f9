"""Classification: raw labels → class indices, cross-entropy, accuracy/precision/recall/F1."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bigmodel.errors import DataError
from bigmodel.evaluate.metrics import classification_metrics


class ClassificationTask:
    """Single-label classification over the classes seen in the training split.

    Args:
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
        class_names: known classes (when restoring a trained run); learnt by :meth:`fit` otherwise.
    """

    name = "classification"
    metric_names = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")
    higher_is_better = {
        "loss": False,
        "accuracy": True,
        "precision_macro": True,
        "recall_macro": True,
        "f1_macro": True,
    }

    def __init__(self, label_smoothing: float = 0.0, class_names: list[str] | None = None):
        self.label_smoothing = label_smoothing
        self.class_names = list(class_names) if class_names else []

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def fit(self, raw_targets: np.ndarray) -> None:
        """Learn the class list; numeric labels sort numerically (so digit 10 follows 9)."""
        names = {_class_name(v) for v in raw_targets}
        try:
            self.class_names = sorted(names, key=float)
        except ValueError:
            self.class_names = sorted(names)
        if len(self.class_names) < 2:
            raise DataError(f"data.label: classification needs at least 2 classes, found {self.class_names}.")

    def encode(self, raw_targets: np.ndarray, where: str = "data") -> torch.Tensor:
        index = {name: i for i, name in enumerate(self.class_names)}
        out = np.empty(len(raw_targets), dtype=np.int64)
        for i, v in enumerate(raw_targets):
            key = _label_key(v, index)
            if key is None:
                raise DataError(
                    f"{where}: row {i + 1} has label {v!r}, which the training split does not contain. "
                    f"Known classes: {', '.join(self.class_names)}."
                )
            out[i] = index[key]
        return torch.from_numpy(out)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        pred = outputs.argmax(dim=-1).numpy()
        return classification_metrics(pred, targets.numpy(), self.class_names)

    def postprocess(self, outputs: torch.Tensor) -> list[dict]:
        probs = outputs.float().softmax(dim=-1)
        return [
            {
                "label": self.class_names[int(p.argmax())],
                "probabilities": {n: round(float(q), 6) for n, q in zip(self.class_names, p, strict=True)},
            }
            for p in probs
        ]

    def state(self) -> dict:
        return {"name": self.name, "label_smoothing": self.label_smoothing, "class_names": self.class_names}


def _class_name(value) -> str:
    """A label's class name: a whole float (3.0 from JSONL or parquet) names the same class as 3."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _label_key(value, index: dict[str, int]) -> str | None:
    """Match '3', 3 and 3.0 to the class '3' (CSV reads text, JSONL numbers)."""
    text = str(value)
    if text in index:
        return text
    try:
        number = float(text)
    except ValueError:
        return None
    if number.is_integer() and str(int(number)) in index:
        return str(int(number))
    return None
