"""Streaming evaluation: batches flow through the task's metric, one at a time.

Memory is bounded by one batch whatever the split's size (a language model's logits for a split do
not fit in memory); the metric's state is sums that merge across processes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from bigmodel.data.loader import TaskDataset, eval_batches, to_device
from bigmodel.data.records import Records
from bigmodel.errors import RecipeError
from bigmodel.training import dist as dists
from bigmodel.training.dist import SINGLE, Dist


@torch.no_grad()
def evaluate_records(
    model: nn.Module,
    task,
    records: Records,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    lengths: np.ndarray | None = None,
    precision=None,
    dist: Dist = SINGLE,
) -> dict:
    """The task's metrics (its ``metric().compute()``) over ``records``, in eval mode.

    Examples of tasks with a length (text) are batched longest first, so batches pad little;
    ``lengths`` (from :func:`example_lengths`) saves measuring them again on every call.
    The model's train/eval mode is restored afterwards.

    Args:
        precision: run the forward passes under its autocast (training's validation); None = fp32.
        dist: with many processes, rank r evaluates every w-th example and the metric's state is
            merged over ranks, so every rank returns the same numbers. A rank with fewer batches runs
            its first one again without counting it: an FSDP forward needs every rank.
    """
    was_training = model.training
    model.eval()
    metric = task.metric()
    dataset = TaskDataset(records, task.encode, train=False)
    lengths = example_lengths(task, records) if lengths is None else lengths
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    batches = eval_batches(dataset, batch_size, task.collate, num_workers, dist.rank, dist.world, lengths)
    rounds = dists.max_over_ranks(len(batches), dist)
    filler = None
    try:
        with autocast:
            for batch in batches:
                batch = to_device(batch, device)
                filler = batch if filler is None else filler
                metric.update(task.forward(model, batch), batch)
            for _ in range(rounds - len(batches)):
                if filler is None:  # this rank got no example at all
                    filler = to_device(task.collate([dataset[0]]), device)
                task.forward(model, filler)
    finally:
        model.train(was_training)
    dists.merge_metric(metric, dist)
    return metric.compute()


def example_lengths(task, records: Records) -> np.ndarray | None:
    """``task.length`` of every example, or None when the task has no length."""
    if not len(records) or task.length(records[0]) is None:
        return None
    return np.asarray([task.length(example) for example in records], dtype=np.int64)


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA, else MPS, else CPU; an explicit device that is absent is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            f"train.device: {name!r}, but this PyTorch sees no CUDA device ({torch.__version__}). "
            "Use train.device=auto or cpu."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RecipeError(f"train.device: {name!r}, but only {torch.cuda.device_count()} CUDA devices exist.")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise RecipeError(f"train.device: {name!r}, but MPS is not available here. Use auto or cpu.")
    return device
