"""A single-stage, anchor-free detector head: CenterNet's object-as-a-peak heatmap (Zhou et al. 2019,
"Objects as Points") trained the TTFNet way (Liu et al. 2019, "Training-Time-Friendly Network"),
which converges several times faster — what a CPU budget needs.

The head reads a backbone's ``feature_maps`` (finest first), fuses them top-down onto the finest map
it is given (a small FPN: 1x1 laterals, nearest upsampling, sum, 3x3 conv) and predicts, per cell
of that map (stride ``s``):

* ``heatmap (B, K, h, w)``: logits of "an object of class k is centred in this cell";
* ``box (B, 4, h, w)``: the log of the distances from the cell's centre point
  ``((col + 0.5) s, (row + 0.5) s)`` to the box's left, top, right and bottom edges, in strides.

Training targets: per class, the maximum of the objects' elliptical Gaussians (sigma = 0.54 * side /
6), exactly 1 at the cell holding the box centre, under CenterNet's penalty-reduced focal loss; the
box is regressed with the GIoU loss at every cell of a smaller Gaussian area around the centre
inside the box, weighted by the Gaussian (normalised per object), the smaller object owning a cell
two objects share. Each image's loss is divided by its object count (the caller sums over images).

Decoding keeps the heatmap's local maxima (3x3 max-pool), the top-k over all classes, their boxes
clipped to the image, then optionally class-aware NMS.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.nn.boxes import batched_nms, clip_boxes, paired_giou
from bigmodel.nn.conv import ConvNormAct

PRIOR = 0.1  # initial heatmap probability (the bias of its last conv), as CenterNet: a stable focal loss
HEAT_ALPHA = 0.54  # heatmap Gaussian: sigma = alpha * side / 6 (TTFNet)
BOX_BETA = 0.54  # the regression area's Gaussian, the same shape (TTFNet's beta)
BOX_AREA_MIN = 0.1  # cells whose regression Gaussian is below this (of its peak) are not regressed
BOX_WEIGHT = 5.0  # GIoU loss weight (TTFNet)
LOG_DISTANCE_MAX = 8.0  # exp() of the box head is clamped here: never inf


class CenterNetHead(nn.Module):
    """Fuse feature maps onto the finest one given, then predict the heatmap and the box distances.

    Args:
        in_channels: channels of each backbone map the head reads (finest first).
        num_classes: heatmap channels.
        channels: width of the fused map and of each branch.
    """

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 64):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = ConvNormAct(channels, channels, 3)
        self.heatmap = _branch(channels, num_classes)
        self.box = _branch(channels, 4)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.laterals[-1](maps[-1])
        for lateral, skip in zip(reversed(self.laterals[:-1]), reversed(maps[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest") + lateral(skip)
        x = self.fuse(x)
        return {"heatmap": self.heatmap(x), "box": self.box(x)}


def _branch(channels: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, outputs, 1)
    )


class DetectionModel(nn.Module):
    """``backbone.feature_maps(x)[level:]`` -> :class:`CenterNetHead`.

    Args:
        backbone: a headless image model with ``feature_maps`` and ``feature_channels``.
        num_classes: object categories.
        level: the first (finest) feature map the head reads; its stride is the output stride.
        channels: the head's width.
        frozen: train the head only: the backbone's weights and BatchNorm statistics stay as loaded
            (a pretrained feature extractor), and no gradient is computed through it.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, level: int, channels: int = 64, frozen: bool = False
    ):
        super().__init__()
        self.backbone = backbone
        self.level = level
        self.frozen = frozen
        self.head = CenterNetHead(list(backbone.feature_channels)[level:], num_classes, channels)
        if frozen:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x (B, C, H, W)`` -> ``heatmap (B, K, h, w)`` logits and ``box (B, 4, h, w)`` log-distances."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            maps = self.backbone.feature_maps(x)[self.level :]
        return self.head(maps)


def output_level(strides: list[float], stride: float) -> int:
    """The finest map whose stride is at least ``stride`` (else the coarsest)."""
    for i, s in enumerate(strides):
        if s >= stride - 1e-6:
            return i
    return len(strides) - 1


# --- geometry shared by training and decoding ---------------------------------------------------------


