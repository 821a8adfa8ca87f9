"""LoRA adapters in PEFT's layout: ``adapter_model.safetensors`` + ``adapter_config.json``.

The tensors are named as PEFT names them on the corresponding transformers model —
``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`` — derived from the family's
Hugging Face key map (the one ``from_pretrained`` loads through), so
``peft.PeftModel.from_pretrained(transformers_model, folder)`` reads what we write, and we read what PEFT
writes. Nothing here imports ``peft``.

- A layer the published model fuses (GPT-2's ``c_attn`` = q; k; v) gets one LoRA of the stacked ranks:
  ``A = [A_q; A_v]`` and ``B`` block-diagonal in the rows of its parts, with ``rank_pattern`` /
  ``alpha_pattern`` keeping ``alpha / r`` — the same update, exactly. Reading one back, every part
  gets ``A`` whole and its rows of ``B``: again the same update.
- An output layer tied to the token embedding is published under the embedding's tensor, but its
  adapter is named after transformers' own module for it (``lm_head``), as PEFT names it.
- A task's head (``model.head`` beside ``model.backbone``) is PEFT's ``modules_to_save``, named as
  transformers' task model names it (``bert`` + ``classifier`` for BERT sequence and token
  classification: :data:`HEADED_LAYOUTS`). Where transformers has no such model, the head stays in
  the run's model.safetensors only, and a note says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from bigmodel.errors import UserError
from bigmodel.hub.files import save_tensors, write_json
from bigmodel.models.registry import Family

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# (family, task) -> (transformers' prefix of the base model in its task model, the head's module name,
# PEFT task_type): BertForSequenceClassification = bert.* + classifier.*.
HEADED_LAYOUTS = {
    ("bert", "text_classification"): ("bert.", "classifier", "SEQ_CLS"),
    ("bert", "token_classification"): ("bert.", "classifier", "TOKEN_CLS"),
}
# A family used as is: its key map already names the transformers model (GPT2LMHeadModel, ...).
TASK_TYPES = {"gpt": "CAUSAL_LM", "llama": "CAUSAL_LM"}


class AdapterError(UserError):
    """An adapter folder cannot be read onto this model, or a model's adapters cannot be written."""


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "scaling")


