"""Semantic role labeling: for one predicate of a sentence, BIO tags over its arguments (who did what to
whom, when, where: ``B-ARG0 I-ARG0 B-V B-ARG1 I-ARG1 B-ARGM-TMP``).

A record is one predicate frame: ``{"tokens": [...], "predicate_index": i, "tags": [...]}`` (what
:mod:`bigmodel.data.conll2012` reads from CoNLL-2012 / CoNLL-2005 files; JSONL/CSV/parquet work too).
The rest is :mod:`bigmodel.tasks.token_classification`'s tagger, reused by import: the BIO checks,
first-sub-token alignment, the linear head and optional CRF (``task: {crf: true}``), the summed loss
and the span chunking.

**Predicate indicator.** The encoder must know *which* word is the predicate (a sentence has several
frames). One mechanism works for every family with ``encode``: a learned indicator embedding
(2 x embed_dim, zero-initialised so a pretrained checkpoint starts unchanged) added to the output of the
backbone's token embedding ``backbone.embed`` (every text family has one; a forward hook adds it) on
the sub-tokens of the predicate word, as He et al. (2017) feed a predicate flag to their BiLSTM. It
reaches the first layer of a BiLSTM, a transformer or BERT alike. ``predicate_segment: true``
additionally appends the predicate word as a second segment, ``[CLS] sentence [SEP] predicate
[SEP]`` (Shi & Lin 2019) — meant for BERT-layout tokenizers; the segment gets no tags.

**Metric** — srl-eval.pl (CoNLL-2005) semantics as far as they apply to BIO tags: an argument is
correct when its label and its exact word span both match a gold argument; precision = correct /
predicted, recall = correct / gold, F1 their harmonic mean, micro over all arguments; the verb
(``V``) is excluded from the overall scores as srl-eval excludes it (srl-eval lists V in its table
but not in "Overall"). Differences, said plainly: srl-eval joins a continuation ``C-X`` span to the
preceding ``X`` argument (both spans must match); here each span counts on its own with its label
``C-X`` as written, as AllenNLP's span F1 does. Sums (per label: correct, predicted, gold) are merged
by addition.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.conll2012 import read_srl
from bigmodel.data.records import Records
from bigmodel.data.tokenizers import pad_batch
from bigmodel.errors import DataError, RecipeError
from bigmodel.tasks.base import ExportSignature, batch_signature, number_field, parse_records, record_schema
from bigmodel.tasks.heads import TaggerModel
from bigmodel.tasks.text import (
    TokenizerOptions,
    build_text_encoder,
    check_text_encoder,
    text_field,
    words_field,
)
from bigmodel.tasks.token_classification import (
    EntityMetric,
    TagOutputs,
    TokenClassificationTask,
    _words,
    entity_scores,
    row_text,
    split_text,
)

PREDICATE = "predicate_index"
VERB = "V"
SRL_SUFFIXES = ("_conll", ".gold_conll", ".props")


class SemanticRoleLabelingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scheme: str = Field(
        "BIO", pattern="^BIO$", description="argument tags are BIO (CoNLL brackets read as BIO)"
    )
    crf: bool = Field(False, description="a CRF over the tags: its NLL is the loss, Viterbi decodes")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="before the head; default: the model's")
    predicate_segment: bool = Field(
        False, description="also append the predicate word as a second segment (BERT: [SEP] predicate [SEP])"
    )
    tokenizer: TokenizerOptions = TokenizerOptions()


class PredicateTaggerModel(TaggerModel):
    """A :class:`TaggerModel` whose backbone's token embeddings get ``predicate(indicator)`` added:
    ``predicate_mask`` ``(B, T)`` is 1 on the predicate's sub-tokens."""

    def __init__(self, backbone: nn.Module, num_tags: int, dropout: float | None = None, crf: bool = False):
        super().__init__(backbone, num_tags, dropout, crf)
        embed = getattr(backbone, "embed", None)
        if not isinstance(embed, nn.Embedding):
            raise RecipeError(
                f"model.arch: task semantic_role_labeling adds a predicate indicator to the token embedding "
                f"'embed', which {type(backbone).__name__} does not have."
            )
        self.predicate = nn.Embedding(2, embed.embedding_dim)
        nn.init.zeros_(self.predicate.weight)
        # The indicator of the call in flight, per thread: a Predictor serves many threads at once.
        self._call = threading.local()
        embed.register_forward_hook(self._add_indicator)

    def _add_indicator(self, module, args, output):
        indicator = getattr(self._call, "indicator", None)
        if indicator is None or output.shape[:2] != indicator.shape:
            return output
        return output + self.predicate(indicator).to(output.dtype)

    def forward(self, input_ids, attention_mask, token_type_ids=None, predicate_mask=None) -> torch.Tensor:
        self._call.indicator = predicate_mask.long() if predicate_mask is not None else None
        try:
            return super().forward(input_ids, attention_mask, token_type_ids)
        finally:
            self._call.indicator = None