def cell_points(h: int, w: int, stride_x: float, stride_y: float, device=None) -> torch.Tensor:
    """``(h * w, 2)``: the centre point ``(x, y)`` of every cell, in input pixels, row by row."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride_y
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride_x
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)


def distances_to_boxes(log_distances: torch.Tensor, points: torch.Tensor, stride_x: float, stride_y: float):
    """``(..., 4)`` log-distances (left, top, right, bottom, in strides) at ``points (..., 2)`` ->
    ``xyxy`` boxes in input pixels."""
    d = log_distances.float().clamp(max=LOG_DISTANCE_MAX).exp()
    scale = torch.tensor([stride_x, stride_y, stride_x, stride_y], device=d.device)
    d = d * scale
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - d[..., 0], y - d[..., 1], x + d[..., 2], y + d[..., 3]], -1)


def _gaussians(box: torch.Tensor, h: int, w: int, stride_x: float, stride_y: float, shape: float):
    """``(N, h * w)`` elliptical Gaussians centred on each box's centre cell, sigma = shape * side / 6."""
    ys = torch.arange(h, device=box.device, dtype=torch.float32)
    xs = torch.arange(w, device=box.device, dtype=torch.float32)
    cx = ((box[:, 0] + box[:, 2]) / 2 / stride_x).floor().clamp(0, w - 1)
    cy = ((box[:, 1] + box[:, 3]) / 2 / stride_y).floor().clamp(0, h - 1)
    sigma_x = (shape * (box[:, 2] - box[:, 0]) / stride_x / 6).clamp_min(0.25)
    sigma_y = (shape * (box[:, 3] - box[:, 1]) / stride_y / 6).clamp_min(0.25)
    gx = ((xs[None, :] - cx[:, None]) ** 2) / (2 * sigma_x[:, None] ** 2)  # (N, w)
    gy = ((ys[None, :] - cy[:, None]) ** 2) / (2 * sigma_y[:, None] ** 2)  # (N, h)
    return torch.exp(-(gy[:, :, None] + gx[:, None, :])).reshape(len(box), h * w)


# --- training targets and loss -----------------------------------------------------------------------


def heatmap_target(
    box: torch.Tensor, channel: torch.Tensor, channels: int, h: int, w: int, stride_x: float, stride_y: float
) -> torch.Tensor:
    """``(channels, h, w)``: per channel the maximum of its objects' Gaussians, exactly 1 at each
    centre cell. ``box (N, 4)`` xyxy in input pixels; ``channel (N,)`` the map each box is drawn on."""
    target = torch.zeros(channels, h * w, device=box.device)
    if len(box):
        peaks = _gaussians(box, h, w, stride_x, stride_y, HEAT_ALPHA)
        target.scatter_reduce_(0, channel.long()[:, None].expand(-1, h * w), peaks, reduce="amax")
    return target.view(channels, h, w)


def centernet_loss(
    outputs: dict[str, torch.Tensor], boxes: list[torch.Tensor], labels: list[torch.Tensor], input_size
) -> torch.Tensor:
    """Per-image losses ``(B,)``: the focal heatmap loss plus the weighted GIoU box loss, over the
    image's object count (an image without objects: its heatmap's negatives only).

    Args:
        outputs: the head's outputs for a batch.
        boxes: per image ``(M_i, 4)`` ``xyxy`` boxes in input pixels; labels: per image ``(M_i,)``.
        input_size: ``(H, W)`` of the input images.
    """
    heat_logits = outputs["heatmap"].float()
    b, k, h, w = heat_logits.shape
    stride_y, stride_x = input_size[0] / h, input_size[1] / w
    device = heat_logits.device
    counts = torch.tensor([len(x) for x in boxes], device=device)
    image = torch.repeat_interleave(torch.arange(b, device=device), counts)  # (N,) each box's image
    box = torch.cat([x.reshape(-1, 4) for x in boxes]).float().to(device)
    label = torch.cat([x.reshape(-1) for x in labels]).long().to(device)
    target = heatmap_target(box, image * k + label, b * k, h, w, stride_x, stride_y).view(b, k, h, w)
    loss = focal_loss(heat_logits, target).sum(dim=(1, 2, 3))  # (B,)
    if len(box):
        loss = loss + BOX_WEIGHT * _box_loss(outputs["box"], box, image, b, stride_x, stride_y)
    return loss / counts.clamp_min(1)


