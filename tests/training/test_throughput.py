"""Tokens/s, TFLOP/s and MFU in the training logs: PaLM's FLOPs per token agree with a FLOP count of
the real forward and backward pass, and MFU is measured against the peak the recipe gives."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bigmodel
from bigmodel.models.gpt import GPT, GPTConfig
from bigmodel.training.throughput import Throughput


def test_palm_flops_per_token_match_a_count_of_the_real_step():
    config = GPTConfig(vocab_size=257, max_positions=64, embed_dim=64, num_heads=4, num_layers=3)
    model = GPT(config)
    ids = torch.randint(0, 257, (2, 64))
    with FlopCounterMode(display=False) as counter:
        model(ids).float().sum().backward()
    counted = counter.get_total_flops() / ids.numel()
    # PaLM counts the causal attention as full (12·L·H·Q·T); the counter sees what SDPA computes.
    assert model.flops_per_token(64) == pytest.approx(counted, rel=0.05)


def test_rates_come_from_the_batches_of_the_step_and_reset():
    model = GPT(GPTConfig(vocab_size=97, max_positions=32, embed_dim=36, num_heads=3, num_layers=2))
    meter = Throughput(model, peak_tflops=1.0)
    meter.count({"input_ids": torch.zeros(4, 32, dtype=torch.long)})
    meter.count({"input_ids": torch.zeros(4, 16, dtype=torch.long)})
    rates = meter.rates(step_time=0.5, world=2)
    flops = 4 * 32 * model.flops_per_token(32) + 4 * 16 * model.flops_per_token(16)
    assert rates["tokens_per_s"] == pytest.approx(2 * (128 + 64) / 0.5)
    assert rates["mfu"] == pytest.approx(flops / 0.5 / 1e12, abs=1e-4)
    assert meter.rates(step_time=0.5, world=2) == {}  # nothing counted since
    assert Throughput(torch.nn.Linear(2, 2), None).rates(1.0, 1) == {}


def test_a_gpt_run_logs_tokens_per_second_and_mfu(tmp_path):
    corpus = tmp_path / "lines.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line {i} of a small corpus"}) + "\n" for i in range(200)))
    recipe = {
        "name": "mfu",
        "data": {"source": f"jsonl:{corpus}", "max_length": 16, "split": {"validation": 0.1, "test": 0.1}},
        "task": {"name": "causal_lm"},
        "model": {"arch": "gpt", "embed_dim": 32, "num_heads": 2, "num_layers": 2, "max_positions": 16},
        "train": {"max_steps": 5, "batch_size": 8, "log_every": 1, "peak_tflops": 0.05},
    }
    run = bigmodel.train(recipe, output=tmp_path / "runs", progress=False)
    steps = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "split" not in s]
    assert len(steps) == 5
    for s in steps:
        assert s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1
        assert s["mfu"] == pytest.approx(s["tflops_per_s"] / 0.05, rel=0.01)
