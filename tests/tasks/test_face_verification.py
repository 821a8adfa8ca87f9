"""Face verification: the pair metrics against scikit-learn and brute force, a run on people held out
by folder (its metric equal to one recomputed from predict's embeddings), the validation threshold,
pairs in predict, and bad inputs refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

import bigmodel
from bigmodel.data.sources import load_source
from bigmodel.errors import DataError, UserError
from bigmodel.rundir import open_run
from bigmodel.tasks import restore_task
from bigmodel.tasks.face_verification import (
    accept_reject_rates,
    best_threshold,
    rank1_identification,
    roc_auc,
    verification_pairs,
)
from bigmodel.training.validate import evaluate_records

TASK = "bigmodel.tasks.face_verification:FaceVerificationTask"
PEOPLE = {"train": (6, 6), "validation": (3, 4), "test": (3, 4)}  # people, photos each


def write_people(root, seed=0, splits=PEOPLE, size=(12, 10)):
    """Person folders of small grey "faces": each person a fixed random pattern, each photo of them
    that pattern shifted by up to a pixel, with noise. Split folders hold different people."""
    rng = np.random.default_rng(seed)
    number = 0
    for split, (people, photos) in splits.items():
        for _ in range(people):
            number += 1
            face = rng.uniform(30, 220, size)
            folder = root / split / f"p{number}"
            folder.mkdir(parents=True)
            for k in range(photos):
                shifted = np.roll(face, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
                pixels = np.clip(shifted + rng.normal(0, 12, size), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


def recipe(source, **task) -> dict:
    return {
        "name": "faces",
        "seed": 0,
        "data": {"source": source},
        "task": {
            "name": TASK,
            "embedding_dim": 8,
            "scale": 8.0,
            "margin": 0.2,
            "augment": {"crop_padding": 1},
            **task,
        },  # fmt: skip
        "model": {"arch": "cnn", "channels": [8, 16]},
        "train": {"epochs": 4, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 1e-2}},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faces")
    folder = write_people(tmp / "people")
    run = bigmodel.train(recipe(f"images:{folder}"), output=tmp / "runs", progress=False)
    return run, folder


# --- the numbers ---------------------------------------------------------------------------------------


def test_auc_threshold_and_rank1_match_scikit_learn_and_brute_force():
    rng = np.random.default_rng(1)
    same = rng.random(300) < 0.3
    scores = np.round(rng.normal(same * 0.8, 0.5), 1)  # rounded: many ties
    assert roc_auc(scores, same) == pytest.approx(roc_auc_score(same, scores), abs=1e-12)

    threshold, accuracy = best_threshold(scores, same)
    candidates = np.concatenate([np.unique(scores), [scores.max() + 1]])
    brute = max(np.mean(accept_reject_rates(scores, same, t)) for t in candidates)
    assert (
        accuracy
        == pytest.approx(brute)
        == pytest.approx(np.mean(accept_reject_rates(scores, same, threshold)))
    )
    assert not np.isin(threshold, scores)  # midway between two scores, not on one

    vectors = torch.randn(40, 5)
    people = rng.integers(0, 7, 40)
    unit = torch.nn.functional.normalize(vectors, dim=1).numpy()
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    queries = np.bincount(people)[people] > 1
    expected = (people[sims.argmax(1)] == people)[queries].mean()
    assert rank1_identification(vectors, people) == (pytest.approx(expected), int(queries.sum()))


def test_pairs_are_every_pair_or_a_seeded_sample_of_each_kind():
    people = np.array([0, 0, 0, 1, 1, 2])
    first, second, same = verification_pairs(people, max_pairs=100)
    assert same.sum() == 3 + 1 and (~same).sum() == 15 - 4
    assert len({tuple(sorted(p)) for p in zip(first, second, strict=True)}) == 15  # each pair once
    assert np.array_equal(people[first] == people[second], same) and (first != second).all()

    people = np.repeat(np.arange(30), 8)  # 840 positive pairs, 27,840 negative ones
    first, second, same = verification_pairs(people, max_pairs=500, seed=3)
    assert same.sum() == 500 and (~same).sum() == 500
    assert np.array_equal(people[first] == people[second], same) and (first != second).all()
    again = verification_pairs(people, max_pairs=500, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((first, second, same), again, strict=True))


# --- a run ---------------------------------------------------------------------------------------------


def test_a_run_on_held_out_people_reports_pair_metrics_and_the_raw_pixel_baseline(trained):
    run, _ = trained
    test = run.metrics["test"]
    assert test["images"] == 12 and test["identities"] == 3
    assert test["positive_pairs"] == 3 * 6 and test["negative_pairs"] == 66 - 18
    for key in ("roc_auc", "verification_accuracy_at_best_threshold", "rank1", "raw_pixel_roc_auc",
                "raw_pixel_rank1", "raw_pixel_verification_accuracy_at_best_threshold"):  # fmt: skip
        assert 0.0 <= test[key] <= 1.0, key
    state = json.loads((run.path / "task.json").read_text())
    assert state["identities"] == [f"p{i}" for i in range(1, 7)]
    assert ("verification_accuracy" in test) == (state["threshold"] is not None)
    weights = load_file(run.path / "model.safetensors")
    assert weights["head.weight"].shape == (6, 8)  # the ArcFace centres of the six training people


def test_the_metric_equals_one_recomputed_from_predicted_embeddings(trained):
    run, folder = trained
    (records,) = load_source(f"images:{folder / 'test'}").values()
    predictor = bigmodel.load(run.path)
    out = predictor.predict(list(records.column("image")))
    embeddings = np.array([o["embedding"] for o in out])
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    people = np.unique(records.column("label"), return_inverse=True)[1]
    first, second, same = verification_pairs(people, max_pairs=10_000)
    scores = (embeddings[first] * embeddings[second]).sum(1)
    assert roc_auc_score(same, scores) == pytest.approx(run.metrics["test"]["roc_auc"], abs=1e-4)


def test_the_validation_threshold_is_used_on_the_test_split_and_kept_in_the_state(trained):
    run, folder = trained
    model, task, info = open_run(run.path)
    splits = {k: load_source(f"images:{folder / k}")["data"] for k in ("validation", "test")}
    validation = evaluate_records(model, task, splits["validation"], 16)
    assert task.calibrate(validation)
    assert task.decision_threshold() == (validation["best_threshold"], "validation split")
    test = evaluate_records(model, task, splits["test"], 16)
    assert (
        test["threshold"] == validation["best_threshold"] and test["threshold_source"] == "validation split"
    )
    assert test["verification_accuracy"] == pytest.approx(
        (test["true_accept_rate"] + test["true_reject_rate"]) / 2
    )
    restored = restore_task(json.loads(json.dumps(task.state())), run.path)
    assert restored.threshold == task.threshold
    fixed = task.state()
    fixed["options"]["threshold"] = 0.25
    assert restore_task(fixed, run.path).decision_threshold() == (0.25, "task.threshold")


def test_training_stores_the_validation_threshold(trained):
    run, _ = trained
    state = json.loads((run.path / "task.json").read_text())
    assert state["threshold"] == pytest.approx(run.metrics["validation"]["best_threshold"])
    test = json.loads((run.path / "eval.json").read_text())["test"]
    assert test["threshold"] == state["threshold"] and test["threshold_source"] == "validation split"
    assert bigmodel.load(run.path).task.decision_threshold() == (state["threshold"], "validation split")


def test_predict_compares_pairs_and_embeds_single_images(trained, tmp_path):
    run, folder = trained
    predictor = bigmodel.load(run.path)
    a, b = str(folder / "test" / "p10" / "0.png"), str(folder / "test" / "p11" / "1.png")
    predictor.task.threshold = None  # neither chosen on validation nor set (task.threshold)
    with pytest.raises(UserError, match="needs a same/different threshold.*task.threshold"):
        predictor.predict((a, b))
    predictor.task.calibrate({"best_threshold": 0.3})
    (pair,) = predictor.predict((a, b))
    assert set(pair) == {"same", "score", "threshold"} and pair["threshold"] == 0.3
    assert pair["same"] == (pair["score"] >= 0.3)
    ea, eb = (np.array(o["embedding"]) for o in predictor.predict([a, b]))
    assert pair["score"] == pytest.approx(float(ea @ eb), abs=1e-5)
    (itself,) = predictor.predict((a, a))
    assert itself["score"] == pytest.approx(1.0, abs=1e-5) and itself["same"] is True
    mixed = predictor.predict([{"image": a, "image_pair": b}, {"image": b}])
    assert mixed[0]["score"] == pytest.approx(pair["score"], abs=1e-5) and mixed[1][
        "embedding"
    ] == pytest.approx(eb.tolist(), abs=1e-6)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        json.dumps({"image": a, "image_pair": a}) + "\n" + json.dumps({"image": a, "image_pair": b})
    )
    from_file = predictor.predict(jsonl)  # batched with another pair: equal up to float rounding
    assert [r["same"] for r in from_file] == [True, pair["same"]]
    assert [r["score"] for r in from_file] == pytest.approx([itself["score"], pair["score"]], abs=1e-5)


def test_bad_images_are_refused_naming_them(trained, tmp_path):
    run, folder = trained
    predictor = bigmodel.load(run.path)
    good = str(folder / "test" / "p10" / "0.png")
    notes = tmp_path / "notes.png"
    notes.write_text("not a face")
    cut = tmp_path / "cut.png"
    cut.write_bytes((folder / "test" / "p10" / "1.png").read_bytes()[:50])
    with pytest.raises(DataError, match=r"second image.*notes\.png.*not an image Pillow can decode"):
        predictor.predict((good, str(notes)))
    with pytest.raises(DataError, match=r"record 2, column 'image_pair'.*cut\.png.*damaged"):
        predictor.predict([{"image": good}, {"image": good, "image_pair": str(cut)}])
    with pytest.raises(DataError, match="neither an image file"):
        predictor.predict(str(tmp_path / "faces.txt"))


def test_a_damaged_training_photo_is_refused_before_the_run_starts(tmp_path):
    folder = write_people(tmp_path / "people")
    (folder / "validation" / "p8" / "2.png").write_bytes(b"GIF89a" + b"\0" * 10)
    with pytest.raises(DataError, match=r"validation split.*p8/2\.png.*(damaged|not an image)"):
        bigmodel.train(recipe(f"images:{folder}"), output=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_held_out_splits_must_hold_other_people(tmp_path):
    folder = write_people(tmp_path / "people", splits={"all": (4, 6)}) / "all"  # no split folders
    with pytest.raises(DataError, match=r"people \(p\d.*\) also appear in the train split.*never seen"):
        bigmodel.train(recipe(f"images:{folder}"), output=tmp_path / "runs", progress=False)
    lonely = write_people(tmp_path / "lonely", splits={"train": (3, 3), "validation": (2, 1), "test": (2, 2)})
    with pytest.raises(DataError, match=r"validation split\): 2 people with at most 1 image"):
        bigmodel.train(recipe(f"images:{lonely}"), output=tmp_path / "runs", progress=False)
