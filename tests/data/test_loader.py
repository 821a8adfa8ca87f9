"""From records to batches: the resumable, world-size-independent EpochSampler, the TaskDataset's
per-example RNG, train/eval batches through a DataLoader, and ``to_device``."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from bigmodel.data.loader import EpochSampler, TaskDataset, eval_batches, to_device, train_batches
from bigmodel.data.records import ColumnRecords

N = 23  # odd on purpose: the last batch is short


def one_epoch(sampler: EpochSampler, advance: bool = False) -> list:
    """The planned batches from the sampler's position to the end of that epoch."""
    out = []
    for planned in sampler.plan():
        out.append(planned)
        if advance:
            sampler.advance(planned)
        if planned.epoch_done:
            return out
    raise AssertionError("unreachable: the plan is endless")


def indices(planned) -> list[int]:
    return [i for _, i in planned.keys]


def flat(batches) -> list[int]:
    return [i for planned in batches for i in indices(planned)]


# ----------------------------------------------------------------------------- EpochSampler


def test_every_epoch_is_a_permutation_across_ranks():
    for world in (1, 2, 3):
        samplers = [EpochSampler(N, 4, seed=3, rank=r, world=world) for r in range(world)]
        for epoch in range(3):
            got = []
            for s in samplers:
                batches = one_epoch(s, advance=True)
                assert all(planned.epoch == epoch for planned in batches)
                assert all(e == epoch for planned in batches for e, _ in planned.keys)
                got += flat(batches)
            assert len(got) == N and sorted(got) == list(range(N)), (world, epoch)
        assert all(s.epoch == 3 and s.cursor == 0 for s in samplers)


def test_batch_sizes_cursor_and_epoch_flag():
    sampler = EpochSampler(N, 5, seed=0)
    assert sampler.batches_per_epoch() == 5
    batches = list(islice(sampler.plan(), 7))  # the plan runs on into the next epoch
    assert [len(b.keys) for b in batches] == [5, 5, 5, 5, 3, 5, 5]
    assert [b.epoch_done for b in batches] == [False] * 4 + [True, False, False]
    assert [b.cursor for b in batches] == [5, 10, 15, 20, 23, 5, 10]
    assert [b.epoch for b in batches] == [0] * 5 + [1, 1]
    # a batch larger than the split is the whole split, in one batch
    (whole,) = one_epoch(EpochSampler(N, 1000, seed=0))
    assert whole.epoch_done and sorted(indices(whole)) == list(range(N))


def test_same_seed_same_order_epochs_and_seeds_differ():
    def epochs(seed):
        s = EpochSampler(N, 5, seed=seed)
        return [flat(one_epoch(s, advance=True)) for _ in range(2)]

    a0, a1 = epochs(7)
    assert [a0, a1] == epochs(7)
    assert a0 != a1, "every epoch must be reshuffled"
    assert a0 != list(range(N)), "the data was not shuffled"
    assert epochs(8)[0] != a0
    assert list(EpochSampler(N, 5, seed=7).order(1)) == a1  # the order depends only on (seed, epoch)


def test_planning_never_touches_the_global_rng():
    torch.manual_seed(0)
    np.random.seed(0)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    for lengths in (None, np.arange(N) % 7):
        s = EpochSampler(N, 4, seed=1, lengths=lengths)
        for _ in range(3):
            one_epoch(s, advance=True)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


@pytest.mark.parametrize("k", [0, 2, 5, 6])  # 5 batches of 4 + one of 3: k=6 is an epoch end
def test_resume_yields_exactly_the_remaining_batches(k):
    reference = EpochSampler(N, 4, seed=5)
    one_epoch(reference, advance=True)  # epoch 1 from here on
    taken = []
    for planned in islice(reference.plan(), k):
        reference.advance(planned)
        taken.append(planned)
    state = reference.state_dict()
    if k == 6:
        assert state == {"epoch": 2, "samples_consumed": 0, "seed": 5}
    else:
        assert state == {"epoch": 1, "samples_consumed": 4 * k, "seed": 5}
    rest = list(islice(reference.plan(), 12))  # the rest of the epoch and beyond

    resumed = EpochSampler(N, 4, seed=0)  # the seed comes from the state
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert list(islice(resumed.plan(), 12)) == rest
    if 0 < k < 6:
        assert sorted(flat(taken) + flat(one_epoch(resumed))) == list(range(N))


