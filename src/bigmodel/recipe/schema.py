"""The recipe schema: one typed, validated description of a run.

Unknown keys are refused (``extra="forbid"``) everywhere except ``model``, whose options belong to
the chosen family and are checked against that family's config when the model is built.
No torch import here: ``bigmodel --help`` and recipe checks stay fast.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "adagrad", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "linear")
SOURCE_SCHEMES = (
    "builtin",
    "csv",
    "jsonl",
    "parquet",
    "conll",
    "squad",
    "conll2012",
    "hf",
    "hf-disk",
    "images",
    "idx",
    "audio",
    "memory",
)  # memory: bigmodel.fit
DEVICES = ("auto", "cpu", "cuda", "mps")
COMPRESS_TECHNIQUES = ("distill", "prune", "quantize")  # compress/stages.py runs them
BUILTIN_DATASETS = (
    "digits", "iris", "wine", "breast_cancer", "diabetes", "wnut16-ner", "wnut16-qa", "tweet-sentiment",
    "shakespeare-lines", "shakespeare", "ptb", "kjv-rv1909", "srl-templates",
    "fashion-mnist", "scenes", "scene-objects", "nuclei", "orl-faces", "spoken-digits",
    "asterisk-en", "tuxpaint-speech", "digit-phrases", "digit-phrases-tts", "pocketsphinx-speech",
    "spoken-digits-noisy",
)  # fmt: skip


class Strict(BaseModel):
    """Unknown keys refused; numbers finite (no ``.inf``/``.nan``) and within int64; ``true``/``false``
    (and YAML's ``yes``/``no``) are not numbers, nor numbers or strings flags: ``seed: yes`` or
    ``restore_best: 0`` is refused instead of meaning 1 or false."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        flag = annotation is bool or bool in get_args(annotation)
        if isinstance(value, bool) and not flag:
            raise ValueError("true/false is not allowed here")
        if flag and value is not None and not isinstance(value, bool):
            raise ValueError("expected true or false")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise ValueError("number too large")
        return value


class Named(Strict):
    """A section that may be written as just its name: ``optimizer: adamw`` = ``{name: adamw}``."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class SplitConfig(Strict):
    """Fractions held out from the data; the rest trains. Stratified by class for classification."""

    validation: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.15, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _leaves_training_data(self):
        if self.validation + self.test >= 1.0:
            raise ValueError(
                f"validation ({self.validation}) + test ({self.test}) must be < 1 to leave training data"
            )
        return self


def _check_source(value: str | None) -> str | None:
    if value is None:
        return value
    scheme, sep, rest = value.partition(":")
    if not sep or scheme not in SOURCE_SCHEMES or not rest:
        raise ValueError(f"must look like SCHEME:WHAT with SCHEME one of {', '.join(SOURCE_SCHEMES)}")
    if scheme == "builtin" and rest not in BUILTIN_DATASETS:
        raise ValueError(f"builtin data set {rest!r} unknown; allowed: {', '.join(BUILTIN_DATASETS)}")
    return value


class DataConfig(Strict):
    """Where the records come from and which columns mean what. The task reads the columns."""

    source: str = Field(
        description="builtin:NAME, csv:PATH, jsonl:PATH, parquet:PATH, hf:NAME (datasets.load_dataset), "
        "hf-disk:PATH (datasets.load_from_disk), images:FOLDER (class folders), idx:FILE (MNIST layout), "
        "audio:FOLDER or audio:MANIFEST (.csv/.jsonl of clip paths and labels)"
    )
    validation: str | None = Field(None, description="a separate validation source (predefined split)")
    test: str | None = Field(None, description="a separate test source (predefined split)")
    subset: str | None = Field(None, description="hf: the dataset's configuration name")
    features: list[str] | None = Field(None, description="feature columns; default: all but the label")
    label: str | None = Field(None, description="target column (tabular sources)")
    text: str | None = Field(None, description="text column (task text_classification); raw strings")
    image: str | None = Field(None, description="image column (image tasks): file paths, bytes or arrays")
    audio: str | None = Field(None, description="audio column (audio tasks): file paths, bytes or arrays")
    text_pair: str | None = Field(None, description="second text column for pairs (NLI, paraphrase)")
    max_length: int = Field(128, ge=2, description="text: truncate to this many tokens (batches padded)")
    split: SplitConfig = SplitConfig()
    normalize: Literal["standard", "global", "none"] = Field(
        "standard", description="standard: per-feature mean/std; global: one mean/std; from train split"
    )
    categorical: list[str] | None = Field(None, description="columns to treat as categories (one-hot)")
    missing: Literal["impute", "refuse"] = Field(
        "impute", description="missing feature values: impute (train median / a 'missing' category) or refuse"
    )

    @field_validator("source", "validation", "test")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return _check_source(value)


def _finite_options(options: dict[str, Any]) -> None:
    """Free-form options (a task's, a family's) get the same rule as every typed field: no
    ``.inf``/``.nan``, which no option means and which recipe.yaml (JSON mode) could not write back."""

    def check(key: str, value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key}: {value} is not allowed (numbers must be finite)")
        if isinstance(value, (list, tuple)):
            for item in value:
                check(key, item)
        if isinstance(value, dict):
            for name, item in value.items():
                check(f"{key}.{name}", item)

    for key, value in options.items():
        check(key, value)


class TaskConfig(BaseModel):
    """What a record means and how it is scored: ``name`` is a built-in task or ``package.module:Class``;
    every other key is that task's option, checked against the task's own options when it is built."""

    model_config = ConfigDict(extra="allow")
    name: str = "classification"

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _finite(self) -> TaskConfig:
        _finite_options(self.options())
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LoRAConfig(Strict):
    """Low-rank adapters (Hu et al. 2021) on the linear layers whose module path ends with a target."""

    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float | None = Field(None, gt=0.0, description="the update is scaled by alpha / r; default r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    targets: list[str] = Field(
        ["q", "v"], min_length=1, description="internal module names: q, k, v, o, fc1, fc2, gate, head, ..."
    )


class AdapterConfig(Strict):
    """Train adapters on a frozen base (the task's head trains too); ``merge`` folds them into the saved
    weights (model.safetensors); the PEFT files (adapter_model.safetensors) are written either way."""

    lora: LoRAConfig
    merge: bool = False


class ModelConfig(BaseModel):
    """``arch`` names the family; ``pretrained`` optionally names a Hugging Face folder or Hub repo id
    to start from; ``adapter`` trains LoRA adapters on it; every other key is that family's config field
    (overriding the checkpoint's)."""

    model_config = ConfigDict(extra="allow")
    arch: str
    pretrained: str | None = None
    adapter: AdapterConfig | None = None

    @model_validator(mode="after")
    def _finite(self) -> ModelConfig:
        _finite_options(self.options())
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerConfig(Named):
    name: Literal[OPTIMIZERS] = "adamw"  # type: ignore[valid-type]
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum and nesterov")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam and adamw")
    alpha: float = Field(0.99, gt=0.0, lt=1.0, description="rmsprop smoothing constant")
    eps: float = Field(1e-8, gt=0.0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value):
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("both betas must be in [0, 1)")
        return value


class ScheduleConfig(Named):
    """Learning-rate schedule, evaluated per optimizer step after ``warmup_steps`` of linear warm-up."""

    name: Literal[SCHEDULES] = "constant"  # type: ignore[valid-type]
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(100, ge=1, description="step: multiply by gamma every step_size steps")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine/linear: floor as a fraction of lr")


class EarlyStoppingConfig(Strict):
    """Stop when a validation metric has not improved for ``patience`` evaluations."""

    metric: str = "loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = True


class DistributedConfig(Strict):
    """How a run launched by torchrun (or ``bigmodel train --nproc N``) spreads over processes; a
    single process ignores it."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a full replica per process; fsdp: FSDP2 fully_shard, each block sharded"
    )


class TrainConfig(Strict):
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (results do not change)")
    group_by_length: bool = Field(False, description="text: batch examples of similar length together")
    eval_batch_size: int | None = Field(None, ge=1, description="default: batch_size (or 256 for 'all')")
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int | Literal["all"] = Field(64, description="'all' = full-batch gradient descent")
    grad_accum_steps: int = Field(1, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm")
    early_stopping: EarlyStoppingConfig | None = None
    eval_every: int | None = Field(None, ge=1, description="steps between validations; default: each epoch")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints (and every epoch end)")
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    precision: Literal["fp32", "bf16", "fp16", "bf16-true"] = Field(
        "fp32",
        description="fp32; bf16/fp16: autocast (mixed precision, fp32 weights; fp16 with a gradient "
        "scaler, CUDA only); bf16-true: weights and optimizer state in bf16 too",
    )
    activation_checkpointing: bool = Field(
        False,
        description="recompute each block's activations in the backward pass (less memory, more compute)",
    )
    compile: bool = Field(False, description="torch.compile the model (a slow first step; pays on GPUs)")
    distributed: DistributedConfig = DistributedConfig()
    peak_tflops: float | None = Field(
        None,
        gt=0.0,
        description="the device's peak TFLOP/s, for MFU in the logs (`bigmodel plan` measures it)",
    )
    keep_train_state: Literal["last", "none"] = Field(
        "last", description="after a run finishes: keep its last checkpoint (to train on) or delete it"
    )

    @property
    def evaluation_batch_size(self) -> int:
        """Examples per evaluation batch: ``eval_batch_size``, else the training batch size."""
        return self.eval_batch_size or (256 if self.batch_size == "all" else self.batch_size)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"must be one of {', '.join(DEVICES)} or cuda:N")
        return value

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'all'")
        return value


class Recipe(Strict):
    """A whole run: data, task, model, training. Load with :func:`bigmodel.load_recipe`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # a folder name
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**63, description="numpy and torch generators take 0 <= seed < 2**63")
    data: DataConfig
    task: TaskConfig = TaskConfig()
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    compress: list[dict[str, Any]] = Field(
        default_factory=list,
        description="stages run in order after training, each {technique: options}: "
        + ", ".join(COMPRESS_TECHNIQUES)
        + "; options may hold accept_if: {max_metric_drop, min_speedup}",
    )

    @field_validator("compress")
    @classmethod
    def _known_techniques(cls, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, stage in enumerate(stages):
            if len(stage) != 1:
                raise ValueError(f"compress[{i}]: one technique per stage, e.g. {{prune: {{amount: 0.5}}}}")
            (name,) = stage
            if name not in COMPRESS_TECHNIQUES:
                raise ValueError(
                    f"compress[{i}]: unknown technique {name!r}; allowed: {', '.join(COMPRESS_TECHNIQUES)}"
                )
        return stages

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self):
        if self.train.early_stopping is not None and self.data.split.validation == 0:
            raise ValueError(
                "train.early_stopping watches validation data, but data.split.validation is 0; "
                "hold some out or remove early_stopping"
            )
        return self
