"""Native models vs Hugging Face transformers at identical configs and weights, side by side.

- GPT training: tokens/s of native ``gpt`` vs ``GPT2LMHeadModel`` (same config, same weights, AdamW,
  next-token loss), and MFU against a matmul peak measured here; in fp32, and in bf16 mixed
  precision (``torch.autocast("cpu", dtype=torch.bfloat16)`` around forward + loss on both sides,
  fp32 master weights and AdamW on both sides, MFU against a measured bf16 matmul peak).
- BERT inference: latency of native ``bert`` vs ``BertModel`` at batch 16 and batch 1.

A and B alternate rep by rep in one process; the figure that counts is the median of the per-pair
ratios (these machines are shared: an unpaired timing can be off by half).

Run: .venv/bin/python bench/models.py [--reps 10] [--quick] [--only gpt_bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel  # noqa: E402

from bigmodel.hub.convert import from_published  # noqa: E402
from bigmodel.models.registry import build_config, get_family  # noqa: E402
from machine import machine  # noqa: E402


def keep_freed_memory() -> None:
    """glibc returns big buffers to the OS every step (page faults dominate at large vocab): keep them.
    Process-wide, so it helps both sides equally."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def matmul_peak(n: int = 2048, reps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Best of ``reps`` n³ matmuls in ``dtype``, in FLOP/s: the denominator of MFU, measured, never
    assumed."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):  # warm the thread pool and the caches
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(fns: dict, reps: int) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return times


def summary(times: dict[str, list[float]], reference: str, work: float, unit: str) -> dict:
    out = {}
    for name, ts in times.items():
        out[name] = {
            "median_s": round(statistics.median(ts), 4),
            "min_s": round(min(ts), 4),
            f"{unit}_per_s": round(work / statistics.median(ts), 1),
        }
        if name != reference:
            ratios = [r / t for r, t in zip(times[reference], ts, strict=True)]
            out[name][f"speedup_vs_{reference}_median_of_pairs"] = round(statistics.median(ratios), 3)
    return out


def native_from_hf(family_name: str, hf_model) -> torch.nn.Module:
    family = get_family(family_name)
    fmt = family.formats["hf"]
    config = build_config(family, fmt.config_from(hf_model.config.to_dict()))
    model = family.model_cls(config)
    model.load_state_dict(from_published(fmt, config, hf_model.state_dict(), model.state_dict()))
    return model


def bench_gpt_training(layers, width, heads, seq, batch, vocab, dropout, reps, dtype="fp32") -> dict:
    """``dtype="bf16"``: the same step with forward + loss under ``torch.autocast("cpu", bfloat16)`` on
    both sides (the same precision policy; weights, gradients and AdamW stay fp32)."""
    torch.manual_seed(0)
    hf_config = GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=heads,
        n_positions=seq,
        vocab_size=vocab,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = GPT2LMHeadModel(hf_config).train()
    native = native_from_hf("gpt", hf).train()
    x = torch.randint(0, vocab, (batch, seq))
    shifted = F.pad(x[:, 1:], (0, 1), value=-100).reshape(-1)  # shift labels, never the logits
    optimizers = {
        "hf": torch.optim.AdamW(hf.parameters(), lr=1e-4),
        "native": torch.optim.AdamW(native.parameters(), lr=1e-4),
    }

    def precision():
        if dtype == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def hf_step():
        with precision():
            loss = hf(x, labels=x).loss
        loss.backward()
        optimizers["hf"].step()
        optimizers["hf"].zero_grad(set_to_none=True)

    def native_step():
        with precision():
            loss = F.cross_entropy(native(x).view(-1, vocab), shifted)
        loss.backward()
        optimizers["native"].step()
        optimizers["native"].zero_grad(set_to_none=True)

    times = paired({"hf": hf_step, "native": native_step}, reps)
    tokens = batch * seq
    result = summary(times, "hf", tokens, "tokens")
    return {
        "config": dict(
            layers=layers,
            width=width,
            heads=heads,
            seq=seq,
            batch=batch,
            vocab=vocab,
            dropout=dropout,
            optimizer="AdamW",
            dtype=dtype if dtype == "fp32" else "bf16 autocast (fp32 master weights)",
        ),
        "params": native.num_params(),
        "flops_per_token": native.flops_per_token(seq),
        **result,
    }


