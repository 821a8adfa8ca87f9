"""Extractive question answering (SQuAD layout): the answer is a span of the context.

Records hold ``question``, ``context`` and (to train or score) ``answers`` =
``{"text": [...], "answer_start": [...]}`` (character offsets; several gold answers allowed), as the
``squad:PATH`` source (data/squad.py) and Hugging Face's ``squad`` dataset give them; a list of
``{"text", "answer_start"}`` objects, or that JSON in a CSV cell, is read too. ``data.text`` /
``data.text_pair`` / ``data.label`` rename the question / context / answers columns.

**Windows.** The pair is tokenized as ``[CLS] question [SEP] context [SEP]`` (whatever the tokenizer's
pair template is). The question is cut to ``task.max_question_length`` tokens; a context longer than
what ``data.max_length`` leaves is split into overlapping windows, consecutive windows sharing
``task.doc_stride`` tokens (Hugging Face ``run_qa``'s meaning of the stride), so every context token is
in some window and an answer shorter than the overlap lies wholly inside one. ``encode`` returns ONE
example = one question *with all its windows*; ``collate`` flattens the windows of the batch's
questions into rows and keeps ``question_of`` (row -> question). So the windows of a question always
share a batch (and a process: the sampler shards questions), and the metric scores each question once,
from all its windows, with nothing carried between batches. A batch thus holds ``batch_size`` questions
and at least as many rows.

**Labels and loss.** A window's label is the first and last token of the first gold answer lying wholly
inside it, or position 0 (``[CLS]``) when none does (Devlin et al. 2019 §4.2; the null position of
BERT's SQuAD 2.0 recipe). The start and end scores are soft-maxed over the window's context tokens and
position 0 (question tokens, separators and padding cannot be chosen); the loss is the sum over windows
of the start and end cross-entropies, and ``num_items`` counts windows.

**Decoding.** Per window, the best span maximises start + end score over context tokens ``s <= e <
s + task.max_answer_length``; per question, the best window's span wins (BERT's reference decoding).
It is mapped back through the tokens' character offsets into the original context string, so
``context[start:end] == answer``. ``score`` is the span's probability under the window's start and
end distributions.

**Metric.** Exact match and F1 exactly as the official SQuAD v1.1 ``evaluate-v1.1.py`` computes them:
answers normalised (lower case, ASCII punctuation removed, articles a/an/the removed, whitespace
collapsed), F1 over the bags of normalised tokens, each the maximum over the gold answers, averaged
over questions. They are reported as fractions (the script prints them times 100). The metric's state
is sums (EM, F1, questions, loss, windows), mergeable by addition across batches and processes.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.squad import check_answer, read_squad
from bigmodel.data.tokenizers import pad_batch
from bigmodel.data.values import short_repr
from bigmodel.errors import DataError, RecipeError
from bigmodel.tasks.base import Metric, read_inputs, record_schema
from bigmodel.tasks.heads import SpanModel
from bigmodel.tasks.text import (
    TextTask,
    TokenizerOptions,
    build_text_encoder,
    check_text_encoder,
    fit_tokenizer,
    text_field,
)

METRICS = ("loss", "exact_match", "f1")
NEG = -1e9  # the score of a position that cannot be chosen (in float32)


class QuestionAnsweringOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_stride: int = Field(
        32, ge=0, description="tokens shared by consecutive windows of a context longer than one window"
    )
    max_question_length: int = Field(32, ge=1, description="questions are cut to this many tokens")
    max_answer_length: int = Field(30, ge=1, description="the longest answer predicted, in tokens")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="before the head; default: the model's")
    tokenizer: TokenizerOptions = TokenizerOptions()


class Span(NamedTuple):
    """A question's decoded answer: its row (window), tokens and characters, scores."""

    row: int
    first: int  # token positions in the row, inclusive
    last: int
    start: int  # character offsets in the context
    end: int
    score: float  # the span's probability in its window


# --- the official SQuAD v1.1 scores -------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (in the
    official script's order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of the normalised answers (0 when they share no token, as in v1.1)."""
    predicted, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(true)
    return 2 * precision * recall / (precision + recall)


