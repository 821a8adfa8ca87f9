"""Numeric precision of training: ``train.precision`` = fp32 | bf16 | fp16 | bf16-true.

* ``bf16`` / ``fp16``: autocast (mixed precision). Weights, gradients and optimizer state stay fp32;
  matmuls and convolutions run in the low precision, softmax/norms/losses in fp32 (autocast's op lists).
* ``fp16`` also scales the loss (``GradScaler``): fp16's 5 exponent bits underflow small gradients.
  It is CUDA only: this CPU has no fp16 matmul path (~2 GFLOP/s against ~150 fp32, ~400 bf16;
  ../shared/PERFORMANCE.md), so a recipe asking for it there is refused with the bf16 suggestion.
* ``bf16-true``: the weights and the optimizer state are bf16 too (half the memory), under bf16
  autocast so that inputs and fp32-only ops are cast where they must be. Updates smaller than bf16's
  resolution are lost (no fp32 master copy), so it suits fine-tuning more than long pretraining.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from bigmodel.errors import RecipeError

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-true": torch.bfloat16}


@dataclass
class Precision:
    """What one precision means for the loop: the autocast dtype, the weight dtype, the scaler."""

    name: str
    device: torch.device
    autocast_dtype: torch.dtype | None
    weight_dtype: torch.dtype
    scaler: torch.amp.GradScaler | None

    def autocast(self):
        """The forward pass's context: autocast to the low precision, or nothing for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Cast the weights for ``bf16-true`` (before the optimizer is built, so its state is bf16)."""
        return model.to(self.weight_dtype) if self.weight_dtype != torch.float32 else model

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size before clipping (fp16 only)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the update; with a scaler, a step whose gradients overflowed is skipped and the
        scale lowered (the loop still counts it, as every fp16 trainer does)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The :class:`Precision` for ``train.precision`` on ``device``; a clear error where the device
    cannot do it (fp16 off CUDA, bf16 on a GPU without bf16)."""
    if name not in _AUTOCAST:
        raise RecipeError(f"train.precision: {name!r} is not one of {', '.join(_AUTOCAST)}.")
    if name == "fp16" and device.type != "cuda":
        raise RecipeError(
            f"train.precision: 'fp16' on {device.type}: this device has no fast fp16 path (on this CPU an "
            "fp16 matmul runs ~70x slower than fp32). Use train.precision=bf16 (mixed precision, ~2.5x "
            "faster than fp32 on CPUs with AVX512-BF16 or AMX), or fp32; fp16 is for CUDA GPUs."
        )
    if name in ("bf16", "bf16-true") and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RecipeError(
            f"train.precision: {name!r}, but {torch.cuda.get_device_name(device)} has no bf16 support. "
            "Use train.precision=fp16 (with loss scaling) or fp32."
        )
    if name in ("bf16", "bf16-true") and device.type == "mps":
        raise RecipeError(f"train.precision: {name!r} is not supported on mps here. Use fp32.")
    scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None
    weight_dtype = torch.bfloat16 if name == "bf16-true" else torch.float32
    return Precision(name, device, _AUTOCAST[name], weight_dtype, scaler)
