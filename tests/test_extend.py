"""Users extend from outside the package: their own task and model in their own file, named in a
recipe as ``package.module:Name``; their own nn.Module on their own arrays with ``bigmodel.fit``."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import bigmodel
from bigmodel.errors import DataError, RecipeError, RunDirError

TOY = '''
"""A toy task a user writes: is the point (x1, x2) inside the unit circle?"""
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from bigmodel import Task
from bigmodel.tasks import Metric


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    radius: float = 1.0


class Accuracy(Metric):
    def update(self, logits, batch):
        self.add("correct", (logits.argmax(-1) == batch["y"]).sum())
        self.add("count", torch.tensor(len(batch["y"])))

    def compute(self):
        return {"accuracy": float(self.sums["correct"] / self.sums["count"])}


class InsideCircle(Task):
    name = "inside_circle"
    Options = Options
    metric_names = ("accuracy",)
    higher_is_better = {"accuracy": True}

    def build_model(self, family, options, pretrained):
        return family.model_cls(family.config_cls(**options))

    def encode(self, example, rng):
        x = torch.tensor([float(example["x1"]), float(example["x2"])])
        inside = float(example["x1"]) ** 2 + float(example["x2"]) ** 2 < self.options.radius**2
        return {"x": x, "y": int(inside)}

    def collate(self, items):
        return {"x": torch.stack([i["x"] for i in items]), "y": torch.tensor([i["y"] for i in items]),
                "num_items": len(items)}

    def forward(self, model, batch):
        return model(batch["x"])

    def loss_from(self, logits, batch):
        return F.cross_entropy(logits, batch["y"], reduction="sum")

    def metric(self):
        return Accuracy()

    def predict(self, model, batch):
        return [{"inside": bool(p)} for p in self.forward(model, batch).argmax(-1).tolist()]


class TinyNet(nn.Module):
    def __init__(self, hidden: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(x)
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    (tmp_path / "usercode").mkdir()
    (tmp_path / "usercode" / "toy_task.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path / "usercode"))
    yield tmp_path
    sys.modules.pop("toy_task", None)


def test_a_task_and_a_model_from_outside_the_package_train_from_a_recipe(user_package):
    rng = np.random.default_rng(0)
    points = rng.uniform(-1.6, 1.6, size=(600, 2))
    csv = user_package / "points.csv"
    csv.write_text("x1,x2\n" + "".join(f"{a:.4f},{b:.4f}\n" for a, b in points))
    recipe = {
        "name": "circle",
        "data": {"source": f"csv:{csv}"},
        "task": {"name": "toy_task:InsideCircle", "radius": 1.0},
        "model": {"arch": "toy_task:TinyNet", "hidden": 16},
        "train": {"epochs": 30, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.02}},
    }
    run = bigmodel.train(recipe, output=user_package / "runs", progress=False)
    assert run.metrics["test"]["accuracy"] > 0.9, run.metrics
    assert json.loads((run.path / "task.json").read_text())["class"] == "toy_task:InsideCircle"
    assert bigmodel.evaluate(run.path, "test")["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    predictions = bigmodel.load(run.path).predict([{"x1": 0.1, "x2": 0.2}, {"x1": 1.5, "x2": -1.4}])
    assert predictions == [{"inside": True}, {"inside": False}]
    with pytest.raises(RecipeError, match=r"task.radius.*Input should be a valid number"):
        bigmodel.load_recipe(recipe, **{"task.radius": "big"})
    with pytest.raises(RecipeError, match=r"model.arch: cannot load 'toy_task:Nope'"):
        bigmodel.load_recipe(recipe, **{"model.arch": "toy_task:Nope"})
    with pytest.raises(RecipeError, match=r"task.name: cannot import module 'no_such_module'"):
        bigmodel.load_recipe(recipe, **{"task.name": "no_such_module:Task"})


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def test_fit_trains_your_module_on_your_arrays_like_keras(tmp_path):
    digits = load_digits()
    torch.manual_seed(0)
    module = DigitsNet()
    x, y = digits.data / 16.0, digits.target
    run = bigmodel.fit(
        module, x, y, validation=0.15, test=0.15, epochs=15, lr=3e-3, output=tmp_path, progress=False
    )
    assert run.metrics["test"]["accuracy"] > 0.9
    predictor = bigmodel.load(run.path, model=DigitsNet())
    rows = predictor.predict(x[:50])
    assert np.mean([int(r["label"]) == t for r, t in zip(rows, y[:50], strict=True)]) >= 0.9
    with pytest.raises(RunDirError, match="pass it: bigmodel.load"):
        bigmodel.load(run.path)
    with pytest.raises(DataError, match=r"x, y: expected x of shape \(N, \.\.\.\)"):
        bigmodel.fit(module, x, y[:10], output=tmp_path, progress=False)


def test_fit_names_a_module_whose_outputs_do_not_fit_the_labels(tmp_path):
    digits = load_digits()
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # 3 outputs for 10 classes
    with pytest.raises(
        bigmodel.UserError,
        match=r"model: returns \(2, 3\) for inputs of shape \(2, 64\).*needs \(batch, 10\)",
    ):
        bigmodel.fit(wrong, digits.data, digits.target, output=tmp_path, progress=False)
    assert not (tmp_path / "fit").exists()


@pytest.mark.parametrize(
    ("x", "y", "named"),
    [
        (np.array([["a"] * 4] * 30), np.arange(30) % 3, "x: expected numbers"),
        ([[1.0, 2.0], [3.0]], [0, 1], "x: expected numbers"),
        (np.ones((2, 4)), [[0], [1, 2]], "y: expected one label per example"),
    ],
)
def test_fit_refuses_arrays_it_cannot_read(tmp_path, x, y, named):
    with pytest.raises(DataError, match=named):
        bigmodel.fit(torch.nn.Linear(4, 3), x, y, output=tmp_path, progress=False)
