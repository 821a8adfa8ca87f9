"""What image tasks share: the image column, the size and channels fitted on train, normalisation, a
backbone (from scratch or pretrained), and parsing what a user hands to ``predict``. Not a task."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from bigmodel.data.images import is_image_path, load_image
from bigmodel.data.records import Records
from bigmodel.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    normalize,
    resize,
    resize_shorter,
)
from bigmodel.errors import DataError, RecipeError, did_you_mean
from bigmodel.models.registry import build_config
from bigmodel.tasks.base import (
    ExportSignature,
    Task,
    batch_signature,
    clean_missing_labels,
    is_data_file,
    read_inputs,
    record_schema,
)

STATS_SAMPLE = 2000  # images the per-channel mean/std is measured on (evenly spaced over train)


class ImageOptions(BaseModel):
    """Options of every image task."""

    model_config = ConfigDict(extra="forbid")
    image_size: int | tuple[int, int] | None = Field(
        None,
        description="height and width every image is resized to (one int: square); default: the "
        "pretrained checkpoint's, else the first training image's",
    )
    channels: Literal[1, 3] | None = Field(
        None, description="1 (grey) or 3 (RGB); default: 3 for a pretrained model or colour images, else 1"
    )
    normalize: Literal["auto", "dataset", "imagenet", "none"] = Field(
        "auto",
        description="per-channel mean/std: the pretrained checkpoint's (auto with model.pretrained), "
        "the train split's (dataset; auto otherwise), ImageNet's, or none",
    )

    @field_validator("image_size")
    @classmethod
    def _positive(cls, value):
        sizes = (value,) if isinstance(value, int) else value or ()
        if any(s < 1 for s in sizes):
            raise ValueError("image sizes must be positive")
        return value


class ImageTask(Task):
    """A task whose examples hold an image (``data.image``, default column ``image``)."""

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.image_spec: dict = {}  # size (h, w), channels, mean, std: fitted on train or the checkpoint
        self._notes: list[str] = []

    @classmethod
    def from_recipe(cls, recipe):
        task = super().from_recipe(recipe)
        task.data["pretrained"] = recipe.model.pretrained  # whose preprocessing fit_images follows
        return task

    @property
    def pretrained(self) -> str | None:
        return self.data.get("pretrained")

    @property
    def image_column(self) -> str:
        return self.data.get("image") or "image"

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        if recipe.data.text is not None:
            raise RecipeError(f"data.text: task {self.name} reads images (data.image), not text.")
        fields = family.config_fields()
        if not {"input_shape", "in_channels"} & set(fields):
            raise RecipeError(
                f"model.arch: task {self.name} reads images and needs an image family (cnn, resnet, "
                f"efficientnet, mobilenet_v2, mlp); '{family.name}' reads token sequences."
            )
        for key in ("input_shape", "in_channels", "num_outputs"):
            if key in recipe.model.options():
                raise RecipeError(f"model.{key}: set by the task from the data; remove it from the recipe.")

    def require_image_column(self, records: Records) -> None:
        if self.image_column not in records.columns:
            raise DataError(
                f"data.image: column '{self.image_column}' is not in {records.where}. Columns: "
                f"{', '.join(records.columns)}.{did_you_mean(self.image_column, records.columns)}"
            )

    def drop_missing_labels(self, records: Records, split: str) -> Records:
        """Refuse rows whose label is missing, naming them, or (``task.missing_labels: drop``) leave them
        out with a note in data.json."""
        records, notes = clean_missing_labels(self.data, records, split, self.options.missing_labels)
        self._notes += notes
        return records

    def notes(self) -> list[str]:
        return list(self._notes)

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``x`` (B, C, H, W), normalised at the fitted size (task.json's ``image_spec``); its batch
        varies. What ``forward`` does beyond ``model(x)`` (object detection's flip-test merge) stays
        outside the graph."""
        return batch_signature(model, batch, ["x"], task=self.name)

    def fit_images(self, train: Records, pretrained: str | None = None) -> None:
        """Size and channels from the options, the checkpoint or the first image; mean/std measured.

        A pretrained checkpoint also says how an image reaches its size (shorter side scaled, then the
        centre cropped, with its interpolation) unless ``task.image_size`` sets the size."""
        self.require_image_column(train)
        where = f"{train.where} (train split), row {train.row_number(0)}"
        first = load_image(train[0][self.image_column], where)
        pretrained = pretrained or self.pretrained
        wanted = self.checkpoint_preprocessing(pretrained)
        size = self.options.image_size or wanted.get("input_size") or tuple(first.shape[1:])
        size = (size, size) if isinstance(size, int) else tuple(size)
        channels = self.options.channels or (3 if pretrained or first.shape[0] == 3 else 1)
        mode = self.options.normalize
        if mode == "auto":
            mode = "checkpoint" if pretrained else "dataset"
        if mode == "checkpoint":
            mean, std = wanted["mean"], wanted["std"]
        elif mode == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif mode == "none":
            mean, std = (0.0,) * channels, (1.0,) * channels
        else:
            mean, std = self._measure(train, size, channels)
        if len(mean) != channels:
            raise RecipeError(
                f"task.normalize: {mode} statistics have {len(mean)} channels but the images have "
                f"{channels}; set task.channels or task.normalize: dataset."
            )
        self.image_spec = {"size": list(size), "channels": channels, "mean": [float(m) for m in mean],
                           "std": [float(s) for s in std],
                           "interpolation": wanted.get("interpolation", "bilinear")}  # fmt: skip
        if wanted and not self.options.image_size:
            self.image_spec["resize_shorter"] = int(wanted["resize_shorter"])

    def checkpoint_preprocessing(self, pretrained: str | None) -> dict:
        """What a pretrained checkpoint expects (input size, resizing, mean, std), or {} from scratch."""
        if not pretrained:
            return {}
        from bigmodel.hub.vision import image_preprocessing

        return image_preprocessing(pretrained)

    def _measure(self, train: Records, size, channels: int) -> tuple[list[float], list[float]]:
        picks = np.unique(np.linspace(0, len(train) - 1, min(len(train), STATS_SAMPLE)).round().astype(int))
        total = torch.zeros(channels, dtype=torch.float64)
        squares = torch.zeros(channels, dtype=torch.float64)
        count = 0
        for i in picks:
            x = self.load(train[int(i)], f"{train.where} (train split), row {train.row_number(int(i))}",
                          size=size, channels=channels).double()  # fmt: skip
            total += x.sum(dim=(1, 2))
            squares += (x * x).sum(dim=(1, 2))
            count += x.shape[1] * x.shape[2]
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
        return mean.tolist(), std.tolist()

    def state(self) -> dict:
        return {**super().state(), "image": self.image_spec}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        spec = state.get("image")
        if not isinstance(spec, dict) or not {"size", "channels", "mean", "std"} <= set(spec):
            raise DataError("task.json: 'image' must hold size, channels, mean and std.")
        task.image_spec = spec
        return task

    # -- images -------------------------------------------------------------------------------------

    def load(self, example: Mapping, where: str, size=None, channels: int | None = None) -> torch.Tensor:
        """The example's image as ``(C, H, W)`` in [0, 1] (8-bit sources) at the task's size: resized,
        or (a pretrained checkpoint's way) its shorter side scaled and the centre cropped."""
        if self.image_column not in example:
            raise DataError(f"{where}: no '{self.image_column}' (the image column).")
        spec = self.image_spec
        x = load_image(example[self.image_column], where, channels or spec["channels"])
        size, interpolation = tuple(size or spec["size"]), spec.get("interpolation", "bilinear")
        if spec.get("resize_shorter"):
            return center_crop(resize_shorter(x, spec["resize_shorter"], interpolation), size)
        return resize(x, size, interpolation)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.image_spec["mean"], self.image_spec["std"])

    def validate_images(self, records: Records, split: str) -> None:
        """Every image of a split decodes (files are opened and decoded once, before training)."""
        for i in range(len(records)):
            where = f"{records.where} ({split} split), row {records.row_number(i)}"
            load_image(records[i][self.image_column], where, self.image_spec["channels"])

    # -- model --------------------------------------------------------------------------------------

    def build_backbone(self, family, options: dict, pretrained: str | None) -> nn.Module:
        """The family headless (``num_outputs=0``): pretrained weights, or built for the task's images."""
        fields = family.config_fields()
        size, channels = tuple(self.image_spec["size"]), self.image_spec["channels"]
        shape = {"input_shape": (channels, *size)} if "input_shape" in fields else {"in_channels": channels}
        if pretrained:
            from bigmodel.hub.vision import load_image_pretrained

            model, _ = load_image_pretrained(family, {**options, **shape}, pretrained, keep_head=False)
            return model
        return family.model_cls(build_config(family, {**shape, "num_outputs": 0, **options}))

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """Images to predict on: an image file, encoded bytes, a PIL image, an array (one image or a
        stack ``(N, ...)``), a list of those, records with the image column, or a .csv/.jsonl file of
        records. Each image is decoded here, so a bad one is refused naming it."""
        if isinstance(raw, (list, tuple)) and not raw:
            raise DataError(f"inputs: nothing to predict (an empty {type(raw).__name__}).")
        if (
            (is_data_file(raw) and not is_image_path(raw))
            or isinstance(raw, Mapping)
            or (isinstance(raw, (list, tuple)) and any(isinstance(r, Mapping) for r in raw))
        ):
            inputs = read_inputs(raw)
            records, names = inputs.records, [f"{inputs.where}: row {r}" for r in inputs.rows]
        else:
            images = self._image_list(raw)
            records = [{self.image_column: image} for image in images]
            names = [_input_name(image, i, len(images)) for i, image in enumerate(images)]
        for record, name in zip(records, names, strict=True):
            self.load(record, name)  # refuse what cannot be read, naming it
        return records

    def input_schema(self) -> dict:
        """One image (base64 of its encoded file) in the image column."""
        return record_schema(
            {self.image_column: self.image_field("the image")}, [self.image_column], "an image"
        )

    def image_field(self, description: str) -> dict:
        """The JSON Schema of an image field: the base64 text of an encoded image file (PNG, JPEG, ...),
        which the server decodes to bytes; the model's size and channels say what it becomes."""
        size, channels = list(self.image_spec["size"]), self.image_spec["channels"]
        colour = "grey" if channels == 1 else "RGB"
        return {"type": "string", "minLength": 1, "contentEncoding": "base64", "contentMediaType": "image/*",
                "x-bigmodel-kind": "image", "x-bigmodel-image": {"size": size, "channels": channels},
                "description": f"{description}: an image file (PNG, JPEG, ...) in base64, read as {colour} "
                f"and resized to {size[0]}x{size[1]}"}  # fmt: skip

    def report_image(self, record: Mapping):
        """The record's image as a PIL image (its own size, the task's channels) for the HTML report."""
        return to_pil(load_image(record[self.image_column], "report", self.image_spec["channels"]))

    def _image_list(self, raw) -> list:
        if isinstance(raw, (np.ndarray, torch.Tensor)):
            # (N, C, H, W), or (N, H, W) grey images of the trained size; else one image
            grey_stack = raw.ndim == 3 and self.image_spec["channels"] == 1 and raw.shape[0] not in (1, 3)
            stacked = raw.ndim == 4 or (grey_stack and tuple(raw.shape[1:]) == tuple(self.image_spec["size"]))
            return list(raw) if stacked else [raw]
        if isinstance(raw, (list, tuple)) and all(
            is_image_path(r)
            or isinstance(r, (bytes, bytearray, np.ndarray, torch.Tensor))
            or hasattr(r, "mode")
            for r in raw
        ):
            return list(raw)
        if isinstance(raw, (str, Path)) and not is_image_path(raw):
            raise DataError(
                f"inputs: '{raw}' is neither an image file (.png, .jpg, ...) nor a .csv/.jsonl file of "
                "records."
            )
        return [raw]


def to_pil(x: torch.Tensor):
    """A ``(C, H, W)`` image in [0, 1] (C 1 or 3) as an 8-bit PIL image (values outside are clipped)."""
    from PIL import Image

    pixels = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _input_name(image, i: int, n: int) -> str:
    if isinstance(image, (str, Path)):
        return f"'{image}'"
    return "inputs" if n == 1 else f"inputs: image {i + 1}"
