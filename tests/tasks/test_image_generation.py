"""Image generation (DDPM trained, DDIM sampled): the schedules, DDIM against exact denoisers, guidance,
seeding, the summed loss, the streaming judge metric against a direct computation, and a tiny run end
to end — trained, judged, evaluated again from its directory, sampled through predict — with its errors."""

from __future__ import annotations

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch

import bigmodel
from bigmodel.data import open_splits
from bigmodel.errors import DataError, RecipeError, UserError
from bigmodel.evaluation.generation import frechet_distance, gaussian_fit, save_grid
from bigmodel.models.registry import get_family
from bigmodel.pipeline import load_recipe
from bigmodel.rundir import open_run
from bigmodel.tasks import create_task
from bigmodel.tasks.image_generation import (
    GenerationMetric,
    GenerationOutputs,
    alphas_cumprod,
    ddim_sample,
    ddim_timesteps,
    seeded_generators,
)

TASK = "bigmodel.tasks.image_generation:ImageGenerationTask"
UNET = {"arch": "diffusion_unet", "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_levels": [1], "num_heads": 2, "norm_groups": 4, "dropout": 0.0}  # fmt: skip


# --- the diffusion ----------------------------------------------------------------------------------


def test_linear_schedule_is_ddpms_and_cosine_telescopes_to_its_closed_form():
    linear = alphas_cumprod("linear", 1000)
    assert float(linear[-1]) == pytest.approx(4.0358e-5, rel=1e-3)  # prod(1 - linspace(1e-4, 0.02, 1000))
    assert float(linear[0]) == pytest.approx(1 - 1e-4)
    assert float(alphas_cumprod("linear", 100)[0]) == pytest.approx(1 - 1e-3)  # betas scaled by 1000 / T

    T = 1000
    cosine = alphas_cumprod("cosine", T)

    def f(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    closed = torch.tensor([f((i + 1) / T) / f(0) for i in range(T)], dtype=torch.float64)
    unclipped = slice(0, T - 30)  # the last betas are capped at 0.999
    torch.testing.assert_close(cosine[unclipped], closed[unclipped], rtol=1e-9, atol=1e-12)
    betas = 1 - cosine[1:] / cosine[:-1]
    assert (cosine[1:] < cosine[:-1]).all() and float(betas.max()) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="schedule"):
        alphas_cumprod("sigmoid", 10)


def test_ddim_timesteps_run_from_the_last_step_to_zero():
    assert ddim_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert ddim_timesteps(4, 10) == [3, 2, 1, 0]
    assert ddim_timesteps(1000, 1) == [999]


class PointDenoiser(torch.nn.Module):
    """The exact noise predictor when every image is the constant ``c``."""

    def __init__(self, abar, c):
        super().__init__()
        self.abar, self.c = abar, c

    def forward(self, x, t, y=None):
        a = self.abar[t].view(-1, 1, 1, 1)  # float64, as the noise: x0 = (x - ...) / sqrt(abar) is exact
        return (x - a.sqrt() * self.c) / (1 - a).sqrt()


class GaussianDenoiser(torch.nn.Module):
    """E[eps | x_t] when pixels are independent N(mu, s²): sqrt(1-a) (x - sqrt(a) mu) / (a s² + 1 - a)."""

    def __init__(self, abar, mu, s):
        super().__init__()
        self.abar, self.mu, self.s = abar, mu, s

    def forward(self, x, t, y=None):
        a = self.abar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a)


