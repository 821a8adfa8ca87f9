"""What classification and regression of rows share: the fitted feature encoder, a headless family
with a linear head, and parsing rows, records, arrays and files. Not a task by itself."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.tabular import TabularEncoder
from bigmodel.data.values import parse_number, short_repr
from bigmodel.errors import DataError, RecipeError, RunDirError
from bigmodel.models.registry import build_config
from bigmodel.tasks.base import (
    ExportSignature,
    Task,
    batch_signature,
    category_field,
    check_targets,
    clean_missing_labels,
    label_column,
    number_field,
    read_inputs,
    record_schema,
)
from bigmodel.tasks.heads import FeatureModel

# Config fields the task sets from the data; a recipe may not.
_TASK_FIELDS = ("input_shape", "num_outputs")
# An array column shaped (H, W) or (1, H, W) with both sides at least this long is a grey picture
# (scikit-learn's 8x8 digits): the web page draws it, the report shows it.
IMAGE_MIN_SIDE = 4


class TabularTask(Task):
    """A task whose examples are rows of features (numbers, categories, arrays such as images)."""

    num_outputs = 1

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.features = TabularEncoder()
        # Picture-like array column -> (lo, hi) of its train values: what a drawing's black and white map
        # to. Absent from task.json files written before it was kept (their pages assume 0..1).
        self.value_ranges: dict[str, tuple[float, float]] = {}
        self._notes: list[str] = []

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        if recipe.data.text is not None:
            raise RecipeError(
                f"data.text: task {self.name} reads feature columns, not text. Use task text_classification."
            )
        if recipe.model.pretrained is not None:
            raise RecipeError(
                f"model.pretrained: task {self.name} trains from scratch; remove model.pretrained."
            )
        fields = family.config_fields()
        if "input_shape" not in fields:
            raise RecipeError(
                f"model.arch: task {self.name} reads rows of features (numbers, categories, images) and "
                f"needs a family that takes a feature tensor (mlp, cnn, resnet); '{family.name}' reads token "
                f"sequences. For text use task text_classification with data.text."
            )
        for key in _TASK_FIELDS:
            if key in recipe.model.options():
                raise RecipeError(f"model.{key}: set by the task from the data; remove it from the recipe.")

    def clean(self, records: Records, split: str) -> Records:
        """Refuse examples whose label is missing, naming the rows, or (``task.missing_labels: drop``)
        leave them out and say how many."""
        records, notes = clean_missing_labels(self.data, records, split, self.options.missing_labels)
        self._notes += notes
        return records

    def fit(self, train: Records) -> None:
        label = label_column(self.data, train)
        columns = {name: train.column(name) for name in train.columns}
        rows = [train.row_number(i) for i in range(len(train))]
        self._notes += self.features.fit(
            columns,
            label,
            self.data.get("features"),
            normalize=self.data.get("normalize", "standard"),
            categorical_columns=self.data.get("categorical"),
            missing=self.data.get("missing", "impute"),
            where=train.where,
            row_numbers=rows,
        )
        self.value_ranges = {}
        for name, shape in self._array_shapes().items():
            if picture_size(shape) is not None:  # the encoder has checked these: one shape, finite
                values = np.asarray(columns[name], dtype=np.float64)
                self.value_ranges[name] = (float(values.min()), float(values.max()))
        self.fit_targets(train.column(label), train.where)

    def _array_shapes(self) -> dict[str, tuple[int, ...]]:
        """Array feature column -> the shape of one of its values."""
        return {
            c["name"]: tuple(c["shape"]) for c in self.features.state()["columns"] if c["kind"] == "array"
        }

    def fit_targets(self, values: list, where: str) -> None:
        raise NotImplementedError

    def validate(self, records: Records, split: str) -> None:
        rows = [records.row_number(i) for i in range(len(records))]
        where = f"{records.where} ({split} split)"
        self.features.encode_many({name: records.column(name) for name in self.features.columns}, where=where,
                                  row_numbers=rows)  # fmt: skip
        check_targets(self.data, records, split, self.encode_target)

    def notes(self) -> list[str]:
        return list(self._notes)

    def state(self) -> dict:
        ranges = {name: list(bounds) for name, bounds in self.value_ranges.items()}
        return {**super().state(), "features": self.features.state(), "value_ranges": ranges}

    @classmethod
    def restore(cls, state: dict, run_dir: Path) -> TabularTask:
        task = super().restore(state, run_dir)
        task.features = TabularEncoder.from_state(state["features"])
        task.value_ranges = _restore_ranges(state.get("value_ranges", {}), task._array_shapes(),
                                            Path(run_dir) / "task.json")  # fmt: skip
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        fields = {"input_shape": tuple(self.features.input_shape), "num_outputs": 0}
        backbone = family.model_cls(build_config(family, {**fields, **options}))
        return FeatureModel(backbone, self.num_outputs)

    # -- examples -----------------------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        x = torch.from_numpy(self.features.encode(example))
        label = self.data.get("label") or "label"
        y = self.encode_target(example[label]) if label in example else None
        return {"x": x, "y": y}

    def encode_target(self, value):
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        batch = {"x": torch.stack([item["x"] for item in items]), "num_items": len(items)}
        if items[0]["y"] is not None:
            batch["y"] = torch.as_tensor([item["y"] for item in items])
        return batch

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["x"])

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``x`` (B, features): the encoded feature vector; its batch varies."""
        return batch_signature(model, batch, ["x"], task=self.name)

    def check_outputs(self, outputs, batch: dict) -> None:
        expected = (len(batch["x"]), self.num_outputs)
        if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != expected:
            found = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise DataError(
                f"model: returns {found} for inputs of shape {tuple(batch['x'].shape)}; task {self.name} "
                f"needs (batch, {self.num_outputs}): one output per class, or 1 for regression."
            )

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """A file, records (dicts keyed by column), or an array of rows shaped like the features.

        Every row is checked as a prediction input (:meth:`TabularEncoder.encode_many` with
        ``predict=True``): booleans where numbers were trained, NaN, inf, None, lists or dicts in a
        cell, a missing value in a column that had none in training, are refused naming the row and
        the column, so nothing but finite numbers reaches the model.
        """
        label = self.data.get("label") or "label"
        if isinstance(raw, (list, tuple)) and not raw:
            raise DataError(f"inputs: nothing to predict (an empty {type(raw).__name__}).")
        if isinstance(raw, (str, Path, Mapping)) or (
            isinstance(raw, (list, tuple)) and raw and any(isinstance(r, Mapping) for r in raw)
        ):
            records, where, rows = read_inputs(raw, ignore=label)
        else:
            records, where, rows = self._rows_from_array(_numeric_array(raw)), "inputs", None
            rows = list(range(1, len(records) + 1))
        if not records:
            raise DataError(f"{where}: nothing to predict.")
        columns = {}
        for name in self.features.columns:
            absent = next((i for i, r in enumerate(records) if name not in r), None)
            if absent is not None:
                present = ", ".join(map(str, records[absent])) or "nothing"
                raise DataError(
                    f"{where}: row {rows[absent]} lacks column '{name}', a feature the model was trained "
                    f"with. Present: {present}."
                )
            columns[name] = [r[name] for r in records]
        self.features.encode_many(columns, where=where, row_numbers=rows, predict=True)
        return records

    def input_schema(self) -> dict:
        """One property per feature column, as fitted: numbers (``null`` too where training imputed the
        column), booleans, categories (an ``enum`` of the train split's, ``null`` where a missing value
        has its own slot) and arrays of the fitted shape."""
        state = self.features.state()
        impute = state["missing"] == "impute"
        properties = {
            c["name"]: _column_schema(c, impute, self.value_ranges.get(c["name"])) for c in state["columns"]
        }
        return record_schema(
            properties, list(properties), f"one row of the {len(properties)} feature columns"
        )

    def report_row_input(self, record: dict) -> str | Image.Image:
        """The record's features as a short ``name=value, ...`` string; a row whose one feature is a
        picture-like array (digits) as that picture: a grey PIL image, its value range scaled to 0..255."""
        columns = self.features.columns
        if len(columns) == 1:
            picture = self._picture(columns[0], record.get(columns[0]))
            if picture is not None:
                return picture
        shown = ", ".join(f"{name}={_short(record.get(name))}" for name in self.features.columns)
        return shown if len(shown) <= 200 else shown[:199] + "…"

    def _picture(self, name: str, value) -> Image.Image | None:
        """The array ``value`` of column ``name`` as a grey (H, W) image, or None when the column is not
        picture-like or the value is no finite array of its size (the report then shows text)."""
        size = picture_size(self._array_shapes().get(name, ()))
        try:
            pixels = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if size is None or pixels.size != math.prod(size) or not np.isfinite(pixels).all():
            return None
        # Without a fitted range (an older task.json) each picture is stretched to its own min..max.
        lo, hi = self.value_ranges.get(name) or (float(pixels.min()), float(pixels.max()))
        scaled = (pixels.reshape(size) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
        return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8))

    def _rows_from_array(self, array: np.ndarray) -> list[dict]:
        """Rows of an array as records: one array column takes each row whole (an image); numeric
        columns take the row's values in order. Categorical columns need records."""
        columns, kinds = self.features.columns, self.features.kinds
        shape = tuple(self.features.input_shape)
        width = math.prod(shape)
        if array.ndim == 1 and array.size == width:  # a single row
            array = array.reshape(1, width)
        if array.ndim == len(shape) and array.shape == shape and len(shape) > 1:  # a single image
            array = array[None]
        fits = array.ndim == 2 and array.shape[1] == width  # (N, width)
        fits = fits or (array.ndim >= 2 and math.prod(array.shape[1:]) == width and len(shape) > 1)  # images
        if not fits:
            raise DataError(
                f"inputs: shape {tuple(array.shape)} does not fit this model; expected (N, {width}) or "
                f"(N, {', '.join(map(str, shape))}) — {width} values per row."
            )
        if len(columns) == 1 and kinds[columns[0]] == "array":
            return [{columns[0]: row.reshape(shape)} for row in array]
        if any(kind != "numeric" for kind in kinds.values()):
            raise DataError(
                "inputs: this model reads categorical columns; "
                "give records (dicts keyed by column) or a file."
            )
        return [dict(zip(columns, row.reshape(-1).tolist(), strict=True)) for row in array]


