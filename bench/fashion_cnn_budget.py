"""Training cost of Fashion-MNIST CNN candidates as a ratio to the shipped recipe, paired in one process.

The machine is shared, so 5 minutes of training cannot be timed directly. Instead each candidate's
training step (forward, backward, fused AdamW, batch 128 of 1x28x28 on 2 threads) is timed in short
blocks alternating with the reference model, and the median of per-pair ratios is turned into an
estimated quiet training time with the reference's measured anchor (274 s for 2,532 steps):

    estimated_s = 274 * ratio * candidate_steps / 2532

Data loading and augmentation are not in the step, so for a candidate dearer than the reference the
estimate scales those costs up too (a slight over-estimate). Prints JSON.

Run: .venv/bin/python bench/fashion_cnn_budget.py [--steps 20] [--reps 15] [--candidate NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bigmodel.models.registry import build_config, get_family

ANCHOR_SECONDS, ANCHOR_STEPS = 274.0, 2532  # docs/results.md: the shipped recipe on a quiet machine
BATCH = 128

REFERENCE = {"channels": [32, 64, 128], "dropout": 0.2}
CANDIDATES = {
    "c4": {"channels": [32, 64, 128, 256], "dropout": 0.2},  # the shipped recipe since issue 8
    "w64": {"channels": [64, 128, 256], "dropout": 0.2},
    "vgg16": {"channels": [16, 32, 64, 128], "convs_per_block": 2, "dropout": 0.2},
    "vgg2x3": {"channels": [32, 64, 128], "convs_per_block": 2, "dropout": 0.2},
    "vgg24": {"channels": [24, 48, 96, 192], "convs_per_block": 2, "dropout": 0.2},
}


def make_step(model_options: dict, seed: int = 0):
    """A closure doing one optimizer step on a fixed random batch; returns the model and the closure."""
    torch.manual_seed(seed)
    family = get_family("cnn")
    config = build_config(family, {"input_shape": (1, 28, 28), "num_outputs": 10, **model_options})
    model = family.model_cls(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, fused=True)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return model, step


def block_time(step, steps: int) -> float:
    """Seconds per step over ``steps`` consecutive steps."""
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--reps", type=int, default=15, help="reference/candidate pairs per candidate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidate", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, reference = make_step(REFERENCE)
    results = {}
    for name in args.candidate:
        model, candidate = make_step(CANDIDATES[name])
        for warm in (reference, candidate):
            block_time(warm, 5)
        ref_times, cand_times = [], []
        for rep in range(args.reps):  # alternate which goes first so drift does not favour one side
            order = [(reference, ref_times), (candidate, cand_times)]
            for step, times in order if rep % 2 == 0 else order[::-1]:
                times.append(block_time(step, args.steps))
        ratio = statistics.median(c / r for c, r in zip(cand_times, ref_times, strict=True))
        results[name] = {
            "model": CANDIDATES[name],
            "parameters": sum(p.numel() for p in model.parameters()),
            "ms_per_step_median": {
                "reference": round(statistics.median(ref_times) * 1000, 1),
                "candidate": round(statistics.median(cand_times) * 1000, 1),
            },
            "ms_per_step_min": {
                "reference": round(min(ref_times) * 1000, 1),
                "candidate": round(min(cand_times) * 1000, 1),
            },
            "ratio_median_of_pairs": round(ratio, 3),
            "estimated_quiet_s_per_1000_steps": round(ANCHOR_SECONDS * ratio * 1000 / ANCHOR_STEPS, 1),
        }
    machine = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    print(json.dumps({
        "machine": {**machine, "threads": args.threads},
        "command": " ".join(["python", *sys.argv]),
        "reference": REFERENCE,
        "anchor": {"seconds": ANCHOR_SECONDS, "steps": ANCHOR_STEPS},
        "candidates": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