@pytest.mark.parametrize("steps", [1, 7, 50])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_with_the_exact_denoiser_of_one_image_returns_that_image(steps, clip):
    abar = alphas_cumprod("cosine", 1000)
    noise = torch.randn(5, 1, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bounds = (torch.tensor([-1.0]), torch.tensor([1.0])) if clip else None
    x0 = ddim_sample(PointDenoiser(abar, 0.25), noise, abar, steps, clip=bounds)
    torch.testing.assert_close(x0, torch.full_like(x0, 0.25), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("eta", "steps", "n", "tolerance"), [(0.0, 1000, 4000, 0.03), (1.0, 300, 1000, 0.07)]
)
def test_ddim_of_a_gaussian_has_its_mean_and_spread(eta, steps, n, tolerance):
    """The exact denoiser of N(0.5, 0.3²) pixels: samples with that mean and spread (DDIM shrinks the
    spread a little with few steps: 0.282 at 100 steps, 0.294 at 1000 for eta 0)."""
    abar = alphas_cumprod("linear", 1000)
    noise = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gens = seeded_generators(range(n)) if eta else None
    x0 = ddim_sample(GaussianDenoiser(abar, 0.5, 0.3), noise, abar, steps, eta=eta, generators=gens).flatten()
    assert float(x0.mean()) == pytest.approx(0.5, abs=0.03)
    assert float(x0.std()) == pytest.approx(0.3, rel=tolerance)


class ConstantPerClass(torch.nn.Module):
    """eps = a constant for each class (index 2 = "no class")."""

    values = torch.tensor([0.3, -0.2, 0.05])

    def forward(self, x, t, y):
        return self.values.to(x.device)[y].view(-1, 1, 1, 1).expand_as(x)


class Guided(torch.nn.Module):
    """What guidance w should amount to: eps_none + w (eps_class - eps_none), in one model."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, t, y):
        v = ConstantPerClass.values
        return (v[2] + self.w * (v[y] - v[2])).view(-1, 1, 1, 1).expand_as(x)


def test_classifier_free_guidance_extrapolates_from_the_unconditional_noise():
    abar = alphas_cumprod("cosine", 100)
    noise, y = torch.randn(4, 1, 3, 3), torch.tensor([0, 1, 1, 0])
    guided = ddim_sample(ConstantPerClass(), noise, abar, 10, labels=y, null_class=2, guidance=3.0)
    expected = ddim_sample(Guided(3.0), noise, abar, 10, labels=y)
    torch.testing.assert_close(guided, expected)
    with pytest.raises(ValueError, match="null_class"):
        ddim_sample(ConstantPerClass(), noise, abar, 10, labels=y, guidance=3.0)


def test_a_sample_depends_on_its_own_seed_not_on_its_batch():
    abar = alphas_cumprod("cosine", 200)
    model = GaussianDenoiser(abar, 0.0, 1.0)

    def draw(seeds):
        gens = seeded_generators(seeds)
        noise = torch.stack([torch.randn(1, 3, 3, generator=g) for g in gens])
        return ddim_sample(model, noise, abar, 20, eta=1.0, generators=gens)

    pair, alone = draw([11, 22]), draw([22])
    torch.testing.assert_close(pair[1:], alone)
    assert not torch.allclose(pair[0], pair[1])


# --- data -------------------------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)  # unsigned bytes, ndim dimensions
    return header + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def write_bars(folder, n=120, size=8, seed=0, classes=2):
    """An MNIST-layout IDX pair: a bright horizontal (class 0) or vertical (class 1) bar, at random."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % classes).astype(np.uint8)
    images = np.zeros((n, size, size), np.uint8)
    for i, label in enumerate(labels):
        k = int(rng.integers(1, size - 1))
        if label == 0:
            images[i, k - 1 : k + 1, :] = 230
        elif label == 1:
            images[i, :, k - 1 : k + 1] = 230
        else:
            images[i, k - 1 : k + 1, k - 1 : k + 1] = 230
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    return f"idx:{folder}/train-images-idx3-ubyte.gz", images, labels


def generation_recipe(source, **task) -> dict:
    return {
        "name": "bars-ddpm",
        "seed": 0,
        "data": {"source": source, "split": {"validation": 0.1, "test": 0.2}},
        "task": {"name": TASK, "timesteps": 100, "sampling_steps": 5, "guidance": 2.0, **task},
        "model": UNET,
        "train": {"max_steps": 12, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 3e-3}},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bars")
    source, images, labels = write_bars(tmp / "bars")
    judge = bigmodel.train(
        {"name": "bars-judge", "data": {"source": source, "split": {"validation": 0.1, "test": 0.2}},
         "task": "image_classification", "model": {"arch": "cnn", "channels": [8, 16]},
         "train": {"epochs": 3, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-2}}},
        output=tmp / "runs", progress=False,
    )  # fmt: skip
    generator = bigmodel.train(
        generation_recipe(source, judge=str(judge.path), judge_samples=10),
        output=tmp / "runs",
        progress=False,
    )
    return {"judge": judge, "generator": generator, "source": source, "images": images, "tmp": tmp}


def _task(source, **task):
    recipe = load_recipe(generation_recipe(source, **task))
    task_ = create_task(recipe)
    records = open_splits(recipe.data, recipe.seed, task_.strata)[0]
    task_.fit(records["train"])
    return task_, records


