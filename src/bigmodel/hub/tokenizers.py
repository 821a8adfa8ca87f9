"""Tokenizers of published model folders, on the Hugging Face ``tokenizers`` library (Rust, fast).

``load_tokenizer(folder)`` reads, in this order of preference:

1. ``tokenizer.json``: the complete serialized pipeline, whatever the model;
2. ``vocab.txt``: BERT's WordPiece (Devlin et al. 2019; Schuster & Nakajima 2012), lowercased unless
   ``tokenizer_config.json`` says ``do_lower_case: false``;
3. ``vocab.json`` + ``merges.txt``: GPT-2's byte-level BPE (Radford et al. 2019; Sennrich et al. 2016).

Cases 2 and 3 rebuild exactly the pipelines transformers builds from the same files (its
``convert_slow_tokenizer``), so ids match the published tokenizers. The result is a small
:class:`TextTokenizer` that returns padded tensors ready for a model, and saves as ``tokenizer.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bigmodel.errors import UserError
from bigmodel.hub.files import write_json, write_text

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


class TokenizerError(UserError):
    """A tokenizer folder lacks the files to build a tokenizer, or an encode request cannot be met."""


class TextTokenizer:
    """Text <-> token ids, returning batches as tensors.

    Attributes:
        tokenizer: the wrapped ``tokenizers.Tokenizer`` (its own padding/truncation are switched off;
            :meth:`encode` does both).
        special_tokens: role (``pad``, ``unk``, ``cls``, ``sep``, ``mask``, ``bos``, ``eos``) -> token.
        model_max_length: default truncation length (None = no limit).
    """

    def __init__(self, tokenizer, special_tokens: dict[str, str], model_max_length: int | None = None):
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        known = {k: v for k, v in special_tokens.items() if tokenizer.token_to_id(v) is not None}
        self.special_tokens = known
        self.model_max_length = model_max_length

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

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.tokenizer.id_to_token(index)

    def tokens(self, text: str, add_special_tokens: bool = False) -> list[str]:
        """The token strings of ``text`` (for inspection)."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).tokens

    # -- encode / decode ----------------------------------------------------------------------------

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
        limit = max_length if max_length is not None else self.model_max_length
        if truncation and limit is not None:
            self.tokenizer.enable_truncation(limit)
        try:
            inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
            encodings = self.tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            self.tokenizer.no_truncation()

        lengths = [len(e.ids) for e in encodings]
        if padding == "max_length":
            T = max([max_length, *lengths])
        else:
            T = max(lengths, default=0)
            if padding == "do_not_pad" and len(set(lengths)) > 1:
                raise TokenizerError(
                    f'padding="do_not_pad" but the rows have different lengths {sorted(set(lengths))}; '
                    'use padding="longest"'
                )
        pad_id = next((i for i in (self.pad_token_id, self.eos_token_id) if i is not None), 0)
        B = len(encodings)
        input_ids = torch.full((B, T), pad_id, dtype=torch.long)
        attention_mask = torch.zeros(B, T, dtype=torch.long)
        token_type_ids = torch.zeros(B, T, dtype=torch.long)
        for b, e in enumerate(encodings):  # right padding
            n = len(e.ids)
            input_ids[b, :n] = torch.tensor(e.ids, dtype=torch.long)
            attention_mask[b, :n] = 1
            token_type_ids[b, :n] = torch.tensor(e.type_ids, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if return_token_type_ids if return_token_type_ids is not None else self.cls_token_id is not None:
            out["token_type_ids"] = token_type_ids
        return out

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
        write_text(folder / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        config |= {f"{role}_token": token for role, token in self.special_tokens.items()}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        write_json(folder / "tokenizer_config.json", config)
        return folder

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(vocab_size={self.vocab_size}, model={type(self.tokenizer.model).__name__}, "
            f"special_tokens={self.special_tokens})"
        )


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
