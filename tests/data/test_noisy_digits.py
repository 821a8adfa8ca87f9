"""``builtin:spoken-digits-noisy``: flite and espeak-ng words mixed with Tux Paint's sound effects, on a
tiny stamps folder in the package's layout: test voices and noises are never in train, every clip has
the SNR it records (measured in the written WAV), the same seed writes the same bytes, and a missing
synthesiser or missing noise recordings name the install command. The shipped recipe trains one step
on a tiny generated slice."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import bigmodel
from bigmodel.data import builtin, noisy_digits
from bigmodel.data.audio import load_audio
from bigmodel.data.noisy_digits import (
    SPOKEN_DIGITS_NOISY_SET,
    NoisyDigits,
    mix,
    noise_files,
    noise_stretch,
    read_noisy_digits,
)
from bigmodel.data.spoken_digits import SpokenWords
from bigmodel.data.tuxpaint_speech import STAMPS, held_out_split
from bigmodel.errors import DataError

REAL_RUN = subprocess.run
needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)"
)
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)

TINY = NoisyDigits(
    words={"1": "one", "7": "seven"},
    espeak=None,
    flite_voices={"train": ("kal16",), "validation": ("kal",), "test": ("slt",)},
    stretches=(1.0,),
    pitches=(0, 150),
)
TINY_ESPEAK = SpokenWords(
    name="spoken-digits", words={"1": "one", "7": "seven"}, accents=("en-us",),
    voices={"train": ("m1",), "validation": ("m3",), "test": ("f3",)}, speeds=(175,), pitches=(50,),
)  # fmt: skip


def stamp_names(split: str, count: int, category: str) -> list[str]:
    """``count`` stamp paths (no suffix) under ``category`` whose digest puts them in ``split``."""
    names = (f"{category}/sound{i}" for i in itertools.count())
    return list(itertools.islice((n for n in names if held_out_split(n) == split), count))


def write_stamps(folder: Path) -> dict[str, list[str]]:
    """A stamps folder with sound effects in each split (a short one that must loop, 0.2 s, beside a
    longer one) and the files that are not noise: descriptions, a translation, symbols, the excluded."""
    rng = np.random.default_rng(0)
    noises = {}
    for split in ("train", "validation", "test"):
        names = stamp_names(split, 2, f"animals/{split}")
        for name, seconds, rate in zip(names, (0.2, 1.5), (44100, 22050), strict=True):
            path = folder / f"{name}.ogg"
            path.parent.mkdir(parents=True, exist_ok=True)
            wave = (
                rng.standard_normal(int(seconds * rate))
                * 0.1
                * np.sin(np.linspace(0, 40, int(seconds * rate)))
            )
            soundfile.write(str(path), wave, rate, format="OGG")
        noises[split] = [f"{n}.ogg" for n in names]
    base = folder / noises["train"][1]
    for extra in (
        "sound_desc.ogg",
        "sound_desc_fr.ogg",
        "../../symbols/math/7.ogg",
        "../../space/apollo_lander.ogg",
    ):
        (base.parent / extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base, base.parent / extra)
    shutil.copy(base, base.with_name(f"{base.stem}_en_GB.ogg"))  # a translation of base: not noise
    return noises


@pytest.fixture
def stamps(tmp_path) -> tuple[Path, dict[str, list[str]]]:
    folder = tmp_path / "stamps"
    return folder, write_stamps(folder)


def test_noise_files_are_the_stamps_own_sounds_only(stamps):
    folder, noises = stamps
    assert noise_files(folder) == sorted(n for names in noises.values() for n in names)


@pytest.mark.skipif(not STAMPS.is_dir(), reason="apt-get install tuxpaint-stamps-default")
def test_the_installed_noises_split_by_file():
    names = noise_files()
    splits = {s: {n for n in names if held_out_split(n[:-4]) == s} for s in ("train", "validation", "test")}
    assert {s: len(n) for s, n in splits.items()} == {"train": 87, "validation": 9, "test": 11}
    assert "household/vacuum_cleaner.ogg" in names and not [
        n for n in names if "_desc" in n or n.startswith("symbols/")
    ]


def test_the_shipped_set_holds_voices_out():
    spec = SPOKEN_DIGITS_NOISY_SET
    voices = [set(v) for v in spec.flite_voices.values()]
    assert not (voices[0] & voices[1] or voices[0] & voices[2] or voices[1] & voices[2])
    assert spec.flite_size() == 10 * (2 * (6 * 5 + 6) + 6 * 5 + 2 * 6 * 5) == 1620
    assert spec.espeak.size == 9520


def test_mixing_hits_the_snr_and_scales_a_clipping_mix_as_a_whole():
    rng = np.random.default_rng(1)
    speech = torch.from_numpy(np.sin(np.linspace(0, 300, 8000)) * 0.5).float()
    noise = torch.from_numpy(rng.standard_normal(8000)).float()
    for snr in (0.0, 7.5, 20.0):
        mixed = mix(speech, noise, snr)
        assert measured_snr(mixed, speech, noise) == pytest.approx(snr, abs=0.01)
    loud = mix(speech * 1.9, noise, 0.0)  # would peak near 4
    assert float(loud.abs().max()) == pytest.approx(0.99)
    assert measured_snr(loud, speech, noise) == pytest.approx(0.0, abs=0.01)


def measured_snr(mixed: torch.Tensor, speech: torch.Tensor, noise: torch.Tensor) -> float:
    """The SNR of ``mixed = a * speech + b * noise`` (a, b solved by least squares), in dB."""
    basis = torch.stack([speech, noise], dim=1).double()
    (a, b), *_ = np.linalg.lstsq(basis.numpy(), mixed.double().numpy(), rcond=None)
    power = lambda x: float(x.double().pow(2).mean())  # noqa: E731
    return 10 * np.log10(a**2 * power(speech) / (b**2 * power(noise)))


def test_a_missing_flite_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(noisy_digits.shutil, "which", lambda name: None)
    with pytest.raises(
        DataError, match=r"generated with the speech synthesiser flite.*apt-get install flite"
    ):
        read_noisy_digits(TINY, cache=tmp_path)


def test_missing_noise_recordings_name_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(noisy_digits, "find_flite", lambda name: ("flite", "flite-test"))
    (tmp_path / "stamps" / "animals").mkdir(parents=True)
    for stamps in (tmp_path / "stamps", tmp_path / "nowhere"):
        with pytest.raises(
            DataError, match=r"sound effects of Tux Paint.*apt-get install tuxpaint-stamps-default"
        ):
            read_noisy_digits(TINY, cache=tmp_path, stamps=stamps)


@needs_flite
def test_generates_held_out_voices_and_noises_at_the_recorded_snr(stamps, tmp_path, capsys, monkeypatch):
    folder, noises = stamps
    splits = read_noisy_digits(TINY, cache=tmp_path / "a", stamps=folder)
    assert "generating 16 clips with flite-" in capsys.readouterr().err
    assert {s: len(r) for s, r in splits.items()} == {"train": 8, "validation": 4, "test": 4}
    assert splits["train"].columns == ["audio", "label", "word", "generator", "voice", "snr_db", "noise"]
    assert splits["train"].where == "builtin:spoken-digits-noisy"
    for split, records in splits.items():
        assert set(records.column("voice")) == set(TINY.flite_voices[split])  # no voice in two splits
        assert set(records.column("noise")) <= set(noises[split])  # nor a noise file
    assert {soundfile.info(p).samplerate for p in splits["validation"].column("audio")} == {16000}
    # every clip has the SNR clips.json records, measured in the WAV against its speech and noise
    (cached,) = (tmp_path / "a" / "spoken-digits-noisy").iterdir()
    mixer = noisy_digits._Mixer(TINY, shutil.which("flite"), {}, None)
    for clip in json.loads((cached / "clips.json").read_text())["clips"]:
        assert 0.0 <= clip["snr_db"] <= 20.0
        mixed = load_audio(cached / clip["file"], "test", 16000)
        speech = mixer.speech(clip, tmp_path / "clean.wav")
        noise = noise_stretch(
            load_audio(folder / clip["noise"], "noise", 16000), clip["noise_start"], len(speech)
        )
        assert measured_snr(mixed, speech, noise) == pytest.approx(clip["snr_db"], abs=0.1)
    # the same seed writes the same bytes; read back without running flite again
    again = read_noisy_digits(TINY, cache=tmp_path / "b", stamps=folder, progress=False)
    for first, second in zip(splits["test"].column("audio"), again["test"].column("audio"), strict=True):
        assert Path(first).read_bytes() == Path(second).read_bytes()
    monkeypatch.setattr(noisy_digits.subprocess, "run", _must_not_synthesise)
    assert (
        read_noisy_digits(TINY, cache=tmp_path / "a", stamps=folder)["test"].fingerprint
        == splits["test"].fingerprint
    )


@needs_flite
def test_an_unknown_flite_voice_is_refused_not_spoken_by_the_default_voice(stamps, tmp_path):
    odd = NoisyDigits(**{**TINY.__dict__, "flite_voices": {**TINY.flite_voices, "test": ("slt", "nobody")}})
    with pytest.raises(DataError, match=r"flite has no voice nobody \('.*flite -lv' lists awb, .*slt\)"):
        read_noisy_digits(odd, cache=tmp_path, stamps=stamps[0])


def _must_not_synthesise(command, **kwargs):
    if "--version" in command or "-lv" in command:  # the cache key; the voice check
        return REAL_RUN(command, **kwargs)
    raise AssertionError(f"a synthesiser ran again: {command}")


@needs_flite
@needs_espeak
def test_the_shipped_recipe_trains_one_step_on_a_tiny_slice_of_both_synthesisers(
    stamps, tmp_path, monkeypatch
):
    folder, _ = stamps
    spec = NoisyDigits(**{**TINY.__dict__, "espeak": TINY_ESPEAK})
    splits = read_noisy_digits(spec, cache=tmp_path, stamps=folder, progress=False)
    assert {s: set(r.column("generator")) for s, r in splits.items()} == {
        s: {"espeak-ng", "flite"} for s in ("train", "validation", "test")
    }
    assert set(splits["test"].column("voice")) == {"slt", "en-us+f3"}
    tiny = builtin.Builtin(
        lambda: read_noisy_digits(spec, cache=tmp_path, stamps=folder, progress=False), "tiny"
    )
    monkeypatch.setitem(builtin.BUILTINS, "spoken-digits-noisy", tiny)
    run = bigmodel.train(
        "spoken-digits-noisy-cnn", output=tmp_path / "runs", progress=False, **{"train.max_steps": 1}
    )
    assert run.metrics["train"]["steps"] == 1 and set(run.metrics) >= {"validation", "test"}