def test_loss_is_the_per_image_mean_squared_error_summed_over_images(runs):
    task, records = _task(runs["source"])
    rng = np.random.default_rng(0)
    batch = task.collate([task.encode(records["train"][i], rng) for i in range(6)])
    assert batch["num_items"] == 6 and batch["x"].shape == (6, 1, 8, 8) and batch["t"].max() < 100
    torch.manual_seed(0)
    model = task.build_model(
        get_family("diffusion_unet"), {k: v for k, v in UNET.items() if k != "arch"}, None
    )
    abar = alphas_cumprod("cosine", 100).float()
    a = abar[batch["t"]].view(-1, 1, 1, 1)
    x_t = a.sqrt() * batch["x"] + (1 - a).sqrt() * batch["noise"]
    eps = model(x_t, batch["t"], batch["y"]).detach()
    expected = sum(float(((eps[i] - batch["noise"][i]) ** 2).mean()) for i in range(6))
    assert float(task.loss(model, batch).detach()) == pytest.approx(expected, rel=1e-5)


def test_evaluation_noise_is_fixed_and_training_drops_labels_at_the_set_rate(runs):
    task, records = _task(runs["source"], label_dropout=0.3)
    example = records["train"][0]
    first, again = task.encode(example, None), task.encode(example, None)
    assert first["t"] == again["t"] and torch.equal(first["noise"], again["noise"])
    assert first["y"] == task.labels.index(example["label"])
    draws = [task.encode(example, np.random.default_rng(i)) for i in range(2000)]
    assert len({d["t"] for d in draws}) > 90  # uniform over the 100 steps
    dropped = np.mean([d["y"] == task.num_classes for d in draws])
    assert 0.26 < dropped < 0.34


def test_held_out_splits_mark_evenly_spaced_examples_for_sampling(runs):
    task, records = _task(runs["source"], judge=str(runs["judge"].path), judge_samples=4)
    test = task.clean(records["test"], "test")
    validation = task.clean(records["validation"], "validation")  # not in judge_splits: loss only
    marks = [test[i]["_eval"] for i in range(len(test))]
    assert [m[0] for m in marks] == list(range(len(test))) and all(m[1] for m in marks)
    sampled = [m[0] for m in marks if m[2]]
    assert sampled == [0, 8, 15, 23] and len(test) == 24
    assert not any(validation[i]["_eval"][1] or validation[i]["_eval"][2] for i in range(len(validation)))
    assert test.row_number(3) == records["test"].row_number(3)
    batch = task.collate([task.encode(test[i], None) for i in range(9)])
    assert batch["sample_seeds"][0] is not None and batch["sample_seeds"][8] is not None
    assert sum(s is not None for s in batch["sample_seeds"]) == 2


def test_metric_streams_to_the_direct_computation(runs):
    task, _ = _task(runs["source"])
    rng = np.random.default_rng(0)
    metric = GenerationMetric(task)
    real_f, fake_f, hits = [], [], 0
    for _ in range(3):
        f_real, f_fake = rng.normal(size=(7, 5)), rng.normal(size=(6, 5)) + 0.3
        logits, wanted = torch.tensor(rng.normal(size=(6, 2))), torch.tensor(rng.integers(0, 2, 6))
        real_logits, real_y = torch.tensor(rng.normal(size=(7, 2))), torch.tensor(rng.integers(0, 2, 7))
        noise = torch.randn(4, 1, 2, 2)
        outputs = GenerationOutputs(
            noise + 0.1, (torch.tensor(f_real), real_logits, real_y), (torch.tensor(f_fake), logits, wanted)
        )
        metric.update(outputs, {"noise": noise})
        real_f.append(f_real), fake_f.append(f_fake)
        hits += int((logits.argmax(1) == wanted).sum())
    report = metric.compute()
    direct = frechet_distance(*gaussian_fit(np.concatenate(fake_f)), *gaussian_fit(np.concatenate(real_f)))
    assert report["frechet_judge"] == pytest.approx(direct, rel=1e-9)
    assert report["recognisability"] == pytest.approx(hits / 18)
    assert report["loss"] == pytest.approx(0.01, rel=1e-5) and report["images"] == 12
    assert report["samples"] == 18 and report["real_images_judged"] == 21
    assert "NOT Inception FID" in report["note"]


# --- a run, end to end --------------------------------------------------------------------------------


def test_a_judged_run_reports_recognisability_and_the_frechet_distance(runs):
    run = runs["generator"]
    test = run.metrics["test"]
    assert test["samples"] == 10 and test["images"] == 24 and test["real_images_judged"] == 24
    assert 0.0 <= test["recognisability"] <= 1.0 and test["judge_accuracy_real"] >= 0.9
    assert math.isfinite(test["frechet_judge"]) and test["frechet_judge"] >= 0
    assert "recognisability" not in run.metrics["validation"]  # judged on the test split only
    report = json.loads((run.path / "eval.json").read_text())["test"]
    assert "NOT Inception FID" in report["note"] and set(report["recognisability_per_class"]) <= {"0", "1"}
    again = bigmodel.evaluate(run.path, "test")  # from the run directory: the same noise, the same samples
    for key in ("loss", "recognisability", "frechet_judge", "judge_accuracy_real"):
        assert again[key] == pytest.approx(test[key], rel=1e-6, abs=1e-9), key


