"""Pruning (compress/prune.py) on tiny cnn and mlp task models over scikit-learn's real digits."""

from __future__ import annotations

import copy

import pytest
import torch

from bigmodel.compress import prune
from bigmodel.compress.stages import StageContext
from bigmodel.data.sources import open_splits
from bigmodel.errors import RecipeError
from bigmodel.models.registry import get_family
from bigmodel.recipe import load_recipe
from bigmodel.tasks import create_task
from bigmodel.training.loop import fit
from bigmodel.training.validate import evaluate_records

CNN = {"arch": "cnn", "channels": [5, 7], "convs_per_block": 2, "dropout": 0.1}
MLP = {"arch": "mlp", "hidden_sizes": [13, 6], "norm": "batch"}


def digits_recipe(model: dict, **train):
    return load_recipe(
        {
            "name": "digits-prune",
            "seed": 0,
            "data": {
                "source": "builtin:digits",
                "split": {"validation": 0.15, "test": 0.15},
                "normalize": "global",
            },
            "task": "classification",
            "model": model,
            "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "optimizer": {"lr": 3e-3}, **train},
        }
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread than on two threads of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """The fitted classification task and its splits (the task fits features, not the model)."""
    recipe = digits_recipe(CNN)
    task = create_task(recipe)
    splits, _ = open_splits(recipe.data, recipe.seed, task.strata)
    splits = {name: task.clean(records, name) for name, records in splits.items()}
    task.fit(splits["train"])
    return task, splits


def build(task, model: dict, seed: int = 0) -> torch.nn.Module:
    options = {k: v for k, v in model.items() if k != "arch"}
    torch.manual_seed(seed)
    return task.build_model(get_family(model["arch"]), options, None).eval()


def batch_of(task, records, n: int = 40) -> torch.Tensor:
    return task.collate([task.encode(records[i], None) for i in range(n)])["x"]


def randomise_norms(model: torch.nn.Module, seed: int = 1) -> None:
    """BatchNorm statistics and affine parameters as after training, so the BN-aware ranking and the
    slicing of running statistics are exercised (fresh ones are all 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


# --- magnitude -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [CNN, MLP], ids=["cnn", "mlp"])
def test_magnitude_pruning_zeroes_the_globally_smallest_weights(digits, spec):
    task, _ = digits
    model = build(task, spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune.magnitude_prune(model, 0.37)

    weights = {p: m.weight for p, m in model.named_modules() if isinstance(m, prune.PRUNABLE)}
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert abs(zeros - 0.37 * total) <= 1
    assert report["zeros"] == zeros and report["weights"] == total
    assert report["global"] == pytest.approx(zeros / total)
    for path, w in weights.items():
        assert report["layers"][path] == pytest.approx(float((w == 0).float().mean()))
    # global, not per layer: every weight removed was no larger than every weight kept
    old = torch.cat([before[f"{p}.weight"].abs().flatten() for p in weights])
    new = torch.cat([w.flatten() for w in weights.values()])
    assert old[new == 0].max() <= old[new != 0].min()
    assert torch.equal(new[new != 0], torch.cat([before[f"{p}.weight"].flatten() for p in weights])[new != 0])
    # baked in: the same keys, no torch.nn.utils.prune re-parametrisation or hooks left behind
    assert set(model.state_dict()) == set(before)
    assert not any(m._forward_pre_hooks for m in model.modules())
    # biases and norms untouched
    for key, value in model.state_dict().items():
        if not any(key == f"{p}.weight" for p in weights):
            assert torch.equal(value, before[key]), key


def test_magnitude_fine_tune_keeps_the_zeros(digits, tmp_path):
    task, splits = digits
    model = build(task, CNN)
    few = {"train": splits["train"].select(range(300))}  # no validation: fine-tune without evaluating
    ctx = StageContext(
        model, task, few, digits_recipe(CNN), tmp_path / "2-prune", seed=0, field="compress[1].prune"
    )
    ctx.folder.mkdir()
    out = prune.apply(ctx, {"method": "magnitude", "amount": 0.6, "steps": 2, "finetune": {"epochs": 1}})
    total = out.spec["sparsity"]["weights"]
    assert abs(out.spec["sparsity"]["zeros"] - 0.6 * total) <= 1
    new = torch.cat([m.weight.flatten() for m in out.model.modules() if isinstance(m, prune.PRUNABLE)])
    assert abs(int((new == 0).sum()) - 0.6 * total) <= 1
    # it did train (the kept weights moved) and the input model is untouched
    assert not torch.equal(
        out.model.head.weight[out.model.head.weight != 0], model.head.weight[out.model.head.weight != 0]
    )
    assert not any((m.weight == 0).any() for m in model.modules() if isinstance(m, prune.PRUNABLE))
    assert (ctx.folder / "finetune-1" / "metrics.jsonl").is_file()
    assert not (ctx.folder / "finetune-2" / "train_state").exists()
    rebuilt = prune.load(out.spec, out.model.state_dict(), task)
    x = batch_of(task, splits["test"])
    assert torch.equal(rebuilt(x), out.model(x))


# --- channels ------------------------------------------------------------------------------------------


def test_channel_pruning_shrinks_cnn_layers_bn_and_head(digits):
    task, _ = digits
    model = build(task, CNN)
    small, config = prune.prune_channels(model, 0.5)
    assert config["channels"] == [3, 4]  # 5 -> 2.5 -> 3 (half up), 7 -> 3.5 -> 4
    assert config["convs_per_block"] == 2 and config["num_outputs"] == 0
    blocks = small.backbone.blocks
    assert blocks[0][0].conv.weight.shape == (3, 1, 3, 3)
    assert blocks[0][1].conv.weight.shape == (3, 3, 3, 3)
    assert blocks[1][0].conv.weight.shape == (4, 3, 3, 3)
    assert blocks[1][1].conv.weight.shape == (4, 4, 3, 3)
    assert blocks[1][1].norm.running_mean.shape == (4,) and blocks[1][1].norm.num_features == 4
    assert small.head.weight.shape == (10, 4)
    assert model.head.weight.shape == (10, 7)  # the input model is left as it was


def test_channel_pruning_shrinks_mlp_neurons(digits):
    task, _ = digits
    model = build(task, MLP)
    model.backbone.requires_grad_(False)  # a frozen backbone stays frozen
    small, config = prune.prune_channels(model, 0.5)
    assert not any(p.requires_grad for p in small.backbone.parameters())
    assert all(p.requires_grad for p in small.head.parameters())
    assert config["hidden_sizes"] == [7, 3]
    assert small.backbone.blocks[0].fc.weight.shape == (7, 64)
    assert small.backbone.blocks[1].fc.weight.shape == (3, 7)
    assert small.backbone.blocks[1].norm.running_var.shape == (3,)
    assert small.head.weight.shape == (10, 3)


@pytest.mark.parametrize("spec", [CNN, MLP, {**MLP, "norm": "none"}], ids=["cnn", "mlp-bn", "mlp"])
def test_the_rebuilt_model_computes_what_the_pruned_one_does(digits, spec):
    task, splits = digits
    model = build(task, spec)
    randomise_norms(model)
    small, config = prune.prune_channels(model, 0.4)
    family = spec["arch"]
    rebuilt = prune.load({"family": family, "config": config}, small.state_dict(), task)
    x = batch_of(task, splits["test"])
    assert torch.equal(rebuilt(x), small(x))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def _zero_channels(model, amount: float, seed: int = 3) -> None:
    """Make ``amount`` of every prunable layer's output channels (random ones, not the first) produce
    exactly zero: filter row, bias and the BatchNorm's gamma and beta."""
    g = torch.Generator().manual_seed(seed)
    _, structure, backbone, _, _ = prune._structure(model)
    with torch.no_grad():
        for group in structure.groups(backbone):
            for layer in group:
                producer, norm = backbone.get_submodule(layer.producer), backbone.get_submodule(layer.norm)
                width = producer.weight.shape[0]
                dead = torch.randperm(width, generator=g)[: width - prune.kept_count(width, amount)]
                producer.weight[dead] = 0.0
                if producer.bias is not None:
                    producer.bias[dead] = 0.0
                if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                    norm.weight[dead] = 0.0
                    norm.bias[dead] = 0.0


@pytest.mark.parametrize(
    ("spec", "atol"),
    # a matmul over fewer (zero) terms may round in another order: 1 ulp; the convolutions match bit for bit
    [(CNN, 0.0), (MLP, 1e-6), ({**MLP, "norm": "none"}, 1e-6)],
    ids=["cnn", "mlp-bn", "mlp"],
)
def test_removing_channels_that_were_already_zero_changes_no_output(digits, spec, atol):
    task, splits = digits
    model = build(task, spec)
    randomise_norms(model)
    _zero_channels(model, 0.5)
    small, _ = prune.prune_channels(model, 0.5)
    x = batch_of(task, splits["test"])
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=atol)


