"""train_tokenizer for every kind: round trips, unknown characters, small vocabularies, errors, and
loading a trained tokenizer back (here and in transformers)."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bigmodel.data.tokenizer_training import TOKENIZER_KINDS, train_tokenizer  # noqa: E402
from bigmodel.data.tokenizers import TokenizerError, load_tokenizer  # noqa: E402
from bigmodel.errors import UserError  # noqa: E402


def sentences(n: int = 200, seed: int = 0) -> list[str]:
    """Short English sentences with capitals and punctuation (no 'z', no digits: see the [UNK] test)."""
    rng = random.Random(seed)
    subjects = ["The cat", "A dog", "My neighbour", "The old sailor", "Every child", "Our teacher", "Birds"]
    verbs = ["sees", "likes", "paints", "follows", "remembers", "carries", "finds", "wants"]
    objects = [
        "the red ball",
        "a quiet river",
        "three green apples",
        "the morning train",
        "her brother's kite",
    ]
    endings = [".", "!", " today.", " again, slowly.", " near the house?", " before dinner."]
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(endings)}"
        for _ in range(n)
    ]


def surface(kind: str, token: str) -> str:
    """The text a token stands for (before lowercasing)."""
    return {"bpe": token.replace("▁", " "), "unigram": token.replace("▁", " ")}.get(
        kind, token.removeprefix("##")
    )


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_train_round_trips(kind, tmp_path):
    texts = sentences()
    tok = train_tokenizer(iter(texts), kind, vocab_size=120)  # any iterable, read once
    assert tok.vocab_size <= 120
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [tok.token_to_id(t) for t in specials] == [0, 1, 2, 3, 4] and tok.pad_id == 0
    pair = tok.encode_one(texts[0], texts[1])
    assert pair.ids[0] == tok.cls_token_id and pair.ids[-1] == tok.sep_token_id
    assert pair.ids.count(tok.sep_token_id) == 2 and set(pair.type_ids) == {0, 1}

    again = load_tokenizer(tok.save(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file() and again.special_tokens == tok.special_tokens
    for text in [*texts, "Unseen words: jumbled, xylophones §!"]:
        one = tok.encode_one(text)
        assert again.encode_one(text) == one
        assert again.encode_one(text, texts[0]) == tok.encode_one(text, texts[0])
        if kind != "unigram" or tok.unk_token_id not in one.ids:  # unigram's [UNK] keeps its text
            for token, (start, end), token_id in zip(one.tokens, one.offsets, one.ids, strict=True):
                if token_id not in (tok.unk_token_id, tok.cls_token_id, tok.sep_token_id):
                    assert surface(kind, token) == text[start:end].lower(), (token, text[start:end])
    for text in texts:
        expected = text.lower()
        if kind == "wordpiece":  # BERT's decoder re-attaches . , ? ! but not an apostrophe
            expected = expected.replace("'", " ' ")
        assert tok.decode(tok.encode_one(text).ids) == expected


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_train_unknown_characters_and_small_vocabularies(kind):
    texts = sentences()
    tok = train_tokenizer(texts, kind, vocab_size=300, lowercase=False)
    assert tok.unk_token_id in tok.encode_one("日 §", add_special_tokens=False).ids
    assert tok.tokens("Cat") != tok.tokens("cat")  # lowercase=False keeps case
    if kind == "unigram":  # a unigram model needs every character in its vocabulary
        with pytest.raises(TokenizerError, match="raise vocab_size"):
            train_tokenizer(texts, kind, vocab_size=20)
    else:
        small = train_tokenizer(texts, kind, vocab_size=20)
        assert small.vocab_size <= 20 and small.unk_token_id in small.encode_one(texts[0]).ids


def test_char_tokens_are_characters():
    text = "Hello,\n  world"
    tok = train_tokenizer([text, "abc"], "char", vocab_size=50, lowercase=False)
    one = tok.encode_one(text, add_special_tokens=False)
    assert one.tokens == list(text) and one.offsets == [(i, i + 1) for i in range(len(text))]
    assert tok.decode(one.ids) == text  # whitespace and newlines survive


def test_trained_tokenizer_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    texts = sentences()
    tok = train_tokenizer(texts, "wordpiece", vocab_size=200)
    ref = transformers.AutoTokenizer.from_pretrained(tok.save(tmp_path))
    assert ref.pad_token_id == 0 and ref.cls_token == "[CLS]"
    for text in texts[:20]:
        assert ref(text, texts[0])["input_ids"] == tok.encode_one(text, texts[0]).ids


def test_train_errors():
    texts = sentences(20)
    with pytest.raises(
        TokenizerError, match=r"kind: unknown value 'bpee'\. Allowed: bpe, char, unigram, wordpiece"
    ):
        train_tokenizer(texts, "bpee", 100)
    with pytest.raises(UserError, match=r"vocab_size: 5 is too small.*vocab_size >= 6"):
        train_tokenizer(texts, "bpe", 5)
    with pytest.raises(TokenizerError, match="nothing to train on"):
        train_tokenizer([], "wordpiece", 100)
    with pytest.raises(TokenizerError, match=r"nothing to train on \(3 texts"):
        train_tokenizer(["", "  ", "\n"], "char", 100)
    with pytest.raises(TokenizerError, match="single string"):
        train_tokenizer("just one text", "bpe", 100)
    with pytest.raises(TokenizerError, match="expected strings, got int"):
        train_tokenizer(["a b", 3], "bpe", 100)
    with pytest.raises(TokenizerError, match="min_frequency"):
        train_tokenizer(texts, "bpe", 100, min_frequency=0)
