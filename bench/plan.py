"""`bigmodel plan`'s estimates next to real training steps: memory and step time.

The plan runs in this process; the real steps run in a child through the loop's own ``fit``
(checkpoint writing switched off). Memory on a CPU is the child's peak RSS growth (VmHWM, reset
after the model is built) with glibc's default malloc and with a fixed mmap threshold (then RSS
follows the live tensors: the plan's estimate without its allocator allowance); on a GPU it is
``torch.cuda.max_memory_allocated``. Step time: the median of the loop's steps 2-6 (from
metrics.jsonl) against the probe's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/plan.py            # CPU: GPT-2 124M (context 64, batch 4)
    python3 bench/plan.py --gpu                                 # GPU: GPT-2 124M bf16, context 1024, batch 8

Prints one JSON object: machine, command, and one row per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402
from scale import write_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GPT2 = {
    "arch": "gpt",
    "embed_dim": 768,
    "num_heads": 12,
    "num_layers": 12,
    "max_positions": 1024,
    "dropout": 0.0,
}

CHILD = r"""
import json, sys
from pathlib import Path
import torch
from bigmodel import pipeline
from bigmodel.recipe import load_recipe
from bigmodel.training import loop

spec, steps, out = json.loads(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
recipe = load_recipe(spec)
task = pipeline.create_task(recipe)
splits, _ = pipeline._open_data(recipe, task)
task.fit(splits["train"])
model, _ = pipeline._build_model(recipe, task)
loop._save = lambda *args, **kwargs: None  # serialising checkpoints is not part of a training step

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

cuda = torch.cuda.is_available()
# Modules the first update imports lazily (torch._dynamo and others, ~45 MB once per process) belong
# to the process's baseline, as torch's own import does, not to a training step.
import torch.distributed.checkpoint  # noqa: F401

baseline = torch.cuda.memory_allocated() if cuda else status("VmRSS")
if cuda:
    torch.cuda.reset_peak_memory_stats()
else:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
cfg = recipe.train.model_copy(update={"max_steps": steps, "log_every": 1})
loop.fit(model, task, splits["train"], None, cfg, out, recipe.seed, show_progress=False)
peak = torch.cuda.max_memory_allocated() if cuda else status("VmHWM")
times = [json.loads(line)["time"] for line in (out / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({"baseline": baseline, "peak": peak, "times": times}))
"""


def real_steps(spec: dict, steps: int, env: dict | None = None) -> dict:
    """Peak memory growth and the median time of steps 2 on of ``steps`` real steps in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(spec), str(steps), folder],
            capture_output=True, text=True, timeout=1800, env=env,
        )  # fmt: skip
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    gaps = [b - a for a, b in zip(out["times"], out["times"][1:], strict=False)]
    return {"growth": out["peak"] - out["baseline"], "step_time_s": statistics.median(gaps)}


def compare(name: str, spec: dict, gpu: bool) -> dict:
    from bigmodel.pipeline import plan

    result = plan(spec)
    chosen = next(r for r in result["memory"]["rows"] if r["chosen"])
    real = real_steps(spec, 6)
    # on a GPU the child's baseline holds no weights (fit moves the model); on a CPU it does
    estimate = chosen["total"] - (0 if gpu else chosen["weights"])
    row = {
        "config": name,
        "device": result["device"]["name"],
        "precision": chosen["precision"],
        "estimate_bytes": estimate,
        "real_bytes": real["growth"],
        "memory_ratio": round(estimate / real["growth"], 4),
        "estimate_step_s": round(result["probe"]["step_time_s"], 4),
        "real_step_s": round(real["step_time_s"], 4),
        "time_ratio": round(result["probe"]["step_time_s"] / real["step_time_s"], 4),
        "probe_mfu": round(result["probe"]["mfu"], 4),
        "suggest": result["probe"]["suggest"],
    }
    if not gpu:  # without glibc's heap retention: the live tensors alone
        exact = real_steps(spec, 6, env={"MALLOC_MMAP_THRESHOLD_": "131072"})
        row["tensors_estimate_bytes"] = estimate - chosen["allocator"]
        row["tensors_real_bytes"] = exact["growth"]
        row["tensors_ratio"] = round(row["tensors_estimate_bytes"] / exact["growth"], 4)
    return row


def gpt2_spec(corpus: Path, context: int, batch: int, precision: str) -> dict:
    return {
        "name": "plan-gpt2",
        "data": {"source": f"jsonl:{corpus}", "max_length": context,
                 "split": {"validation": 0.05, "test": 0.05}},
        "task": {"name": "causal_lm", "tokenizer": {"kind": "word", "vocab_size": 50257}, "eval_tokens": 64},
        "model": GPT2,
        "train": {"batch_size": batch, "max_steps": 100, "precision": precision,
                  "optimizer": {"name": "adamw", "lr": 6e-4, "weight_decay": 0.1}},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="GPT-2 124M bf16 at context 1024 on the GPU")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        context, batch, precision = (1024, 8, "bf16") if args.gpu else (64, 4, "fp32")
        corpus = write_corpus(Path(folder) / "corpus.jsonl", 50257, max(200_000, 12 * batch * context))
        rows = [compare("gpt2-124m", gpt2_spec(corpus, context, batch, precision), args.gpu)]
    print(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
