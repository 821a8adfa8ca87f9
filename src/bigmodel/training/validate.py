"""Streaming evaluation: batches flow through the task's metric, one at a time.

Memory is bounded by one batch whatever the split's size (a language model's logits for a split do
not fit in memory); the metric's state is sums that merge across processes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bigmodel.data.loader import TaskDataset, eval_batches, to_device
from bigmodel.data.records import Records
from bigmodel.errors import RecipeError


@torch.no_grad()
def evaluate_records(
    model: nn.Module,
    task,
    records: Records,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    lengths: np.ndarray | None = None,
) -> dict:
    """The task's metrics (its ``metric().compute()``) over ``records``, in eval mode.

    Examples of tasks with a length (text) are batched longest first, so batches pad little;
    ``lengths`` (from :func:`example_lengths`) saves measuring them again on every call.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    metric = task.metric()
    dataset = TaskDataset(records, task.encode, train=False)
    lengths = example_lengths(task, records) if lengths is None else lengths
    try:
        for batch in eval_batches(dataset, batch_size, task.collate, num_workers, lengths=lengths):
            batch = to_device(batch, device)
            metric.update(task.forward(model, batch), batch)
    finally:
        model.train(was_training)
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
