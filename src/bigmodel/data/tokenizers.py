"""Text tokenizers on the Hugging Face ``tokenizers`` library (Rust, fast): load, encode, save.

``load_tokenizer(folder)`` reads, in this order of preference:

1. ``tokenizer.json``: the complete serialized pipeline, whatever the model;
2. ``vocab.txt``: BERT's WordPiece (Devlin et al. 2019; Schuster & Nakajima 2012), lowercased unless
   ``tokenizer_config.json`` says ``do_lower_case: false``;
3. ``vocab.json`` + ``merges.txt``: GPT-2's byte-level BPE (Radford et al. 2019; Sennrich et al. 2016).

Cases 2 and 3 rebuild exactly the pipelines transformers builds from the same files (its
``convert_slow_tokenizer``), so ids match the published tokenizers.
:func:`~bigmodel.data.tokenizer_training.train_tokenizer` learns a new one from text. Either gives a
:class:`TextTokenizer`, which encodes one example at a time (:meth:`TextTokenizer.encode_one`, for a
Task's lazy ``encode``) or a batch into padded tensors (:meth:`TextTokenizer.encode`), and saves as
``tokenizer.json``.

Thread safety: encoding never changes the wrapped tokenizer's settings (its truncation and padding
stay off; both are done here per call), so one tokenizer serves DataLoader workers and server threads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bigmodel.data.io import atomic_write_text
from bigmodel.errors import UserError

SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
# Fallback spellings when a folder has no tokenizer_config.json / special_tokens_map.json.
_DEFAULT_SPECIALS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "bos": ("<s>", "<|endoftext|>"),
    "eos": ("</s>", "<|endoftext|>"),
}
PADDINGS = ("longest", "max_length", "do_not_pad")
# Post-processors that set type ids themselves; the others keep the raw ones (0 for A, 1 for B).
_TYPE_SETTING_PROCESSORS = {"TemplateProcessing", "BertProcessing", "RobertaProcessing"}


class TokenizerError(UserError):
    """A tokenizer folder lacks the files to build a tokenizer, or an encode request cannot be met."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded text (or text pair), unpadded: what a Task's ``encode`` keeps per example.

    All lists have one entry per token.

    Attributes:
        ids: token ids, special tokens included.
        type_ids: segment ids (BERT's sentence A = 0, B = 1).
        tokens: token strings (for inspection).
        offsets: ``(start, end)`` character span of each token in the text it came from (``text`` or
            ``text_pair``, see ``sequence_ids``); ``(0, 0)`` for special tokens.
        word_ids: index of the word (pre-tokenizer split) each token belongs to, counted per
            sequence; None for special tokens.
        sequence_ids: 0 (``text``) or 1 (``text_pair``); None for special tokens.
    """

    ids: list[int]
    type_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    sequence_ids: list[int | None]

    def __len__(self) -> int:
        return len(self.ids)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, min_length: int = 0, multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest of the batch (a collate function's dynamic padding).

    Args:
        sequences: one list of ids per example (labels work too: pad them with -100).
        pad_id: the value of padded positions.
        min_length: pad to at least this length.
        multiple_of: round the length up to a multiple of this (tensor-core friendly shapes).

    Returns:
        ``ids`` and ``attention_mask`` (1 = real token), each a LongTensor ``(B, T)``.
    """
    if multiple_of is not None and multiple_of < 1:
        raise TokenizerError(f"multiple_of: expected a positive integer, got {multiple_of!r}")
    length = max([min_length, *(len(s) for s in sequences)])
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


class TextTokenizer:
    """Text <-> token ids, one example at a time or as padded batches; safe to share across threads.

    Attributes:
        tokenizer: the wrapped ``tokenizers.Tokenizer``. Treat it as read-only: its padding and
            truncation stay switched off (this class does both per call).
        special_tokens: role (``pad``, ``unk``, ``cls``, ``sep``, ``mask``, ``bos``, ``eos``) -> token.
        model_max_length: default truncation length (None = no limit).
    """

    def __init__(self, tokenizer, special_tokens: dict[str, str], model_max_length: int | None = None):
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        known = {k: v for k, v in special_tokens.items() if tokenizer.token_to_id(v) is not None}
        self.special_tokens = known
        self.model_max_length = model_max_length
        # Truncation must happen between tokenization and post-processing, and the Python API only
        # hands out post-processed encodings. So a copy without post-processor produces the raw
        # encodings (running the real one twice would, e.g., shift ByteLevel's trimmed offsets twice).
        serialized = tokenizer.to_str()
        self._raw = Tokenizer.from_str(serialized)
        self._raw.post_processor = None
        self._raw.encode_special_tokens = tokenizer.encode_special_tokens
        self._pair_type_ids_kept = not _sets_type_ids(json.loads(serialized).get("post_processor"))

    # -- vocabulary ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding needs at least this many rows)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _special_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk")

    @property
    def cls_token_id(self) -> int | None:
        return self._special_id("cls")

    @property
    def sep_token_id(self) -> int | None:
        return self._special_id("sep")

    @property
    def mask_token_id(self) -> int | None:
        return self._special_id("mask")

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos")

    @property
    def pad_id(self) -> int:
        """The id padded positions get: the pad token, else eos (GPT-2 has no pad), else 0."""
        return next((i for i in (self.pad_token_id, self.eos_token_id) if i is not None), 0)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.tokenizer.id_to_token(index)

    def tokens(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """The token strings of ``text`` (for inspection)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).tokens

    # -- encode / decode ----------------------------------------------------------------------------

    def encode_one(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        max_length: int | None = None,
        truncation: bool = True,
        add_special_tokens: bool = True,
    ) -> Encoded:
        """Tokenize one text (or text pair), unpadded, keeping offsets and word ids.

        Args:
            text: the text (BERT's sentence A).
            text_pair: an optional second segment (sentence B).
            max_length: at most this many tokens, special tokens included (default
                ``model_max_length``); a pair is cut longest-first, as the ``tokenizers`` library does.
            truncation: False keeps every token whatever ``max_length`` says.
            add_special_tokens: add ``[CLS]``/``[SEP]`` (or whatever the post-processor adds).

        Returns:
            An :class:`Encoded`.
        """
        return self._encode([text], None if text_pair is None else [text_pair], max_length, truncation,
                            add_special_tokens)[0]  # fmt: skip

    def encode(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        padding: bool | str = "longest",
        truncation: bool = True,
        add_special_tokens: bool = True,
        return_token_type_ids: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenize one text or a batch into right-padded tensors.

        Args:
            text: a string or a list of strings (a string gives a batch of one).
            text_pair: second segments (BERT's sentence B), as many as ``text``.
            max_length: truncate to this many tokens, special tokens included (default
                ``model_max_length``); with ``padding="max_length"``, also the padded length.
            padding: ``"longest"`` / True (to the longest row), ``"max_length"``, or
                ``"do_not_pad"`` / False (rows must then have equal lengths).
            truncation: cut rows longer than ``max_length``.
            add_special_tokens: add ``[CLS]``/``[SEP]`` (or whatever the post-processor adds).
            return_token_type_ids: include ``token_type_ids``; default True when the tokenizer has a
                ``[CLS]``-like token (segment-aware models).

        Returns:
            ``input_ids``, ``attention_mask`` (1 = real token) and optionally ``token_type_ids``,
            each a LongTensor ``(B, T)``.
        """
        padding = {True: "longest", False: "do_not_pad"}.get(padding, padding)
        if padding not in PADDINGS:
            raise TokenizerError(f"padding: unknown value {padding!r}. Allowed: {', '.join(PADDINGS)}.")
        if padding == "max_length" and max_length is None:
            raise TokenizerError('padding="max_length" needs max_length')
        texts = [text] if isinstance(text, str) else list(text)
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise TokenizerError(f"text_pair has {len(pairs)} items but text has {len(texts)}")
        encoded = self._encode(texts, pairs, max_length, truncation, add_special_tokens)

        lengths = sorted({len(e) for e in encoded})
        if padding == "do_not_pad" and len(lengths) > 1:
            raise TokenizerError(
                f'padding="do_not_pad" but the rows have different lengths {lengths}; use padding="longest"'
            )
        min_length = max_length if padding == "max_length" else 0
        input_ids, attention_mask = pad_batch([e.ids for e in encoded], self.pad_id, min_length=min_length)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if return_token_type_ids if return_token_type_ids is not None else self.cls_token_id is not None:
            out["token_type_ids"] = pad_batch([e.type_ids for e in encoded], 0, min_length=min_length)[0]
        return out

    def _encode(
        self,
        texts: list[str],
        pairs: list[str] | None,
        max_length: int | None,
        truncation: bool,
        add_special_tokens: bool,
    ) -> list[Encoded]:
        for name, values in (("text", texts), ("text_pair", pairs or [])):
            bad = next((v for v in values if not isinstance(v, str)), "")
            if not isinstance(bad, str):
                raise TokenizerError(f"{name}: expected a string, got {type(bad).__name__} {bad!r:.80}")
        limit = (max_length if max_length is not None else self.model_max_length) if truncation else None
        room = None
        if limit is not None:
            added = self.tokenizer.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
            if limit < added:
                raise TokenizerError(
                    f"max_length={limit} leaves no room for the {added} special tokens this tokenizer adds"
                    f"{' to a pair' if pairs is not None else ''}; use max_length >= {added}"
                )
            room = limit - added
        # One text: plain encode. encode_batch runs Rust threads, and a process that forks DataLoader
        # workers after using them makes `tokenizers` switch its parallelism off with a warning.
        raw = self._raw.encode_batch if len(texts) > 1 else _encode_list(self._raw)
        firsts = raw(texts, add_special_tokens=False)
        seconds = raw(pairs, add_special_tokens=False) if pairs is not None else [None] * len(firsts)
        out = []
        for first, second in zip(firsts, seconds, strict=True):
            if room is not None:
                _truncate_longest_first(first, second, room)
            out.append(self._finish(self.tokenizer.post_process(first, second, add_special_tokens)))
        return out

    def _finish(self, e) -> Encoded:
        type_ids, sequence_ids = e.type_ids, e.sequence_ids
        if self._pair_type_ids_kept and e.n_sequences > 1:
            # The library encodes sentence B with type id 1 and such a post-processor keeps it; our
            # separately encoded B starts at 0, so restore it.
            type_ids = [1 if s == 1 else t for t, s in zip(type_ids, sequence_ids, strict=True)]
        return Encoded(e.ids, type_ids, e.tokens, e.offsets, e.word_ids, sequence_ids)

    def decode(self, ids, skip_special_tokens: bool = True) -> str | list[str]:
        """Ids -> text. ``ids`` is a list / 1-D tensor (one text) or a 2-D tensor / list of lists."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids, skip = list(ids), skip_special_tokens
        if ids and isinstance(ids[0], list | tuple):
            return self.tokenizer.decode_batch([list(r) for r in ids], skip_special_tokens=skip)
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip)

    # -- files --------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (special tokens, max length) into
        ``folder``; :func:`load_tokenizer` and transformers' ``AutoTokenizer`` both read them back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        config |= {f"{role}_token": token for role, token in self.special_tokens.items()}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
        return folder

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(vocab_size={self.vocab_size}, model={type(self.tokenizer.model).__name__}, "
            f"special_tokens={self.special_tokens})"
        )


def _encode_list(tokenizer):
    """``encode_batch``'s signature over plain ``encode`` (no Rust thread pool)."""

    def encode(texts: list[str], add_special_tokens: bool):
        return [tokenizer.encode(t, add_special_tokens=add_special_tokens) for t in texts]

    return encode


def _sets_type_ids(processor: dict | None) -> bool:
    """Whether a serialized post-processor assigns type ids itself (a Sequence: any of its parts)."""
    if not processor:
        return False
    if processor.get("type") == "Sequence":
        return any(_sets_type_ids(p) for p in processor.get("processors", []))
    return processor.get("type") in _TYPE_SETTING_PROCESSORS


def _truncate_longest_first(first, second, max_length: int) -> None:
    """Cut raw encodings (in place) to ``max_length`` tokens in all, as the ``tokenizers`` library's
    ``longest_first`` strategy does: a pair keeps the shorter side whole when it fits in half, else
    both get half (the second the odd token)."""
    if second is None:
        _cut(first, max_length)
        return
    n1, n2 = len(first.ids), len(second.ids)
    if n1 + n2 <= max_length:
        return
    short, long = sorted((n1, n2))
    long = short if short > max_length else max(short, max_length - short)
    if short + long > max_length:
        short = max_length // 2
        long = short + max_length % 2
    keep1, keep2 = (long, short) if n1 > n2 else (short, long)
    _cut(first, keep1)
    _cut(second, keep2)


def _cut(encoding, length: int) -> None:
    """``encoding.truncate(length)``, leaving one or two overflowing pieces, not one per ``length`` tokens.

    The library keeps the cut-off tokens as overflowing pieces, and post-processing a pair combines
    every piece of one side with every piece of the other: quadratic, 0.3 s for a 200-token pair cut to
    5. Halving step by step (each truncate replaces the pieces) leaves at most two per side.
    """
    n = len(encoding.ids)
    while n > length:
        n = max(length, n // 2)
        encoding.truncate(n)


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    """Build the tokenizer of a model folder (see the module docstring for the files it reads).

    Args:
        folder: a Hugging Face model folder, or any folder holding the tokenizer files.

    Raises:
        TokenizerError: the folder is missing or has none of the supported files.
    """
    from tokenizers import Tokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"{folder}: no such folder")
    config = _read_json(folder / "tokenizer_config.json")
    specials = _special_tokens(config, _read_json(folder / "special_tokens_map.json"))
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        default_length = (tokenizer.truncation or {}).get("max_length")
        from_vocab = False
    elif (folder / "vocab.txt").is_file():
        tokenizer, default_length, from_vocab = _wordpiece(folder / "vocab.txt", config), None, True
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tokenizer = _byte_level_bpe(folder / "vocab.json", folder / "merges.txt")
        default_length, from_vocab = None, True
    else:
        raise TokenizerError(
            f"{folder}: no tokenizer files. Expected tokenizer.json, vocab.txt (WordPiece) or "
            "vocab.json + merges.txt (byte-level BPE)."
        )
    for role, candidates in _DEFAULT_SPECIALS.items():
        if role not in specials:
            found = next((t for t in candidates if tokenizer.token_to_id(t) is not None), None)
            if found is not None:
                specials[role] = found
    if from_vocab:
        _add_specials(tokenizer, specials)
    max_length = config.get("model_max_length")
    if not isinstance(max_length, int) or max_length > 1_000_000:  # transformers writes 1e30 for "none"
        max_length = default_length
    return TextTokenizer(tokenizer, specials, max_length)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None


def _special_tokens(config: dict, special_map: dict) -> dict[str, str]:
    """Role -> token string from tokenizer_config.json / special_tokens_map.json (str or {content})."""
    out = {}
    for source in (special_map, config):  # tokenizer_config.json wins
        for role in SPECIAL_NAMES:
            value = source.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                out[role] = value
    return out


def _add_specials(tokenizer, specials: dict[str, str]) -> None:
    """Mark the special tokens (never split; dropped by ``decode(skip_special_tokens=True)``) and give
    a WordPiece vocabulary BERT's ``[CLS] A [SEP] (B [SEP])`` template."""
    from tokenizers import processors
    from tokenizers.models import WordPiece

    tokenizer.add_special_tokens([t for t in specials.values() if tokenizer.token_to_id(t) is not None])
    cls, sep = specials.get("cls"), specials.get("sep")
    if isinstance(tokenizer.model, WordPiece) and cls is not None and sep is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
        )


def _wordpiece(vocab: Path, config: dict):
    """BERT's WordPiece pipeline, as transformers' ``BertConverter`` builds it (the ``[CLS]``/``[SEP]``
    template is added by ``_add_specials`` once the special tokens are known)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    unk = config.get("unk_token", "[UNK]")
    unk = unk.get("content", "[UNK]") if isinstance(unk, dict) else unk
    tokenizer = Tokenizer(WordPiece.from_file(str(vocab), unk_token=unk))
    lowercase = config.get("do_lower_case", True)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),  # None: strip exactly when lowercasing (BERT)
        lowercase=lowercase,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _byte_level_bpe(vocab: Path, merges: Path):
    """GPT-2's byte-level BPE, as transformers' ``GPT2Converter`` builds it: no prefix space, no
    template (``<|endoftext|>`` becomes special through ``_add_specials``)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE.from_file(str(vocab), str(merges)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer
