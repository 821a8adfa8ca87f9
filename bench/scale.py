"""Training throughput and MFU of the `gpt` family through `bigmodel train`, for 1 and 2 processes
(torchrun, gloo) in fp32 and bf16 on this CPU, or GPT-2 124M in bf16 on a GPU.

Every figure comes from the run's own metrics.jsonl (the loop logs tokens/s, TFLOP/s and MFU per
step: PaLM's 6N + 12·L·H·Q·T FLOPs per token), median over the steps after a warm-up. The MFU
denominator is a matmul peak measured here first, same dtype, per process (2 processes on 2 cores
get 1 thread each, so each is measured against the 1-thread peak).

    OMP_NUM_THREADS=2 .venv/bin/python bench/scale.py                 # CPU: tiny and small, 1 and 2 processes
    python3 bench/scale.py --gpu                                      # GPU: GPT-2 124M bf16 (+ torch.compile)

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

# name -> (model options, tokenizer, context, per-run global batch, steps)
CONFIGS = {
    # the gpt-tiny preset's shape (2 layers of 36), a word vocabulary
    "tiny": ({"embed_dim": 36, "num_heads": 3, "num_layers": 2, "ffn_dim": 37}, ("word", 97), 32, 16, 30),
    # PERFORMANCE.md's reference shape: 6 layers of 384, context 256, batch 8, a character vocabulary
    "small": ({"embed_dim": 384, "num_heads": 6, "num_layers": 6}, ("char", None), 256, 8, 12),
    # GPT-2 124M: 12 layers of 768, context 1024, GPT-2's vocabulary size (50,257 word types here)
    "gpt2": ({"embed_dim": 768, "num_heads": 12, "num_layers": 12}, ("word", 50257), 1024, 32, 60),
    # levers: nanoGPT's vocabulary padded to a multiple of 64, and a larger batch
    "gpt2-v50304": ({"embed_dim": 768, "num_heads": 12, "num_layers": 12}, ("word", 50304), 1024, 32, 60),
    "gpt2-b64": ({"embed_dim": 768, "num_heads": 12, "num_layers": 12}, ("word", 50257), 1024, 64, 60),
}


def write_corpus(path: Path, word_types: int, words: int, seed: int = 0) -> Path:
    """Documents of Zipf-distributed words (``w0 w17 w3 ...``): enough distinct words for the
    vocabulary a configuration needs, generated here (no download)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, word_types + 1)
    p /= p.sum()
    ids = rng.choice(word_types, size=words, p=p)
    ids[:word_types] = np.arange(word_types)  # every type appears at least once
    rng.shuffle(ids)
    with open(path, "w") as f:
        for doc in np.array_split(ids, max(1, words // 2000)):
            f.write(json.dumps({"text": " ".join(f"w{i}" for i in doc)}) + "\n")
    return path


def recipe(name: str, corpus: Path, nproc: int, precision: str, peak_tflops: float, compile_: bool) -> dict:
    """The run: ``name``'s model on ``corpus``; on a GPU, 4 loader workers prepare the next batches
    while the device computes."""
    options, (kind, vocab), context, global_batch, steps = CONFIGS[name]
    return {
        "name": f"scale-{name}",
        "seed": 0,
        "data": {"source": f"jsonl:{corpus}", "max_length": context,
                 "split": {"validation": 0.01, "test": 0.01}},
        "task": {"name": "causal_lm", "tokenizer": {"kind": kind, "vocab_size": vocab}, "eval_tokens": 2048},
        "model": {"arch": "gpt", **options, "max_positions": context, "dropout": 0.0, "attn_dropout": 0.0},
        "train": {
            "max_steps": steps, "epochs": 100, "batch_size": global_batch // nproc, "log_every": 1,
            "eval_every": 10_000, "checkpoint_every": 10_000, "keep_train_state": "none",
            "optimizer": {"name": "adamw", "lr": 3e-4}, "precision": precision,
            "peak_tflops": peak_tflops, "compile": compile_,
            "num_workers": 4 if name.startswith("gpt2") else 0,
        },
    }  # fmt: skip


def measure_peak(dtype: str, threads: int | None, device: str) -> float:
    """The same-dtype matmul peak in TFLOP/s, in a fresh process with ``threads`` threads."""
    size = 8192 if device == "cuda" else 2048
    code = (
        "import torch, sys; from bigmodel.training.plan import measure_matmul_peak as m; "
        f"t = {threads!r}; t and torch.set_num_threads(t); "
        f"print(m(torch.device('{device}'), getattr(torch, '{dtype}'), size={size}, reps=10) / 1e12)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(
    name: str, corpus: Path, nproc: int, precision: str, peak: float, compile_: bool, out: Path, threads=None
) -> dict:
    spec = out / f"{name}-{nproc}-{precision}-{int(compile_)}.json"
    spec.write_text(json.dumps(recipe(name, corpus, nproc, precision, peak, compile_)))
    command = [sys.executable, "-m", "bigmodel", "train", str(spec), "-o", str(out / spec.stem)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"config": name, "processes": nproc, "precision": precision, "error": proc.stderr[-2000:]}
    (metrics,) = (out / spec.stem).glob("*/*/metrics.jsonl")
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [s for s in steps if "tokens_per_s" in s]
    warm = steps[max(3, len(steps) // 4) :]  # compile and allocator warm-up excluded
    return {
        "config": name,
        "processes": nproc,
        "precision": precision,
        "compile": compile_,
        "steps_measured": len(warm),
        "tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in warm), 1),
        "tflops_per_s": round(statistics.median(s["tflops_per_s"] for s in warm), 4),
        "mfu": round(statistics.median(s["mfu"] for s in warm), 4),
        "peak_tflops_per_process": round(peak, 4),
        "final_loss": round(steps[-1]["loss"], 4),
        "step_time_s": round(
            statistics.median(b["time"] - a["time"] for a, b in zip(warm, warm[1:], strict=False)), 4
        ),
        **({"peak_memory_gib": warm[-1]["peak_memory_gib"]} if "peak_memory_gib" in warm[-1] else {}),
    }


def plan_against_run(name: str, corpus: Path, peak: float, out: Path, measured: dict) -> dict:
    """`bigmodel plan`'s memory and step-time estimates for the eager GPT-2 run, next to what that
    run measured (its peak allocated memory and median step time)."""
    spec = out / "plan.json"
    spec.write_text(json.dumps(recipe(name, corpus, 1, measured["precision"], peak, False)))
    proc = subprocess.run(
        [sys.executable, "-m", "bigmodel", "plan", str(spec), "--json"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"plan_error": proc.stderr[-2000:]}
    plan = json.loads(proc.stdout)
    chosen = next(r for r in plan["memory"]["rows"] if r["chosen"])
    estimate_gib, step_s = chosen["total"] / 2**30, plan["probe"]["step_time_s"]
    return {
        "plan_memory_gib": round(estimate_gib, 3),
        "run_peak_memory_gib": measured.get("peak_memory_gib"),
        "memory_ratio": round(estimate_gib / measured["peak_memory_gib"], 3)
        if measured.get("peak_memory_gib")
        else None,
        "plan_step_s": round(step_s, 4),
        "run_step_s": measured.get("step_time_s"),
        "time_ratio": round(step_s / measured["step_time_s"], 3) if measured.get("step_time_s") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="GPT-2 124M bf16 on CUDA (eager and compiled)")
    parser.add_argument("--gpu-configs", default="gpt2", help="with --gpu: gpt2, gpt2-v50304, gpt2-b64")
    parser.add_argument(
        "--compiled-only", action="store_true", help="with --gpu: skip eager runs and the plan"
    )
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.gpu:
            corpus = write_corpus(out / "words.jsonl", 60_000, 4_000_000)
            peak = measure_peak("bfloat16", None, "cuda")
            for name in args.gpu_configs.split(","):
                for compile_ in (True,) if args.compiled_only else (False, True):
                    rows.append(run(name, corpus, 1, "bf16", peak, compile_, out))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if not args.compiled_only:
                rows.append(plan_against_run(args.gpu_configs.split(",")[0], corpus, peak, out, rows[0]))
        else:
            words = write_corpus(out / "words.jsonl", 97, 400_000)
            chars = write_corpus(out / "chars.jsonl", 60, 200_000)
            cores = os.cpu_count() or 2
            for name in args.configs.split(","):
                corpus = words if CONFIGS[name][1][0] == "word" else chars
                for nproc in (int(p) for p in args.procs.split(",")):
                    threads = max(1, min(cores, int(os.environ.get("OMP_NUM_THREADS", cores))) // nproc)
                    for precision in args.precisions.split(","):
                        peak = measure_peak("float32" if precision == "fp32" else "bfloat16", threads, "cpu")
                        rows.append(run(name, corpus, nproc, precision, peak, False, out, threads))
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
