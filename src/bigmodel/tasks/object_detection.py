"""Object detection: boxes with a category and a score, from a single-stage anchor-free detector.

Records hold an image, its ``boxes`` (a list of ``[x0, y0, x1, y1]`` pixel corners, ``x0 < x1``,
``y0 < y1``, inside the image; task option ``boxes_column``) and their ``labels`` (category names;
column ``data.label``, default ``labels``); a record may have no boxes. The model is a CenterNet-style
head trained the TTFNet way (``nn/detection.py``) on any image backbone with ``feature_maps`` (cnn,
resnet): a focal loss on per-class centre heatmaps plus a GIoU box loss, summed over images
(``num_items`` = images). Training images may be mirrored (boxes too) and colour-jittered.

Evaluation is COCO's (``evaluation/detection.py``): mAP@[.5:.95], mAP@.5, mAP@.75 and AR@100, equal
to pycocotools' on the same predictions. ``predict`` returns per image ``{"boxes": [{"label",
"score", "box": [x0, y0, x1, y1]}, ...]}`` in the input image's pixels, best first; :func:`draw`
draws them on the image.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.images import load_image
from bigmodel.data.records import Records
from bigmodel.data.transforms import color_jitter, resize
from bigmodel.data.values import class_name
from bigmodel.errors import DataError, RecipeError, did_you_mean
from bigmodel.evaluation.detection import DetectionTally
from bigmodel.nn.detection import DetectionModel, centernet_loss, decode, merge_mirrored, output_level
from bigmodel.tasks.base import Metric
from bigmodel.tasks.image import ImageOptions, ImageTask

METRICS = ("loss", "map", "map_50", "map_75", "mar_100")
BOX_DECIMALS = 2  # boxes are reported (and scored) to 1/100 pixel, scores to 6 decimals
SCORE_DECIMALS = 6


class DetectionAugment(BaseModel):
    """Training-time augmentation, drawn per image from the example RNG (never in evaluation)."""

    model_config = ConfigDict(extra="forbid")
    flip: bool = Field(True, description="mirror left-right (boxes too) with probability 1/2")
    color_jitter: float = Field(
        0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation factor range"
    )


class ObjectDetectionOptions(ImageOptions):
    boxes_column: str = Field("boxes", description="column of each image's [x0, y0, x1, y1] boxes")
    output_stride: int = Field(
        4, ge=1, description="the head reads the finest backbone map at least this coarse (CenterNet: 4)"
    )
    head_channels: int = Field(64, ge=1, description="width of the fused feature map and the head")
    freeze_backbone: bool = Field(
        False,
        description="train only the head (a pretrained backbone's weights and BatchNorm statistics stay)",
    )
    max_detections: int = Field(100, ge=1, description="detections kept per image (COCO scores 100)")
    nms_iou: float | None = Field(
        0.6, gt=0.0, le=1.0, description="class-aware NMS after peak picking (null: peaks only)"
    )
    flip_test: bool = Field(
        False, description="evaluate and predict on each image and its mirror image, outputs merged (2x cost)"
    )
    score_threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="predict returns boxes scoring at least this (evaluation keeps all)"
    )
    draw: bool = Field(
        False, description="predict also returns 'image': the input with its boxes drawn (a PIL image)"
    )
    augment: DetectionAugment = DetectionAugment()


class ObjectDetectionTask(ImageTask):
    """Boxes and categories of the objects in an image, over the categories of the training split."""

    name = "object_detection"
    Options = ObjectDetectionOptions
    predict_options = ("score_threshold", "draw", "max_detections", "nms_iou", "flip_test")
    metric_names = METRICS
    higher_is_better = {"loss": False, "map": True, "map_50": True, "map_75": True, "mar_100": True}
    state_types = {"image": dict, "categories": list}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.categories: list[str] = []
        self._index: dict[str, int] = {}

    @property
    def labels_column(self) -> str:
        return self.data.get("label") or "labels"

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        super().check(recipe, family)
        if not hasattr(family.model_cls, "feature_maps"):
            raise RecipeError(
                f"model.arch: task {self.name} reads a backbone's feature maps (feature_maps); "
                f"'{family.name}' has none. Use cnn or resnet."
            )
        if self.options.freeze_backbone and not recipe.model.pretrained:
            raise RecipeError(
                "task.freeze_backbone: only a pretrained backbone (model.pretrained) is worth freezing; a "
                "random one would never learn."
            )

    def fit(self, train: Records) -> None:
        self.require_image_column(train)
        for column, field in (
            (self.options.boxes_column, "task.boxes_column"),
            (self.labels_column, "data.label"),
        ):
            train.require(column, field)
        names = set()
        for i in range(len(train)):
            _, labels = self.annotations(train[i], f"{train.where} (train split), row {train.row_number(i)}")
            names.update(labels)
        if not names:
            raise DataError(f"{train.where} (train split): no image has a box; there is nothing to learn.")
        self._set_categories(sorted(names))
        self.fit_images(train)

    def _set_categories(self, names: list[str]) -> None:
        self.categories = list(names)
        self._index = {name: i for i, name in enumerate(self.categories)}

    def validate(self, records: Records, split: str) -> None:
        """Every image decodes with the task's channels; every box lies inside its image and every
        label is a category of the training split."""
        self.require_image_column(records)
        for i in range(len(records)):
            where = f"{records.where} ({split} split), row {records.row_number(i)}"
            example = records[i]
            image = load_image(example[self.image_column], where, self.image_spec["channels"])
            boxes, labels = self.annotations(example, where)
            self._check_inside(boxes, image.shape[1], image.shape[2], where)
            for label in labels:
                self._label_index(label, where)

    def _label_index(self, label: str, where: str) -> int:
        index = self._index.get(label)
        if index is None:
            raise DataError(
                f"{where}, column '{self.labels_column}': label {label!r} is not a category of the training "
                f"split. Known: {', '.join(self.categories)}.{did_you_mean(label, self.categories)}"
            )
        return index

    def _check_inside(self, boxes: np.ndarray, height: int, width: int, where: str) -> None:
        for j, box in enumerate(boxes.tolist()):
            x0, y0, x1, y1 = box
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise DataError(
                    f"{where}, column '{self.options.boxes_column}': box {j + 1} {box} is outside the "
                    f"{width}x{height} image; boxes must lie within [0, {width}] x [0, {height}]."
                )

    def annotations(self, example: Mapping, where: str) -> tuple[np.ndarray, list[str]]:
        """The example's boxes ``(M, 4)`` float64 and label names, checked: refused naming the row,
        the column and the box."""
        column, label_column = self.options.boxes_column, self.labels_column
        for name in (column, label_column):
            if name not in example:
                raise DataError(
                    f"{where}: no '{name}' column (the {'boxes' if name == column else 'labels'})."
                )
        boxes = _parsed_list(example[column], f"{where}, column '{column}'")
        labels = _parsed_list(example[label_column], f"{where}, column '{label_column}'")
        if len(boxes) != len(labels):
            raise DataError(
                f"{where}: {len(boxes)} box(es) in '{column}' but {len(labels)} label(s) in "
                f"'{label_column}'; "
                "give one label per box."
            )
        checked = np.zeros((len(boxes), 4))
        for j, box in enumerate(boxes):
            checked[j] = _box(box, f"{where}, column '{column}', box {j + 1}")
        names = []
        for j, label in enumerate(labels):
            name = (
                class_name(label)
                if isinstance(label, (str, int, np.integer)) and not isinstance(label, bool)
                else None
            )
            if name is None:
                raise DataError(
                    f"{where}, column '{label_column}': label {j + 1} is {label!r}; labels are category "
                    "names "
                    "(strings or integers)."
                )
            names.append(name)
        return checked, names

    def state(self) -> dict:
        return {**super().state(), "categories": self.categories}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        task._set_categories([str(c) for c in state["categories"]])
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        backbone = self.build_backbone(family, options, pretrained)
        level = output_level(self._strides(backbone), self.options.output_stride)
        options = self.options
        return DetectionModel(
            backbone, len(self.categories), level, options.head_channels, options.freeze_backbone
        )

    def _strides(self, backbone: nn.Module) -> list[float]:
        """Each feature map's stride, measured on a blank image of the task's size (in eval mode, so no
        BatchNorm statistic moves)."""
        size, channels = self.image_spec["size"], self.image_spec["channels"]
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            maps = backbone.feature_maps(torch.zeros(1, channels, *size))
        backbone.train(was_training)
        return [size[0] / m.shape[-2] for m in maps]

    # -- examples and batches -----------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        x = load_image(example[self.image_column], "example", self.image_spec["channels"])
        height, width = x.shape[1:]
        size = tuple(self.image_spec["size"])
        item = {"scale": (width / size[1], height / size[0]), "gt": None}
        if self.options.draw and rng is None:  # the input as it came, to draw the boxes on
            item["pixels"] = (x.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        x = resize(x, size, self.image_spec.get("interpolation", "bilinear"))  # the whole image: no crop
        if self.options.boxes_column in example and self.labels_column in example:
            boxes, names = self.annotations(example, "example")
            labels = np.array([self._label_index(name, "example") for name in names], np.int64)
            item["gt"] = (boxes, labels)  # in the image's own pixels, for the metric
            scaled = torch.as_tensor(boxes / [*item["scale"], *item["scale"]], dtype=torch.float32)
            if rng is not None and self.options.augment.flip and rng.random() < 0.5:
                x = x.flip(-1)
                scaled = torch.stack(
                    [size[1] - scaled[:, 2], scaled[:, 1], size[1] - scaled[:, 0], scaled[:, 3]], -1
                )
            item["boxes"], item["labels"] = scaled.reshape(-1, 4), torch.as_tensor(labels)
        if rng is not None:
            x = color_jitter(x, self.options.augment.color_jitter, rng)
        item["x"] = self.normalized(x)
        return item

    def collate(self, items: list[dict]) -> dict:
        batch = {
            "x": torch.stack([item["x"] for item in items]),
            "scale": np.array([item["scale"] for item in items], np.float64),
            "num_items": len(items),
        }
        if "pixels" in items[0]:
            batch["pixels"] = [item["pixels"] for item in items]
        if all(item["gt"] is not None for item in items):
            batch["boxes"] = [item["boxes"] for item in items]
            batch["labels"] = [item["labels"] for item in items]
            batch["gt"] = [item["gt"] for item in items]
        return batch

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        outputs = model(batch["x"])
        if self.options.flip_test and not model.training:
            outputs = merge_mirrored(outputs, model(batch["x"].flip(-1)))
        return outputs

    def check_outputs(self, outputs, batch: dict) -> None:
        k = len(self.categories)
        if not isinstance(outputs, dict) or not {"heatmap", "box"} <= set(outputs):
            raise DataError(
                f"the model must return a dict with 'heatmap' (B, {k}, h, w) and 'box' (B, 4, h, w); got "
                f"{type(outputs).__name__}."
            )
        if outputs["heatmap"].shape[1] != k:
            raise DataError(f"the model's heatmap has {outputs['heatmap'].shape[1]} channels; expected {k}.")

    def loss_from(self, outputs: dict, batch: dict) -> torch.Tensor:
        return centernet_loss(outputs, batch["boxes"], batch["labels"], tuple(batch["x"].shape[-2:])).sum()

    def metric(self) -> DetectionMetric:
        return DetectionMetric(self)

    def detections(self, outputs: dict, batch: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image ``(boxes (N, 4) float64 xyxy in the image's own pixels, scores (N,), labels (N,))``,
        rounded as ``predict`` reports them, so the metric scores exactly what a user receives."""
        found = decode(
            outputs, tuple(batch["x"].shape[-2:]), self.options.max_detections, self.options.nms_iou
        )
        out = []
        for (boxes, scores, labels), (sx, sy) in zip(found, batch["scale"], strict=True):
            boxes = boxes.detach().cpu().double().numpy() * np.array([sx, sy, sx, sy])
            scores = scores.detach().cpu().double().numpy()
            out.append(
                (np.round(boxes, BOX_DECIMALS), np.round(scores, SCORE_DECIMALS), labels.cpu().numpy())
            )
        return out

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """Images as :meth:`ImageTask.parse` reads them; boxes and labels in the records are ignored."""
        ignored = {self.options.boxes_column, self.labels_column}
        return [{k: v for k, v in record.items() if k not in ignored} for record in super().parse(raw)]

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        results = []
        for i, (boxes, scores, labels) in enumerate(self.detections(self.forward(model, batch), batch)):
            keep = scores >= self.options.score_threshold
            found = zip(boxes[keep].tolist(), scores[keep].tolist(), labels[keep].tolist(), strict=True)
            results.append({"boxes": [{"label": self.categories[label], "score": score, "box": box}
                                      for box, score, label in found]})  # fmt: skip
            if "pixels" in batch:
                results[-1]["image"] = draw(batch["pixels"][i], results[-1])
        return results


