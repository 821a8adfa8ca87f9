"""In-memory batching whose position is part of the checkpoint (exact mid-epoch resume)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class BatchLoader:
    """Training batches of aligned tensors, reshuffled each epoch by a generator seeded with
    (seed, epoch) — never the global RNG — so a resumed run sees exactly the batches the
    interrupted run would have seen.

    Args:
        tensors: tensors sharing their first dimension (features, targets).
        batch_size: samples per batch; ``None`` means the whole data set in one batch.
        seed: base of the per-epoch shuffling seed.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int | None, seed: int = 0):
        self.tensors = tensors
        self.num_samples = len(tensors[0])
        self.batch_size = min(batch_size or self.num_samples, self.num_samples)
        self.seed = seed
        self.epoch = 0  # epochs completed
        self.position = 0  # batches already taken in the current epoch
        self._order: torch.Tensor | None = None

    def __len__(self) -> int:
        """Batches per epoch (the last one may be smaller)."""
        return -(-self.num_samples // self.batch_size)

    def next_batch(self) -> tuple[tuple[torch.Tensor, ...], bool]:
        """Return the next batch and whether it was the last of its epoch."""
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(self.num_samples, generator=generator)
        start = self.position * self.batch_size
        idx = self._order[start : start + self.batch_size]
        self.position += 1
        epoch_done = self.position == len(self)
        if epoch_done:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return tuple(t[idx] for t in self.tensors), epoch_done

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._order = None


def batches(tensors: tuple[torch.Tensor, ...], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Evaluation batches in order."""
    for start in range(0, len(tensors[0]), batch_size):
        yield tuple(t[start : start + batch_size] for t in tensors)
