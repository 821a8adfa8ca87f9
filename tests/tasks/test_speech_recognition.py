"""Speech recognition: CTC decoding (greedy, prefix beam search checked against brute force), CER/WER
equal to jiwer's, batching and the summed CTC loss, and a tiny model that learns to spell espeak-ng
words from a manifest, then transcribes WAV paths, bytes and arrays from its run directory."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess

import jiwer
import jsonschema
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

import bigmodel
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.recipe import load_recipe
from bigmodel.tasks import create_task
from bigmodel.tasks.speech_recognition import (
    CTCOutputs,
    SpeechMetric,
    edit_distance,
    greedy_decode,
    prefix_beam_search,
)

TASK = "bigmodel.tasks.speech_recognition:SpeechRecognitionTask"
WORDS = ("yes", "no", "stop", "go", "left", "right")
RATE = 8000


# --- decoding ----------------------------------------------------------------------------------------


def labelling_probabilities(probs: np.ndarray, blank: int = 0) -> dict[tuple[int, ...], float]:
    """Every labelling's total probability, summed over all T^C paths (brute force)."""
    T, C = probs.shape
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(C), repeat=T):
        merged = [c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])]
        p = float(np.prod([probs[t, c] for t, c in enumerate(path)]))
        totals[tuple(merged)] = totals.get(tuple(merged), 0.0) + p
    return totals


