"""Sequence to sequence: translation (and summarisation) with an encoder–decoder model.

Records hold a source text and its target text: columns ``data.text`` (default ``source``) and
``data.label`` (default ``target``). One tokenizer serves both sides: trained on the train split's
sources and targets together (a shared BPE/unigram vocabulary, ``task.tokenizer``; the Transformer
paper's shared-vocabulary setting, so source and target embeddings can be one matrix), or the
checkpoint's own (``model.pretrained``, e.g. a T5 folder).

An example is the source's ids followed by end-of-sequence (at most ``data.max_length``) and the
target's ids followed by end-of-sequence (at most ``task.max_target_length``, default
``data.max_length``), both truncated to fit. Training is teacher forcing: the model shifts the labels
right behind ``decoder_start_token_id`` (the tokenizer's [CLS] for a trained one, the pad id for T5),
and the loss is the cross-entropy SUMMED over target tokens (``num_items`` = target tokens).

Metrics: ``loss`` (nats per target token), and ``bleu`` and ``chrf`` from sacreBLEU on translations
generated with the task's decoding (greedy, or beam search with ``task.num_beams``) — on
``task.eval_generate`` evenly spaced examples of each held-out split (None: all). ``task.eval_examples``
thins a held-out split to that many evenly spaced examples first (None: all).
The metric keeps sacreBLEU's sufficient statistics (n-gram matches and totals, lengths; chrF's
character and word n-gram counts) as sums, which add across batches and processes; the corpus score
is computed from the summed statistics, so it equals ``sacrebleu.corpus_bleu`` / ``corpus_chrf`` on the
same sentences. ``bleu_copy`` and ``chrf_copy`` score the copy-the-source baseline (the source text
as its own translation) on the same examples.

``predict`` turns source texts into ``{"source", "translation"}``. Models: ``transformer`` (encoder–
decoder from scratch) and ``t5`` (from scratch, or a Hugging Face T5 checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.records import Records, evenly_spaced
from bigmodel.data.tokenizer_training import TOKENIZER_KINDS
from bigmodel.data.tokenizers import TextTokenizer, TokenizerError, pad_batch
from bigmodel.errors import DataError, RecipeError, UserError
from bigmodel.models.generate import beam_search, generate
from bigmodel.models.registry import build_config
from bigmodel.tasks.base import (
    ExportSignature,
    Metric,
    batch_signature,
    is_data_file,
    parse_records,
    record_schema,
)
from bigmodel.tasks.text import TextTask, fit_tokenizer, load_pretrained, text_field


class Seq2SeqTokenizerOptions(BaseModel):
    """The shared source/target tokenizer trained on the train split (no ``model.pretrained``).
    Case is kept by default: BLEU and chrF are case-sensitive."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal[TOKENIZER_KINDS] = "bpe"  # type: ignore[valid-type]
    vocab_size: int = Field(8000, ge=16)
    lowercase: bool = False
    min_frequency: int = Field(2, ge=1)


class Seq2SeqOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizer: Seq2SeqTokenizerOptions = Seq2SeqTokenizerOptions()
    max_target_length: int | None = Field(
        None, ge=2, description="target tokens per example, end-of-sequence included; default data.max_length"
    )
    eval_examples: int | None = Field(
        None,
        ge=1,
        description="evaluate each held-out split on this many evenly spaced examples (null = all)",
    )
    eval_generate: int | None = Field(
        200, ge=0, description="translate this many evenly spaced examples of each evaluated held-out split "
        "for BLEU/chrF (null = all of them)",
    )  # fmt: skip
    num_beams: int = Field(1, ge=1, description="decoding: 1 = greedy, more = beam search")
    length_penalty: float = Field(1.0, description="beam search: exponent on the length (> 0 favours long)")
    max_new_tokens: int | None = Field(
        None, ge=1, description="decoding: tokens generated at most; default max_target_length"
    )


class Seq2SeqOutputs(NamedTuple):
    """What :meth:`Seq2SeqTask.forward` returns: teacher-forced logits ``(B, T, V)`` (None when the
    batch has no targets) and, in eval mode, the translation of each example marked for generation
    (None for the others)."""

    logits: torch.Tensor | None
    translations: list[str | None]


def _sacrebleu():
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:
        raise UserError(
            "task seq2seq: BLEU and chrF come from the package sacrebleu, which is not installed: "
            "pip install sacrebleu."
        ) from None
    return BLEU(), CHRF()


