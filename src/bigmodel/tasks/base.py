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
from typing import Any, ClassVar, Literal, NamedTuple, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from bigmodel.data.records import Records
from bigmodel.data.sources import load_source
from bigmodel.data.values import class_name, clean_labels
from bigmodel.errors import DataError, RecipeError, RunDirError, UserError, did_you_mean

TASK_FORMAT = 1  # task.json's format version
FILE_SCHEMES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelOptions(BaseModel):
    """Options of every task with a label column."""

    model_config = ConfigDict(extra="forbid")
    missing_labels: Literal["refuse", "drop"] = Field(
        "refuse",
        description="rows whose label is missing (empty, NA, ?, null, ...): refuse them naming the rows, "
        "or drop them (the count is in data.json's notes)",
    )


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

    def count_non_finite(self, outputs: torch.Tensor) -> None:
        """Count the examples whose outputs hold NaN or inf (``sums["non_finite"]``), so that
        :meth:`check_finite` refuses to report numbers computed from them."""
        bad = ~torch.isfinite(outputs.detach().reshape(len(outputs), -1)).all(dim=1)
        self.add("non_finite", bad.sum())

    def check_finite(self) -> None:
        """Raise a UserError when any output counted by :meth:`count_non_finite` was not finite."""
        bad = int(self.sums["non_finite"]) if "non_finite" in self.sums else 0
        if bad:
            raise UserError(
                f"the model produced non-finite outputs (NaN or inf) for {bad} example{'s' * (bad > 1)}; "
                "no metric is computed from them. Its weights may be damaged (check model.safetensors) or "
                "the training diverged."
            )

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
    # task.json's keys and their JSON types, checked before restore(); a subclass lists the keys its
    # state() adds (merged over the class hierarchy by check_state).
    state_types: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "format": int, "name": str, "class": str, "options": dict, "data": dict,
    }  # fmt: skip
    # Options that change only what predict returns (labels listed, how text is sampled or decoded,
    # boxes drawn): set on a trained run by load(run, options=...) / `bigmodel predict --set K=V`.
    # Every other option shaped the model or its data, and training fixed it.
    predict_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: BaseModel, data: dict):
        self.options = options
        self.data = dict(data)

    def set_predict_options(self, updates: Mapping[str, Any]) -> None:
        """Change :attr:`predict_options` of a fitted task, each value checked as the recipe's is.

        Raises:
            RecipeError: an option that is not one of them (naming those that are), or a bad value.
        """
        for key in updates:
            if key not in self.predict_options:
                allowed = ", ".join(self.predict_options) or "none"
                raise RecipeError(
                    f"task.{key}: not an option predict can change for task '{self.name}' (training fixed "
                    f"it). Allowed: {allowed}.{did_you_mean(key, self.predict_options)}"
                )
        self.options = parse_options(type(self), {**self.options.model_dump(), **updates})

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
        """The fitted task from task.json's ``state`` (checked against :attr:`state_types` by
        ``restore_task``) and the files beside it in ``run_dir``."""
        try:
            options = parse_options(cls, state["options"])
        except RecipeError as exc:
            raise RunDirError(f"{Path(run_dir) / 'task.json'}: options: {exc}") from None
        return cls(options, state["data"])

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

    def calibrate(self, validation: dict) -> bool:
        """After training, fix what is chosen on the validation split from its metrics (a decision
        threshold), before the test split is evaluated. Returns True when the state changed (the
        pipeline rewrites task.json)."""
        return False

    # -- prediction ---------------------------------------------------------------------------------

    def parse(self, raw) -> list[dict]:
        """User input (a file, records, ...) as examples ``encode`` accepts."""
        return parse_records(raw)

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        raise NotImplementedError

    def input_schema(self) -> dict:
        """The JSON Schema (the draft 2020-12 subset OpenAPI 3.1 uses) of ONE input record as a JSON
        client sends it to :meth:`parse`: the fields ``parse`` reads, named as in the fitted data
        (``self.data["text"]``, ...), ``required``, and ``additionalProperties: false``.

        Fields carry ``x-bigmodel-kind`` (``text``, ``number``, ``category``, ``image``, ...) for a form
        builder. Image fields are base64 strings (``contentEncoding: base64``) that the server decodes to
        ``bytes`` before ``parse``, so a remote client never names a file on the server. A user's task
        without a schema of its own accepts any record (``{"type": "object"}``)."""
        return {"type": "object", "description": f"a record as task {self.name or type(self).__name__} "
                "reads it (this task declares no schema of its own)"}  # fmt: skip

    # -- export -------------------------------------------------------------------------------------

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """What an exported graph of this task computes for a batch from :meth:`collate`: the module
        (``model``, or a wrapper holding what :meth:`forward` adds around it), the batch's tensors it
        takes, in the order its forward takes them, and their axes that vary between batches (see
        :func:`batch_signature`). What :meth:`forward` does outside the model (losses, decoding,
        sampling) stays outside the graph. The default refuses: a task says what it exports."""
        raise UserError(
            f"export: task '{self.name or type(self).__name__}' does not say what its graph takes "
            "(Task.export_signature), so it cannot be exported."
        )

    def report_rows(self, records, predictions: list[dict]) -> list[dict] | None:
        """Examples for the HTML report: per record ``{"input": str | PIL.Image.Image, "truth": str |
        None, "prediction": str, "correct": bool | None}``, or None when the task shows none.

        Args:
            records: a split's raw records (with their labels), in order.
            predictions: what :meth:`predict` returned for those records, in the same order.
        """
        return None


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


def record_schema(properties: dict, required: list[str], description: str = "", **more) -> dict:
    """The JSON Schema of one input record: these ``properties`` (field -> schema), the ``required``
    ones, and nothing else (``additionalProperties: false``); ``more`` adds keywords (``oneOf``)."""
    schema = {"type": "object", "properties": properties, "required": list(required),
              "additionalProperties": False, **more}  # fmt: skip
    return {**schema, "description": description} if description else schema


def number_field(description: str, integer: bool = False, nullable: bool = False, **more) -> dict:
    """A number (or an integer) field; ``nullable``: ``null`` is accepted too (an unknown value)."""
    kind = "integer" if integer else "number"
    return {"type": [kind, "null"] if nullable else kind, "x-bigmodel-kind": "number",
            "description": description, **more}  # fmt: skip


def category_field(names: list[str], description: str, nullable: bool = False) -> dict:
    """One of the fitted class or category ``names`` (strings); ``nullable``: or ``null``."""
    enum = [*names, None] if nullable else list(names)
    return {"type": ["string", "null"] if nullable else "string", "enum": enum, "x-bigmodel-kind": "category",
            "description": description}  # fmt: skip


def label_report_row(task, record: Mapping, prediction: dict, shown) -> dict:
    """A report row of a single-label task: ``shown`` (the input), the record's class (if it has the
    label column), the predicted ``label`` and whether they agree."""
    label = task.data.get("label") or "label"
    truth = class_name(record[label]) if label in record else None
    predicted = str(prediction["label"])
    return {"input": shown, "truth": truth, "prediction": predicted,
            "correct": None if truth is None else truth == predicted}  # fmt: skip


