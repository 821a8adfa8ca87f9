"""Classification of rows: labels → class indices, cross-entropy, accuracy/precision/recall/F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from bigmodel.data.values import class_name
from bigmodel.errors import DataError
from bigmodel.evaluation.metrics import classification_metrics
from bigmodel.tasks.base import LabelOptions, Metric, label_report_row
from bigmodel.tasks.tabular import TabularTask

CLASSIFICATION_METRICS = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")


class ClassificationOptions(LabelOptions):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")


class Labels:
    """The class names seen in the training split, and the mapping of raw labels onto them.

    Labels ``3``, ``3.0`` and ``"3"`` name one class (CSV reads text, JSONL numbers); numeric class
    names sort numerically, so digit 10 follows 9. Boolean labels (``True``, ``"true"``, ``"FALSE"``)
    name the classes ``"True"`` and ``"False"``; a column mixing them with numbers is refused, since
    whether ``true`` and ``1`` are one class is the user's call, not ours.
    """

    def __init__(self, names: list[str] | None = None):
        self.names = list(names or [])
        self._index = {name: i for i, name in enumerate(self.names)}

    def fit(self, values: list, where: str) -> None:
        names = {class_name(v) for v in values} - {None}  # missing labels were left out by clean()
        booleans = names & {"True", "False"}
        numbers = sorted(n for n in names if _is_number(n))
        if booleans and numbers:
            raise DataError(
                f"data.label: the label column of {where} mixes booleans ({', '.join(sorted(booleans))}) "
                f"with numbers ({', '.join(numbers[:5])}); whether true is the class 1 is ambiguous. Write "
                f"the labels one way."
            )
        try:
            ordered = sorted(names, key=float)
        except ValueError:
            ordered = sorted(names)
        if len(ordered) < 2:
            raise DataError(
                f"data.label: classification needs at least 2 classes in {where}, found {ordered}."
            )
        self.__init__(ordered)

    def index(self, value) -> int:
        i = self._index.get(class_name(value) or "")
        if i is None:
            raise DataError(
                f"label {value!r} is not a class of the training split. "
                f"Known classes: {', '.join(self.names)}."
            )
        return i


class ClassificationMetric(Metric):
    """Confusion matrix, summed loss and count: all mergeable by addition."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def update(self, logits: torch.Tensor, batch: dict) -> None:
        k = len(self.task.labels.names)
        pred, target = logits.argmax(-1), batch["y"]
        self.count_non_finite(logits)
        self.add("confusion", torch.bincount(target * k + pred, minlength=k * k).reshape(k, k))
        self.add("loss", self.task.loss_from(logits, batch).float())
        self.add("count", torch.tensor(len(target)))

    def compute(self) -> dict:
        self.check_finite()
        confusion = self.sums["confusion"].long().numpy()
        report = classification_metrics(confusion, self.task.labels.names)
        return {"loss": float(self.sums["loss"] / self.sums["count"]), **report}


class SingleLabel:
    """What every single-label classification task shares, whatever its inputs: the class list fitted
    on train, stratified splits, summed cross-entropy (label smoothing from ``options``), the streaming
    metric, and probabilities per class. Mixed in before the task's base class."""

    metric_names = CLASSIFICATION_METRICS
    higher_is_better = {"loss": False, "accuracy": True, "precision_macro": True, "recall_macro": True,
                        "f1_macro": True}  # fmt: skip

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.labels = Labels()

    @property
    def num_outputs(self) -> int:
        return len(self.labels.names)

    def strata(self, records):
        label = self.data.get("label") or "label"
        return [class_name(v) for v in records.column(label)] if label in records.columns else None

    def state(self) -> dict:
        return {**super().state(), "class_names": self.labels.names}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        task.labels = Labels(state["class_names"])
        return task

    def loss_from(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), batch["y"], label_smoothing=self.options.label_smoothing, reduction="sum"
        )

    def metric(self) -> ClassificationMetric:
        return ClassificationMetric(self)

    def predict(self, model, batch: dict) -> list[dict]:
        return probabilities(self.forward(model, batch), self.labels.names)


class ClassificationTask(SingleLabel, TabularTask):
    """Single-label classification of rows over the classes seen in the training split."""

    name = "classification"
    Options = ClassificationOptions

    def fit_targets(self, values: list, where: str) -> None:
        self.labels.fit(values, where)

    def encode_target(self, value) -> int:
        return self.labels.index(value)

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        """Per row: its features as ``name=value, ...``, its class, the predicted one, whether they agree."""
        return [label_report_row(self, r, p, self.report_row_input(r))
                for r, p in zip(records, predictions, strict=True)]  # fmt: skip


def probabilities(logits: torch.Tensor, names: list[str]) -> list[dict]:
    """``{"label", "probabilities"}`` per row, what a person reads."""
    probs = logits.float().softmax(dim=-1).cpu()
    return [
        {
            "label": names[int(p.argmax())],
            "probabilities": {n: round(float(q), 6) for n, q in zip(names, p, strict=True)},
        }
        for p in probs
    ]


def _is_number(name: str) -> bool:
    try:
        float(name)
    except ValueError:
        return False
    return True