def picture_size(shape) -> tuple[int, int] | None:
    """(H, W) when an array column's ``shape`` is a grey picture's, ``(H, W)`` or ``(1, H, W)`` with both
    sides at least :data:`IMAGE_MIN_SIDE`; else None."""
    shape = tuple(shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    return (int(shape[0]), int(shape[1])) if len(shape) == 2 and min(shape) >= IMAGE_MIN_SIDE else None


def _restore_ranges(raw, shapes: dict, where: Path) -> dict[str, tuple[float, float]]:
    """task.json's ``value_ranges``: picture-like array column -> [lo, hi], finite numbers, lo <= hi."""
    if not isinstance(raw, dict):
        raise RunDirError(
            f"{where}: damaged: 'value_ranges' should be an object, found {type(raw).__name__}."
        )
    ranges = {}
    for name, bounds in raw.items():
        numbers = isinstance(bounds, list) and len(bounds) == 2
        numbers = numbers and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        if name not in shapes or picture_size(shapes[name]) is None:
            raise RunDirError(
                f"{where}: damaged: 'value_ranges' names '{name}', which is not a picture-like array "
                f"feature column of this task."
            )
        if not numbers or not all(math.isfinite(b) for b in bounds) or bounds[0] > bounds[1]:
            raise RunDirError(
                f"{where}: damaged: value_ranges['{name}'] should be [low, high], two finite numbers with "
                f"low <= high; found {bounds!r:.60}."
            )
        ranges[name] = (float(bounds[0]), float(bounds[1]))
    return ranges


def _column_schema(column: dict, impute: bool, value_range: tuple[float, float] | None = None) -> dict:
    """A feature column's JSON Schema, from the encoder's state of the column. A picture-like array
    also says ``x-bigmodel-image`` (size, one channel and the train values' range, when known), so a
    form can offer a drawing canvas; the field itself stays an array of numbers."""
    name, kind = column["name"], column["kind"]
    if kind == "categorical":
        nullable = impute and column["missing_slot"]
        return category_field(column["categories"], f"column '{name}': one of the training split's categories"
                              + (" (null: unknown)" if nullable else ""), nullable)  # fmt: skip
    if kind == "array":
        field: dict = {"type": "number"}
        for size in reversed(column["shape"]):
            field = {"type": "array", "items": field, "minItems": size, "maxItems": size}
        shape = "x".join(map(str, column["shape"]))
        field |= {"x-bigmodel-kind": "array", "description": f"column '{name}': a {shape} array of numbers"}
        size = picture_size(column["shape"])
        if size is not None:
            image = {"size": list(size), "channels": 1}
            if value_range is not None:
                image["value_range"] = list(value_range)
                field["description"] += (
                    f" (a grey picture: {value_range[0]:.6g} black, {value_range[1]:.6g} white)"
                )
            field["x-bigmodel-image"] = image
        return field
    nullable = impute and column["imputed"]
    unknown = f" (null: unknown, imputed with the train median {column['fill']:.6g})" if nullable else ""
    if column["boolean"]:
        return {"type": ["boolean", "null"] if nullable else "boolean", "x-bigmodel-kind": "boolean",
                "description": f"column '{name}': true or false{unknown}"}  # fmt: skip
    return number_field(f"column '{name}': a number{unknown}", nullable=nullable)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return f"[{np.asarray(value).size} values]"
    return str(value)[:40]


def _numeric_array(raw) -> np.ndarray:
    """An array (or nested lists, a tensor) of plain numbers as float64; booleans, strings, None and
    other objects are refused naming the first such value's row and position."""
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu()
        if raw.dtype == torch.bool or raw.is_complex():
            raise DataError(f"inputs: a tensor of {raw.dtype}; expected real numbers (a float tensor).")
        return raw.double().numpy()
    if isinstance(raw, int | float | np.number) and not isinstance(raw, bool):
        raw = np.asarray(raw)  # a scalar: refused below for its shape
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iuf":
        return raw.astype(np.float64)
    if not isinstance(raw, (np.ndarray, list, tuple)):
        raise DataError(
            "inputs: expected a file, records (dicts keyed by column) or an array of numbers; "
            f"got {type(raw).__name__}."
        )
    try:
        array = np.asarray(raw, dtype=object)
    except ValueError:  # ragged nesting NumPy cannot even hold as objects
        array = None
    if array is None or (array.ndim and array.dtype == object and any(_is_nested(v) for v in array.flat)):
        raise DataError(
            "inputs: rows of different lengths (or nested more deeply in some rows); give an array of "
            "rows, each with the same number of values."
        )
    for k, value in enumerate(array.flat):
        if type(value) is float or (type(value) is int):  # the common case, quickly
            continue
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            index = np.unravel_index(k, array.shape)
            where = f"row {index[0] + 1}, value {index[1] + 1}" if len(index) == 2 else f"position {index}"
            raise DataError(
                f"inputs: {where} is {short_repr(value)} ({type(value).__name__}); an array of rows holds "
                f"plain numbers only. Give records (dicts keyed by column) for other values."
            )
    try:
        return array.astype(np.float64)
    except OverflowError:  # an int beyond float range: ±inf, refused by the encoder's check
        return np.vectorize(lambda v: parse_number(v, allow_bool=False), otypes=[np.float64])(array)


def _is_nested(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))
