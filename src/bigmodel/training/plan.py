"""``training_plan``: what training a recipe will cost, before you spend it.

Parameters, FLOPs per optimizer step, memory per process for every precision and strategy, a step
time measured on this machine, and whether the run fits the device (and what to change if not).

Memory is measured, not guessed from a formula. One forward and backward pass of a real micro-batch
(the recipe's own examples, encoded and collated by the task, the longest first where examples have
a length) runs under a dispatch mode that sees every tensor storage the pass creates and when it is
freed. That timeline holds activations, transient buffers (an LM head's logits and their gradient),
autocast's low-precision weight copies and the gradients, each as the real step holds them; its
peak, with the activations scaled from the measured micro-batch to the recipe's, plus the weights
and the optimizer state, is the estimate. With activation checkpointing the blocks are checkpointed
as the loop does before the passes, so what it frees and recomputes is measured too. On a CPU,
what glibc's malloc keeps beyond the live tensors is added (``HEAP_RETENTION``).

Step time comes from a few real optimizer steps on the loop's own first micro-batches (warm-up
excluded), and the MFU denominator from a same-dtype matmul probe.

The caller's model is never touched (the probe works on a deep copy) and the RNG states are
restored afterwards (``torch.random.fork_rng``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import platform
import statistics
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from bigmodel.data.loader import EpochSampler, TaskDataset, to_device
from bigmodel.data.records import Records
from bigmodel.errors import RecipeError, UserError
from bigmodel.training.dist import blocks_of, checkpoint_blocks
from bigmodel.training.optim import build_optimizer
from bigmodel.training.precision import resolve_precision
from bigmodel.training.validate import example_lengths, resolve_device

PRECISIONS = ("fp32", "bf16", "bf16-true", "fp16")
STRATEGIES = ("single", "ddp", "fsdp")
# Optimizer state tensors per trainable parameter.
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2, "adagrad": 1, "rmsprop": 1}
MEASURE_BATCH = 8  # examples in the measured micro-batch; activations scale linearly from it
MATMUL_SIZE = 2048
PROBE_WARMUP, PROBE_STEPS, PROBE_SECONDS = 1, 5, 30.0
MAX_LENGTH_SCAN = 100_000  # records whose length is read to find the longest micro-batch
# On a CPU, glibc's malloc keeps part of what a step frees: it raises its mmap threshold (up to 32 MiB)
# as mapped blocks are freed, so smaller tensors come from its heap, which fragments and stays resident.
# Measured over 4-6 real steps of GPT-2 124M, a MiniLM fine-tune and an 8 × 512 GPT with and without
# activation checkpointing (docs/results.md): RSS exceeds the live tensors by 13-20 % of the bytes a
# step allocates in blocks under 32 MiB, and by 0.5-1.5× the most such bytes live at once.
# MALLOC_MMAP_THRESHOLD_=131072 removes it (every large block is then mapped and returned at once,
# at a page fault per page touched).
HEAP_RETENTION, HEAP_BLOCK_MAX, HEAP_KEPT_MAX = 0.2, 32 << 20, 1.5
_PEAK_DTYPE = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "fp16": torch.float16,
}


def parameter_report(model: nn.Module, optimizer: str = "adamw") -> dict[str, Any]:
    """Trainable and total parameter counts, and the training memory they imply (weights, gradients and
    optimizer state, in bytes; activations excluded).

    Its home is here, not in ``compress/lora.py`` (which re-exports it): training/ may not import
    compress/, which comes later in the pipeline.
    """
    seen, total, trainable, weight_bytes, grad_bytes = set(), 0, 0, 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        weight_bytes += p.numel() * p.element_size()
        if p.requires_grad:
            trainable += p.numel()
            grad_bytes += p.numel() * p.element_size()
    states = OPTIMIZER_STATES.get(optimizer, 2)
    return {
        "params": total,
        "trainable_params": trainable,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
        "memory_bytes": {
            "weights": weight_bytes,
            "gradients": grad_bytes,
            "optimizer_state": states * grad_bytes,
        },
    }


# --- the memory timeline of one forward and backward pass ------------------------------------------


@dataclass
class Timeline:
    """What one forward+backward pass allocated, in order: ``events`` are (storage key, ±bytes);
    ``kind`` says what each storage was."""

    events: list[tuple[int, int]] = field(default_factory=list)
    kind: dict[int, str] = field(default_factory=dict)  # activations | weight_copies | gradients
    flops: int = 0

    def peak(self, act_scale: float = 1.0, grad_scale: float = 1.0) -> tuple[float, float]:
        """The pass's highest live bytes with activations × ``act_scale`` and gradients ×
        ``grad_scale``; returns (peak, gradient bytes live at that moment)."""
        live = {"activations": 0, "weight_copies": 0, "gradients": 0}
        best, grads_then = 0.0, 0.0
        for key, delta in self.events:
            live[self.kind[key]] += delta
            value = act_scale * live["activations"] + live["weight_copies"] + grad_scale * live["gradients"]
            if value > best:
                best, grads_then = value, grad_scale * live["gradients"]
        return best, grads_then

    def heap_kept(self, act_scale: float = 1.0, grad_scale: float = 1.0) -> float:
        """What glibc's malloc keeps resident beyond the live tensors: ``HEAP_RETENTION`` of the bytes
        the pass allocates in blocks it serves from its heap (up to ``HEAP_BLOCK_MAX``), at most
        ``HEAP_KEPT_MAX`` times the most such blocks live at once (many small tensors reuse its free
        lists and fragment little)."""
        factor = {"activations": act_scale, "weight_copies": 1.0, "gradients": grad_scale}
        allocated, live, most = 0.0, 0.0, 0.0
        for key, n in self.events:
            size = n * factor[self.kind[key]]
            if abs(size) <= HEAP_BLOCK_MAX:
                allocated += max(size, 0.0)
                live += size
                most = max(most, live)
        return min(HEAP_RETENTION * allocated, HEAP_KEPT_MAX * most)


class _StorageTracker(TorchDispatchMode):
    """Records each storage an op creates (views and in-place results are not new) and, through a
    weak reference, when it is freed."""

    def __init__(self, timeline: Timeline, params: set[int]):
        super().__init__()
        self.timeline, self.params = timeline, params
        self.keys: dict[int, int] = {}  # id(storage) -> key, while the storage lives
        self.refs: dict[int, weakref.ref] = {}
        self.open = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for i, tensor in enumerate(tree_flatten(out)[0]):
            # a list return (split, unbind) has one schema entry for all its tensors
            aliased = bool(returns) and returns[min(i, len(returns) - 1)].alias_info is not None
            if isinstance(tensor, torch.Tensor) and not aliased:
                kind = "weight_copies" if self._is_param_copy(func, args) else "activations"
                self.add(tensor, kind)
        return out

    def _is_param_copy(self, func, args) -> bool:
        """Autocast's cast of a weight: batch-independent, freed when the autocast region ends."""
        return (
            func is torch.ops.aten._to_copy.default
            and isinstance(args[0], torch.Tensor)
            and id(args[0].untyped_storage()) in self.params
        )

    def add(self, tensor: torch.Tensor, kind: str) -> None:
        storage = tensor.untyped_storage()
        sid = id(storage)
        if sid in self.keys or sid in self.params or storage.nbytes() == 0:
            return
        key = len(self.timeline.kind)
        self.keys[sid] = key
        self.timeline.kind[key] = kind
        self.timeline.events.append((key, storage.nbytes()))
        self.refs[sid] = weakref.ref(storage, functools.partial(self._freed, sid, key, storage.nbytes()))

    def _freed(self, sid: int, key: int, nbytes: int, _ref) -> None:
        self.keys.pop(sid, None)
        self.refs.pop(sid, None)
        if self.open:
            self.timeline.events.append((key, -nbytes))

    def key_of(self, tensor: torch.Tensor) -> int | None:
        return self.keys.get(id(tensor.untyped_storage()))


