"""Token classification: one tag per word — named entities (BIO/IOB2, IOB1, BIOES), part of speech.

With ``scheme: none`` the tags are plain labels (part of speech): every word is its own one-word
"entity" of its tag, so the per-type table is per-tag precision/recall/F1 and micro F1 equals
word accuracy.

Records hold pre-split words and their tags (``{"tokens": [...], "tags": [...]}``, from a CoNLL file,
JSONL lists, or CSV cells split on whitespace). Words are joined with single spaces and tokenized as
running text, and each sub-token is mapped back to its word through its character offsets; the first
sub-token of a word carries the word's tag, the others and the special tokens get -100 (Devlin et al.
2019 §5.3). The head is a linear layer over the encoder's features per position, optionally followed
by a linear-chain CRF (``task: {crf: true}``, :mod:`bigmodel.nn.crf`; Lample et al. 2016) whose
negative log-likelihood is then the loss and whose Viterbi path the prediction.

Any text encoder family with ``encode`` works: a pretrained checkpoint with its own tokenizer (BERT,
MiniLM) or one trained from scratch (rnn BiLSTM, transformer, bert) with a tokenizer fitted on the
train split. The metric is entity-level precision/recall/F1 (micro and macro over types) with the
semantics of seqeval's default mode, i.e. of the CoNLL shared tasks' ``conlleval`` script, counted
over *words*: a word whose sub-tokens were all cut by ``data.max_length`` is predicted ``O``.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.conll import read_conll
from bigmodel.data.records import Records
from bigmodel.data.tokenizers import pad_batch
from bigmodel.errors import DataError, RecipeError
from bigmodel.nn.crf import CRF
from bigmodel.tasks.base import Metric, parse_records, record_schema
from bigmodel.tasks.heads import TaggerModel
from bigmodel.tasks.text import (
    TextTask,
    TokenizerOptions,
    build_text_encoder,
    check_text_encoder,
    fit_tokenizer,
    words_field,
)

SCHEMES = ("BIO", "IOB2", "IOB1", "BIOES", "none")
# The prefixes a scheme's tags may carry (besides "O"). IOB1 is converted to IOB2 when read;
# "none": plain labels (part of speech), no prefixes.
PREFIXES = {"BIO": "BI", "IOB2": "BI", "IOB1": "BI", "BIOES": "BIES", "none": ""}
METRICS = ("loss", "f1", "precision", "recall", "f1_macro", "precision_macro", "recall_macro", "accuracy")
CONLL_SUFFIXES = (".conll", ".bio", ".iob")


class TokenClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scheme: Literal[SCHEMES] = "BIO"  # type: ignore[valid-type]
    crf: bool = Field(False, description="a CRF over the tags: its NLL is the loss, Viterbi decodes")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="before the head; default: the model's")
    tokenizer: TokenizerOptions = TokenizerOptions()


class TagOutputs(NamedTuple):
    """What :meth:`TokenClassificationTask.forward` returns: per-position tag scores and the CRF."""

    emissions: torch.Tensor  # (B, T, K)
    crf: CRF | None


# --- tag schemes -----------------------------------------------------------------------------------


def split_tag(tag: str, scheme: str) -> tuple[str, str]:
    """``"B-person"`` -> ``("B", "person")``; ``"O"`` -> ``("O", "")``; with scheme ``none``, ``"NOUN"``
    -> ``("S", "NOUN")`` (a one-word entity). Refuses a tag outside ``scheme``."""
    if scheme == "none":
        return "S", tag
    if tag == "O":
        return "O", ""
    prefixes = PREFIXES[scheme]
    if not isinstance(tag, str) or len(tag) < 3 or tag[1] != "-" or tag[0] not in prefixes:
        allowed = " ".join(f"{p}-TYPE" for p in prefixes)
        raise DataError(f"tag {tag!r} is not a {scheme} tag (O, {allowed}).")
    return tag[0], tag[2:]


def normalize_tags(tags: list[str], scheme: str) -> list[str]:
    """Check that ``tags`` (one sentence) follow ``scheme`` and return the tags the model learns:
    the same tags, IOB1 converted to IOB2 (an entity begins with B- whatever precedes it).

    Raises:
        DataError: a tag outside the scheme, or a sequence the scheme does not allow, naming the word.
    """
    parts = [split_tag(t, scheme) for t in tags]
    out = list(tags)
    for i, (prefix, kind) in enumerate(parts):
        before = parts[i - 1] if i else ("O", "")
        after = parts[i + 1] if i + 1 < len(parts) else ("O", "")
        inside = before[0] in "BI" and before[1] == kind  # continues an entity of the same type
        where = f"word {i + 1} ({tags[i]!r} after {tags[i - 1] if i else 'the start'!r})"
        if scheme in ("BIO", "IOB2") and prefix == "I" and not inside:
            raise DataError(
                f"{where}: in {scheme} an entity begins with B-. If the data is IOB1 (I- begins entities "
                "and B- only separates two of the same type), set task.scheme: IOB1."
            )
        if scheme == "IOB1":
            if prefix == "B" and not inside:
                raise DataError(
                    f"{where}: in IOB1, B- only separates two adjacent entities of the same type. "
                    "If the data is BIO/IOB2, set task.scheme: BIO."
                )
            if prefix == "I" and not inside:
                out[i] = f"B-{kind}"
        if scheme == "BIOES":
            if prefix in "IE" and not inside:
                raise DataError(f"{where}: in BIOES, {prefix}- continues a B- or I- of the same type.")
            if prefix in "BI" and not (after[0] in "IE" and after[1] == kind):
                following = repr(tags[i + 1]) if i + 1 < len(tags) else "the end"
                raise DataError(
                    f"word {i + 1} ({tags[i]!r} before {following}): in BIOES, an entity of several words "
                    "ends with E-, and one of a single word is S-."
                )
    return out


def chunks(prefixes: list[str], types: list, outside=None) -> list[tuple]:
    """Entities ``(type, first, last)`` (word indexes, inclusive) of one sentence's tags, given as their
    prefixes (``B I E S O``) and types, with the CoNLL ``conlleval`` rules seqeval's default mode
    follows, so ill-formed sequences (I- without B-, a type change inside an entity) count as they do
    there: an entity ends after E-/S-, before B-/S-/O, or where the type changes; it begins at
    B-/S-, at I-/E- after O, E- or S-, or where the type changes.
    """
    found = []
    prev_prefix, prev_type, begin = "O", outside, 0
    for i, (prefix, kind) in enumerate([*zip(prefixes, types, strict=True), ("O", outside)]):
        ends = (
            prev_prefix in "ES"
            or (prev_prefix in "BI" and prefix in "BSO")
            or (prev_prefix != "O" and prev_type != kind)
        )
        if ends:
            found.append((prev_type, begin, i - 1))
        starts = (
            prefix in "BS"
            or (prefix in "IE" and prev_prefix in "ESO")
            or (prefix != "O" and prev_type != kind)
        )
        if starts:
            begin = i
        prev_prefix, prev_type = prefix, kind
    return found


class TagSet:
    """The tags a tagger predicts: ``O``, then every prefix of the scheme for each entity type seen in
    the train split (so ``I-x`` can be predicted even if train only had one-word ``x`` entities).

    Attributes:
        scheme: the recipe's scheme (IOB1 is learned and predicted as IOB2).
        types: entity types, sorted.
        names: the tags, ``names[i]`` = tag id ``i``.
    """

    def __init__(self, scheme: str, types=()):
        self.scheme = scheme
        self.types = sorted(set(types))
        if scheme == "none":  # plain labels: the tags are the types
            self.names = list(self.types)
        else:
            self.names = ["O", *(f"{p}-{t}" for t in self.types for p in PREFIXES[scheme])]
        self._index = {name: i for i, name in enumerate(self.names)}
        parts = [split_tag(name, scheme) for name in self.names]
        self.prefixes = [p for p, _ in parts]
        type_index = {t: i for i, t in enumerate(self.types)}
        self.type_ids = [type_index.get(t, -1) for _, t in parts]  # -1 for O

    def fit(self, sentences: list[list[str]]) -> None:
        types = {split_tag(t, self.scheme)[1] for tags in sentences for t in tags} - {""}
        self.__init__(self.scheme, types)

    def index(self, tag: str) -> int:
        i = self._index.get(tag)
        if i is None:
            raise DataError(
                f"tag {tag!r} has an entity type the training split does not have. "
                f"Known types: {', '.join(self.types) or 'none'}."
            )
        return i

    def entities(self, ids: list[int]) -> list[tuple[int, int, int]]:
        """``(type id, first word, last word)`` of each entity in a sentence of tag ids."""
        return chunks([self.prefixes[i] for i in ids], [self.type_ids[i] for i in ids], outside=-1)


# --- words, text and sub-tokens ----------------------------------------------------------------------


def join_words(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined with single spaces, and each word's ``(start, end)`` character span in it."""
    spans, at = [], 0
    for word in words:
        spans.append((at, at + len(word)))
        at += len(word) + 1
    return " ".join(words), spans


