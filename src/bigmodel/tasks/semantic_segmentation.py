"""Semantic segmentation: a class for every pixel.

Records hold an image (``data.image``, default ``image``) and a mask (``data.label``, default
``mask``): a PNG file or an integer array ``(H, W)`` whose values are class ids, the size of its
image. Class names come from ``task.classes``, else from the reader (``records.class_names``), else
the ids found in the train masks name themselves ("0", "1", ...). Pixels equal to
``task.ignore_index`` (255 by default, as PASCAL VOC marks object borders) are unlabelled: they
count in neither the loss nor the metrics.

The model is a ``unet`` (a 1×1 head on its per-pixel features) or any backbone with feature maps
(cnn, resnet, ...) under a :class:`~bigmodel.models.unet.UNetDecoder` whose finest skip is a small
full-resolution conv stem on the image. Images and masks are resized to the task's size (masks by
nearest neighbour) and augmented together from the example RNG. The loss is per-pixel
cross-entropy summed over labelled pixels, and ``num_items`` counts labelled pixels, so every
labelled pixel weighs the same whatever its image and however many of its neighbours are
unlabelled (an image-count would make a half-ignored crop's pixels weigh double). The metric
streams a confusion matrix: mean IoU, per-class IoU, pixel accuracy and mean class accuracy.
``predict`` returns the class map at each input's own size with the fraction of pixels per class;
:func:`save_mask` writes one as a palette PNG.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from bigmodel.data.images import load_image
from bigmodel.data.records import Records
from bigmodel.data.transforms import color_jitter, resize
from bigmodel.errors import DataError, RecipeError
from bigmodel.models.unet import UNetDecoder, conv_block
from bigmodel.tasks.base import Metric
from bigmodel.tasks.image import ImageOptions, ImageTask

SEGMENTATION_METRICS = ("loss", "mean_iou", "pixel_accuracy", "mean_accuracy")
MAX_DECODER_WIDTH = 256  # default decoder widths follow the skips' widths up to this (resnet50's are 2048)
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")  # PIL modes that hold one integer per pixel


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
                f"maps (cnn, resnet, ...); '{family.name}' has neither."
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
        x, y = resize(image, size), None
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


class SegmentationModel(nn.Module):
    """A backbone and a 1×1 conv ``head`` giving per-pixel logits ``(B, classes, H, W)``.

    A per-pixel backbone (``unet``) is used as it is. Any other needs ``feature_maps(x)``: a
    :class:`UNetDecoder` climbs its maps, the finest skip being a two-conv ``stem`` on the image at
    full resolution (``stem_channels``; without one the logits are upsampled to the image's size).

    Args:
        backbone: the family built headless.
        num_classes: logits per pixel.
        in_channels: the image's channels (what the stem reads).
        decoder_channels: decoder widths, finest first (default: the skips', at most 256).
        stem_channels: width of the full-resolution stem; 0 = none.
        frozen: the backbone does not train (its BatchNorm statistics stay, too).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        in_channels: int,
        decoder_channels: list[int] | None = None,
        stem_channels: int = 16,
        frozen: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.stem = self.decoder = None
        if getattr(backbone, "per_pixel", False):
            width = backbone.feature_dim
        else:
            if stem_channels:
                self.stem = conv_block(in_channels, stem_channels, 2, 3, "batch", "relu")
            skips = ([stem_channels] if stem_channels else []) + list(backbone.feature_channels)
            widths = decoder_channels or [min(c, MAX_DECODER_WIDTH) for c in skips[:-1]]
            self.decoder = UNetDecoder(skips, widths)
            width = self.decoder.out_channels
        self.head = nn.Conv2d(width, num_classes, 1)
        self.frozen = frozen
        if frozen:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # keep BatchNorm's pretrained statistics and no dropout in the frozen part
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, C, H, W)`` -> logits ``(B, num_classes, H, W)``."""
        if self.decoder is None:
            features = self.backbone(x)  # (B, feature_dim, H, W)
        else:
            maps = self.backbone.feature_maps(x)  # finest first, at strides 1-4 and coarser
            if self.stem is not None:
                maps = [self.stem(x), *maps]
            features = self.decoder(maps)  # (B, widths[0], H_0, W_0)
        logits = self.head(features)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


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


# --- masks -----------------------------------------------------------------------------------------


def load_mask(value, where: str) -> np.ndarray:
    """A mask as class ids ``(H, W)`` int64.

    Args:
        value: a PNG (or other lossless image) path or its bytes, a ``PIL.Image`` with one integer per
            pixel (grey, palette — its indices are the ids — or 16-bit), or an integer/boolean array
            ``(H, W)`` (also ``(1, H, W)`` or ``(H, W, 1)``).
        where: how messages name it.
    """
    if isinstance(value, (str, Path)):
        try:
            value = Path(value).read_bytes()
        except FileNotFoundError:
            raise DataError(f"{where}: mask file not found: '{value}'.") from None
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{where}: cannot read '{value}': {getattr(exc, 'strerror', None) or exc}."
            ) from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = _decode_mask(bytes(value), where)
    if isinstance(value, Image.Image):
        if value.mode not in MASK_MODES:
            raise DataError(
                f"{where}: a {value.mode} image is not a mask; a mask holds one class id per pixel (a grey, "
                "palette or 16-bit PNG), not colours."
            )
        value = np.asarray(value)
    if not isinstance(value, (np.ndarray, torch.Tensor, list, tuple)):
        raise DataError(
            f"{where}: {type(value).__name__} is not a mask; give a PNG path, PNG bytes or an integer array "
            "(H, W)."
        )
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2 or min(array.shape) < 1:
        raise DataError(f"{where}: a mask must be an array (H, W) of class ids; got shape {array.shape}.")
    if array.dtype == np.bool_:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        floats = np.issubdtype(array.dtype, np.floating)
        if not (floats and np.isfinite(array).all() and (array == np.round(array)).all()):
            raise DataError(
                f"{where}: a mask holds whole class ids; found dtype {array.dtype} with other values."
            )
    if array.min() < 0:
        raise DataError(f"{where}: a mask holds class ids >= 0; found {int(array.min())}.")
    return array.astype(np.int64)


def _decode_mask(data: bytes, where: str) -> Image.Image:
    if not data:
        raise DataError(f"{where}: the mask is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now: a truncated file fails here, not mid-training
    except UnidentifiedImageError:
        raise DataError(f"{where}: the mask is not an image Pillow can decode; give a PNG.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{where}: the mask is too large to decode safely; refused.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: the mask image is damaged and cannot be decoded ({exc}).") from None
    return image


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids ``(H, W)`` -> ``(*size)`` long, by nearest neighbour (pixel centres: no half-pixel shift)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.long()
    resized = F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest-exact")
    return resized[0, 0].long()


def joint_random_crop(x: torch.Tensor, y: torch.Tensor, padding: int, ignore: int, rng: np.random.Generator):
    """Pad the image with zeros and the mask with ``ignore`` (unlabelled), then crop both back to their size
    at one random position."""
    h, w = y.shape
    x = F.pad(x, (padding,) * 4)
    y = F.pad(y, (padding,) * 4, value=ignore)
    top, left = int(rng.integers(0, 2 * padding + 1)), int(rng.integers(0, 2 * padding + 1))
    return x[:, top : top + h, left : left + w], y[top : top + h, left : left + w]


def joint_window(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], rng: np.random.Generator):
    """The same random ``size`` window of image and mask (no resizing)."""
    h, w = y.shape
    top, left = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
    return x[:, top : top + size[0], left : left + size[1]], y[top : top + size[0], left : left + size[1]]


def joint_resized_crop(x, y, size, rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """One random window (``scale`` of the area, aspect ``ratio`` log-uniform) of image and mask, resized
    back to ``size``: the image bilinearly, the mask by nearest neighbour. After 10 misses, unchanged."""
    h, w = y.shape
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        ch, cw = round((area / aspect) ** 0.5), round((area * aspect) ** 0.5)
        if 0 < ch <= h and 0 < cw <= w:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            window = (slice(top, top + ch), slice(left, left + cw))
            return resize(x[(slice(None), *window)], size), resize_mask(y[window], size)
    return x, y


def palette(n: int = 256) -> list[int]:
    """``n`` RGB colours, flat, as PASCAL VOC colours its class maps: class 0 black, and the bits of each
    id spread over the high bits of red, green and blue so that neighbouring ids differ clearly."""
    colours = []
    for i in range(n):
        r = g = b = 0
        for j in range(8):
            r |= ((i >> (3 * j)) & 1) << (7 - j)
            g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
            b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
        colours += [r, g, b]
    return colours


def mask_image(ids: np.ndarray, where: str = "mask") -> Image.Image:
    """Class ids ``(H, W)`` as a palette image: pixel values are the ids, colours from :func:`palette`."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise DataError(
            f"{where}: class ids {int(ids.min())}..{int(ids.max())} do not fit a palette PNG (0-255)."
        )
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    image.putpalette(palette())
    return image


def save_mask(prediction, path: str | Path) -> Path:
    """Write a class map as a palette PNG (pixel values are the class ids, so it reads back exactly).

    Args:
        prediction: one result of ``predict`` (its ``mask``), or a class map (image or ids ``(H, W)``).
        path: a ``.png`` file (its folder must exist).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(f"save_mask: '{path}' must end in .png (a palette PNG keeps the class ids exactly).")
    mask = prediction["mask"] if isinstance(prediction, dict) else prediction
    image = mask_image(load_mask(mask, "save_mask"), "save_mask")
    try:
        image.save(path, format="PNG")
    except OSError as exc:
        raise DataError(
            f"save_mask: cannot write '{path}': {getattr(exc, 'strerror', None) or exc}."
        ) from None
    return path
