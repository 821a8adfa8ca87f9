"""Object detection end to end on tiny generated scenes: it learns, its mAP equals pycocotools' on the
predictions a user gets, predict answers in the input image's pixels and draws, the loss is summed
over images, decoding inverts the training targets, and bad data is refused naming the row."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bigmodel
from bigmodel.data import scenes
from bigmodel.errors import DataError, RecipeError
from bigmodel.nn.detection import decode, heatmap_target, merge_mirrored
from bigmodel.tasks.object_detection import draw

TASK = "bigmodel.tasks.object_detection:ObjectDetectionTask"
CATEGORIES = ("animals", "food")


def write_stamps(root: Path) -> Path:
    """Red cut-outs are 'animals', blue ones 'food': discs and squares with a real alpha."""
    rng = np.random.default_rng(0)
    for category, colour in zip(CATEGORIES, [(210, 40, 30), (30, 60, 220)], strict=True):
        for i in range(4):
            h, w = 30 + 4 * i, 40 - 3 * i
            yy, xx = np.mgrid[:h, :w]
            disc = ((yy - h / 2) / (h / 2.1)) ** 2 + ((xx - w / 2) / (w / 2.1)) ** 2 < 1
            inside = disc if i % 2 else np.ones((h, w), bool)
            inside[[0, -1]], inside[:, [0, -1]] = False, False  # some transparency around
            rgb = np.clip(np.array(colour) + rng.normal(0, 15, (h, w, 3)), 0, 255)
            pixels = np.dstack([rgb, inside * 255]).astype(np.uint8)
            (root / category).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "RGBA").save(root / category / f"{category}{i}.png")
    return root


def write_scene_files(folder: Path, sizes: dict, seed: int = 0) -> dict[str, Path]:
    """Scenes as PNG files and one JSONL file per split: {"image": path, "boxes": [...], "labels": [...]}."""
    grey = np.random.default_rng(1).integers(90, 170, (60, 60, 3), dtype=np.uint8)
    splits = scenes.compose_scenes(write_stamps(folder / "stamps"), sizes, image_size=48, seed=seed,
                                   backgrounds=[grey], objects=(1, 2), scale=(0.35, 0.6),
                                   categories=CATEGORIES)  # fmt: skip
    files = {}
    for split, records in splits.items():
        lines = []
        for i, example in enumerate(records):
            path = folder / f"{split}-{i}.png"
            Image.fromarray(example["image"]).save(path)
            lines.append(
                json.dumps({"image": str(path), "boxes": example["boxes"], "labels": example["labels"]})
            )
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("\n".join(lines) + "\n")
    return files


def recipe(files: dict[str, Path], **task) -> dict:
    return {
        "name": "tiny-scenes",
        "seed": 0,
        "data": {
            "source": f"jsonl:{files['train']}",
            "test": f"jsonl:{files['test']}",
            "split": {"validation": 0.0, "test": 0.0},
        },  # fmt: skip
        "task": {"name": TASK, "head_channels": 16, "score_threshold": 0.0, **task},
        "model": {"arch": "cnn", "channels": [16, 32, 32]},  # strides 2, 4, 8: the head reads stride 4
        "train": {
            "epochs": 25,
            "batch_size": 16,
            "optimizer": {"name": "adamw", "lr": 1e-2},
            "schedule": {"name": "cosine", "warmup_steps": 5},
        },  # fmt: skip
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    files = write_scene_files(folder, {"train": 96, "test": 24})
    run = bigmodel.train(recipe(files), output=folder / "runs", progress=False)
    return run, files


def cocoeval_map(rows: list[dict], predictions: list[dict], categories: list[str]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (row, found) in enumerate(zip(rows, predictions, strict=True), start=1):
        images.append({"id": i})
        for (x0, y0, x1, y1), label in zip(row["boxes"], row["labels"], strict=True):
            category = categories.index(label) + 1
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": category,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})  # fmt: skip
        for b in found["boxes"]:
            x0, y0, x1, y1 = b["box"]
            results.append({"image_id": i, "category_id": categories.index(b["label"]) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": b["score"]})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": k + 1} for k in range(len(categories))]}  # fmt: skip
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_learns_tiny_scenes_and_its_map_is_pycocotools_on_the_predictions(trained):
    run, files = trained
    metrics = run.metrics["test"]
    assert metrics["map_50"] >= 0.7, metrics
    report = json.loads((run.path / "eval.json").read_text())["test"]
    assert [row["class"] for row in report["per_class"]] == list(CATEGORIES)
    assert report["images"] == 24 and sum(row["support"] for row in report["per_class"]) > 24
    rows = [json.loads(line) for line in files["test"].read_text().splitlines()]
    predictions = bigmodel.load(run.path).predict(files["test"])  # score_threshold 0: every detection
    stats = cocoeval_map(rows, predictions, list(CATEGORIES))
    assert metrics["map"] == pytest.approx(stats[0], abs=1e-6)
    assert metrics["map_50"] == pytest.approx(stats[1], abs=1e-6)
    assert metrics["mar_100"] == pytest.approx(stats[8], abs=1e-6)


def test_predict_answers_in_the_input_pixels_and_draws(trained, tmp_path):
    run, files = trained
    predictor = bigmodel.load(run.path)
    row = json.loads(files["test"].read_text().splitlines()[0])
    (small,) = predictor.predict(row["image"])
    best = small["boxes"][0]
    assert set(best) == {"label", "score", "box"} and best["label"] in CATEGORIES
    assert [b["score"] for b in small["boxes"]] == sorted((b["score"] for b in small["boxes"]), reverse=True)
    big = Image.open(row["image"]).resize((96, 144), Image.NEAREST)  # twice as wide, three times as tall
    (large,) = predictor.predict(np.asarray(big))
    x0, y0, x1, y1 = large["boxes"][0]["box"]
    assert large["boxes"][0]["label"] == best["label"]
    assert np.allclose([x0 / 2, y0 / 3, x1 / 2, y1 / 3], best["box"], atol=1.5)
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 144
    picture = draw(big, {"boxes": large["boxes"][:1]})
    assert picture.size == (96, 144) and picture.mode == "RGB"
    changed = np.any(np.asarray(picture) != np.asarray(big.convert("RGB")), axis=-1)
    edge = changed[int(y0) + 8 : int(y1) - 2, max(int(x0) - 1, 0) : int(x0) + 3]  # the box's left side
    assert edge.any(axis=1).all()
    with pytest.raises(DataError, match="prediction must be one result of predict"):
        draw(big, large["boxes"])
    drawing = bigmodel.load(run.path, options={"draw": True})  # predict draws on the input as given
    (drawn,) = drawing.predict(np.asarray(big))
    assert drawn["boxes"] == large["boxes"]
    assert np.array_equal(np.asarray(drawn["image"]), np.asarray(draw(big, large)))


def test_the_cli_draws_boxes_and_thresholds_scores_on_request(trained, tmp_path):
    run, files = trained
    image = json.loads(files["test"].read_text().splitlines()[0])["image"]
    command = [sys.executable, "-m", "bigmodel", "predict", str(run.path), image, "--images", str(tmp_path)]
    done = subprocess.run([*command, "--set", "draw=true", "--set", "score_threshold=0.2"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["boxes"] and min(b["score"] for b in row["boxes"]) >= 0.2
    written = Image.open(tmp_path / Path(row["image"]).name)
    assert np.array_equal(np.asarray(written), np.asarray(draw(Image.open(image), row)))
    refused = subprocess.run(
        [*command, "--set", "score_treshold=0.5"], capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "task.score_treshold: not an option predict can change" in refused.stderr
    assert "Did you mean 'score_threshold'" in refused.stderr
    bad = subprocess.run(
        [*command, "--set", "score_threshold=2"], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "task.score_threshold" in bad.stderr and "(got 2)" in bad.stderr


def test_loss_is_summed_over_images_and_decoding_inverts_the_targets(trained):
    from bigmodel.rundir import open_run

    run, files = trained
    model, task, _ = open_run(run.path)
    model.eval()
    rows = [json.loads(line) for line in files["test"].read_text().splitlines()[:3]]
    items = [task.encode(row, None) for row in rows]
    with torch.no_grad():
        together = task.loss(model, task.collate(items))
        apart = sum(task.loss(model, task.collate([item])) for item in items)
        assert task.collate(items)["num_items"] == 3
    assert together == pytest.approx(float(apart), rel=1e-5)

    # boxes 2 and 3 overlap at IoU 0.54
    boxes = torch.tensor([[4.0, 6.0, 30.0, 20.0], [20.0, 24.0, 44.0, 46.0], [25.0, 29.0, 47.0, 47.0]])
    labels = torch.tensor([1, 0, 1])
    stride, h, w = 4, 12, 12
    heat = heatmap_target(boxes, labels, 2, h, w, stride, stride)
    cell = ((boxes[:, :2] + boxes[:, 2:]) / 2 / stride).floor()  # (col, row) of each centre
    point = (cell + 0.5) * stride
    distances = torch.cat([point - boxes[:, :2], boxes[:, 2:] - point], 1) / stride  # in strides
    box = torch.zeros(1, 4, h, w)
    box[0, :, cell[:, 1].long(), cell[:, 0].long()] = distances.log().t()
    outputs = {"heatmap": torch.where(heat == 1, 5.0, -5.0)[None], "box": box}

    def confident(nms_iou):  # the flat background is a plateau of weak "peaks": keep the real ones
        found, scores, classes = decode(outputs, (48, 48), max_detections=10, nms_iou=nms_iou)[0]
        return found[scores > 0.5], classes[scores > 0.5]

    found, classes = confident(None)
    assert len(found) == 3
    order = sorted(range(3), key=lambda i: (classes[i].item(), found[i, 0].item()))
    expected = sorted(range(3), key=lambda i: (labels[i].item(), boxes[i, 0].item()))
    assert torch.allclose(found[order], boxes[expected], atol=1e-4)
    assert classes[order].tolist() == labels[expected].tolist()
    assert len(confident(0.5)[0]) == 3  # boxes 2 and 3 overlap but belong to different classes
    labels[2] = 0
    heat = heatmap_target(boxes, labels, 2, h, w, stride, stride)
    outputs["heatmap"] = torch.where(heat == 1, 5.0, -5.0)[None]
    assert len(confident(None)[0]) == 3
    assert len(confident(0.5)[0]) == 2  # now same-class duplicates: NMS drops one


def test_bad_training_data_is_refused_naming_the_row(tmp_path):
    files = write_scene_files(tmp_path, {"train": 6, "test": 3})
    lines = files["train"].read_text().splitlines()

    def refused(edit, match, row=3):
        rows = [json.loads(line) for line in lines]
        edit(rows[row - 1])
        files["train"].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        with pytest.raises(DataError, match=match):
            bigmodel.train(recipe(files), output=tmp_path / "runs", progress=False)
        assert not (tmp_path / "runs").exists()

    def corrupt(row):
        row["image"] = str(tmp_path / "cut.png")
        Path(row["image"]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)

    refused(corrupt, r"train.jsonl \(train split\), row 3 \('.*cut.png'\).*(damaged|not an image)")
    refused(lambda r: r.update(boxes=[[20, 5, 10, 30]], labels=["food"]),
            r"row 3, column 'boxes', box 1: \[20.0, 5.0, 10.0, 30.0\] has x1 <= x0")  # fmt: skip
    refused(lambda r: r.update(boxes=[[10, 5, 60, 30]], labels=["food"]),
            r"row 3, column 'boxes': box 1 \[10.0, 5.0, 60.0, 30.0\] is outside the 48x48 image")  # fmt: skip
    refused(lambda r: r.update(boxes=[[1, 2, 3, 4]], labels=[]), r"row 3: 1 box\(es\) in 'boxes' but 0 label")
    refused(
        lambda r: r.update(boxes=[[1, 2, "x", 4]], labels=["food"]),
        r"row 3, column 'boxes', box 1: .*four numbers",
    )
    refused(
        lambda r: r.update(image=np.zeros((8, 8, 2), np.uint8).tolist()),
        r"row 3: an image array of shape \(8, 8, 2\)",
    )
    files["train"].write_text("\n".join(lines) + "\n")
    rows = [json.loads(line) for line in files["test"].read_text().splitlines()]
    rows[1].update(boxes=[[1, 1, 9, 9]], labels=["robot"])
    files["test"].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(
        DataError, match=r"test.jsonl \(test split\), row 2, column 'labels': label 'robot' is not a category"
    ):
        bigmodel.train(recipe(files), output=tmp_path / "runs", progress=False)


def test_a_backbone_without_feature_maps_is_refused(tmp_path):
    files = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    with pytest.raises(
        RecipeError, match="model.arch: task object_detection reads a backbone's feature maps"
    ):
        bigmodel.load_recipe({**recipe(files), "model": {"arch": "mlp"}})


def test_a_frozen_backbone_keeps_its_weights_and_statistics(tmp_path):
    from bigmodel.models.cnn import CNN, CNNConfig
    from bigmodel.nn.detection import DetectionModel, centernet_loss

    backbone = CNN(CNNConfig(input_shape=(3, 32, 32), num_outputs=0, channels=[8, 8, 8]))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = DetectionModel(backbone, num_classes=2, level=1, channels=8, frozen=True).train()
    assert not backbone.training and model.head.training
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    boxes, labels = [torch.tensor([[2.0, 3.0, 20.0, 30.0]])] * 2, [torch.tensor([1])] * 2
    centernet_loss(model(torch.randn(2, 3, 32, 32)), boxes, labels, (32, 32)).sum().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in backbone.parameters())
    files = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    with pytest.raises(RecipeError, match="task.freeze_backbone: only a pretrained backbone"):
        bigmodel.load_recipe(recipe(files, freeze_backbone=True))


def perfect_outputs(
    boxes: torch.Tensor, labels: torch.Tensor, classes: int, h: int, w: int, stride: int
) -> dict:
    """What a perfect head outputs for ``boxes``: confident peaks at the centre cells, exact distances."""
    heat = heatmap_target(boxes, labels, classes, h, w, stride, stride)
    cell = ((boxes[:, :2] + boxes[:, 2:]) / 2 / stride).floor()  # (col, row)
    point = (cell + 0.5) * stride
    box = torch.zeros(1, 4, h, w)
    box[0, :, cell[:, 1].long(), cell[:, 0].long()] = (
        (torch.cat([point - boxes[:, :2], boxes[:, 2:] - point], 1) / stride).log().t()
    )
    return {"heatmap": torch.where(heat == 1, 5.0, -5.0)[None], "box": box}


def test_test_time_flip_merges_an_image_with_its_mirror():
    boxes = torch.tensor([[3.0, 5.0, 23.0, 20.0], [22.0, 26.0, 45.0, 41.0]])  # centres off cell borders
    labels = torch.tensor([0, 1])
    mirrored_boxes = torch.stack([48 - boxes[:, 2], boxes[:, 1], 48 - boxes[:, 0], boxes[:, 3]], 1)
    outputs = perfect_outputs(boxes, labels, 2, 12, 12, 4)
    mirrored = perfect_outputs(mirrored_boxes, labels, 2, 12, 12, 4)
    merged = merge_mirrored(outputs, mirrored)
    found, scores, classes = decode(merged, (48, 48), 10, None)[0]
    keep = scores > 0.5
    assert sorted(classes[keep].tolist()) == [0, 1]
    order = classes[keep].argsort()
    assert torch.allclose(found[keep][order], boxes, atol=1e-4)
    wrong = merge_mirrored(outputs, outputs)  # an unmirrored "mirror" disagrees: no confident box
    assert decode(wrong, (48, 48), 10, None)[0][1].max() < 0.6
