"""How data flows through a run: Hugging Face datasets as sources, workers that change nothing,
evaluation that streams with memory bounded by one batch, device placement."""

from __future__ import annotations

import csv
import resource

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import bigmodel
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import RecipeError
from bigmodel.tasks import Metric, Task
from bigmodel.training.validate import evaluate_records
from helpers import text_rows, write_wine_csv


def test_hf_dataset_folder_through_load_dataset_with_its_own_splits(tmp_path):
    """``hf:NAME`` goes through ``datasets.load_dataset`` (here a local folder of CSV files, as the Hub
    would give) and keeps the dataset's own train/test splits; validation is carved from train."""
    pytest.importorskip("datasets")
    folder = tmp_path / "topics"
    folder.mkdir()
    for name, seed, n in (("train", 0, 160), ("test", 1, 40)):
        with open(folder / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "topic"])
            writer.writerows(text_rows(n, seed))
    recipe = {
        "name": "hf-topics",
        "data": {
            "source": f"hf:{folder}",
            "text": "sentence",
            "label": "topic",
            "split": {"validation": 0.1},
        },
        "task": {
            "name": "text_classification",
            "tokenizer": {"kind": "wordpiece", "vocab_size": 120, "min_frequency": 1},
        },
        "model": {"arch": "rnn", "embed_dim": 16, "hidden_size": 16},
        "train": {"epochs": 3, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-2}},
    }
    run = bigmodel.train(recipe, output=tmp_path / "runs", progress=False)
    sizes = bigmodel.open_run(run.path)[2]["split_sizes"]
    assert sizes == {"train": 144, "validation": 16, "test": 40}  # the dataset's test split, untouched
    assert run.metrics["test"]["accuracy"] >= 0.9


def test_workers_change_nothing(tmp_path):
    """0 or 2 DataLoader workers: the same examples, the same augmentation draws, the same weights."""
    wine = write_wine_csv(tmp_path / "wine.csv")
    weights = []
    for workers in (0, 2):
        run = bigmodel.train(
            "tabular-csv",
            output=tmp_path / f"w{workers}",
            progress=False,
            **{"data.source": f"csv:{wine}", "train.max_steps": 12, "train.num_workers": workers},
        )
        weights.append(load_file(run.path / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


class WideOutputs(Task):
    """Every example yields 1 MiB of outputs, as a language model's logits would."""

    name = "wide"
    metric_names = ("mean",)

    def encode(self, example, rng):
        return {"x": torch.tensor([float(example["x"])])}

    def collate(self, items):
        return {"x": torch.stack([i["x"] for i in items]), "num_items": len(items)}

    def forward(self, model, batch):
        return model(batch["x"])

    def metric(self):
        return SumMetric()


class SumMetric(Metric):
    def update(self, outputs, batch):
        self.add("total", outputs.sum())
        self.add("count", torch.tensor(outputs.numel()))

    def compute(self):
        return {"mean": float(self.sums["total"] / self.sums["count"])}


class Broadcast(nn.Module):
    def forward(self, x):  # (B, 1) -> (B, 512, 512): 1 MiB of float32 per example
        return x[:, :, None].expand(-1, 512, 512).clone()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_evaluation_memory_stays_flat_when_the_split_grows_ten_times():
    task = WideOutputs(Task.Options(), {})
    model = Broadcast()
    small = ColumnRecords({"x": [1.0] * 200}, "small")
    large = ColumnRecords({"x": [1.0] * 2000}, "large")
    assert evaluate_records(model, task, small, batch_size=16)["mean"] == 1.0
    before = _peak_rss_mib()
    assert evaluate_records(model, task, large, batch_size=16)["mean"] == 1.0
    growth = _peak_rss_mib() - before
    # Concatenating the outputs would need ~2,000 MiB more; streaming needs about one batch (16 MiB).
    assert growth < 100, f"peak memory grew by {growth:.0f} MiB for a 10x larger split"


def test_device_placement():
    recipe = bigmodel.load_recipe("digits-mlp", **{"train.device": "cpu"})
    assert recipe.train.device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match=r"train.device: 'cuda', but this PyTorch sees no CUDA device"):
            bigmodel.train("digits-mlp", progress=False, **{"train.device": "cuda"})
