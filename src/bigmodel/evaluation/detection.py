"""COCO-style detection metrics (NumPy only): mAP@[.5:.95], mAP@.5, mAP@.75 and AR@100, computed as
pycocotools' ``COCOeval`` computes them for boxes (``iouType="bbox"``, area range "all", no crowd
annotations), so the numbers equal its ``stats[0]``, ``stats[1]``, ``stats[2]`` and ``stats[8]``.

Streaming: :class:`DetectionTally` matches each image's detections to its ground truth as the image
arrives (COCO's greedy matching at every IoU threshold only looks at one image), then keeps per
detection its class, score and whether it was a true positive at each threshold — a bounded record
(at most ``max_per_class`` detections per class per image, COCO's ``maxDets=100``) — and per class
the count of ground-truth boxes. Two tallies merge by concatenation (:meth:`DetectionTally.merge`):
the precision/recall curve needs every score in order, which no fixed-size sum can hold exactly.

The conventions are COCO's: boxes are compared as ``[x, y, w, h]`` with IoU computed in float64
the way ``maskApi.c`` does; a detection matches the unmatched ground truth of its class with the
highest IoU >= the threshold (the later one on ties); precision is made monotone and read at 101
recall points; a class with no ground truth in the data is left out of the means (even if it has
detections), and AP is the mean over classes and thresholds.
"""

from __future__ import annotations

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1)  # COCO's, value for value
RECALL_POINTS = np.linspace(0.0, 1.0, round((1.0 - 0.0) / 0.01) + 1)