def best_over_gold(score, prediction: str, golds: list[str]) -> float:
    return max(score(prediction, gold) for gold in golds)


# --- reading records ----------------------------------------------------------------------------------


def read_answers(value, context: str) -> tuple[list[str], list[int]]:
    """An answers cell as ``(texts, starts)``, each answer checked against ``context``.

    Raises:
        DataError: the cell is not ``{"text": [...], "answer_start": [...]}`` (or a list of
            ``{"text", "answer_start"}``, or that as JSON text), or an answer is not where it says.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(
                f"expected {{'text': [...], 'answer_start': [...]}} (or its JSON), got {short_repr(value)}."
            ) from None
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(a, Mapping) for a in value):
        value = {
            "text": [a.get("text") for a in value],
            "answer_start": [a.get("answer_start") for a in value],
        }
    if not isinstance(value, Mapping) or "text" not in value or "answer_start" not in value:
        raise DataError(f"expected {{'text': [...], 'answer_start': [...]}}, got {short_repr(value)}.")
    texts, starts = _as_list(value["text"]), _as_list(value["answer_start"])
    if texts is None or starts is None or len(texts) != len(starts):
        raise DataError(
            f"'text' and 'answer_start' must be lists of the same length, got {short_repr(value)}."
        )
    if not texts:
        raise DataError("no answers; every question needs at least one (SQuAD v1.1).")
    for k, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if not isinstance(text, str) or not text:
            raise DataError(f"answer {k + 1}: text {short_repr(text)} is not a non-empty string.")
        if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)):
            raise DataError(f"answer {k + 1}: answer_start {short_repr(start)} is not an integer.")
        check_answer(context, text, int(start), f"answer {k + 1} ({text!r:.40}), answer_start")
    return list(texts), [int(s) for s in starts]


def _as_list(value) -> list | None:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else None


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"field '{field}': expected text, got {short_repr(value)} ({type(value).__name__}).")
    if not value.strip():
        raise DataError(f"field '{field}': the text is empty.")
    return value


# --- the task -----------------------------------------------------------------------------------------


class QuestionAnsweringTask(TextTask):
    """Extractive QA: start/end scores over the context's tokens, long contexts in windows."""

    name = "question_answering"
    Options = QuestionAnsweringOptions
    predict_options = ("max_answer_length",)
    metric_names = METRICS
    higher_is_better = {"loss": False, "exact_match": True, "f1": True}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self._pairs = None  # the tokenizer's copy that cuts pairs into windows (see _windows)

    @property
    def columns(self) -> tuple[str, str, str]:
        """The question, context and answers columns."""
        d = self.data
        return d.get("text") or "question", d.get("text_pair") or "context", d.get("label") or "answers"

    @property
    def max_length(self) -> int:
        return self.data.get("max_length", 128)

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        if recipe.data.features:
            raise RecipeError(
                "data.features: task question_answering reads a question column (data.text, default "
                "'question'), a context column (data.text_pair, default 'context') and an answers column "
                "(data.label, default 'answers')."
            )
        check_text_encoder(recipe, family, self.name, "its tokenizer")

    def clean(self, records: Records, split: str) -> Records:
        """Refuse, naming the row (and id) and the field, a question or context that is not text, or
        answers that are malformed or not where their ``answer_start`` says."""
        question, context, answers = self.columns
        records.require(question, "data.text")
        records.require(context, "data.text_pair")
        records.require(answers, "data.label")
        for i, example in enumerate(records):
            try:
                self._read(example, need_answers=True)
            except DataError as exc:
                qid = f" (id {example['id']!r})" if "id" in example else ""
                raise DataError(
                    f"{records.where} ({split} split), row {records.row_number(i)}{qid}: {exc}"
                ) from None
        return records

    def _read(self, example: dict, need_answers: bool) -> tuple[str, str, list[str] | None, list[int] | None]:
        question_col, context_col, answers_col = self.columns
        for column in (question_col, context_col):
            if column not in example:
                raise DataError(f"field '{column}' is missing.")
        question = _text(example[question_col], question_col)
        context = _text(example[context_col], context_col)
        if answers_col not in example:
            if need_answers:
                raise DataError(f"field '{answers_col}' is missing.")
            return question, context, None, None
        try:
            texts, starts = read_answers(example[answers_col], context)
        except DataError as exc:
            raise DataError(f"field '{answers_col}': {exc}") from None
        return question, context, texts, starts

    def fit(self, train: Records) -> None:
        question, context, _ = self.columns
        texts = (t for column in (question, context) for t in train.column(column))
        self.tokenizer = fit_tokenizer(self.data.get("pretrained"), texts, self.options.tokenizer)
        self._check_room()

    def _check_room(self) -> None:
        """The context must get more tokens per window than consecutive windows share."""
        specials = self.tokenizer.tokenizer.num_special_tokens_to_add(True)
        room = self.max_length - specials - self.options.max_question_length
        if room <= self.options.doc_stride:
            raise RecipeError(
                f"task.doc_stride: {self.options.doc_stride} tokens of overlap, but data.max_length "
                f"{self.max_length} leaves only {room} context tokens per window after a question of up to "
                f"task.max_question_length {self.options.max_question_length} tokens and {specials} special "
                f"tokens; use doc_stride < {max(room, 1)}, a shorter max_question_length or a longer "
                "max_length."
            )

    @classmethod
    def restore(cls, state: dict, run_dir: Path) -> QuestionAnsweringTask:
        task = super().restore(state, run_dir)
        task._check_room()
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        backbone = build_text_encoder(family, options, pretrained, self.tokenizer, self.max_length)
        return SpanModel(backbone, self.options.dropout)

    # -- examples -----------------------------------------------------------------------------------

    def _windows(self, question: str, context: str) -> list:
        """The pair's encodings: ``[CLS] question [SEP] window [SEP]`` per window of the context."""
        if self._pairs is None:
            from tokenizers import Tokenizer

            pairs = Tokenizer.from_str(self.tokenizer.tokenizer.to_str())
            pairs.no_padding()
            pairs.enable_truncation(self.max_length, stride=self.options.doc_stride, strategy="only_second")
            self._pairs = pairs  # set once, then only read: safe to share between threads
        limit = self.options.max_question_length
        asked = self.tokenizer.encode_one(question, add_special_tokens=False, truncation=False)
        if len(asked) > limit:
            question = question[: asked.offsets[limit - 1][1]]
        first = self._pairs.encode(question, context)
        return [first, *first.overflowing]

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        question, context, texts, starts = self._read(example, need_answers=False)
        windows = []
        for enc in self._windows(question, context):
            in_context = [s == 1 for s in enc.sequence_ids]
            window = {"ids": enc.ids, "type_ids": enc.type_ids, "offsets": enc.offsets, "context": in_context}
            if texts is not None:
                window["label"] = _label(enc.offsets, in_context, texts, starts)
            windows.append(window)
        return {"windows": windows, "question": question, "context": context, "answers": texts,
                "id": example.get("id")}  # fmt: skip

    def length(self, example: dict) -> int:
        question, context, _, _ = self._read(example, need_answers=False)
        return sum(len(enc.ids) for enc in self._windows(question, context))

    def collate(self, items: list[dict]) -> dict:
        rows = [w for item in items for w in item["windows"]]
        ids, mask = pad_batch([w["ids"] for w in rows], self.tokenizer.pad_id)
        types, _ = pad_batch([w["type_ids"] for w in rows], 0)
        in_context, _ = pad_batch([w["context"] for w in rows], 0)
        offsets = torch.zeros(*ids.shape, 2, dtype=torch.long)
        for r, w in enumerate(rows):
            offsets[r, : len(w["offsets"])] = torch.as_tensor(w["offsets"], dtype=torch.long).reshape(-1, 2)
        question_of = [q for q, item in enumerate(items) for _ in item["windows"]]
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                 "context_mask": in_context.bool(), "offsets": offsets,
                 "question_of": torch.as_tensor(question_of, dtype=torch.long),
                 "contexts": [item["context"] for item in items],
                 "questions": [item["question"] for item in items],
                 "ids": [item["id"] for item in items], "num_items": len(rows)}  # fmt: skip
        if all(item["answers"] is not None for item in items):
            labels = torch.as_tensor([w["label"] for w in rows], dtype=torch.long).reshape(-1, 2)
            batch["start_positions"], batch["end_positions"] = labels[:, 0], labels[:, 1]
            batch["answers"] = [item["answers"] for item in items]
        return batch

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def check_outputs(self, outputs, batch: dict) -> None:
        want = (*batch["input_ids"].shape, 2)
        if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != want:
            got = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise DataError(f"module: question_answering needs start/end scores of shape {want}, got {got}.")

    def _log_probs(self, outputs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end log-probabilities ``(N, T)`` over each window's context tokens and position 0."""
        allowed = batch["context_mask"].clone()
        allowed[:, 0] = True
        scores = outputs.float().masked_fill(~allowed.unsqueeze(-1), NEG)
        return scores[..., 0].log_softmax(-1), scores[..., 1].log_softmax(-1)

    def loss_from(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        start, end = self._log_probs(outputs, batch)
        return F.nll_loss(start, batch["start_positions"], reduction="sum") + F.nll_loss(
            end, batch["end_positions"], reduction="sum"
        )

    def decode(self, outputs: torch.Tensor, batch: dict) -> list[Span | None]:
        """Each question's best span over its windows (None when no window holds a context token)."""
        start, end = self._log_probs(outputs, batch)  # (N, T) each
        in_context = batch["context_mask"]
        N, T = start.shape
        pos = torch.arange(T, device=start.device)
        width = pos[None, :] - pos[:, None]  # (T, T): e - s
        band = (width >= 0) & (width < self.options.max_answer_length)
        ok = in_context[:, :, None] & in_context[:, None, :] & band  # (N, T, T)
        # Start + end *scores* pick the span (BERT's decoding); within one window they differ from the
        # log-probabilities by a constant, so this is also each window's most probable span.
        raw = outputs.float()
        pair = (raw[..., 0][:, :, None] + raw[..., 1][:, None, :]).masked_fill(~ok, -torch.inf)
        value, flat = pair.reshape(N, -1).max(-1)
        rows = torch.arange(N, device=flat.device)
        chosen = (start[rows, flat // T] + end[rows, flat % T]).exp().cpu().tolist()
        value, flat = value.cpu(), flat.cpu()
        first, last = (flat // T).tolist(), (flat % T).tolist()
        offsets = batch["offsets"].cpu()
        found: list[Span | None] = [None] * len(batch["contexts"])
        best = [-torch.inf] * len(found)
        for r, q in enumerate(batch["question_of"].tolist()):
            if value[r] > best[q]:
                best[q] = float(value[r])
                s, e = first[r], last[r]
                found[q] = Span(r, s, e, int(offsets[r, s, 0]), int(offsets[r, e, 1]), chosen[r])
        return found

    def metric(self) -> SquadMetric:
        return SquadMetric(self)

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """Records with a question and a context (a dict, a list of dicts, a .jsonl/.csv/.parquet
        file, or a SQuAD .json file), or ``(question, context)`` string pairs; each row's question and
        context must be non-empty strings (refused naming the row and field)."""
        question, context, _ = self.columns
        if isinstance(raw, (str, Path)) and str(raw).lower().endswith(".json") and _is_squad(raw):
            rows, where, numbers = list(read_squad(raw)), str(raw), range(1, 1 << 62)
        elif isinstance(raw, (list, tuple)) and len(raw) == 2 and all(isinstance(r, str) for r in raw):
            rows, where, numbers = [{question: raw[0], context: raw[1]}], "inputs", range(1, 2)
        elif isinstance(raw, (list, tuple)) and raw and all(isinstance(r, (list, tuple)) for r in raw):
            bad = next((i for i, r in enumerate(raw) if len(r) != 2), None)
            if bad is not None:
                raise DataError(
                    f"inputs: row {bad + 1} is {short_repr(raw[bad])}; give (question, context) pairs."
                )
            rows = [{question: q, context: c} for q, c in raw]
            where, numbers = "inputs", range(1, len(rows) + 1)
        elif isinstance(raw, str) and not _is_file(raw):
            raise DataError(
                f"inputs: a question needs its context; give {{'{question}': ..., '{context}': ...}} "
                "records, (question, context) pairs, or a .jsonl/.csv/.parquet or SQuAD .json file."
            )
        else:
            rows, where, numbers = read_inputs(raw, ignore=self.columns[2])
        for row, n in zip(rows, numbers, strict=False):
            try:
                self._read(row, need_answers=False)
            except DataError as exc:
                raise DataError(f"{where}: row {n}: {exc}") from None
        return [dict(r) for r in rows]

    def input_schema(self) -> dict:
        """A question and the context its answer is extracted from."""
        question, context, _ = self.columns
        fields = {question: text_field("the question"), context: text_field("the text holding the answer")}
        return record_schema(fields, [question, context], "a question and the context to find its answer in")

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per question: ``answer`` (the text), ``start``/``end`` (character offsets into the context,
        ``context[start:end] == answer``) and ``score`` (the span's probability in its window)."""
        spans = self.decode(self.forward(model, batch), batch)
        out = []
        for context, span in zip(batch["contexts"], spans, strict=True):
            if span is None:  # a context with no tokens the tokenizer keeps
                out.append({"answer": "", "start": 0, "end": 0, "score": 0.0})
            else:
                out.append(
                    {
                        "answer": context[span.start : span.end],
                        "start": span.start,
                        "end": span.end,
                        "score": float(span.score),
                    }  # fmt: skip
                )
        return out


def _label(offsets, in_context: list[bool], texts: list[str], starts: list[int]) -> tuple[int, int]:
    """The first and last token of the first answer lying wholly inside the window, else ``(0, 0)``."""
    positions = [p for p, inside in enumerate(in_context) if inside and offsets[p][1] > offsets[p][0]]
    if not positions:
        return 0, 0
    lo, hi = offsets[positions[0]][0], offsets[positions[-1]][1]
    for text, start in zip(texts, starts, strict=True):
        end = start + len(text)
        if start < lo or end > hi:
            continue
        # the first token ending after the answer's first character, the last starting before its end
        first = next(p for p in positions if offsets[p][1] > start)
        last = next(p for p in reversed(positions) if offsets[p][0] < end)
        if first <= last:
            return first, last
    return 0, 0


def _is_squad(path) -> bool:
    """Whether a .json file holds a SQuAD document (``{"data": [...]}``), not JSON lines."""
    if not _is_file(path):
        return False
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("data"), list)


def _is_file(name) -> bool:
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


class SquadMetric(Metric):
    """Sums of per-question exact match and F1 (max over gold answers), questions, the summed loss and
    windows. ``compute``: the means, as fractions, and the loss per window."""

    def __init__(self, task: QuestionAnsweringTask):
        super().__init__()
        self.task = task

    def update(self, outputs: torch.Tensor, batch: dict) -> None:
        self.count_non_finite(outputs)
        em = f1 = 0.0
        for context, golds, span in zip(batch["contexts"], batch["answers"], self.task.decode(outputs, batch),
                                        strict=True):  # fmt: skip
            predicted = "" if span is None else context[span.start : span.end]
            em += best_over_gold(exact_match, predicted, golds)
            f1 += best_over_gold(f1_score, predicted, golds)
        self.add("exact_match", torch.tensor(em))
        self.add("f1", torch.tensor(f1))
        self.add("questions", torch.tensor(float(len(batch["contexts"]))))
        self.add("loss", self.task.loss_from(outputs, batch).float())
        self.add("items", torch.tensor(float(batch["num_items"])))

    def compute(self) -> dict:
        self.check_finite()
        questions = max(float(self.sums["questions"]), 1.0)
        return {
            "loss": float(self.sums["loss"]) / max(float(self.sums["items"]), 1.0),
            "exact_match": float(self.sums["exact_match"]) / questions,
            "f1": float(self.sums["f1"]) / questions,
        }
