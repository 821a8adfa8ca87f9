"""Text classification: one text (or a pair: NLI, paraphrase) → one class.

Any text encoder family works — a pretrained checkpoint (``model.pretrained``: BERT, MiniLM, with
its own tokenizer) or an encoder trained from scratch (bert, transformer encoder, rnn) with a
tokenizer fitted on the train split. The head is the task's (:class:`~bigmodel.tasks.heads.TextModel`):
a pooled vector per text, dropout, a linear layer. Batches are padded to their own longest text.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.tokenizers import pad_batch
from bigmodel.data.values import short_repr
from bigmodel.errors import DataError, RecipeError
from bigmodel.tasks.base import (
    LabelOptions,
    check_targets,
    clean_missing_labels,
    is_data_file,
    label_column,
    label_report_row,
    read_inputs,
    record_schema,
)
from bigmodel.tasks.classification import SingleLabel
from bigmodel.tasks.heads import POOLINGS, TextModel
from bigmodel.tasks.text import (
    TextTask,
    TokenizerOptions,
    build_text_encoder,
    check_text_encoder,
    fit_tokenizer,
    text_field,
)


class TextClassificationOptions(LabelOptions):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    pooling: Literal[POOLINGS] = "auto"  # type: ignore[valid-type]
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="before the head; default: the model's")
    tokenizer: TokenizerOptions = TokenizerOptions()


class TextClassificationTask(SingleLabel, TextTask):
    """Single-label classification of texts or text pairs."""

    name = "text_classification"
    Options = TextClassificationOptions

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self._notes: list[str] = []

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        data = recipe.data
        if data.text is None:
            raise RecipeError("data.text: task text_classification needs the name of the text column.")
        if data.features:
            raise RecipeError(
                "data.features: task text_classification reads only data.text (and data.text_pair)."
            )
        check_text_encoder(recipe, family, self.name, "its tokenizer and classes")

    def clean(self, records: Records, split: str) -> Records:
        """Refuse a missing text cell now, naming its row, rather than mid-training."""
        for field in ("text", "text_pair"):
            name = self.data.get(field)
            if name is None:
                continue
            records.require(name, f"data.{field}")
            for i, value in enumerate(records.column(name)):
                if not isinstance(value, str):
                    raise DataError(
                        f"{records.where}, row {records.row_number(i)}, column '{name}': expected text, "
                        f"got {value!r}. Fill or remove that row."
                    )
        records, notes = clean_missing_labels(self.data, records, split, self.options.missing_labels)
        self._notes += notes
        return records

    def validate(self, records: Records, split: str) -> None:
        check_targets(self.data, records, split, self.labels.index)

    def notes(self) -> list[str]:
        return list(self._notes)

    def fit(self, train: Records) -> None:
        self.labels.fit(train.column(label_column(self.data, train)), train.where)
        texts = (_text(v) for v in train.column(self.data["text"]))
        if self.data.get("text_pair"):
            texts = itertools.chain(texts, (_text(v) for v in train.column(self.data["text_pair"])))
        self.tokenizer = fit_tokenizer(self.data.get("pretrained"), texts, self.options.tokenizer)

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        max_length = self.data.get("max_length", 128)
        backbone = build_text_encoder(family, options, pretrained, self.tokenizer, max_length)
        return TextModel(backbone, len(self.labels.names), self.options.dropout, self.options.pooling)

    # -- examples -----------------------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        encoded = self._tokens(example)
        label = self.data.get("label") or "label"
        y = self.labels.index(example[label]) if label in example else None
        return {"ids": encoded.ids, "type_ids": encoded.type_ids, "y": y}

    def length(self, example: dict) -> int:
        """Tokens, not characters: grouping tweets by characters left a third of each batch padding
        (URLs and emoji tokenize very differently); by tokens, 3 % (docs/results.md)."""
        return len(self._tokens(example).ids)

    def _tokens(self, example: dict):
        text = _text(example.get(self.data["text"]), self.data["text"])
        pair_column = self.data.get("text_pair")
        pair = _text(example.get(pair_column), pair_column) if pair_column else None
        return self.tokenizer.encode_one(text, pair, max_length=self.data.get("max_length", 128))

    def collate(self, items: list[dict]) -> dict:
        ids, mask = pad_batch([item["ids"] for item in items], self.tokenizer.pad_id)
        types, _ = pad_batch([item["type_ids"] for item in items], 0)
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "num_items": len(items)}
        if items[0]["y"] is not None:
            batch["y"] = torch.as_tensor([item["y"] for item in items])
        return batch

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """One string, a list of strings (or of (text, pair) tuples), records with the text key, or a file.

        Every text must be a non-empty string: None, NaN, numbers, lists, dicts and blank strings are
        refused naming the row (and the field of a pair), never classified as ``""`` or as a repr.
        """
        text, pair = self.data["text"], self.data.get("text_pair")
        if isinstance(raw, str) and not (is_data_file(raw) and _is_file(raw)):
            raw = [raw]
        if isinstance(raw, (list, tuple)) and not any(isinstance(r, Mapping) for r in raw):
            if not raw:
                raise DataError("inputs: nothing to predict (an empty list).")
            rows = []
            for i, r in enumerate(raw, start=1):
                if pair:
                    if not isinstance(r, (tuple, list)) or len(r) != 2:
                        raise DataError(
                            f"inputs: row {i} is {short_repr(r)}; this model classifies text pairs, so give "
                            f"each row as a ({text}, {pair}) pair of strings."
                        )
                    rows.append({text: r[0], pair: r[1]})
                else:
                    rows.append({text: r})
            where, numbers = "inputs", range(1, len(rows) + 1)
        elif isinstance(raw, (str, Path, Mapping, list, tuple)):
            rows, where, numbers = read_inputs(raw, ignore=self.data.get("label") or "label")
        else:
            raise DataError(
                f"inputs: expected a text, a list of texts{' pairs' if pair else ''}, records (dicts with "
                f"the key '{text}') or a .csv/.jsonl/.parquet file; got {type(raw).__name__}."
            )
        for row, n in zip(rows, numbers, strict=True):
            for column in (text, pair):
                if column is not None:
                    _check_text(row.get(column, _ABSENT), f"{where}: row {n}", column)
        return rows

    def input_schema(self) -> dict:
        """The text field (and the pair's second text, when the model classifies pairs)."""
        fields = {self.data["text"]: text_field("the text to classify")}
        if self.data.get("text_pair"):
            fields[self.data["text_pair"]] = text_field("the second text of the pair")
        return record_schema(fields, list(fields), f"a text to classify ({len(self.labels.names)} classes)")

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        """Per record: its text (a pair as ``text ‖ pair``), its class, the predicted one, whether
        they agree."""
        columns = [c for c in (self.data["text"], self.data.get("text_pair")) if c]
        return [label_report_row(self, r, p, " ‖ ".join(str(r.get(c)) for c in columns))
                for r, p in zip(records, predictions, strict=True)]  # fmt: skip


_ABSENT = object()


def _check_text(value, where: str, column: str) -> None:
    """Refuse anything but a non-blank string as a text to classify."""
    if value is _ABSENT:
        raise DataError(f"{where} lacks the text field '{column}'.")
    if not isinstance(value, str):
        raise DataError(
            f"{where}, field '{column}': expected text, got {short_repr(value)} ({type(value).__name__}). "
            f"Give a string."
        )
    if not value.strip():
        raise DataError(f"{where}, field '{column}': the text is empty; there is nothing to classify.")


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _text(value, column: str = "text") -> str:
    """A text cell as a string; a missing or non-text value is refused, never classified as ''."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return str(value)
    raise DataError(f"column '{column}': expected text, got {value!r}. Fill or remove that row.")
