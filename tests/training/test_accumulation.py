"""Gradient accumulation is normalised by the window's item count: for a per-token loss over sequences
of unequal lengths, one step of batch 64 equals one step of 16 × 4 (and averaging the micro-batches'
mean losses, as the old loop did, would not)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.data.loader import EpochSampler
from bigmodel.data.records import ColumnRecords
from bigmodel.recipe.schema import TrainConfig
from bigmodel.tasks.base import Task
from bigmodel.training.loop import fit

VOCAB, N, SEED, LR = 50, 64, 3, 1.0


class TokenTask(Task):
    """Predict a label per token: loss summed over real tokens, ``num_items`` = real tokens."""

    name = "token_test"

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        return {"ids": torch.tensor(example["ids"]), "labels": torch.tensor(example["labels"])}

    def collate(self, items: list[dict]) -> dict:
        length = max(len(item["ids"]) for item in items)
        ids = torch.zeros(len(items), length, dtype=torch.long)
        labels = torch.full((len(items), length), -100, dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["ids"])] = item["ids"]
            labels[row, : len(item["labels"])] = item["labels"]
        return {"ids": ids, "labels": labels, "num_items": int((labels != -100).sum())}

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["ids"])  # (B, T, VOCAB)

    def loss_from(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(
            logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), ignore_index=-100, reduction="sum"
        )


def token_records() -> ColumnRecords:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 21, size=N)
    ids = [rng.integers(0, VOCAB, size=n).tolist() for n in lengths]
    labels = [rng.integers(0, VOCAB, size=n).tolist() for n in lengths]
    return ColumnRecords({"ids": ids, "labels": labels}, "tokens")


def initial_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB))


def train_one_step(tmp_path, batch_size: int, accum: int) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(
        device="cpu",
        epochs=1,
        batch_size=batch_size,
        grad_accum_steps=accum,
        optimizer={"name": "sgd", "lr": LR},
        checkpoint_every=1000,
    )
    model = initial_model()
    run_dir = tmp_path / f"b{batch_size}x{accum}"
    run_dir.mkdir()  # fit writes into an existing run directory
    result = fit(model, TokenTask(TokenTask.Options(), {}), token_records(), None, cfg, run_dir, SEED,
                 show_progress=False)  # fmt: skip
    assert result.steps == 1 and result.epochs == 1
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sgd_step(micro_batches: list[dict], mean_of_means: bool) -> dict[str, torch.Tensor]:
    """One SGD step by hand: on the window's summed loss / its tokens, or on the mean of the
    micro-batches' per-token means (the old loop's normalisation)."""
    model, task = initial_model(), TokenTask(TokenTask.Options(), {})
    total = sum(batch["num_items"] for batch in micro_batches)
    for batch in micro_batches:
        loss = task.loss(model, batch)
        (loss / batch["num_items"] / len(micro_batches) if mean_of_means else loss / total).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_accumulation_is_normalised_by_the_window_token_count(tmp_path):
    whole = train_one_step(tmp_path, 64, 1)
    accumulated = train_one_step(tmp_path, 16, 4)
    assert max_diff(whole, initial_model().state_dict()) > 1e-3, "the step changed the weights"
    assert max_diff(whole, accumulated) < 1e-6

    # The same step by hand, on the micro-batches of batch 16 in the sampler's order.
    task, records = TokenTask(TokenTask.Options(), {}), token_records()
    plan = islice(EpochSampler(N, 16, SEED).plan(), 4)
    micro = [task.collate([task.encode(records[i], None) for _, i in planned.keys]) for planned in plan]
    counts = [batch["num_items"] for batch in micro]
    assert len(set(counts)) > 1, "the micro-batches must hold different token counts"
    assert max_diff(sgd_step(micro, mean_of_means=False), accumulated) < 1e-6
    # Control: averaging the micro-batches' mean losses gives another step, so the test can fail.
    old = sgd_step(micro, mean_of_means=True)
    assert max_diff(old, accumulated) > 1e-4
    assert max_diff(old, accumulated) > 100 * max_diff(whole, accumulated)


@pytest.mark.parametrize("accum", [2, 8])
def test_other_windows_match_too(tmp_path, accum):
    assert max_diff(train_one_step(tmp_path, N // accum, accum), train_one_step(tmp_path, N, 1)) < 1e-6
