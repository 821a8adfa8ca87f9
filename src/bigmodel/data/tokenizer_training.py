"""Train a new :class:`~bigmodel.data.tokenizers.TextTokenizer` from text with the ``tokenizers``
library's trainers: ``train_tokenizer(texts, kind, vocab_size)``, for every kind in
:data:`TOKENIZER_KINDS` (BPE, WordPiece, unigram, characters).

A trained tokenizer saves as ``tokenizer.json`` and loads back with
:func:`~bigmodel.data.tokenizers.load_tokenizer`, like a published one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from bigmodel.data.tokenizers import TextTokenizer, TokenizerError
from bigmodel.errors import unknown_name

TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram", "char")
# Trained tokenizers share BERT's special tokens, [PAD] first so that padding is id 0.
TRAINED_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def train_tokenizer(
    texts: Iterable[str], kind: str, vocab_size: int, lowercase: bool = True, min_frequency: int = 1
) -> TextTokenizer:
    """Learn a tokenizer from texts with the ``tokenizers`` library's trainers.

    Every kind gets the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4) and BERT's
    template ``[CLS] A [SEP] (B [SEP])``, so an encoder has a first-token vector to pool (pass
    ``add_special_tokens=False`` to a language model's encode). Characters never seen in training
    become ``[UNK]``.

    Kinds:
        ``bpe``: byte-pair merges (Sennrich et al. 2016) over SentencePiece-style words: NFKC, spaces
            kept as ``▁`` so ``decode`` restores the (normalized) text exactly. A word-initial
            token's offsets cover the space its ``▁`` stands for (none before the first word).
        ``unigram``: the unigram language model (Kudo 2018), same normalization and words as ``bpe``.
        ``wordpiece``: BERT's WordPiece: BERT's normalizer (lowercasing also strips accents),
            punctuation split off, ``##`` continuations; decode joins words with single spaces
            (re-attaching ``. , ? !``, not apostrophes: ``brother ' s``).
        ``char``: one token per character, whitespace and newlines included (character-level
            language models): a word-level vocabulary whose "words" are single characters. Chosen
            over BPE with zero merges because it is one token per character by construction, and
            ``vocab_size`` / ``min_frequency`` keep the most frequent characters.

    Args:
        texts: the training texts (any iterable, read once; a generator is fine).
        kind: one of ``bpe``, ``wordpiece``, ``unigram``, ``char``.
        vocab_size: the largest vocabulary wanted, special tokens included (the result may be
            smaller when the texts do not support more tokens).
        lowercase: lowercase before everything else.
        min_frequency: the fewest occurrences a merge (bpe, wordpiece) or character (char) needs;
            ``unigram`` ignores it (its trainer prunes by likelihood instead).

    Returns:
        A :class:`TextTokenizer`; ``save(folder)`` writes it, ``load_tokenizer(folder)`` reads it back.

    Raises:
        TokenizerError: unknown ``kind``, a ``vocab_size`` below 6, ``min_frequency`` below 1, or no
            non-blank text.
    """
    from tokenizers import Tokenizer, processors

    if kind not in TOKENIZER_KINDS:
        raise unknown_name("kind", kind, TOKENIZER_KINDS, TokenizerError)
    specials = list(TRAINED_SPECIALS.values())
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < len(specials) + 1:
        raise TokenizerError(
            f"vocab_size: {vocab_size!r} is too small: the {len(specials)} special tokens "
            f"{' '.join(specials)} take {len(specials)} ids and text needs at least one more; "
            f"use vocab_size >= {len(specials) + 1}."
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise TokenizerError(f"min_frequency: expected an integer >= 1, got {min_frequency!r}.")
    if isinstance(texts, str):
        raise TokenizerError("texts: expected an iterable of strings, got a single string.")

    model, normalizer, pre_tokenizer, decoder, trainer = _PIPELINES[kind](
        vocab_size, lowercase, min_frequency, specials
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoder
    counter = _Counted(texts)
    try:
        tokenizer.train_from_iterator(counter, trainer=trainer)
    except Exception as exc:
        if type(exc) is not Exception:  # the Rust trainers raise plain Exception; anything else is a bug
            raise
        hint = (
            " (unigram keeps every character: raise vocab_size or use kind 'bpe')"
            if kind == "unigram"
            else ""
        )
        raise TokenizerError(
            f"training a {kind} tokenizer with vocab_size={vocab_size} failed: {exc}{hint}."
        ) from exc
    if counter.bad is not None:
        raise TokenizerError(
            f"texts: expected strings, got {type(counter.bad).__name__} {counter.bad!r:.80}."
        )
    if not counter.nonblank:
        raise TokenizerError(
            f"texts: nothing to train on ({counter.seen} texts, none with a non-blank character)."
        )
    cls, sep = TRAINED_SPECIALS["cls"], TRAINED_SPECIALS["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return TextTokenizer(tokenizer, dict(TRAINED_SPECIALS))


class _Counted:
    """Iterates the training texts once, counting them, and stops at the first non-string (an
    exception raised inside the Rust trainer's iteration would lose its message)."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.seen, self.nonblank, self.bad = texts, 0, 0, None

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            if not isinstance(text, str):
                self.bad = text
                return
            self.seen += 1
            self.nonblank += not text.isspace() and text != ""
            yield text


def _sentencepiece_style(lowercase: bool):
    """NFKC (+ lowercase) and spaces as ``▁`` (SentencePiece's scheme): lossless up to normalization.

    No ``▁`` is prepended to the text (GPT-2 does the same): a prepended one has no character of its
    own, so its offsets would overlap the first word's and ``decode`` could not tell whether the text
    began with a space. The price: a text's first word tokenizes unlike the same word after a space.
    """
    from tokenizers import decoders, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence([normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])])
    return (
        normalizer,
        pre_tokenizers.Metaspace(prepend_scheme="never"),
        decoders.Metaspace(prepend_scheme="never"),
    )


def _train_bpe(vocab_size: int, lowercase: bool, min_frequency: int, specials: list[str]):
    from tokenizers import models, trainers

    # limit_alphabet: the trainer keeps every character seen, even past vocab_size; keep the most
    # frequent ones only (the rest become [UNK]).
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        limit_alphabet=vocab_size - len(specials), show_progress=False,
    )  # fmt: skip
    return (models.BPE(unk_token=TRAINED_SPECIALS["unk"]), *_sentencepiece_style(lowercase), trainer)


