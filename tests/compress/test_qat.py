"""Quantization-aware training (compress/quantize.py, ``quantize: {method: qat_int8, finetune: ...}``):
fake quantization on static_int8's islands, fine-tuned with the training loop, converted to the same
int8 modules; end to end through a recipe, against post-training static int8, and options errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import bigmodel
from bigmodel.compress import quantize as Q
from bigmodel.compress.stages import StageContext, parse_stages
from bigmodel.data.sources import open_splits
from bigmodel.errors import RecipeError
from bigmodel.hub.files import load_tensors
from bigmodel.models.registry import get_family
from bigmodel.recipe import load_recipe
from bigmodel.rundir import open_run
from bigmodel.tasks import create_task
from bigmodel.training.loop import fit
from bigmodel.training.validate import evaluate_records

CNN = {"arch": "cnn", "channels": [6, 10]}


def digits_recipe():
    return load_recipe(
        {
            "name": "digits-qat",
            "seed": 0,
            "data": {
                "source": "builtin:digits",
                "split": {"validation": 0.15, "test": 0.15},
                "normalize": "global",
            },
            "task": "classification",
            "model": CNN,
            "train": {
                "epochs": 12,
                "batch_size": 32,
                "device": "cpu",
                "optimizer": {"name": "adamw", "lr": 3e-3},
            },
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CNN trained on digits for a few epochs (seconds): the model both methods quantize."""
    recipe = digits_recipe()
    task = create_task(recipe)
    splits, _ = open_splits(recipe.data, recipe.seed, task.strata)
    splits = {name: task.clean(records, name) for name, records in splits.items()}
    task.fit(splits["train"])
    torch.manual_seed(0)
    model = task.build_model(get_family("cnn"), {"channels": CNN["channels"]}, None)
    fit(model, task, splits["train"], None, recipe.train, run_dir=tmp_path_factory.mktemp("fp32"), seed=0,
        show_progress=False)  # fmt: skip
    return model.cpu().eval(), task, splits, recipe


def context(trained, tmp_path, index: int = 0) -> StageContext:
    model, task, splits, recipe = trained
    folder = tmp_path / f"{index + 1}-quantize"
    folder.mkdir(parents=True)
    return StageContext(
        copy.deepcopy(model), task, splits, recipe, folder, seed=0, field=f"compress[{index}].quantize"
    )


def accuracy(model, task, records) -> float:
    return float(evaluate_records(model, task, records)["accuracy"])


def test_qat_beats_or_matches_post_training_int8_on_the_same_model(trained, tmp_path):
    """PTQ calibrated on one batch of 2 images vs QAT with one epoch of fine-tuning, same trained CNN.
    Measured here (12-epoch fp32 CNN, test split of 269): fp32 0.944, static_int8 0.941, qat_int8
    0.970. Honest reading: QAT's epoch is also one more epoch of training, so part of its gain over
    fp32 is training, not quantization; what is asserted is that it loses nothing against PTQ."""
    model, task, splits, _ = trained
    fp32 = accuracy(model, task, splits["test"])
    ptq = Q.apply(context(trained, tmp_path / "ptq"), {"method": "static_int8", "calibration_batches": 1,
                                                        "calibration_batch_size": 2})  # fmt: skip
    qat = Q.apply(
        context(trained, tmp_path / "qat"), {"method": "qat_int8", "finetune": {"epochs": 1, "lr": 1e-3}}
    )
    acc_ptq, acc_qat = accuracy(ptq.model, task, splits["test"]), accuracy(qat.model, task, splits["test"])
    assert acc_ptq < fp32 + 0.005  # post-training int8 gains nothing
    assert acc_qat >= acc_ptq - 0.005  # QAT at least as good as PTQ (one example of slack)
    assert acc_qat >= fp32 - 0.01
    # Both convert to the same int8 module kinds.
    kinds = [{k for m in out.model.modules() if (k := Q._quantized_kind(m))} for out in (ptq, qat)]
    assert kinds[0] == kinds[1] and "intrinsic.quantized.ConvReLU2d" in kinds[1]


