"""``fit``: the training loop, readable top to bottom.

One optimizer step = up to ``grad_accum_steps`` micro-batches (never crossing an epoch end) whose
summed losses are divided by the window's item count (samples or tokens), so batch 64 equals
16 × 4 even for token losses of unequal lengths → clip → step → LR schedule. Then, when due: a
metrics line, a streaming validation pass (and early stopping), a checkpoint. Everything the next
step depends on is in the checkpoint — weights, optimizer, schedule, samples consumed, RNG (CPU and
CUDA), early-stopping state — so a killed run resumes bit for bit. The run is locked while it
trains (one process per run), and what killed writers left behind is cleaned up when it starts.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bigmodel.data.loader import EpochSampler, TaskDataset, to_device, train_batches
from bigmodel.data.records import Records
from bigmodel.errors import RunDirError, UserError
from bigmodel.evaluation.metrics import scalar_metrics
from bigmodel.training import checkpoint as ckpt
from bigmodel.training import dist as dists
from bigmodel.training import state
from bigmodel.training.log import RunLogger, trim_metrics
from bigmodel.training.optim import build_optimizer, build_scheduler
from bigmodel.training.precision import Precision, resolve_precision
from bigmodel.training.throughput import Throughput
from bigmodel.training.validate import evaluate_records, example_lengths, resolve_device


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    steps: int
    epochs: int
    time_s: float
    samples_per_s: float
    stopped_early: bool
    best: dict | None  # {"step", "metric", "value"} when early stopping is on
    model: nn.Module  # the module that trained: the caller's, or its DDP wrapper
    precision: Precision


def fit(
    model: nn.Module,
    task,
    train: Records,
    validation: Records | None,
    cfg,
    run_dir: Path,
    seed: int,
    resume: bool = False,
    show_progress: bool = True,
) -> FitResult:
    """Train ``model`` on the ``train`` records per the recipe's ``train`` section.

    Args:
        task: encodes and collates the examples and computes the (summed) loss and the metrics.
        validation: records for evaluation and early stopping, or None.
        run_dir: where checkpoints and metrics.jsonl go.
        resume: continue from ``run_dir/train_state`` exactly where it stopped. A run that stopped
            before its first checkpoint starts again from step 0: the caller must then have built
            ``model`` exactly as the fresh run did (same seed, same pretrained weights).

    Raises:
        RunDirError: another process is training this run, or its checkpoints are all damaged.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with ckpt.run_lock(run_dir) if dists.current().main else contextlib.nullcontext():  # rank 0 holds it
        return _fit(model, task, train, validation, cfg, run_dir, seed, resume, show_progress)