@pytest.mark.parametrize("lengths", [None, np.random.default_rng(9).integers(1, 60, size=N)])
def test_world_size_independence(lengths):
    """The ranks of a world of 2 with batch B read, step by step, the world-1 batches of 2×B."""
    b = 3
    single = list(islice(EpochSampler(N, 2 * b, seed=4, lengths=lengths).plan(), 12))  # 2 epochs and more
    ranks = [
        list(islice(EpochSampler(N, b, seed=4, rank=r, world=2, lengths=lengths).plan(), 12)) for r in (0, 1)
    ]
    for step, whole in enumerate(single):
        r0, r1 = ranks[0][step], ranks[1][step]
        assert sorted(r0.keys + r1.keys) == sorted(whole.keys), step
        assert not set(r0.keys) & set(r1.keys)
        assert len(r0.keys) <= b and len(r1.keys) <= b
        assert r0.cursor == r1.cursor == whole.cursor
        assert r0.epoch_done == r1.epoch_done == whole.epoch_done


def test_resume_on_another_world_size_continues_at_the_same_sample():
    seed = 11
    reference = EpochSampler(N, 2, seed=seed)  # world 1, batch 2
    for planned in islice(reference.plan(), 3):
        reference.advance(planned)
    state = reference.state_dict()
    assert state["samples_consumed"] == 6
    remaining = flat(one_epoch(reference, advance=True))
    assert remaining == list(reference.order(0)[6:])

    samplers = [EpochSampler(N, 3, seed=0, rank=r, world=2) for r in (0, 1)]  # global batches of 6
    for s in samplers:
        s.load_state_dict(state)
    ranks = [one_epoch(s, advance=True) for s in samplers]
    assert len(ranks[0]) == len(ranks[1]) == 3  # 17 remaining samples: 6 + 6 + 5
    for step, (r0, r1) in enumerate(zip(*ranks, strict=True)):
        assert sorted(indices(r0) + indices(r1)) == sorted(remaining[6 * step : 6 * step + 6])
        assert r0.cursor == r1.cursor == min(6 + 6 * (step + 1), N)
    # and both go on into the next epoch in the single process's order
    assert (
        [s.state_dict() for s in samplers]
        == [reference.state_dict()] * 2
        == [{"epoch": 1, "samples_consumed": 0, "seed": seed}] * 2
    )
    nxt = [indices(next(s.plan())) for s in samplers]
    assert sorted(nxt[0] + nxt[1]) == sorted(reference.order(1)[:6])


def spread(lengths: np.ndarray, batches) -> float:
    """The mean spread (max - min) of the lengths within the batches."""
    return float(np.mean([np.ptp(lengths[indices(b)]) for b in batches]))


