"""Long schedules of two shipped recipes on one GPU, in one call: asterisk-en-ctc (CER target, issue 9)
and kjv-es-translation (BLEU target, issue 7), several variants trained at the same time.

The GPU machine is bare and lent for minutes, so the script does everything itself and never runs past
``--budget`` seconds:

1. setup: installs only the carried wheels (``.whl/``) the machine lacks into /tmp/site; points the
   Asterisk reader's /usr/share paths at the carried copy in ``.gpudata/`` (root only) and SWORD_PATH
   at ``.gpudata/sword``;
2. calibration: every variant trains a few dozen steps, all at once (the GPU is shared exactly as in
   the main phase), and is evaluated like the main run will be; from its metrics.jsonl come the
   seconds per step, the start-up and the evaluation cost;
3. main: every variant's epochs are sized from those figures to end before the budget (cosine
   schedules need their length up front); each child runs under ``timeout``;
4. a child cut off by its timeout is finished from its last checkpoint: its recipe.yaml gets
   ``train.max_steps`` = the checkpoint's step and ``bigmodel train --resume`` only evaluates
   (reported as ``truncated``: its learning rate had not annealed);
5. results: ``summary.json`` (per variant: epochs, wall time, test metrics, validation curve,
   calibration), ``runs.tar.gz`` (each run's small files and its log), ``pip_list.txt``.

Before the GPU call, here (the folders are in .git/info/exclude; nothing of them is committed):
``.whl/`` holds the cp312 wheels of pydantic (+ pydantic_core, annotated_types, typing_inspection,
typing_extensions), soundfile (+ cffi, pycparser) and sacrebleu; ``.gpudata/`` holds ``asterisk/en``
(``cp -rL /usr/share/asterisk/sounds/en``), ``asterisk/core-sounds-en.txt.gz``, ``sword``
(``cp -r /usr/share/sword``) and ``code`` (``git archive HEAD src recipes`` + a COMMIT file: the
children run that snapshot, not a working tree other people are editing). Then, with carry
``[".whl", ".gpudata"]`` and a limit of ~560 s:

    set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu_long_schedules.py --out $OUT \\
        --code .gpudata/code --budget 450 --safety 1.3 2>&1 | tee $OUT/log.txt

On CPU (no calibration: epochs forced; a run still going at the budget is evaluated at its checkpoint):

    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu_long_schedules.py --device cpu --no-install \\
        --code .gpudata/code --out /tmp/h5cpu --budget 4000 --finish-reserve 420 --only asr-base \\
        --epochs asr-base=80 --override asr-base:train.num_workers=1
    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu_long_schedules.py --device cpu --no-install \\
        --out /tmp/h5out --budget 300 --only asr-base --calib-scale 0.25 --max-epochs 2   # a dry run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CODE = REPO  # where src/ and recipes/ are read: --code (a committed snapshot, safe from others' edits)
SITE = Path("/tmp/site")
SOUNDS = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASR = "recipes/asterisk-en-ctc.yaml"
MT = "recipes/kjv-es-translation.yaml"
MT_COMMON = [  # the whole held-out books, in large greedy batches; the recipe's fixed 900 steps lifted
    "train.max_steps=null", "task.eval_examples=null", "task.eval_generate=null",
    "train.eval_batch_size=256", "train.num_workers=2",
]  # fmt: skip


@dataclass
class Variant:
    name: str
    recipe: str
    overrides: list[str]
    train_size: int  # training examples (steps per epoch = ceil(train_size / batch))
    batch: int
    max_epochs: int
    calib_steps: int
    eval_epochs: int | None = None  # validate every this many epochs (None: about 5 times a run)
    result: dict = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_size / self.batch)

    @property
    def asr(self) -> bool:
        return self.recipe == ASR

    @property
    def recipe_name(self) -> str:
        return Path(self.recipe).stem


VARIANTS = [
    Variant("asr-base", ASR, ["train.num_workers=3"], 429, 16, 300, 81, eval_epochs=10),
    Variant("asr-lr2x", ASR, ["train.num_workers=3", "train.optimizer.lr=6.0e-3"], 429, 16, 300, 81, 10),
    Variant("asr-sub2", ASR, ["train.num_workers=3", "task.subsample=2"], 429, 16, 300, 81, 10),
    Variant("mt-base", MT, MT_COMMON, 27565, 32, 30, 300),
    Variant(
        "mt-b128", MT,
        [*MT_COMMON, "train.batch_size=128", "train.optimizer.lr=1.4e-3", "train.schedule.warmup_steps=200"],
        27565, 128, 40, 120,
    ),
]  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- setup ------------------------------------------------------------------------------------------


def installed_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def version_tuple(text: str | None) -> tuple:
    return tuple(int(p) for p in (text or "0").split(".")[:3] if p.isdigit())


def wheels_needed() -> list[str]:
    """Prefixes of the carried wheels this python lacks (or holds in a version bigmodel cannot use)."""
    need = []
    if installed_version("pydantic") is None or version_tuple(installed_version("pydantic")) < (2, 5):
        need += ["pydantic-", "pydantic_core-", "annotated_types-", "typing_inspection-"]
        if version_tuple(installed_version("typing_extensions")) < (4, 14, 1):
            need.append("typing_extensions-")
    if installed_version("soundfile") is None:
        need += ["soundfile-", "cffi-", "pycparser-"]
    if not (2, 0) <= version_tuple(installed_version("sacrebleu")) < (3,):
        need.append("sacrebleu-")
    return need


def install_wheels() -> list[str]:
    prefixes = wheels_needed()
    wheels = [str(w) for w in sorted((REPO / ".whl").glob("*.whl")) if w.name.startswith(tuple(prefixes))]
    if wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels],
            check=True,
        )  # fmt: skip
    return [Path(w).name for w in wheels]


def link_asterisk() -> str | None:
    """Make the Asterisk reader's fixed paths exist; None when they do, else why the ASR runs cannot run."""
    if SOUNDS.is_dir() and TRANSCRIPTS.is_file():
        return None
    carried = REPO / ".gpudata" / "asterisk"
    if not (carried / "en").is_dir():
        return f"{SOUNDS} is missing and no copy was carried in {carried}"
    if os.geteuid() != 0:
        return f"{SOUNDS} is missing and this user (uid {os.geteuid()}) cannot create it: run as root"
    SOUNDS.parent.mkdir(parents=True, exist_ok=True)
    if SOUNDS.is_symlink() or SOUNDS.exists():
        SOUNDS.unlink()
    SOUNDS.symlink_to(carried / "en")
    TRANSCRIPTS.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(carried / TRANSCRIPTS.name, TRANSCRIPTS)
    return None


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE / "src"), str(SITE), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "2")  # the main process only; DataLoader workers use 1 thread
    env["PYTHONUNBUFFERED"] = "1"
    env["MPLBACKEND"] = "Agg"
    sword = REPO / ".gpudata" / "sword"
    if sword.is_dir() and not env.get("SWORD_PATH"):
        env["SWORD_PATH"] = str(sword)
    return env