class ExportSignature(NamedTuple):
    """What :meth:`Task.export_signature` returns: ``module(*inputs.values())`` is the graph;
    ``dynamic`` maps an input's name to ``{axis: name}`` of its axes that vary (``batch``, ``length``)."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, str]]


def batch_signature(
    module: nn.Module, batch: Mapping, names: list[str], lengths: tuple[str, ...] = (), task: str = "task"
) -> ExportSignature:
    """The common :class:`ExportSignature`: ``module`` called with ``batch[name]`` for each of ``names``;
    axis 0 of each is the batch, axis 1 of those in ``lengths`` is the (shared) ``length``."""
    missing = [n for n in names if not isinstance(batch.get(n), torch.Tensor)]
    if missing:
        raise UserError(
            f"export: {task}: the batch has no tensor {missing[0]!r} (it has {sorted(batch)}); export "
            "needs a batch of encoded examples from task.collate."
        )
    dynamic = {n: {0: "batch", 1: "length"} if n in lengths else {0: "batch"} for n in names}
    return ExportSignature(module, {n: batch[n] for n in names}, dynamic)


class Inputs(NamedTuple):
    """Records given to ``predict``, and how messages name them: ``{where}: row {rows[i]}``."""

    records: list[dict]
    where: str
    rows: list[int]


def parse_records(raw, where: str = "inputs", ignore: str | None = None) -> list[dict]:
    """A data file (a ``Path``, or a ``str`` ending in .csv/.jsonl/.json/.parquet), one record (a dict)
    or a list of records, as a list of dicts. Records may differ in their extra keys; the ``ignore``
    column (a file's label column, which is not an input) is dropped."""
    return read_inputs(raw, where, ignore).records


def read_inputs(raw, where: str = "inputs", ignore: str | None = None) -> Inputs:
    """:func:`parse_records`, with where the records came from and their row numbers (a file's own
    row numbers, else 1, 2, ...) for messages that name a row."""
    records, where, rows = _records(raw, where)
    return Inputs([{k: v for k, v in row.items() if k != ignore} for row in records], where, rows)


def is_data_file(raw) -> bool:
    """Whether ``raw`` names a data file: a ``Path``, or a short ``str`` ending in a known suffix."""
    if isinstance(raw, Path):
        return True
    return (
        isinstance(raw, str)
        and len(raw) < 4096
        and "\n" not in raw
        and (Path(raw).suffix.lower() in FILE_SCHEMES)
    )


def _records(raw, where: str) -> tuple[list[dict], str, list[int]]:
    if is_data_file(raw):
        path = Path(raw)
        scheme = FILE_SCHEMES.get(path.suffix.lower())
        if scheme is None:
            allowed = ", ".join(FILE_SCHEMES)
            raise DataError(f"{where}: unknown file type '{path.suffix}'. Allowed: {allowed}.")
        try:
            exists = path.is_file()
        except OSError:  # a name too long, a path through a file
            exists = False
        if not exists:
            raise DataError(f"{where}: file not found: '{path}'.")
        (records,) = load_source(f"{scheme}:{path}").values()
        return list(records), str(path), [records.row_number(i) for i in range(len(records))]
    if isinstance(raw, Mapping):
        return [dict(raw)], where, [1]
    if isinstance(raw, (list, tuple)) and raw:
        if all(isinstance(r, Mapping) for r in raw):
            return [dict(r) for r in raw], where, list(range(1, len(raw) + 1))
        if any(isinstance(r, Mapping) for r in raw):
            i = next(i for i, r in enumerate(raw) if not isinstance(r, Mapping))
            raise DataError(
                f"{where}: row {i + 1} is a {type(raw[i]).__name__}, but the other rows are records "
                f"(dicts keyed by column); give every row as a record."
            )
    if isinstance(raw, (list, tuple)) and not raw:
        raise DataError(f"{where}: nothing to predict (an empty {type(raw).__name__}).")
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


def clean_missing_labels(
    data: dict, records: Records, split: str, policy: str = "refuse"
) -> tuple[Records, list[str]]:
    """The examples whose label is present. A missing label (empty, NA, ?, null, ...) is refused,
    naming the rows (``policy="refuse"``, the default of ``task.missing_labels``), or the row is left
    out with a note saying how many (``policy="drop"``): never silently."""
    label = label_column(data, records)
    rows = [records.row_number(i) for i in range(len(records))]
    where = f"{records.where} ({split} split)"
    kept, notes = clean_labels(records.column(label), where, label, rows, policy=policy)
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
