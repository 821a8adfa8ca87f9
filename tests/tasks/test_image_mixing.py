"""Mixup and CutMix: drawn from each example's RNG, mixed at collation with the next image of the batch,
the loss weighted by the share each label keeps; evaluation batches are never mixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.tasks.test_image_classification import recipe, write_folder

import bigmodel
from bigmodel.data.sources import load_source
from bigmodel.data.transforms import draw_mix, mix_batch
from bigmodel.recipe import load_recipe
from bigmodel.tasks import create_task


def test_draws_are_reproducible_and_cutmix_weight_is_the_kept_area():
    a = draw_mix(np.random.default_rng(3), 0.0, 1.0, (12, 10))
    assert a == draw_mix(np.random.default_rng(3), 0.0, 1.0, (12, 10))
    top, bottom, left, right = a["box"]
    assert 0 <= top <= bottom <= 12 and 0 <= left <= right <= 10
    assert a["lam"] == pytest.approx(1 - (bottom - top) * (right - left) / 120)
    m = draw_mix(np.random.default_rng(3), 0.4, 0.0, (12, 10))
    assert m["box"] is None and 0 <= m["lam"] <= 1
    assert draw_mix(np.random.default_rng(3), 0.0, 0.0, (12, 10)) is None
    both = {draw_mix(np.random.default_rng(s), 0.4, 1.0, (12, 10))["box"] is None for s in range(20)}
    assert both == {True, False}  # with both on, each example picks one


def test_mix_batch_blends_or_pastes_the_partner():
    x = torch.arange(3 * 1 * 4 * 4, dtype=torch.float32).reshape(3, 1, 4, 4)
    draws = [{"lam": 0.25, "box": None}, {"lam": 0.75, "box": (0, 2, 1, 3)}, {"lam": 1.0, "box": None}]
    out, partner, lam = mix_batch(x, draws)
    assert partner.tolist() == [1, 2, 0] and lam.tolist() == [0.25, 0.75, 1.0]
    assert torch.equal(out[0], 0.25 * x[0] + 0.75 * x[1])
    expected = x[1].clone()
    expected[:, 0:2, 1:3] = x[2][:, 0:2, 1:3]
    assert torch.equal(out[1], expected) and torch.equal(out[2], x[2])
    single, _, lam1 = mix_batch(x[:1], draws[:1])
    assert torch.equal(single, x[:1]) and lam1.tolist() == [1.0]


def _task(folder, **augment):
    task = create_task(load_recipe(recipe(f"images:{folder}", augment=augment, label_smoothing=0.1)))
    (records,) = load_source(f"images:{folder}").values()
    task.fit(records)
    return task, records


def test_training_batches_mix_and_the_loss_weighs_both_labels(tmp_path):
    task, records = _task(write_folder(tmp_path / "stripes", per_class=4), mixup=0.4, cutmix=1.0)
    rng = np.random.default_rng(0)
    items = [task.encode(records[i], np.random.default_rng(i)) for i in (0, 5)]  # one of each class
    batch = task.collate(items)
    assert torch.equal(batch["y_partner"], batch["y"].flip(0))
    logits = torch.tensor(rng.normal(size=(2, 2)), dtype=torch.float32)
    own = F.cross_entropy(logits, batch["y"], label_smoothing=0.1, reduction="none")
    other = F.cross_entropy(logits, batch["y_partner"], label_smoothing=0.1, reduction="none")
    lam = batch["lam"]
    assert float(task.loss_from(logits, batch)) == pytest.approx(float((lam * own + (1 - lam) * other).sum()))
    # evaluation and prediction encode without an RNG: nothing mixed, the plain loss
    plain = task.collate([task.encode(records[i], None) for i in (0, 5)])
    assert "lam" not in plain and torch.equal(plain["x"], torch.stack([task.encode(records[i], None)["x"]
                                                                        for i in (0, 5)]))  # fmt: skip
    assert float(task.loss_from(logits, plain)) == pytest.approx(
        float(F.cross_entropy(logits, plain["y"], label_smoothing=0.1, reduction="sum"))
    )


def test_a_run_with_mixing_learns_and_its_mixes_are_reproducible(tmp_path):
    folder = write_folder(tmp_path / "stripes")
    spec = recipe(f"images:{folder}", augment={"mixup": 0.2, "cutmix": 1.0})
    spec["train"]["epochs"] = 10
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    assert run.metrics["test"]["accuracy"] >= 0.9
    task, records = _task(folder, mixup=0.2, cutmix=1.0)
    first = task.collate([task.encode(records[i], np.random.default_rng(i)) for i in range(4)])
    again = task.collate([task.encode(records[i], np.random.default_rng(i)) for i in range(4)])
    assert torch.equal(first["x"], again["x"]) and torch.equal(first["lam"], again["lam"])