# -- running children -------------------------------------------------------------------------------


@dataclass
class Child:
    variant: Variant
    output: Path
    proc: subprocess.Popen
    started: float
    log_path: Path
    deadline: float

    def run_dir(self) -> Path | None:
        found = sorted((self.output / self.variant.recipe_name).glob("*")) if self.output.is_dir() else []
        return found[-1] if found else None


def launch(variant: Variant, overrides: list[str], output: Path, logs: Path, deadline: float, env) -> Child:
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{variant.name}.log"
    # one output folder per variant: two variants of a recipe started in the same second would
    # otherwise share runs/<recipe>/ and be told apart only by a "-1" suffix
    output = output / variant.name
    argv = [sys.executable, "-m", "bigmodel", "train", variant.recipe, *overrides, "-o", str(output)]
    with open(log_path, "w") as f:
        f.write(" ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(
            argv, cwd=CODE, env=env, stdout=f, stderr=subprocess.STDOUT, process_group=0
        )  # its own group: a stop reaches its DataLoader workers too
    return Child(variant, output, proc, time.time(), log_path, deadline)


def wait_all(children: list[Child]) -> dict[str, int]:
    """Wait for every child; one still running at its deadline gets SIGTERM (then SIGKILL 10 s later)."""
    codes: dict[str, int] = {}
    terminated: dict[str, float] = {}
    while len(codes) < len(children):
        for child in children:
            name = child.variant.name
            if name in codes:
                continue
            rc = child.proc.poll()
            if rc is not None:
                codes[name] = 124 if name in terminated else rc
                child.variant.result.setdefault("ended", time.time())
                continue
            now = time.time()
            if now > child.deadline and name not in terminated:
                log(f"{name}: past its deadline, stopping it")
                os.killpg(child.proc.pid, 15)
                terminated[name] = now
            elif name in terminated and now - terminated[name] > 10:
                os.killpg(child.proc.pid, 9)
        time.sleep(0.5)
    return codes


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training step lines, evaluation lines) of a run's metrics.jsonl."""
    steps, evals = [], []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            (evals if "split" in row else steps).append(row)
    return steps, evals


