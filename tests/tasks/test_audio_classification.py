"""Audio classification: trains on WAV clips named by a manifest, evaluates and predicts from the run
directory (files, bytes, arrays, other sample rates, manifests, the CLI); augmentation is reproducible;
bad clips and recipes are refused naming them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

import bigmodel
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.recipe import load_recipe
from bigmodel.tasks import create_task

TASK = "bigmodel.tasks.audio_classification:AudioClassificationTask"


def tone(kind: str, rng: np.random.Generator, rate: int, seconds: float = 0.4) -> np.ndarray:
    """A 0.25 s harmonic tone, "low" (150-250 Hz) or "high" (700-1100 Hz), gliding a little, at a random
    time and loudness over a little noise."""
    n, length = int(seconds * rate), int(0.25 * rate)
    start = int(rng.integers(0, n - length))
    f0 = rng.uniform(150, 250) if kind == "low" else rng.uniform(700, 1100)
    glide = 1 + rng.uniform(-0.1, 0.1) * np.linspace(0, 1, length)
    phase = 2 * np.pi * f0 * np.arange(length) / rate * glide
    sound = (np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)) * np.hanning(length)
    wave = 0.01 * rng.standard_normal(n)
    wave[start : start + length] += sound * rng.uniform(0.2, 0.6)
    return wave


def write_clips(root, per_class=20, seed=0):
    """Class folders of WAVs (most at 16 kHz, every fifth at 22,050 Hz) and a CSV manifest of them."""
    rng = np.random.default_rng(seed)
    rows = ["audio,label"]
    for kind in ("high", "low"):
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            rate = 22050 if i % 5 == 4 else 16000
            path = root / kind / f"{i}.wav"
            soundfile.write(path, tone(kind, rng, rate), rate, subtype="PCM_16")
            rows.append(f"{path},{kind}")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    return root


def recipe(source, **task) -> dict:
    return {
        "name": "tones",
        "seed": 0,
        "data": {"source": source, "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": TASK, "clip_seconds": 0.5, "top_k": 2,
                 "features": {"n_mels": 24, "window_ms": 25, "hop_ms": 10}, **task},
        "model": {"arch": "cnn", "channels": [8, 16]},
        "train": {"epochs": 8, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 1e-2}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audio")
    folder = write_clips(tmp / "tones")
    augment = {"time_shift": 0.05, "noise_snr": [20, 40], "noise_probability": 0.5}
    spec = recipe(f"csv:{folder / 'clips.csv'}", augment=augment)
    run = bigmodel.train(spec, output=tmp / "runs", progress=False)
    return run, folder


def test_learns_from_a_manifest_and_predicts_files_bytes_arrays_and_other_rates(trained, tmp_path):
    run, folder = trained
    assert run.metrics["test"]["accuracy"] == 1.0
    state = json.loads((run.path / "task.json").read_text())
    assert state["class_names"] == ["high", "low"]
    audio = state["audio"]
    assert audio["sample_rate"] == 16000 and audio["clip_samples"] == 8000 and audio["frames"] == 51
    assert (
        audio["features"]["n_mels"] == 24 and audio["features"]["n_fft"] == 512 and len(audio["mean"]) == 24
    )
    predictor = bigmodel.load(run.path)
    path = folder / "high" / "3.wav"
    (by_path,) = predictor.predict(path)
    assert by_path["label"] == "high" and by_path["top_k"][0]["label"] == "high"
    assert set(by_path["probabilities"]) == {"high", "low"}
    assert sum(by_path["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    (by_bytes,) = predictor.predict(path.read_bytes())
    wave, rate = soundfile.read(path, dtype="float32")
    (by_array,) = predictor.predict(wave)
    (by_record,) = predictor.predict({"audio": {"array": wave, "sampling_rate": rate}})
    assert by_bytes == by_path == by_array == by_record
    # the same clip stored at 8 kHz is resampled to the model's 16 kHz: same answer
    soundfile.write(tmp_path / "high-8k.wav", soundfile.read(folder / "high" / "2.wav")[0][::2], 8000)
    assert predictor.predict(tmp_path / "high-8k.wav")[0]["label"] == "high"
    many = predictor.predict([folder / "low" / "1.wav", str(path), wave])
    assert [p["label"] for p in many] == ["low", "high", "high"]
    assert [p["label"] for p in predictor.predict(np.stack([wave, wave]))] == ["high", "high"]
    # a manifest whose paths are relative to it
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ask.jsonl").write_text(json.dumps({"path": "../high-8k.wav"}) + "\n")
    assert predictor.predict(tmp_path / "lists" / "ask.jsonl")[0]["label"] == "high"


def test_bad_prediction_inputs_are_refused_by_name(trained, tmp_path):
    run, folder = trained
    predictor = bigmodel.load(run.path)
    text = tmp_path / "notes.wav"
    text.write_text("hello, I am not a recording")
    with pytest.raises(DataError, match=r"notes.wav.*not audio soundfile can decode.*starts with text"):
        predictor.predict(text)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0), 16000)
    with pytest.raises(DataError, match=r"empty.wav.*the clip is empty"):
        predictor.predict(empty)
    cut = tmp_path / "cut.wav"
    cut.write_bytes((folder / "high" / "1.wav").read_bytes()[:3000])
    with pytest.raises(DataError, match=r"cut.wav.*truncated"):
        predictor.predict(cut)
    with pytest.raises(DataError, match="audio file not found"):
        predictor.predict(tmp_path / "missing.wav")
    with pytest.raises(DataError, match="NaN or inf"):
        predictor.predict(np.full(100, np.nan, np.float32))
    with pytest.raises(DataError, match="the clip is empty"):
        predictor.predict(np.zeros(0, np.float32))
    with pytest.raises(DataError, match=r"inputs: clip 2: an audio array of shape \(2, 3, 4\)"):
        predictor.predict([np.zeros(100), np.zeros((2, 3, 4))])
    with pytest.raises(DataError, match="neither an audio file"):
        predictor.predict(str(tmp_path / "scores.txt"))
    with pytest.raises(DataError, match=r"inputs: row 1: no 'audio'"):
        predictor.predict({"clip": str(folder / "high" / "1.wav")})


def test_a_clip_at_another_rate_is_refused_when_resampling_is_off(tmp_path):
    folder = write_clips(tmp_path / "tones", per_class=5)  # every fifth clip is at 22,050 Hz
    with pytest.raises(
        DataError, match=r"row \d+.*4.wav'\): the clip is sampled at 22050 Hz; the model reads 16000"
    ):
        bigmodel.train(recipe(f"csv:{folder / 'clips.csv'}", resample=False), output=tmp_path / "runs",
                       progress=False)  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_a_damaged_training_clip_is_refused_before_the_run_starts(tmp_path):
    folder = write_clips(tmp_path / "tones", per_class=5)
    (folder / "high" / "2.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match=r"high/2.wav.*not audio soundfile can decode"):
        bigmodel.train(recipe(f"csv:{folder / 'clips.csv'}"), output=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_augmentation_comes_from_the_example_rng_and_never_in_evaluation(tmp_path):
    folder = write_clips(tmp_path / "tones", per_class=6)
    augment = {"speed": [0.9, 1.1], "time_shift": 0.05, "noise_snr": [10, 20], "freq_masks": 1,
               "time_masks": 1}  # fmt: skip
    task = create_task(load_recipe(recipe(f"csv:{folder / 'clips.csv'}", augment=augment)))
    (records,) = bigmodel.data.sources.load_source(f"csv:{folder / 'clips.csv'}").values()
    task.fit(records)
    example = records[0]
    a = task.encode(example, np.random.default_rng(7))["x"]
    b = task.encode(example, np.random.default_rng(7))["x"]
    c = task.encode(example, np.random.default_rng(8))["x"]
    plain = task.encode(example, None)["x"]
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == plain.shape == (1, 24, 51)
    assert torch.equal(plain, task.encode(example, None)["x"])
    # normalised per band with the train split's statistics
    stack = torch.cat([task.encode(r, None)["x"] for r in records])  # (N, 24, 51)
    assert stack.mean(dim=(0, 2)).abs().max() < 1e-3 and (stack.std(dim=(0, 2)) - 1).abs().max() < 0.01
    short = create_task(load_recipe(recipe(f"csv:{folder / 'clips.csv'}", clip_seconds=0.3)))
    short.fit(records)
    assert short.notes() == [
        "12 of 12 train clips measured are longer than task.clip_seconds (0.3 s) and are cropped (centred in "
        "evaluation)."
    ]
    assert short.encode(example, None)["x"].shape == (1, 24, 31)


def test_whole_clips_pad_per_batch_and_mfcc_and_noise_recordings(tmp_path):
    rng = np.random.default_rng(0)
    clips = [tone("high", rng, 16000, seconds) for seconds in (0.3, 0.45, 0.3, 0.6)]
    records = ColumnRecords({"audio": clips, "label": ["a", "b", "a", "b"]}, "arrays")
    soundfile.write(tmp_path / "hum.wav", 0.1 * np.sin(np.arange(4000) * 0.05), 16000)
    spec = recipe("csv:unused.csv", clip_seconds=None, features={"kind": "mfcc", "n_mfcc": 10, "n_mels": 24},
                  augment={"noise_snr": [5, 5], "noise": str(tmp_path / "hum.wav")})  # fmt: skip
    task = create_task(load_recipe(spec))
    task.fit(records)
    assert task.audio_spec["clip_samples"] is None and task.audio_spec["frames"] == 61
    items = [task.encode(records[i], np.random.default_rng(i)) for i in range(3)]
    batch = task.collate(items)
    assert batch["x"].shape == (3, 1, 10, 46) and batch["num_items"] == 3 and batch["y"].tolist() == [0, 1, 0]
    assert torch.equal(batch["x"][0, :, :, 31:], torch.zeros(1, 10, 15))  # padded with the mean
    raw = create_task(load_recipe({**spec, "task": {**spec["task"], "normalize": "none"}}))
    raw.fit(records)
    padded = raw.collate([raw.encode(records[i], None) for i in range(2)])["x"]  # (2, 1, 10, 46)
    assert torch.equal(
        padded[0, 0, :, 31:], torch.tensor(raw.audio_spec["pad"]).float()[:, None].expand(10, 15)
    )
    schema = task.input_schema()
    field = schema["properties"]["audio"]
    assert schema["required"] == ["audio"] and not schema["additionalProperties"]
    assert field["contentMediaType"] == "audio/wav" and field["x-bigmodel-kind"] == "audio"
    assert field["contentEncoding"] == "base64" and field["x-bigmodel-audio"]["sample_rate"] == 16000


def test_recipe_errors(tmp_path):
    source = "csv:clips.csv"
    spec = recipe(source)
    spec["model"] = {"arch": "gpt"}
    with pytest.raises(RecipeError, match="model.arch: task audio_classification reads each clip as a"):
        bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    spec = recipe(source)
    spec["model"]["input_shape"] = [1, 24, 51]
    with pytest.raises(RecipeError, match="model.input_shape: set by the task"):
        bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    with pytest.raises(RecipeError, match=r"task.features: need 0 <= fmin < fmax <= sample_rate / 2 = 4000"):
        bigmodel.train(recipe(source, sample_rate=8000, features={"fmax": 6000}), output=tmp_path / "runs",
                       progress=False)  # fmt: skip
    with pytest.raises(RecipeError, match=r"task.augment: .*speed must be \[low, high\]"):
        bigmodel.train(
            recipe(source, augment={"speed": [1.2, 1.1]}), output=tmp_path / "runs", progress=False
        )
    with pytest.raises(RecipeError, match="task.augment: .*noise needs noise_snr"):
        bigmodel.train(recipe(source, augment={"noise": "hum.wav"}), output=tmp_path / "runs", progress=False)


def test_cli_predict_prints_the_label_of_a_wav(trained, tmp_path):
    run, folder = trained
    clips = [str(folder / "low" / "2.wav"), str(folder / "high" / "5.wav")]
    result = subprocess.run([sys.executable, "-m", "bigmodel", "predict", str(run.path), *clips],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == ["low", "high"]
    (tmp_path / "bad.wav").write_text("not audio")
    command = [sys.executable, "-m", "bigmodel", "predict", str(run.path), str(tmp_path / "bad.wav")]
    bad = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (
        bad.returncode == 2
        and "not audio soundfile can decode" in bad.stderr
        and "Traceback" not in bad.stderr
    )