def test_the_stage_fine_tunes_converts_and_load_reproduces_it(trained, tmp_path):
    ctx = context(trained, tmp_path, index=2)
    out = Q.apply(ctx, {"method": "qat_int8", "finetune": {"epochs": 1}})
    transform = out.spec["transform"]["quantize"]
    assert transform["method"] == "qat_int8" and len(transform["fused"]) == 2
    assert (ctx.folder / "finetune" / "metrics.jsonl").is_file()  # trained with the loop, in the stage folder
    assert not (ctx.folder / "finetune" / "train_state").exists()  # the optimizer state is not kept
    assert any("quantization-aware training: 1 epochs at lr 0.003" in n for n in out.notes)
    names = {type(m).__module__ for m in out.model.modules()}
    assert not any(".qat" in n or "fake_quantize" in n for n in names)  # no fake quantization left
    assert "Conv2d" not in {type(m).__name__ for m in out.model.modules()}
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    rebuilt = Q.load(out.spec, st_load(st_save(out.tensors)), ctx.task)
    batch = ctx.task.collate([ctx.task.encode(ctx.splits["test"][i], None) for i in range(40)])
    with torch.no_grad():
        assert torch.equal(ctx.task.forward(rebuilt, batch), ctx.task.forward(out.model, batch))
    assert trained[0].training is False and any(
        type(m).__name__ == "BatchNorm2d" for m in trained[0].modules()
    )


def test_a_recipe_qat_stage_end_to_end(tmp_path, monkeypatch):
    """The runner's path: options from the recipe, the fine-tune, model.json + model.safetensors
    written, rebuilt from those files with the run's task, measured, accept_if applied."""
    from bigmodel.compress import measure

    monkeypatch.setattr(measure, "ROUNDS", 1)  # timings are exercised, not judged, here
    monkeypatch.setattr(measure, "SECONDS", 0.01)
    compress = [{"quantize": {"method": "qat_int8", "finetune": {"epochs": 1, "lr": 1e-3},
                              "accept_if": {"max_metric_drop": 100.0}}}]  # fmt: skip
    run = bigmodel.train("digits-cnn", output=tmp_path, progress=False, model={"channels": [6, 10]},
                         train={"epochs": 2, "max_steps": 30}, compress=compress)  # fmt: skip
    trained_row, row = json.loads((run.path / "compress" / "report.json").read_text())["stages"]
    folder = run.path / "compress" / "1-quantize"
    assert {"model.json", "model.safetensors", "metrics.json", "finetune"} <= {
        p.name for p in folder.iterdir()
    }
    assert row["accepted"] and row["size_bytes"] < trained_row["size_bytes"]  # tiny: headers weigh
    spec = json.loads((folder / "model.json").read_text())
    assert spec["transform"]["quantize"]["method"] == "qat_int8"
    _, task, _ = open_run(run.path)
    rebuilt = Q.load(spec, load_tensors(folder / "model.safetensors"), task)
    assert "intrinsic.quantized.ConvReLU2d" in {k for m in rebuilt.modules() if (k := Q._quantized_kind(m))}
    held_out = task.clean(open_splits(run.recipe.data, run.recipe.seed, task.strata)[0]["test"], "test")
    assert abs(accuracy(rebuilt, task, held_out) - row["metric"]) < 1e-9


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"method": "qat_int8"},
            r"compress\[0\]\.quantize\.finetune: qat_int8 trains with fake quantization",
        ),
        (
            {"method": "qat_int8", "finetune": {"epochs": 0}},
            r"compress\[0\]\.quantize\.finetune\.epochs: .*greater",
        ),
        (
            {"method": "qat_int8", "finetune": {"epochs": 1, "lr": -1}},
            r"compress\[0\]\.quantize\.finetune\.lr: ",
        ),
        (
            {"method": "qat_int8", "finetune": {"epochs": 1, "lrr": 1}},
            r"compress\[0\]\.quantize\.finetune\.lrr: unknown option\. Allowed: epochs, lr.*lr",
        ),
        (
            {"method": "static_int8", "finetune": {"epochs": 1}},
            r"compress\[0\]\.quantize\.finetune: only qat_int8",
        ),
        ({"method": "qat"}, r"compress\[0\]\.quantize\.method: .*'qat_int8'.*qat"),
    ],
)
def test_bad_options_name_the_field(trained, tmp_path, options, expected):
    with pytest.raises(RecipeError, match=expected):
        Q.apply(context(trained, tmp_path), options)
    if "lrr" not in str(options):  # the recipe check (before training) names the same field
        with pytest.raises(RecipeError, match=expected.split(":")[0]):
            parse_stages([{"quantize": options}])
