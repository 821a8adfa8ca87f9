"""Image classification: one label per image, from scratch or fine-tuned from pretrained weights.

Images come from class folders (``images:FOLDER``), IDX files, arrays or any records with an image
column; augmentation (random crop with padding or a random resized crop, flip, colour jitter, and
mixup/CutMix across the batch) is drawn from the example RNG; predict takes image files, bytes or
arrays and returns the top-k labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.transforms import (
    color_jitter,
    draw_mix,
    mix_batch,
    random_crop,
    random_flip,
    random_resized_crop,
)
from bigmodel.errors import RecipeError
from bigmodel.tasks.base import LabelOptions, check_targets, label_column, label_report_row
from bigmodel.tasks.classification import Labels, SingleLabel
from bigmodel.tasks.heads import FeatureModel
from bigmodel.tasks.image import ImageOptions, ImageTask


class AugmentOptions(BaseModel):
    """Training-time augmentation, drawn per example from the example RNG (never in evaluation)."""

    model_config = ConfigDict(extra="forbid")
    crop_padding: int = Field(0, ge=0, description="pad each side, then crop back at a random position")
    resized_crop: bool = Field(False, description="a random crop of 35-100 % of the area, resized back")
    flip: bool = Field(False, description="mirror left-right with probability 1/2 (not for digits or text)")
    color_jitter: float = Field(
        0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation factor range"
    )
    mixup: float = Field(
        0.0, ge=0.0, description="mixup's Beta(α, α): blend each image and its label with another's (0 = off)"
    )
    cutmix: float = Field(
        0.0, ge=0.0, description="CutMix's Beta(α, α): paste a box of another image, labels by area (0 = off)"
    )


class ImageClassificationOptions(ImageOptions, LabelOptions):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    augment: AugmentOptions = AugmentOptions()
    top_k: int = Field(5, ge=1, description="labels predict returns, most probable first")
    freeze_backbone: bool = Field(
        False, description="train only the new head (the backbone's weights and BatchNorm statistics stay)"
    )


class ImageClassificationTask(SingleLabel, ImageTask):
    """Single-label classification of images over the classes seen in the training split."""

    name = "image_classification"
    Options = ImageClassificationOptions
    predict_options = ("top_k",)
    state_types = {"image": dict, "class_names": list}

    def check(self, recipe, family) -> None:
        super().check(recipe, family)
        if self.options.freeze_backbone and not recipe.model.pretrained:
            raise RecipeError(
                "task.freeze_backbone: only a pretrained backbone (model.pretrained) is worth freezing; a "
                "random one would never learn."
            )

    def clean(self, records: Records, split: str) -> Records:
        return self.drop_missing_labels(records, split)

    def fit(self, train: Records) -> None:
        label = label_column(self.data, train)
        self.labels.fit(train.column(label), f"{train.where} (train split)")
        self.fit_images(train)

    def validate(self, records: Records, split: str) -> None:
        check_targets(self.data, records, split, self.labels.index)
        self.validate_images(records, split)

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        backbone = self.build_backbone(family, options, pretrained)
        return FeatureModel(backbone, self.num_outputs, frozen=self.options.freeze_backbone)

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        x = self.load(example, "example")
        if rng is not None:
            x = self.augment(x, rng)
        label = self.data.get("label") or "label"
        y = self.labels.index(example[label]) if label in example else None
        item = {"x": self.normalized(x), "y": y}
        aug = self.options.augment
        if rng is not None and y is not None and (aug.mixup or aug.cutmix):
            item["mix"] = draw_mix(rng, aug.mixup, aug.cutmix, tuple(x.shape[-2:]))
        return item

    def augment(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        aug, size = self.options.augment, tuple(self.image_spec["size"])
        if aug.resized_crop:
            x = random_resized_crop(x, size, rng)
        if aug.crop_padding:
            x = random_crop(x, size, aug.crop_padding, rng)
        if aug.flip:
            x = random_flip(x, rng)
        return color_jitter(x, aug.color_jitter, rng)

    def collate(self, items: list[dict]) -> dict:
        batch = {"x": torch.stack([item["x"] for item in items]), "num_items": len(items)}
        if items[0]["y"] is not None:
            batch["y"] = torch.as_tensor([item["y"] for item in items])
        if "mix" in items[0]:  # training batches only: evaluation encodes without an RNG
            batch["x"], partner, batch["lam"] = mix_batch(batch["x"], [item["mix"] for item in items])
            batch["y_partner"] = batch["y"][partner]
        return batch

    def loss_from(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        if "lam" not in batch:
            return super().loss_from(logits, batch)
        smoothing = self.options.label_smoothing
        logits = logits.float()
        own = F.cross_entropy(logits, batch["y"], label_smoothing=smoothing, reduction="none")
        other = F.cross_entropy(logits, batch["y_partner"], label_smoothing=smoothing, reduction="none")
        return (batch["lam"].to(own.device) * own + (1 - batch["lam"].to(own.device)) * other).sum()

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["x"])

    @classmethod
    def for_checkpoint(cls, name: str) -> tuple[nn.Module, ImageClassificationTask]:
        """A pretrained ImageNet classifier ready to predict (``bigmodel predict efficientnet-lite0
        photo.jpg``): the checkpoint's own 1000-way head, ImageNet's class names and its preprocessing."""
        from bigmodel.hub.vision import IMAGE_CHECKPOINTS, image_preprocessing, load_image_pretrained

        model, names = load_image_pretrained(IMAGE_CHECKPOINTS[name].family, {}, name, keep_head=True)
        task = cls(cls.Options(), {})
        task.labels = Labels(names)
        wanted = image_preprocessing(name)
        task.image_spec = {"size": list(wanted["input_size"]), "channels": 3, "mean": list(wanted["mean"]),
                           "std": list(wanted["std"]), "interpolation": wanted["interpolation"],
                           "resize_shorter": int(wanted["resize_shorter"])}  # fmt: skip
        return model, task

    def report_rows(self, records, predictions: list[dict]) -> list[dict]:
        """Per record: its image (PIL), its class, the predicted one, whether they agree."""
        return [
            label_report_row(self, r, p, self.report_image(r))
            for r, p in zip(records, predictions, strict=True)
        ]

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        probs = self.forward(model, batch).float().softmax(dim=-1).cpu()
        k = min(self.options.top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        names = self.labels.names
        return [
            {
                "label": names[int(idx[0])],
                "score": round(float(p[0]), 6),
                "top_k": [
                    {"label": names[int(i)], "score": round(float(q), 6)} for q, i in zip(p, idx, strict=True)
                ],
            }
            for p, idx in zip(top.values, top.indices, strict=True)
        ]
