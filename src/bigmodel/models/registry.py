"""The model registry: family names → family modules, presets → families.

A family lives in one file, ``bigmodel/models/<family>.py``, that ends with a module-level
``FAMILY = Family(...)``. The registry imports a family file only when it is asked for, so listing
names never imports torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bigmodel.errors import RecipeError, did_you_mean, unknown_name

# family name -> module under bigmodel.models. Add a line here when a family file lands.
FAMILY_MODULES: dict[str, str] = {
    "mlp": "mlp",
    "cnn": "cnn",
    "resnet": "resnet",
    "rnn": "rnn",
    "bert": "bert",
    "gpt": "gpt",
    "t5": "t5",
    "llama": "llama",
    "transformer": "transformer",
    "unet": "unet",
    "efficientnet": "efficientnet",
    "mobilenet_v2": "mobilenet_v2",
    "diffusion_unet": "diffusion_unet",
    "fastspeech": "fastspeech",
}


@dataclass(frozen=True)
class CheckpointFormat:
    """How a published checkpoint layout (Hugging Face, torchvision) maps onto a native state dict.

    Attributes:
        key_map: config -> {native key: published key} covering every native tensor not in ``fused``.
            hub/convert.py asserts every key is consumed and every shape matches, in both directions.
        transposed: config -> native keys whose published tensor is stored transposed
            (GPT-2's Conv1D keeps Linear weights as (in, out)).
        optional: config -> published keys that may be absent or ignored on load (tied copies, buffers
            such as ``attn.bias`` masks) and are not written on save. An entry ``prefix.*`` covers
            every key under ``prefix.`` (an encoder-only model leaves a checkpoint's ``decoder.*``).
        fused: config -> {published key: ([native keys], dim)} for a published tensor that is the
            concatenation of several native tensors along ``dim`` of the native layout (GPT-2's
            ``c_attn`` = q, k, v). Those native keys are left out of ``key_map``; split on load
            (sizes from the native shapes), concatenated on save. If the parts are ``transposed``, the
            transpose applies to the concatenated tensor.
        config_from: published config dict -> native config kwargs; raises ValueError naming any
            option the native family does not implement (never load into a model that computes
            something else). What changes no computation passes: special token ids outside the
            vocabulary load with a warning from the config, as transformers loads them.
        config_to: native config -> published config dict.
        model_types: published ``model_type`` values (config.json) this format loads.
    """

    key_map: Callable[[Any], dict[str, str]]
    transposed: Callable[[Any], set[str]] = lambda config: set()
    optional: Callable[[Any], set[str]] = lambda config: set()
    fused: Callable[[Any], dict[str, tuple[list[str], int]]] = lambda config: {}
    config_from: Callable[[dict], dict] | None = None
    config_to: Callable[[Any], dict] | None = None
    model_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """Everything the toolkit needs to know about one model family.

    Attributes:
        name: the ``arch`` name used in recipes (``model: {arch: cnn}``).
        config_cls: a flat dataclass validated in ``__post_init__``.
        model_cls: an ``nn.Module`` built as ``model_cls(config)``.
        presets: preset name -> config overrides (data, not functions).
        tiny_presets: presets small enough for the contract test suite.
        example_input: ``(config, batch_size) -> tuple of tensors`` for contract tests and export.
        formats: published checkpoint layouts this family converts to and from ("hf", "torchvision").
    """

    name: str
    config_cls: type
    model_cls: type
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tiny_presets: tuple[str, ...] = ()
    example_input: Callable[..., tuple] | None = None
    formats: Mapping[str, CheckpointFormat] = field(default_factory=dict)

    def config_fields(self) -> list[str]:
        """The names of the config's fields (what a recipe's ``model`` section may set)."""
        return [f.name for f in dataclasses.fields(self.config_cls)]


def family_names() -> list[str]:
    return sorted(FAMILY_MODULES)


def family_of(model) -> str | None:
    """The registered family name of a native model (``bigmodel.models.cnn.CNN`` -> ``cnn``), else None."""
    module = type(model).__module__
    return next((name for name, file in FAMILY_MODULES.items() if module == f"bigmodel.models.{file}"), None)


def get_family(name: str) -> Family:
    """Import and return the family registered as ``name``, or a user's own ``package.module:Name``
    (a :class:`Family`, or an ``nn.Module`` class whose keyword arguments are its config)."""
    if ":" in name:
        return _user_family(name)
    if name not in FAMILY_MODULES:
        raise unknown_name("model.arch", name, [*FAMILY_MODULES, "package.module:Name"])
    module = importlib.import_module(f"bigmodel.models.{FAMILY_MODULES[name]}")
    return module.FAMILY


def _user_family(spec: str) -> Family:
    module_name, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"model.arch: cannot load {spec!r} ({exc}).") from None
    if isinstance(found, Family):
        return found
    from torch import nn  # here, so that listing family names never imports torch

    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise RecipeError(f"model.arch: {spec!r} is neither a bigmodel Family nor an nn.Module class.")
    # An nn.Module class: its keyword arguments (with their defaults) become a config dataclass.
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in inspect.signature(found).parameters.values() if p.kind in kinds]
    fields = [
        (p.name, Any, dataclasses.field(default=None if p.default is p.empty else p.default)) for p in params
    ]
    config_cls = dataclasses.make_dataclass(f"{attr}Config", fields)
    return Family(name=spec, config_cls=config_cls, model_cls=_ModuleFromConfig(found))


class _ModuleFromConfig:
    """``model_cls(config)`` for a user's module class: its kwargs from the config; ``config`` kept."""

    def __init__(self, cls: type):
        self.cls = cls

    def __call__(self, config):
        kwargs = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
        module = self.cls(**kwargs)
        module.config = config
        return module


def all_families() -> list[Family]:
    return [get_family(name) for name in family_names()]


def find_preset(name: str) -> tuple[Family, Mapping[str, Any]] | None:
    """Return (family, overrides) for a preset name, searching every family."""
    for family in all_families():
        if name in family.presets:
            return family, family.presets[name]
    return None


def build_config(family: Family, overrides: Mapping[str, Any], field_prefix: str = "model"):
    """Build ``family.config_cls(**overrides)`` with clear errors for unknown or invalid fields."""
    names = [f.name for f in dataclasses.fields(family.config_cls)]
    for key in overrides:
        if key not in names:
            raise RecipeError(
                f"{field_prefix}.{key}: unknown option for model '{family.name}'. "
                f"Allowed: {', '.join(names)}.{did_you_mean(key, names)}"
            )
    hints = typing.get_type_hints(family.config_cls)
    for key, value in overrides.items():
        problem = _type_problem(hints.get(key), value)
        if problem:
            raise RecipeError(f"{field_prefix}.{key}: {problem}, got {value!r}.")
    try:
        return family.config_cls(**overrides)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{field_prefix}: invalid configuration for '{family.name}': {exc}") from None


def _type_problem(annotation, value) -> str | None:
    """What is wrong with ``value`` for a config field typed ``annotation`` (None when nothing).

    Config dataclasses coerce (``int(h)``), so a YAML ``true`` or ``1.5`` would silently become 1;
    numbers are checked here: booleans are never numbers, whole-number fields take whole numbers."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _type_problem(inner[0], value) if len(inner) == 1 else None
    if origin in (list, tuple) and args and isinstance(value, list | tuple):
        for item in value:
            problem = _type_problem(args[0], item)
            if problem:
                return f"every item must be {problem.removeprefix('expected ')}"
        return None
    if annotation is bool and not isinstance(value, bool):
        return "expected true or false"
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int | float)
                              or (isinstance(value, float) and not value.is_integer())):  # fmt: skip
        return "expected a whole number"
    if annotation is float and (isinstance(value, bool) or not isinstance(value, int | float)
                                or (isinstance(value, float) and not math.isfinite(value))):  # fmt: skip
        return "expected a finite number"
    return None


def create_model(name_or_preset: str, **overrides: Any):
    """Create a model from a family name (``"cnn"``) or a preset name (``"gpt2"``).

    Args:
        name_or_preset: a registered family or preset.
        **overrides: config fields that replace the family defaults or the preset's values.
    """
    if name_or_preset in FAMILY_MODULES:
        family, base = get_family(name_or_preset), {}
    else:
        found = find_preset(name_or_preset)
        if found is None:
            presets = [p for f in all_families() for p in f.presets]
            raise unknown_name("model", name_or_preset, [*FAMILY_MODULES, *presets])
        family, base = found
    config = build_config(family, {**base, **overrides})
    return family.model_cls(config)