def test_greedy_merges_repeats_and_drops_blanks():
    ids = [0, 1, 1, 0, 1, 2, 2, 0, 0, 3]
    scores = torch.full((len(ids), 4), -5.0)
    scores[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    assert greedy_decode(scores) == [1, 1, 2, 3]


def test_beam_search_beats_greedy_where_many_paths_spell_the_same_text():
    # each frame: blank 0.6, "a" 0.4. Best path is blank-blank (0.36, text ""), but "a" has three paths
    # (a-a, a-blank, blank-a: 0.16 + 0.24 + 0.24 = 0.64).
    probs = np.array([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(np.log(probs)) == []
    assert prefix_beam_search(np.log(probs), beam_width=4) == [1]
    assert labelling_probabilities(probs)[(1,)] == pytest.approx(0.64)


@pytest.mark.parametrize("seed", range(6))
def test_a_wide_beam_finds_the_most_probable_labelling(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(3, 0.7), size=5)  # (T=5, C=3): 243 paths
    totals = labelling_probabilities(probs)
    best = max(totals, key=totals.get)
    assert tuple(prefix_beam_search(np.log(probs), beam_width=64)) == best
    greedy = tuple(greedy_decode(np.log(probs)))
    assert totals[best] >= totals[greedy]


def test_narrow_beam_of_one_prefix_still_decodes_a_confident_matrix():
    ids = [2, 2, 0, 1, 0, 1]
    scores = np.log(np.full((6, 3), 0.01))
    scores[np.arange(6), ids] = np.log(0.98)
    assert prefix_beam_search(scores, beam_width=1) == greedy_decode(scores) == [2, 1, 1]


# --- metrics -----------------------------------------------------------------------------------------

REFERENCES = ["please enter your password", "goodbye", "press one for sales", "the pound key", "zero"]
HYPOTHESES = ["pleas enter you password", "good bye", "press one four sales please", "", "zero"]


def test_edit_distance_of_strings_and_word_lists():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("a b c".split(), "a x c d".split()) == 2


def test_streamed_cer_and_wer_equal_jiwer_and_merge_by_addition():
    whole, first, second = SpeechMetric(None), SpeechMetric(None), SpeechMetric(None)
    for metric in (whole, first, second):
        metric.add("loss", torch.tensor(0.0))
        metric.add("items", torch.tensor(1))
    whole.add_texts(HYPOTHESES, REFERENCES)
    first.add_texts(HYPOTHESES[:2], REFERENCES[:2])
    second.add_texts(HYPOTHESES[2:], REFERENCES[2:])
    merged = SpeechMetric(None)
    merged.sums = {k: first.sums[k] + second.sums[k] for k in first.sums}
    expected_cer = jiwer.cer(REFERENCES, HYPOTHESES)
    expected_wer = jiwer.wer(REFERENCES, HYPOTHESES)
    for metric in (whole, merged):
        out = metric.compute()
        assert out["cer"] == pytest.approx(expected_cer, abs=1e-12)
        assert out["wer"] == pytest.approx(expected_wer, abs=1e-12)
        assert out["exact_match"] == pytest.approx(1 / 5) and out["utterances"] == 5
    assert 0.2 < expected_cer < 0.5 and expected_wer > 0.5  # the case is not trivial


# --- data, batching, loss -------------------------------------------------------------------------------


def spec(source: str, **task) -> dict:
    return {
        "name": "words",
        "seed": 0,
        "data": {"source": source, "split": {"validation": 0.0, "test": 0.0}},
        "task": {"name": TASK, "sample_rate": RATE, "subsample": 2, "conv_channels": 8,
                 "features": {"n_mels": 20}, **task},
        "model": {"arch": "rnn", "cell": "gru", "hidden_size": 48, "num_layers": 1, "bidirectional": True},
        "train": {"epochs": 1, "batch_size": 6, "optimizer": {"name": "adamw", "lr": 3e-3}},
    }  # fmt: skip


def chirps(texts: list[str], seed: int = 0) -> ColumnRecords:
    """Clips of 0.05 s per character (a tone whose pitch is the character's), with their texts."""
    rng = np.random.default_rng(seed)
    clips = []
    for text in texts:
        t = np.arange(int(0.05 * RATE)) / RATE
        tones = [np.sin(2 * np.pi * (200 + 40 * (ord(c) % 32)) * t) for c in text]
        clips.append(np.concatenate(tones) * 0.5 + 0.01 * rng.standard_normal(len(t) * len(text)))
    return ColumnRecords({"audio": clips, "text": texts}, "chirps")


def test_vocabulary_batches_and_the_summed_ctc_loss():
    task = create_task(load_recipe(spec("csv:unused.csv")))
    records = chirps(["Ab, ba!", "abba", "b"])
    task.fit(records)
    assert task.vocabulary == [" ", "a", "b"]  # normalised: lower case, punctuation dropped; blank is 0
    items = [task.encode(records[i], None) for i in range(3)]
    assert items[0]["text"] == "ab ba" and items[0]["y"].tolist() == [2, 3, 1, 3, 2]
    batch = task.collate(items)
    assert batch["x"].shape == (3, 20, 36) and batch["lengths"].tolist() == [36, 21, 6]  # 0.35 s, hop 10 ms
    assert batch["targets"].tolist() == [[2, 3, 1, 3, 2], [2, 3, 3, 2, 0], [3, 0, 0, 0, 0]]
    assert batch["target_lengths"].tolist() == [5, 4, 1] and batch["num_items"] == 10  # characters
    model = task.build_model(bigmodel.models.registry.get_family("rnn"), {"hidden_size": 16}, None)
    outputs = task.forward(model, batch)
    assert outputs.log_probs.shape == (3, 18, 4) and outputs.lengths.tolist() == [18, 11, 3]  # ceil(n / 2)
    loss = task.loss_from(outputs, batch)
    lengths, target_lengths = outputs.lengths, batch["target_lengths"]
    one_by_one = sum(
        F.ctc_loss(outputs.log_probs[i, : lengths[i]], batch["targets"][i, : target_lengths[i]],
                   lengths[i : i + 1], target_lengths[i : i + 1], reduction="sum")
        for i in range(3)
    )  # fmt: skip
    assert loss.item() == pytest.approx(one_by_one.item(), rel=1e-5)
    # padding frames never change a clip's outputs
    alone = task.forward(model.eval(), task.collate(items[2:]))
    model.eval()
    together = task.forward(model, batch)
    assert torch.allclose(alone.log_probs[0, :3], together.log_probs[2, :3], atol=1e-5)
    # a clip no alignment fits contributes 0, not inf
    short = CTCOutputs(outputs.log_probs[:, :2], torch.tensor([2, 2, 2]))
    assert torch.isfinite(task.loss_from(short, batch))


def test_a_transcript_longer_than_its_clip_is_refused_before_training():
    task = create_task(load_recipe(spec("csv:unused.csv", subsample=8)))
    records = chirps(["abab", "ab"])
    task.fit(records)
    fast = ColumnRecords({"audio": [records[1]["audio"]], "text": ["abababab"]}, "fast.csv")
    with pytest.raises(DataError, match=r"fast.csv \(test split\), row .*needs 8 CTC steps .* gives 2 after"):
        task.validate(fast, "test")
    unseen = ColumnRecords({"audio": [records[0]["audio"]], "text": ["abc"]}, "other.csv")
    task.validate(unseen, "validation")
    assert "characters not in the train vocabulary ('c')" in task.notes()[-1]
    assert task.encode(unseen[0], None)["y"].tolist() == [1, 2]  # "c" left out of the target only
    with pytest.raises(DataError, match=r"row .*column 'text': expected the text, got NoneType None"):
        task.validate(ColumnRecords({"audio": [records[0]["audio"]], "text": [None]}, "x.csv"), "test")


def test_augmentation_comes_from_the_example_rng():
    augment = {"speed": [0.9, 1.1], "noise_snr": [10, 20], "freq_masks": 1, "time_masks": 1}
    task = create_task(load_recipe(spec("csv:unused.csv", augment=augment)))
    records = chirps(["abab", "ab"])
    task.fit(records)
    a, b = (task.encode(records[0], np.random.default_rng(3))["x"] for _ in range(2))
    c = task.encode(records[0], np.random.default_rng(4))["x"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(task.encode(records[0], None)["x"], task.encode(records[0], None)["x"])


def test_report_rows_and_input_schema():
    task = create_task(load_recipe(spec("csv:unused.csv")))
    records = chirps(["ab", "ba"])
    task.fit(records)
    rows = task.report_rows(
        [{"audio": "/x/ab.wav", "text": "AB!"}, {"audio": records[1]["audio"], "text": "ba"}, records[0]],
        [{"text": "ab"}, {"text": "b"}, {"text": "ab"}],
    )
    assert rows == [
        {"input": "ab.wav", "truth": "ab", "prediction": "ab", "correct": True},
        {"input": "clip 2", "truth": "ba", "prediction": "b", "correct": False},
        {"input": "clip 3", "truth": "ab", "prediction": "ab", "correct": True},
    ]
    schema = task.input_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    field = schema["properties"]["audio"]
    assert schema["required"] == ["audio"] and not schema["additionalProperties"]
    assert field["contentEncoding"] == "base64" and field["x-bigmodel-audio"]["sample_rate"] == RATE


def test_recipe_errors(tmp_path):
    bad = spec("csv:unused.csv")
    bad["model"] = {"arch": "cnn"}
    with pytest.raises(RecipeError, match="model.arch: task speech_recognition reads the front end's frames"):
        bigmodel.train(bad, output=tmp_path / "runs", progress=False)
    bad = spec("csv:unused.csv")
    bad["model"]["input_size"] = 10
    with pytest.raises(RecipeError, match="model.input_size: set by the task"):
        bigmodel.train(bad, output=tmp_path / "runs", progress=False)
    with pytest.raises(RecipeError, match="task.subsample"):
        bigmodel.train(spec("csv:unused.csv", subsample=3), output=tmp_path / "runs", progress=False)


# --- end to end on espeak-ng words -------------------------------------------------------------------


def write_words(root, repeats: int = 3):
    """espeak-ng saying WORDS at a few speeds and pitches, resampled to 8 kHz WAVs, and a manifest."""
    root.mkdir(parents=True)
    rows = []
    for i, (word, r) in enumerate(itertools.product(WORDS, range(repeats))):
        raw = root / f"raw{i}.wav"
        speed, pitch = 150 + 30 * r, 40 + 10 * r
        subprocess.run(["espeak-ng", "-s", str(speed), "-p", str(pitch), "-w", str(raw), word], check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        wave, rate = soundfile.read(raw)
        raw.unlink()
        wave = wave[:: rate // RATE] if rate % RATE == 0 else np.interp(
            np.arange(0, len(wave), rate / RATE), np.arange(len(wave)), wave
        )  # fmt: skip
        soundfile.write(root / f"{word}-{r}.wav", wave, RATE, subtype="PCM_16")
        rows.append({"path": f"{word}-{r}.wav", "text": word.capitalize() + "."})
    (root / "words.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "words.jsonl"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_learns_to_spell_spoken_words_and_transcribes_wavs(tmp_path):
    manifest = write_words(tmp_path / "words")
    recipe = spec(f"audio:{manifest}", decode="beam", beam_width=4)
    recipe["data"]["validation"] = f"audio:{manifest}"
    recipe["data"]["test"] = f"audio:{manifest}"
    recipe["train"] |= {"epochs": 60, "batch_size": 3, "eval_every": 10_000,
                        "optimizer": {"name": "adamw", "lr": 5e-3}}  # fmt: skip
    run = bigmodel.train(recipe, output=tmp_path / "runs", progress=False)
    test = run.metrics["test"]
    assert test["cer"] < 0.25 and test["wer"] < 0.6, test  # 1.0 and more before training
    state = json.loads((run.path / "task.json").read_text())
    assert state["vocabulary"] == sorted(set("".join(WORDS))) and state["transcript_column"] == "text"
    predictor = bigmodel.load(run.path)
    wav = tmp_path / "words" / "stop-1.wav"
    by_path = predictor.predict(wav)
    wave, _ = soundfile.read(wav, dtype="float32")
    assert by_path == predictor.predict(wav.read_bytes()) == predictor.predict(wave)
    assert set(by_path[0]) == {"text"} and isinstance(by_path[0]["text"], str)
    texts = [p["text"] for p in predictor.predict([tmp_path / "words" / f"{w}-0.wav" for w in WORDS])]
    assert predictor.predict(manifest) == predictor.predict([tmp_path / "words" / f"{w}-{r}.wav"
                                                             for w in WORDS for r in range(3)])  # fmt: skip
    assert jiwer.cer(list(WORDS), texts) < 0.3, texts
    with pytest.raises(DataError, match="not audio soundfile can decode"):
        (tmp_path / "bad.wav").write_text("not audio")
        predictor.predict(tmp_path / "bad.wav")
