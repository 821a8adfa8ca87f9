"""What the compression stages' options share: the ``finetune`` section and one way to turn a
pydantic error into a RecipeError naming ``<where>.<field>``, the value and what is allowed."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bigmodel.errors import RecipeError, did_you_mean


class Finetune(BaseModel):
    """Training after a stage changes the model (prune after each step, qat_int8 with fake quantization
    in place): the run's ``train`` section with these changes."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(ge=1, description="epochs of training")
    lr: float | None = Field(None, gt=0.0, description="learning rate; default: the run's train.optimizer.lr")


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