def xyxy_to_xywh(boxes) -> np.ndarray:
    """``[x0, y0, x1, y1]`` -> ``[x0, y0, w, h]`` in float64 ``(N, 4)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_iou(detections: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """IoU ``(D, G)`` of ``[x, y, w, h]`` boxes, operation for operation as pycocotools' ``bbIou``."""
    d, g = detections[:, None, :], truths[None, :, :]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def match_image(
    det_boxes,
    det_scores,
    det_labels,
    gt_boxes,
    gt_labels,
    iou_thresholds=IOU_THRESHOLDS,
    max_per_class: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO's matching of one image's detections to its ground truth.

    Args:
        det_boxes: ``(D, 4)`` detections ``[x, y, w, h]``; det_scores ``(D,)``; det_labels ``(D,)`` ints.
        gt_boxes: ``(G, 4)`` ground truth ``[x, y, w, h]``; gt_labels ``(G,)`` ints.

    Returns:
        ``labels (D',)``, ``scores (D',)`` and ``matched (D', T)`` (bool: a true positive at each
        threshold) of the detections kept: per class the ``max_per_class`` best scores, in order of
        decreasing score (a stable sort: equal scores keep their given order).
    """
    det_boxes, gt_boxes = (
        np.asarray(det_boxes, np.float64).reshape(-1, 4),
        np.asarray(gt_boxes, np.float64).reshape(-1, 4),
    )
    det_scores, det_labels = (
        np.asarray(det_scores, np.float64).reshape(-1),
        np.asarray(det_labels, np.int64).reshape(-1),
    )
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    out_labels, out_scores, out_matched = [], [], []
    for label in np.unique(det_labels):
        ids = np.flatnonzero(det_labels == label)
        ids = ids[np.argsort(-det_scores[ids], kind="mergesort")][:max_per_class]
        truths = gt_boxes[gt_labels == label]
        ious = coco_iou(det_boxes[ids], truths)
        matched = np.zeros((len(ids), len(iou_thresholds)), dtype=bool)
        taken = np.zeros((len(iou_thresholds), len(truths)), dtype=bool)  # per threshold
        floor = np.minimum(np.asarray(iou_thresholds), 1 - 1e-10)[:, None]
        for d in range(len(ids) if len(truths) else 0):  # best score first; all thresholds at once
            free = ~taken & (ious[d][None, :] >= floor)  # (T, G)
            # COCO keeps the highest IoU, the later truth on ties: argmax over the reversed row
            best = len(truths) - 1 - np.argmax(np.where(free, ious[d], -1.0)[:, ::-1], axis=1)
            hit = free.any(axis=1)
            taken[hit, best[hit]] = True
            matched[d, hit] = True
        out_labels.append(np.full(len(ids), label))
        out_scores.append(det_scores[ids])
        out_matched.append(matched)
    if not out_labels:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, len(iou_thresholds)), bool)
    return np.concatenate(out_labels), np.concatenate(out_scores), np.concatenate(out_matched)


class DetectionTally:
    """What COCO's AP needs from the images seen so far (see the module docstring).

    Args:
        num_classes: labels are ``0 .. num_classes - 1``.
    """

    def __init__(self, num_classes: int, iou_thresholds=IOU_THRESHOLDS, max_per_class: int = 100):
        self.num_classes = num_classes
        self.iou_thresholds = np.asarray(iou_thresholds, np.float64)
        self.max_per_class = max_per_class
        self.gt_counts = np.zeros(num_classes, np.int64)
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._matched: list[np.ndarray] = []

    def add_image(self, det_boxes, det_scores, det_labels, gt_boxes, gt_labels) -> None:
        """One image: detections and ground truth as ``[x0, y0, x1, y1]`` boxes with int labels.
        Images must be added in one fixed order for results to be reproducible to the last bit
        (equal scores are ranked in arrival order, as COCO ranks them in image-id order)."""
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
        self.gt_counts += np.bincount(gt_labels, minlength=self.num_classes)[: self.num_classes]
        labels, scores, matched = match_image(
            xyxy_to_xywh(det_boxes), det_scores, det_labels, xyxy_to_xywh(gt_boxes), gt_labels,
            self.iou_thresholds, self.max_per_class,
        )  # fmt: skip
        self._labels.append(labels)
        self._scores.append(scores)
        self._matched.append(matched)

    def merge(self, other: DetectionTally) -> None:
        """Add another tally's images after this one's (another process's share of the data)."""
        self.gt_counts += other.gt_counts
        self._labels += other._labels
        self._scores += other._scores
        self._matched += other._matched

    @property
    def num_detections(self) -> int:
        return sum(len(s) for s in self._scores)

    def compute(self) -> dict:
        """``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``mar_100`` and per-class AP; -1 where no
        class has ground truth (COCO's convention)."""
        t = len(self.iou_thresholds)
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        matched = np.concatenate(self._matched) if self._matched else np.zeros((0, t), bool)
        precision = -np.ones((t, len(RECALL_POINTS), self.num_classes))
        recall = -np.ones((t, self.num_classes))
        for k in range(self.num_classes):
            if self.gt_counts[k] == 0:
                continue
            ids = np.flatnonzero(labels == k)
            ids = ids[np.argsort(-scores[ids], kind="mergesort")]
            tp = np.cumsum(matched[ids], axis=0).astype(np.float64)  # (D, T)
            fp = np.cumsum(~matched[ids], axis=0).astype(np.float64)
            for i in range(t):
                precision[i, :, k], recall[i, k] = _interpolated(tp[:, i], fp[:, i], self.gt_counts[k])
        return summarize(precision, recall, self.iou_thresholds)


def _interpolated(tp: np.ndarray, fp: np.ndarray, positives: int) -> tuple[np.ndarray, float]:
    """Precision at the 101 recall points (COCO's monotone envelope) and the final recall."""
    rc = tp / positives
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision made non-increasing
    q = np.zeros(len(RECALL_POINTS))
    inds = np.searchsorted(rc, RECALL_POINTS, side="left")
    valid = inds < len(pr)
    q[valid] = pr[inds[valid]]
    return q, (float(rc[-1]) if len(rc) else 0.0)


def summarize(precision: np.ndarray, recall: np.ndarray, iou_thresholds) -> dict:
    """COCO's summary numbers from ``precision (T, R, K)`` and ``recall (T, K)`` (-1: no ground truth)."""

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    def at(threshold: float) -> np.ndarray:
        return precision[np.flatnonzero(np.asarray(iou_thresholds) == threshold)]

    per_class = []
    for k in range(precision.shape[2]):
        present = bool(recall[0, k] > -1)
        per_class.append({
            "ap": mean(precision[:, :, k]) if present else None,
            "ap_50": mean(at(0.5)[:, :, k]) if present else None,
            "recall": mean(recall[:, k]) if present else None,
        })  # fmt: skip
    return {
        "map": mean(precision),
        "map_50": mean(at(0.5)),
        "map_75": mean(at(0.75)),
        "mar_100": mean(recall),
        "per_class": per_class,
    }
