"""Boxes: conversions, IoU and NMS against plain-Python references on random boxes."""

from __future__ import annotations

import pytest
import torch

from bigmodel.nn.boxes import (
    FORMATS,
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    nms,
    paired_giou,
)


def random_boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    """``n`` xyxy boxes in float64, clustered so that many overlap (and some coincide)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(1, n // 4), 2, generator=g, dtype=torch.float64) * size
    pick = torch.randint(len(centres), (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g, dtype=torch.float64) * 4
    wh = 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    boxes[n // 2 : n // 2 + 3] = boxes[0]  # exact duplicates
    return boxes


def reference_iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    """The textbook greedy NMS: best score first (ties: lower index), drop what overlaps a kept box."""
    keep: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(reference_iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


def test_conversions_round_trip_and_known_values():
    xyxy = torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 1.0, 3.0]])
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[10, 20, 30, 40], [0, 0, 1, 3]]
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[25, 40, 30, 40], [0.5, 1.5, 1, 3]]
    boxes = random_boxes(50, seed=1)
    for source in FORMATS:
        for target in FORMATS:
            there = box_convert(box_convert(boxes, "xyxy", source), source, target)
            assert torch.allclose(box_convert(there, target, "xyxy"), boxes, atol=1e-9)
    with pytest.raises(ValueError, match="'xxyy' is not one of"):
        box_convert(boxes, "xxyy", "xyxy")


def test_iou_matches_the_reference_and_empty_boxes_give_zero():
    a, b = random_boxes(40, seed=2), random_boxes(30, seed=3)
    expected = torch.tensor(
        [[reference_iou(x, y) for y in b.tolist()] for x in a.tolist()], dtype=torch.float64
    )
    assert torch.allclose(box_iou(a, b), expected, atol=1e-12)
    assert box_iou(a, a).diagonal().allclose(torch.ones(40, dtype=torch.float64))
    empty = torch.tensor([[5.0, 5.0, 5.0, 9.0], [3.0, 3.0, 1.0, 1.0]])  # zero width; x1 < x0
    iou = box_iou(empty, torch.cat([empty, torch.tensor([[0.0, 0.0, 10.0, 10.0]])]))
    assert torch.equal(iou, torch.zeros(2, 3))  # never NaN
    assert box_area(empty).tolist() == [0.0, 0.0]


def test_clip_keeps_boxes_inside_the_image():
    boxes = torch.tensor([[-5.0, -2.0, 30.0, 50.0], [10.0, 10.0, 20.0, 20.0]])
    assert clip_boxes(boxes, height=40, width=25).tolist() == [[0, 0, 25, 40], [10, 10, 20, 20]]


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_nms_equals_the_reference_on_random_boxes(seed, threshold):
    boxes = random_boxes(120, seed)
    g = torch.Generator().manual_seed(100 + seed)
    scores = (torch.rand(120, generator=g, dtype=torch.float64) * 10).round() / 10  # many ties
    kept = nms(boxes, scores, threshold)
    assert kept.tolist() == reference_nms(boxes.tolist(), scores.tolist(), threshold)
    assert kept.dtype == torch.long


def test_nms_suppresses_only_above_the_threshold():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]  # IoU exactly 0.5 is kept (torchvision: > only)
    assert nms(boxes, scores, 0.49).tolist() == [0, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_is_nms_per_class_merged_by_score(seed):
    boxes = random_boxes(150, seed)
    g = torch.Generator().manual_seed(200 + seed)
    scores = (torch.rand(150, generator=g, dtype=torch.float64) * 20).round() / 20
    classes = torch.randint(4, (150,), generator=g)
    expected = []
    for c in range(4):
        members = [i for i in range(150) if classes[i] == c]
        kept = reference_nms([boxes[i].tolist() for i in members], [float(scores[i]) for i in members], 0.5)
        expected += [members[k] for k in kept]
    expected.sort(key=lambda i: (-float(scores[i]), i))
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == expected


def test_boxes_of_other_classes_do_not_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.5).tolist() == [1, 2, 0]


def test_paired_giou_matches_its_definition():
    a, b = random_boxes(60, seed=7), random_boxes(60, seed=8)
    expected = []
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        enclosing = (max(x[2], y[2]) - min(x[0], y[0])) * (max(x[3], y[3]) - min(x[1], y[1]))
        inter = max(0.0, min(x[2], y[2]) - max(x[0], y[0])) * max(0.0, min(x[3], y[3]) - max(x[1], y[1]))
        union = (x[2] - x[0]) * (x[3] - x[1]) + (y[2] - y[0]) * (y[3] - y[1]) - inter
        expected.append(inter / union - (enclosing - union) / enclosing)
    assert torch.allclose(paired_giou(a, b), torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert paired_giou(a, a).allclose(torch.ones(60, dtype=torch.float64))
    far = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[99.0, 99.0, 100.0, 100.0]])
    assert -1 < paired_giou(*far).item() < -0.99  # disjoint and far apart: close to -1