def _box_loss(log_distances, box, image, b: int, stride_x: float, stride_y: float) -> torch.Tensor:
    """Per image ``(B,)``: GIoU loss summed over objects, each object's cells weighted to sum to 1."""
    h, w = log_distances.shape[-2:]
    points = cell_points(h, w, stride_x, stride_y, box.device)  # (h*w, 2)
    weight = _gaussians(box, h, w, stride_x, stride_y, BOX_BETA)  # (N, h*w)
    inside = (points[None, :, 0] > box[:, None, 0]) & (points[None, :, 0] < box[:, None, 2])
    inside &= (points[None, :, 1] > box[:, None, 1]) & (points[None, :, 1] < box[:, None, 3])
    weight = torch.where(inside & (weight >= BOX_AREA_MIN), weight, torch.zeros_like(weight))
    centre = ((box[:, 1] + box[:, 3]) / 2 / stride_y).floor().clamp(0, h - 1) * w
    centre = (centre + ((box[:, 0] + box[:, 2]) / 2 / stride_x).floor().clamp(0, w - 1)).long()
    weight[torch.arange(len(box)), centre] = weight[torch.arange(len(box)), centre].clamp_min(
        1.0
    )  # never empty
    # A cell two objects of one image claim belongs to the smaller one.
    area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[:, None].expand(-1, h * w)
    claim = torch.where(weight > 0, area, torch.full_like(area, float("inf")))
    smallest = torch.full((b, h * w), float("inf"), device=box.device)
    smallest.scatter_reduce_(0, image[:, None].expand(-1, h * w), claim, reduce="amin")
    weight = torch.where(claim <= smallest[image], weight, torch.zeros_like(weight))
    obj, cell = torch.nonzero(weight, as_tuple=True)
    share = weight[obj, cell] / weight.sum(1)[obj]
    predicted = log_distances.flatten(2)[image[obj], :, cell]  # (P, 4)
    giou = paired_giou(distances_to_boxes(predicted, points[cell], stride_x, stride_y), box[obj])
    return torch.zeros(b, device=box.device).index_add(0, image[obj], share * (1 - giou))


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4) per element (the caller sums)."""
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos = -((1 - p) ** 2) * log_p
    neg = -((1 - target) ** 4) * p**2 * log_not_p
    return torch.where(target >= 1.0, pos, neg)


# --- decoding ------------------------------------------------------------------------------------------


def merge_mirrored(
    outputs: dict[str, torch.Tensor], mirrored: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Test-time flip: the outputs for an image and for its mirror image merged into one set —
    heatmap probabilities averaged (returned as logits), box log-distances averaged with the mirror's
    left and right swapped. Cell ``c`` of the mirror is cell ``w - 1 - c`` of the image, whose centre
    point ``(c + 0.5) W / w`` mirrors exactly."""
    heat = (outputs["heatmap"].float().sigmoid() + mirrored["heatmap"].float().flip(-1).sigmoid()) / 2
    box = (outputs["box"].float() + mirrored["box"].float().flip(-1)[:, [2, 1, 0, 3]]) / 2
    return {"heatmap": torch.logit(heat, eps=1e-6), "box": box}


@torch.no_grad()
def decode(
    outputs: dict[str, torch.Tensor], input_size, max_detections: int = 100, nms_iou: float | None = None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image ``(boxes (N, 4) xyxy in input pixels, scores (N,), labels (N,))``, by decreasing score.

    The heatmap's 3x3 local maxima, the ``max_detections`` best over all classes, their boxes clipped
    to the image, then class-aware NMS at ``nms_iou`` (None: none).
    """
    heat = outputs["heatmap"].float().sigmoid()
    b, k, h, w = heat.shape
    stride_y, stride_x = input_size[0] / h, input_size[1] / w
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = peaks.flatten(1).topk(min(max_detections, k * h * w), dim=1)  # (B, top)
    label, cell = index // (h * w), index % (h * w)
    log_distances = outputs["box"].flatten(2).gather(2, cell[:, None, :].expand(-1, 4, -1)).transpose(1, 2)
    points = cell_points(h, w, stride_x, stride_y, heat.device)[cell]  # (B, top, 2)
    boxes = distances_to_boxes(log_distances, points, stride_x, stride_y)
    results = []
    for i in range(b):
        box = clip_boxes(boxes[i], input_size[0], input_size[1])
        keep = scores[i] > 0  # a zero score is no peak at all
        box, score, cls = box[keep], scores[i][keep], label[i][keep]
        if nms_iou is not None:
            kept = batched_nms(box, score, cls, nms_iou)
            box, score, cls = box[kept], score[kept], cls[kept]
        results.append((box, score, cls))
    return results
