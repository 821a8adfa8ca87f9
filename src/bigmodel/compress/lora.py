"""LoRA on any family: wrap the targeted linear layers, freeze the rest, count, merge.

Targets are our internal module names (``q``, ``k``, ``v``, ``o``, ``fc1``, ``fc2``, ``gate``, ``head``, or
any longer dotted suffix such as ``attn.q`` or ``blocks.0.attn.q``), matched on the end of the module
path, so one recipe line adapts BERT, GPT and Llama alike.

What trains: the LoRA factors, and — when the model is a task's wrapper around a family
(``model.backbone`` + a head) — everything outside the backbone: the task's head (and a CRF), which a
new task must learn from scratch. This is what PEFT's ``modules_to_save`` does for the classifier of a
sequence-classification model. A family used as is (a language model) trains its adapters only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel.compress.surgery import replace_modules
from bigmodel.errors import RecipeError
from bigmodel.hub.peft import read_peft_adapter
from bigmodel.models.registry import Family
from bigmodel.nn.lora import LoRALinear
from bigmodel.training.plan import parameter_report  # noqa: F401 (its home is the plan; kept importable here)

FIELD = "model.adapter.lora"
DEFAULT_TARGETS = ("q", "v")
# Optimizer state tensors per trainable parameter (for the memory estimate).


def lora_options(spec: dict[str, Any]) -> dict[str, Any]:
    """``{r, alpha, dropout, targets}`` with defaults (r 8, alpha = r, dropout 0, targets q, v)."""
    r = spec.get("r", 8)
    return {
        "r": r,
        "alpha": r if spec.get("alpha") is None else spec["alpha"],
        "dropout": spec.get("dropout", 0.0),
        "targets": list(spec.get("targets") or DEFAULT_TARGETS),
    }


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def add_lora(
    model: nn.Module, r: int = 8, alpha: float | None = None, dropout: float = 0.0, targets=DEFAULT_TARGETS
) -> list[str]:
    """Wrap every ``nn.Linear`` whose path ends with a target in a :class:`LoRALinear`, then freeze all
    but the adapters (and a task's head: see the module docstring).

    Returns:
        The paths adapted.

    Raises:
        RecipeError: naming ``model.adapter.lora.targets`` when a target matches no linear layer.
    """
    alpha = r if alpha is None else alpha
    linear = [p for p, m in model.named_modules() if p and isinstance(m, nn.Linear)]
    for target in targets:
        if not any(_matches(p, target) for p in linear):
            names = sorted({p.rsplit(".", 1)[-1] for p in linear})
            raise RecipeError(
                f"{FIELD}.targets: {target!r} matches no linear layer of this model. Targets are module "
                f"names matched on the end of the path; this model's linear layers are named: "
                f"{', '.join(names)}."
            )

    def wanted(path: str, module: nn.Module) -> bool:
        return type(module) is nn.Linear and any(_matches(path, t) for t in targets)

    adapted = replace_modules(model, wanted, lambda _, m: LoRALinear.from_linear(m, r, alpha, dropout))
    freeze_base(model)
    return adapted


def freeze_base(model: nn.Module) -> None:
    """Only LoRA factors and parameters outside ``model.backbone`` (a task's head) keep gradients."""
    backbone = getattr(model, "backbone", None)
    outside = set()
    if isinstance(backbone, nn.Module):
        inside = {id(p) for p in backbone.parameters()}
        outside = {id(p) for p in model.parameters() if id(p) not in inside}
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in f".{name}" or ".lora_B." in f".{name}" or id(p) in outside)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> list[str]:
    """Fold every adapter into its layer for good: each :class:`LoRALinear` becomes a plain
    ``nn.Linear`` with ``W + (alpha/r) B A``, so the state dict is the family's own again."""
    return replace_modules(model, lambda _, m: isinstance(m, LoRALinear), lambda _, m: m.to_linear())


def load_lora(model: nn.Module, folder: str | Path, family: Family, task: str | None = None) -> list[str]:
    """Put the LoRA adapters of a PEFT folder (ours or PEFT's) onto ``model`` (frozen as by
    :func:`add_lora`); the task's head, when the folder holds one, is loaded too.

    Returns:
        The paths adapted.
    """
    options, layers, head = read_peft_adapter(model, folder, family, task)
    by_path = dict(layers)

    def factory(path: str, module: nn.Module) -> nn.Module:
        a, b, alpha = by_path[path]
        layer = LoRALinear.from_linear(module, a.shape[0], alpha, options["dropout"])
        with torch.no_grad():
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.copy_(b)
        return layer

    adapted = replace_modules(model, lambda p, m: p in by_path and type(m) is nn.Linear, factory)
    if head:
        unexpected = model.load_state_dict(head, strict=False).unexpected_keys
        if unexpected:
            raise RecipeError(
                f"{folder}: the adapter's head tensor '{unexpected[0]}' names nothing in this model."
            )
    freeze_base(model)
    return adapted