def test_fine_tuning_recovers_accuracy_after_channel_pruning(digits, tmp_path):
    task, splits = digits
    spec = {"arch": "cnn", "channels": [16, 32]}
    recipe = digits_recipe(spec, epochs=4)
    model = build(task, spec)
    fit(model, task, splits["train"], None, recipe.train, tmp_path / "train", seed=0, show_progress=False)
    model.eval()

    def accuracy(m):
        return evaluate_records(m, task, splits["test"])["accuracy"]

    base = accuracy(model)
    assert base > 0.9
    folders = iter(["1-prune", "2-prune"])

    def ctx():
        folder = tmp_path / next(folders)
        folder.mkdir()
        return StageContext(model, task, splits, recipe, folder, seed=0)

    raw = prune.apply(ctx(), {"method": "channels", "amount": 0.5})
    tuned = prune.apply(ctx(), {"method": "channels", "amount": 0.5, "finetune": {"epochs": 2, "lr": 1e-2}})
    assert raw.spec["config"]["channels"] == tuned.spec["config"]["channels"] == [8, 16]
    assert accuracy(raw.model) < base - 0.3  # half the channels gone hurt
    assert accuracy(tuned.model) > base - 0.03  # and fine-tuning brings it back
    rebuilt = prune.load(tuned.spec, tuned.model.state_dict(), task)
    x = batch_of(task, splits["test"])
    assert torch.equal(rebuilt(x), tuned.model(x))


