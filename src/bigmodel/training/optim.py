"""Optimizers and learning-rate schedules, chosen by name from the recipe."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """Create the optimizer named by ``cfg.name``.

    Weight decay applies to matrices and kernels only; biases and norm scales (1-D tensors) are not
    decayed, as in BERT/GPT training practice (Loshchilov & Hutter 2019 decouple decay in AdamW).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    lr, name = cfg.lr, cfg.name
    # One fused kernel per step instead of a loop over tensors: 8 ms instead of 60 ms for MiniLM's
    # 22.6M parameters on 2 CPU cores (bench/optimizers.py). Deterministic, so exact resume still holds.
    fused = {"fused": True} if params and all(p.device.type in ("cpu", "cuda") for p in params) else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=name == "nesterov")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, eps=cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.alpha, eps=cfg.eps)
    raise ValueError(f"unknown optimizer {name!r}")  # the recipe schema makes this unreachable


def lr_factor(cfg, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR after ``step`` optimizer steps: linear warm-up, then the schedule."""
    warmup, floor = cfg.warmup_steps, cfg.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** ((step - warmup) // cfg.step_size)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.name == "cosine":  # Loshchilov & Hutter 2017 (SGDR), one cycle, no restarts
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)  # linear

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total_steps))
