"""Boxes in pure torch: conversions, areas, IoU, clipping and non-maximum suppression.

Boxes are ``(N, 4)`` tensors. ``xyxy`` = ``[x0, y0, x1, y1]`` (corners; ``x1 - x0`` is the width, as in
COCO and torchvision), ``xywh`` = ``[x0, y0, width, height]`` (COCO's annotation layout), ``cxcywh`` =
``[centre x, centre y, width, height]``. A box with ``x1 <= x0`` or ``y1 <= y0`` is empty: area 0 and
IoU 0 with everything (never NaN).

NMS follows torchvision's semantics: boxes are visited by decreasing score and a box is dropped when
its IoU with a box already kept is *greater* than the threshold; the kept indices come back sorted by
decreasing score. Equal scores keep the lower index first (a stable sort), so the result is
deterministic where torchvision's is not specified.
"""

from __future__ import annotations

import torch

FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(boxes: torch.Tensor, source: str, target: str) -> torch.Tensor:
    """``boxes (N, 4)`` from one layout of :data:`FORMATS` to another."""
    for name in (source, target):
        if name not in FORMATS:
            raise ValueError(f"box format {name!r} is not one of {list(FORMATS)}")
    if source == target:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if source == "xywh":
        xyxy = (a, b, a + c, b + d)
    elif source == "cxcywh":
        xyxy = (a - c / 2, b - d / 2, a + c / 2, b + d / 2)
    else:
        xyxy = (a, b, c, d)
    x0, y0, x1, y1 = xyxy
    if target == "xyxy":
        return torch.stack(xyxy, -1)
    if target == "xywh":
        return torch.stack((x0, y0, x1 - x0, y1 - y0), -1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas ``(N,)`` of ``xyxy`` boxes; empty boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union ``(N, M)`` of ``xyxy`` boxes ``a (N, 4)`` and ``b (M, 4)``; 0 where the
    union is empty."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(
        union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), torch.zeros_like(inter)
    )


def paired_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of aligned ``xyxy`` boxes ``a[i]``, ``b[i]`` ``(N,)``:
    IoU minus the share of the smallest enclosing box that neither covers; in [-1, 1]."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(a) + box_area(b) - inter
    enclosing_wh = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp_min(0)
    enclosing = enclosing_wh[:, 0] * enclosing_wh[:, 1]
    tiny = torch.finfo(inter.dtype).tiny
    iou = torch.where(union > 0, inter / union.clamp_min(tiny), torch.zeros_like(inter))
    return iou - torch.where(
        enclosing > 0, (enclosing - union) / enclosing.clamp_min(tiny), torch.zeros_like(inter)
    )


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """``xyxy`` boxes clipped to the image ``[0, width] x [0, height]``."""
    x = boxes[:, 0::2].clamp(0, width)
    y = boxes[:, 1::2].clamp(0, height)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), -1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of ``xyxy`` boxes ``(N, 4)`` with ``scores (N,)``: the indices
    kept ``(K,)`` (int64), by decreasing score. O(N²) memory: meant for the few hundred candidates a
    detector's top-k leaves, not for millions of boxes."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    over = box_iou(boxes[order], boxes[order]) > iou_threshold  # (N, N) in score order
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):  # plain Python over a bool list: N is small, each step is O(N)
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """:func:`nms` within each group (class-aware NMS: boxes of different ``groups (N,)`` never
    suppress each other): the indices kept, by decreasing score (ties: lower index first)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = [idx[nms(boxes[idx], scores[idx], iou_threshold)] for idx in _group_indices(groups)]
    keep = torch.cat(kept)
    keep = keep.sort().values  # index order first, so the stable sort below breaks ties by index
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def _group_indices(groups: torch.Tensor) -> list[torch.Tensor]:
    return [torch.nonzero(groups == g).flatten() for g in torch.unique(groups)]
