"""What every native model offers, whatever its family."""

from __future__ import annotations

from torch import nn


class Model(nn.Module):
    """Base of native models: holds its config dataclass and counts its parameters."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (shared tensors counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total