def _split(model: nn.Module, family: Family) -> tuple[nn.Module, str]:
    """The family model inside ``model`` and its path prefix (``backbone.`` for a task's wrapper)."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, family.model_cls):
        return backbone, "backbone."
    if isinstance(model, family.model_cls):
        return model, ""
    raise AdapterError(f"adapter: a {type(model).__name__} is neither a '{family.name}' model nor wraps one.")


class _Layout:
    """How native module paths map to the published (PEFT) module names for one model."""

    def __init__(self, model: nn.Module, family: Family, task: str | None):
        if "hf" not in family.formats:
            raise AdapterError(f"adapter: model '{family.name}' has no Hugging Face layout for PEFT files.")
        self.base, self.inner = _split(model, family)
        fmt, config = family.formats["hf"], self.base.config
        self.key_map, self.transposed = fmt.key_map(config), fmt.transposed(config)
        self.fused = fmt.fused(config)
        headed = (family.name, task) if self.inner else None
        self.prefix, self.head, self.task_type = HEADED_LAYOUTS.get(headed, ("", None, None))
        if not self.inner:
            self.task_type = TASK_TYPES.get(family.name)
        if self.prefix and all(v.startswith(self.prefix) for v in self.key_map.values()):
            self.prefix = ""  # the key map already names the task model (BERT with its MLM head)
        self.modules = {}  # native path (from the model's root) -> published module name
        # A tied output layer's tensor is published as the embedding's, but transformers keeps it a
        # module of its own (lm_head) and PEFT adapts it under that name: take the untied layout's.
        untied = (
            fmt.key_map(replace(config, tie_embeddings=False))
            if getattr(config, "tie_embeddings", False)
            else {}
        )
        for key, published in self.key_map.items():
            published = untied.get(key, published)
            if key.endswith(".weight") and published.endswith(".weight"):
                self.modules[self.inner + key.removesuffix(".weight")] = (
                    self.prefix + published[: -len(".weight")]
                )
        self.fused_modules = {}  # published module -> (native paths, dim)
        for published, (parts, dim) in self.fused.items():
            if published.endswith(".weight"):
                paths = [self.inner + p.removesuffix(".weight") for p in parts]
                self.fused_modules[self.prefix + published[: -len(".weight")]] = (paths, dim)

    def transposed_path(self, path: str) -> bool:
        return path.removeprefix(self.inner) + ".weight" in self.transposed


def save_peft_adapter(
    model: nn.Module,
    folder: str | Path,
    family: Family,
    task: str | None = None,
    dropout: float = 0.0,
    base_model: str | None = None,
) -> list[str]:
    """Write ``model``'s LoRA adapters (and its task's head) as PEFT does.

    Args:
        model: a family model, or a task's wrapper (``backbone`` + ``head``), holding LoRA layers.
        folder: created if needed.
        family: the backbone's family (its ``hf`` key map names the tensors).
        task: the task's name, to name the head as transformers' task model does.
        dropout: the adapters' dropout (recorded as ``lora_dropout``).
        base_model: ``base_model_name_or_path`` to record (the checkpoint the base came from).

    Returns:
        Notes for the user (what transformers has no place for).
    """
    layout = _Layout(model, family, task)
    layers = {p: m for p, m in model.named_modules() if _is_lora(m)}
    if not layers:
        raise AdapterError("adapter: the model has no LoRA layers to save.")
    tensors, ranks, alphas, fan_in_fan_out, notes = {}, {}, {}, [], []

    def put(module: str, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.detach().cpu().contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.detach().cpu().contiguous()
        ranks[module], alphas[module] = a.shape[0], alpha

    by_path = {path: layout.modules.get(path) for path in layers}
    for fused_name, (parts, dim) in layout.fused_modules.items():
        adapted = [p for p in parts if p in layers]
        if not adapted:
            continue
        if dim != 0:
            raise AdapterError(f"adapter: cannot write LoRA for '{fused_name}' (fused along dim {dim}).")
        a_parts = [layers[p].lora_A.weight for p in adapted]
        scalings = {layers[p].scaling for p in adapted}
        if len(scalings) > 1:
            raise AdapterError(f"adapter: the parts of '{fused_name}' have different alpha / r.")
        rank = sum(a.shape[0] for a in a_parts)
        rows = [layers[p].out_features if p in layers else _out_features(model, p) for p in parts]
        b = a_parts[0].new_zeros(sum(rows), rank)
        row, col = 0, 0
        for path, size in zip(parts, rows, strict=True):
            if path in layers:
                lb = layers[path].lora_B.weight
                b[row : row + size, col : col + lb.shape[1]] = lb
                col += lb.shape[1]
            row += size
        put(fused_name, torch.cat(a_parts), b, scalings.pop() * rank)
        fan_in_fan_out.append(layout.transposed_path(adapted[0]))
        for path in adapted:
            by_path[path] = fused_name
    for path, module in layers.items():
        name = by_path[path]
        if name is None:
            raise AdapterError(
                f"adapter: the LoRA layer '{path}' has no counterpart in the Hugging Face layout of "
                f"'{family.name}' (a task's head is saved whole, not adapted): remove it from "
                "model.adapter.lora.targets to write PEFT files."
            )
        if name not in ranks:
            put(name, module.lora_A.weight, module.lora_B.weight, module.alpha)
            fan_in_fan_out.append(layout.transposed_path(path))

    modules_to_save = None
    if layout.inner:
        outside = _outside_backbone(model)
        head = {k: v for k, v in outside.items() if k.startswith("head.")}
        if layout.head and head:
            modules_to_save = [layout.head]
            for key, value in head.items():
                tensors[f"{PEFT_PREFIX}{layout.head}.{key.removeprefix('head.')}"] = value.detach().cpu()
        if set(outside) - set(head if layout.head else ()):
            kept = ", ".join(sorted(set(outside) - set(head if layout.head else ())))
            notes.append(
                f"{ADAPTER_WEIGHTS} holds the adapters only: transformers has no place for this task's "
                f"{kept}, which model.safetensors keeps."
            )

    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": layout.task_type,
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(ranks),
        "modules_to_save": modules_to_save,
        "rank_pattern": {_pattern(m): k for m, k in ranks.items() if k != r},
        "alpha_pattern": {_pattern(m): a for m, a in alphas.items() if a != alpha},
        "fan_in_fan_out": sum(fan_in_fan_out) > len(fan_in_fan_out) / 2,
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / ADAPTER_WEIGHTS, tensors, {"format": "pt"})
    write_json(folder / ADAPTER_CONFIG, config)
    return notes


def _pattern(module: str) -> str:
    return module.replace(".", r"\.")  # PEFT matches these as regular expressions on the module path


def _out_features(model: nn.Module, path: str) -> int:
    return model.get_submodule(path).out_features


def _outside_backbone(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def read_peft_adapter(
    model: nn.Module, folder: str | Path, family: Family, task: str | None = None
) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor, float]], dict[str, torch.Tensor]]:
    """Read a PEFT LoRA folder onto ``model``'s native names (nothing is changed on the model).

    Returns:
        ``(options, layers, head)``: ``options`` (``dropout``); ``layers``: native module path ->
        ``(A, B, alpha)`` (rank = A's rows); ``head``: native state-dict key -> tensor for the task's
        head (PEFT's ``modules_to_save``).

    Raises:
        AdapterError: a missing or malformed file, an unsupported option, or a tensor that names no
            module of this model.
    """
    folder = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise AdapterError(
                f"{folder}: no {name}; a PEFT LoRA folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}."
            )
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: unreadable ({exc}).") from None
    if config.get("peft_type") != "LORA":
        raise AdapterError(
            f"{folder / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}; only LORA is read."
        )
    for key, plain in (("use_dora", False), ("use_rslora", False), ("bias", "none")):
        if config.get(key, plain) not in (plain, None):
            raise AdapterError(
                f"{folder / ADAPTER_CONFIG}: {key} = {config[key]!r} is not supported (only {plain!r})."
            )
    layout = _Layout(model, family, task)
    published = load_file(str(folder / ADAPTER_WEIGHTS))
    alpha = config.get("lora_alpha", 8)  # the rank is each A's rows (rank_pattern agrees with them)
    alphas = config.get("alpha_pattern") or {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in published.items():
        name = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            if name.endswith(f".{part}.weight"):
                pairs.setdefault(name[: -len(f".{part}.weight")], {})[part] = tensor
                break
        else:
            if layout.head and name.startswith(layout.head + "."):
                head[
                    "head." + name.removeprefix(layout.head + ".").replace("modules_to_save.default.", "")
                ] = tensor
            else:
                raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: tensor '{key}' names nothing in this model.")
    native = {v: k for k, v in layout.modules.items()}
    layers = {}
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: '{module}' lacks its lora_A or lora_B.")
        a, b = pair["lora_A"], pair["lora_B"]
        module_alpha = _pattern_value(alphas, module, alpha)
        if module in native:
            layers[native[module]] = (a, b, module_alpha)
        elif module in layout.fused_modules:
            paths, _dim = layout.fused_modules[module]
            sizes = [_out_features(model, p) for p in paths]
            for path, rows in zip(paths, b.split(sizes, dim=0), strict=True):
                layers[path] = (a, rows, module_alpha)
        else:
            raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: LoRA for '{module}', which this model lacks.")
    return {"dropout": config.get("lora_dropout", 0.0)}, layers, head


def _pattern_value(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
