"""What every native model offers, whatever its family."""

from __future__ import annotations

import torch
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


@torch.no_grad()
def predict_outputs(model: nn.Module, features: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Model outputs for every row of ``features``, in eval mode, in batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    outputs = [model(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    model.train(was_training)
    return torch.cat(outputs)