def test_the_judge_reads_images_as_its_own_predictor_does(runs):
    _, task, _ = open_run(runs["generator"].path)
    images = runs["images"][:12]
    _, logits = task.judge(torch.from_numpy(images).float().div(255).unsqueeze(1))
    names = [task.labels.names[i] for i in logits.argmax(1)]
    assert names == [row["label"] for row in bigmodel.load(runs["judge"].path).predict(images)]


def test_predict_draws_seeded_uint8_images_per_request(runs, tmp_path):
    predictor = bigmodel.load(runs["generator"].path)
    rows = predictor.predict({"label": "1", "count": 3, "seed": 5})
    assert [(r["label"], r["seed"], r["index"]) for r in rows] == [("1", 5, 0), ("1", 5, 1), ("1", 5, 2)]
    pixels = [np.asarray(r["image"]) for r in rows]  # PIL images: bigmodel predict writes them as PNGs
    assert all(p.shape == (8, 8) and p.dtype == np.uint8 for p in pixels)
    again = predictor.predict([{"label": 1, "count": 2, "seed": 5}, "0"])  # a label as a number, a bare name
    assert np.array_equal(np.asarray(again[1]["image"]), pixels[1]) and again[2]["label"] == "0"
    other = predictor.predict({"label": "1", "seed": 6})
    assert not np.array_equal(np.asarray(other[0]["image"]), pixels[0])
    unconditional = predictor.predict({"count": 2})  # "no class": trained with label_dropout
    assert unconditional[0]["label"] is None
    path = save_grid([r["image"] for r in rows + again], tmp_path / "grid.png")
    assert path.is_file()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"label": "shoe"}, "label 'shoe' is not a class"),
        ({"label": "1", "count": 0}, r"'count' must be a whole number in \[1, 10000\], got 0"),
        ({"label": "1", "count": True}, "'count' must be a whole number"),
        ({"label": "1", "seed": -1}, "'seed' must be"),
        ({"label": "1", "colour": "red"}, "unknown key 'colour'"),
        (3.5, "expected a request"),
    ],
)
def test_bad_requests_are_refused_naming_the_row(runs, request_, message):
    predictor = bigmodel.load(runs["generator"].path)
    with pytest.raises(DataError, match=message):
        predictor.predict(request_)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"arch": "cnn"}}, "needs a denoiser"),
        ({"model": {**UNET, "num_classes": 3}}, "model.num_classes: set by the task"),
        (
            {"task": {"name": TASK, "guidance": 2.0, "label_dropout": 0.0}},
            "task.label_dropout: 0 never trains",
        ),
        ({"task": {"name": TASK, "guidance": 2.0, "class_conditional": False}}, "class_conditional is false"),
        ({"task": {"name": TASK, "judge_splits": ["train"]}}, "judge_splits"),
    ],
)
def test_recipes_it_cannot_train_are_refused_by_field(runs, change, message):
    recipe = {**generation_recipe(runs["source"]), **change}
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_a_judge_must_be_a_finished_image_classification_run_knowing_the_classes(runs, tmp_path):
    source = runs["source"]
    with pytest.raises(UserError, match="not a finished run directory|no such run directory"):
        load_recipe(generation_recipe(source, judge=str(tmp_path)))
    with pytest.raises(RecipeError, match="the judge must be an image_classification run"):
        load_recipe(generation_recipe(source, judge=str(runs["generator"].path)))
    three, _, _ = write_bars(tmp_path / "three", n=60, classes=3)
    with pytest.raises(RecipeError, match="does not know the classes 2"):
        bigmodel.train(
            generation_recipe(three, judge=str(runs["judge"].path)), output=tmp_path, progress=False
        )
    assert not (tmp_path / "bars-ddpm").exists()  # refused before the run directory appears


def test_unconditional_generation_needs_no_labels(runs, tmp_path):
    recipe = generation_recipe(runs["source"], class_conditional=False, guidance=1.0)
    recipe["train"]["max_steps"] = 2
    run = bigmodel.train(recipe, output=tmp_path, progress=False)
    assert json.loads((run.path / "model.json").read_text())["config"]["num_classes"] == 0
    (row,) = bigmodel.load(run.path).predict({"seed": 1})
    assert row["label"] is None and np.asarray(row["image"]).shape == (8, 8)
    with pytest.raises(DataError, match="not class-conditional"):
        bigmodel.load(run.path).predict({"label": "1"})
