"""Hugging Face model folders <-> native models, for every family that declares an ``hf`` format.

``from_pretrained`` reads a folder (or downloads a Hub repo) laid out as transformers writes it —
``config.json`` plus ``model.safetensors`` (possibly sharded) or a legacy ``pytorch_model.bin`` — finds
the family by ``model_type``, builds the native config through the format's ``config_from`` (which
refuses options the native family does not compute) and loads the weights strictly through the key
map. ``save_pretrained`` writes the same layout back, so ``transformers.AutoModel`` reads it.

Nothing here knows a family: the families' ``CheckpointFormat`` entries hold all the knowledge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel.errors import UserError
from bigmodel.hub.convert import from_published, is_optional, to_published
from bigmodel.hub.files import save_tensors, write_json
from bigmodel.models.registry import FAMILY_MODULES, CheckpointFormat, Family, build_config, get_family

FORMAT = "hf"
CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


class PretrainedError(UserError):
    """A pretrained folder or Hub repo cannot be loaded (or a model cannot be saved as one)."""


# --- families --------------------------------------------------------------------------------------


def _hf_families() -> list[tuple[Family, CheckpointFormat]]:
    """Every registered family with an ``hf`` format, in registry order."""
    found = []
    for name, module in FAMILY_MODULES.items():
        try:
            family = get_family(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"bigmodel.models.{module}":
                raise
            continue  # registered but its file is not there (yet): it cannot claim a checkpoint
        if FORMAT in family.formats:
            found.append((family, family.formats[FORMAT]))
    return found


def _family_for_model_type(model_type: str | None, where: str) -> tuple[Family, CheckpointFormat]:
    families = _hf_families()
    for family, fmt in families:
        if model_type in fmt.model_types:
            return family, fmt
    supported = sorted({t for _, fmt in families for t in fmt.model_types})
    what = "has no model_type" if model_type is None else f"has model_type {model_type!r}"
    raise PretrainedError(
        f"{where} {what}, which no native family loads. Supported model types: {', '.join(supported)}."
    )


def _family_for_model(model: nn.Module) -> tuple[Family, CheckpointFormat]:
    families = _hf_families()
    exact = [(f, fmt) for f, fmt in families if type(model) is f.model_cls]
    matches = exact or [(f, fmt) for f, fmt in families if isinstance(model, f.model_cls)]
    if not matches:
        names = ", ".join(f.name for f, _ in families)
        raise PretrainedError(
            f"save_pretrained: a {type(model).__name__} has no Hugging Face layout. Families that "
            f"have one: {names}."
        )
    return matches[0]


# --- loading ---------------------------------------------------------------------------------------


def from_pretrained(
    folder_or_repo_id: str | Path, *, revision: str | None = None, **overrides: Any
) -> nn.Module:
    """Load a Hugging Face checkpoint into the native model of its family.

    Args:
        folder_or_repo_id: a folder holding ``config.json`` and the weights, or a Hub repo id
            (``"org/name"``), downloaded through ``huggingface_hub.snapshot_download`` (or taken from
            its cache when offline).
        revision: branch, tag or commit of a Hub repo.
        **overrides: native config fields to replace after conversion (e.g. ``dropout=0.0``,
            ``gradient_checkpointing=True``); architecture fields must still match the weights.

    Returns:
        The native model, in eval mode, with every tensor loaded from the checkpoint.

    Warns:
        UserWarning: for what transformers also loads with only a warning, such as special token ids
            outside the vocabulary (they change no logits; generation never meets them).

    Raises:
        PretrainedError: missing folder or files, unknown ``model_type``, an option the native family
            does not implement, or a repo that cannot be fetched.
        CheckpointMismatch: a checkpoint tensor is missing, unused or of the wrong shape.
    """
    folder = _resolve(folder_or_repo_id, revision)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise PretrainedError(
            f"{folder}: no {CONFIG_NAME}. A Hugging Face model folder holds {CONFIG_NAME} and "
            f"{SAFE_WEIGHTS} (or {PICKLE_WEIGHTS})."
        )
    try:
        published_config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PretrainedError(f"{config_path}: not valid JSON ({exc})") from None
    family, fmt = _family_for_model_type(published_config.get("model_type"), str(config_path))
    if fmt.config_from is None:
        raise PretrainedError(f"family '{family.name}' cannot read a Hugging Face config.json")
    try:
        kwargs = fmt.config_from(published_config)
    except ValueError as exc:
        raise PretrainedError(f"{config_path}: cannot load into native '{family.name}': {exc}") from None
    config = build_config(family, {**kwargs, **overrides}, field_prefix="from_pretrained")

    published = _align_keys(_read_weights(folder), fmt, config)  # before building: no weights, no model
    model = family.model_cls(config)
    expected = model.state_dict()
    model.load_state_dict(from_published(fmt, config, published, expected), strict=True)
    return model.eval()


def resolve_folder(folder_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """The local folder of a checkpoint: an existing folder as is, else the Hub snapshot of a repo id
    (its config, weights and tokenizer files). Raises :class:`PretrainedError` as ``from_pretrained``."""
    return _resolve(folder_or_repo_id, revision)


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a missing folder.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _resolve(folder_or_repo_id: str | Path, revision: str | None) -> Path:
    """An existing folder as is; otherwise a Hub repo id, fetched (or found in the cache)."""
    path = Path(folder_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise PretrainedError(f"{path} is a file; from_pretrained takes a model folder or a Hub repo id")
    name = str(folder_or_repo_id)
    if isinstance(folder_or_repo_id, Path) or _looks_like_path(name):
        raise PretrainedError(f"{name}: no such folder (and not a Hub repo id of the form 'org/name')")
    return _snapshot(name, revision)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    """Download the config, tokenizer and weight files of ``repo_id`` (not TF/Flax/ONNX copies)."""
    hint = (
        f"Could not fetch '{repo_id}' from the Hugging Face Hub. If you are offline, download it on a "
        "connected machine (e.g. `hf download " + repo_id + " --local-dir DIR`) and pass the local "
        "folder instead"
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PretrainedError(f"{hint}; huggingface_hub is not installed (bigmodel[hf]).") from None
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not any(folder.glob("*.safetensors")):  # old repos: pickled weights only
            patterns.append("pytorch_model*.bin")
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # offline, no such repo, gated, network: one clear message for all
        raise PretrainedError(f"{hint}. ({type(exc).__name__}: {exc})") from None
    return folder


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder: safetensors (single or sharded) first, else legacy pickled ones."""
    from safetensors.torch import load_file

    if (folder / SAFE_WEIGHTS).is_file():
        return load_file(str(folder / SAFE_WEIGHTS))
    if (folder / SAFE_INDEX).is_file():
        return _read_shards(folder, SAFE_INDEX, lambda p: load_file(str(p)))
    if (folder / PICKLE_WEIGHTS).is_file():
        return _torch_load(folder / PICKLE_WEIGHTS)
    if (folder / PICKLE_INDEX).is_file():
        return _read_shards(folder, PICKLE_INDEX, _torch_load)
    raise PretrainedError(
        f"{folder}: no weights. Expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {PICKLE_WEIGHTS} or {PICKLE_INDEX}."
    )


