"""Audio decoding, resampling (parity with librosa/scipy), folders and manifests, and the augmentations:
every bad clip is refused naming it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile
import torch

from bigmodel.data.audio import (
    decode_audio,
    load_audio,
    read_audio_folder,
    read_audio_manifest,
    read_audio_source,
    resample,
    wav_shortfall,
)
from bigmodel.data.audio_transforms import add_noise, fit_length, spec_augment, speed_perturb, time_shift
from bigmodel.errors import DataError

librosa = pytest.importorskip("librosa", reason="librosa is the reference (test extra)")
scipy_signal = pytest.importorskip("scipy.signal")


def voiced(seconds=0.5, rate=22050, f0=140.0, seed=0) -> np.ndarray:
    """A speech-like clip: a gliding harmonic tone (formant-shaped) with breath noise, peak ~0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = f0 * (1 + 0.2 * t / seconds)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wave = sum(np.sin(k * phase) / k * np.exp(-(((k * f0 - 700) / 900) ** 2)) for k in range(1, 30))
    wave = wave * np.hanning(len(t)) + 0.01 * rng.standard_normal(len(t))
    return (0.5 * wave / np.abs(wave).max()).astype(np.float64)


def wav_bytes(wave, rate, subtype="PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


# --- decoding ---------------------------------------------------------------------------------------


def test_paths_bytes_arrays_and_records_decode_to_the_same_mono_clip(tmp_path):
    wave = voiced(rate=16000)
    path = tmp_path / "clip.wav"
    soundfile.write(path, wave, 16000, subtype="PCM_16")
    expected, _ = soundfile.read(path, dtype="float32")
    by_path = load_audio(path, "x", 16000)
    assert by_path.dtype == torch.float32 and torch.equal(by_path, torch.from_numpy(expected))
    assert torch.equal(load_audio(str(path), "x", 16000), by_path)
    assert torch.equal(load_audio(path.read_bytes(), "x", 16000), by_path)
    int16, _ = soundfile.read(path, dtype="int16")
    assert torch.equal(load_audio(int16, "x", 16000), by_path)  # PCM arrays scaled as soundfile scales
    assert torch.equal(load_audio({"array": int16, "sampling_rate": 16000}, "x", 16000), by_path)
    assert torch.equal(load_audio({"bytes": path.read_bytes(), "path": None}, "x", 16000), by_path)
    # stereo files and (T, C) / (C, T) arrays are averaged to mono
    stereo = np.stack([wave, 0.5 * wave], axis=1)
    soundfile.write(tmp_path / "stereo.flac", stereo, 16000)
    mono = load_audio(tmp_path / "stereo.flac", "x", 16000)
    assert mono.shape == (8000,) and torch.allclose(mono, torch.from_numpy(0.75 * wave).float(), atol=1e-4)
    assert torch.allclose(load_audio(stereo.T, "x", 16000), torch.from_numpy(0.75 * wave).float(), atol=1e-6)


def test_another_sample_rate_is_resampled_or_refused_by_name(tmp_path):
    path = tmp_path / "eight.wav"
    soundfile.write(path, voiced(rate=8000), 8000, subtype="FLOAT")
    wave, rate = decode_audio(path, "x")
    assert rate == 8000 and wave.shape == (4000,)
    up = load_audio(path, "x", 16000)
    assert up.shape == (8000,)
    assert torch.allclose(up, resample(wave, 8000, 16000))
    refused = r"row 3 \('.*eight.wav'\): the clip is sampled at 8000 Hz; the model reads 16000 Hz and"
    with pytest.raises(DataError, match=refused):
        load_audio(path, "row 3", 16000, resample_other_rates=False)
    with pytest.raises(DataError, match="'sampling_rate' must be a positive whole number"):
        load_audio({"array": [0.1, 0.2], "sampling_rate": 8000.5}, "x", 16000)


def test_bad_clips_are_refused_naming_the_problem(tmp_path):
    good = wav_bytes(voiced(rate=16000), 16000)
    (tmp_path / "notes.wav").write_text("hello, I am not a recording")
    with pytest.raises(
        DataError, match=r"row 3 \('.*notes.wav'\): not audio soundfile can decode \(starts with text"
    ):
        load_audio(tmp_path / "notes.wav", "row 3", 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.wav.*the audio file is empty \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav", "x", 16000)
    with pytest.raises(DataError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav", "x", 16000)
    with pytest.raises(DataError, match=r"truncated: its header promises 8,000 more bytes"):
        load_audio(good[:-8000], "x", 16000)
    header_only = wav_bytes(np.zeros(0), 16000)
    with pytest.raises(DataError, match="the clip is empty"):
        load_audio(header_only, "x", 16000)
    nan = voiced(rate=16000)
    nan[100] = np.nan
    with pytest.raises(DataError, match="NaN or inf"):
        load_audio(wav_bytes(nan, 16000, "FLOAT"), "x", 16000)
    with pytest.raises(DataError, match="NaN or inf"):
        load_audio(nan, "x", 16000)
    with pytest.raises(DataError, match=r"shape \(2, 3, 4\) is not a clip"):
        load_audio(np.zeros((2, 3, 4)), "x", 16000)
    with pytest.raises(DataError, match="the clip is empty"):
        load_audio(np.zeros(0, np.float32), "x", 16000)
    with pytest.raises(DataError, match="must be numbers; found dtype <U1"):
        load_audio(np.array(["a", "b"]), "x", 16000)
    with pytest.raises(DataError, match="int is not audio"):
        load_audio(3, "x", 16000)
    with pytest.raises(DataError, match="an audio record needs 'array' and 'sampling_rate'"):
        load_audio({"samples": [1.0]}, "x", 16000)
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
    with pytest.raises(DataError, match="not audio soundfile can decode .starts with bytes 89 50 4e 47"):
        load_audio(png, "x", 16000)


def test_the_wav_shortfall_reads_the_data_chunk_and_trusts_open_sizes():
    data = wav_bytes(np.zeros(1000), 16000)  # 2,000 bytes of samples
    assert wav_shortfall(data) == 0 and wav_shortfall(data[:-500]) == 500
    streamed = bytearray(data[:-500])
    pos = bytes(streamed).index(b"data")
    streamed[pos + 4 : pos + 8] = (0xFFFFFFFF).to_bytes(4, "little")  # a streaming writer's open size
    assert wav_shortfall(bytes(streamed)) == 0
    assert wav_shortfall(b"fLaC" + b"\0" * 40) == 0  # not a WAV: soundfile judges it


# --- resampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig, new", [(22050, 16000), (8000, 16000), (48000, 16000), (16000, 44100)])
def test_resampling_equals_librosa_polyphase(orig, new):
    wave = voiced(seconds=0.3, rate=orig)
    ref = librosa.resample(wave, orig_sr=orig, target_sr=new, res_type="polyphase")
    ours64 = resample(torch.from_numpy(wave), orig, new).numpy()
    ours32 = resample(torch.from_numpy(wave).float(), orig, new)
    assert ours64.shape == ref.shape and ours32.dtype == torch.float32
    peak = np.abs(ref).max()
    assert np.abs(ours64 - ref).max() / peak < 1e-12  # the same filter, to float64 rounding
    assert np.abs(ours32.numpy() - ref).max() / peak < 1e-6


def test_resampling_agrees_with_soxr_below_the_transition_band_and_keeps_batch_axes():
    rate = 22050
    sos = scipy_signal.butter(10, 6000, fs=rate, output="sos")
    wave = scipy_signal.sosfiltfilt(sos, voiced(seconds=0.6, rate=rate)).copy()
    ref = librosa.resample(wave, orig_sr=rate, target_sr=16000)  # soxr_hq, librosa's default
    ours = resample(torch.from_numpy(wave), rate, 16000).numpy()
    assert ours.shape == ref.shape and np.abs(ours - ref).max() / np.abs(ref).max() < 2e-3
    batch = torch.from_numpy(np.stack([wave, -wave])).reshape(2, 1, -1)
    out = resample(batch, rate, 16000)
    assert out.shape == (2, 1, len(ref)) and torch.allclose(out[1, 0], -out[0, 0])
    same = torch.randn(10)
    assert resample(same, 16000, 16000) is same
    with pytest.raises(DataError, match="sample rates must be positive"):
        resample(same, 0, 16000)


# --- folders and manifests --------------------------------------------------------------------------


def write_class_folders(root, per_class=2, rate=16000):
    for k, label in enumerate(("no", "yes")):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            soundfile.write(root / label / f"{i}.wav", voiced(0.2, rate, f0=100 + 80 * k, seed=i), rate)
    (root / "yes" / "README.txt").write_text("not a clip")
    return root


def test_class_folders_split_folders_and_the_fingerprint(tmp_path):
    (records,) = read_audio_folder(write_class_folders(tmp_path / "words")).values()
    assert records.columns == ["audio", "label"] and len(records) == 4  # README.txt is not an example
    assert records.column("label") == ["no", "no", "yes", "yes"] and records[2]["audio"].endswith("yes/0.wav")
    for split in ("train", "test"):
        write_class_folders(tmp_path / "splits" / split)
    splits = read_audio_source(tmp_path / "splits")
    assert set(splits) == {"train", "test"}
    first = splits["train"].fingerprint
    soundfile.write(tmp_path / "splits" / "train" / "no" / "0.wav", np.zeros(100), 16000)
    assert read_audio_folder(tmp_path / "splits")["train"].fingerprint != first  # content, not names
    with pytest.raises(DataError, match="no class folders"):
        read_audio_folder(tmp_path / "words" / "yes")
    (tmp_path / "onlytest" / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"split folders \['test'\] but no train/ folder"):
        read_audio_folder(tmp_path / "onlytest")


def test_manifests_resolve_paths_relative_to_themselves(tmp_path):
    write_class_folders(tmp_path / "clips")
    (tmp_path / "lists").mkdir()
    csv = tmp_path / "lists" / "train.csv"
    csv.write_text("path,label,speaker\n../clips/no/0.wav,no,a\n../clips/yes/1.wav,yes,b\n")
    records = read_audio_manifest(csv)
    assert records.columns == ["audio", "label", "speaker"]
    assert records[1] == {
        "audio": str(tmp_path / "lists" / "../clips/yes/1.wav"),
        "label": "yes",
        "speaker": "b",
    }
    assert load_audio(records[1]["audio"], "x", 16000).shape == (3200,)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"file": str(tmp_path / "clips/no/1.wav"), "label": "no"}) + "\n"
                             for _ in range(2)))  # fmt: skip
    (records,) = read_audio_source(jsonl).values()
    assert records.column("audio") == [str(tmp_path / "clips/no/1.wav")] * 2
    (tmp_path / "bad.csv").write_text("clip,label\nclips/no/0.wav,no\n")
    with pytest.raises(
        DataError, match="a manifest needs a column holding each clip's path, named one of audio"
    ):
        read_audio_manifest(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("audio,label\nclips/no/0.wav,no\nclips/no/9.wav,no\n")
    with pytest.raises(
        DataError, match=r"gone.csv: row 2, column 'audio': audio file not found: .*clips/no/9.wav"
    ):
        read_audio_manifest(tmp_path / "gone.csv")
    with pytest.raises(DataError, match="no such folder or manifest"):
        read_audio_source(tmp_path / "nothing")


# --- augmentation -----------------------------------------------------------------------------------


def test_augmentations_draw_only_from_the_example_rng():
    wave = torch.from_numpy(voiced(0.5, 16000)).float()
    for augment in (
        lambda w, r: time_shift(w, 1600, r),
        lambda w, r: add_noise(w, (5.0, 20.0), r),
        lambda w, r: speed_perturb(w, (0.8, 1.2), 16000, r),
        lambda w, r: fit_length(w, 6000, r),
    ):
        a, b = augment(wave, np.random.default_rng(3)), augment(wave, np.random.default_rng(3))
        c = augment(wave, np.random.default_rng(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_each_augmentation_does_what_it_says():
    wave = torch.from_numpy(voiced(0.5, 16000)).float()
    rng = np.random.default_rng(0)
    shifted = time_shift(wave, 800, rng)
    offset = int(np.argmax(np.correlate(shifted.numpy(), wave.numpy()[2000:6000], "valid"))) - 2000
    assert (
        shifted.shape == wave.shape
        and abs(offset) <= 800
        and torch.equal(shifted[2000 + offset : 6000 + offset], wave[2000:6000])
    )
    noisy = add_noise(wave, (10.0, 10.0), rng)
    snr = 10 * torch.log10(wave.double().pow(2).mean() / (noisy - wave).double().pow(2).mean())
    assert abs(float(snr) - 10.0) < 1e-3
    hum = torch.sin(torch.arange(100) * 0.3)  # a short recording, repeated under the clip
    with_hum = add_noise(wave, (0.0, 0.0), rng, hum)
    assert abs(float(10 * torch.log10(wave.pow(2).mean() / (with_hum - wave).pow(2).mean()))) < 1e-2
    assert torch.equal(add_noise(torch.zeros(10), (0, 0), rng), torch.zeros(10))  # silence has no SNR
    for _ in range(5):
        fast = speed_perturb(wave, (1.2, 1.2), 16000, rng)
        assert fast.shape == (int(np.ceil(8000 / 1.2)),)
    assert torch.equal(fit_length(wave, 6000), wave[1000:7000])  # centred without an rng
    padded = fit_length(wave, 10000)
    assert (
        padded.shape == (10000,) and torch.equal(padded[1000:9000], wave) and padded[:1000].abs().sum() == 0
    )
    x = torch.ones(40, 101)
    masked = spec_augment(
        x, np.random.default_rng(1), freq_masks=2, freq_width=5, time_masks=2, time_width=10
    )
    assert torch.equal(x, torch.ones(40, 101))  # a copy
    rows_hit, frames_hit = (masked == 0).all(dim=1).sum(), (masked == 0).all(dim=0).sum()
    assert 0 < rows_hit <= 10 and 0 < frames_hit <= 20 and (masked == 0).sum() < 40 * 101 / 2