def _fit(model, task, train, validation, cfg, run_dir: Path, seed, resume, show_progress) -> FitResult:
    dist = replace(dists.current(), strategy=cfg.distributed.strategy)
    device = resolve_device(cfg.device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision = resolve_precision(cfg.precision, device)
    precision.prepare(model.to(device))
    if cfg.activation_checkpointing:
        dists.checkpoint_blocks(model)
    model = dists.wrap(model, dist, device, precision)  # the module that trains (DDP/FSDP2 or itself)
    if cfg.compile:
        model.compile()  # in place: parameter names and checkpoints do not change
    batch_size = len(train) if cfg.batch_size == "all" else min(cfg.batch_size, len(train))
    eval_batch_size = cfg.evaluation_batch_size
    lengths = example_lengths(task, train) if cfg.group_by_length else None
    if cfg.group_by_length and lengths is None:
        raise UserError(f"train.group_by_length: task {task.name} has no example length to group by.")
    # batch_size is per process: the global batch is batch_size × processes; rank r takes every w-th.
    sampler = EpochSampler(len(train), batch_size, seed, dist.rank, dist.world, lengths=lengths)
    steps_per_epoch = math.ceil(sampler.batches_per_epoch() / cfg.grad_accum_steps)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps)
    stopping = EarlyStopping(cfg.early_stopping, task) if cfg.early_stopping and validation else None
    val_lengths = example_lengths(task, validation) if validation is not None else None  # once, not per eval
    throughput = Throughput(dists.unwrap(model), cfg.peak_tflops)

    step, elapsed, samples_seen, stopped_early = 0, 0.0, 0, False
    found = ckpt.load_train_state(run_dir, _checker(dists.unwrap(model))) if resume else None
    if found is not None:
        step, elapsed, samples_seen, stopped_early = _restore(
            found, model, optimizer, scheduler, sampler, stopping, precision, dist, seed
        )
    else:
        torch.manual_seed(seed + dist.rank)  # dropout masks; the weights were initialised before fit
    dists.barrier(dist)  # every rank has read the checkpoint before rank 0 tidies the folder
    if dist.main:
        if resume:
            trim_metrics(run_dir / "metrics.jsonl", step)
        ckpt.clean_temporaries(run_dir)  # torn files of a killed predecessor

    metrics_file = run_dir / "metrics.jsonl" if dist.main else None  # only rank 0 writes and shows
    logger = RunLogger(metrics_file, total_steps, show=show_progress and dist.main)
    for note in found.skipped if found is not None else []:
        logger.message(f"passed over {note}")
    if found is not None:
        logger.message(f"resumed at step {step}/{total_steps} (epoch {sampler.epoch}) from {found.path.name}")
    elif resume:
        logger.message("the run stopped before its first checkpoint: training again from step 0")
    if dist.active:
        logger.message(
            f"{dist.world} processes ({dist.strategy}, {device.type}); global batch {sampler.global_batch}"
        )
    batches = train_batches(
        TaskDataset(train, task.encode, seed, train=True), sampler, task.collate, cfg.num_workers
    )
    model.train()
    try:
        while step < total_steps and not stopped_early:
            started = time.perf_counter()
            # --- one optimizer step over the micro-batches of one accumulation window ---
            window = []
            for planned, batch in batches:
                window.append((planned, batch))
                if len(window) == cfg.grad_accum_steps or planned.epoch_done:
                    break
            # The summed loss is divided by the items of the whole window on all ranks; DDP/FSDP then
            # average gradients over ranks, hence the factor world.
            num_items = dists.sum_over_ranks(sum(batch["num_items"] for _, batch in window), dist)
            optimizer.zero_grad(set_to_none=True)
            losses, items = [], 0
            for i, (planned, batch) in enumerate(window):
                with dists.no_sync(model, last=i == len(window) - 1):
                    with precision.autocast():
                        loss = task.loss(model, to_device(batch, device))  # summed over the batch's items
                    precision.backward(loss / (num_items / dist.world))
                losses.append(loss.detach())
                items += len(planned.keys)
                throughput.count(batch)
            sampler.advance(window[-1][0])
            epoch_done = window[-1][0].epoch_done
            if cfg.grad_clip:
                precision.unscale(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            precision.step(optimizer)
            scheduler.step()
            # Read the loss only now: one wait for the device per step, after the update is queued.
            # A diverged step has changed the weights in memory, but not the last checkpoint.
            loss_sum, items = dists.sum_over_ranks((sum(x.item() for x in losses), items), dist)
            if not math.isfinite(loss_sum):
                raise TrainingDiverged(
                    f"training stopped: the loss became {loss_sum} at step {step + 1} "
                    f"(epoch {window[-1][0].epoch + 1}). The last good checkpoint is kept in "
                    f"{run_dir / ckpt.STATE_DIR}. Lower train.optimizer.lr, set train.grad_clip, "
                    f"or check the data for extreme values."
                )
            samples_seen += int(items)
            step += 1
            step_time = time.perf_counter() - started
            elapsed += step_time

            # --- bookkeeping: log, evaluate, checkpoint ---
            speed = samples_seen / elapsed if elapsed else 0.0
            lr = optimizer.param_groups[0]["lr"]
            record = step % cfg.log_every == 0 or epoch_done or step == 1
            rates = throughput.rates(step_time, dist.world)
            if device.type == "cuda":  # what the step really held, to set against `bigmodel plan`
                rates["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            logger.step(step, sampler.epoch, loss_sum / num_items, lr, speed, record=record, extra=rates)
            eval_due = (step % cfg.eval_every == 0) if cfg.eval_every else epoch_done
            if validation is not None and (eval_due or step == total_steps):
                metrics = evaluate_records(
                    model, task, validation, eval_batch_size, device, cfg.num_workers, val_lengths,
                    precision=precision, dist=dist,
                )  # fmt: skip
                metrics = scalar_metrics(metrics)
                logger.evaluation(step, sampler.epoch, "validation", metrics)
                if stopping and stopping.update(metrics, step, lambda: state.full_model_state(model, dist)):
                    stopped_early = True
                    logger.message(f"early stopping at step {step}: {stopping.describe()}")
            if step % cfg.checkpoint_every == 0 or epoch_done or step == total_steps or stopped_early:
                _save(run_dir, step, elapsed, samples_seen, model, optimizer, scheduler, sampler, stopping,
                      stopped_early, precision, dist)  # fmt: skip
    finally:
        logger.close()

    if stopping and stopping.best_state is not None and cfg.early_stopping.restore_best:
        state.load_full_model(model, stopping.best_state, dist)
    return FitResult(
        step,
        sampler.epoch,
        elapsed,
        samples_seen / elapsed if elapsed else 0.0,
        stopped_early,
        stopping.summary() if stopping else None,
        model,
        precision,
    )


class EarlyStopping:
    """Stop after ``patience`` evaluations without improving ``metric`` by more than ``min_delta``."""

    def __init__(self, cfg, task):
        if cfg.metric not in task.metric_names:
            raise UserError(
                f"train.early_stopping.metric: {cfg.metric!r} is not a validation metric of the "
                f"{task.name} task. Allowed: {', '.join(task.metric_names)}."
            )
        self.cfg = cfg
        self.sign = (
            1.0 if (cfg.mode == "max" or (cfg.mode == "auto" and task.higher_is_better[cfg.metric])) else -1.0
        )
        self.best_value: float | None = None
        self.best_step = 0
        self.bad_evals = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, metrics: dict[str, float], step: int, weights) -> bool:
        """Record an evaluation; return True when training should stop.

        Args:
            weights: returns the model's whole state dict (called only on an improvement).
        """
        value = metrics[self.cfg.metric]
        if self.best_value is None or self.sign * (value - self.best_value) > self.cfg.min_delta:
            self.best_value, self.best_step, self.bad_evals = value, step, 0
            self._keep(weights())
            return False
        self.bad_evals += 1
        return self.bad_evals >= self.cfg.patience

    def _keep(self, state: dict[str, torch.Tensor]) -> None:
        """Copy the weights into CPU buffers allocated once (no new allocation per improvement; on a GPU
        the copy does not hold device memory)."""
        if self.best_state is None:
            self.best_state = {k: torch.empty_like(v, device="cpu") for k, v in state.items()}
        for k, v in state.items():
            self.best_state[k].copy_(v.detach(), non_blocking=True)

    def describe(self) -> str:
        return (
            f"validation {self.cfg.metric} did not improve for {self.bad_evals} evaluations; "
            f"best {self.best_value:.4f} at step {self.best_step}"
        )

    def summary(self) -> dict:
        return {"metric": self.cfg.metric, "value": self.best_value, "step": self.best_step}

    def state(self) -> dict:
        return {"best_value": self.best_value, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.best_value, self.best_step, self.bad_evals = (
            state["best_value"],
            state["best_step"],
            state["bad_evals"],
        )
        best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None


def _save(
    run_dir, step, elapsed, samples_seen, model, optimizer, scheduler, sampler, stopping, stopped_early,
    precision, dist,
):  # fmt: skip
    tensors, optim_meta = state.gather(model, optimizer, dist)
    suffix = f".rank{dist.rank}" if dist.active else ""  # each rank's own random stream
    tensors[f"rng.torch{suffix}"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if dist.active:
            tensors[f"rng.cuda{suffix}"] = torch.cuda.get_rng_state()
        else:
            tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if stopping and stopping.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in stopping.best_state.items()})
    meta = {
        "optimizer": optim_meta,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "sampler": sampler.state_dict(),
        "early_stopping": stopping.state() if stopping else None,
        "elapsed_s": elapsed,
        "samples_seen": samples_seen,
        "epoch": sampler.epoch,
        "stopped_early": stopped_early,
        "scaler": precision.state(),
        "world": dist.world,
    }
    if dist.active:
        ckpt.save_sharded_state(run_dir, step, tensors, meta, dist)
    else:
        ckpt.save_train_state(run_dir, step, {k: v.cpu() for k, v in tensors.items()}, meta)


_META_KEYS = (
    "optimizer",
    "scheduler",
    "sampler",
    "early_stopping",
    "elapsed_s",
    "samples_seen",
    "stopped_early",
)


def _checker(model: nn.Module):
    """What a checkpoint must hold to resume this model: every key _save writes, this model's tensors
    (read from a step file, or listed in a sharded checkpoint's meta.json)."""
    expected = {f"model.{k}": (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}

    def check(tensors: dict[str, torch.Tensor] | None, meta: dict) -> None:
        missing = [key for key in _META_KEYS if key not in meta]
        if tensors is not None:
            missing += [] if "rng.torch" in tensors else ["rng.torch"]
            found = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items() if k.startswith("model.")}
        else:
            found = {
                k: (tuple(shape), getattr(torch, dtype, None))
                for k, (shape, dtype) in meta["tensors"].items()
                if k.startswith("model.")
            }
            for alias, name in meta["optimizer"].get("aliases", {}).items():  # tied weights, stored once
                found[alias] = found.get(name)
        if missing:
            raise ValueError(f"not a complete training state: it lacks {', '.join(missing)}")
        if found != expected:
            wrong = sorted(k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k))
            raise ValueError(f"its weights do not fit this run's model ({', '.join(wrong[:3])})")

    return check


