"""COCO-style detection AP equals pycocotools' COCOeval on the same predictions."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bigmodel.evaluation.detection import DetectionTally, coco_iou, match_image, xyxy_to_xywh


def random_case(seed: int, images: int = 25, classes: int = 4):
    """Ground truth and detections per image: jittered copies of true boxes (good and poor), random
    boxes, duplicates, tied scores, an image with 130 detections of one class (COCO keeps 100), images
    without ground truth, and a class (the last) that has detections but no ground truth."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(images):
        n = int(rng.integers(0, 5)) if i % 7 else 0
        xy = rng.uniform(0, 150, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 60, (n, 2))], 1)
        gt_labels = rng.integers(0, classes - 1, n)
        dets, labels = [], []
        for box, label in zip(gt, gt_labels, strict=True):
            for _ in range(int(rng.integers(0, 3))):
                dets.append(box + rng.normal(0, rng.choice([1.0, 6.0]), 4))
                labels.append(label if rng.random() < 0.85 else rng.integers(0, classes))
        for _ in range(int(rng.integers(0, 6))):
            xy0 = rng.uniform(0, 150, 2)
            dets.append(np.concatenate([xy0, xy0 + rng.uniform(5, 50, 2)]))
            labels.append(rng.integers(0, classes))
        if dets and rng.random() < 0.3:
            dets.append(dets[0].copy())  # an exact duplicate
            labels.append(labels[0])
        if i == 3:
            for _ in range(130):
                xy0 = rng.uniform(0, 150, 2)
                dets.append(np.concatenate([xy0, xy0 + rng.uniform(5, 50, 2)]))
                labels.append(0)
        dets = np.array(dets).reshape(-1, 4)
        dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 0.5)
        scores = np.round(rng.uniform(0, 1, len(dets)), 1)  # coarse: many ties
        cases.append((dets, scores, np.array(labels, np.int64), gt, gt_labels))
    return cases, classes


def cocoeval_stats(cases, classes: int) -> np.ndarray:
    """pycocotools' 12 summary numbers, boxes handed over as COCO's [x, y, w, h]."""
    images, annotations, results = [], [], []
    for i, (dets, scores, labels, gt, gt_labels) in enumerate(cases, start=1):
        images.append({"id": i})
        for box, label in zip(xyxy_to_xywh(gt), gt_labels, strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]),
                                "iscrowd": 0})  # fmt: skip
        for box, score, label in zip(xyxy_to_xywh(dets), scores, labels, strict=True):
            results.append(
                {"image_id": i, "category_id": int(label) + 1, "bbox": box.tolist(), "score": float(score)}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": k + 1} for k in range(classes)]}  # fmt: skip
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def tally_of(cases, classes: int) -> DetectionTally:
    tally = DetectionTally(classes)
    for dets, scores, labels, gt, gt_labels in cases:
        tally.add_image(dets, scores, labels, gt, gt_labels)
    return tally


@pytest.mark.parametrize("seed", range(4))
def test_equals_pycocotools_on_random_predictions(seed):
    cases, classes = random_case(seed)
    ours = tally_of(cases, classes).compute()
    stats = cocoeval_stats(cases, classes)
    assert ours["map"] == pytest.approx(stats[0], abs=1e-6)
    assert ours["map_50"] == pytest.approx(stats[1], abs=1e-6)
    assert ours["map_75"] == pytest.approx(stats[2], abs=1e-6)
    assert ours["mar_100"] == pytest.approx(stats[8], abs=1e-6)
    assert 0.05 < ours["map_50"] < 0.95  # a case that exercises both matches and misses
    assert ours["per_class"][classes - 1] == {"ap": None, "ap_50": None, "recall": None}  # no ground truth
    per_class = [row["ap"] for row in ours["per_class"] if row["ap"] is not None]
    assert np.mean(per_class) == pytest.approx(ours["map"], abs=1e-12)


def test_iou_is_pycocotools_bbiou():
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(5)
    a = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(1, 40, (20, 2))], 1)
    b = np.concatenate([rng.uniform(0, 50, (15, 2)), rng.uniform(1, 40, (15, 2))], 1)
    expected = coco_mask.iou(a.tolist(), b.tolist(), [0] * 15)
    assert np.array_equal(coco_iou(a, b), expected)  # bit for bit


def test_merged_tallies_equal_one_tally():
    cases, classes = random_case(11)
    whole = tally_of(cases, classes)
    first, second = tally_of(cases[:10], classes), tally_of(cases[10:], classes)
    first.merge(second)
    assert first.compute() == whole.compute()
    assert first.num_detections == whole.num_detections


def test_perfect_missing_and_absent():
    gt = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
    perfect = DetectionTally(2)
    perfect.add_image(gt, [0.9, 0.8], [0, 1], gt, [0, 1])
    assert perfect.compute()["map"] == pytest.approx(1.0) and perfect.compute()["mar_100"] == 1.0
    missing = DetectionTally(2)
    missing.add_image(np.zeros((0, 4)), [], [], gt, [0, 1])
    assert missing.compute()["map"] == 0.0
    nothing = DetectionTally(2)  # no ground truth at all: COCO reports -1
    nothing.add_image(gt, [0.9, 0.8], [0, 1], np.zeros((0, 4)), [])
    assert nothing.compute()["map"] == -1.0


def test_a_detection_takes_the_unmatched_truth_it_overlaps_most():
    truths = xyxy_to_xywh([[0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0]])
    # A overlaps truth 1 at IoU 0.667 and truth 2 at 0.818: it takes truth 2, leaving truth 1 to B
    # (IoU 1); taking the first truth over the threshold would leave B only truth 2, at IoU 0.538.
    dets = xyxy_to_xywh([[2.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    labels, scores, matched = match_image(dets, [0.9, 0.8], [0, 0], truths, [0, 0])
    assert scores.tolist() == [0.9, 0.8]
    assert matched[:, :7].all()  # thresholds 0.5 ... 0.8
    assert matched[:, 7:].tolist() == [[False] * 3, [True] * 3]  # 0.85+: only B's IoU 1 is enough
