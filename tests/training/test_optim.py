"""Optimizers by name, decay only on matrices, and LR schedules checked against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bigmodel.recipe.schema import OPTIMIZERS, OptimizerConfig, ScheduleConfig
from bigmodel.training.optim import build_optimizer, build_scheduler, lr_factor

TORCH_CLASS = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "nesterov": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


def tiny_model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2))


def quadratic_loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def test_every_optimizer_is_covered():
    assert set(OPTIMIZERS) == set(TORCH_CLASS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_steps_and_reduces_loss(name):
    model = tiny_model()
    cfg = OptimizerConfig(name=name, lr=0.02, momentum=0.8, betas=(0.85, 0.99), alpha=0.9, eps=1e-7)
    opt = build_optimizer(model, cfg)
    assert type(opt) is TORCH_CLASS[name]
    group = opt.param_groups[0]
    assert group["lr"] == 0.02
    if name in ("momentum", "nesterov"):
        assert group["momentum"] == 0.8 and group["nesterov"] == (name == "nesterov")
    if name == "sgd":
        assert group["momentum"] == 0
    if name in ("adam", "adamw"):
        assert tuple(group["betas"]) == (0.85, 0.99) and group["eps"] == 1e-7
    if name == "rmsprop":
        assert group["alpha"] == 0.9

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    before = [p.detach().clone() for p in model.parameters()]
    first = quadratic_loss(model, x, y).item()
    for i in range(20):
        opt.zero_grad()
        quadratic_loss(model, x, y).backward()
        opt.step()
        if i == 0:  # the very first step moves every parameter
            assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    final = quadratic_loss(model, x, y).item()
    assert final < 0.9 * first, (name, first, final)


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    opt = build_optimizer(model, OptimizerConfig(name="adamw", weight_decay=0.3))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.3 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert len(decayed["params"]) == 2 and len(plain["params"]) == 4  # 2 weights; 2 biases + LN w, b
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}


def test_weight_decay_behaviour_with_zero_gradient():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.5))
    (0.0 * sum(p.sum() for p in model.parameters())).backward()
    opt.step()
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(p.detach(), before[name]), name


def test_frozen_parameters_are_left_out():
    model = tiny_model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, OptimizerConfig(name="sgd"))
    assert all(p is not model[0].weight for g in opt.param_groups for p in g["params"])


def test_no_empty_param_group():
    opt = build_optimizer(nn.Linear(3, 2, bias=False), OptimizerConfig(name="adam", weight_decay=0.1))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1


# ----------------------------------------------------------------------------- schedules

TOTAL = 100


def sched(name, **kw) -> ScheduleConfig:
    return ScheduleConfig(name=name, **kw)


def cos_expected(step, warmup=0, floor=0.0, total=TOTAL):
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize(
    ("cfg", "points"),
    [
        (sched("constant"), {0: 1.0, 37: 1.0, 500: 1.0}),
        (sched("constant", warmup_steps=4), {0: 0.2, 1: 0.4, 3: 0.8, 4: 1.0, 99: 1.0}),
        (sched("step", step_size=10, gamma=0.5), {0: 1.0, 9: 1.0, 10: 0.5, 25: 0.25, 39: 0.125, 40: 0.0625}),
        (
            sched("step", step_size=10, gamma=0.5, warmup_steps=3),
            {0: 0.25, 2: 0.75, 3: 1.0, 12: 1.0, 13: 0.5},
        ),
        (
            sched("cosine"),
            {0: 1.0, 25: (1 + math.sqrt(0.5)) / 2, 50: 0.5, 75: (1 - math.sqrt(0.5)) / 2, 100: 0.0},
        ),
        (sched("cosine", min_lr_ratio=0.1), {0: 1.0, 50: 0.55, 100: 0.1, 150: 0.1}),
        (
            sched("cosine", warmup_steps=10, min_lr_ratio=0.2),
            {0: 1 / 11, 9: 10 / 11, 10: 1.0, 55: 0.6, 100: 0.2, 120: 0.2},
        ),
        (sched("linear"), {0: 1.0, 25: 0.75, 50: 0.5, 99: 0.01, 100: 0.0, 130: 0.0}),
        (sched("linear", min_lr_ratio=0.2), {0: 1.0, 50: 0.6, 100: 0.2}),
        (sched("linear", warmup_steps=20), {0: 1 / 21, 19: 20 / 21, 20: 1.0, 60: 0.5, 100: 0.0}),
    ],
    ids=lambda v: v.name + f"-w{v.warmup_steps}-f{v.min_lr_ratio}" if isinstance(v, ScheduleConfig) else None,
)
def test_schedule_factors(cfg, points):
    factor = lr_factor(cfg, TOTAL)
    for step, expected in points.items():
        assert factor(step) == pytest.approx(expected, abs=1e-12), (cfg.name, step)


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_decay_is_monotone_and_respects_floor(name, warmup):
    factor = lr_factor(sched(name, warmup_steps=warmup, min_lr_ratio=0.3), TOTAL)
    after = [factor(s) for s in range(warmup, TOTAL + 20)]
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:], strict=False))
    assert min(after) == pytest.approx(0.3)
    assert after[0] == pytest.approx(1.0)
    if name == "cosine":
        mid = warmup + (TOTAL - warmup) // 2
        assert factor(mid) == pytest.approx(cos_expected(mid, warmup, 0.3))
    warm = [factor(s) for s in range(warmup)]
    assert all(0 < w < 1 for w in warm) and warm == sorted(warm)


def test_scheduler_drives_optimizer_lr():
    model = tiny_model()
    opt = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.4))
    scheduler = build_scheduler(opt, sched("linear", warmup_steps=1), total_steps=5)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    # warm-up 0.4/2, then linear decay over 4 steps; every group follows
    expected = [0.2, 0.4, 0.3, 0.2, 0.1, 0.0]
    for lrs, e in zip(seen, expected, strict=True):
        assert lrs == pytest.approx([e] * len(lrs))