class DetectionMetric(Metric):
    """Summed loss and image count (sums), and a :class:`DetectionTally` of the matched detections
    (at most 100 per class per image; merged by concatenation, see ``evaluation/detection.py``)."""

    def __init__(self, task: ObjectDetectionTask):
        super().__init__()
        self.task = task
        self.tally = DetectionTally(len(task.categories))

    def update(self, outputs: dict, batch: dict) -> None:
        self.count_non_finite(torch.cat([outputs[k].detach().flatten(1) for k in ("heatmap", "box")], 1))
        self.add("items", torch.tensor(batch["num_items"]))
        self.add("loss", self.task.loss_from(outputs, batch).float())
        found = self.task.detections(outputs, batch)
        for (boxes, scores, labels), (gt_boxes, gt_labels) in zip(found, batch["gt"], strict=True):
            self.tally.add_image(boxes, scores, labels, gt_boxes, gt_labels)

    def compute(self) -> dict:
        self.check_finite()
        scores = self.tally.compute()
        per_class = [
            {"class": name, **row, "support": int(count), "absent": bool(count == 0)}
            for name, row, count in zip(
                self.task.categories, scores.pop("per_class"), self.tally.gt_counts, strict=True
            )
        ]
        items = max(float(self.sums.get("items", torch.tensor(0.0))), 1.0)
        loss = float(self.sums.get("loss", torch.tensor(0.0))) / items
        images, detections = int(items), self.tally.num_detections
        return {"loss": loss, **scores, "images": images, "detections": detections, "per_class": per_class}


