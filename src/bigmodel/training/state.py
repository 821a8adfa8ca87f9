"""The model's and optimizer's training state as one flat dict of tensors, for any strategy.

Keys are the same whatever the strategy or the number of processes — ``model.<name>`` for weights
and buffers, ``optim.<i>.<slot>`` for the optimizer state of the i-th parameter in the optimizer's
order — so a checkpoint written by 2 processes resumes in 1 and the other way round.

One process uses the modules' own ``state_dict``. Many use PyTorch's distributed state-dict API
(``get_model_state_dict`` / ``get_optimizer_state_dict``), which names tensors without DDP's
``module.`` prefix and, under FSDP2, gives each rank its shard (DTensors) so nothing is gathered.
"""

from __future__ import annotations

import torch
from torch import nn

from bigmodel.training import checkpoint as ckpt
from bigmodel.training.dist import Dist, unwrap


def _api():
    """PyTorch's distributed state-dict API, imported when first needed: it pulls in
    torch.distributed.checkpoint (~1.7 s), which one-process runs and serving never use."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def gather(model: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> tuple[dict, dict]:
    """``(tensors, optimizer metadata)`` of this rank (its shards under FSDP)."""
    if not dist.active:
        optim_tensors, optim_meta = ckpt.optimizer_to_flat(optimizer.state_dict())
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        return {**tensors, **optim_tensors}, optim_meta
    api = _api()
    tensors, aliases = _without_aliases({f"model.{k}": v for k, v in api.get_model_state_dict(model).items()})
    osd = api.get_optimizer_state_dict(model, optimizer)
    order = _order(osd)
    scalars = {}
    for fqn, slots in osd["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{order[fqn]}.{slot}"] = value
            else:
                scalars[f"{order[fqn]}.{slot}"] = value
    groups = [{**g, "params": [order[fqn] for fqn in g["params"]]} for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "aliases": aliases}


def _without_aliases(tensors: dict) -> tuple[dict, dict[str, str]]:
    """Tied weights (a GPT's head is its embedding) once: ``(tensors, {alias: kept name})``. A
    sharded checkpoint stores each tensor once and refuses two names for one storage."""
    kept, aliases, seen = {}, {}, {}
    for key, value in tensors.items():
        local = getattr(value, "_local_tensor", value)
        ident = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if local.numel() and ident in seen:
            aliases[key] = seen[ident]
        else:
            seen[ident] = key
            kept[key] = value
    return kept, aliases


def template(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Tensors shaped (and, under FSDP, sharded) like :func:`gather`'s, for a sharded checkpoint to
    load into in place. An optimizer that has not stepped yet gets its state created first."""
    api = _api()
    tensors, _ = _without_aliases({f"model.{k}": v for k, v in api.get_model_state_dict(model).items()})
    osd = api.get_optimizer_state_dict(model, optimizer)
    order = _order(osd)
    for fqn, slots in osd["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{order[fqn]}.{slot}"] = value
    return tensors


def apply(
    model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, dist: Dist, full: bool
) -> None:
    """Load ``tensors`` (+ the optimizer metadata ``meta``) into the model and optimizer.

    Args:
        full: the tensors are whole (a one-process checkpoint) rather than this rank's shards.
    """
    for alias, name in meta.get("aliases", {}).items():
        tensors.setdefault(alias, tensors[name])
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if not dist.active and full:
        unwrap(model).load_state_dict(model_sd)
        optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, meta))
        return
    api = _api()
    options = api.StateDictOptions(full_state_dict=full and dist.active)
    api.set_model_state_dict(model, model_sd, options=options)
    fqns = _order(api.get_optimizer_state_dict(model, optimizer))
    by_index = {i: fqn for fqn, i in fqns.items()}
    flat = ckpt.optimizer_from_flat(tensors, meta)
    osd = {
        "state": {by_index[i]: slots for i, slots in flat["state"].items()},
        "param_groups": [{**g, "params": [by_index[i] for i in g["params"]]} for g in flat["param_groups"]],
    }
    api.set_optimizer_state_dict(model, optimizer, osd, options=options)


def full_model_state(model: nn.Module, dist: Dist) -> dict[str, torch.Tensor]:
    """Whole weights on every rank (a collective under FSDP): for early stopping's best copy and the
    final model file."""
    if not dist.active:
        return unwrap(model).state_dict()
    api = _api()
    return api.get_model_state_dict(model, options=api.StateDictOptions(full_state_dict=True))


def load_full_model(model: nn.Module, state: dict[str, torch.Tensor], dist: Dist) -> None:
    if not dist.active:
        unwrap(model).load_state_dict(state)
        return
    api = _api()
    api.set_model_state_dict(model, state, options=api.StateDictOptions(full_state_dict=True))


def _order(osd: dict) -> dict[str, int]:
    """Parameter name → its index in the optimizer's order (as ``optimizer.state_dict()`` numbers them)."""
    return {fqn: i for i, fqn in enumerate(fqn for group in osd["param_groups"] for fqn in group["params"])}
