"""The Task contract: the one place that knows what a record means.

A task checks its recipe, fits on the train records (labels, feature encoders, tokenizers), encodes
ONE example at a time, collates a batch with per-batch padding and ``num_items``, builds its model
and head, returns a *summed* loss, streams a mergeable metric, parses raw user input and turns
outputs into what a person reads. The pipeline, the loop, evaluation and the predictor call only
these methods, so a new application is one new file in ``tasks/``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.sources import load_source
from bigmodel.data.values import clean_labels
from bigmodel.errors import DataError, RecipeError, did_you_mean

TASK_FORMAT = 1  # task.json's format version
FILE_SCHEMES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metric:
    """A streaming metric: ``update`` per batch, ``compute`` at the end.

    State lives in ``sums`` (tensors that add up across batches and processes: counts, sums of
    losses, confusion matrices), so memory is bounded by one batch and a distributed run merges
    ranks with one ``all_reduce`` each.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", torch.float64)
        self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    def update(self, outputs: Any, batch: dict) -> None:
        raise NotImplementedError

    def compute(self) -> dict:
        raise NotImplementedError


class Task:
    """Base of every task; see the module docstring. Subclasses set ``name``, ``Options`` (a pydantic
    model of the recipe's ``task:`` keys), ``metric_names`` and ``higher_is_better``.

    Args:
        options: the validated ``task:`` options.
        data: the recipe's ``data`` section (which columns mean what; kept in task.json).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    metric_names: ClassVar[tuple[str, ...]] = ("loss",)
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False}

    def __init__(self, options: BaseModel, data: dict):
        self.options = options
        self.data = dict(data)

    # -- recipe and fitting -------------------------------------------------------------------------

    @classmethod
    def from_recipe(cls, recipe) -> Task:
        return cls(parse_options(cls, recipe.task.options()), recipe.data.model_dump(mode="json"))

    def check(self, recipe, family) -> None:
        """Refuse recipe/model combinations this task cannot train, naming the field."""

    def clean(self, records: Records, split: str) -> Records:
        """The split's usable examples: refuse bad ones by row, or leave them out with a note."""
        return records

    def strata(self, records: Records) -> list | None:
        """Values to stratify a random split by (class labels), or None."""
        return None

    def fit(self, train: Records) -> None:
        """Learn what the task needs from the train split (labels, encoders, tokenizer)."""

    def validate(self, records: Records, split: str) -> None:
        """After :meth:`fit`: refuse, naming the row, any example of a split that ``encode`` would
        refuse mid-training (so a run fails before it starts, not at its first evaluation)."""

    def notes(self) -> list[str]:
        """What fitting decided that a person should know (excluded columns, imputed values)."""
        return []

    def state(self) -> dict:
        """What task.json holds: enough, with the run directory, to :meth:`restore` the fitted task."""
        cls = type(self)
        return {"format": TASK_FORMAT, "name": self.name, "class": f"{cls.__module__}:{cls.__qualname__}",
                "options": self.options.model_dump(mode="json"), "data": self.data}  # fmt: skip

    def save(self, run_dir: Path) -> None:
        """Write files beside task.json (a tokenizer)."""

    @classmethod
    def restore(cls, state: dict, run_dir: Path) -> Task:
        return cls(cls.Options(**state["options"]), state["data"])

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        raise NotImplementedError

    def model_config(self, model: nn.Module) -> dict:
        """The family config model.json records, to rebuild the model with ``build_model``."""
        backbone = getattr(model, "backbone", model)
        return dataclasses.asdict(backbone.config)

    # -- examples and batches -----------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        raise NotImplementedError

    def length(self, example: dict) -> int | None:
        """A cheap size of an example for ``train.group_by_length`` (None: not supported)."""
        return None

    def collate(self, items: list[dict]) -> dict:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: dict) -> Any:
        raise NotImplementedError

    def check_outputs(self, outputs: Any, batch: dict) -> None:
        """Refuse a model whose outputs this task cannot read (a user's own module), naming the shape."""

    def loss_from(self, outputs: Any, batch: dict) -> torch.Tensor:
        """The loss SUMMED over the batch's ``num_items`` (the loop divides by the window's count)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.loss_from(self.forward(model, batch), batch)

    def metric(self) -> Metric:
        raise NotImplementedError

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """User input (a file, records, ...) as examples ``encode`` accepts."""
        return parse_records(raw)

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        raise NotImplementedError


# --- helpers every task uses ------------------------------------------------------------------------


def parse_options(cls: type[Task], options: Mapping[str, Any]) -> BaseModel:
    """Validate the recipe's ``task:`` keys against the task's ``Options``, naming bad fields."""
    try:
        return cls.Options(**options)
    except ValidationError as exc:
        allowed = list(cls.Options.model_fields)
        errors = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                known = ", ".join(allowed) or "none"
                errors.append(f"task.{key}: unknown option {key!r} for task '{cls.name}'. Allowed: {known}."
                              f"{did_you_mean(key, allowed)}")  # fmt: skip
            else:
                field = cls.Options.model_fields.get(str(err["loc"][0])) if err["loc"] else None
                choices = [str(a) for a in get_args(field.annotation)] if field is not None else []
                msg = err["msg"].removeprefix("Value error, ")
                errors.append(
                    f"task.{key}: {msg} (got {err.get('input')!r}).{did_you_mean(err.get('input'), choices)}"
                )
        raise RecipeError(" ".join(errors)) from None


def parse_records(raw, where: str = "inputs", ignore: str | None = None) -> list[dict]:
    """A data file (a ``Path``, or a ``str`` ending in .csv/.jsonl/.json/.parquet), one record (a dict)
    or a list of records, as a list of dicts. Records may differ in their extra keys; the ``ignore``
    column (a file's label column, which is not an input) is dropped."""
    return [{k: v for k, v in row.items() if k != ignore} for row in _records(raw, where)]


def _records(raw, where: str) -> list[dict]:
    if isinstance(raw, Path) or (isinstance(raw, str) and Path(raw).suffix.lower() in FILE_SCHEMES):
        path = Path(raw)
        scheme = FILE_SCHEMES.get(path.suffix.lower())
        if scheme is None:
            allowed = ", ".join(FILE_SCHEMES)
            raise DataError(f"{where}: unknown file type '{path.suffix}'. Allowed: {allowed}.")
        if not path.is_file():
            raise DataError(f"{where}: file not found: '{path}'.")
        (records,) = load_source(f"{scheme}:{path}").values()
        return list(records)
    if isinstance(raw, Mapping):
        return [dict(raw)]
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(r, Mapping) for r in raw):
        return [dict(r) for r in raw]
    raise DataError(
        f"{where}: expected a .csv/.jsonl/.parquet file, a record (dict) or a list of records; "
        f"got {type(raw).__name__}."
    )


