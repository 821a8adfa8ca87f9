"""Pruning: global magnitude (unstructured) and whole channels/neurons (structured), then fine-tuning.

- ``magnitude``: the smallest ``amount`` of all Linear/Conv weights of the model, ranked together
  (global, so layers with many small weights give up more), become zeros *in the weights*: no
  ``torch.nn.utils.prune`` re-parametrisation is left behind, the state dict keeps its keys, and
  the sparsity reached is reported per layer and overall. Dense kernels do not run faster on zeros;
  this buys compressibility, not speed.
- ``channels``: whole output channels of conv layers and whole hidden neurons of MLPs are removed,
  the least important first (a BatchNorm's ``|gamma|`` where one follows, else the filter's L1 norm:
  :func:`_scores`); the BatchNorm after them and the next layer's inputs shrink with them, and a
  smaller *dense* model comes out whose family config says the new sizes, so model.json rebuilds it
  (``{"family": "cnn", "config": {..., "channels": [16, 32]}}``). BatchNorm statistics are then
  re-measured on training examples (``recalibrate``), before any fine-tuning.

``steps`` > 1 prunes iteratively (Han et al. 2015): a fraction of the way, fine-tune, and again,
until ``amount`` is reached; ``step_schedule`` says how the fraction grows (:func:`step_amounts`:
linear, geometric, or cubic as Zhu & Gupta 2017). During a fine-tune the pruned weights are held at
zero by masking their gradients (a fresh optimizer's moments stay zero too), so magnitude sparsity
survives training.

The fine-tune (``finetune``) is the run's ``train`` section with its own epochs and lr, optionally
its own learning-rate ``schedule`` (the run's usually warms up from zero, which a fine-tune of a
trained model does not need) and ``distill``: the model as it was before pruning, frozen, teaches
the pruned one with compress/distill.py's loss (alpha × T² KL on the logits + (1 − alpha) × the task
loss), in every step.

What families structured pruning knows is the table :data:`STRUCTURED` below: which layers form a
chain (each one's outputs are the next one's inputs) and which config field holds each group's width.
ResNet is not in it: its config has one width per stage for both a block's inner channels and its
residual stream, so a block pruned inside could not be written back as a config.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bigmodel.compress.options import GuidedFinetune, parse_stage_options
from bigmodel.compress.stages import StageOutput
from bigmodel.compress.surgery import replace_modules
from bigmodel.errors import RecipeError, UserError
from bigmodel.models.cnn import CNN
from bigmodel.models.mlp import MLP
from bigmodel.models.registry import family_of, get_family

RECALIBRATE_EXAMPLES = 1024

# --- options ----------------------------------------------------------------------------------------


class Options(BaseModel):
    """``prune:`` stage options."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["magnitude", "channels"] = Field(
        "magnitude", description="magnitude: zero the smallest weights; channels: remove whole channels"
    )
    amount: float = Field(gt=0.0, lt=1.0, description="fraction of weights (magnitude) or channels to remove")
    steps: int = Field(1, ge=1, le=100, description="prune in this many steps, fine-tuning after each")
    step_schedule: Literal["linear", "geometric", "cubic"] = Field(
        "linear",
        description="how the removed fraction grows over the steps: linear (amount x s/S), geometric (the "
        "same share of what is left each step), cubic (amount x (1 - (1 - s/S)^3): most early)",
    )
    finetune: GuidedFinetune | None = Field(
        None, description="train after each step: {epochs, lr, schedule, distill}; default: no fine-tune"
    )
    recalibrate: int = Field(
        RECALIBRATE_EXAMPLES,
        ge=0,
        description="channels: re-estimate BatchNorm statistics on this many training examples after "
        "each pruning step (0 = no)",
    )


def parse_options(options: dict, where: str = "compress[?].prune") -> Options:
    """``options`` validated; a problem is a RecipeError naming ``<where>.<field>``, the value and
    what is allowed."""
    return parse_stage_options(Options, options, where)


