"""Fast greedy decoding vs transformers' ``generate``, side by side in one process.

- ``gpt2``: GPT-2 124M shape (random weights: no hub access here), batch 1, a 32-token prompt, 64 new
  tokens. transformers' ``GPT2LMHeadModel.generate`` (fp32) against ours on the same weights (loaded
  through the production key map): ``generate`` (the general loop), ``greedy_generate`` (static KV
  cache, last-position logits) in fp32 (``fp32_gemv``: Linear weights stored (in, out), the layout
  CPU GEMV reads fastest), bf16 (the whole model cast), weight-only int8 and int4
  (``compress/fast_decode.py``: torch's int8 / int4 weight-only CPU kernels; int4 in groups of 32;
  ``int8_bf16``: the int8 layers in a model whose other weights and activations are bf16).
  Tokens/s count the 64 new tokens over the whole call (prompt included). Each figure is also given
  as a fraction of the bandwidth limit: (memory bandwidth measured here by summing a 512 MiB
  tensor) / (weight bytes read per token: every weight but the embedding lookups; the KV cache,
  < 2 % here, is left out).
- ``gpt2_batch8``: the same at batch 8, prompts left-padded to 32 (lengths 20..32).
- ``agreement``: GPT-2 124M's random weights give nearly flat logits, where any rounding flips the
  argmax; agreement means something only on a model that has learned. So a small character-level GPT
  (4 x 256, bytes as tokens) is trained here for a minute on Shakespeare's training plays; on held-out
  prompts from the test plays each variant decodes greedily, and agreement is the fraction of the 64
  new positions whose token equals fp32's (free-running: after a first difference the rest usually
  differs too), plus the teacher-forced next-token argmax agreement over the same text.
- ``agreement_run``: the same measures on a model a shipped recipe trained (``--run RUN``, e.g. a
  ``recipes/shakespeare-char-gpt.yaml`` run), on 64 prompts from the held-out test plays.
- ``speculative``: that trained model as the target, drafted by (a) a 1 x 128 GPT trained on the same
  data for the same steps and (b) its own int8 copy; acceptance rate, tokens per target pass and the
  paired speed-up over ``greedy_generate`` of the target alone (outputs checked identical).

Variants alternate rep by rep; ratios are medians of per-rep ratios (PERFORMANCE.md: the machine is
shared, unpaired timings can be off by half). glibc is told to keep freed memory (both sides).

Run: .venv/bin/python bench/generate.py [--threads 2] [--reps 5] [--sections gpt2 ...]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from bigmodel.compress.fast_decode import gemv_layout, int4_decode, int8_decode  # noqa: E402
from bigmodel.hub.convert import to_published  # noqa: E402
from bigmodel.models.fast_generate import greedy_generate  # noqa: E402
from bigmodel.models.generate import generate  # noqa: E402
from bigmodel.models.registry import create_model, get_family  # noqa: E402
from bigmodel.models.speculative import speculative_generate  # noqa: E402
from machine import machine  # noqa: E402


def keep_freed_memory() -> None:
    """glibc returns big buffers to the OS after each call: keep them (process-wide, both sides)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def bandwidth_gb_s(mib: int = 512, reps: int = 5) -> float:
    """Read bandwidth: the best of ``reps`` sums over a ``mib`` MiB fp32 tensor (far above the caches)."""
    a = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - start)
    return a.numel() * 4 / best / 1e9


def bytes_per_token(model: nn.Module) -> int:
    """Bytes of every weight a decode step reads: all tensors but embedding tables used only for lookups
    (one row per token); a table tied to the LM head counts, once, as the head."""
    read, seen = 0, set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                read += t.numel() * t.element_size()
    return read


