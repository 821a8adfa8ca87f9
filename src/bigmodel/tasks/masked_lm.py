"""Masked language modelling: BERT-style pretraining of a text encoder on raw text (Devlin et al. 2019, §3.1).

Each example is one text (``data.text``). When it is encoded for training, ``mask_prob`` of its tokens
(``max(1, round(n * mask_prob))`` of the ``n`` non-special tokens, as BERT's
``create_pretraining_data.py`` counts them) are chosen; of those, 80 % become ``[MASK]``, 10 % a
random token and 10 % stay unchanged, and the model is scored on recovering all of them. The choice
is *dynamic* (Liu et al. 2019, RoBERTa §4.1): it is drawn from the example's RNG, which the data
loader derives from (seed, epoch, index), so it is fresh every epoch and the same for any number of
workers or processes. Evaluation masks each text the same way every time (an RNG seeded by the text).
Special tokens ([CLS], [SEP], padding) are never chosen.

The model is the family's own published head — BERT's masked-LM head, tied to the word embeddings —
not a task head, so a run holds a complete ``BertForMaskedLM``. It starts from scratch (a tokenizer
trained on the train split, ``task.tokenizer``) or from a checkpoint (``model.pretrained``; a bare
encoder gets a fresh head). Logits are computed only at the chosen positions. The loss is the
cross-entropy SUMMED over them (``num_items`` = chosen tokens); the metrics are masked-token
accuracy, loss and perplexity. Prediction fills each ``[MASK]`` of a text with its top-k tokens.

To fine-tune the result with another task, ``bigmodel export RUN --format hf``
(:func:`bigmodel.export_pretrained`) writes the run as a Hugging Face folder with its tokenizer
(``RUN/export/hf``), which ``model.pretrained: RUN/export/hf`` then loads.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.tokenizers import pad_batch
from bigmodel.data.values import short_repr
from bigmodel.errors import DataError, RecipeError
from bigmodel.tasks.base import (
    ExportSignature,
    Metric,
    batch_signature,
    is_data_file,
    read_inputs,
    record_schema,
)
from bigmodel.tasks.text import (
    TextTask,
    TokenizerOptions,
    build_text_encoder,
    check_text_encoder,
    fit_tokenizer,
    text_field,
)

FILL = "_fill_masks"  # key parse() sets: predict fills the text's own [MASK]s instead of masking it
EVAL_SEED = 0x4D4C4D  # evaluation masks: an RNG seeded by (EVAL_SEED, crc32 of the text)


class MaskedLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="share of each text's tokens to predict")
    mask_token_frac: float = Field(0.8, ge=0.0, le=1.0, description="of those, replaced by [MASK]")
    random_token_frac: float = Field(0.1, ge=0.0, le=1.0, description="of those, replaced by a random token")
    top_k: int = Field(5, ge=1, description="fillers predict returns per [MASK]")
    tokenizer: TokenizerOptions = TokenizerOptions()

    @model_validator(mode="after")
    def _fractions(self):
        if self.mask_token_frac + self.random_token_frac > 1.0:
            raise ValueError(
                f"mask_token_frac + random_token_frac must be <= 1 (the rest stays unchanged); got "
                f"{self.mask_token_frac} + {self.random_token_frac}"
            )
        return self


class MLMOutputs(NamedTuple):
    """What :meth:`MaskedLMTask.forward` returns: logits at the chosen positions only."""

    logits: torch.Tensor  # (N, vocab_size), N = chosen positions of the batch, row-major
    positions: torch.Tensor  # (B, T) bool: where those N positions are


class MaskedLMMetric(Metric):
    """Summed loss, correct predictions and masked-token count: all mergeable by addition."""

    def __init__(self, task: MaskedLMTask):
        super().__init__()
        self.task = task

    def update(self, outputs: MLMOutputs, batch: dict) -> None:
        targets = batch["labels"][outputs.positions]
        self.count_non_finite(outputs.logits)
        self.add("loss", self.task.loss_from(outputs, batch).float())
        self.add("correct", (outputs.logits.argmax(-1) == targets).sum())
        self.add("count", torch.tensor(len(targets)))

    def compute(self) -> dict:
        self.check_finite()
        count = float(self.sums.get("count", torch.tensor(0.0)))
        if count == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "perplexity": float("nan"), "tokens": 0}
        loss = float(self.sums["loss"]) / count
        return {
            "loss": loss,
            "accuracy": float(self.sums["correct"]) / count,
            "perplexity": math.exp(min(loss, 700.0)),
            "tokens": int(count),
        }


class MaskedLMLogits(nn.Module):
    """``(input_ids, attention_mask) -> (B, T, V)`` masked-LM logits at every position: the graph
    :meth:`MaskedLMTask.export_signature` exports."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.mlm_logits(self.model.encode(input_ids, attention_mask))


