"""Semantic segmentation: a class for every pixel.

Records hold an image (``data.image``, default ``image``) and a mask (``data.label``, default
``mask``): a PNG file or an integer array ``(H, W)`` whose values are class ids, the size of its
image (``data/masks.py`` reads, resizes, augments and writes masks). Class names come from
``task.classes``, else from the reader (``records.class_names``), else the ids found in the train
masks name themselves ("0", "1", ...). Pixels equal to ``task.ignore_index`` (255 by default, as
PASCAL VOC marks object borders) are unlabelled: they count in neither the loss nor the metrics.

The model is a ``unet`` (a 1×1 head on its per-pixel features) or any backbone with feature maps
(cnn, resnet, efficientnet, mobilenet_v2 — the last two with their ImageNet weights through
``model.pretrained``, frozen with ``task.freeze_backbone``) under a
:class:`~bigmodel.models.unet.UNetDecoder` whose finest skip is a small full-resolution conv stem on
the image, so the logits are computed at the image's own size although a pretrained encoder's
finest map is at stride 2. Images keep the data's size (``task.image_size`` changes it), also with a
pretrained encoder: it reads any size, and a checkpoint's centre crop would cut the masks; its
normalisation is kept. Images and masks are resized to the task's size (masks by nearest neighbour)
and augmented together from the example RNG. The loss is per-pixel cross-entropy summed over
labelled pixels, and ``num_items`` counts labelled pixels, so every labelled pixel weighs the same
whatever its image and however many of its neighbours are unlabelled (an image-count would make a
half-ignored crop's pixels weigh double). The metric streams a confusion matrix: mean IoU, per-class
IoU, pixel accuracy and mean class accuracy. ``predict`` returns the class map at each input's own
size with the fraction of pixels per class; :func:`~bigmodel.data.masks.save_mask` writes one as a
palette PNG.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from bigmodel.data.images import load_image
from bigmodel.data.masks import (  # noqa: F401 (save_mask: where users of the task look for it)
    joint_random_crop,
    joint_resized_crop,
    joint_window,
    load_mask,
    mask_image,
    resize_mask,
    save_mask,
)
from bigmodel.data.records import Records
from bigmodel.data.transforms import color_jitter, resize
from bigmodel.errors import DataError, RecipeError
from bigmodel.models.unet import MAX_DECODER_WIDTH, SegmentationModel
from bigmodel.tasks.base import Metric
from bigmodel.tasks.image import ImageOptions, ImageTask

SEGMENTATION_METRICS = ("loss", "mean_iou", "pixel_accuracy", "mean_accuracy")


class SegmentationAugment(BaseModel):
    """Training-time augmentation of image and mask together, drawn per example from the example RNG."""

    model_config = ConfigDict(extra="forbid")
    flip: bool = Field(False, description="mirror left-right with probability 1/2")
    vertical_flip: bool = Field(
        False, description="mirror top-bottom with probability 1/2 (microscopy, aerial)"
    )
    rotate90: bool = Field(False, description="rotate by a random multiple of 90 degrees (square images)")
    crop_padding: int = Field(
        0,
        ge=0,
        description="pad each side, then crop back at a random position; padded pixels are unlabelled",
    )
    crop_size: int | None = Field(
        None,
        ge=1,
        description="train on random square windows of this side (cheaper steps); evaluation and "
        "prediction see whole images, which a convolutional model reads at any size",
    )
    resized_crop: bool = Field(
        False, description="a random window of 35-100 % of the area, resized to the training size"
    )
    color_jitter: float = Field(
        0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation (image only)"
    )


class SemanticSegmentationOptions(ImageOptions):
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="height and width every image and its mask are resized to (one int: square); default: "
        "the first training image's, with a pretrained encoder too (it reads any size)",
    )
    classes: list[str] | None = Field(
        None,
        description="class names by id (0 first); default: the reader's, else the ids in the train masks",
    )
    ignore_index: int | None = Field(
        255,
        ge=0,
        description="mask value of unlabelled pixels (no loss, no metric); null: every id is a class",
    )
    augment: SegmentationAugment = SegmentationAugment()
    decoder_channels: list[int] | None = Field(
        None,
        description="backbones with feature maps: decoder widths, finest level first (one per skip: the stem "
        f"and every feature map but the coarsest); default: each skip's width, at most {MAX_DECODER_WIDTH}",
    )
    stem_channels: int = Field(
        16, ge=0, description="backbones with feature maps: width of the full-resolution conv stem (0: none)"
    )
    freeze_backbone: bool = Field(
        False, description="train only the decoder and head (a pretrained backbone's weights stay)"
    )

    @field_validator("classes")
    @classmethod
    def _class_names(cls, value):
        if value is None:
            return value
        if len(value) < 2:
            raise ValueError("name at least 2 classes (background and something)")
        if any(not name.strip() for name in value) or len(set(value)) != len(value):
            raise ValueError("class names must be non-empty and unique")
        return value

    @field_validator("decoder_channels")
    @classmethod
    def _positive_widths(cls, value):
        if value is not None and (not value or min(value) < 1):
            raise ValueError("decoder widths must be a non-empty list of positive ints")
        return value


class SemanticSegmentationTask(ImageTask):
    """Per-pixel classification of images over a fixed list of classes."""

    name = "semantic_segmentation"
    Options = SemanticSegmentationOptions
    metric_names = SEGMENTATION_METRICS
    higher_is_better = {"loss": False, "mean_iou": True, "pixel_accuracy": True, "mean_accuracy": True}
    state_types = {"image": dict, "class_names": list}

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.class_names: list[str] = []

    @property
    def mask_column(self) -> str:
        return self.data.get("label") or "mask"

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        super().check(recipe, family)
        model_cls = family.model_cls
        if not (getattr(model_cls, "per_pixel", False) or hasattr(model_cls, "feature_maps")):
            raise RecipeError(
                f"model.arch: task {self.name} needs per-pixel outputs (unet) or a backbone with feature "
                f"maps (cnn, resnet, efficientnet, mobilenet_v2); '{family.name}' has neither."
            )
        per_pixel = getattr(model_cls, "per_pixel", False)
        for key in ("decoder_channels", "stem_channels"):
            if per_pixel and key in self.options.model_fields_set:
                raise RecipeError(
                    f"task.{key}: '{family.name}' has its own decoder; set its model options instead."
                )
        if self.options.freeze_backbone and not recipe.model.pretrained:
            raise RecipeError(
                "task.freeze_backbone: only a pretrained backbone (model.pretrained) is worth freezing; a "
                "random one would never learn."
            )
        if self.options.augment.crop_padding and self.options.ignore_index is None:
            raise RecipeError(
                "task.augment.crop_padding: padded pixels are unlabelled, which needs task.ignore_index."
            )

    def fit(self, train: Records) -> None:
        self.require_image_column(train)
        train.require(self.mask_column, "data.label")
        self.fit_images(train, self.pretrained)
        self.image_spec.pop("resize_shorter", None)  # whole images are resized: a crop would cut the masks
        names = self.options.classes or reader_class_names(train) or self._ids_as_names(train)
        self.class_names = [str(name) for name in names]
        ignore = self.options.ignore_index
        if ignore is not None and ignore < len(self.class_names):
            raise RecipeError(
                f"task.ignore_index: {ignore} is the id of class '{self.class_names[ignore]}'; give the "
                f"unlabelled value outside 0..{len(self.class_names) - 1}, or null."
            )
        height, width = self.image_spec["size"]
        aug = self.options.augment
        if aug.crop_size is not None and aug.crop_size > min(height, width):
            raise RecipeError(
                f"task.augment.crop_size: {aug.crop_size} is larger than the images ({height}x{width})."
            )
        if aug.crop_size is not None:
            height = width = aug.crop_size
        if aug.rotate90 and height != width:
            raise RecipeError(f"task.augment.rotate90: needs square images; the task's are {height}x{width}.")
        if aug.crop_padding >= min(height, width):
            raise RecipeError(
                f"task.augment.crop_padding: {aug.crop_padding} must be smaller than the images "
                f"({height}x{width}), or a crop could hold no labelled pixel."
            )

    def checkpoint_preprocessing(self, pretrained: str | None) -> dict:
        """A pretrained checkpoint's normalisation and interpolation, not its input size: images keep the
        data's size (or ``task.image_size``), since a convolutional encoder reads any size and the
        checkpoint's 224 would upsample 128-pixel scenes for nothing but cost."""
        wanted = dict(super().checkpoint_preprocessing(pretrained))
        wanted.pop("input_size", None)
        return wanted

    def _ids_as_names(self, train: Records) -> list[str]:
        """No names given: the ids found in the train masks, 0 to the largest, name themselves."""
        top = 0
        for i in range(len(train)):
            mask = load_mask(train[i][self.mask_column], self._where(train, "train", i))
            ids = np.unique(mask)
            ids = ids[ids != self.options.ignore_index] if self.options.ignore_index is not None else ids
            top = max(top, int(ids.max()) if ids.size else 0)
        if top < 1:
            raise DataError(
                f"{train.where} (train split), column '{self.mask_column}': every mask holds only class 0; "
                "segmentation needs at least 2 classes (name them with task.classes)."
            )
        return [str(i) for i in range(top + 1)]

    def validate(self, records: Records, split: str) -> None:
        """Every image decodes; every mask decodes, has its image's size and holds only known ids; a
        train mask has at least one labelled pixel (else it teaches nothing and a batch of such could
        hold no pixel to average the loss over)."""
        self.require_image_column(records)
        records.require(self.mask_column, "data.label")
        for i in range(len(records)):
            where = self._where(records, split, i)
            example = records[i]
            image = load_image(example[self.image_column], where, self.image_spec["channels"])
            mask = self._checked_mask(example[self.mask_column], tuple(image.shape[-2:]), where)
            if split == "train" and self.options.ignore_index is not None:
                if (mask == self.options.ignore_index).all():
                    raise DataError(
                        f"{where}, column '{self.mask_column}': every pixel is unlabelled "
                        f"({self.options.ignore_index}); leave the row out."
                    )

    def _where(self, records: Records, split: str, i: int) -> str:
        return f"{records.where} ({split} split), row {records.row_number(i)}"

    def _checked_mask(self, value, image_size: tuple[int, int], where: str) -> np.ndarray:
        """The mask as ids ``(H, W)``, refused naming ``where`` when its size or an id is wrong."""
        where = f"{where}, column '{self.mask_column}'"
        mask = load_mask(value, where)
        if mask.shape != image_size:
            raise DataError(
                f"{where}: the mask is {mask.shape[0]}x{mask.shape[1]} (height x width) but its image is "
                f"{image_size[0]}x{image_size[1]}; a mask has one class id per pixel of its image."
            )
        ignore, k = self.options.ignore_index, len(self.class_names)
        ids = np.unique(mask)
        bad = [int(v) for v in ids if v >= k and v != ignore]
        if bad:
            shown = ", ".join(f"{i} {name}" for i, name in enumerate(self.class_names[:10]))
            more = ", ..." if k > 10 else ""
            unlabelled = f"; {ignore} = unlabelled" if ignore is not None else ""
            raise DataError(
                f"{where}: class id {bad[0]} is not a class (ids: {shown}{more}{unlabelled}). Name every "
                "class with task.classes, or set task.ignore_index to the value of unlabelled pixels."
            )
        return mask

    def state(self) -> dict:
        return {**super().state(), "class_names": self.class_names}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        task.class_names = [str(name) for name in state["class_names"]]
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        backbone = self.build_backbone(family, options, pretrained)
        widths = self.options.decoder_channels
        if not getattr(backbone, "per_pixel", False):
            stem = self.options.stem_channels
            skips = ([stem] if stem else []) + list(backbone.feature_channels)
            if widths is not None and len(widths) != len(skips) - 1:
                raise RecipeError(
                    f"task.decoder_channels: {widths} has {len(widths)} widths; this backbone's decoder has "
                    f"{len(skips) - 1} levels (skips of {skips[:-1]} channels, finest first)."
                )
        return SegmentationModel(
            backbone, self.num_outputs, self.image_spec["channels"], widths, self.options.stem_channels,
            frozen=self.options.freeze_backbone,
        )  # fmt: skip

    # -- examples and batches -----------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        if self.image_column not in example:
            raise DataError(f"example: no '{self.image_column}' (the image column).")
        image = load_image(example[self.image_column], "example", self.image_spec["channels"])
        original = tuple(image.shape[-2:])
        size = tuple(self.image_spec["size"])
        x, y = resize(image, size, self.image_spec.get("interpolation", "bilinear")), None
        if example.get(self.mask_column) is not None:
            mask = self._checked_mask(example[self.mask_column], original, "example")
            y = resize_mask(torch.from_numpy(mask), size)
        if rng is not None and y is not None:
            x, y = self.augment(x, y, rng)
        return {"x": self.normalized(x), "y": y, "size": original}

    def augment(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        """Image ``(C, H, W)`` and mask ``(H, W)`` through the same geometric transforms."""
        aug = self.options.augment
        size = (aug.crop_size, aug.crop_size) if aug.crop_size else tuple(self.image_spec["size"])
        if aug.resized_crop:
            x, y = joint_resized_crop(x, y, size, rng)
        elif aug.crop_size:
            x, y = joint_window(x, y, size, rng)
        if aug.crop_padding:
            x, y = joint_random_crop(x, y, aug.crop_padding, self.options.ignore_index, rng)
        if aug.flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if aug.vertical_flip and rng.random() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        if aug.rotate90:
            k = int(rng.integers(0, 4))
            x, y = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(y, k, dims=(-2, -1))
        return color_jitter(x, aug.color_jitter, rng), y

    def collate(self, items: list[dict]) -> dict:
        batch = {"x": torch.stack([item["x"] for item in items]), "sizes": [item["size"] for item in items]}
        if all(item["y"] is not None for item in items):
            batch["y"] = torch.stack([item["y"] for item in items])
            # The loss averages over labelled pixels; at least 1, so a batch of wholly unlabelled windows
            # (crop_size on sparse labels) adds nothing to its window instead of dividing by zero.
            batch["num_items"] = max(int(self._labelled(batch["y"]).sum()), 1)
        else:
            batch["num_items"] = len(items)
        return batch

    def _labelled(self, y: torch.Tensor) -> torch.Tensor:
        ignore = self.options.ignore_index
        return torch.ones_like(y, dtype=torch.bool) if ignore is None else y != ignore

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["x"])  # (B, classes, H, W)

    def check_outputs(self, outputs, batch: dict) -> None:
        x = batch["x"]
        expected = (x.shape[0], self.num_outputs, *x.shape[-2:])
        if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != expected:
            shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise DataError(
                f"model: a segmentation model returns logits {expected} for this batch, got {shape}."
            )

    def loss_from(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        ignore = self.options.ignore_index
        return F.cross_entropy(
            logits.float(), batch["y"], ignore_index=-100 if ignore is None else ignore, reduction="sum"
        )

    def metric(self) -> SegmentationMetric:
        return SegmentationMetric(self)

    # -- prediction ---------------------------------------------------------------------------------

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        """Per image: ``mask``, the class map at the input's own size as a palette PIL image (pixel
        values are class ids: ``np.asarray(result["mask"])``; the CLI writes it as a PNG), ``size``
        ``[height, width]`` and the ``fractions`` of its pixels in each class."""
        logits = self.forward(model, batch).float()
        results = []
        for i, size in enumerate(batch["sizes"]):
            scores = logits[i : i + 1]
            if tuple(scores.shape[-2:]) != tuple(size):  # back to the input's size, smoothly
                scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
            classes = scores[0].argmax(0).cpu().numpy()
            counts = np.bincount(classes.ravel(), minlength=self.num_outputs)
            results.append({
                "mask": mask_image(classes),
                "size": [int(size[0]), int(size[1])],
                "fractions": {name: round(float(c) / classes.size, 6)
                              for name, c in zip(self.class_names, counts, strict=True)},
            })  # fmt: skip
        return results


def reader_class_names(records: Records) -> list[str] | None:
    """The class names a reader attached to its records: ``class_names`` (by id), or ``categories``
    (``builtin:scenes``: id k is ``categories[k - 1]``, 0 the background)."""
    names = getattr(records, "class_names", None)
    if names:
        return list(names)
    categories = getattr(records, "categories", None)
    return ["background", *categories] if categories else None


# --- metric ----------------------------------------------------------------------------------------


class SegmentationMetric(Metric):
    """A confusion matrix over labelled pixels, the summed loss and the pixel count: mergeable sums."""

    def __init__(self, task: SemanticSegmentationTask):
        super().__init__()
        self.task = task

    def update(self, logits: torch.Tensor, batch: dict) -> None:
        k = self.task.num_outputs
        self.count_non_finite(logits)
        y = batch["y"]
        labelled = self.task._labelled(y)
        pred = logits.argmax(1)
        self.add("confusion", torch.bincount(y[labelled] * k + pred[labelled], minlength=k * k).reshape(k, k))
        self.add("loss", self.task.loss_from(logits, batch).float())
        self.add("count", labelled.sum())

    def compute(self) -> dict:
        self.check_finite()
        count = float(self.sums["count"]) if "count" in self.sums else 0.0
        k = self.task.num_outputs
        confusion = (
            self.sums["confusion"].long().numpy() if "confusion" in self.sums else np.zeros((k, k), int)
        )
        loss = float(self.sums["loss"]) / count if count else 0.0
        return {"loss": loss, **segmentation_metrics(confusion, self.task.class_names)}


def segmentation_metrics(confusion: np.ndarray, class_names: list[str]) -> dict:
    """Mean IoU, pixel accuracy, mean class accuracy and a per-class table from a pixel confusion matrix
    (rows: true class, columns: predicted).

    IoU of a class = TP / (TP + FP + FN). Means run over the classes *present* (in the labels or the
    predictions: their union is not empty), as mmsegmentation's nan-mean does; mean accuracy (the
    mean of per-class recall) over the classes in the labels. ``per_class`` lists every class; one
    absent from both has ``"absent": true``. No pixels at all: every number is 0.
    """
    k = len(class_names)
    confusion = np.asarray(confusion, dtype=np.int64).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    union = support + predicted - tp
    iou = np.divide(tp, union, out=np.zeros(k), where=union > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    present, labelled = union > 0, support > 0
    return {
        "mean_iou": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / max(int(support.sum()), 1)),
        "mean_accuracy": float(recall[labelled].mean()) if labelled.any() else 0.0,
        "iou_classes": [name for name, p in zip(class_names, present, strict=True) if p],
        "per_class": [
            {
                "class": name,
                "iou": float(iou[i]),
                "accuracy": float(recall[i]),
                "pixels": int(support[i]),
                "predicted_pixels": int(predicted[i]),
                "absent": not bool(present[i]),
            }
            for i, name in enumerate(class_names)
        ],  # fmt: skip
        "confusion_matrix": confusion.tolist(),
    }