def _train_unigram(vocab_size: int, lowercase: bool, min_frequency: int, specials: list[str]):
    from tokenizers import models, trainers

    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=TRAINED_SPECIALS["unk"],
        show_progress=False,
    )  # fmt: skip
    return (models.Unigram(), *_sentencepiece_style(lowercase), trainer)


def _train_wordpiece(vocab_size: int, lowercase: bool, min_frequency: int, specials: list[str]):
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    # A character can appear as "c" and as "##c", so each kept character may take two ids.
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        limit_alphabet=(vocab_size - len(specials)) // 2, continuing_subword_prefix="##",
        show_progress=False,
    )  # fmt: skip
    return (
        models.WordPiece(unk_token=TRAINED_SPECIALS["unk"], continuing_subword_prefix="##"),
        normalizers.BertNormalizer(lowercase=lowercase),
        pre_tokenizers.BertPreTokenizer(),
        decoders.WordPiece(prefix="##"),
        trainer,
    )


def _train_char(vocab_size: int, lowercase: bool, min_frequency: int, specials: list[str]):
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
    )
    normalizer = normalizers.Sequence([normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])])
    return (
        models.WordLevel(unk_token=TRAINED_SPECIALS["unk"]),
        normalizer,
        pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated"),  # every character its own word
        decoders.Fuse(),  # concatenate, no separator
        trainer,
    )


_PIPELINES = {
    "bpe": _train_bpe,
    "unigram": _train_unigram,
    "wordpiece": _train_wordpiece,
    "char": _train_char,
}
