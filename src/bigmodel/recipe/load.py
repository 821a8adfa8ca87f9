"""Load recipes from YAML, apply ``key.sub=value`` overrides, and explain every mistake clearly."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from bigmodel.errors import RecipeError, did_you_mean
from bigmodel.recipe.schema import Recipe


def recipes_dir() -> Path:
    """The shipped recipes: inside the installed wheel, or ``recipes/`` of a source checkout."""
    packaged = Path(__file__).resolve().parents[1] / "recipes"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "recipes"


def shipped_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a file path, or the name of a shipped recipe (``digits-cnn``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise RecipeError(
        f"recipe: no file '{name_or_path}' and no shipped recipe of that name. "
        f"Shipped recipes: {', '.join(shipped) or 'none'}.{did_you_mean(path.stem, shipped)}"
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=5", "model.channels=[8,16]"]`` into ``{"train.epochs": 5, ...}``.

    Values are read as YAML scalars/lists, so ``5`` is an int, ``1e-3`` a float, ``all`` a string.
    """
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or key.strip() != key:
            raise RecipeError(f"override {item!r}: expected KEY=VALUE, for example train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key] = _yaml_float(value)
    return out


# Scientific notation that PyYAML (YAML 1.1) leaves as a string: "1e-3", "3e4", "1.0e5".
_SCIENTIFIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$")


def _yaml_float(value: Any) -> Any:
    """Read ``1e-3`` as the float a recipe means (YAML 1.1 needs ``1.0e-3``); other strings stay."""
    if isinstance(value, str):
        return float(value) if _SCIENTIFIC.match(value) else value
    if isinstance(value, list):
        return [_yaml_float(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_float(v) for k, v in value.items()}
    return value


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge overrides into a recipe dict. Keys may be dotted (``train.epochs``) or nested dicts."""
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.get(part)
            if isinstance(child, str):  # "optimizer: adamw" shorthand; expand before setting a sub-key
                child = {"name": child}
            elif not isinstance(child, dict):
                if child is not None:
                    where = ".".join(parents[: i + 1])
                    raise RecipeError(f"override {key}: '{where}' is {child!r}, not a section with keys")
                child = {}
            node[part] = child
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
            node[leaf] = apply_overrides(dict(node[leaf]), value)
        elif isinstance(value, Mapping) and isinstance(node.get(leaf), str):
            node[leaf] = apply_overrides({"name": node[leaf]}, value)
        else:
            node[leaf] = copy.deepcopy(value)
    return data


def load_recipe(source: str | Path | Mapping | Recipe, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe.

    Args:
        source: a YAML path, a shipped recipe name, a dict, or a Recipe.
        overrides: ``{"train.epochs": 5}`` or ``{"train": {"epochs": 5}}``; applied before validation.

    Raises:
        RecipeError: naming the field, the bad value and what is allowed.
    """
    if isinstance(source, Recipe):
        data = source.model_dump(mode="json")
        where = "recipe"
    elif isinstance(source, Mapping):
        data, where = dict(source), "recipe"
    else:
        path = find_recipe(source)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise RecipeError(
                f"{path}: a recipe is a YAML mapping (name:, data:, model:, ...), got {type(data).__name__}"
            )
    data = apply_overrides(_yaml_float(data), overrides or {})
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, where) from None


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def explain(exc: ValidationError, where: str) -> RecipeError:
    """One paragraph for a pydantic error: each bad field, its value and what is allowed."""
    by_field: dict[str, list[str]] = {}
    for err in exc.errors():
        # Union members and validator functions add loc parts like "int" or "function-after[...]".
        loc = [str(p) for p in err["loc"] if not _is_union_tag(str(p))]
        field = ".".join(loc) or "recipe"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            text = f"unknown key. Allowed here: {', '.join(allowed)}.{did_you_mean(loc[-1], allowed)}"
        elif err["type"] == "missing":
            text = "required but missing."
        else:
            msg = err["msg"].removeprefix("Value error, ")
            hint = did_you_mean(err.get("input"), _literal_choices(loc))
            text = f"{msg} (got {err.get('input')!r}).{hint}"
        by_field.setdefault(field, []).append(text)
    sentences = [f"{field}: {' Or: '.join(texts)}" for field, texts in list(by_field.items())[:5]]
    more = f" ({len(by_field) - 5} more fields)" if len(by_field) > 5 else ""
    return RecipeError(f"{where}: invalid recipe. " + " ".join(sentences) + more)


def _is_union_tag(part: str) -> bool:
    return part in {"int", "float", "str", "bool", "list", "dict", "none"} or "[" in part


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for part in loc:
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        candidates = [a for a in (field.annotation, *get_args(field.annotation)) if isinstance(a, type)]
        model = next((c for c in candidates if issubclass(c, BaseModel)), None)
    return model


def _allowed_keys(loc: list[str]) -> list[str]:
    model = _section_model(loc)
    return list(model.model_fields) if model else []


def _literal_choices(loc: list[str]) -> list[str]:
    model = _section_model(loc[:-1]) if loc else None
    field = model.model_fields.get(loc[-1]) if model and loc else None
    if field is None:
        return []
    return [str(a) for a in get_args(field.annotation) if isinstance(a, str)]
