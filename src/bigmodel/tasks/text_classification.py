"""Text classification: one text (or a pair: NLI, paraphrase) → one class.

Any text encoder family works — a pretrained checkpoint (``model.pretrained``: BERT, MiniLM, with
its own tokenizer) or an encoder trained from scratch (bert, transformer encoder, rnn) with a
tokenizer fitted on the train split. The head is the task's (:class:`~bigmodel.tasks.heads.TextModel`):
a pooled vector per text, dropout, a linear layer. Batches are padded to their own longest text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.tokenizer_training import TOKENIZER_KINDS, train_tokenizer
from bigmodel.data.tokenizers import TokenizerError, load_tokenizer, pad_batch
from bigmodel.errors import DataError, RecipeError
from bigmodel.hub.pretrained import PretrainedError, from_pretrained, resolve_folder
from bigmodel.models.registry import build_config
from bigmodel.tasks.base import Task, check_targets, drop_missing_labels, label_column, parse_records
from bigmodel.tasks.classification import SingleLabel
from bigmodel.tasks.heads import POOLINGS, TextModel


class TokenizerOptions(BaseModel):
    """The tokenizer trained on the train split when there is no pretrained checkpoint."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal[TOKENIZER_KINDS] = "wordpiece"  # type: ignore[valid-type]
    vocab_size: int = Field(8000, ge=16)
    lowercase: bool = True
    min_frequency: int = Field(2, ge=1)


class TextClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    pooling: Literal[POOLINGS] = "auto"  # type: ignore[valid-type]
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="before the head; default: the model's")
    tokenizer: TokenizerOptions = TokenizerOptions()


class TextClassificationTask(SingleLabel, Task):
    """Single-label classification of texts or text pairs."""

    name = "text_classification"
    Options = TextClassificationOptions

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.tokenizer = None
        self._notes: list[str] = []

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        data, model = recipe.data, recipe.model
        if data.text is None:
            raise RecipeError("data.text: task text_classification needs the name of the text column.")
        if data.features:
            raise RecipeError(
                "data.features: task text_classification reads only data.text (and data.text_pair)."
            )
        if not hasattr(family.model_cls, "encode") or "vocab_size" not in family.config_fields():
            raise RecipeError(
                f"model.arch: task text_classification needs a text encoder (bert, transformer, rnn, ...); "
                f"'{family.name}' does not read token ids."
            )
        if model.pretrained is not None and "hf" not in family.formats:
            raise RecipeError(
                f"model.pretrained: model '{family.name}' has no Hugging Face checkpoint format, "
                f"so it cannot start from {model.pretrained!r}."
            )
        for key in ("vocab_size", "num_outputs"):
            if model.pretrained is None and key in model.options():
                raise RecipeError(
                    f"model.{key}: set by the task (from its tokenizer and classes); remove it."
                )

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
        records, notes = drop_missing_labels(self.data, records, split)
        self._notes += notes
        return records

    def validate(self, records: Records, split: str) -> None:
        check_targets(self.data, records, split, self.labels.index)

    def notes(self) -> list[str]:
        return list(self._notes)

    def fit(self, train: Records) -> None:
        self.labels.fit(train.column(label_column(self.data, train)), train.where)
        pretrained = self.data.get("pretrained")
        if pretrained is not None:
            try:
                self.tokenizer = load_tokenizer(_folder(pretrained))
            except TokenizerError as exc:
                raise RecipeError(
                    f"model.pretrained: {exc} "
                    "A text model needs the tokenizer it was trained with, in its folder."
                ) from None
            return
        texts = [_text(v) for v in train.column(self.data["text"])]
        if self.data.get("text_pair"):
            texts += [_text(v) for v in train.column(self.data["text_pair"])]
        opts = self.options.tokenizer
        self.tokenizer = train_tokenizer(
            texts, opts.kind, opts.vocab_size, opts.lowercase, opts.min_frequency
        )

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir)

    @classmethod
    def restore(cls, state: dict, run_dir: Path) -> TextClassificationTask:
        task = super().restore(state, run_dir)
        task.tokenizer = load_tokenizer(run_dir)
        return task

    @classmethod
    def from_recipe(cls, recipe) -> TextClassificationTask:
        task = super().from_recipe(recipe)
        task.data["pretrained"] = recipe.model.pretrained  # where fit finds the checkpoint's tokenizer
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        max_length = self.data.get("max_length", 128)
        if pretrained is not None:
            backbone = from_pretrained(_folder(pretrained), **options)
            if type(backbone) is not family.model_cls:
                raise RecipeError(
                    f"model.arch: '{family.name}', but model.pretrained {pretrained!r} holds a "
                    f"{type(backbone).__name__} checkpoint."
                )
        else:
            fields = family.config_fields()
            wanted = {"vocab_size": self.tokenizer.vocab_size, "num_outputs": 0, "input_size": 0,
                      "pad_token_id": self.tokenizer.pad_id, "max_positions": max_length,
                      "num_decoder_layers": 0, "add_pooler": False}  # fmt: skip
            wanted = {k: v for k, v in wanted.items() if k in fields}
            backbone = family.model_cls(build_config(family, {**wanted, **options}))
        config = backbone.config
        if max_length > getattr(config, "max_positions", max_length):
            raise RecipeError(
                f"data.max_length: {max_length} exceeds the model's {config.max_positions} positions."
            )
        if self.tokenizer.vocab_size > config.vocab_size:
            raise RecipeError(
                f"model.pretrained: the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                f"{config.vocab_size} embeddings; the folder's tokenizer does not belong to its weights."
            )
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
        """One string, a list of strings (or of (text, pair) tuples), records with the text key, or a file."""
        text, pair = self.data["text"], self.data.get("text_pair")
        if isinstance(raw, str) and not Path(raw).is_file():
            raw = [raw]
        if isinstance(raw, (list, tuple)) and raw and all(isinstance(r, (str, tuple, list)) for r in raw):
            rows = []
            for r in raw:
                if pair and (not isinstance(r, (tuple, list)) or len(r) != 2):
                    raise DataError(f"inputs: this model classifies text pairs; give (text, {pair}) pairs.")
                rows.append({text: r[0], pair: r[1]} if pair else {text: r})
            return rows
        rows = parse_records(raw, ignore=self.data.get("label") or "label")
        for i, row in enumerate(rows):
            for column in (text, pair):
                if column is not None and column not in row:
                    raise DataError(f"inputs: record {i + 1} lacks the text key '{column}'.")
        return rows


def _text(value, column: str = "text") -> str:
    """A text cell as a string; a missing or non-text value is refused, never classified as ''."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return str(value)
    raise DataError(f"column '{column}': expected text, got {value!r}. Fill or remove that row.")


def _folder(pretrained: str) -> Path:
    try:
        return resolve_folder(pretrained)
    except PretrainedError as exc:
        raise PretrainedError(f"model.pretrained: {exc}") from None