def measure_pass(model: nn.Module, task, batch: dict, precision, count_flops: bool = True) -> Timeline:
    """One training forward+backward of ``batch`` as the loop runs it (autocast, summed loss divided by
    the item count, gradients from None), recorded as a :class:`Timeline`; FLOPs counted too unless
    ``count_flops`` is False (FlopCounterMode's module hooks keep a checkpointed block's recomputed
    activations alive until the pass ends: passes with activation checkpointing must not count).
    The model's gradients are set back to None afterwards."""
    params = {id(t.untyped_storage()) for t in [*model.parameters(), *model.buffers()]}
    params |= {id(t.untyped_storage()) for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor)}
    timeline = Timeline()
    tracker = _StorageTracker(timeline, params)
    counter = FlopCounterMode(display=False, custom_mapping=_flop_formulas()) if count_flops else None
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        with counter or contextlib.nullcontext(), tracker:
            with precision.autocast():
                loss = task.loss(model, batch)
            precision.backward(loss / max(1, int(batch["num_items"])))
            for p in model.parameters():
                key = tracker.key_of(p.grad) if p.grad is not None else None
                if key is not None:
                    timeline.kind[key] = "gradients"
            tracker.open = False
            del loss
    finally:
        tracker.open = False
        model.zero_grad(set_to_none=True)
    timeline.flops = counter.get_total_flops() if counter is not None else 0
    return timeline


