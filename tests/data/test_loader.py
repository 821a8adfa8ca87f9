"""Resumable batch loader and feature normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigmodel.data import BatchLoader, Normalizer, batches

N = 23  # odd on purpose: the last batch is short


def make(batch_size=5, seed=0) -> BatchLoader:
    x = torch.arange(N, dtype=torch.float32).unsqueeze(1) * torch.ones(1, 3)
    y = torch.arange(N)
    return BatchLoader((x, y), batch_size, seed=seed)


def epoch_ids(loader: BatchLoader) -> list[int]:
    ids, done = [], False
    while not done:
        (x, y), done = loader.next_batch()
        assert torch.equal(x[:, 0].long(), y), "features and targets lost alignment"
        ids.extend(y.tolist())
    return ids


def test_every_epoch_is_a_permutation():
    loader = make()
    assert len(loader) == 5
    for epoch in range(3):
        assert loader.epoch == epoch
        ids = epoch_ids(loader)
        assert sorted(ids) == list(range(N))
    assert loader.epoch == 3 and loader.position == 0


def test_batch_sizes_and_epoch_flag():
    loader = make(batch_size=5)
    sizes, flags = [], []
    for _ in range(len(loader)):
        (x, _), done = loader.next_batch()
        sizes.append(len(x))
        flags.append(done)
    assert sizes == [5, 5, 5, 5, 3]
    assert flags == [False] * 4 + [True]


def test_same_seed_same_order_and_epochs_differ():
    a, b, c = make(seed=7), make(seed=7), make(seed=8)
    a0, a1 = epoch_ids(a), epoch_ids(a)
    assert a0 == epoch_ids(b) and a1 == epoch_ids(b)
    assert a0 != a1, "every epoch must be reshuffled"
    assert a0 != list(range(N)), "the data was not shuffled"
    assert epoch_ids(c) != a0


def test_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch_ids(make())
    assert torch.equal(torch.rand(3), expected)


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    reference = make(batch_size=4, seed=5)
    epoch_ids(reference)  # one full epoch, then 2 batches into the second
    taken = [reference.next_batch()[0][1].tolist() for _ in range(2)]
    state = reference.state_dict()
    assert state == {"epoch": 1, "position": 2, "seed": 5}
    rest = []
    done = False
    while not done:
        (_, y), done = reference.next_batch()
        rest.append(y.tolist())

    resumed = make(batch_size=4, seed=0)
    resumed.load_state_dict(state)
    got, done = [], False
    while not done:
        (_, y), done = resumed.next_batch()
        got.append(y.tolist())
    assert got == rest
    assert sorted(sum(taken, []) + sum(got, [])) == list(range(N))
    # and the epoch after matches too
    assert epoch_ids(resumed) == epoch_ids(reference)


def test_load_state_dict_discards_a_cached_order():
    a = make(seed=1)
    a.next_batch()  # caches epoch 0's order
    a.load_state_dict({"epoch": 3, "position": 0, "seed": 1})
    b = make(seed=1)
    b.load_state_dict({"epoch": 3, "position": 0, "seed": 1})
    assert epoch_ids(a) == epoch_ids(b)


@pytest.mark.parametrize("batch_size", [None, 1000])
def test_full_batch(batch_size):
    loader = make(batch_size=batch_size)
    assert len(loader) == 1
    (x, y), done = loader.next_batch()
    assert done and len(y) == N and sorted(y.tolist()) == list(range(N))


def test_eval_batches_in_order():
    x = torch.arange(10)
    out = [b[0].tolist() for b in batches((x, x * 2), 4)]
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ----------------------------------------------------------------------------- Normalizer

X = np.array([[1.0, 5.0, -2.0], [3.0, 5.0, 0.0], [8.0, 5.0, 4.0], [0.0, 5.0, 2.0]], dtype=np.float32)


def test_standard_per_feature_and_constant_column():
    norm = Normalizer("standard").fit(X)
    out = norm(X)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out[:, [0, 2]].mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(out[:, [0, 2]].std(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(out[:, 1], 0)  # constant feature: centred, not divided by zero
    np.testing.assert_allclose(norm.std, [X[:, 0].std(), 1.0, X[:, 2].std()], rtol=1e-6)


def test_global_uses_one_mean_and_std():
    norm = Normalizer("global").fit(X)
    assert np.ndim(norm.mean) == 0 and np.ndim(norm.std) == 0
    np.testing.assert_allclose(norm(X), (X - X.mean()) / X.std(), rtol=1e-5)


def test_global_constant_data():
    out = Normalizer("global").fit(np.full((3, 2), 4.0, np.float32))(np.full((1, 2), 6.0, np.float32))
    np.testing.assert_array_equal(out, [[2.0, 2.0]])


def test_none_is_identity():
    norm = Normalizer("none").fit(X)
    np.testing.assert_array_equal(norm(X), X)


def test_images_keep_their_shape():
    x = np.random.default_rng(0).normal(3, 2, size=(20, 1, 4, 4)).astype(np.float32)
    norm = Normalizer("standard").fit(x)
    assert norm.mean.shape == (1, 4, 4)
    out = norm(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)


@pytest.mark.parametrize("mode", ["standard", "global", "none"])
def test_to_dict_round_trip(mode):
    norm = Normalizer(mode).fit(X)
    import json

    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again.mode == mode
    np.testing.assert_array_equal(again(X), norm(X))
    new = X[::-1] * 2
    np.testing.assert_array_equal(again(new), norm(new))