# --- magnitude (unstructured) ------------------------------------------------------------------------

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module path: weight}`` of every Linear/Conv, each tensor once (tied weights are shared)."""
    found, seen = {}, set()
    for path, module in model.named_modules():
        if isinstance(module, PRUNABLE) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            found[path] = module.weight
    return found


def sparsity(model: nn.Module) -> dict:
    """Zeros among the Linear/Conv weights: ``{"global", "zeros", "weights", "layers": {path: fraction}}``."""
    weights = _prunable_weights(model)
    zeros = {path: int((w == 0).sum()) for path, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    return {
        "global": sum(zeros.values()) / max(total, 1),
        "zeros": sum(zeros.values()),
        "weights": total,
        "layers": {path: zeros[path] / w.numel() for path, w in weights.items()},
    }


def magnitude_prune(model: nn.Module, amount: float) -> dict:
    """Zero the ``round(amount × N)`` smallest-magnitude weights of all N Linear/Conv weights, ranked
    globally, in place (the zeros are in the tensors; biases and norms are left alone).

    Returns:
        :func:`sparsity` of the result: per-layer and global fractions of zeros.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    weights = _prunable_weights(model)
    if not weights:
        raise UserError(f"magnitude pruning: {type(model).__name__} has no Linear or Conv weights to prune.")
    with torch.no_grad():
        flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
        count = int(math.floor(amount * flat.numel() + 0.5))
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        # stable order: among equal magnitudes (zeros from an earlier step) the earlier weight goes first
        chosen[torch.argsort(flat, stable=True)[:count]] = True
        start = 0
        for w in weights.values():
            w.masked_fill_(chosen[start : start + w.numel()].view_as(w), 0.0)
            start += w.numel()
    return sparsity(model)


# --- structured: the per-family table -----------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One prunable unit inside a backbone: ``producer`` (Conv2d/Linear) whose outputs are pruned and
    the ``norm`` right after it (BatchNorm, LayerNorm or Identity), as paths in the backbone."""

    producer: str
    norm: str


@dataclass(frozen=True)
class Structure:
    """How structured pruning reads one family.

    Attributes:
        model_cls: the family's module class.
        groups: backbone -> the layers in forward order, grouped by config entry (all layers of a
            group have one width in the config, so they keep the same count). Each layer's outputs
            are the next layer's inputs; the last one's are the pooled features the head reads.
        resized: (config, kept count per group) -> the config of the smaller model.
    """

    model_cls: type
    groups: Callable[[nn.Module], list[list[Layer]]]
    resized: Callable[[object, list[int]], object]


def _cnn_groups(cnn: CNN) -> list[list[Layer]]:
    per_block = cnn.config.convs_per_block
    return [
        [Layer(f"blocks.{b}.{u}.conv", f"blocks.{b}.{u}.norm") for u in range(per_block)]
        for b in range(len(cnn.config.channels))
    ]


def _mlp_groups(mlp: MLP) -> list[list[Layer]]:
    return [[Layer(f"blocks.{i}.fc", f"blocks.{i}.norm")] for i in range(len(mlp.config.hidden_sizes))]


STRUCTURED: dict[str, Structure] = {
    "cnn": Structure(CNN, _cnn_groups, lambda c, kept: dataclasses.replace(c, channels=kept)),
    "mlp": Structure(MLP, _mlp_groups, lambda c, kept: dataclasses.replace(c, hidden_sizes=kept)),
}


def kept_count(width: int, amount: float) -> int:
    """Channels kept of ``width`` when removing ``amount`` of them: rounded half up, at least one."""
    return max(1, min(width, int(math.floor(width * (1.0 - amount) + 0.5))))


def _structure(model: nn.Module, where: str = "prune") -> tuple[str, Structure, nn.Module, str, str | None]:
    """``(family, structure, backbone, backbone prefix, path of the linear layer reading the
    features or None)`` for a family in the table, bare or inside a task's ``backbone`` + ``head``."""
    backbone, prefix = model, ""
    inner = getattr(model, "backbone", None)
    if isinstance(inner, nn.Module):
        backbone, prefix = inner, "backbone."
    family = next((name for name, s in STRUCTURED.items() if type(backbone) is s.model_cls), None)
    if family is None:
        name = family_of(backbone) or type(backbone).__name__
        raise RecipeError(
            f"{where}.method: channels: structured pruning does not know the '{name}' family. "
            f"Supported: {', '.join(STRUCTURED)} (resnet's config cannot say a block's inner width apart "
            f"from its residual width). Use method: magnitude, which works on any family."
        )
    if backbone.head is not None:
        return family, STRUCTURED[family], backbone, prefix, f"{prefix}head"
    if not prefix:
        return family, STRUCTURED[family], backbone, prefix, None
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise RecipeError(
            f"{where}.method: channels: the task's model {type(model).__name__} reads the "
            f"backbone through {type(head).__name__}, not a linear head on its pooled features; "
            f"structured pruning only shrinks that. Use method: magnitude."
        )
    inside = {id(p) for p in backbone.parameters()} | {id(p) for p in head.parameters()}
    others = [n for n, p in model.named_parameters() if id(p) not in inside]
    if others:  # a dense head (segmentation, detection) reads the feature maps too
        raise RecipeError(
            f"{where}.method: channels: the task's model {type(model).__name__} has parameters "
            f"outside its backbone and linear head ({others[0]}, ...) that may read the pruned "
            f"channels; structured pruning only shrinks a linear head. Use method: magnitude."
        )
    return family, STRUCTURED[family], backbone, prefix, "head"


