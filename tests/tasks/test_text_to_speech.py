"""text_to_speech: the forward-sum loss by hand and against every path, the vocabulary and bad texts,
a loss that falls, and a tiny run end to end — trained, judged by a speech_recognition run, predicting
a WAV from the command line and over HTTP."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil

import numpy as np
import pytest
import soundfile
import torch

import bigmodel
from bigmodel.data.audio import Waveform
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.models.registry import get_family
from bigmodel.recipe import load_recipe
from bigmodel.tasks import create_task
from bigmodel.tasks.text_to_speech import forward_sum_loss

RATE = 16000
TONES = {"a": 440.0, "b": 880.0, "c": 1320.0, " ": 0.0}  # one tone per character
TINY_MODEL = {"arch": "fastspeech", "embed_dim": 16, "num_heads": 2, "ffn_dim": 32, "num_layers": 1,
              "num_decoder_layers": 1, "duration_channels": 8, "aligner_dim": 8, "dropout": 0.0}  # fmt: skip


def spoken(text: str, seconds_per_char: float = 0.06) -> np.ndarray:
    """Each character as a tone of its own (silence for a space): a clip whose frames a monotonic
    alignment can find."""
    n = round(seconds_per_char * RATE)
    t = np.arange(n) / RATE
    return np.concatenate([0.3 * np.sin(2 * np.pi * TONES.get(c, 220.0) * t) for c in text]).astype(
        np.float32
    )


TEXTS = ["ab", "ba", "abc", "cab", "a b", "bca", "cc", "ab c", "b", "acb", "ca", "bb a"]


def records(texts=TEXTS) -> ColumnRecords:
    return ColumnRecords({"text": list(texts), "audio": [spoken(t) for t in texts]}, "tiny")


def fitted_task(**options):
    recipe = load_recipe({"name": "tts", "data": {"source": "csv:unused.csv"},
                          "task": {"name": "text_to_speech", **options}, "model": TINY_MODEL})  # fmt: skip
    task = create_task(recipe)
    task.check(recipe, get_family("fastspeech"))
    task.fit(records())
    return task, recipe


# --- the forward-sum loss ------------------------------------------------------------------------------


def test_forward_sum_loss_by_hand_on_two_symbols_and_three_frames():
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])  # p[t, n]: frame t on symbol n
    # the two monotonic paths: frames (0, 0, 1) and (0, 1, 1)
    total = 0.9 * 0.6 * 0.8 + 0.9 * 0.4 * 0.8
    loss = forward_sum_loss(p.log()[None], torch.tensor([2]), torch.tensor([3]))
    torch.testing.assert_close(loss, torch.tensor([-math.log(total) / 2]))


def _all_paths(T: int, N: int):
    import itertools

    for moves in itertools.combinations(range(1, T), N - 1):
        yield [sum(t >= m for m in moves) for t in range(T)]


def test_forward_sum_loss_equals_the_sum_over_all_paths_with_padding():
    torch.manual_seed(0)
    shapes = [(6, 3), (5, 2), (4, 4), (3, 1)]  # (frames, symbols), padded to (6, 4)
    log_p = torch.randn(len(shapes), 6, 4).log_softmax(-1)
    loss = forward_sum_loss(log_p, torch.tensor([n for _, n in shapes]), torch.tensor([t for t, _ in shapes]))
    for b, (T, N) in enumerate(shapes):
        paths = [sum(float(log_p[b, t, n]) for t, n in enumerate(path)) for path in _all_paths(T, N)]
        expected = -torch.logsumexp(torch.tensor(paths, dtype=torch.float64), 0) / N
        assert abs(float(loss[b]) - float(expected)) < 1e-4, b


def test_forward_sum_loss_has_finite_gradients_with_padding():
    log_p = torch.randn(2, 5, 3).log_softmax(-1).requires_grad_()
    forward_sum_loss(log_p, torch.tensor([3, 1]), torch.tensor([5, 2])).sum().backward()
    assert torch.isfinite(log_p.grad).all()


# --- fitting and bad input -------------------------------------------------------------------------------


def test_fit_spells_with_the_train_characters_and_measures_the_mels():
    task, _ = fitted_task()
    assert task.vocabulary == [" ", "a", "b", "c"]
    fixed, _ = fitted_task(symbols="abcd ")  # a fixed symbol set: held-out texts may use "d"
    assert fixed.vocabulary == [" ", "a", "b", "c", "d"] and fixed.parse("dab")[0]["text"] == "dab"
    assert len(task.audio_spec["mean"]) == 80 and min(task.audio_spec["std"]) > 0
    item = task.encode({"text": "Ab!", "audio": spoken("ab")}, None)  # basic normalisation: lower, no "!"
    assert item["ids"].tolist() == [2, 3] and item["mel"].shape == (12, 80)
    # a data set's own "speed" column (builtin:digit-phrases-tts: 160 words a minute) is no speaking rate
    assert task.encode({"text": "ab", "audio": spoken("ab"), "speed": 160}, None)["speed"] == 1.0


def test_bad_texts_are_refused_naming_the_character_the_field_and_the_limit():
    task, _ = fitted_task(max_text_length=6)
    with pytest.raises(DataError, match=r"'d'.*Allowed characters: ' abc'"):
        task.parse("abd")
    with pytest.raises(DataError, match="inputs, 'text': the text is empty"):
        task.parse("   ")
    with pytest.raises(DataError, match="9 characters; at most 6 .task.max_text_length"):
        task.parse("abcabcabc")
    with pytest.raises(DataError, match="row 2.*'speaking_rate' must be a number in"):
        task.parse([{"text": "ab"}, {"text": "ab", "speaking_rate": 9}])
    with pytest.raises(DataError, match="unknown field 'voice'"):
        task.parse({"text": "ab", "voice": "x"})
    with pytest.raises(DataError, match=r"row 3.*'z'"):
        task.validate(records(["ab", "ba", "az"]), "test")
    with pytest.raises(DataError, match="gives 1 frames for a text of 3 characters"):
        task.validate(ColumnRecords({"text": ["abc"], "audio": [spoken("a", 0.012)]}, "short"), "test")


def test_the_recipe_cannot_set_what_the_task_decides():
    recipe = load_recipe({"name": "tts", "data": {"source": "csv:unused.csv"},
                          "task": {"name": "text_to_speech"},
                          "model": {**TINY_MODEL, "n_mels": 40}})  # fmt: skip
    with pytest.raises(RecipeError, match="model.n_mels: set by the task"):
        create_task(recipe).check(recipe, get_family("fastspeech"))
    recipe = load_recipe({"name": "tts", "data": {"source": "csv:unused.csv"},
                          "task": {"name": "text_to_speech"}, "model": {"arch": "cnn"}})  # fmt: skip
    with pytest.raises(RecipeError, match="model.arch: task text_to_speech needs an acoustic model"):
        create_task(recipe).check(recipe, get_family("cnn"))


def test_the_loss_falls_on_a_tiny_batch():
    task, recipe = fitted_task()
    torch.manual_seed(0)
    model = task.build_model(get_family("fastspeech"), recipe.model.options(), None)
    batch = task.collate([task.encode(r, None) for r in records()])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = task.loss(model, batch) / batch["num_items"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    terms = task.loss_terms(task.forward(model, batch), batch)
    assert set(terms) == {"mel_loss", "duration_loss", "alignment_loss", "binarization_loss"}


# --- a tiny run end to end -----------------------------------------------------------------------------


def write_manifest(folder, texts) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(texts):
        path = folder / f"{i}.wav"
        soundfile.write(path, spoken(text), RATE)
        rows.append({"audio": str(path), "text": text})
    manifest = folder / "clips.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"audio:{manifest}"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A speech_recognition run on the tones, and a text_to_speech run judged by it."""
    root = tmp_path_factory.mktemp("tts")
    train = write_manifest(root / "train", TEXTS * 3)
    held_out = write_manifest(root / "test", ["ab", "bac", "c a"])
    recogniser = bigmodel.train(
        {"name": "tones-ctc", "seed": 0, "data": {"source": train, "validation": held_out, "test": held_out},
         "task": {"name": "speech_recognition", "subsample": 2, "conv_channels": 4,
                  "features": {"n_mels": 16}},
         "model": {"arch": "rnn", "cell": "gru", "hidden_size": 16, "num_layers": 1, "bidirectional": True},
         "train": {"epochs": 1, "batch_size": 12, "max_steps": 3}},
        output=root / "runs", progress=False,
    )  # fmt: skip

    def tts(**task):
        return bigmodel.train(
            {"name": "tones-tts", "seed": 0,
             "data": {"source": train, "validation": held_out, "test": held_out},
             "task": {"name": "text_to_speech", **task}, "model": TINY_MODEL,
             "train": {"epochs": 1, "batch_size": 12, "max_steps": 4}},
            output=root / "runs", progress=False,
        )  # fmt: skip

    return recogniser, tts


