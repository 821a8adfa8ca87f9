"""What every text task shares: the recipe check for a text encoder, its tokenizer, and its backbone.

A text task reads token ids through a family with ``encode(input_ids, attention_mask)`` — either a
pretrained checkpoint (``model.pretrained``) with the tokenizer saved beside its weights, or an
encoder built from scratch with a tokenizer trained on the train split (``task.tokenizer``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.tokenizer_training import TOKENIZER_KINDS, train_tokenizer
from bigmodel.data.tokenizers import TokenizerError, load_tokenizer
from bigmodel.errors import RecipeError
from bigmodel.hub.pretrained import PretrainedError, from_pretrained, resolve_folder
from bigmodel.models.registry import build_config
from bigmodel.tasks.base import ExportSignature, Task, batch_signature


class TextTask(Task):
    """A task that reads text through a tokenizer: the checkpoint's (``model.pretrained``) or one it
    fits on the train split; saved beside the run as tokenizer.json and restored from it."""

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.tokenizer = None

    @classmethod
    def from_recipe(cls, recipe):
        task = super().from_recipe(recipe)
        task.data["pretrained"] = recipe.model.pretrained  # where fit finds the checkpoint's tokenizer
        return task

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir)

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T), batch and length varying ->
        the model's outputs (classification, span or tag logits; a CRF's decoding stays outside)."""
        names = ["input_ids", "attention_mask", "token_type_ids"]
        return batch_signature(model, batch, names, lengths=tuple(names), task=self.name)

    @classmethod
    def restore(cls, state: dict, run_dir: Path):
        task = super().restore(state, run_dir)
        task.tokenizer = load_tokenizer(run_dir)
        return task


class TokenizerOptions(BaseModel):
    """The tokenizer trained on the train split when there is no pretrained checkpoint."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal[TOKENIZER_KINDS] = "wordpiece"  # type: ignore[valid-type]
    vocab_size: int = Field(8000, ge=16)
    lowercase: bool = True
    min_frequency: int = Field(2, ge=1)


def text_field(description: str, blank: bool = False, contains: str | None = None) -> dict:
    """The JSON Schema of a text field: a non-empty string, holding more than whitespace unless
    ``blank``; ``contains``: a literal it must hold (a mask token)."""
    field = {"type": "string", "minLength": 1, "x-bigmodel-kind": "text", "description": description}
    if contains is not None:
        field["pattern"] = re.sub(r"[\\^$.|?*+()\[\]{}/]", r"\\\g<0>", contains)  # an ECMA-262 literal
    elif not blank:
        field["pattern"] = r"\S"  # JSON Schema patterns match anywhere: one non-space character
    return field


def words_field(description: str) -> dict:
    """The JSON Schema of pre-split words: a list of words, or one sentence split on whitespace."""
    return {"anyOf": [text_field("a sentence, split on whitespace"),
                      {"type": "array", "minItems": 1, "description": "the words",
                       "items": {"type": "string", "pattern": r"\S", "description": "a word"}}],
            "x-bigmodel-kind": "text", "description": description}  # fmt: skip


def check_text_encoder(recipe, family, task: str, set_by: str) -> None:
    """Refuse a family that reads no token ids, a checkpoint it cannot load, and the fields the task
    sets itself (``set_by`` says from what: "its tokenizer and classes")."""
    model = recipe.model
    if not hasattr(family.model_cls, "encode") or "vocab_size" not in family.config_fields():
        raise RecipeError(
            f"model.arch: task {task} needs a text encoder (bert, transformer, rnn, llama, ...); "
            f"'{family.name}' does not read token ids."
        )
    if model.pretrained is not None and "hf" not in family.formats:
        raise RecipeError(
            f"model.pretrained: model '{family.name}' has no Hugging Face checkpoint format, "
            f"so it cannot start from {model.pretrained!r}."
        )
    for key in ("vocab_size", "num_outputs"):
        if model.pretrained is None and key in model.options():
            raise RecipeError(f"model.{key}: set by the task (from {set_by}); remove it.")


def pretrained_folder(pretrained: str) -> Path:
    """The local folder of ``model.pretrained`` (a folder, or a Hub id already in the cache)."""
    try:
        return resolve_folder(pretrained)
    except PretrainedError as exc:
        raise PretrainedError(f"model.pretrained: {exc}") from None


def fit_tokenizer(pretrained: str | None, texts: Iterable[str], options: TokenizerOptions):
    """The checkpoint's own tokenizer, or one trained on ``texts`` (read only in that case)."""
    if pretrained is not None:
        try:
            return load_tokenizer(pretrained_folder(pretrained))
        except TokenizerError as exc:
            raise RecipeError(
                f"model.pretrained: {exc} "
                "A text model needs the tokenizer it was trained with, in its folder."
            ) from None
    return train_tokenizer(texts, options.kind, options.vocab_size, options.lowercase, options.min_frequency)


def load_pretrained(family, options: dict, pretrained: str) -> nn.Module:
    """The checkpoint ``model.pretrained`` names, refused unless it is of the recipe's family."""
    model = from_pretrained(pretrained_folder(pretrained), **options)
    if type(model) is not family.model_cls:
        raise RecipeError(
            f"model.arch: '{family.name}', but model.pretrained {pretrained!r} holds a "
            f"{type(model).__name__} checkpoint."
        )
    return model


def build_text_encoder(
    family, options: dict, pretrained: str | None, tokenizer, max_length: int
) -> nn.Module:
    """The backbone: the checkpoint's weights, or a fresh encoder sized to the tokenizer (encoder-only,
    headless, no pooler); refuses a ``max_length`` beyond its positions or a tokenizer it cannot embed."""
    if pretrained is not None:
        backbone = load_pretrained(family, options, pretrained)
    else:
        fields = family.config_fields()
        wanted = {"vocab_size": tokenizer.vocab_size, "num_outputs": 0, "input_size": 0,
                  "pad_token_id": tokenizer.pad_id, "max_positions": max_length,
                  "num_decoder_layers": 0, "add_pooler": False}  # fmt: skip
        wanted = {k: v for k, v in wanted.items() if k in fields}
        backbone = family.model_cls(build_config(family, {**wanted, **options}))
    config = backbone.config
    if max_length > getattr(config, "max_positions", max_length):
        raise RecipeError(
            f"data.max_length: {max_length} exceeds the model's {config.max_positions} positions."
        )
    if tokenizer.vocab_size > config.vocab_size:
        raise RecipeError(
            f"model.pretrained: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size} embeddings; the folder's tokenizer does not belong to its weights."
        )
    return backbone