class MaskedLMTask(TextTask):
    """BERT-style masked-LM pretraining of a ``bert`` model on the texts of ``data.text``."""

    name = "masked_lm"
    Options = MaskedLMOptions
    predict_options = ("top_k",)
    metric_names = ("loss", "accuracy", "perplexity")
    higher_is_better = {"loss": False, "accuracy": True, "perplexity": False}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self._ordinary: np.ndarray | None = None  # ids a random replacement draws from (no specials)

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        if recipe.data.text is None:
            raise RecipeError("data.text: task masked_lm needs the name of the text column.")
        if recipe.data.text_pair is not None or recipe.data.features:
            field = "data.text_pair" if recipe.data.text_pair is not None else "data.features"
            raise RecipeError(f"{field}: task masked_lm reads only data.text (one text per example).")
        check_text_encoder(recipe, family, self.name, "its tokenizer")
        if "add_mlm_head" not in family.config_fields():
            raise RecipeError(
                f"model.arch: task masked_lm trains a family's own masked-LM head; '{family.name}' has "
                "none. Use bert."
            )
        if recipe.model.options().get("add_mlm_head") is False:
            raise RecipeError("model.add_mlm_head: false, but task masked_lm trains that head; remove it.")

    def clean(self, records: Records, split: str) -> Records:
        column = self.data["text"]
        records.require(column, "data.text")
        values = records.column(column)
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise DataError(
                f"{records.where} ({split} split), row {records.row_number(bad)}, column '{column}': "
                f"expected text, got {short_repr(values[bad])}. Fill or remove that row."
            )
        return records

    def fit(self, train: Records) -> None:
        texts = (t for t in train.column(self.data["text"]))
        self.tokenizer = fit_tokenizer(self.data.get("pretrained"), texts, self.options.tokenizer)
        self._check_tokenizer()

    def _check_tokenizer(self) -> None:
        if self.tokenizer.mask_token_id is None:
            raise RecipeError(
                "model.pretrained: the checkpoint's tokenizer has no mask token ([MASK]); masked-LM "
                "training needs one."
            )

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        max_length = self.data.get("max_length", 128)
        if pretrained is None:
            return build_text_encoder(
                family, {**options, "add_mlm_head": True}, None, self.tokenizer, max_length
            )
        model = build_text_encoder(family, options, pretrained, self.tokenizer, max_length)
        if not model.config.add_mlm_head:  # a bare encoder (BertModel): the same weights + a fresh head
            with_head = family.model_cls(dataclasses.replace(model.config, add_mlm_head=True))
            missing, unexpected = with_head.load_state_dict(model.state_dict(), strict=False)
            assert not unexpected and all(k.startswith("mlm.") for k in missing), (missing, unexpected)
            model = with_head
        return model

    # -- examples -----------------------------------------------------------------------------------

    def _encode_text(self, example: dict):
        column = self.data["text"]
        text = example.get(column)
        if not isinstance(text, str):
            raise DataError(f"column '{column}': expected text, got {short_repr(text)}.")
        return self.tokenizer.encode_one(text, max_length=self.data.get("max_length", 128))

    def length(self, example: dict) -> int:
        return len(self._encode_text(example).ids)

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        encoded = self._encode_text(example)
        ids = np.asarray(encoded.ids, dtype=np.int64)
        if example.get(FILL):
            return {"ids": ids, "labels": None}
        if rng is None:  # evaluation: the same masks every time, whatever the split's order
            text = example[self.data["text"]]
            rng = np.random.default_rng((EVAL_SEED, zlib.crc32(text.encode("utf-8"))))
        special = np.asarray([s is None for s in encoded.sequence_ids], dtype=bool)
        inputs, labels = self.mask(ids, special, rng)
        return {"ids": inputs, "labels": labels}

    def mask(
        self, ids: np.ndarray, special: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """BERT's masking of one sequence: ``(inputs, labels)``, labels -100 where nothing is predicted.

        Args:
            ids: token ids ``(T,)``.
            special: ``(T,)`` True for tokens never chosen ([CLS], [SEP]).
            rng: the example's generator.
        """
        o = self.options
        candidates = np.flatnonzero(~special)
        inputs, labels = ids.copy(), np.full_like(ids, -100)
        if not len(candidates):
            return inputs, labels
        count = min(len(candidates), max(1, round(len(candidates) * o.mask_prob)))
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        labels[chosen] = ids[chosen]
        action = rng.random(count)
        to_mask = action < o.mask_token_frac
        to_random = (action >= o.mask_token_frac) & (action < o.mask_token_frac + o.random_token_frac)
        inputs[chosen[to_mask]] = self.tokenizer.mask_token_id
        ordinary = self._ordinary_ids()
        inputs[chosen[to_random]] = ordinary[rng.integers(0, len(ordinary), int(to_random.sum()))]
        return inputs, labels

    def _ordinary_ids(self) -> np.ndarray:
        if self._ordinary is None:
            special = {self.tokenizer.token_to_id(t) for t in self.tokenizer.special_tokens.values()}
            ids = np.arange(self.tokenizer.vocab_size, dtype=np.int64)
            self._ordinary = ids[~np.isin(ids, sorted(i for i in special if i is not None))]
        return self._ordinary

    def collate(self, items: list[dict]) -> dict:
        ids, mask = pad_batch([item["ids"].tolist() for item in items], self.tokenizer.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask}
        if items[0]["labels"] is not None:
            labels, _ = pad_batch([item["labels"].tolist() for item in items], -100)
            batch["labels"] = labels
            batch["num_items"] = int((labels != -100).sum())
        else:
            batch["num_items"] = len(items)
        return batch

    def forward(self, model: nn.Module, batch: dict) -> MLMOutputs:
        hidden = model.encode(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
        if "labels" in batch:
            positions = batch["labels"] != -100
        else:
            positions = batch["input_ids"] == self.tokenizer.mask_token_id
        return MLMOutputs(model.mlm_logits(hidden[positions]), positions)  # (N, V): only where scored

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``input_ids``, ``attention_mask`` (B, T) -> logits (B, T, V) at every position; picking the
        ``[MASK]`` positions stays outside the graph."""
        names = ["input_ids", "attention_mask"]
        return batch_signature(MaskedLMLogits(model), batch, names, lengths=tuple(names), task=self.name)

    def loss_from(self, outputs: MLMOutputs, batch: dict) -> torch.Tensor:
        targets = batch["labels"][outputs.positions]
        return F.cross_entropy(outputs.logits.float(), targets, reduction="sum")

    def metric(self) -> Metric:
        return MaskedLMMetric(self)

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """A text, a list of texts, records with the text column, or a file; every text must hold at
        least one mask token (``[MASK]``), which prediction fills."""
        column = self.data["text"]
        if isinstance(raw, str) and not (is_data_file(raw) and Path(raw).is_file()):
            raw = [raw]
        if isinstance(raw, (list, tuple)) and raw and all(isinstance(r, str) for r in raw):
            rows, where, numbers = [{column: r} for r in raw], "inputs", range(1, len(raw) + 1)
        elif isinstance(raw, (str, Path, Mapping, list, tuple)):
            rows, where, numbers = read_inputs(raw)
        else:
            raise DataError(
                f"inputs: expected a text with {self.mask_token}, a list of them, records with the key "
                f"'{column}' or a .csv/.jsonl/.parquet file; got {type(raw).__name__}."
            )
        out = []
        for row, n in zip(rows, numbers, strict=True):
            text = row.get(column)
            if not isinstance(text, str):
                raise DataError(f"{where}: row {n}, field '{column}': expected text, got {short_repr(text)}.")
            ids = self._encode_text({column: text}).ids
            if self.tokenizer.mask_token_id not in ids:
                raise DataError(
                    f"{where}: row {n}, field '{column}': no {self.mask_token} to fill in {short_repr(text)} "
                    f"(within the first {self.data.get('max_length', 128)} tokens). Write {self.mask_token} "
                    "where a word should be predicted."
                )
            out.append({column: text, FILL: True})
        return out

    def input_schema(self) -> dict:
        """A text holding the mask token, which prediction fills."""
        column = self.data["text"]
        field = text_field(
            f"a text with {self.mask_token} where a word should be predicted", contains=self.mask_token
        )
        return record_schema(
            {column: field}, [column], f"a text whose {self.mask_token} tokens the model fills"
        )

    @property
    def mask_token(self) -> str:
        return self.tokenizer.special_tokens.get("mask", "[MASK]")

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        outputs = self.forward(model, batch)
        probs = outputs.logits.float().softmax(-1)  # (N, V)
        k = min(self.options.top_k, probs.shape[-1])
        top_p, top_i = probs.topk(k, dim=-1)
        rows, cols = outputs.positions.nonzero(as_tuple=True)
        results = [{"masks": []} for _ in range(len(batch["input_ids"]))]
        filled = batch["input_ids"].clone()
        for n, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            fillers = [{"token": self.tokenizer.id_to_token(int(i)), "score": float(p)}
                       for p, i in zip(top_p[n].tolist(), top_i[n].tolist(), strict=True)]  # fmt: skip
            results[r]["masks"].append({"position": c, "fillers": fillers})
            filled[r, c] = top_i[n, 0]
        for r, result in enumerate(results):
            ids = filled[r][batch["attention_mask"][r].bool()].tolist()
            result["filled"] = self.tokenizer.decode(ids)
        return results
