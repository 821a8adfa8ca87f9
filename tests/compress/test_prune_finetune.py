"""How pruning fine-tunes (compress/prune.py): iterative step schedules, distillation from the unpruned
model, the fine-tune's own learning-rate schedule. Tiny models on scikit-learn's real digits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.compress import test_prune as base

import bigmodel.training.loop as loop
from bigmodel.compress import prune
from bigmodel.compress.distill import DistillationTask, kd_loss
from bigmodel.compress.stages import StageContext
from bigmodel.errors import RecipeError

CNN, MLP, build, digits_recipe = base.CNN, base.MLP, base.build, base.digits_recipe
digits, one_thread = base.digits, base.one_thread  # the fixtures: one fitted digits task, one thread


def context(task, splits, spec, folder, n_train=300, **train):
    """A stage context over ``n_train`` training examples (no validation: nothing is evaluated)."""
    few = {"train": splits["train"].select(range(n_train))}
    ctx = StageContext(build(task, spec), task, few, digits_recipe(spec, **train), folder, seed=0,
                       field="compress[0].prune")  # fmt: skip
    ctx.folder.mkdir()
    return ctx


# --- iterative steps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "amount", "steps", "expected"),
    [
        ("linear", 0.6, 3, [0.2, 0.4, 0.6]),
        ("geometric", 0.75, 2, [0.5, 0.75]),  # half of what is left, twice: 1/2, then 1/2 of the half
        ("geometric", 0.875, 3, [0.5, 0.75, 0.875]),
        ("cubic", 0.8, 2, [0.7, 0.8]),  # 0.8 × (1 - (1/2)³)
        ("cubic", 0.5, 1, [0.5]),
    ],
)
def test_step_amounts_follow_the_schedule(schedule, amount, steps, expected):
    shares = prune.step_amounts(amount, steps, schedule)
    assert shares == pytest.approx(expected, abs=1e-12)
    assert shares[-1] == amount


def _record_finetunes(monkeypatch) -> list:
    """Replace the fine-tune by a recorder of (folder, the model as it was handed over)."""
    calls = []

    def record(model, ctx, options, folder_name, masks, teacher):
        widths = prune._widths(model) if not masks else None
        calls.append((folder_name, widths, prune.sparsity(model)["global"], teacher))

    monkeypatch.setattr(prune, "_finetune", record)
    return calls


def test_channel_steps_shrink_to_each_steps_widths(digits, tmp_path, monkeypatch):
    task, splits = digits
    calls = _record_finetunes(monkeypatch)
    ctx = context(task, splits, {**MLP, "hidden_sizes": [40, 20]}, tmp_path / "p")
    out = prune.apply(
        ctx,
        {
            "method": "channels",
            "amount": 0.8,
            "steps": 3,
            "step_schedule": "cubic",
            "finetune": {"epochs": 1},
        },
    )
    # cubic: 0.8 × (1 - (2/3)³) = 0.563, 0.8 × (1 - (1/3)³) = 0.770, 0.8 -> kept 17|9, 9|5, 8|4
    assert [c[0] for c in calls] == ["finetune-1", "finetune-2", "finetune-3"]
    assert [c[1] for c in calls] == [[17, 9], [9, 5], [8, 4]]
    assert all(c[3] is ctx.model for c in calls)  # the teacher is always the unpruned model
    assert out.spec["config"]["hidden_sizes"] == [8, 4]
    assert any("3 cubic steps: 0.563, 0.770, 0.800" in note for note in out.notes)


def test_magnitude_steps_reach_each_steps_sparsity(digits, tmp_path, monkeypatch):
    task, splits = digits
    calls = _record_finetunes(monkeypatch)
    ctx = context(task, splits, CNN, tmp_path / "p")
    out = prune.apply(
        ctx, {"method": "magnitude", "amount": 0.75, "steps": 2, "step_schedule": "geometric",
              "finetune": {"epochs": 1}},
    )  # fmt: skip
    total = out.spec["sparsity"]["weights"]
    assert [c[0] for c in calls] == ["finetune-1", "finetune-2"]
    assert [round(c[2] * total) for c in calls] == [round(0.5 * total), round(0.75 * total)]


# --- distillation from the unpruned model --------------------------------------------------------------


def test_distilled_fine_tune_learns_from_the_frozen_unpruned_model(digits, tmp_path, monkeypatch):
    task, splits = digits
    ctx = context(task, splits, CNN, tmp_path / "p")
    ctx.model.head.requires_grad_(False)  # a flag of the given model that must come back as it was
    teacher_state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    seen = []
    real_fit = loop.fit

    def checking_fit(model, kd_task, train, validation, cfg, **kwargs):
        teacher = ctx.model
        assert isinstance(kd_task, DistillationTask) and kd_task.teacher is teacher
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert model is not teacher and model.head.weight.shape == (10, 4)  # the pruned one trains
        batch = task.collate([task.encode(train[i], None) for i in range(16)])
        model.eval()  # no dropout: both sides see the same network
        student_logits = task.forward(model, batch)
        with torch.no_grad():
            teacher_logits = task.forward(teacher, batch)
        expected = 0.7 * kd_loss(student_logits, teacher_logits, 3.0) + 0.3 * task.loss_from(
            student_logits, batch
        )
        seen.append(expected.item())
        torch.testing.assert_close(kd_task.loss(model, batch), expected, rtol=1e-5, atol=1e-5)
        # the teacher's outputs are in it: another teacher, another loss
        kd_task.teacher = build(task, CNN, seed=5).eval()
        assert not torch.allclose(kd_task.loss(model, batch), expected)
        kd_task.teacher = teacher
        return real_fit(model, kd_task, train, validation, cfg, **kwargs)

    monkeypatch.setattr(loop, "fit", checking_fit)
    out = prune.apply(
        ctx, {"method": "channels", "amount": 0.5, "finetune": {"epochs": 1, "distill": {"temperature": 3.0,
                                                                                        "alpha": 0.7}}},
    )  # fmt: skip
    assert len(seen) == 1
    assert any("distilled from the unpruned model (T 3, alpha 0.7)" in note for note in out.notes)
    # the teacher is handed back as it was given: weights, flags, mode
    assert all(torch.equal(v, teacher_state[k]) for k, v in ctx.model.state_dict().items())
    assert not any(p.requires_grad for p in ctx.model.head.parameters())
    assert all(p.requires_grad for p in ctx.model.backbone.parameters())
    assert not ctx.model.training


def test_distillation_needs_class_scores_named_by_field(digits, tmp_path, monkeypatch):
    task, splits = digits
    ctx = context(task, splits, CNN, tmp_path / "p")
    monkeypatch.setattr(type(task), "forward", lambda self, model, batch: model(batch["x"])[:, 0])
    with pytest.raises(RecipeError, match=r"compress\[0\]\.prune\.finetune\.distill: .*not class logits"):
        prune.apply(ctx, {"method": "channels", "amount": 0.5, "finetune": {"epochs": 1, "distill": {}}})


# --- the fine-tune's own learning-rate schedule --------------------------------------------------------


def _lrs(folder) -> list[float]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [line["lr"] for line in lines if "lr" in line]


def test_the_fine_tune_has_its_own_schedule(digits, tmp_path):
    task, splits = digits
    warm = {"name": "cosine", "warmup_steps": 50}
    # 300 examples in batches of 64: 5 steps; the lr logged after each step is the next step's
    own = context(task, splits, MLP, tmp_path / "own", schedule=warm, log_every=1)
    prune.apply(own, {"method": "channels", "amount": 0.5, "finetune": {
        "epochs": 1, "lr": 0.01, "schedule": {"name": "cosine", "min_lr_ratio": 0.1}}})  # fmt: skip
    cosine = [0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 5))) for s in range(1, 6)]
    assert _lrs(own.folder / "finetune") == pytest.approx(cosine, rel=1e-6)

    recipes = context(task, splits, MLP, tmp_path / "recipe", schedule=warm, log_every=1)
    prune.apply(recipes, {"method": "channels", "amount": 0.5, "finetune": {"epochs": 1, "lr": 0.01}})
    assert _lrs(recipes.folder / "finetune") == pytest.approx([0.01 * (s + 1) / 51 for s in range(1, 6)])


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"step_schedule": "exp"},
            r"compress\[0\]\.prune\.step_schedule: .*'linear', 'geometric' or 'cubic'",
        ),
        (
            {"finetune": {"epochs": 1, "distill": {"alpha": 1.5}}},
            r"compress\[0\]\.prune\.finetune\.distill\.alpha: .*less than or equal to 1.*1\.5",
        ),
        (
            {"finetune": {"epochs": 1, "distill": {"temprature": 2}}},
            r"finetune\.distill\.temprature: unknown option\. Allowed: temperature, alpha.*temperature",
        ),
        (
            {"finetune": {"epochs": 1, "schedule": {"name": "cosin"}}},
            r"compress\[0\]\.prune\.finetune\.schedule\.name: .*cosine",
        ),
        (
            {"finetune": {"epochs": 1, "shedule": "cosine"}},
            r"finetune\.shedule: unknown option\. Allowed: epochs, lr, schedule, distill.*schedule",
        ),
    ],
)
def test_bad_fine_tune_options_name_the_field(options, expected):
    with pytest.raises(RecipeError, match=expected):
        prune.parse_options({"method": "channels", "amount": 0.5, **options}, "compress[0].prune")


def test_schedule_may_be_just_its_name():
    opts = prune.parse_options({"amount": 0.5, "finetune": {"epochs": 2, "schedule": "cosine"}})
    assert opts.finetune.schedule.name == "cosine" and opts.finetune.schedule.warmup_steps == 0
    assert opts.step_schedule == "linear" and opts.finetune.distill is None  # today's behaviour by default
