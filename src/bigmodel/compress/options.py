"""What the compression stages' options share: the ``finetune`` section and one way to turn a
pydantic error into a RecipeError naming ``<where>.<field>``, the value and what is allowed."""

from __future__ import annotations

from typing import ClassVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bigmodel.errors import RecipeError, did_you_mean
from bigmodel.recipe.schema import ScheduleConfig, TrainConfig


class Finetune(BaseModel):
    """Training after a stage changes the model (prune after each step, qat_int8 with fake quantization
    in place): the run's ``train`` section with these changes."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(ge=1, description="epochs of training")
    lr: float | None = Field(None, gt=0.0, description="learning rate; default: the run's train.optimizer.lr")

    def train_config(self, train: TrainConfig) -> TrainConfig:
        """The run's ``train`` section with this fine-tune's epochs (no max_steps) and lr."""
        update = {"epochs": self.epochs, "max_steps": None}
        if self.lr is not None:
            update["optimizer"] = train.optimizer.model_copy(update={"lr": self.lr})
        return train.model_copy(update=update)


class FinetuneDistill(BaseModel):
    """``finetune.distill``: the model as it was before the stage (frozen) teaches the changed one with
    compress/distill.py's logit loss: ``alpha`` × T² KL(teacher/T ‖ student/T) + (1 − alpha) × the task
    loss."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(4.0, gt=0.0, description="softens both distributions; the KD term is × T²")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the KD term; 1 - alpha on the task loss")
    # what distill.DistillationTask also reads: a fine-tune matches logits only (the widths differ)
    hidden: ClassVar[bool] = False
    hidden_weight: ClassVar[float] = 0.0


class GuidedFinetune(Finetune):
    """A fine-tune that may set its own learning-rate schedule and learn from the unchanged model."""

    schedule: ScheduleConfig | None = Field(
        None,
        description="the fine-tune's own learning-rate schedule, e.g. {name: cosine} (from lr down to "
        "min_lr_ratio x lr, no warm-up unless warmup_steps); default: the run's train.schedule",
    )
    distill: FinetuneDistill | None = Field(
        None, description="learn from the model before the stage too: {temperature, alpha}; default: no"
    )

    def train_config(self, train: TrainConfig) -> TrainConfig:
        cfg = super().train_config(train)
        return cfg if self.schedule is None else cfg.model_copy(update={"schedule": self.schedule})


def parse_stage_options(model: type[BaseModel], options, where: str):
    """``options`` validated as ``model``; a problem is a RecipeError naming each field."""
    if not isinstance(options, dict):
        raise RecipeError(f"{where}: expected a mapping of options, got {options!r}.")
    try:
        return model(**options)
    except ValidationError as exc:
        raise RecipeError(describe(exc, where, model)) from None


def describe(exc: ValidationError, where: str, model: type[BaseModel]) -> str:
    """One sentence per error: ``<where>.<field>: ...``; an unknown key lists the fields allowed at
    its own level (a nested section's, e.g. ``finetune``'s) with a did-you-mean."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = list(_model_at(model, [str(p) for p in err["loc"][:-1]]).model_fields)
            name = str(err["loc"][-1])
            problems.append(
                f"{where}.{key}: unknown option. Allowed: {', '.join(known)}.{did_you_mean(name, known)}"
            )
        else:
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}.{key}: {message} (got {err.get('input')!r:.60}).")
    return " ".join(problems)


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel]:
    """The (nested) pydantic model a field path leads to, as far as it leads to one."""
    for part in path:
        field = model.model_fields.get(part)
        candidates = (*get_args(field.annotation), field.annotation) if field is not None else ()
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            break
        model = nested
    return model
