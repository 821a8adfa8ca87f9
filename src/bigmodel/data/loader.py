"""From records to batches: a dataset that encodes one example at a time, a resumable sampler, and
the ``torch.utils.data.DataLoader`` that joins them.

Determinism does not depend on workers or processes: the sampler's order depends only on (seed,
epoch), and each example's augmentation RNG only on (seed, epoch, index), so 0 or 8 workers, one
process or four, give the same examples. The sampler's cursor counts *samples consumed* in the
epoch, so a run resumes exactly where it stopped, even on another number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bigmodel.data.records import Records

# Length grouping sorts within chunks of this many batches, then shuffles the batches (as
# transformers' LengthGroupedSampler): batches hold similar lengths, their order stays random.
GROUP_CHUNK_BATCHES = 50


class TaskDataset(Dataset):
    """``dataset[(epoch, i)] = encode(records[i], rng)``, the rng seeded by (seed, epoch, i) when
    training and None for evaluation (no augmentation, no random masking).

    Args:
        records: the split's examples.
        encode: ``task.encode``.
        seed: the run's seed.
        train: draw an example RNG (training) or not (evaluation, prediction).
    """

    def __init__(self, records: Records, encode: Callable, seed: int = 0, train: bool = False):
        self.records, self.encode, self.seed, self.train = records, encode, seed, train

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int] | int) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng((self.seed, epoch, i)) if self.train else None
        return self.encode(self.records[i], rng)


@dataclass(frozen=True)
class PlannedBatch:
    """One micro-batch of the plan: what this process reads, and where the epoch stands after it."""

    epoch: int
    keys: list[tuple[int, int]]  # (epoch, index) of this rank's examples
    cursor: int  # samples of the epoch consumed by all ranks once this batch is done
    epoch_done: bool


class EpochSampler:
    """A seeded permutation per epoch, cut into global batches of ``batch_size × world`` samples;
    rank r of w takes every w-th sample of each global batch.

    Args:
        num_samples: examples in the split.
        batch_size: examples per process per micro-batch.
        seed: the run's seed.
        rank, world: this process and the number of processes.
        lengths: per-example sizes for length grouping (None: plain shuffling).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        lengths: np.ndarray | None = None,
    ):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world, self.lengths = rank, world, lengths
        self.epoch, self.cursor = 0, 0  # where the next batch starts

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def batches_per_epoch(self) -> int:
        return -(-self.num_samples // self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order: a permutation seeded by (seed, epoch), length-grouped if asked."""
        perm = np.random.default_rng((self.seed, epoch, 0x5A)).permutation(self.num_samples)
        if self.lengths is None:
            return perm
        chunk = self.global_batch * GROUP_CHUNK_BATCHES
        groups = [
            part[np.argsort(-self.lengths[part], kind="stable")]
            for part in np.split(perm, range(chunk, len(perm), chunk))
        ]
        ordered = np.concatenate(groups)
        batches = np.split(ordered, range(self.global_batch, len(ordered), self.global_batch))
        # The longest batch goes first, so a run that would run out of memory does so at once.
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b]].max())
        rest = [b for b in range(len(batches)) if b != longest]
        rest = list(np.random.default_rng((self.seed, epoch, 0x6B)).permutation(rest)) if rest else []
        return np.concatenate([batches[b] for b in [longest, *rest]])

    def plan(self) -> Iterator[PlannedBatch]:
        """Every micro-batch from the current position on, epoch after epoch (an endless plan)."""
        epoch, cursor = self.epoch, self.cursor
        while True:
            order = self.order(epoch)
            while cursor < self.num_samples:
                chunk = order[cursor : cursor + self.global_batch]
                cursor += len(chunk)
                mine = chunk[self.rank :: self.world]
                yield PlannedBatch(epoch, [(epoch, int(i)) for i in mine], cursor, cursor >= self.num_samples)
            epoch, cursor = epoch + 1, 0

    def advance(self, batch: PlannedBatch) -> None:
        """Record that ``batch`` was consumed (this is what a checkpoint saves)."""
        self.epoch, self.cursor = (batch.epoch + 1, 0) if batch.epoch_done else (batch.epoch, batch.cursor)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "samples_consumed": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.seed = state["epoch"], state["samples_consumed"], state["seed"]


def train_batches(
    dataset: TaskDataset, sampler: EpochSampler, collate: Callable, num_workers: int = 0
) -> Iterator[tuple[PlannedBatch, dict]]:
    """``(planned batch, collated batch)`` pairs, endlessly, from the sampler's current position.

    The DataLoader reads its own copy of the plan, so workers may prefetch ahead of the loop.
    """
    keys = (b.keys for b in sampler.plan())
    loader = DataLoader(
        dataset, batch_sampler=keys, collate_fn=collate, num_workers=num_workers, generator=_own_generator()
    )
    return zip(sampler.plan(), loader, strict=False)


def eval_batches(
    dataset: TaskDataset,
    batch_size: int,
    collate: Callable,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
    lengths: np.ndarray | None = None,
) -> DataLoader:
    """Batches for evaluation; rank r of w takes every w-th example. With ``lengths``, examples go
    longest first, so each batch holds similar lengths and pads little (metrics do not depend on
    the order)."""
    indices = list(range(len(dataset))) if lengths is None else np.argsort(-lengths, kind="stable").tolist()
    indices = indices[rank::world]
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return DataLoader(
        dataset, batch_sampler=chunks, collate_fn=collate, num_workers=num_workers, generator=_own_generator()
    )


def _own_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed from this generator; without one it would draw from
    the global RNG, shifting every later dropout mask (and breaking exact resume). Examples never use
    that seed: their RNG comes from (seed, epoch, index)."""
    return torch.Generator().manual_seed(0)


def to_device(batch, device: torch.device):
    """Move every tensor of a (nested) batch to ``device``; other values stay."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