def label_column(data: dict, records: Records) -> str:
    """The label column: ``data.label``, else a column named ``label``."""
    name = data.get("label") or "label"
    if name not in records.columns:
        raise DataError(
            f"data.label: column '{name}' is not in {records.where}. Name the target column. "
            f"Columns: {', '.join(records.columns)}.{did_you_mean(name, records.columns)}"
        )
    return name


def drop_missing_labels(data: dict, records: Records, split: str) -> tuple[Records, list[str]]:
    """The examples whose label is present, and notes saying how many were left out (never silently)."""
    label = label_column(data, records)
    rows = [records.row_number(i) for i in range(len(records))]
    kept, notes = clean_labels(records.column(label), f"{records.where} ({split} split)", label, rows)
    return (records if len(kept) == len(records) else records.select(kept)), notes


def check_targets(data: dict, records: Records, split: str, encode_target) -> None:
    """Refuse, naming the split, row and column, a label ``encode_target`` cannot encode."""
    label = label_column(data, records)
    for i, value in enumerate(records.column(label)):
        try:
            encode_target(value)
        except DataError as exc:
            where = f"{records.where} ({split} split), row {records.row_number(i)}, column '{label}'"
            raise DataError(f"{where}: {exc}") from None


def load_object(spec: str, field: str):
    """``package.module:Name`` -> the object (a user's own task or model family)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RecipeError(f"{field}: {spec!r} is neither a known name nor 'package.module:Name'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"{field}: cannot import module '{module_name}' ({exc}).") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RecipeError(f"{field}: module '{module_name}' has no '{attr}'.") from None