# -- calibration and sizing -------------------------------------------------------------------------


def calibration_overrides(v: Variant, device: str, scale: float) -> list[str]:
    steps = max(12, int(v.calib_steps * scale))
    return [*v.overrides, f"train.device={device}", f"train.max_steps={steps}", "train.eval_every=1000000",
            "train.checkpoint_every=1000000", "train.keep_train_state=none", "train.log_every=5"]  # fmt: skip


def calibrate(child: Child, rc: int) -> dict | None:
    """Seconds per step (after a warm-up), start-up (launch to the first step) and the evaluation tail
    (last step to exit) of a calibration run; None if it failed before training a few steps."""
    run_dir = child.run_dir()
    steps = read_metrics(run_dir)[0] if run_dir is not None else []
    if len(steps) < 3 or rc not in (0, 124):  # 124: stopped at the deadline, in its evaluation say
        return None
    warm = steps[len(steps) // 3 :] if len(steps) >= 6 else steps[1:]
    first, last = warm[0], warm[-1]
    per_step = (last["time"] - first["time"]) / max(1, last["step"] - first["step"])
    ended = child.variant.result.get("ended", time.time())
    total_steps = max(s["step"] for s in steps)
    tail = max(0.0, ended - last["time"] - (total_steps - last["step"]) * per_step)
    return {
        "step_s": per_step,
        "startup_s": steps[0]["time"] - child.started,
        "tail_s": tail if rc == 0 else 2 * tail,  # cut off: at least twice what it had spent
        "steps": total_steps,
        "wall_s": ended - child.started,
    }


def size_schedule(v: Variant, cal: dict, seconds: float, safety: float) -> tuple[int, int]:
    """(epochs, validate every N epochs) that fit ``seconds`` of wall time for this variant."""
    per_epoch = v.steps_per_epoch * cal["step_s"] * safety
    val_cost = cal["tail_s"] / 2 * safety  # the tail holds the last validation and the test
    usable = seconds - cal["startup_s"] * safety - cal["tail_s"] * safety
    every = v.eval_epochs or 1
    epochs = 1
    for _ in range(3):  # validations per run depend on the epochs, and the epochs on their cost
        epochs = max(1, min(v.max_epochs, int(usable / (per_epoch + val_cost / every))))
        every = v.eval_epochs or max(1, math.ceil(epochs / 5))
    if v.eval_epochs and epochs >= 2 * every:
        epochs -= epochs % every  # the last validation lands on the last epoch
    return epochs, every


def main_overrides(v: Variant, device: str, epochs: int, every: int) -> list[str]:
    return [
        f"train.device={device}",
        f"train.epochs={epochs}",
        f"train.eval_every={every * v.steps_per_epoch}",
        *v.overrides,
    ]  # fmt: skip  (the variant's own, and --override, win)


# -- finishing a cut-off run ------------------------------------------------------------------------


def finish_truncated(child: Child, env, timeout: float) -> subprocess.Popen | None:
    """Evaluate a run stopped by its deadline at its last checkpoint (train.max_steps = that step)."""
    import yaml

    run_dir = child.run_dir()
    latest = run_dir / "train_state" / "latest.json" if run_dir else None
    if latest is None or not latest.is_file():
        return None
    step = json.loads(latest.read_text())["step"]
    recipe_path = run_dir / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["train"]["max_steps"] = step
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    child.variant.result["truncated_at_step"] = step
    log(f"{child.variant.name}: evaluating its checkpoint at step {step}")
    with open(child.log_path, "a") as f:
        return subprocess.Popen(
            ["timeout", str(int(timeout)), sys.executable, "-m", "bigmodel", "train", "--resume",
             str(run_dir)],
            cwd=CODE, env=env, stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip


# -- results ----------------------------------------------------------------------------------------


def describe(child: Child) -> dict:
    v, run_dir = child.variant, child.run_dir()
    out = dict(v.result)
    out |= {"recipe": v.recipe, "overrides": v.overrides, "steps_per_epoch": v.steps_per_epoch}
    if run_dir is None:
        return out
    out["run_dir"] = str(run_dir.relative_to(child.output.parent.parent))
    for name in ("eval.json", "summary.json"):
        if (run_dir / name).is_file():
            data = json.loads((run_dir / name).read_text())
            out["eval" if name == "eval.json" else "train"] = (
                data if name == "eval.json" else data.get("train")
            )
    steps, evals = read_metrics(run_dir)
    keep = ("loss", "cer", "wer", "bleu", "chrf", "bleu_copy", "chrf_copy", "exact_match")
    out["validation_curve"] = [
        {"step": e["step"], "epoch": e.get("epoch"), **{k: e[k] for k in keep if k in e}}
        for e in evals if e.get("split") == "validation"
    ]  # fmt: skip
    if steps:
        out["last_train_loss"] = steps[-1].get("loss")
    return out


def machine_info() -> dict:
    info = {"python": sys.version.split()[0], "cores": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        info["torch_error"] = repr(exc)
    return info


def pack(out: Path, work: Path) -> None:
    """Each run's small files and every log into one archive (the call returns at most 8 files)."""
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml", ".log", ".html"):
                if "train_state" not in path.parts and path.stat().st_size < 2_000_000:
                    tar.add(path, arcname=str(path.relative_to(work)))


# -- the whole run ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_long_schedules"))
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole script")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--calib-scale", type=float, default=1.0, help="fraction of the calibration steps")
    parser.add_argument("--max-epochs", type=int, default=0, help="cap every variant's epochs (dry runs)")
    parser.add_argument("--epochs", default="", help="NAME=N,...: force these epochs (skips sizing)")
    parser.add_argument("--safety", type=float, default=1.2, help="margin on calibrated times")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--code", type=Path, default=REPO, help="folder with src/ and recipes/ to run")
    parser.add_argument("--finish-reserve", type=float, default=60.0, help="seconds kept for cut-off runs")
    parser.add_argument("--override", action="append", default=[], help="NAME:key=value, after the rest")
    args = parser.parse_args()
    global CODE
    CODE = args.code.resolve()
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work.exists():
        shutil.rmtree(args.work)
    commit = CODE / "COMMIT"  # written beside a snapshot's src/
    summary: dict = {
        "budget_s": args.budget,
        "device": args.device,
        "started": time.strftime("%F %T UTC"),
        "code": str(CODE),
        "code_commit": commit.read_text().strip() if commit.is_file() else None,
    }

    def save() -> None:
        summary["elapsed_s"] = round(time.time() - start, 1)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

    pip_list = subprocess.run([sys.executable, "-m", "pip", "list"], capture_output=True, text=True).stdout
    (args.out / "pip_list.txt").write_text(pip_list)
    summary["installed_wheels"] = [] if args.no_install else install_wheels()
    summary["machine"] = machine_info()
    log(f"machine {summary['machine']}; installed {summary['installed_wheels']}")
    variants = [v for v in VARIANTS if not args.only or v.name in args.only.split(",")]
    why_not = link_asterisk()
    if why_not:
        summary["asterisk_skipped"] = why_not
        log(f"ASR variants skipped: {why_not}")
        variants = [v for v in variants if not v.asr]
    for item in args.override:
        name, _, override = item.partition(":")
        for v in variants:
            if v.name == name:
                v.overrides = [*v.overrides, override]
    for v in variants:
        if args.max_epochs:
            v.max_epochs = min(v.max_epochs, args.max_epochs)
    env = child_env()
    forced = dict(item.split("=") for item in args.epochs.split(",") if item)
    summary["variants"] = {}

    # calibration: all at once, as the main phase will run
    cal_deadline = start + min(150.0, args.budget / 3)
    children = [
        launch(v, calibration_overrides(v, args.device, args.calib_scale), args.work / "calibration",
               args.work / "logs-calibration", cal_deadline, env)
        for v in variants if v.name not in forced
    ]  # fmt: skip
    codes = wait_all(children)
    for child in children:
        cal = calibrate(child, codes[child.variant.name])
        child.variant.result = {"calibration": cal, "calibration_rc": codes[child.variant.name]}
        log(f"calibration {child.variant.name}: rc {codes[child.variant.name]} {cal}")
        if cal is None:  # show why at once: the call's output holds only this script's lines
            print("".join(child.log_path.read_text().splitlines(keepends=True)[-25:]), flush=True)
    save()

    # main: every variant sized to end before the budget
    main_end = start + args.budget - args.finish_reserve  # then: evaluating cut-off runs, packing
    now = time.time()
    plans = []
    for v in variants:
        if v.name in forced:
            epochs = int(forced[v.name])
            every = v.eval_epochs or max(1, math.ceil(epochs / 5))
        elif v.result.get("calibration"):
            epochs, every = size_schedule(v, v.result["calibration"], main_end - now, args.safety)
        else:
            summary["variants"][v.name] = {**v.result, "skipped": "calibration failed; see its log"}
            continue
        v.result |= {"epochs": epochs, "eval_every_epochs": every, "steps": epochs * v.steps_per_epoch}
        plans.append((v, main_overrides(v, args.device, epochs, every)))
        log(f"main {v.name}: {epochs} epochs ({epochs * v.steps_per_epoch} steps), validation every {every}")
    children = [
        launch(v, overrides, args.work / "main", args.work / "logs-main", main_end, env)
        for v, overrides in plans
    ]
    codes = wait_all(children)
    finishing = []
    for child in children:
        wall = round(child.variant.result["ended"] - child.started, 1)
        child.variant.result |= {"rc": codes[child.variant.name], "wall_s": wall}
        run_dir = child.run_dir()
        if run_dir is None or not (run_dir / "eval.json").is_file():
            left = start + args.budget - 10 - time.time()
            proc = finish_truncated(child, env, left) if left > 20 else None
            if proc is not None:
                finishing.append((child, proc))
    for child, proc in finishing:
        child.variant.result["finish_rc"] = proc.wait()
    for child in children:
        summary["variants"][child.variant.name] = describe(child)
        result = summary["variants"][child.variant.name]
        log(f"{child.variant.name}: {json.dumps(result.get('eval', {}).get('test'))}")
    save()
    pack(args.out, args.work)
    log(f"done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
