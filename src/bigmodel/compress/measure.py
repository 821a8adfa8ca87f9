"""What a compressed model costs and keeps, measured on this machine: the task's metric on the test
split, size on disk, parameters, p50 latency at batch 1 and throughput at batch 32.

Timings are taken side by side: :func:`time_models` runs every model's timed forward in turn, round
after round, so a load that comes and goes on a shared machine hits all of them alike, and the
figures compared (speedups) are ratios of medians from the same rounds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bigmodel.data.loader import to_device
from bigmodel.data.records import Records
from bigmodel.training.validate import evaluate_records

LATENCY_BATCH = 1
THROUGHPUT_BATCH = 32
ROUNDS = 5  # timing rounds (medians are reported) and seconds per timed figure per round
SECONDS = 0.4


def primary_metric(task) -> tuple[str, bool]:
    """The metric a stage is judged by: the task's first metric other than the loss (accuracy, F1,
    mIoU, mAP, ...), with whether higher is better; the loss where the task has nothing else."""
    for name, higher in task.higher_is_better.items():
        if name != "loss":
            return name, higher
    return "loss", False


def task_metrics(model: nn.Module, task, records: Records, batch_size: int, device) -> dict:
    """The task's metrics on ``records`` (streaming, as evaluation computes them)."""
    return evaluate_records(model, task, records, batch_size, device)


def parameters(model: nn.Module) -> int:
    """Parameters and buffers that hold weights (a quantized module keeps its int8 weights in
    packed buffers, which ``parameters()`` does not list), counted once each."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        weight = getattr(packed, "_weight_bias", None) or getattr(module, "_weight_bias", None)
        if callable(weight):
            w, b = weight()
            count += w.numel() + (b.numel() if b is not None else 0)
    return count


def file_size(path: Path) -> int:
    return Path(path).stat().st_size


def example_batches(task, records: Records) -> dict[int, tuple[int, dict]]:
    """Real collated batches of the test split at the timed batch sizes (its first examples), each with
    its number of examples: ``{1: (1, batch), 32: (n, batch)}``."""
    out = {}
    for size in (LATENCY_BATCH, THROUGHPUT_BATCH):
        n = min(size, len(records))
        out[size] = (n, task.collate([task.encode(records[i], None) for i in range(n)]))
    return out


def time_models(
    models: dict[str, nn.Module],
    task,
    batches: dict[int, tuple[int, dict]],
    rounds: int | None = None,
    seconds: float | None = None,
) -> dict[str, dict]:
    """p50 latency (ms) at batch 1 and throughput (examples/s) at batch 32 of every model, timed in
    turn within each round; the figures are medians over the rounds (default :data:`ROUNDS` rounds of
    :data:`SECONDS` per figure)."""
    rounds, seconds = rounds or ROUNDS, seconds or SECONDS
    latencies: dict[str, list[float]] = {name: [] for name in models}
    rates: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up: first calls allocate, pack and pick kernels
            for _, batch in batches.values():
                task.forward(model.eval(), to_device(batch, "cpu"))
        for _ in range(rounds):
            for name, model in models.items():
                latencies[name].append(_p50_ms(model, task, batches[LATENCY_BATCH][1], seconds))
                rates[name].append(_rate(model, task, *batches[THROUGHPUT_BATCH], seconds))
    return {
        name: {
            "latency_ms_p50": statistics.median(latencies[name]),
            "throughput": statistics.median(rates[name]),
        }
        for name in models
    }


def _p50_ms(model: nn.Module, task, batch: dict, seconds: float) -> float:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        task.forward(model, batch)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _rate(model: nn.Module, task, n: int, batch: dict, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while True:
        task.forward(model, batch)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 3:
            return count * n / elapsed