class Seq2SeqTask(TextTask):
    """Translation with teacher forcing; BLEU and chrF on generated translations."""

    name = "seq2seq"
    Options = Seq2SeqOptions
    predict_options = ("num_beams", "length_penalty", "max_new_tokens")
    metric_names = ("loss", "bleu", "chrf")
    higher_is_better = {"loss": False, "bleu": True, "chrf": True}
    state_types = {"eos": int}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.tokenizer: TextTokenizer | None = None
        self.eos: int | None = None
        self._generate_for: set[str] | None = None  # sources to translate during evaluation; None = all

    @property
    def columns(self) -> tuple[str, str]:
        return self.data.get("text") or "source", self.data.get("label") or "target"

    @property
    def max_length(self) -> int:
        return int(self.data.get("max_length") or 128)

    @property
    def max_target_length(self) -> int:
        return self.options.max_target_length or self.max_length

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        cls, model = family.model_cls, recipe.model
        if not (hasattr(cls, "encode") and hasattr(cls, "decode") and hasattr(cls, "new_cache")):
            raise RecipeError(
                f"model.arch: task seq2seq needs an encoder-decoder model (transformer, t5); "
                f"'{family.name}' is not one."
            )
        if model.options().get("num_decoder_layers") == 0:
            raise RecipeError("model.num_decoder_layers: 0 builds no decoder; seq2seq needs one (>= 1).")
        for key in ("vocab_size", "tgt_vocab_size"):
            if model.pretrained is None and key in model.options():
                raise RecipeError(f"model.{key}: set by the task (from its tokenizer); remove it.")
        for field in ("features", "text_pair"):
            if getattr(recipe.data, field, None):
                raise RecipeError(
                    f"data.{field}: task seq2seq reads a source column (data.text, default 'source') and a "
                    f"target column (data.label, default 'target'); remove data.{field}."
                )

    def _text(self, example: dict, column: str, field: str) -> str:
        value = example.get(column)
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else f"{type(value).__name__} {value!r:.60}"
            if column not in example:
                got = "nothing (the column is missing)"
            raise DataError(f"column '{column}' ({field}): expected a non-empty string, got {got}.")
        return value

    def clean(self, records: Records, split: str) -> Records:
        """Refuse, naming the split, row and column, a source or target that is not a non-empty string;
        choose which held-out examples are translated during evaluation."""
        source, target = self.columns
        records.require(source, "data.text")
        records.require(target, "data.label")
        for i, example in enumerate(records):
            try:
                self._text(example, source, "data.text")
                self._text(example, target, "data.label")
            except DataError as exc:
                raise DataError(
                    f"{records.where} ({split} split), row {records.row_number(i)}: {exc}"
                ) from None
        if split == "train":
            return records
        if self.options.eval_examples is not None and self.options.eval_examples < len(records):
            records = records.select(evenly_spaced(len(records), self.options.eval_examples))
        n = self.options.eval_generate
        rows = range(len(records)) if n is None else evenly_spaced(len(records), n)
        chosen = {records[int(i)][source] for i in rows}
        self._generate_for = (self._generate_for or set()) | chosen
        return records

    def fit(self, train: Records) -> None:
        source, target = self.columns
        texts = (text for example in train for text in (example[source], example[target]))
        self._use(fit_tokenizer(self.data.get("pretrained"), texts, self.options.tokenizer))

    def _use(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        for candidate in (tokenizer.eos_token_id, tokenizer.sep_token_id):
            if candidate is not None:
                self.eos = candidate
                return
        raise TokenizerError("the tokenizer has no end-of-sequence or separator token to end sequences with.")

    @property
    def start_id(self) -> int:
        """The decoder's first input for a model built here: [CLS] (bos) of a trained tokenizer."""
        tok = self.tokenizer
        for candidate in (tok.bos_token_id, tok.cls_token_id):
            if candidate is not None:
                return candidate
        return tok.pad_id

    def notes(self) -> list[str]:
        if self.tokenizer is None:
            return []
        kind = self.options.tokenizer.kind if self.data.get("pretrained") is None else "pretrained"
        return [f"seq2seq: {self.tokenizer.vocab_size} tokens in the shared vocabulary ({kind})."]

    def state(self) -> dict:
        return {**super().state(), "eos": self.eos}

    @classmethod
    def restore(cls, state: dict, run_dir: Path) -> Seq2SeqTask:
        task = super().restore(state, run_dir)
        task._use(task.tokenizer)
        if task.eos != state["eos"]:
            raise DataError(f"{run_dir / 'task.json'}: its end-of-sequence id does not match tokenizer.json.")
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        if pretrained is not None:
            model = load_pretrained(family, options, pretrained)
        else:
            tok = self.tokenizer
            wanted = {"vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id, "eos_token_id": self.eos,
                      "decoder_start_token_id": self.start_id,
                      "max_positions": max(self.max_length, self.max_target_length + 1)}  # fmt: skip
            wanted = {k: v for k, v in wanted.items() if k in family.config_fields()}
            model = family.model_cls(build_config(family, {**wanted, **options}))
        config = model.config
        positions = getattr(config, "max_positions", None)
        if positions is not None and max(self.max_length, self.max_target_length + 1) > positions:
            raise RecipeError(
                f"data.max_length / task.max_target_length: {self.max_length} source and "
                f"{self.max_target_length} target tokens exceed the model's {positions} positions."
            )
        vocab = getattr(config, "tgt_vocab_size", None) or config.vocab_size
        if self.tokenizer.vocab_size > min(config.vocab_size, vocab):
            raise RecipeError(
                f"model.pretrained: the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                f"{min(config.vocab_size, vocab)} embeddings; the folder's tokenizer does not belong to its "
                "weights."
            )
        return model

    # -- examples -----------------------------------------------------------------------------------

    def _ids(self, text: str, limit: int) -> list[int]:
        ids = self.tokenizer.encode_one(text, truncation=False, add_special_tokens=False).ids
        return [*ids[: limit - 1], self.eos]

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        source_col, target_col = self.columns
        source = self._text(example, source_col, "data.text")
        item = {"source": source, "input_ids": self._ids(source, self.max_length)}
        target = example.get(target_col)
        if target is not None:
            target = self._text(example, target_col, "data.label")
            item["target"] = target
            item["labels"] = self._ids(target, self.max_target_length)
            item["generate"] = self._generate_for is None or source in self._generate_for
        return item

    def length(self, example: dict) -> int | None:
        source, target = self.columns
        return len(str(example.get(source, ""))) + len(str(example.get(target, "")))

    def collate(self, items: list[dict]) -> dict:
        ids, mask = pad_batch([item["input_ids"] for item in items], self.tokenizer.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask, "sources": [item["source"] for item in items]}
        if all("labels" in item for item in items):
            labels, _ = pad_batch([item["labels"] for item in items], -100)
            batch |= {
                "labels": labels,
                "references": [item["target"] for item in items],
                "generate": [item["generate"] for item in items],
                "num_items": int((labels != -100).sum()),
            }
        else:
            batch["num_items"] = len(items)
        return batch

    def forward(self, model: nn.Module, batch: dict) -> Seq2SeqOutputs:
        logits = None
        if "labels" in batch:
            logits = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        translations: list[str | None] = [None] * len(batch["input_ids"])
        rows = [i for i, wanted in enumerate(batch.get("generate") or []) if wanted]
        if not model.training and rows:
            for i, text in zip(rows, self.translate(model, batch, rows), strict=True):
                translations[i] = text
        return Seq2SeqOutputs(logits, translations)

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """Teacher forcing: ``input_ids``, ``attention_mask`` (B, S) and ``decoder_input_ids`` (B, T),
        the batch's ``labels`` shifted right -> logits (B, T, V). Translating has graphs of its own
        (``export_decoder``: encoder, prefill, decode)."""
        if not isinstance(batch.get("labels"), torch.Tensor):
            raise UserError(
                f"export: {self.name}: the example batch needs target texts (labels) to trace the decoder."
            )
        batch = {**batch, "decoder_input_ids": model.shift_right(batch["labels"])}
        signature = batch_signature(model, batch, ["input_ids", "attention_mask", "decoder_input_ids"],
                                    lengths=("input_ids", "attention_mask"), task=self.name)  # fmt: skip
        signature.dynamic["decoder_input_ids"][1] = "target_length"
        return signature

    def check_outputs(self, outputs, batch: dict) -> None:
        logits = outputs.logits if isinstance(outputs, Seq2SeqOutputs) else outputs
        B, T = batch["labels"].shape
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != (B, T) \
                or logits.shape[2] < self.tokenizer.vocab_size:  # fmt: skip
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise DataError(
                f"module: seq2seq needs next-token logits of shape ({B}, {T}, "
                f">= {self.tokenizer.vocab_size}), got {got}."
            )

    def loss_from(self, outputs, batch: dict) -> torch.Tensor:
        logits = outputs.logits if isinstance(outputs, Seq2SeqOutputs) else outputs
        V = logits.shape[-1]
        return F.cross_entropy(
            logits.float().reshape(-1, V), batch["labels"].reshape(-1), ignore_index=-100, reduction="sum"
        )

    def metric(self) -> Seq2SeqMetric:
        return Seq2SeqMetric()

    # -- decoding and prediction --------------------------------------------------------------------

    @torch.no_grad()
    def translate(self, model: nn.Module, batch: dict, rows: list[int] | None = None) -> list[str]:
        """Translations of the batch's sources (or of ``rows`` of them) with the task's decoding."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if rows is not None:
            index = torch.as_tensor(rows, device=ids.device)
            ids, mask = ids.index_select(0, index), mask.index_select(0, index)
        options = self.options
        max_new = options.max_new_tokens or self.max_target_length
        common = {"max_new_tokens": max_new, "stop_tokens": [self.eos], "pad_token_id": self.tokenizer.pad_id}
        if options.num_beams > 1:
            out = beam_search(model, ids, mask, num_beams=options.num_beams,
                              length_penalty=options.length_penalty, **common)  # fmt: skip
        else:
            out = generate(model, ids, mask, **common)
        texts = []
        for row in out[:, 1:].tolist():  # the first column is decoder_start_token_id
            row = row[: row.index(self.eos)] if self.eos in row else row
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    def parse(self, raw) -> list[dict]:
        """A source text (a string), a list of them, records with the source column, or a data file."""
        source, target = self.columns
        if isinstance(raw, str) and not is_data_file(raw):
            rows = [{source: raw}]
        elif isinstance(raw, (list, tuple)) and raw and not any(isinstance(r, dict) for r in raw):
            rows = [{source: r} for r in raw]
        else:
            rows = parse_records(raw, ignore=target)
        for i, row in enumerate(rows):
            try:
                self._text(row, source, "data.text")
            except DataError as exc:
                raise DataError(f"inputs: row {i + 1}: {exc}") from None
        return [{source: row[source]} for row in rows]

    def input_schema(self) -> dict:
        """The source text to translate (or rewrite)."""
        source, _ = self.columns
        return record_schema({source: text_field("the source text")}, [source], "a source text")

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        """Per record: the source, its reference target and the generated text (``correct`` is None:
        BLEU and chrF, not a right/wrong, say how close it is)."""
        source, target = self.columns
        return [{"input": r.get(source, p["source"]), "truth": r.get(target), "prediction": p["translation"],
                 "correct": None} for r, p in zip(records, predictions, strict=True)]  # fmt: skip

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per source: ``{"source", "translation"}``."""
        return [
            {"source": s, "translation": t}
            for s, t in zip(batch["sources"], self.translate(model, batch), strict=True)
        ]


class Seq2SeqMetric(Metric):
    """Summed loss and target tokens, and sacreBLEU's sufficient statistics of the generated
    translations (and of the copy-the-source baseline) — all sums, mergeable by addition."""

    def __init__(self):
        super().__init__()
        self.bleu, self.chrf = _sacrebleu()

    def update(self, outputs: Seq2SeqOutputs, batch: dict) -> None:
        logits, labels = outputs.logits, batch["labels"]
        B, T, V = logits.shape
        rows = F.cross_entropy(
            logits.float().reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="none"
        ).reshape(B, T).sum(1)  # fmt: skip
        self.count_non_finite(rows[:, None])
        self.add("loss", torch.nan_to_num(rows).sum())
        self.add("items", (labels != -100).sum())
        done = [i for i, text in enumerate(outputs.translations) if text is not None]
        if done:
            refs = [batch["references"][i] for i in done]
            self.add_sentences([outputs.translations[i] for i in done], refs, "")
            self.add_sentences([batch["sources"][i] for i in done], refs, "_copy")

    def add_sentences(self, hypotheses: list[str], references: list[str], suffix: str = "") -> None:
        """Add the BLEU and chrF statistics of ``hypotheses`` against one reference each."""
        for name, scorer in (("bleu", self.bleu), ("chrf", self.chrf)):
            stats = scorer._extract_corpus_statistics(hypotheses, [references])
            self.add(f"{name}{suffix}_stats", torch.tensor(stats, dtype=torch.float64).sum(0))
        self.add(f"sentences{suffix}", torch.tensor(len(hypotheses)))

    def scores(self, suffix: str = "") -> dict:
        """BLEU and chrF (0-100) from the summed statistics (empty dict when nothing was translated)."""
        if f"bleu{suffix}_stats" not in self.sums:
            return {}
        out = {}
        for name, scorer in (("bleu", self.bleu), ("chrf", self.chrf)):
            stats = [int(round(float(x))) for x in self.sums[f"{name}{suffix}_stats"]]
            out[f"{name}{suffix}"] = float(scorer._compute_score_from_stats(stats).score)
        return out

    def compute(self) -> dict:
        self.check_finite()
        items = float(self.sums.get("items", torch.tensor(0.0)))
        if not items:
            raise UserError("seq2seq: no target token in this split (it is empty).")
        out = {"loss": float(self.sums["loss"]) / items, "tokens": int(items)}
        out |= self.scores() | self.scores("_copy")
        if "sentences" in self.sums:
            out["translated"] = int(self.sums["sentences"])
        return out