def test_length_grouping():
    n, b = 1000, 8  # several chunks of 50 batches
    lengths = np.random.default_rng(0).integers(1, 200, size=n)
    grouped = EpochSampler(n, b, seed=2, lengths=lengths)
    plain = EpochSampler(n, b, seed=2)
    for _ in range(2):
        batches = one_epoch(grouped, advance=True)
        random = one_epoch(plain, advance=True)
        got = flat(batches)
        assert len(got) == n and sorted(got) == list(range(n))
        assert spread(lengths, batches) < spread(lengths, random) / 5
        assert lengths[indices(batches[0])].max() == lengths.max(), "the longest batch goes first"
        # the batch order is shuffled, not sorted by length
        maxima = [lengths[indices(b)].max() for b in batches[1:]]
        assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)
        assert [len(x.keys) for x in batches] == [b] * (n // b)
    again = EpochSampler(n, b, seed=2, lengths=lengths)
    first = one_epoch(again, advance=True)
    assert first == one_epoch(EpochSampler(n, b, seed=2, lengths=lengths))
    assert flat(first) != flat(one_epoch(again)), "epochs differ"
    assert flat(first) != flat(one_epoch(EpochSampler(n, b, seed=3, lengths=lengths)))


# ----------------------------------------------------------------------------- TaskDataset


def draw_encode(example: dict, rng: np.random.Generator | None) -> dict:
    """An encode with a random augmentation: noise drawn from the example's rng."""
    x = torch.tensor(example["value"], dtype=torch.float64)
    if rng is not None:
        x = x + torch.from_numpy(rng.normal(size=x.shape))
    return {"x": x, "index": example["index"], "augmented": rng is not None}


def collate(items: list[dict]) -> dict:
    return {
        "x": torch.stack([item["x"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
        "num_items": len(items),
    }


def table(n: int = N) -> ColumnRecords:
    values = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    return ColumnRecords({"value": [list(v) for v in values], "index": list(range(n))}, "arrays")


def test_dataset_rng_depends_only_on_seed_epoch_and_index():
    dataset = TaskDataset(table(), draw_encode, seed=4, train=True)
    assert len(dataset) == N
    keys = [(e, i) for e in range(3) for i in range(N)]
    forward = {key: dataset[key]["x"] for key in keys}
    backward = {key: dataset[key]["x"] for key in reversed(keys)}
    for key in keys:
        assert torch.equal(forward[key], backward[key]), key
    epoch, i = 2, 5
    noise = np.random.default_rng((4, epoch, i)).normal(size=3)
    assert torch.equal(forward[(epoch, i)], torch.tensor(table()[i]["value"]) + torch.from_numpy(noise))
    assert not torch.equal(forward[(0, i)], forward[(1, i)]), "epochs draw differently"
    assert not torch.equal(forward[(0, 3)] - 9, forward[(0, 4)] - 12), "examples draw differently"
    other_seed = TaskDataset(table(), draw_encode, seed=5, train=True)
    assert not torch.equal(other_seed[(0, i)]["x"], forward[(0, i)])
    assert torch.equal(dataset[i]["x"], forward[(0, i)])  # a plain index is epoch 0


def test_dataset_without_training_passes_no_rng():
    seen = []
    dataset = TaskDataset(table(), lambda ex, rng: seen.append(rng) or ex, seed=4)
    assert dataset[(3, 2)] == table()[2] and dataset[7]["index"] == 7
    assert seen == [None, None]
    assert not draw_encode(table()[0], None)["augmented"]


# ----------------------------------------------------------------------------- DataLoader


def run_train_batches(num_workers: int, steps: int = 14) -> list[tuple]:
    dataset = TaskDataset(table(), draw_encode, seed=6, train=True)
    sampler = EpochSampler(N, 4, seed=6)
    return list(islice(train_batches(dataset, sampler, collate, num_workers=num_workers), steps))


def test_train_batches_are_the_same_for_any_number_of_workers():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    inline, workers = run_train_batches(0), run_train_batches(2)  # 14 batches: into the third epoch
    assert torch.equal(torch.get_rng_state(), state), "the DataLoader drew from the global RNG"
    assert [p for p, _ in inline] == [p for p, _ in workers]
    dataset = TaskDataset(table(), draw_encode, seed=6, train=True)
    for (planned, a), (_, b) in zip(inline, workers, strict=True):
        assert a["index"].tolist() == indices(planned) == b["index"].tolist()
        assert torch.equal(a["x"], b["x"])
        assert a["num_items"] == len(planned.keys)
        expected = torch.stack([dataset[key]["x"] for key in planned.keys])
        assert torch.equal(a["x"], expected)
    assert {p.epoch for p, _ in inline} == {0, 1, 2}


def test_train_batches_start_at_the_sampler_position():
    dataset = TaskDataset(table(), draw_encode, seed=6, train=True)
    sampler = EpochSampler(N, 4, seed=6)
    plan = list(islice(sampler.plan(), 8))
    sampler.load_state_dict({"epoch": 0, "samples_consumed": 12, "seed": 6})
    got = list(islice(train_batches(dataset, sampler, collate), 5))
    assert [p for p, _ in got] == plan[3:8]
    assert [b["index"].tolist() for _, b in got] == [indices(p) for p in plan[3:8]]


def test_eval_batches_in_order_and_strided_by_rank():
    dataset = TaskDataset(table(10), draw_encode, seed=1)
    out = [b["index"].tolist() for b in eval_batches(dataset, 4, collate)]
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for b in eval_batches(dataset, 4, collate):
        assert torch.equal(b["x"], torch.tensor([table(10)[i]["value"] for i in b["index"]]))  # no noise
    ranks = [
        [b["index"].tolist() for b in eval_batches(dataset, 2, collate, rank=r, world=3)] for r in range(3)
    ]
    assert ranks == [[[0, 3], [6, 9]], [[1, 4], [7]], [[2, 5], [8]]]
    same = [b["index"].tolist() for b in eval_batches(dataset, 2, collate, num_workers=2, rank=1, world=3)]
    assert same == ranks[1]


def test_to_device_moves_nested_tensors_and_keeps_the_rest():
    batch = {
        "x": torch.ones(2, 3),
        "nested": {"ids": torch.arange(4), "names": ["a", "b"]},
        "list": [torch.zeros(1), 7, {"deep": torch.ones(1)}],
        "pair": (torch.ones(2), "text"),
        "num_items": 2,
        "none": None,
    }
    moved = to_device(batch, torch.device("meta"))  # a device every machine has
    assert moved["x"].device.type == "meta" and moved["x"].shape == (2, 3)
    assert moved["nested"]["ids"].device.type == "meta" and moved["nested"]["names"] == ["a", "b"]
    assert moved["list"][0].device.type == "meta" and moved["list"][1] == 7
    assert moved["list"][2]["deep"].device.type == "meta"
    assert isinstance(moved["pair"], tuple) and moved["pair"][0].device.type == "meta"
    assert moved["pair"][1] == "text" and moved["num_items"] == 2 and moved["none"] is None
    assert batch["x"].device.type == "cpu", "the input batch is not modified"
    same = to_device(batch, torch.device("cpu"))
    assert torch.equal(same["x"], batch["x"]) and same["nested"]["names"] == ["a", "b"]