def _read_shards(folder: Path, index_name: str, load) -> dict[str, torch.Tensor]:
    index = json.loads((folder / index_name).read_text(encoding="utf-8"))
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index.get("weight_map", {}).values())):
        if not (folder / shard).is_file():
            raise PretrainedError(f"{folder}: shard {shard} listed in {index_name} is missing")
        tensors.update(load(folder / shard))
    return tensors


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: a pickled checkpoint may only hold tensors and plain containers, never code.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedError(f"{path}: not a loadable tensor checkpoint ({exc})") from None
    if not isinstance(state, Mapping):
        raise PretrainedError(f"{path}: expected a state dict, found a {type(state).__name__}")
    return dict(state)


def _align_keys(published: dict[str, torch.Tensor], fmt: CheckpointFormat, config) -> dict[str, torch.Tensor]:
    """Rename published keys onto the ones the format's key map names, where they differ only by
    what transformers itself forgives on load:

    - a base-model prefix (``bert.``, ``transformer.``) present on one side and not the other, as
      when an encoder saved inside a task model is read as the bare encoder, or the reverse;
    - the TF-era LayerNorm names ``gamma`` / ``beta`` for ``weight`` / ``bias``.

    Keys already named as the format expects are never touched; the strict check that follows in
    ``from_published`` still reports anything that does not fit.
    """
    fused = getattr(fmt, "fused", None)  # optional extension: one published tensor for several native
    optional = set(fmt.optional(config))
    wanted = set(fmt.key_map(config).values()) | {k for k in optional if not k.endswith(".*")}
    if fused is not None:
        wanted |= set(fused(config))
    if all(k in wanted or is_optional(k, optional) for k in published):
        return published
    prefixes = {k.split(".", 1)[0] + "." for k in wanted if "." in k}
    aligned: dict[str, torch.Tensor] = {}
    for key, tensor in published.items():
        aligned[key if is_optional(key, optional) else _align_key(key, wanted, prefixes)] = tensor
    return aligned


def _align_key(key: str, wanted: set[str], prefixes: set[str]) -> str:
    for candidate in _legacy_names(key):
        if candidate in wanted:
            return candidate
        head, _, rest = candidate.partition(".")
        if rest in wanted:  # strip a prefix the format does not use
            return rest
        for prefix in prefixes:  # add a prefix the format uses
            if prefix + candidate in wanted:
                return prefix + candidate
    return key


def _legacy_names(key: str) -> list[str]:
    names = [key]
    if key.endswith(".gamma"):
        names.append(key[: -len("gamma")] + "weight")
    elif key.endswith(".beta"):
        names.append(key[: -len("beta")] + "bias")
    return names


# --- saving ----------------------------------------------------------------------------------------


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model`` as a Hugging Face folder: ``config.json`` and ``model.safetensors``.

    The layout is the published one (keys, config names, ``model_type``, ``architectures``), so
    ``transformers.AutoModel.from_pretrained(folder)`` and :func:`from_pretrained` both read it.
    Files are written atomically.

    Args:
        model: a native model whose family declares an ``hf`` format.
        folder: created if needed; existing ``config.json`` / ``model.safetensors`` are replaced.

    Returns:
        The folder.
    """
    family, fmt = _family_for_model(model)
    config = model.config
    if fmt.config_to is None:
        raise PretrainedError(f"family '{family.name}' cannot write a Hugging Face config.json")
    try:
        published_config = dict(fmt.config_to(config))
    except ValueError as exc:
        raise PretrainedError(
            f"save_pretrained: no Hugging Face form for this {family.name}: {exc}"
        ) from None
    if fmt.model_types:
        published_config.setdefault("model_type", fmt.model_types[0])
    published_config.setdefault("dtype", str(next(model.parameters()).dtype).removeprefix("torch."))
    tensors = {k: v.detach().cpu() for k, v in to_published(fmt, config, model.state_dict()).items()}

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # transformers refuses safetensors files whose metadata lacks format=pt.
    save_tensors(folder / SAFE_WEIGHTS, tensors, {"format": "pt"})
    write_json(folder / CONFIG_NAME, published_config)
    return folder