def _restore(
    found: ckpt.TrainState, model, optimizer, scheduler, sampler, stopping, precision, dist, seed
) -> tuple[int, float, int, bool]:
    """Load a checkpoint written by any number of processes into this one's model, optimizer,
    schedule, sampler, scaler, random streams and early stopping."""
    meta = found.meta
    try:
        if found.sharded:
            tensors = state.template(model, optimizer)
            for key, (shape, dtype) in meta["tensors"].items():
                if key.startswith("best."):
                    tensors[key] = torch.empty(shape, dtype=getattr(torch, dtype))
            if dist.rank < meta.get("world", 1):
                tensors[f"rng.torch.rank{dist.rank}"] = torch.empty_like(torch.get_rng_state())
                if "rng.cuda.rank0" in meta["tensors"] and torch.cuda.is_available():
                    tensors[f"rng.cuda.rank{dist.rank}"] = torch.empty_like(torch.cuda.get_rng_state())
            ckpt.read_sharded(found.path, tensors)
        else:
            tensors = found.tensors
        state.apply(model, optimizer, tensors, meta["optimizer"], dist, full=not found.sharded)
        scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
        sampler.load_state_dict(meta["sampler"])
        precision.load(meta.get("scaler"))
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise RunDirError(f"{found.path}: this checkpoint does not fit the run's recipe ({exc}).") from None
    rng = tensors.get(f"rng.torch.rank{dist.rank}")
    if rng is None and dist.rank == 0:
        rng = tensors.get("rng.torch")
    if rng is not None:
        torch.set_rng_state(rng)
    else:  # a rank the writing run did not have: a fresh stream, the same on every resume
        torch.manual_seed(seed + 1_000_003 * meta["step"] + dist.rank)
    cuda_states = [tensors[k] for k in sorted(tensors, key=_cuda_index) if _cuda_index(k) >= 0]
    if cuda_states and torch.cuda.is_available() and not dist.active:
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    elif f"rng.cuda.rank{dist.rank}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda.rank{dist.rank}"])
    if stopping and meta["early_stopping"]:
        stopping.load(meta["early_stopping"], tensors)
    return meta["step"], meta["elapsed_s"], meta["samples_seen"], meta["stopped_early"]


def _cuda_index(key: str) -> int:
    return int(key.rsplit(".", 1)[1]) if key.startswith("rng.cuda.") and key[9:].isdigit() else -1
