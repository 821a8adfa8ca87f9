"""``builtin:spoken-digits``: generated with espeak-ng into a keyed cache folder, split by voice, read
back without regenerating; a missing synthesiser, an unknown voice, a hung or failing synthesiser and a
damaged cache are clear errors. The shipped recipe trains one step on a tiny generated slice."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile

import bigmodel
from bigmodel.data import builtin, spoken_digits
from bigmodel.data.spoken_digits import (
    DIGIT_VOICES,
    SPOKEN_DIGITS_SET,
    SpokenWords,
    cache_root,
    read_spoken_words,
)
from bigmodel.errors import DataError

REAL_RUN = subprocess.run
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)

TINY = SpokenWords(
    name="spoken-digits",
    words={"1": "one", "7": "seven"},
    accents=("en-us",),
    voices={"train": ("m1", "f2"), "validation": ("m3",), "test": ("f3",)},
    speeds=(175,),
    pitches=(50,),
)


def test_the_shipped_set_splits_by_voice():
    voices = [set(v) for v in DIGIT_VOICES.values()]
    assert not (voices[0] & voices[1] or voices[0] & voices[2] or voices[1] & voices[2])
    assert SPOKEN_DIGITS_SET.size == 10 * 7 * 34 * 2 * 2 == 9520
    assert list(SPOKEN_DIGITS_SET.words.values())[7] == "seven"


def test_the_cache_follows_bigmodel_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("BIGMODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "bigmodel"
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("BIGMODEL_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "bigmodel"


def test_a_missing_synthesiser_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
    with pytest.raises(
        DataError, match=r"builtin:spoken-digits' is generated with .*espeak-ng.*apt-get install"
    ):
        read_spoken_words(TINY, cache=tmp_path)


@needs_espeak
def test_generates_once_splits_by_voice_and_reads_back(tmp_path, capsys, monkeypatch):
    splits = read_spoken_words(TINY, cache=tmp_path)
    assert "generating 8 clips with eSpeak NG" in capsys.readouterr().err
    assert {name: len(r) for name, r in splits.items()} == {"train": 4, "validation": 2, "test": 2}
    train = splits["train"]
    assert train.where == "builtin:spoken-digits"
    assert train.columns == ["audio", "label", "word", "voice", "accent", "variant", "speed", "pitch"]
    assert train[0]["label"] == "1" and train[0]["word"] == "one" and train[0]["voice"] == "en-us+m1"
    voices = {name: set(r.column("variant")) for name, r in splits.items()}
    assert voices == {"train": {"m1", "f2"}, "validation": {"m3"}, "test": {"f3"}}
    info = soundfile.info(train[0]["audio"])
    assert info.samplerate == 22050 and info.channels == 1 and 0.2 < info.duration < 1.0
    (folder,) = (tmp_path / "spoken-digits").iterdir()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # read back without running espeak-ng again: same records, same fingerprint
    monkeypatch.setattr(spoken_digits.subprocess, "run", _must_not_run)
    again = read_spoken_words(TINY, cache=tmp_path)
    assert again["test"].column("audio") == splits["test"].column("audio")
    assert again["train"].fingerprint == train.fingerprint
    # a damaged cache is named, with what to do
    Path(train[1]["audio"]).write_bytes(b"RIFF")
    with pytest.raises(
        DataError, match=r"cached clip .*is missing or changed; delete .* to generate the set again"
    ):
        read_spoken_words(TINY, cache=tmp_path)


def _must_not_run(command, **kwargs):
    if "--version" in command:  # part of the cache key
        return REAL_RUN(command, **kwargs)
    raise AssertionError(f"espeak-ng ran again: {command}")


@needs_espeak
def test_a_changed_generator_writes_a_new_folder(tmp_path, monkeypatch):
    read_spoken_words(TINY, cache=tmp_path, progress=False)
    slower = SpokenWords(**{**TINY.__dict__, "words": {"7": "seven", "9": "nine"}})
    read_spoken_words(slower, cache=tmp_path, progress=False)
    monkeypatch.setattr(spoken_digits, "GENERATOR_VERSION", spoken_digits.GENERATOR_VERSION + 1)
    read_spoken_words(TINY, cache=tmp_path, progress=False)
    assert len(list((tmp_path / "spoken-digits").iterdir())) == 3


@needs_espeak
def test_unknown_voices_and_failing_or_hung_synthesis_are_named(tmp_path, monkeypatch):
    odd = SpokenWords(**{**TINY.__dict__, "voices": {"train": ("m1", "nobody")}})
    with pytest.raises(DataError, match="espeak-ng has no voice variant nobody"):
        read_spoken_words(odd, cache=tmp_path, progress=False)

    def hangs(command, **kwargs):
        if "--version" in command:
            return REAL_RUN(command, **kwargs)
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(spoken_digits.subprocess, "run", hangs)
    with pytest.raises(DataError, match=r"espeak-ng took over 30 s on: .*espeak-ng -z -v en-us\+m1 -s 175"):
        read_spoken_words(TINY, cache=tmp_path, progress=False)

    def fails(command, **kwargs):
        if "--version" in command:
            return REAL_RUN(command, **kwargs)
        return subprocess.CompletedProcess(command, 1, "", "no sound device")

    monkeypatch.setattr(spoken_digits.subprocess, "run", fails)
    failed = r"espeak-ng failed \(exit 1\) on: .*-w .*\.wav (one|seven)\. no sound device"
    with pytest.raises(DataError, match=failed):
        read_spoken_words(TINY, cache=tmp_path, progress=False)
    assert not list((tmp_path / "spoken-digits").iterdir())  # nothing half-written is left


@needs_espeak
def test_the_shipped_recipe_trains_one_step_on_a_tiny_slice(tmp_path, monkeypatch):
    """Until spoken-digits and audio_classification are registered, register them here the way
    data/builtin.py, recipe/schema.py and tasks/__init__.py will."""
    from bigmodel.recipe import schema
    from bigmodel.tasks import TASKS
    from bigmodel.tasks.audio_classification import AudioClassificationTask

    if "spoken-digits" not in schema.BUILTIN_DATASETS:
        monkeypatch.setattr(schema, "BUILTIN_DATASETS", (*schema.BUILTIN_DATASETS, "spoken-digits"))
    monkeypatch.setitem(TASKS, "audio_classification", AudioClassificationTask)
    tiny = builtin.Builtin(lambda: read_spoken_words(TINY, cache=tmp_path, progress=False), "tiny")
    monkeypatch.setitem(builtin.BUILTINS, "spoken-digits", tiny)
    run = bigmodel.train(
        "spoken-digits-cnn", output=tmp_path / "runs", progress=False, **{"train.max_steps": 1}
    )
    assert run.metrics["train"]["steps"] == 1 and set(run.metrics) >= {"validation", "test"}
    (prediction,) = bigmodel.load(run.path).predict(
        read_spoken_words(TINY, cache=tmp_path)["test"][0]["audio"]
    )
    assert prediction["label"] in {"1", "7"} and set(prediction["probabilities"]) == {"1", "7"}