# --- helpers -------------------------------------------------------------------------------------------


def _parsed_list(value, where: str) -> list:
    """A list cell: a list/tuple/array, or its JSON text (as a CSV file holds it)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: {value[:60]!r} is neither a list nor its JSON text.") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: expected a list, got {type(value).__name__} {value!r:.60}.")
    return list(value)


def _box(box, where: str) -> list[float]:
    """One ``[x0, y0, x1, y1]`` box as floats, refused unless four finite numbers with x0 < x1, y0 < y1."""
    if isinstance(box, np.ndarray):
        box = box.tolist()
    if (
        not isinstance(box, (list, tuple)) or len(box) != 4
        or not all(isinstance(v, (int, float, np.integer, np.floating)) for v in box)
        or any(isinstance(v, (bool, np.bool_)) for v in box)
    ):  # fmt: skip
        raise DataError(f"{where}: {box!r:.80} is not [x0, y0, x1, y1] (four numbers).")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not np.isfinite([x0, y0, x1, y1]).all():
        raise DataError(f"{where}: {box!r} holds NaN or inf.")
    if x1 <= x0 or y1 <= y0:
        axis = "x1 <= x0" if x1 <= x0 else "y1 <= y0"
        raise DataError(
            f"{where}: {[x0, y0, x1, y1]} has {axis}; boxes are [x0, y0, x1, y1] corners with x0 < x1 and "
            "y0 < y1."
        )
    return [x0, y0, x1, y1]


PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # fmt: skip


def draw(image, prediction: Mapping, min_score: float = 0.0, width: int = 2) -> Image.Image:
    """The image (a path, bytes, PIL image or array, as ``predict`` takes) as an RGB ``PIL.Image`` with
    ``prediction``'s boxes drawn on it, each labelled ``label score``; one colour per label."""
    pixels = load_image(image, "draw: image").clamp(0, 1).expand(3, -1, -1)  # grey drawn as RGB
    canvas = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    if not isinstance(prediction, Mapping) or not isinstance(prediction.get("boxes"), list):
        raise DataError(
            "draw: prediction must be one result of predict: {'boxes': [{label, score, box}, ...]}."
        )
    pen = ImageDraw.Draw(canvas)
    for found in sorted(prediction["boxes"], key=lambda b: b["score"]):  # best drawn last, on top
        if found["score"] < min_score:
            continue
        colour = PALETTE[zlib.crc32(str(found["label"]).encode()) % len(PALETTE)]  # same label, same colour
        x0, y0, x1, y1 = found["box"]
        pen.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
        text = f"{found['label']} {found['score']:.2f}"
        left, top, right, bottom = pen.textbbox((x0, y0), text)
        pen.rectangle([left, top, right, bottom], fill=colour)
        pen.text((x0, y0), text, fill=(0, 0, 0))
    return canvas
