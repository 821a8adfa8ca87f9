"""Load recipes from YAML, apply ``key.sub=value`` overrides, and explain every mistake clearly."""

from __future__ import annotations

import copy
import re
from collections.abc import Hashable, Mapping
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
    if _is_file(path):
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise RecipeError(
        f"recipe: no file '{name_or_path}' and no shipped recipe of that name. "
        f"Shipped recipes: {', '.join(shipped) or 'none'}.{did_you_mean(path.stem, shipped)}"
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system is no file either
        return False


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
            value = _parse_yaml(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
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
        if not isinstance(key, str) or "" in key.split("."):
            raise RecipeError(f"override {key!r}: expected a dotted key such as train.epochs")
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
    elif not isinstance(source, str | Path):
        raise RecipeError(
            "recipe: expected a YAML file, a shipped recipe name, a dict or a Recipe; "
            f"got {type(source).__name__}."
        )
    else:
        path = find_recipe(source)
        where = str(path)
        try:
            data = _parse_yaml(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read it: {exc.strerror or exc}.") from None
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
        except RecursionError:
            raise RecipeError(f"{path}: not a recipe: nested too deeply.") from None
        if not isinstance(data, dict):
            raise RecipeError(
                f"{path}: a recipe is a YAML mapping (name:, data:, model:, ...), got {type(data).__name__}"
            )
    _check_size(data, where)
    for key, value in (overrides or {}).items():
        _check_size(value, f"override {key}")
    data = apply_overrides(_yaml_float(data), overrides or {})
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, where) from None


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a key given twice in one mapping is an error, not the last one."""


def _unique_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *defaults" merges keys that the mapping's own keys may override
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            continue  # construct_mapping explains an unhashable key
        if key in lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {lines[key] + 1})", key_node.start_mark
            )
        lines[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects


_MAX_VALUES = 100_000  # a recipe is a short file; more means aliases repeating a section (a YAML bomb)


def _check_size(data: Any, where: str) -> None:
    """Refuse a recipe of more than ``_MAX_VALUES`` values (also catches self-referencing dicts/lists)."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > _MAX_VALUES:
            raise RecipeError(f"{where}: more than {_MAX_VALUES} values; is an alias repeating a section?")
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def explain(exc: ValidationError, where: str) -> RecipeError:
    """One paragraph for a pydantic error: each bad field, its value and what is allowed."""
    by_field: dict[str, list[str]] = {}
    for err in exc.errors():
        # Union members and validator functions add loc parts like "int" or "function-after[...]".
        # An unknown key comes last and is the user's text, so "int" or "[" there is a key, not a tag.
        parts = [str(p) for p in err["loc"]]
        unknown = err["type"] == "extra_forbidden"
        loc = [p for p in parts[:-1] if not _is_union_tag(p)]
        loc += [p for p in parts[-1:] if unknown or not _is_union_tag(p)]
        field = ".".join(loc) or "recipe"
        if unknown:
            allowed = _allowed_keys(loc[:-1])
            hint = did_you_mean(loc[-1], allowed)
            text = f"unknown key {loc[-1]!r}. Allowed here: {', '.join(allowed)}.{hint}"
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