def _scores(producer: nn.Module, norm: nn.Module) -> torch.Tensor:
    """Importance of each output channel ``(C,)``.

    Followed by BatchNorm: ``|gamma|``, the channel's scale after normalisation (Liu et al. 2017,
    "Network Slimming") — the filter's own size is normalised away, and scaling its L1 norm by
    ``|gamma| / sqrt(var)`` ranks near-constant channels (tiny variance) first, which measured far worse
    (Fashion-MNIST CNN, half the channels removed, BatchNorm re-estimated, no fine-tuning: 16 % accuracy
    vs 65 % with ``|gamma|``; plain filter L1 41 %). Otherwise the L1 norm of the filter (row) (Li et
    al. 2017, "Pruning Filters for Efficient ConvNets"), times ``|gamma|`` of a LayerNorm after it.
    """
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.weight is not None:
        return norm.weight.detach().abs().float()
    scores = producer.weight.detach().abs().flatten(1).sum(1).float()
    if isinstance(norm, nn.LayerNorm) and norm.weight is not None:
        scores = scores * norm.weight.detach().abs().float()
    return scores


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores, in their original order (ties: the earlier one)."""
    return torch.argsort(-scores, stable=True)[:count].sort().values


def _like(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    """A new parameter holding ``value`` that trains (or stays frozen) as ``old`` did."""
    return nn.Parameter(value.clone(), requires_grad=old.requires_grad)


def _sliced(module: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    """A new module like ``module`` holding only the output rows ``out_idx`` and input columns
    ``in_idx`` (None: all); norms are sliced along their features."""
    with torch.no_grad():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise RecipeError(
                    f"prune.method: channels: grouped convolutions (groups={module.groups}) are not "
                    "supported."
                )
            weight = module.weight
            weight = weight if out_idx is None else weight[out_idx]
            weight = weight if in_idx is None else weight[:, in_idx]
            new = copy.deepcopy(module)  # keeps kernel, stride, padding, dtype; then the smaller tensors
            new.weight = _like(module.weight, weight)
            if module.bias is not None:
                new.bias = _like(module.bias, module.bias if out_idx is None else module.bias[out_idx])
            if isinstance(new, nn.Conv2d):
                new.out_channels, new.in_channels = weight.shape[0], weight.shape[1]
            else:
                new.out_features, new.in_features = weight.shape[0], weight.shape[1]
            return new
        new = copy.deepcopy(module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            new.num_features = len(out_idx)
            for name in ("weight", "bias"):
                if getattr(module, name) is not None:
                    setattr(new, name, _like(getattr(module, name), getattr(module, name)[out_idx]))
            for name in ("running_mean", "running_var"):
                if getattr(module, name) is not None:
                    setattr(new, name, getattr(module, name)[out_idx].clone())
        elif isinstance(module, nn.LayerNorm):
            new.normalized_shape = (len(out_idx),)
            for name in ("weight", "bias"):
                if getattr(module, name, None) is not None:
                    setattr(new, name, _like(getattr(module, name), getattr(module, name)[out_idx]))
        elif not isinstance(module, nn.Identity):
            raise RecipeError(f"prune.method: channels: cannot prune through a {type(module).__name__}.")
        return new


def shrink(model: nn.Module, kept: list[int]) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with group ``g``'s layers keeping their ``kept[g]`` most important output
    channels, the layers reading them shrunk to match; returns it and its family config as a dict."""
    model = copy.deepcopy(model)
    family, structure, backbone, prefix, head = _structure(model)
    groups = structure.groups(backbone)
    if len(kept) != len(groups):
        raise ValueError(f"{family}: {len(groups)} groups to prune, {len(kept)} counts given")
    chain = [(layer, count) for group, count in zip(groups, kept, strict=True) for layer in group]
    plan: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}  # path -> (out_idx, in_idx)
    previous: torch.Tensor | None = None
    for layer, count in chain:
        producer, norm = backbone.get_submodule(layer.producer), backbone.get_submodule(layer.norm)
        out_idx = _top(_scores(producer, norm), count)
        plan[prefix + layer.producer] = (out_idx, previous)
        plan[prefix + layer.norm] = (out_idx, None)
        previous = out_idx
    if head is not None:
        plan[head] = (None, previous)
    replace_modules(model, lambda path, _: path in plan, lambda path, m: _sliced(m, *plan[path]))
    backbone.config = structure.resized(backbone.config, list(kept))
    return model, dataclasses.asdict(backbone.config)