def bench_bert_inference(layers, width, heads, seq, batch, reps) -> dict:
    torch.manual_seed(0)
    hf = BertModel(
        BertConfig(
            num_hidden_layers=layers,
            hidden_size=width,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            vocab_size=30522,
        )
    ).eval()
    native = native_from_hf("bert", hf).eval()
    x = torch.randint(0, 30522, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[batch // 2 :, seq * 3 // 4 :] = 0  # some padding, as real batches have
    with torch.no_grad():
        drift = (hf(x, attention_mask=mask).last_hidden_state - native(x, attention_mask=mask)).abs()
        drift = float(drift[mask.bool()].max())

    @torch.no_grad()
    def hf_forward():
        hf(x, attention_mask=mask)

    @torch.no_grad()
    def native_forward():  # HF's forward runs the pooler too
        native.pool(native(x, attention_mask=mask))

    times = paired({"hf": hf_forward, "native": native_forward}, reps)
    return {
        "config": dict(layers=layers, width=width, heads=heads, seq=seq, batch=batch, dtype="fp32"),
        "max_abs_drift": drift,
        **summary(times, "hf", batch, "samples"),
    }


def bench_llama_vs_gpt(reps: int, quick: bool) -> dict:
    """Training steps of the two shipped Shakespeare recipes' models (shakespeare-char-gpt,
    llama-tiny-shakespeare: same width and depth), paired, same batch: what llama's rotary positions,
    SwiGLU and grouped-query attention cost at this size."""
    from bigmodel.models.registry import create_model

    size = (
        dict(embed_dim=32, num_heads=4, num_layers=2)
        if quick
        else dict(embed_dim=128, num_heads=4, num_layers=4)
    )
    torch.manual_seed(0)
    models = {
        "gpt": create_model("gpt", vocab_size=65, max_positions=64, dropout=0.0, attn_dropout=0.0, **size),
        "llama": create_model(
            "llama",
            vocab_size=65,
            max_positions=64,
            num_kv_heads=2,
            tie_embeddings=True,
            ffn_dim=86 if quick else 344,
            dropout=0.0,
            **size,
        ),  # fmt: skip
    }
    x = torch.randint(0, 65, (24, 64))
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}

    def step(name):
        def run():
            loss = torch.nn.functional.cross_entropy(
                models[name](x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()
            )
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()

        return run

    times = paired({name: step(name) for name in models}, reps)
    return {
        "config": {**size, "batch": 24, "seq": 63, "llama": "2 key/value heads, SwiGLU 344, rotary, tied"},
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        **summary(times, "gpt", 24 * 63, "tokens"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    sections = ("gpt", "gpt_bf16", "bert", "llama_vs_gpt")
    parser.add_argument("--only", choices=sections, nargs="+", default=sections)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    peak_bf16 = matmul_peak(dtype=torch.bfloat16)
    # The peak is probed again at the end and the higher figure kept: a probe that met a busy
    # neighbour would otherwise flatter the MFU.
    if args.quick:
        gpt = [dict(layers=2, width=64, heads=2, seq=32, batch=2, vocab=65, dropout=0.0)]
        gpt_bf16 = gpt
        bert = [dict(layers=2, width=64, heads=2, seq=16, batch=2)]
    else:
        gpt = [
            dict(layers=6, width=384, heads=6, seq=256, batch=8, vocab=65, dropout=0.0),
            dict(layers=6, width=384, heads=6, seq=256, batch=8, vocab=65, dropout=0.1),
            dict(layers=4, width=256, heads=4, seq=128, batch=8, vocab=50257, dropout=0.0),
        ]
        gpt_bf16 = [dict(layers=6, width=384, heads=6, seq=256, batch=8, vocab=65, dropout=0.0)]
        bert = [
            dict(layers=4, width=256, heads=4, seq=128, batch=16),
            dict(layers=4, width=256, heads=4, seq=128, batch=1),
        ]
    if "gpt" not in args.only:
        gpt = []
    if "gpt_bf16" not in args.only:
        gpt_bf16 = []
    if "bert" not in args.only:
        bert = []
    gpt_results = [bench_gpt_training(**c, reps=args.reps) for c in gpt]
    gpt_bf16_results = [bench_gpt_training(**c, reps=args.reps, dtype="bf16") for c in gpt_bf16]
    bert_results = [bench_bert_inference(**c, reps=args.reps * 3) for c in bert]
    peak = max(peak, matmul_peak())
    peak_bf16 = max(peak_bf16, matmul_peak(dtype=torch.bfloat16))
    for results, key, p in ((gpt_results, "mfu_fp32", peak), (gpt_bf16_results, "mfu_bf16", peak_bf16)):
        for result in results:
            for side in ("hf", "native"):
                result[side][key] = round(result[side]["tokens_per_s"] * result["flops_per_token"] / p, 3)
    report = {
        "benchmark": "native models vs transformers",
        "machine": machine(),
        "matmul_peak_gflops_fp32": round(peak / 1e9, 1),
        "matmul_peak_gflops_bf16": round(peak_bf16 / 1e9, 1),
        "gpt_training": gpt_results,
        "gpt_training_bf16": gpt_bf16_results,
        "bert_inference": bert_results,
    }
    if "llama_vs_gpt" in args.only:
        report["llama_vs_gpt_training"] = bench_llama_vs_gpt(args.reps, args.quick)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
