"""Throughput and model FLOPs utilisation (MFU) for the training logs.

Tokens are the positions of a batch's ``input_ids`` (padding included: it costs compute). FLOPs per
token come from the family's own ``flops_per_token(seq_len)`` — PaLM appendix B, ``6N + 12·L·H·Q·T``
for a training step — where the family defines it (gpt, llama, bert); other families log samples/s
and tokens/s only. MFU = achieved FLOP/s ÷ ``train.peak_tflops``, a peak that ``bigmodel plan``
measures with a matmul probe or that the user sets: never a constant in the code.
"""

from __future__ import annotations

from torch import nn


class Throughput:
    """Counts what one optimizer step processed and turns it into rates.

    Args:
        model: the trained module (searched for the first submodule with ``flops_per_token``).
        peak_tflops: the device's peak TFLOP/s per process, or None (no MFU).
    """

    def __init__(self, model: nn.Module, peak_tflops: float | None):
        self.counter = next((m for m in model.modules() if hasattr(m, "flops_per_token")), None)
        self.peak = peak_tflops * 1e12 if peak_tflops else None
        self.tokens = 0
        self.flops = 0.0

    def count(self, batch: dict) -> None:
        """Add one micro-batch of this process."""
        ids = batch.get("input_ids")
        if ids is None or getattr(ids, "ndim", 0) != 2:
            return
        B, T = ids.shape
        self.tokens += B * T
        if self.counter is not None:
            self.flops += B * T * float(self.counter.flops_per_token(T))

    def rates(self, step_time: float, world: int) -> dict[str, float]:
        """Rates of the step just taken (all processes together), and reset the counts."""
        out: dict[str, float] = {}
        if self.tokens and step_time > 0:
            out["tokens_per_s"] = round(self.tokens * world / step_time, 1)
            if self.flops:
                per_process = self.flops / step_time
                out["tflops_per_s"] = _significant(per_process * world / 1e12)
                if self.peak:
                    out["mfu"] = _significant(per_process / self.peak)
        self.tokens, self.flops = 0, 0.0
        return out


def _significant(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (a CPU's 0.0006 TFLOP/s keeps its precision)."""
    return float(f"{x:.{digits}g}")
