"""``builtin:digit-phrases`` / ``digit-phrases-tts``: phrases held out by text (no test phrase in training,
by any voice), the TTS voice where it belongs, a tiny set generated with espeak-ng and read back from the
cache, and the shipped recogniser recipe trained one step on it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import soundfile

import bigmodel
from bigmodel.data import builtin, spoken_digits
from bigmodel.data.digit_phrases import (
    COLUMNS,
    DIGIT_PHRASES_SET,
    DIGIT_PHRASES_TTS_SET,
    PHRASE_COUNTS,
    TTS_VOICE,
    DigitPhrases,
    draw_phrases,
    phrase_clips,
    phrase_split,
    read_phrase_set,
)
from bigmodel.data.spoken_digits import DIGIT_WORDS
from bigmodel.errors import DataError

REAL_RUN = subprocess.run
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
TINY = DigitPhrases(
    name="digit-phrases",
    phrases={"train": 3, "validation": 1, "test": 2},
    max_words=3,
    tts_splits=("train",),
    random_voices={"train": 1, "validation": 1, "test": 1},
)


def test_phrases_are_held_out_by_text():
    phrases = draw_phrases(PHRASE_COUNTS)
    assert {s: len(p) for s, p in phrases.items()} == {"train": 2000, "validation": 150, "test": 150}
    sets = {s: set(p) for s, p in phrases.items()}
    assert sum(len(s) for s in sets.values()) == 2300  # distinct, and no phrase in two splits
    assert all(phrase_split(text) == split for split, texts in phrases.items() for text in texts)
    words = [t.split() for p in phrases.values() for t in p]
    assert {len(w) for w in words} == {1, 2, 3, 4, 5} and {w for ws in words for w in ws} == set(DIGIT_WORDS)
    assert draw_phrases(PHRASE_COUNTS) == phrases  # seeded
    with pytest.raises(DataError, match=r"cannot draw .* distinct phrases of 1-1 digit words; ask for fewer"):
        draw_phrases({"train": 20}, max_words=1)


def test_the_two_sets_share_the_phrase_split_and_the_tts_voice():
    asr, tts = phrase_clips(DIGIT_PHRASES_SET), phrase_clips(DIGIT_PHRASES_TTS_SET)
    assert len(asr) == DIGIT_PHRASES_SET.size == 8000 + 450 + 450
    assert len(tts) == DIGIT_PHRASES_TTS_SET.size == 2300
    split_of = {c["text"]: c["split"] for c in tts}
    assert all(split_of[c["text"]] == c["split"] for c in asr)
    tts_voice = {(c["accent"], c["variant"], c["speed"], c["pitch"]) for c in tts}
    assert tts_voice == {TTS_VOICE}
    in_asr = {c["split"] for c in asr if (c["accent"], c["variant"], c["speed"], c["pitch"]) == TTS_VOICE}
    assert in_asr == {"train"}  # the recogniser hears the TTS voice in training only
    assert len({(c["accent"], c["variant"]) for c in asr}) > 150  # many voices
    assert len({c["file"] for c in asr}) == len(asr)


def test_data_info_states_source_size_and_licence():
    for name in ("digit-phrases", "digit-phrases-tts"):
        entry = builtin.BUILTINS[name]
        assert "espeak-ng" in entry.about and "GPL-3" in entry.about and "2,000" in entry.about
        assert entry.install == "apt-get install espeak-ng"


@needs_espeak
def test_generates_once_and_reads_back(tmp_path, capsys, monkeypatch):
    splits = read_phrase_set(TINY, cache=tmp_path)
    assert "generating 9 clips with eSpeak NG" in capsys.readouterr().err
    assert {name: len(r) for name, r in splits.items()} == {"train": 6, "validation": 1, "test": 2}
    train = splits["train"]
    assert train.where == "builtin:digit-phrases" and train.columns == list(COLUMNS)
    assert train[0]["voice"] == "en-us" and train[0]["speed"] == 160  # the TTS voice comes first
    assert train[0]["words"] == len(train[0]["text"].split())
    texts = {name: set(r.column("text")) for name, r in splits.items()}
    assert not (texts["train"] & texts["test"] or texts["train"] & texts["validation"])
    info = soundfile.info(train[0]["audio"])
    assert info.samplerate == 22050 and info.channels == 1 and 0.2 < info.duration < 3.0

    def must_not_run(command, **kwargs):
        if "--version" in command:
            return REAL_RUN(command, **kwargs)
        raise AssertionError(f"espeak-ng ran again: {command}")

    monkeypatch.setattr(spoken_digits.subprocess, "run", must_not_run)
    again = read_phrase_set(TINY, cache=tmp_path)
    assert again["train"].fingerprint == train.fingerprint


def test_a_missing_synthesiser_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
    with pytest.raises(
        DataError, match=r"builtin:digit-phrases' is generated with .*apt-get install espeak-ng"
    ):
        read_phrase_set(TINY, cache=tmp_path)


@needs_espeak
def test_the_shipped_recipe_trains_one_step_on_a_tiny_set(tmp_path, monkeypatch):
    tiny = builtin.Builtin(lambda: read_phrase_set(TINY, cache=tmp_path, progress=False), "tiny")
    monkeypatch.setitem(builtin.BUILTINS, "digit-phrases", tiny)
    run = bigmodel.train(
        "digit-phrases-ctc", output=tmp_path / "runs", progress=False, **{"train.max_steps": 1}
    )
    assert run.metrics["train"]["steps"] == 1 and {"wer", "cer"} <= set(run.metrics["test"])
    (prediction,) = bigmodel.load(run.path).predict(read_phrase_set(TINY, cache=tmp_path)["test"][0]["audio"])
    assert isinstance(prediction["text"], str)