def _flop_formulas() -> dict:
    from bigmodel.models.base import _FLOP_FORMULAS  # the families' own counts (CPU attention, RNNs)

    return _FLOP_FORMULAS


# --- the plan ----------------------------------------------------------------------------------------


def training_plan(
    model: nn.Module,
    task,
    train_records: Records,
    cfg,
    world_size: int = 1,
    probe: bool = True,
    seed: int = 0,
) -> dict:
    """What training ``model`` on ``train_records`` per the recipe's ``train`` section will cost.

    Args:
        model: the built model (with the task's head); it is not changed.
        task: the fitted task (encodes, collates, computes the loss).
        train_records: the train split.
        cfg: the recipe's ``train`` section.
        world_size: processes the run would use (``--nproc``).
        probe: also measure a few real optimizer steps and the matmul peak (False: memory and FLOPs only).
        seed: the recipe's seed: the probe encodes and times the run's own first batches.

    Returns:
        A JSON-ready dict: ``device``, ``parameters``, ``batch``, ``flops``, ``memory`` (a row per
        precision and strategy, the recipe's marked ``chosen``), ``probe``, ``schedule``, ``verdict``,
        ``notes``. :func:`format_plan` prints it.

    Raises:
        UserError: no training examples, or an impossible ``world_size``.
    """
    if world_size < 1:
        raise UserError(f"--nproc: {world_size} is not a number of processes (>= 1).")
    if not len(train_records):
        raise UserError("data: the train split is empty; there is nothing to plan.")
    device = resolve_device(cfg.device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        return _plan(model, task, train_records, cfg, world_size, probe, device, seed)


def _plan(model, task, records, cfg, world_size, probe, device, seed: int = 0) -> dict:
    notes: list[str] = []
    batch_size = len(records) if cfg.batch_size == "all" else min(cfg.batch_size, len(records))
    lengths = example_lengths(task, records) if len(records) <= MAX_LENGTH_SCAN else None
    m = min(batch_size, MEASURE_BATCH)
    longest = np.argsort(-lengths, kind="stable") if lengths is not None else None
    order = longest if longest is not None else EpochSampler(len(records), batch_size).order(0)
    small, _ = _micro_batch(task, records, order[:m], seed)
    grouped = lengths if cfg.group_by_length else None
    steps, data_s = _loop_batches(task, records, batch_size, grouped, PROBE_WARMUP + PROBE_STEPS, seed)
    batches = (small, steps, data_s, batch_size, m)

    with _workspace(model, device) as work:  # every pass and step below runs on it
        return _plan_on(work, task, records, cfg, world_size, probe, device, notes, batches)


def _plan_on(work, task, records, cfg, world_size, probe, device, notes, batches) -> dict:
    strategy = "single" if world_size == 1 else cfg.distributed.strategy
    choice = {"precision": cfg.precision, "strategy": strategy, "world_size": world_size,
              "activation_checkpointing": cfg.activation_checkpointing}  # fmt: skip
    small, steps, data_s, batch_size, m = batches
    timelines, params = _measure_precisions(work, task, to_device(small, device), cfg, device, notes)
    counted = timelines["fp32"].flops * batch_size / m
    flops = _flops(work, steps[PROBE_WARMUP:], counted, cfg.grad_accum_steps, world_size)
    act_scale = batch_size / m
    sizing = _Sizing(timelines, params, m, batch_size, world_size, cfg, blocks_of(work))
    if not cfg.activation_checkpointing and sizing.blocks and cfg.precision != "fp16":
        sizing.checkpointed = _checkpointed_pass(work, task, to_device(small, device), device)
    sizing.glibc = device.type == "cpu" and platform.libc_ver()[0] == "glibc"
    rows = [sizing.row(p, s) for p in PRECISIONS for s in STRATEGIES]
    for row in rows:
        row["chosen"] = row["precision"] == cfg.precision and row["strategy"] == strategy
    chosen = next(row for row in rows if row["chosen"])
    device_info = _device_info(device)
    verdict = _verdict(chosen, rows, sizing, device_info)

    probe_result = None
    if probe and verdict["fits"] is not False:
        steps = [to_device(batch, device) for batch in steps]
        probe_result = _probe(work, task, steps, cfg, device, world_size, flops, data_s, notes)
    elif probe:
        notes.append("the probe did not run: the recipe does not fit this device as it stands")
    schedule = _schedule(len(records), batch_size, world_size, cfg, probe_result)
    report = params["fp32"]
    notes += _standing_notes(cfg, world_size, device, probe_result is not None)
    return {
        "choice": choice,
        "device": device_info,
        "parameters": {"total": report["params"], "trainable": report["trainable_params"]},
        "batch": _batch_info(steps[PROBE_WARMUP:], batch_size, cfg.grad_accum_steps, world_size, m),
        "flops": flops,
        "memory": {
            "rows": rows,
            "method": _memory_method(m, act_scale, sizing.glibc),
        },
        "probe": probe_result,
        "schedule": schedule,
        "verdict": verdict,
        "notes": notes,
    }


def _copy(model: nn.Module) -> nn.Module | None:
    """A deep copy, or None for a module that cannot be copied (one holding a thread-local, say)."""
    try:
        return copy.deepcopy(model)
    except (TypeError, RuntimeError, copy.Error):
        return None


@contextlib.contextmanager
def _workspace(model: nn.Module, device: torch.device):
    """A model the plan may change (cast, checkpoint, step): a deep copy on ``device``; or, where the
    model cannot be copied, the model itself, whose tensors, device, forward wrappers, train/eval
    modes and gradients are put back afterwards."""
    work = _copy(model)
    if work is not None:
        yield work.to(device)
        return
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    forwards = {m: m.__dict__.get("forward") for m in model.modules()}
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model.to(device)
    finally:
        for name, t in tensors.items():
            t.data = saved[name]
        for m, forward in forwards.items():
            m.__dict__.pop("forward", None)
            if forward is not None:
                m.forward = forward
        for m, training in modes:
            m.training = training
        model.zero_grad(set_to_none=True)


def _memory_method(measured: int, act_scale: float, glibc: bool) -> str:
    text = (
        f"one forward+backward of {measured} real examples measured (every storage created and freed), "
        f"activations scaled ×{act_scale:g} to the micro-batch; weights, gradients and optimizer state "
        "counted from the parameters; extra = DDP's gradient buckets or FSDP's unsharded blocks"
    )
    if glibc:
        text += (
            f"; alloc. = what glibc's malloc keeps beyond the live tensors: {HEAP_RETENTION:g}× the bytes a "
            f"step allocates in blocks under 32 MiB, at most {HEAP_KEPT_MAX:g}× the most live (measured)"
        )
    return text


def _loop_batches(
    task, records: Records, batch_size: int, lengths, count: int, seed: int = 0
) -> tuple[list[dict], float]:
    """The first ``count`` micro-batches the loop would train on (its sampler, length-grouped when the
    recipe asks), and the mean seconds to encode and collate one."""
    plan = EpochSampler(len(records), batch_size, seed, lengths=lengths).plan()
    batches, seconds = [], 0.0
    for _ in range(count):
        batch, spent = _micro_batch(task, records, [i for _, i in next(plan).keys], seed)
        batches.append(batch)
        seconds += spent
    return batches, seconds / count


def _micro_batch(task, records: Records, indices, seed: int = 0) -> tuple[dict, float]:
    """Encode (with a training RNG, as the loop does) and collate these examples; and the seconds it took."""
    started = time.perf_counter()
    dataset = TaskDataset(records, task.encode, seed=seed, train=True)
    batch = task.collate([dataset[(0, int(i))] for i in indices])
    return batch, time.perf_counter() - started


def _measure_precisions(work, task, batch, cfg, device, notes) -> tuple[dict, dict]:
    """A timeline and a parameter report per precision. fp16 shares bf16's (same element sizes) where
    the device cannot run it. With ``train.activation_checkpointing`` the blocks of ``work`` (and of
    the bf16-true copy) are checkpointed first, as the loop does, so the passes measure it; the
    FLOPs are then counted by a pass of their own before."""
    checkpointing = cfg.activation_checkpointing
    flops = (
        measure_pass(work, task, batch, resolve_precision("fp32", device)).flops if checkpointing else None
    )
    low = _copy(work) or work  # for bf16-true: copied before any checkpointing wraps a forward
    if checkpointing:
        for model in {id(m): m for m in (work, low)}.values():
            checkpoint_blocks(model)
    timelines, params = {}, {}
    for name in ("fp32", "bf16", "bf16-true", "fp16"):
        try:
            precision = resolve_precision(name, device)
        except RecipeError:
            timelines[name], params[name] = timelines["bf16"], params["bf16"]
            notes.append(
                f"{name} on {device.type}: memory as bf16 (same element sizes); it cannot train here"
            )
            continue
        if name == "fp16" and "bf16" in timelines:
            timelines[name], params[name] = timelines["bf16"], params["bf16"]  # same sizes, no extra pass
            continue
        model = precision.prepare(low) if name == "bf16-true" else work
        timelines[name] = measure_pass(model, task, batch, precision, count_flops=not checkpointing)
        params[name] = parameter_report(model, cfg.optimizer.name)
        if (
            model is work and name == "bf16-true"
        ):  # no copy: back to fp32 (exact weights come back at the end)
            work.to(torch.float32)
    del low
    if checkpointing:
        timelines["fp32"].flops = flops
    return timelines, params


def _checkpointed_pass(work, task, batch, device):
    """For the advice: a pass of ``precision`` with every block checkpointed, on a copy of ``work``."""

    def measure(name: str) -> Timeline:
        model = _copy(work) or work
        checkpoint_blocks(model)
        precision = resolve_precision(name, device)
        try:
            return measure_pass(precision.prepare(model), task, batch, precision, count_flops=False)
        finally:
            if model is work:  # undo the wrapping and the cast on the one working model
                for block in blocks_of(work):
                    block.__dict__.pop("forward", None)
                work.to(torch.float32)

    return measure


@dataclass
class _Sizing:
    """What the memory rows are computed from: the measured timelines and parameter reports per
    precision, the measured micro-batch size, and the recipe's batch, world size and blocks."""

    timelines: dict[str, Timeline]
    reports: dict[str, dict]
    measured: int
    batch_size: int
    world: int
    cfg: Any
    blocks: list[nn.Module]
    glibc: bool = False  # add what glibc's malloc keeps beyond the live tensors
    checkpointed: Any = None  # precision -> Timeline of a pass with checkpointed blocks (for advice)

    def row(self, precision: str, strategy: str, world: int | None = None, batch_size: int | None = None,
            timeline: Timeline | None = None) -> dict:  # fmt: skip
        """Bytes per process for one precision and strategy; ``total`` is their sum.

        ``activations`` is the forward+backward peak beyond the gradients (saved activations, transient
        buffers, autocast's weight copies), scaled to the micro-batch. ddp adds its gradient buckets (a
        second copy of the gradients); fsdp divides weights, gradients and optimizer state by the world
        size and adds its unsharded working set. ``allocator`` is what the CPU's malloc keeps beyond the
        live tensors (:meth:`Timeline.heap_kept`).
        """
        world = world or self.world
        act_scale = (batch_size or self.batch_size) / self.measured
        timeline, report = timeline or self.timelines[precision], self.reports[precision]
        mem = report["memory_bytes"]
        shard = 1.0 / world if strategy == "fsdp" else 1.0
        peak, _ = timeline.peak(act_scale, shard)
        grads = mem["gradients"] * shard
        activations = max(0.0, peak - grads)
        extra = 0.0
        if strategy == "ddp":
            extra = mem["gradients"]  # DistributedDataParallel's flat buckets (gradient_as_bucket_view off)
        elif strategy == "fsdp":
            extra = _fsdp_working_set(report, self.blocks, precision)
        row = {
            "precision": precision,
            "strategy": strategy,
            "weights": mem["weights"] * shard,
            "gradients": grads,
            "optimizer_state": mem["optimizer_state"] * shard,
            "activations": activations,
            "extra": extra,
            "allocator": timeline.heap_kept(act_scale, shard) if self.glibc else 0.0,
        }
        row["total"] = sum(v for k, v in row.items() if k not in ("precision", "strategy"))
        return {k: (round(v) if isinstance(v, float) else v) for k, v in row.items()}


def _fsdp_working_set(report: dict, blocks: list[nn.Module], precision: str) -> float:
    """FSDP2 all-gathers a unit's weights to run it and holds its full gradients until they are
    reduce-scattered: the root (everything outside the blocks, unsharded for the whole step) and two
    blocks (the running one and the prefetched next), weights and gradients; in bf16 autocast runs
    the gathered weights are bf16 (the lead's MixedPrecisionPolicy)."""
    mem = report["memory_bytes"]
    total = report["params"]
    block_params = [sum(p.numel() for p in b.parameters()) for b in blocks]
    unsharded = total - sum(block_params) + 2 * max(block_params, default=0)
    per_param = mem["weights"] / max(total, 1)
    if precision in ("bf16", "fp16"):
        per_param /= 2
    grad_fraction = report["trainable_params"] / max(total, 1)
    return unsharded * per_param * (1 + grad_fraction)


def _flops(work: nn.Module, batches: list[dict], counted_micro: float, accum: int, world: int) -> dict:
    """FLOPs per optimizer step: the family's PaLM formula where it has one (on the loop's own
    micro-batches, padding included: it costs compute), else counted."""
    counter = next((m for m in work.modules() if hasattr(m, "flops_per_token")), None)
    shapes = [_ids_shape(batch) for batch in batches]
    if counter is not None and all(shapes):
        per_token = [float(counter.flops_per_token(T)) for _, T in shapes]
        micro = statistics.mean(f * B * T for f, (B, T) in zip(per_token, shapes, strict=True))
        per_token_mean = micro / statistics.mean(B * T for B, T in shapes)
        method = "PaLM appendix B: 6N + 12·L·H·Q·T per token (model.flops_per_token) × tokens"
    else:
        per_token_mean, micro = None, counted_micro
        method = "counted: one real forward+backward (FlopCounterMode), scaled to the micro-batch"
    return {
        "per_step": micro * accum * world,
        "per_step_per_process": micro * accum,
        "per_token": per_token_mean,
        "counted_per_step_per_process": counted_micro * accum,
        "method": method,
    }


def _ids_shape(batch) -> tuple[int, int] | None:
    ids = batch.get("input_ids") if isinstance(batch, dict) else None
    return tuple(ids.shape) if isinstance(ids, torch.Tensor) and ids.ndim == 2 else None


def _batch_info(batches: list[dict], batch_size: int, accum: int, world: int, measured: int) -> dict:
    info = {"micro_batch": batch_size, "grad_accum_steps": accum, "world_size": world,
            "examples_per_step": batch_size * accum * world, "measured_examples": measured}  # fmt: skip
    shapes = [_ids_shape(batch) for batch in batches]
    if shapes and all(shapes):
        info["seq_len"] = round(statistics.mean(T for _, T in shapes), 1)
        info["tokens_per_step"] = round(statistics.mean(B * T for B, T in shapes)) * accum * world
    return info


# --- the device and the verdict ----------------------------------------------------------------------


def _device_info(device: torch.device) -> dict:
    """Name, memory (free GPU memory on CUDA; available RAM elsewhere) and threads."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "memory_bytes": free,
                "memory_total_bytes": total, "memory_kind": "free GPU memory"}  # fmt: skip
    return {"type": device.type, "name": _cpu_name(), "memory_bytes": _available_ram(),
            "memory_kind": "available RAM", "threads": torch.get_num_threads()}  # fmt: skip


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _needed(row_total: float, world: int, device: dict) -> float:
    """Bytes the run needs of the device's memory: on a CPU all processes share this machine's RAM."""
    return row_total * (world if device["type"] != "cuda" else 1)


def _verdict(chosen, rows, sizing: _Sizing, device) -> dict:
    """Fits or not, by how much, and what would make it fit."""
    available = device["memory_bytes"]
    needed = _needed(chosen["total"], sizing.world, device)
    out = {"fits": None, "needed_bytes": needed, "available_bytes": available, "advice": []}
    if available is None:
        return out
    out.update(fits=needed <= available, margin_bytes=available - needed)
    if out["fits"]:
        return out
    precision, strategy, advice = chosen["precision"], chosen["strategy"], out["advice"]
    for row in rows:
        cheaper = row["precision"] in ("bf16", "bf16-true") and row["precision"] != precision
        if (
            cheaper
            and row["strategy"] == strategy
            and _needed(row["total"], sizing.world, device) <= available
        ):
            advice.append(f"train.precision={row['precision']}")
    if not sizing.cfg.activation_checkpointing and sizing.blocks and sizing.checkpointed is not None:
        ac = sizing.row(precision, strategy, timeline=sizing.checkpointed(precision))
        if _needed(ac["total"], sizing.world, device) <= available:
            advice.append("train.activation_checkpointing=true")
    for n in (2, 4, 8, 16, 32, 64, 128, 256):
        if n > sizing.world and sizing.row(precision, "fsdp", world=n)["total"] <= available:
            where = "processes (one per GPU)" if device["type"] == "cuda" else "machines (one process each)"
            advice.append(f"train.distributed.strategy=fsdp over {n} {where}")
            break
    smaller = _largest_batch(chosen, sizing, device)
    if smaller:
        accum = math.ceil(sizing.batch_size * sizing.cfg.grad_accum_steps / smaller)
        advice.append(
            f"train.batch_size={smaller} train.grad_accum_steps={accum} (as many examples per step)"
        )
    return out


def _largest_batch(chosen, sizing: _Sizing, device) -> int | None:
    """The largest micro-batch below the recipe's that fits, by bisection on the measured timeline."""
    lo, hi = 0, sizing.batch_size - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        row = sizing.row(chosen["precision"], chosen["strategy"], batch_size=mid)
        if _needed(row["total"], sizing.world, device) <= device["memory_bytes"]:
            lo = mid
        else:
            hi = mid - 1
    return lo or None


# --- the probe: a few real steps and the matmul peak --------------------------------------------------


def _probe(work, task, batches, cfg, device, world, flops, data_s, notes) -> dict | None:
    """Time real optimizer steps of the recipe's precision on the copy over the loop's first
    micro-batches, warm-up excluded; measure the same-dtype matmul peak; MFU of the probe."""
    try:
        precision = resolve_precision(cfg.precision, device)
    except RecipeError as exc:
        notes.append(f"no probe: {exc}")
        return None
    threads = torch.get_num_threads()
    if device.type == "cpu" and world > 1:  # the processes share this machine's cores
        torch.set_num_threads(max(1, threads // world))
    try:
        precision.prepare(work)  # its blocks are checkpointed already when the recipe asks
        times = _time_steps(work, task, batches, cfg, precision, device)
        size = MATMUL_SIZE if device.type == "cpu" else 4 * MATMUL_SIZE  # 2048³ is launch-bound on a GPU
        peak = measure_matmul_peak(device, _PEAK_DTYPE[cfg.precision], size=size)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    data = data_s if cfg.num_workers == 0 else 0.0  # with workers, encoding overlaps the step
    # Seconds per token (or per micro-batch without tokens), median over the steps: robust to a step
    # slowed by another process on a shared machine, and to batches of different lengths.
    sizes = [math.prod(_ids_shape(batch) or (1,)) for batch in batches[PROBE_WARMUP:]][: len(times["micro"])]
    rate = statistics.median(t / n for t, n in zip(times["micro"], sizes, strict=True))
    micro, optim = rate * statistics.mean(sizes), statistics.median(times["optimizer"])
    step = (micro + data) * cfg.grad_accum_steps + optim
    achieved = flops["per_step_per_process"] / step
    return {
        "step_time_s": step,
        "micro_batch_time_s": micro,
        "optimizer_time_s": optim,
        "data_time_s": data,
        "steps_measured": len(times["micro"]),
        "warmup_steps": PROBE_WARMUP,
        "threads": used_threads,
        "peak_flops": peak,
        "peak_size": size,
        "peak_dtype": str(_PEAK_DTYPE[cfg.precision]).removeprefix("torch."),
        "achieved_flops": achieved,
        "mfu": achieved / peak,
        "suggest": f"train.peak_tflops={peak / 1e12:.4g}",
    }


def _time_steps(model, task, batches, cfg, precision, device) -> dict[str, list[float]]:
    """Seconds per micro-batch (forward+backward) and per optimizer update (clip + step), one step per
    batch, measured after the warm-up, until the batches or PROBE_SECONDS run out."""
    optimizer = build_optimizer(model, cfg.optimizer)
    model.train()
    times: dict[str, list[float]] = {"micro": [], "optimizer": []}
    spent = 0.0
    for step, batch in enumerate(batches):
        if step > PROBE_WARMUP and spent > PROBE_SECONDS:
            break
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        with precision.autocast():
            loss = task.loss(model, batch)
        precision.backward(loss / max(1, int(batch["num_items"])))
        _sync(device)
        middle = time.perf_counter()
        precision.unscale(optimizer)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        precision.step(optimizer)
        _sync(device)
        ended = time.perf_counter()
        if step >= PROBE_WARMUP:
            times["micro"].append(middle - started)
            times["optimizer"].append(ended - middle)
            spent += ended - started
    optimizer.zero_grad(set_to_none=True)
    return times


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int = MATMUL_SIZE, reps: int = 5
) -> float:
    """FLOP/s of the fastest of ``reps`` same-dtype ``size``³ matmuls (after a warm-up): the peak MFU
    is measured against (../shared/PERFORMANCE.md: never a hard-coded constant)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = math.inf
    for i in range(reps + 1):
        _sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i:  # the first is the warm-up
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the schedule and notes --------------------------------------------------------------------------


def _schedule(num_examples: int, batch_size: int, world: int, cfg, probe: dict | None) -> dict:
    """Steps as the loop counts them (an accumulation window never crosses an epoch's end) and the time."""
    sampler = EpochSampler(num_examples, batch_size, world=world)
    steps_per_epoch = math.ceil(sampler.batches_per_epoch() / cfg.grad_accum_steps)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    out = {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "epochs": round(total / steps_per_epoch, 3),
    }
    if probe is not None:
        out["estimated_time_s"] = total * probe["step_time_s"]
    return out


def _standing_notes(cfg, world: int, device: torch.device, probed: bool) -> list[str]:
    notes = []
    if device.type == "cuda":
        notes.append("PyTorch's caching allocator may reserve more than the live tensors counted here")
    if world > 1 and probed:
        notes.append(
            "the step time is one process's compute"
            + (f" on {os.cpu_count()} cores shared by {world} processes" if device.type == "cpu" else "")
            + "; gradient communication is not measured"
        )
    if cfg.compile:
        notes.append("train.compile: the probe ran eagerly; compilation's first step is not included")
    notes.append("training time excludes evaluation and checkpoints")
    return notes


# --- printing ----------------------------------------------------------------------------------------


def format_plan(plan: dict) -> str:
    """The plan as a few lines and a table a person reads (``bigmodel plan``)."""
    choice, dev, params, batch, flops = (
        plan[k] for k in ("choice", "device", "parameters", "batch", "flops")
    )
    memory = f", {_gib(dev['memory_bytes'])} {dev['memory_kind']}" if dev.get("memory_bytes") else ""
    threads = f", {dev['threads']} threads" if "threads" in dev else ""
    largest = max(row["total"] for row in plan["memory"]["rows"])
    unit, scale = ("GiB", 2**30) if largest >= 2**30 else ("MiB", 2**20)
    lines = [
        f"Device      {dev['type']} ({dev['name']}{threads}){memory}",
        f"Parameters  {_count(params['total'])} ({_count(params['trainable'])} trainable)",
        "Batch       " + _describe_batch(batch),
        f"FLOPs/step  {flops['per_step']:.3g} ({flops['method']})",
        "",
        f"Memory per process, {unit} (* = the recipe's choice; {choice['world_size']} process(es); "
        f"activation checkpointing {'on' if choice['activation_checkpointing'] else 'off'}):",
        f"  {'precision':<10}{'strategy':<9}"
        + "".join(f"{h:>9}" for h in ("weights", "grads", "optim", "activ.", "extra", "alloc.", "total")),
    ]
    for row in plan["memory"]["rows"]:
        parts = ("weights", "gradients", "optimizer_state", "activations", "extra", "allocator", "total")
        cells = "".join(f"{row[k] / scale:>9.3f}" for k in parts)
        lines.append(f"{'*' if row['chosen'] else ' '} {row['precision']:<10}{row['strategy']:<9}{cells}")
    lines.append(f"  ({plan['memory']['method']})")
    lines.append("")
    probe = plan["probe"]
    if probe:
        lines.append(
            f"Step time   {probe['step_time_s']:.3g} s (probe: {probe['steps_measured']} steps after "
            f"{probe['warmup_steps']} warm-up; micro-batch {probe['micro_batch_time_s']:.3g} s, optimizer "
            f"{probe['optimizer_time_s']:.3g} s)"
        )
        lines.append(
            f"Peak        {probe['peak_flops'] / 1e9:.4g} GFLOP/s "
            f"({probe['peak_dtype']} {probe['peak_size']}³ matmul); "
            f"the probe reached {probe['achieved_flops'] / 1e9:.4g} GFLOP/s = MFU {100 * probe['mfu']:.1f} %"
        )
        lines.append(f"            for MFU in the training logs: {probe['suggest']}")
    schedule = plan["schedule"]
    timing = f" ≈ {_duration(schedule['estimated_time_s'])}" if "estimated_time_s" in schedule else ""
    lines.append(f"Training    {schedule['total_steps']} steps ({schedule['epochs']:g} epochs){timing}")
    lines.append("Verdict     " + _describe_verdict(plan["verdict"], dev))
    lines += [f"Note        {note}" for note in plan["notes"]]
    return "\n".join(lines)


def _describe_batch(batch: dict) -> str:
    text = f"{batch['micro_batch']} examples per micro-batch"
    if "seq_len" in batch:
        text += f" × {batch['seq_len']} tokens"
    text += f", {batch['grad_accum_steps']} micro-batch(es) per step, {batch['world_size']} process(es)"
    text += f" = {batch['examples_per_step']} examples"
    if "tokens_per_step" in batch:
        text += f" ({batch['tokens_per_step']} tokens)"
    return text + " per step"


def _describe_verdict(verdict: dict, device: dict) -> str:
    if verdict["fits"] is None:
        return f"unknown: the device's memory cannot be read; it needs {_gib(verdict['needed_bytes'])}"
    share = 100 * verdict["needed_bytes"] / verdict["available_bytes"]
    if verdict["fits"]:
        tight = ", tightly: little room for anything else" if share > 90 else ""
        return (
            f"fits: {_gib(verdict['needed_bytes'])} of {_gib(verdict['available_bytes'])} ({share:.0f} %)"
            + tight
        )
    short = _gib(verdict["needed_bytes"] - verdict["available_bytes"])
    advice = "; ".join(verdict["advice"]) or "a smaller model"
    return (
        f"does NOT fit: {_gib(verdict['needed_bytes'])} needed, {_gib(verdict['available_bytes'])} "
        f"{device['memory_kind']} ({short} short). What fits: {advice}"
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