def split_text(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """A sentence split on whitespace: its words and their ``(start, end)`` spans in ``text``."""
    found = [(m.group(), m.span()) for m in re.finditer(r"\S+", text)]
    return [w for w, _ in found], [s for _, s in found]


def row_text(batch: dict, row: int) -> tuple[str, list[tuple[int, int]]]:
    """The text a batch row's words came from and their character spans: the user's string when
    predicting on one, else the words joined with single spaces."""
    if "text" in batch:
        return batch["text"][row], batch["spans"][row]
    return join_words(batch["words"][row])


def first_subtokens(offsets, sequence_ids, spans: list[tuple[int, int]]) -> list[int]:
    """For each word (character ``spans`` of the encoded text), the position of its first sub-token,
    or -1 when it has none (truncated, or only characters the tokenizer drops).

    A token belongs to the word holding its last character: a SentencePiece-style ``▁word`` token's
    span starts on the space before the word.
    """
    starts = [s for s, _ in spans]
    first = [-1] * len(spans)
    for position, ((start, end), sequence) in enumerate(zip(offsets, sequence_ids, strict=True)):
        if sequence is None or end <= start:
            continue
        w = bisect.bisect_right(starts, end - 1) - 1
        if w >= 0 and end - 1 < spans[w][1] and first[w] < 0:
            first[w] = position
    return first


def _words(value, column: str) -> list[str]:
    """A tokens (or tags) cell: a list of strings, or one string split on whitespace."""
    if isinstance(value, str):
        value = value.split()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in value):
        raise DataError(
            f"column '{column}': expected a list of non-empty strings (or one whitespace-separated "
            f"string), got {value!r:.120}."
        )
    return list(value)