def hf_twin(model: nn.Module) -> GPT2LMHeadModel:
    """transformers' GPT-2 holding ``model``'s weights (production key map), greedy, never stopping."""
    fmt = get_family("gpt").formats["hf"]
    hf = GPT2LMHeadModel(GPT2Config(**fmt.config_to(model.config))).eval()
    published = to_published(fmt, model.config, model.state_dict())
    published.setdefault("lm_head.weight", published["transformer.wte.weight"])
    hf.load_state_dict(published, strict=False)
    hf.generation_config.eos_token_id = None  # always the full number of new tokens, like ours
    hf.generation_config.bos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def paired(
    variants: dict[str, Callable[[], torch.Tensor]], reps: int, tokens: int, reference: str
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Run every variant once per rep (order rotated each rep) after one warm-up; tokens/s medians and
    minimums, and the median of per-rep ratios to ``reference``."""
    outputs = {name: fn() for name, fn in variants.items()}  # warm-up, and the tokens for comparison
    secs = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            secs[name].append(timed(variants[name])[0])
    figures = {}
    for name, s in secs.items():
        ratios = [r / x for r, x in zip(secs[reference], s, strict=True)]
        figures[name] = {
            "tokens_per_s_median": round(tokens / statistics.median(s), 2),
            "tokens_per_s_best": round(tokens / min(s), 2),
            f"speedup_vs_{reference}_median_of_pairs": round(statistics.median(ratios), 3),
        }
    return figures, outputs


def add_bandwidth(figures: dict, models: dict[str, nn.Module], gb_s: float, batch: int) -> None:
    """Bandwidth limit per variant: a step reads every weight once for the whole batch."""
    for name, model in models.items():
        per_token = bytes_per_token(model)
        limit = gb_s * 1e9 / per_token * batch
        figures[name]["weight_MB_read_per_step"] = round(per_token / 1e6, 1)
        figures[name]["bandwidth_limit_tokens_per_s"] = round(limit, 1)
        figures[name]["fraction_of_bandwidth_limit"] = round(figures[name]["tokens_per_s_median"] / limit, 3)


def gpt2_models() -> tuple[nn.Module, dict[str, nn.Module]]:
    torch.manual_seed(0)
    model = create_model("gpt2", dropout=0.0, attn_dropout=0.0).eval()
    return model, {
        "ours_fp32": model,
        "ours_fp32_gemv": gemv_layout(
            model
        ),  # the same weights stored (in, out): see compress/fast_decode.py
        "ours_bf16": copy.deepcopy(model).to(torch.bfloat16),
        "ours_int8": int8_decode(model),
        # the rest of the model in bf16 too: the kernels' bf16 activations need no conversion per layer
        "ours_int8_bf16": int8_decode(copy.deepcopy(model).to(torch.bfloat16)),
        "ours_int4": int4_decode(model, group_size=32),
    }


def section_gpt2(reps: int, gb_s: float, batch: int = 1, prompt_len: int = 32, new: int = 64) -> dict:
    model, ours = gpt2_models()
    hf = hf_twin(model)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50257, (batch, prompt_len), generator=g)
    lengths = (
        torch.linspace(20, prompt_len, batch).round().long() if batch > 1 else torch.tensor([prompt_len])
    )
    mask = torch.arange(prompt_len)[None, :] >= prompt_len - lengths[:, None]  # left padding
    ids = ids.masked_fill(~mask, 0)

    def ours_greedy(m):
        return lambda: greedy_generate(m, ids, attention_mask=mask, max_new_tokens=new, stop_tokens=())

    variants = {
        "transformers_fp32": lambda: hf.generate(
            input_ids=ids, attention_mask=mask.long(), max_new_tokens=new, do_sample=False
        ),
        "ours_generate_fp32": lambda: generate(
            model, ids, attention_mask=mask, max_new_tokens=new, stop_tokens=()
        ),
        **{name: ours_greedy(m) for name, m in ours.items()},
    }
    with torch.inference_mode():
        figures, outputs = paired(variants, reps, batch * new, "transformers_fp32")
    add_bandwidth(figures, {"transformers_fp32": model, "ours_generate_fp32": model, **ours}, gb_s, batch)
    ref = outputs["transformers_fp32"][:, prompt_len:]
    for name, out in outputs.items():
        assert out.shape == (batch, prompt_len + new), (name, out.shape)
        figures[name]["same_tokens_as_transformers"] = round(
            float((out[:, prompt_len:] == ref).float().mean()), 3
        )
    return {
        "model": "GPT-2 124M shape (12 x 768, vocabulary 50257), random weights (init std 0.02)",
        "decoding": f"greedy, batch {batch}, {prompt_len}-token prompt"
        + (f" left-padded (lengths {lengths.tolist()})" if batch > 1 else "")
        + f", {new} new tokens; tokens/s over the whole call",
        "note": "random weights give nearly flat logits: token agreement here says little (see agreement)",
        "variants": figures,
    }


# --- a small model that has learned something --------------------------------------------------------


def shakespeare_bytes() -> dict[str, torch.Tensor]:
    from bigmodel.data.builtin import read_builtin

    splits = read_builtin("shakespeare")
    return {
        name: torch.tensor(list("\n".join(r["text"] for r in records).encode("utf-8")), dtype=torch.long)
        for name, records in splits.items()
    }


def train_char_gpt(data: torch.Tensor, steps: int, seed: int, **config) -> tuple[nn.Module, float]:
    """A byte-level GPT trained with AdamW on random 128-byte windows; returns it and its last loss."""
    torch.manual_seed(seed)
    model = create_model("gpt", vocab_size=256, max_positions=256, dropout=0.0, attn_dropout=0.0, **config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, len(data) - 130, (16,), generator=g)
        window = torch.stack([data[s : s + 129] for s in start.tolist()])  # (16, 129)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), float(loss)


_TRAINED: dict = {}


def trained_pair(steps: int) -> dict:
    """Target (4 x 256) and draft (1 x 128) trained on the same bytes, once per process."""
    if not _TRAINED:
        data = shakespeare_bytes()
        started = time.perf_counter()
        target, target_loss = train_char_gpt(
            data["train"], steps, 0, embed_dim=256, num_heads=4, num_layers=4
        )
        draft, draft_loss = train_char_gpt(data["train"], steps, 1, embed_dim=128, num_heads=2, num_layers=1)
        g = torch.Generator().manual_seed(2)
        test = data["test"]
        starts = torch.randint(0, len(test) - 200, (16,), generator=g).tolist()
        _TRAINED.update(
            target=target,
            draft=draft,
            prompts=[test[s : s + 32][None] for s in starts],
            texts=torch.stack([test[s : s + 160] for s in starts]),
            info={
                "target": "gpt 4 x 256, bytes (vocabulary 256)",
                "draft": "gpt 1 x 128, bytes",
                "training": f"{steps} AdamW steps of 16 x 128 bytes each, Shakespeare's 31 training plays",
                "final_train_loss_nats": {"target": round(target_loss, 3), "draft": round(draft_loss, 3)},
                "training_s": round(time.perf_counter() - started, 1),
                "held_out": "16 prompts of 32 bytes from the 4 test plays",
            },
        )
    return _TRAINED


def section_agreement(reps: int, gb_s: float, steps: int, new: int = 64) -> dict:
    t = trained_pair(steps)
    as_text = lambda ids: bytes(ids).decode("utf-8", "replace")  # noqa: E731
    return {**t["info"], **agreement(t["target"], t["prompts"], t["texts"], new, as_text)}


def section_agreement_run(run: str, new: int = 64, prompts: int = 64) -> dict:
    """Agreement on a model trained by a shipped recipe (``--run``: a finished causal_lm run on
    Shakespeare, e.g. ``recipes/shakespeare-char-gpt.yaml``): prompts from the built-in test plays,
    which that recipe holds out, tokenized by the run's own tokenizer."""
    from bigmodel.data.builtin import read_builtin
    from bigmodel.pipeline import open_run

    model, task, info = open_run(run)
    context = model.config.max_positions
    new = min(new, context - 32)  # a context-64 model: 32 prompt tokens, 32 new
    text = "\n".join(r["text"] for r in read_builtin("shakespeare")["test"])[:400_000]
    ids = torch.tensor(task.tokenizer.encode_one(text, truncation=False, add_special_tokens=False).ids)
    g = torch.Generator().manual_seed(2)
    starts = torch.randint(0, len(ids) - 200, (prompts,), generator=g).tolist()
    eval_loss = json.loads((Path(run) / "eval.json").read_text())["test"]["loss"]
    return {
        "run": str(run),
        "model": f"{type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters",
        "run_test_loss_nats": round(eval_loss, 4),
        "held_out": f"{prompts} prompts of 32 tokens from the built-in test plays",
        **agreement(
            model.eval(),
            [ids[s : s + 32][None] for s in starts],
            torch.stack([ids[s : s + context] for s in starts]),
            new,
            lambda ids: task.tokenizer.decode(list(ids)),
        ),
    }


def agreement(fp32: nn.Module, prompts: list, texts: torch.Tensor, new: int, decode) -> dict:
    """How often each reduced-precision variant's greedy tokens equal fp32's, free-running from each
    prompt and teacher-forced over ``texts``."""
    variants = {
        "ours_bf16": copy.deepcopy(fp32).to(torch.bfloat16),
        "ours_int8": int8_decode(copy.deepcopy(fp32)),
        "ours_int8_bf16": int8_decode(copy.deepcopy(fp32).to(torch.bfloat16)),
        "ours_int4": int4_decode(copy.deepcopy(fp32), group_size=32),
    }
    result = {}
    n = prompts[0].shape[1]
    with torch.inference_mode():
        ref = [greedy_generate(fp32, p, max_new_tokens=new, stop_tokens=())[:, n:] for p in prompts]
        ref_next = fp32(texts).argmax(-1)
        for name, m in variants.items():
            outs = [greedy_generate(m, p, max_new_tokens=new, stop_tokens=())[:, n:] for p in prompts]
            same = torch.cat([(o == r).float() for o, r in zip(outs, ref, strict=True)], dim=1)
            first = [
                int((o != r).nonzero()[0, 1]) if bool((o != r).any()) else new
                for o, r in zip(outs, ref, strict=True)
            ]
            result[name] = {
                "greedy_positions_equal_to_fp32": round(float(same.mean()), 4),
                "prompts_identical_to_fp32": sum(f == new for f in first),
                "first_difference_median": statistics.median(first),
                "teacher_forced_next_token_agreement": round(
                    float((m(texts).argmax(-1) == ref_next).float().mean()), 4
                ),
            }
    samples = [decode(r[0].tolist()) for r in ref[:3]]
    distinct = len(set(torch.cat(ref, dim=1)[0].tolist()))
    return {
        "decoding": f"greedy, {new} new tokens per prompt",
        "fp32_greedy_samples": samples,  # what the model produces: judge how much it learned
        "fp32_distinct_tokens_generated": distinct,
        "variants": result,
    }


def section_speculative(reps: int, gb_s: float, steps: int, new: int = 64) -> dict:
    t = trained_pair(steps)
    target, prompts = t["target"], t["prompts"][:4]
    drafts = {"trained_1x128": t["draft"], "int8_copy_of_target": int8_decode(target)}
    result = {}
    for k in (2, 4, 6):
        variants = {
            "greedy_target": lambda: [
                greedy_generate(target, p, max_new_tokens=new, stop_tokens=()) for p in prompts
            ]
        }
        for dname, d in drafts.items():
            variants[f"{dname}_k{k}"] = lambda d=d, k=k: [
                speculative_generate(target, d, p, max_new_tokens=new, k=k, stop_tokens=()) for p in prompts
            ]
        with torch.inference_mode():
            figures, outputs = paired(variants, reps, len(prompts) * new, "greedy_target")
            for dname, d in drafts.items():
                name = f"{dname}_k{k}"
                stats = [
                    speculative_generate(
                        target, d, p, max_new_tokens=new, k=k, stop_tokens=(), return_stats=True
                    )[1]
                    for p in prompts
                ]
                proposed, accepted = sum(s.proposed for s in stats), sum(s.accepted for s in stats)
                figures[name]["acceptance_rate"] = round(accepted / proposed, 3)
                figures[name]["new_tokens_per_target_pass"] = round(
                    len(prompts) * new / (sum(s.rounds for s in stats) + len(prompts)), 2
                )
                figures[name]["identical_to_greedy"] = all(
                    torch.equal(a, b) for a, b in zip(outputs[name], outputs["greedy_target"], strict=True)
                )
        result[f"k={k}"] = figures
    return {
        **t["info"],
        "decoding": f"greedy, batch 1, {len(prompts)} held-out 32-byte prompts, {new} new tokens each",
        "results": result,
    }


SECTIONS = ("gpt2", "gpt2_batch8", "agreement", "agreement_run", "speculative")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--train-steps", type=int, default=300, help="AdamW steps for the small trained models"
    )
    parser.add_argument("--run", help="agreement_run: a finished causal_lm run trained on Shakespeare")
    args = parser.parse_args(argv)
    if "agreement_run" in args.sections and not args.run:
        parser.error("--sections agreement_run needs --run RUN (a recipes/shakespeare-char-gpt.yaml run)")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    started = time.time()
    gb_s = bandwidth_gb_s()
    result = {
        "machine": machine(),
        "note": "shared machine (2 cores, other jobs running): timings are noisy; ratios are paired",
        "memory_read_GB_per_s": round(gb_s, 2),
    }
    for name in args.sections:
        if name == "gpt2":
            result[name] = section_gpt2(args.reps, gb_s)
        elif name == "gpt2_batch8":
            result[name] = section_gpt2(max(2, args.reps // 2), gb_s, batch=8)
        elif name == "agreement":
            result[name] = section_agreement(args.reps, gb_s, args.train_steps)
        elif name == "agreement_run":
            result[name] = section_agreement_run(args.run)
        else:
            result[name] = section_speculative(args.reps, gb_s, args.train_steps)
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)  # progress
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