def test_batchnorm_statistics_are_re_measured_after_pruning(digits):
    task, splits = digits
    model = build(task, MLP)
    randomise_norms(model)
    assert prune.recalibrate_norms(model, task, splits["train"], 300, batch_size=100)
    x = batch_of(task, splits["train"], 300)
    with torch.no_grad():
        first = model.backbone.blocks[0].fc(x.flatten(1)).view(3, 100, 13)  # what the first BN reads
    norm = model.backbone.blocks[0].norm
    # the plain average of the three batches' statistics (not a momentum-weighted one)
    torch.testing.assert_close(norm.running_mean, first.mean(1).mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(norm.running_var, first.var(1).mean(0), rtol=1e-4, atol=1e-5)
    assert norm.momentum == 0.1 and not model.training


def test_iterative_channel_pruning_reaches_the_asked_widths(digits, tmp_path):
    task, splits = digits
    few = {"train": splits["train"].select(range(300))}
    ctx = StageContext(
        build(task, MLP),
        task,
        few,
        digits_recipe(MLP),
        tmp_path / "1-prune",
        seed=0,
        field="compress[0].prune",
    )
    ctx.folder.mkdir()
    out = prune.apply(
        ctx, {"method": "channels", "amount": 0.5, "steps": 3, "finetune": {"epochs": 1, "lr": 1e-3}}
    )
    assert out.spec == {"family": "mlp", "config": {**task.model_config(ctx.model), "hidden_sizes": [7, 3]}}
    assert sorted(p.name for p in ctx.folder.iterdir()) == ["finetune-1", "finetune-2", "finetune-3"]


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"amount": 1.0}, r"compress\[0\]\.prune\.amount: .*less than 1.*got 1\.0"),
        ({"amount": 0}, r"compress\[0\]\.prune\.amount: .*greater than 0"),
        ({"amout": 0.5}, r"compress\[0\]\.prune\.amout: unknown option.*amount"),
        (
            {"amount": 0.5, "method": "heads"},
            r"compress\[0\]\.prune\.method: .*'magnitude' or 'channels'.*heads",
        ),
        ({"amount": 0.5, "steps": 0}, r"compress\[0\]\.prune\.steps: .*greater than or equal to 1"),
        ({"amount": 0.5, "finetune": {"epochs": 0}}, r"compress\[0\]\.prune\.finetune\.epochs: "),
        (
            {"amount": 0.5, "finetune": {"epochs": 1, "lrr": 1}},
            r"compress\[0\]\.prune\.finetune\.lrr: .*Allowed: epochs, lr, schedule, distill",
        ),
    ],
)
def test_bad_options_name_the_field(digits, tmp_path, options, expected):
    task, splits = digits
    ctx = StageContext(
        build(task, MLP),
        task,
        splits,
        digits_recipe(MLP),
        tmp_path / "1-prune",
        seed=0,
        field="compress[0].prune",
    )
    with pytest.raises(RecipeError, match=expected):
        prune.apply(ctx, options)


def test_channel_pruning_refuses_other_families_by_name(digits, tmp_path):
    task, splits = digits
    spec = {"arch": "resnet", "layers": [1], "widths": [4], "stem": "small", "stem_width": 4}
    ctx = StageContext(
        build(task, spec),
        task,
        splits,
        digits_recipe(spec),
        tmp_path / "3-prune",
        seed=0,
        field="compress[2].prune",
    )
    with pytest.raises(RecipeError, match=r"compress\[2\]\.prune\.method: .*'resnet' family.*cnn, mlp"):
        prune.apply(ctx, {"method": "channels", "amount": 0.5})
    # magnitude pruning works on it
    out = prune.apply(ctx, {"method": "magnitude", "amount": 0.5})
    assert out.spec["family"] == "resnet" and abs(out.spec["sparsity"]["global"] - 0.5) < 0.01


def test_a_copy_of_the_model_is_pruned_not_the_input(digits):
    task, _ = digits
    model = build(task, CNN)
    state = copy.deepcopy(model.state_dict())
    prune.prune_channels(model, 0.5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