# --- the task ----------------------------------------------------------------------------------------


class TokenClassificationTask(TextTask):
    """One tag per word: named entities (BIO/IOB2, IOB1, BIOES), or plain labels (``scheme: none``)."""

    name = "token_classification"
    Options = TokenClassificationOptions
    metric_names = METRICS
    higher_is_better = {name: name != "loss" for name in METRICS}
    state_types = {"tags": list, "types": list}  # task.json keys restore() reads

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.tags = TagSet("BIO" if options.scheme == "IOB1" else options.scheme)

    @property
    def tokens_column(self) -> str:
        return self.data.get("text") or "tokens"

    @property
    def tags_column(self) -> str:
        return self.data.get("label") or "tags"

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        data, model = recipe.data, recipe.model
        if data.features or data.text_pair:
            field = "data.features" if data.features else "data.text_pair"
            raise RecipeError(
                f"{field}: task token_classification reads a tokens column (data.text, default 'tokens') "
                "and a tags column (data.label, default 'tags')."
            )
        check_text_encoder(recipe, family, self.name, "its tokenizer and tags")
        if model.options().get("head") == "tagging":
            raise RecipeError("model.head: the task adds its own tagging head; remove model.head.")

    def clean(self, records: Records, split: str) -> Records:
        """Refuse, naming the row and word, a sentence whose tokens or tags cannot be read, a tag
        outside the scheme, or tokens and tags of different lengths."""
        records.require(self.tokens_column, "data.text")
        records.require(self.tags_column, "data.label")
        self._sentences(records, split)
        return records

    def _sentences(self, records: Records, split: str) -> list[tuple[list[str], list[str]]]:
        """Every example's words and normalised tags; a bad one is refused naming its sentence."""
        out = []
        for i, example in enumerate(records):
            try:
                out.append(self._sentence(example))
            except DataError as exc:
                line = f", line {example['line']}" if isinstance(example.get("line"), int) else ""
                where = f"{records.where} ({split} split), sentence {records.row_number(i)}{line}"
                raise DataError(f"{where}: {exc}") from None
        return out

    def _sentence(self, example: dict) -> tuple[list[str], list[str]]:
        """The words and the normalised tags of a labelled example."""
        words = _words(example.get(self.tokens_column), self.tokens_column)
        tags = _words(example.get(self.tags_column), self.tags_column)
        if len(words) != len(tags):
            raise DataError(f"{len(words)} tokens but {len(tags)} tags.")
        return words, normalize_tags(tags, self.options.scheme)

    def fit(self, train: Records) -> None:
        sentences = self._sentences(train, "train")
        self.tags.fit([tags for _, tags in sentences])
        texts = (join_words(words)[0] for words, _ in sentences)
        self.tokenizer = fit_tokenizer(self.data.get("pretrained"), texts, self.options.tokenizer)

    def validate(self, records: Records, split: str) -> None:
        for i, (_, tags) in enumerate(self._sentences(records, split)):
            for tag in tags:
                try:
                    self.tags.index(tag)
                except DataError as exc:
                    raise DataError(
                        f"{records.where} ({split} split), sentence {records.row_number(i)}: {exc}"
                    ) from None

    def state(self) -> dict:
        return {**super().state(), "tags": self.tags.names, "types": self.tags.types}

    @classmethod
    def restore(cls, state: dict, run_dir: Path) -> TokenClassificationTask:
        task = super().restore(state, run_dir)
        task.tags = TagSet(task.tags.scheme, state["types"])
        if task.tags.names != state["tags"]:
            raise DataError(f"{run_dir / 'task.json'}: its tags do not match its entity types.")
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        max_length = self.data.get("max_length", 128)
        backbone = build_text_encoder(family, options, pretrained, self.tokenizer, max_length)
        return TaggerModel(backbone, len(self.tags.names), self.options.dropout, self.options.crf)

    # -- examples -----------------------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        if self.tags_column in example:
            words, tags = self._sentence(example)
            tag_ids = [self.tags.index(t) for t in tags]
        else:
            words, tag_ids = _words(example.get(self.tokens_column), self.tokens_column), None
        text, spans = join_words(words)
        pair = self._pair(example, words)
        encoded = self.tokenizer.encode_one(text, pair, max_length=self.data.get("max_length", 128))
        sentence = [s if s == 0 else None for s in encoded.sequence_ids]  # a pair's tokens get no tag
        first = first_subtokens(encoded.offsets, sentence, spans)
        labels = [-100] * len(encoded.ids)
        if tag_ids is not None:
            for position, tag in zip(first, tag_ids, strict=True):
                if position >= 0:
                    labels[position] = tag
        item = {"ids": encoded.ids, "type_ids": encoded.type_ids, "first": first, "labels": labels,
                "tags": tag_ids, "words": words}  # fmt: skip
        if "_text" in example:  # prediction: where the words are in the user's string
            item["text"], item["spans"] = example["_text"], example["_spans"]
        self._annotate(item, example, spans, encoded)
        return item

    def _pair(self, example: dict, words: list[str]) -> str | None:
        """A second segment encoded after the sentence (none here; semantic roles add the predicate)."""
        return None

    def _annotate(self, item: dict, example: dict, spans: list[tuple[int, int]], encoded) -> None:
        """Add to an encoded item what a subclass's model needs (nothing here)."""

    def length(self, example: dict) -> int:
        words = _words(example.get(self.tokens_column), self.tokens_column)
        pair = self._pair(example, words)
        return len(
            self.tokenizer.encode_one(join_words(words)[0], pair, max_length=self.data.get("max_length", 128))
        )

    def collate(self, items: list[dict]) -> dict:
        ids, mask = pad_batch([item["ids"] for item in items], self.tokenizer.pad_id)
        types, _ = pad_batch([item["type_ids"] for item in items], 0)
        labels, _ = pad_batch([item["labels"] for item in items], -100)
        words, _ = pad_batch([item["first"] for item in items], -1)  # (B, W): first sub-token or -1
        is_first = torch.zeros_like(ids, dtype=torch.bool)
        rows, cols = (words >= 0).nonzero(as_tuple=True)
        is_first[rows, words[rows, cols]] = True
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "first": is_first,
                 "word_positions": words, "words": [item["words"] for item in items]}  # fmt: skip
        if items[0]["tags"] is not None:
            batch["labels"] = labels
            batch["tags"] = pad_batch([item["tags"] for item in items], -100)[0]  # (B, W) gold per word
            batch["num_items"] = int((labels != -100).sum())
        else:
            batch["num_items"] = len(items)
        if "text" in items[0]:
            batch["text"] = [item["text"] for item in items]
            batch["spans"] = [item["spans"] for item in items]
        return batch

    def forward(self, model: nn.Module, batch: dict) -> TagOutputs:
        emissions = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return TagOutputs(emissions, getattr(model, "crf", None))

    def check_outputs(self, outputs, batch: dict) -> None:
        emissions = outputs.emissions if isinstance(outputs, TagOutputs) else outputs
        want = (*batch["input_ids"].shape, len(self.tags.names))
        if not isinstance(emissions, torch.Tensor) or tuple(emissions.shape) != want:
            got = tuple(emissions.shape) if isinstance(emissions, torch.Tensor) else type(emissions).__name__
            raise DataError(f"module: token_classification needs tag scores of shape {want}, got {got}.")

    def loss_from(self, outputs: TagOutputs, batch: dict) -> torch.Tensor:
        emissions, crf = outputs
        if crf is None:
            K = emissions.shape[-1]
            return F.cross_entropy(
                emissions.float().reshape(-1, K),
                batch["labels"].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
        order, mask = _compact(batch["labels"] != -100)
        scores = _gather(emissions.float(), order)
        return crf.nll(scores, batch["labels"].gather(1, order), mask).sum()

    def decode(self, outputs: TagOutputs, batch: dict) -> torch.Tensor:
        """Predicted tag ids per word ``(B, W)``: argmax (or Viterbi with a CRF) over the words' first
        sub-tokens; tag 0 (``O``) for a word without sub-tokens, -100 past a sentence's end."""
        emissions, crf = outputs
        order, mask = _compact(batch["first"])  # (B, N): the first sub-tokens, in word order
        scores = _gather(emissions.float(), order)  # (B, N, K)
        if crf is None:
            compact = scores.argmax(-1)
        else:
            compact = crf.decode(scores, mask)
        positions = batch["word_positions"]  # (B, W)
        has = positions >= 0
        rank = (has.long().cumsum(1) - 1).clamp(min=0)  # the word's place among the words with tokens
        if compact.shape[1] == 0:
            compact = torch.zeros(compact.shape[0], 1, dtype=torch.long, device=compact.device)
        words = torch.where(has, compact.gather(1, rank.clamp(max=compact.shape[1] - 1)), 0)  # 0 = "O"
        lengths = torch.as_tensor([len(w) for w in batch["words"]], device=words.device)
        real = torch.arange(positions.shape[1], device=words.device) < lengths[:, None]
        return torch.where(real, words, -100)

    def metric(self) -> EntityMetric:
        return EntityMetric(self)

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """A sentence (a string, split on whitespace; spans point into it), a list of tokens, a list of
        those, records with the tokens column, or a file (.csv/.jsonl/.parquet, CoNLL .conll/.bio/.iob,
        .txt: one sentence per line)."""
        column = self.tokens_column
        if isinstance(raw, (str, Path)) and Path(raw).is_file():
            path = Path(raw)
            if path.suffix.lower() in CONLL_SUFFIXES:
                return [{column: words} for words in read_conll(path).column("tokens")]
            if path.suffix.lower() == ".txt":
                lines = path.read_text(encoding="utf-8").splitlines()
                return [self._from_text(line) for line in lines if line.strip()]
            rows = parse_records(path, ignore=self.tags_column)
        elif isinstance(raw, str):
            return [self._from_text(raw)]
        elif isinstance(raw, (list, tuple)) and raw and all(isinstance(w, str) for w in raw):
            return [{column: _words(list(raw), "inputs")}]
        elif isinstance(raw, (list, tuple)) and raw and all(isinstance(r, (list, tuple)) for r in raw):
            return [{column: _words(list(r), "inputs")} for r in raw]
        else:
            rows = parse_records(raw, ignore=self.tags_column)
        for i, row in enumerate(rows):
            if column not in row:
                raise DataError(f"inputs: record {i + 1} lacks the tokens key '{column}'.")
            row[column] = _words(row[column], column)
        return rows

    def _from_text(self, text: str) -> dict:
        words, spans = split_text(text)
        if not words:
            raise DataError("inputs: a sentence with no words (only whitespace).")
        return {self.tokens_column: words, "_text": text, "_spans": spans}

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per sentence: ``entities`` (``text``, ``type``, ``start``, ``end``: character offsets into
        the input string, or into the tokens joined with spaces) and ``tokens`` with their ``tags``."""
        predicted = self.decode(self.forward(model, batch), batch).cpu()
        out = []
        for row, words in enumerate(batch["words"]):
            ids = predicted[row, : len(words)].tolist()
            text, spans = row_text(batch, row)
            entities = [
                {
                    "text": text[spans[a][0] : spans[b][1]],
                    "type": self.tags.types[kind],
                    "start": spans[a][0],
                    "end": spans[b][1],
                }  # fmt: skip
                for kind, a, b in self.tags.entities(ids)
            ]
            out.append(
                {"entities": entities, "tokens": list(words), "tags": [self.tags.names[i] for i in ids]}
            )
        return out

    def input_schema(self) -> dict:
        """The words to tag: a list of words, or a sentence split on whitespace."""
        column = self.tokens_column
        return record_schema({column: words_field("the sentence to tag")}, [column], "a sentence to tag")

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        """Per sentence: its words, the entities of its tags and the predicted ones as ``text (TYPE); ...``,
        and whether the two sets agree (same types, same words)."""
        rows = []
        for record, prediction in zip(records, predictions, strict=True):
            words = _words(record.get(self.tokens_column), self.tokens_column)
            text, spans = join_words(words)
            predicted = [(e["type"], e["start"], e["end"]) for e in prediction["entities"]]
            truth = None
            if self.tags_column in record:
                ids = [self.tags.index(tag) for tag in self._sentence(record)[1]]
                truth = [
                    (self.tags.types[k], spans[a][0], spans[b][1]) for k, a, b in self.tags.entities(ids)
                ]
            rows.append({"input": text, "truth": None if truth is None else _entities_text(text, truth),
                         "prediction": _entities_text(text, predicted),
                         "correct": None if truth is None else set(truth) == set(predicted)})  # fmt: skip
        return rows


def _entities_text(text: str, entities: list[tuple[str, int, int]]) -> str:
    """``Alice (PER); Paris (LOC)``: entities as a person reads them, or ``(none)``."""
    return "; ".join(f"{text[start:end]} ({kind})" for kind, start, end in entities) or "(none)"


def _compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the True entries of each row of ``keep`` ``(B, T)``, moved to the front in order:
    ``order`` ``(B, N)`` (N = the most in a row; padded with other positions) and its left-aligned mask."""
    B, T = keep.shape
    positions = torch.arange(T, device=keep.device)
    order = torch.argsort(torch.where(keep, positions, positions + T), dim=1, stable=True)
    counts = keep.sum(1)
    N = int(counts.max()) if B else 0
    return order[:, :N], positions[:N] < counts[:, None]


def _gather(emissions: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``emissions[b, order[b, n]]``: ``(B, N, K)``."""
    return emissions.gather(1, order.unsqueeze(-1).expand(-1, -1, emissions.shape[-1]))


class EntityMetric(Metric):
    """Entity counts per type (true positives, predicted, gold), words right, the summed loss: all
    mergeable by addition. ``compute`` gives seqeval's default-mode numbers (conlleval semantics):
    micro precision/recall/F1 over all entities, macro over the types present in gold or prediction,
    and word accuracy."""

    def __init__(self, task: TokenClassificationTask):
        super().__init__()
        self.task = task

    def update(self, outputs: TagOutputs, batch: dict) -> None:
        predicted = self.task.decode(outputs, batch).cpu()
        gold = batch["tags"].cpu()
        self.add_sentences(gold.tolist(), predicted.tolist())
        self.add("loss", self.task.loss_from(outputs, batch).float())
        self.add("items", torch.tensor(batch["num_items"]))

    def add_sentences(self, gold: list[list[int]], predicted: list[list[int]]) -> None:
        """Count the entities of sentences of tag ids (-100 marks padding)."""
        k = len(self.task.tags.types)
        tp, pred, true = np.zeros(k), np.zeros(k), np.zeros(k)
        correct = words = 0
        for g, p in zip(gold, predicted, strict=True):
            g = [t for t in g if t != -100]
            p = p[: len(g)]
            words += len(g)
            correct += sum(a == b for a, b in zip(g, p, strict=True))
            gold_entities = set(self.task.tags.entities(g))
            pred_entities = set(self.task.tags.entities(p))
            for kind, _, _ in gold_entities:
                true[kind] += 1
            for kind, _, _ in pred_entities:
                pred[kind] += 1
            for kind, _, _ in gold_entities & pred_entities:
                tp[kind] += 1
        for name, value in (("tp", tp), ("predicted", pred), ("gold", true)):
            self.add(name, torch.from_numpy(value))
        self.add("correct", torch.tensor(float(correct)))
        self.add("words", torch.tensor(float(words)))

    def compute(self) -> dict:
        return {**entity_scores(self.sums, self.task.tags.types),
                "loss": float(self.sums["loss"] / max(float(self.sums["items"]), 1.0))}  # fmt: skip


def entity_scores(sums: dict, types: list[str]) -> dict:
    """Precision/recall/F1 (micro and macro), word accuracy and a per-type table from the sums."""
    tp, pred, gold = (sums[name].numpy().astype(np.float64) for name in ("tp", "predicted", "gold"))

    def prf(t, p, g):
        precision = np.divide(t, p, out=np.zeros_like(t), where=p > 0)
        recall = np.divide(t, g, out=np.zeros_like(t), where=g > 0)
        denom = precision + recall
        f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(t), where=denom > 0)
        return precision, recall, f1

    micro = prf(np.array([tp.sum()]), np.array([pred.sum()]), np.array([gold.sum()]))
    precision, recall, f1 = prf(tp, pred, gold)
    present = (gold > 0) | (pred > 0)  # seqeval averages over the types seen in gold or prediction

    def macro(values):
        return float(np.average(values[present])) if present.any() else 0.0

    words = float(sums["words"])
    return {
        "f1": float(micro[2][0]),
        "precision": float(micro[0][0]),
        "recall": float(micro[1][0]),
        "f1_macro": macro(f1),
        "precision_macro": macro(precision),
        "recall_macro": macro(recall),
        "accuracy": float(sums["correct"]) / words if words else 0.0,
        "per_type": [
            {
                "type": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(gold[i]),
            }  # fmt: skip
            for i, name in enumerate(types)
        ],
    }
