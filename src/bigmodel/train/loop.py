"""``fit``: the training loop, readable top to bottom.

One optimizer step = ``grad_accum_steps`` micro-batches (never crossing an epoch end) → clip →
step → LR schedule. Then, when due: a metrics line, a validation pass (and early stopping), a
checkpoint. Everything the next step depends on is in the checkpoint — weights, optimizer,
schedule, loader position, RNG, early-stopping state — so a killed run resumes bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bigmodel.data.loader import BatchLoader
from bigmodel.errors import UserError
from bigmodel.evaluate.metrics import scalar_metrics
from bigmodel.models.base import predict_outputs
from bigmodel.train import checkpoint as ckpt
from bigmodel.train.log import RunLogger, trim_metrics
from bigmodel.train.optim import build_optimizer, build_scheduler


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


def validate(model: nn.Module, task, *data: torch.Tensor) -> dict[str, float]:
    """Loss and metrics on ``data = (*inputs, targets)``."""
    *inputs, targets = data
    outputs = predict_outputs(model, *inputs)
    return {"loss": float(task.loss(outputs, targets)), **scalar_metrics(task.metrics(outputs, targets))}


def fit(
    model: nn.Module,
    task,
    train_data,
    val_data,
    cfg,
    run_dir: Path,
    seed: int,
    resume: bool = False,
    show_progress: bool = True,
) -> FitResult:
    """Train ``model`` on ``train_data`` per the recipe's ``train`` section.

    Args:
        train_data: ``(*inputs, targets)`` tensors sharing their first dimension; each batch calls
            ``model(*inputs)`` (features alone, or token ids and an attention mask).
        val_data: the same for evaluation and early stopping, or None.
        run_dir: where checkpoints and metrics.jsonl go.
        resume: continue from ``run_dir/train_state`` exactly where it stopped.
    """
    run_dir = Path(run_dir)
    batch_size = None if cfg.batch_size == "all" else cfg.batch_size
    loader = BatchLoader(train_data, batch_size, seed=seed)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum_steps)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps)
    stopping = EarlyStopping(cfg.early_stopping, task) if cfg.early_stopping and val_data else None

    step, elapsed, samples_seen, stopped_early = 0, 0.0, 0, False
    if resume:
        step, elapsed, samples_seen, stopped_early = _restore(
            run_dir, model, optimizer, scheduler, loader, stopping
        )
        trim_metrics(run_dir / "metrics.jsonl", step)
    else:
        torch.manual_seed(seed)  # dropout masks; the weights were initialised before fit

    logger = RunLogger(run_dir / "metrics.jsonl", total_steps, show=show_progress)
    if resume:
        logger.message(f"resumed at step {step}/{total_steps} (epoch {loader.epoch})")
    model.train()
    try:
        while step < total_steps and not stopped_early:
            started = time.perf_counter()
            # --- one optimizer step over up to grad_accum_steps micro-batches of this epoch ---
            micro = min(cfg.grad_accum_steps, len(loader) - loader.position)
            optimizer.zero_grad(set_to_none=True)
            step_loss, epoch_done = 0.0, False
            for _ in range(micro):
                (*inputs, targets), epoch_done = loader.next_batch()
                loss = task.loss(model(*inputs), targets)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"training stopped: the loss became {loss.item()} at step {step + 1} "
                        f"(epoch {loader.epoch + 1}). The last good checkpoint is kept in "
                        f"{run_dir / ckpt.STATE_DIR}. Lower train.optimizer.lr, set train.grad_clip, "
                        f"or check the data for extreme values."
                    )
                (loss / micro).backward()
                step_loss += loss.item() / micro
                samples_seen += len(targets)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            elapsed += time.perf_counter() - started

            # --- bookkeeping: log, evaluate, checkpoint ---
            speed = samples_seen / elapsed if elapsed else 0.0
            lr = optimizer.param_groups[0]["lr"]
            logger.step(
                step, loader.epoch, step_loss, lr, speed, record=step % cfg.log_every == 0 or epoch_done
            )
            eval_due = (step % cfg.eval_every == 0) if cfg.eval_every else epoch_done
            if val_data is not None and (eval_due or step == total_steps):
                metrics = validate(model, task, *val_data)
                logger.evaluation(step, loader.epoch, "validation", metrics)
                if stopping and stopping.update(metrics, step, model):
                    stopped_early = True
                    logger.message(f"early stopping at step {step}: {stopping.describe()}")
            if step % cfg.checkpoint_every == 0 or epoch_done or step == total_steps or stopped_early:
                _save(
                    run_dir,
                    step,
                    elapsed,
                    samples_seen,
                    model,
                    optimizer,
                    scheduler,
                    loader,
                    stopping,
                    stopped_early,
                )
    finally:
        logger.close()

    if stopping and stopping.best_state is not None and cfg.early_stopping.restore_best:
        model.load_state_dict(stopping.best_state)
    return FitResult(
        step,
        loader.epoch,
        elapsed,
        samples_seen / elapsed if elapsed else 0.0,
        stopped_early,
        stopping.summary() if stopping else None,
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

    def update(self, metrics: dict[str, float], step: int, model: nn.Module) -> bool:
        """Record an evaluation; return True when training should stop."""
        value = metrics[self.cfg.metric]
        if self.best_value is None or self.sign * (value - self.best_value) > self.cfg.min_delta:
            self.best_value, self.best_step, self.bad_evals = value, step, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_evals += 1
        return self.bad_evals >= self.cfg.patience

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


def _save(run_dir, step, elapsed, samples_seen, model, optimizer, scheduler, loader, stopping, stopped_early):
    optim_tensors, optim_meta = ckpt.optimizer_to_flat(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if stopping and stopping.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in stopping.best_state.items()})
    meta = {
        "optimizer": optim_meta,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "loader": loader.state_dict(),
        "early_stopping": stopping.state() if stopping else None,
        "elapsed_s": elapsed,
        "samples_seen": samples_seen,
        "epoch": loader.epoch,
        "stopped_early": stopped_early,
    }
    ckpt.save_train_state(run_dir, step, tensors, meta)


def _restore(run_dir, model, optimizer, scheduler, loader, stopping) -> tuple[int, float, int, bool]:
    found = ckpt.load_train_state(run_dir)
    if found is None:
        raise UserError(
            f"--resume {run_dir}: no checkpoint in {run_dir / ckpt.STATE_DIR}; start a new run instead."
        )
    tensors, meta = found
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors, meta["optimizer"]))
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    loader.load_state_dict(meta["loader"])
    torch.set_rng_state(tensors["rng.torch"])
    if stopping and meta["early_stopping"]:
        stopping.load(meta["early_stopping"], tensors)
    return meta["step"], meta["elapsed_s"], meta["samples_seen"], meta["stopped_early"]