def test_a_judged_run_reports_round_trip_error_rates_and_mel_cepstral_distance(tiny_runs):
    pytest.importorskip("bigmodel.evaluation.speech_quality")
    recogniser, train = tiny_runs
    tts = train(recogniser=str(recogniser.path), judge_samples=2)
    test = tts.metrics["test"]
    assert test["judged"] == 2 and 0 <= test["cer"] and 0 <= test["wer"] and test["mcd"] > 0
    assert test["mel_loss"] > 0 and test["utterances"] == 3
    assert "wer" not in tts.metrics["validation"]  # judged on task.judge_splits only


def test_predict_returns_a_waveform_written_as_wav_and_sent_as_base64(tiny_runs, tmp_path):
    from pathlib import Path

    from bigmodel.cli import _save_images
    from bigmodel.serve.codec import to_jsonable

    _, train = tiny_runs
    predictor = bigmodel.load(train().path)
    (row,) = predictor.predict(Path("a b"))  # as the command line hands "a b" over
    assert row["text"] == "a b" and isinstance(row["audio"], Waveform) and row["audio"].sample_rate == RATE
    fast, slow = predictor.predict(
        [{"text": "abc", "speaking_rate": 2}, {"text": "abc", "speaking_rate": 0.5}]
    )
    assert fast["seconds"] < slow["seconds"]
    (saved,) = _save_images([row], tmp_path / "out")
    wave, rate = soundfile.read(saved["audio"])
    assert rate == RATE and len(wave) == len(row["audio"].samples)
    url = to_jsonable(row)["audio"]
    assert url.startswith("data:audio/wav;base64,")
    decoded, _ = soundfile.read(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    np.testing.assert_allclose(decoded, wave)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")
def test_the_shipped_recipe_trains_one_step_on_a_tiny_generated_set(tmp_path, monkeypatch):
    """recipes/digits-tts.yaml on 6 phrases of builtin:digit-phrases-tts's voice (generating the whole set
    takes a minute); registered the way recipe/schema.py lists built-ins, if it does not yet."""
    from bigmodel.data import builtin
    from bigmodel.data.digit_phrases import DigitPhrases, read_phrase_set
    from bigmodel.recipe import schema

    if "digit-phrases-tts" not in schema.BUILTIN_DATASETS:
        monkeypatch.setattr(schema, "BUILTIN_DATASETS", (*schema.BUILTIN_DATASETS, "digit-phrases-tts"))
    tiny = DigitPhrases(
        name="digit-phrases-tts", phrases={"train": 3, "validation": 1, "test": 2}, max_words=3
    )
    reader = builtin.Builtin(lambda: read_phrase_set(tiny, cache=tmp_path, progress=False), "tiny")
    monkeypatch.setitem(builtin.BUILTINS, "digit-phrases-tts", reader)
    run = bigmodel.train("digits-tts", output=tmp_path / "runs", progress=False, **{"train.max_steps": 1})
    assert run.metrics["train"]["steps"] == 1 and run.metrics["test"]["utterances"] == 2
    (prediction,) = bigmodel.load(run.path).predict("one two")
    assert isinstance(prediction["audio"], Waveform) and prediction["audio"].sample_rate == 16000