def _widths(model: nn.Module) -> list[int]:
    _, structure, backbone, _, _ = _structure(model)
    return [backbone.get_submodule(group[0].producer).weight.shape[0] for group in structure.groups(backbone)]


def prune_channels(model: nn.Module, amount: float) -> tuple[nn.Module, dict]:
    """Remove ``amount`` of the output channels of every conv block (cnn) or hidden layer (mlp).

    Returns:
        ``(smaller dense model, its family config)``; ``model`` is left as it was.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    return shrink(model, [kept_count(w, amount) for w in _widths(model)])


# --- the stage ----------------------------------------------------------------------------------------


def step_amounts(amount: float, steps: int, schedule: str = "linear") -> list[float]:
    """The fraction removed after each of ``steps`` steps, ending exactly at ``amount``.

    - linear: ``amount × s/S``, the same share of the original each step;
    - geometric: ``1 − (1 − amount)^(s/S)``, the same share of what is left each step;
    - cubic: ``amount × (1 − (1 − s/S)³)`` (Zhu & Gupta 2017, "To prune, or not to prune"): most is
      removed early, while the network still has redundancy, less as it gets thin.
    """
    shares = []
    for step in range(1, steps + 1):
        t = step / steps
        if schedule == "linear":
            shares.append(amount * t)
        elif schedule == "geometric":
            shares.append(1.0 - (1.0 - amount) ** t)
        elif schedule == "cubic":
            shares.append(amount * (1.0 - (1.0 - t) ** 3))
        else:
            raise ValueError(f"unknown step schedule {schedule!r}")
    shares[-1] = amount  # no rounding drift at the end
    return shares


def _finetune(
    model: nn.Module, ctx, options: GuidedFinetune, folder_name: str, masks: dict | None, teacher: nn.Module
) -> None:
    """Train ``model`` with the run's ``train`` section (epochs, lr and schedule from ``options``;
    with ``options.distill``, :class:`DistillationTask`'s loss with ``teacher`` frozen); masked weights
    get zero gradients, so they stay zero; the model comes back on the CPU in eval mode."""
    from bigmodel.compress.distill import DistillationTask, frozen_teacher, probe_outputs
    from bigmodel.training.checkpoint import finish_train_state
    from bigmodel.training.loop import fit
    from bigmodel.training.validate import resolve_device

    cfg = options.train_config(ctx.recipe.train)
    # fit may move the model to a GPU: the mask follows the gradient
    hooks = [w.register_hook(lambda g, m=mask: g * m.to(g.device)) for w, mask in (masks or {}).values()]
    folder = ctx.folder / folder_name
    task, device = ctx.task, resolve_device(cfg.device)
    with contextlib.ExitStack() as stack:
        if options.distill is not None:
            stack.enter_context(frozen_teacher(teacher, device))
            task = DistillationTask(ctx.task, teacher, options.distill)
            # outputs that hold no class scores (regression) are refused before training, by field
            probe_outputs(ctx.task, task, teacher, model, ctx.splits["train"], device, options.distill,
                          f"{ctx.where('prune')}.finetune.distill")  # fmt: skip
        try:
            fit(model, task, ctx.splits["train"], ctx.splits.get("validation"), cfg, run_dir=folder,
                seed=ctx.seed, show_progress=ctx.progress)  # fmt: skip
        finally:
            for hook in hooks:
                hook.remove()
    finish_train_state(folder, "none")  # the stage keeps its model, not the optimizer's state
    model.cpu().eval()
    with torch.no_grad():
        for w, mask in (masks or {}).values():
            w.mul_(mask)  # exact zeros whatever the optimizer did


def recalibrate_norms(model: nn.Module, task, records, count: int, batch_size: int = 256) -> bool:
    """Re-estimate every BatchNorm's running mean and variance on the first ``count`` training
    examples (no augmentation, no gradients, everything else in eval mode): the plain average of each
    batch's statistics, as ``torch.optim.swa_utils.update_bn`` does.

    Removing channels changes what the next layers see, so the statistics they were trained with no
    longer fit; re-measuring them recovers part of the accuracy before any fine-tuning (Li et al. 2020,
    "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning"). Returns whether any
    BatchNorm was there to recalibrate.
    """
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    count = min(count, len(records))
    if not norms or count == 0:
        return False
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    try:
        with torch.no_grad():
            for start in range(0, count, batch_size):
                items = [task.encode(records[i], None) for i in range(start, min(start + batch_size, count))]
                task.forward(model, task.collate(items))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return True


def apply(ctx, options: dict) -> StageOutput:
    """Prune ``ctx.model`` (left untouched) per ``options`` in ``steps`` steps, fine-tuning after each
    when ``finetune`` is set; returns the pruned model and what model.json holds to rebuild it."""
    opts = parse_options(options, ctx.where("prune"))
    teacher = ctx.model  # the model before pruning, for finetune.distill (frozen while it teaches)
    model = copy.deepcopy(ctx.model).cpu().eval()
    params_before = sum(p.numel() for p in model.parameters())
    shares = step_amounts(opts.amount, opts.steps, opts.step_schedule)
    notes = []
    if opts.steps > 1:
        notes.append(f"{opts.steps} {opts.step_schedule} steps: " + ", ".join(f"{a:.3f}" for a in shares))
    if opts.method == "magnitude":
        family = family_of(getattr(model, "backbone", model)) or ctx.recipe.model.arch
        for step, share in enumerate(shares, start=1):
            magnitude_prune(model, share)
            if opts.finetune is not None:
                masks = {p: (w, (w != 0).to(w.dtype)) for p, w in _prunable_weights(model).items()}
                _finetune(model, ctx, opts.finetune, _finetune_folder(step, opts.steps), masks, teacher)
        report = sparsity(model)
        spec = {"family": family, "config": ctx.task.model_config(model), "sparsity": report}
        notes.append(
            f"{report['zeros']} of {report['weights']} Linear/Conv weights are zero "
            f"({100 * report['global']:.1f} %); dense kernels do not skip zeros, so this alone is not faster"
        )
    else:
        family = _structure(model, ctx.where("prune"))[0]
        widths = _widths(model)
        for step, share in enumerate(shares, start=1):
            kept = [kept_count(w, share) for w in widths]
            model, config = shrink(model, kept)
            recalibrated = recalibrate_norms(model, ctx.task, ctx.splits["train"], opts.recalibrate)
            if opts.finetune is not None:
                _finetune(model, ctx, opts.finetune, _finetune_folder(step, opts.steps), None, teacher)
        spec = {"family": family, "config": config}
        notes.append(f"{family} widths {widths} -> {kept}")
        if recalibrated:
            notes.append(
                f"BatchNorm statistics re-estimated on {min(opts.recalibrate, len(ctx.splits['train']))} "
                "training examples after each pruning step"
            )
        if family == "mlp" and config.get("norm") == "layer":
            notes.append("LayerNorm statistics change when neurons go: fine-tuning matters more here")
    params_after = sum(p.numel() for p in model.parameters())
    notes.append(f"parameters {params_before} -> {params_after}")
    if opts.finetune is None:
        notes.append("not fine-tuned (no finetune option)")
    else:
        ft = opts.finetune
        notes.append(
            f"fine-tuned {ft.epochs} epoch(s) per step at lr {ft.lr or ctx.recipe.train.optimizer.lr:g}"
            + (f", schedule {ft.schedule.name} (warm-up {ft.schedule.warmup_steps})" if ft.schedule else "")
            + (f", distilled from the unpruned model (T {ft.distill.temperature:g}, alpha "
               f"{ft.distill.alpha:g})" if ft.distill else "")
        )  # fmt: skip
    return StageOutput(model=model, spec=spec, tensors=None, notes=notes)


def _finetune_folder(step: int, steps: int) -> str:
    return "finetune" if steps == 1 else f"finetune-{step}"


def load(spec: dict, tensors: dict[str, torch.Tensor], task) -> nn.Module:
    """The stage's model rebuilt from model.json (``family`` + ``config``: the smaller widths after
    channel pruning) and model.safetensors (zeros included after magnitude pruning), in eval mode."""
    model = task.build_model(get_family(spec["family"]), dict(spec["config"]), None)
    model.load_state_dict(tensors, strict=True)
    return model.eval()
