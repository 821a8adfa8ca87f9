"""The demo's promise: recipes/digits-cnn.yaml reaches >= 97 % test accuracy in <= 60 s of training.

Run: .venv/bin/python bench/demo.py [--seeds 0 1 2]
Prints JSON: machine, and per seed the test accuracy, macro F1, training seconds and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bigmodel  # noqa: E402
from machine import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            start = time.perf_counter()
            run = bigmodel.train("digits-cnn", output=out, progress=False, seed=seed)
            runs.append(
                {
                    "seed": seed,
                    "test_accuracy": round(run.metrics["test"]["accuracy"], 4),
                    "test_f1_macro": round(run.metrics["test"]["f1_macro"], 4),
                    "train_s": run.metrics["train"]["time_s"],
                    "wall_s": round(time.perf_counter() - start, 2),
                    "steps": run.metrics["train"]["steps"],
                    "params": run.metrics["train"]["params"],
                }
            )
    print(
        json.dumps(
            {
                "benchmark": "demo digits-cnn",
                "machine": machine(),
                "runs": runs,
                "median_test_accuracy": statistics.median(r["test_accuracy"] for r in runs),
                "max_train_s": max(r["train_s"] for r in runs),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
