"""Text classification: a pretrained text encoder (native BERT) + a classification head.

The task is :class:`ClassificationTask` (labels, cross-entropy with optional label smoothing,
accuracy/precision/recall/F1, probabilities) whose records are texts; it owns the head, as DESIGN.md
asks of tasks: :class:`TextClassifier` composes the backbone, which returns hidden states, with
dropout and a linear layer on one vector per text — BERT's pooler output (``tanh(dense(h[CLS]))``)
when the checkpoint has a pooler, else the ``[CLS]`` hidden state itself. That is what transformers'
``BertForSequenceClassification`` computes (Devlin et al. 2019, §4.1).
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel.tasks.classification import ClassificationTask


class TextClassificationTask(ClassificationTask):
    """Single-label classification of texts; see :class:`ClassificationTask` for the arguments."""

    name = "text_classification"

    def build_model(self, backbone: nn.Module, dropout: float | None = None) -> TextClassifier:
        """The backbone with this task's head: one output per class learnt by :meth:`fit`."""
        return TextClassifier(backbone, self.num_outputs, dropout)


class TextClassifier(nn.Module):
    """``backbone(input_ids, attention_mask) -> (B, T, H)`` → pooled ``(B, H)`` → dropout → ``head``.

    Args:
        backbone: a native BERT (``forward`` returns the last hidden states; ``pooler`` may be None).
        num_outputs: number of classes.
        dropout: dropout before the head; default the backbone's hidden dropout (as transformers'
            ``classifier_dropout=None``).

    State-dict keys are ``backbone.*`` and ``head.*``; the head is initialised like BERT's linear
    layers (N(0, init_std), zero bias).
    """

    def __init__(self, backbone: nn.Module, num_outputs: int, dropout: float | None = None):
        super().__init__()
        width = backbone.config.embed_dim
        self.backbone = backbone
        self.dropout_p = backbone.config.dropout if dropout is None else dropout
        self.drop = nn.Dropout(self.dropout_p)
        self.head = nn.Linear(width, num_outputs)
        nn.init.normal_(self.head.weight, std=backbone.config.init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def pooling(self) -> str:
        return "pooler" if getattr(self.backbone, "pooler", None) is not None else "cls"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids, attention_mask)  # (B, T, H)
        pooled = self.backbone.pool(hidden) if self.pooling == "pooler" else hidden[:, 0]  # (B, H)
        return self.head(self.drop(pooled))  # (B, num_outputs)

    def head_spec(self) -> dict:
        """What model.json records to rebuild the head around a backbone of the same config."""
        num_outputs = self.head.out_features
        return {"task": "text_classification", "num_outputs": num_outputs, "dropout": self.dropout_p}