class SRLMetric(EntityMetric):
    """:class:`EntityMetric`'s streamed counts; ``compute`` leaves the verb out (srl-eval's Overall)."""

    def compute(self) -> dict:
        types = self.task.tags.types
        keep = [i for i, t in enumerate(types) if t != VERB]
        sums = {**self.sums, **{k: self.sums[k][keep] for k in ("tp", "predicted", "gold")}}
        scores = entity_scores(sums, [types[i] for i in keep])
        return {**scores, "loss": float(self.sums["loss"] / max(float(self.sums["items"]), 1.0))}


class SemanticRoleLabelingTask(TokenClassificationTask):
    """Predicate-aware BIO tagging of semantic roles (one record per predicate frame)."""

    name = "semantic_role_labeling"
    Options = SemanticRoleLabelingOptions

    # -- recipe ---------------------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        data, model = recipe.data, recipe.model
        if data.features or data.text_pair:
            field = "data.features" if data.features else "data.text_pair"
            raise RecipeError(
                f"{field}: task semantic_role_labeling reads a tokens column (data.text, default 'tokens'), "
                f"'{PREDICATE}' and a tags column (data.label, default 'tags')."
            )
        check_text_encoder(recipe, family, self.name, "its tokenizer and argument labels")
        if model.options().get("head") == "tagging":
            raise RecipeError("model.head: the task adds its own tagging head; remove model.head.")

    def clean(self, records: Records, split: str) -> Records:
        records.require(PREDICATE, f"the predicate column '{PREDICATE}'")
        return super().clean(records, split)

    def _sentence(self, example: dict) -> tuple[list[str], list[str]]:
        words, tags = super()._sentence(example)
        _predicate(example, len(words))
        return words, tags

    # -- model ----------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        max_length = self.data.get("max_length", 128)
        backbone = build_text_encoder(family, options, pretrained, self.tokenizer, max_length)
        return PredicateTaggerModel(backbone, len(self.tags.names), self.options.dropout, self.options.crf)

    # -- examples -------------------------------------------------------------------------------------

    def _pair(self, example: dict, words: list[str]) -> str | None:
        return words[_predicate(example, len(words))] if self.options.predicate_segment else None

    def _annotate(self, item: dict, example: dict, spans: list[tuple[int, int]], encoded) -> None:
        """The predicate indicator: 1 on the predicate word's sub-tokens and on the second segment."""
        predicate = _predicate(example, len(spans))
        start, end = spans[predicate]
        item["indicator"] = [
            int(s == 1 or (s == 0 and b > a and start <= b - 1 < end))  # the token's last character
            for (a, b), s in zip(encoded.offsets, encoded.sequence_ids, strict=True)
        ]
        item["predicate"] = predicate

    def collate(self, items: list[dict]) -> dict:
        batch = super().collate(items)
        batch["predicate_mask"] = pad_batch([item["indicator"] for item in items], 0)[0]
        batch["predicate"] = [item["predicate"] for item in items]
        return batch

    def forward(self, model: nn.Module, batch: dict):
        emissions = model(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["predicate_mask"]
        )
        return TagOutputs(emissions, getattr(model, "crf", None))

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """The text inputs and ``predicate_mask`` (B, T): 1 on the predicate's tokens -> emissions."""
        names = ["input_ids", "attention_mask", "token_type_ids", "predicate_mask"]
        return batch_signature(model, batch, names, lengths=tuple(names), task=self.name)

    def metric(self) -> SRLMetric:
        return SRLMetric(self)

    # -- prediction -----------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """Frames to label: ``{"tokens": [...] or "sentence": "text", "predicate_index": i}``, a list
        of those, or a file (CoNLL-2012 ``*_conll``/``.gold_conll``, CoNLL-2005 ``.props``, or
        .csv/.jsonl/.parquet records)."""
        column = self.tokens_column
        if isinstance(raw, (str, Path)) and Path(raw).is_file():
            path = Path(raw)
            if path.name.lower().endswith(SRL_SUFFIXES):
                records = read_srl(path)
                return [{column: t, PREDICATE: p} for t, p in
                        zip(records.column("tokens"), records.column(PREDICATE), strict=True)]  # fmt: skip
            rows = parse_records(path, ignore=self.tags_column)
        elif isinstance(raw, dict):
            rows = [dict(raw)]
        elif isinstance(raw, (list, tuple)) and raw and all(isinstance(r, dict) for r in raw):
            rows = [dict(r) for r in raw]
        elif isinstance(raw, str):
            raise DataError(
                f"inputs: a semantic-role frame needs its predicate: give {{'sentence': {raw[:40]!r}, "
                f"'{PREDICATE}': N}} (N counts words from 0)."
            )
        else:
            rows = parse_records(raw, ignore=self.tags_column)
        out = []
        for i, row in enumerate(rows):
            try:
                if column not in row and isinstance(row.get("sentence"), str):
                    words, spans = split_text(row["sentence"])
                    if not words:
                        raise DataError("'sentence' has no words (only whitespace).")
                    frame = {column: words, "_text": row["sentence"], "_spans": spans}
                elif column in row:
                    frame = {column: _words(row[column], column)}
                else:
                    raise DataError(f"lacks the tokens key '{column}' (or 'sentence').")
                frame[PREDICATE] = row.get(PREDICATE)
                _predicate(frame, len(frame[column]))
            except DataError as exc:
                raise DataError(f"inputs: record {i + 1}: {exc}") from None
            out.append(frame)
        return out

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per frame: ``predicate`` (``text``, ``index``, ``start``, ``end``), ``arguments`` (``role``,
        ``text``, ``start``, ``end`` character offsets into the input sentence or the tokens joined with
        spaces, ``first``/``last`` word indexes), and ``tokens`` with their ``tags``."""
        predicted = self.decode(self.forward(model, batch), batch).cpu()
        out = []
        for row, words in enumerate(batch["words"]):
            ids = predicted[row, : len(words)].tolist()
            text, spans = row_text(batch, row)
            p = batch["predicate"][row]
            arguments = [
                {
                    "role": self.tags.types[kind],
                    "text": text[spans[a][0] : spans[b][1]],
                    "start": spans[a][0],
                    "end": spans[b][1],
                    "first": a,
                    "last": b,
                }  # fmt: skip
                for kind, a, b in self.tags.entities(ids)
                if self.tags.types[kind] != VERB
            ]
            out.append({
                "predicate": {"text": words[p], "index": p, "start": spans[p][0], "end": spans[p][1]},
                "arguments": arguments,
                "tokens": list(words),
                "tags": [self.tags.names[i] for i in ids],
            })  # fmt: skip
        return out

    def input_schema(self) -> dict:
        """A frame: its words (``tokens``: a list, or a string split on whitespace) or a ``sentence``
        (argument offsets then point into it) — one of the two — and the predicate's word index."""
        column = self.tokens_column
        about = "a predicate frame: a sentence and the index of its predicate word"
        predicate = number_field("the predicate's word index, counting from 0", integer=True, minimum=0)
        if column == "sentence":  # data.text names the words 'sentence': parse reads that key as the words
            return record_schema({column: words_field("the sentence's words"), PREDICATE: predicate},
                                 [column, PREDICATE], about)  # fmt: skip
        fields = {column: words_field("the sentence's words"),
                  "sentence": text_field("the sentence, split on whitespace (instead of the words)"),
                  PREDICATE: predicate}  # fmt: skip
        return record_schema(
            fields, [PREDICATE], about, oneOf=[{"required": [column]}, {"required": ["sentence"]}]
        )

    def report_rows(self, records, predictions: list[dict]) -> None:
        """No report rows (the tagger's entity rows do not describe semantic roles)."""
        return None


def _predicate(example: dict, n: int) -> int:
    """The frame's predicate word index, refused unless an integer in ``[0, n)``."""
    value = example.get(PREDICATE)
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise DataError(
            f"column '{PREDICATE}': expected the predicate's word index, an integer from 0 to {n - 1}, "
            f"got {value!r:.60}."
        )
    return value
