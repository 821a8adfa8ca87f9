"""Heads the tasks put on a family's features: one rule for every family.

A family built headless (``num_outputs=0``) returns features; a text encoder returns hidden states
from ``encode(input_ids, attention_mask)``. The task composes it with its head here, so the state
dict is always ``backbone.*`` + ``head.*`` and the pipeline injects nothing into family configs.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel.nn.crf import CRF

POOLINGS = ("auto", "pooler", "cls", "mean")


class FeatureModel(nn.Module):
    """``head(dropout(backbone(x)))``: a headless tabular or image family + a linear head.

    Args:
        backbone: returns ``(B, backbone.feature_dim)``.
        num_outputs: classes (or 1 for regression).
        dropout: before the head (the families already drop out their features where configured).
    """

    def __init__(self, backbone: nn.Module, num_outputs: int, dropout: float = 0.0, frozen: bool = False):
        super().__init__()
        self.backbone = backbone
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.feature_dim, num_outputs)
        self.frozen = frozen
        if frozen:  # a pretrained feature extractor: only the head trains
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # keep BatchNorm's pretrained statistics and no dropout in the frozen part
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.backbone(x)))  # (B, num_outputs)


class EncoderHead(nn.Module):
    """What text heads share: a text encoder backbone, dropout (default: the backbone's) and a linear
    ``head`` initialised as the backbone's own layers (normal with its ``init_std``, zero bias)."""

    def __init__(self, backbone: nn.Module, num_outputs: int, dropout: float | None = None):
        super().__init__()
        config = backbone.config
        self.backbone = backbone
        self.uses_token_types = getattr(config, "type_vocab_size", 0) > 0
        self.drop = nn.Dropout(getattr(config, "dropout", 0.0) if dropout is None else dropout)
        self.head = nn.Linear(backbone.feature_dim, num_outputs)
        nn.init.normal_(self.head.weight, std=getattr(config, "init_std", 0.02))
        nn.init.zeros_(self.head.bias)

    def hidden(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """``(B, T, H)`` hidden states; token types only reach a backbone that has them (BERT)."""
        extra = (
            {"token_type_ids": token_type_ids} if self.uses_token_types and token_type_ids is not None else {}
        )
        return self.backbone.encode(input_ids, attention_mask, **extra)


class TextModel(EncoderHead):
    """``backbone.encode(ids, mask) -> (B, T, H)`` → one vector per text → dropout → ``head``.

    Pooling: ``pooler`` is BERT's ``tanh(dense(h[CLS]))`` (what transformers'
    ``BertForSequenceClassification`` reads, Devlin et al. 2019 §4.1), ``cls`` the first hidden state,
    ``mean`` the average over real tokens; ``auto`` = pooler when the backbone has one, else cls for
    BERT-layout encoders (their [CLS] is trained for it), else mean.

    Args:
        backbone: a text encoder family (``encode``, ``feature_dim``, ``config``).
        num_outputs: classes.
        dropout: before the head; None = the backbone's ``dropout`` (transformers' default).
        pooling: one of :data:`POOLINGS`.
        init_std: std of the head's normal init (BERT's ``init_std`` when the backbone has one).
    """

    def __init__(
        self, backbone: nn.Module, num_outputs: int, dropout: float | None = None, pooling: str = "auto"
    ):
        super().__init__(backbone, num_outputs, dropout)
        self.pooling = resolve_pooling(backbone, pooling)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.hidden(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if self.pooling == "pooler":
            pooled = self.backbone.pool(hidden)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(self.drop(pooled))  # (B, num_outputs)


class TaggerModel(EncoderHead):
    """``backbone.encode(ids, mask) -> (B, T, H)`` → dropout → linear ``head`` → ``(B, T, K)`` tag
    scores; ``crf`` (optional) holds the transition scores the task's loss and decoding use.

    Args:
        backbone: a text encoder family (``encode``, ``feature_dim``, ``config``).
        num_tags: K.
        dropout: before the head; None = the backbone's ``dropout``.
        crf: add a :class:`~bigmodel.nn.crf.CRF`.
    """

    def __init__(self, backbone: nn.Module, num_tags: int, dropout: float | None = None, crf: bool = False):
        super().__init__(backbone, num_tags, dropout)
        self.crf = CRF(num_tags) if crf else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.hidden(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return self.head(self.drop(hidden))  # (B, T, K)


class SpanModel(TaggerModel):
    """A :class:`TaggerModel` with two scores per position, ``(B, T, 2)``: the answer starting
    (``[..., 0]``) and ending (``[..., 1]``) there, as BERT's SQuAD head (Devlin et al. 2019 §4.2).

    Args:
        backbone: a text encoder family (``encode``, ``feature_dim``, ``config``).
        dropout: before the head; None = the backbone's ``dropout``.
    """

    def __init__(self, backbone: nn.Module, dropout: float | None = None):
        super().__init__(backbone, 2, dropout)


def resolve_pooling(backbone: nn.Module, pooling: str) -> str:
    has_pooler = getattr(backbone, "pooler", None) is not None
    if pooling == "pooler" and not has_pooler:
        raise ValueError(
            f"pooling 'pooler' needs a backbone with a pooler; {type(backbone).__name__} has none"
        )
    if pooling != "auto":
        return pooling
    if has_pooler:
        return "pooler"
    return "cls" if hasattr(backbone.config, "type_vocab_size") else "mean"
