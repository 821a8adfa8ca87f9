"""AdamW step time on CPU: for-loop vs foreach vs fused, for a model the size of MiniLM-L6 (22.6M
parameters: a 30,522 x 384 embedding, 6 blocks, biases and norms). Prints JSON.

Run: .venv/bin/python bench/optimizers.py [--steps 10] [--reps 3]
The three implementations alternate rep by rep in one process; the figure is the median per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

SHAPES = [(30522, 384), (512, 384)] + [(384, 384)] * 24 + [(1536, 384), (384, 1536)] * 6 + [(384,)] * 80
MODES = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_time(kwargs: dict, steps: int) -> float:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **kwargs)
    for _ in range(3):  # warm-up: state allocation
        optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    times = {mode: [] for mode in MODES}
    for _ in range(args.reps):
        for mode, kwargs in MODES.items():
            times[mode].append(step_time(kwargs, args.steps))
    median = {mode: statistics.median(t) * 1000 for mode, t in times.items()}
    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 2}
    print(json.dumps({
        "machine": machine,
        "command": " ".join(["python", *sys.argv]),
        "params_m": round(sum(torch.Size(s).numel() for s in SHAPES) / 1e6, 2),
        "ms_per_step_median": {k: round(v, 1) for k, v in median.items()},
        "fused_speedup_vs_forloop": round(median["forloop"] / median["fused"], 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
