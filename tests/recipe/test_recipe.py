"""Recipe loading, shorthand, dotted overrides and the wording of every recipe error."""

from __future__ import annotations

import pytest
import yaml

from bigmodel.errors import RecipeError, UserError
from bigmodel.recipe import Recipe, load_recipe, parse_overrides, shipped_recipes, to_yaml

BASE = {"name": "tiny", "data": {"source": "builtin:iris"}, "model": {"arch": "mlp"}}


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(source=BASE, overrides=None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(source, overrides)
    assert isinstance(info.value, UserError)
    return str(info.value)


# ----------------------------------------------------------------------------- loading


def test_yaml_file_loads_with_types_and_defaults(tmp_path):
    path = write(
        tmp_path,
        """
name: my-run
seed: 7
data:
  source: csv:some.csv
  label: y
  split: {validation: 0.1, test: 0.2}
model: {arch: mlp, hidden_sizes: [8, 16]}
train:
  epochs: 3
  batch_size: all
  optimizer: {name: sgd, lr: 1e-2, weight_decay: 1.0e-4}
""",
    )
    r = load_recipe(path)
    assert isinstance(r, Recipe)
    assert (r.name, r.seed, r.data.source, r.data.label) == ("my-run", 7, "csv:some.csv", "y")
    assert (r.data.split.validation, r.data.split.test) == (0.1, 0.2)
    assert r.model.arch == "mlp" and r.model.options() == {"hidden_sizes": [8, 16]}
    assert r.train.batch_size == "all" and r.train.epochs == 3
    # YAML 1.1 reads "1e-2" as a string; the recipe means a float.
    assert r.train.optimizer.lr == pytest.approx(0.01) and isinstance(r.train.optimizer.lr, float)
    assert r.train.optimizer.weight_decay == pytest.approx(1e-4)
    # untouched sections keep their defaults
    assert r.task.name == "classification" and r.train.schedule.name == "constant"
    assert r.data.normalize == "standard"


def test_shorthand_sections(tmp_path):
    path = write(
        tmp_path,
        """
name: s
data: {source: builtin:diabetes}
task: regression
model: {arch: mlp}
train: {optimizer: adamw, schedule: cosine}
""",
    )
    r = load_recipe(path)
    assert r.task.name == "regression" and r.task.options() == {}  # the task validates its options
    assert r.train.optimizer.name == "adamw" and r.train.optimizer.lr == pytest.approx(1e-3)
    assert r.train.schedule.name == "cosine" and r.train.schedule.warmup_steps == 0


def test_shipped_recipe_loads_by_name():
    shipped = shipped_recipes()
    assert shipped, "no shipped recipes found"
    name = sorted(shipped)[0]
    assert load_recipe(name).name == name


# ----------------------------------------------------------------------------- overrides


def test_parse_overrides_coerces_types():
    out = parse_overrides(
        [
            "train.epochs=5",
            "train.optimizer.lr=1e-3",
            "train.optimizer.eps=2.5E-7",
            "data.split.test=0.25",
            "model.channels=[8,16]",
            "train.batch_size=all",
            "train.early_stopping.restore_best=false",
            "flag=true",
            "data.source=csv:a=b.csv",
            "description=",
        ]
    )
    assert out["train.epochs"] == 5 and type(out["train.epochs"]) is int
    assert out["train.optimizer.lr"] == 1e-3 and type(out["train.optimizer.lr"]) is float
    assert out["train.optimizer.eps"] == pytest.approx(2.5e-7)
    assert out["data.split.test"] == 0.25
    assert out["model.channels"] == [8, 16]
    assert out["train.batch_size"] == "all"
    assert out["train.early_stopping.restore_best"] is False and out["flag"] is True
    assert out["data.source"] == "csv:a=b.csv"  # only the first '=' splits
    assert out["description"] == ""


def test_parse_overrides_list_of_floats():
    assert parse_overrides(["x=[1e-3, 2]"]) == {"x": [0.001, 2]}


@pytest.mark.parametrize("item", ["train.epochs", "=5", " train.epochs=5"])
def test_malformed_override(item):
    with pytest.raises(RecipeError, match="expected KEY=VALUE") as info:
        parse_overrides([item])
    assert repr(item) in str(info.value)


def test_dotted_overrides_apply_and_validate():
    overrides = parse_overrides(
        ["train.epochs=4", "train.optimizer.lr=1e-2", "model.hidden_sizes=[8,16]", "train.batch_size=all"]
    )
    r = load_recipe(BASE, overrides)
    assert r.train.epochs == 4
    assert r.train.optimizer.lr == pytest.approx(0.01)
    assert r.model.options()["hidden_sizes"] == [8, 16]
    assert r.train.batch_size == "all"
    # overriding never mutates the caller's dict
    assert "train" not in BASE


def test_nested_dict_override_merges():
    source = {**BASE, "train": {"epochs": 9, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.5}}}
    r = load_recipe(source, {"train": {"epochs": 2, "optimizer": {"weight_decay": 0.1}}})
    assert r.train.epochs == 2
    assert r.train.batch_size == 16  # sibling kept
    assert (r.train.optimizer.name, r.train.optimizer.lr) == ("adam", 0.5)
    assert r.train.optimizer.weight_decay == pytest.approx(0.1)


def test_override_into_shorthand_section():
    source = {**BASE, "train": {"optimizer": "sgd", "schedule": "cosine"}, "task": "regression"}
    r = load_recipe(source, {"train.optimizer.lr": 0.1, "train.schedule": {"warmup_steps": 3}})
    assert (r.train.optimizer.name, r.train.optimizer.lr) == ("sgd", 0.1)
    assert (r.train.schedule.name, r.train.schedule.warmup_steps) == ("cosine", 3)
    r = load_recipe(source, {"task.loss": "mae"})
    assert (r.task.name, r.task.loss) == ("regression", "mae")


def test_override_creates_missing_sections():
    r = load_recipe(BASE, {"train.early_stopping.patience": 2, "train.optimizer.lr": 0.3})
    assert r.train.early_stopping.patience == 2
    assert r.train.optimizer.name == "adamw" and r.train.optimizer.lr == 0.3


def test_override_below_a_scalar_is_refused():
    msg = error_of(BASE, {"train.epochs": 5, "train.epochs.value": 3})
    assert "train.epochs" in msg and "not a section" in msg


def test_recipe_object_with_overrides():
    r = load_recipe(BASE)
    r2 = load_recipe(r, {"seed": 3})
    assert r2.seed == 3 and r.seed == 0


# ----------------------------------------------------------------------------- errors


def test_unknown_key_with_did_you_mean():
    msg = error_of(BASE, {"train.optimzer": "adam"})
    assert "train.optimzer" in msg and "unknown key" in msg
    assert "optimizer" in msg.split("Allowed here:")[1]
    assert "Did you mean 'optimizer'?" in msg


@pytest.mark.parametrize("key", ["int", "[", "", "list[str]"])
def test_unknown_key_that_looks_like_a_type_tag_is_still_named(key):
    msg = error_of({**BASE, "train": {key: 1}})
    assert f"unknown key {key!r}" in msg and "Allowed here: device" in msg


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ({"seed": True}, "seed: true/false is not allowed"),
        ({"data.split.validation": False}, "data.split.validation: true/false"),
        ({"train.group_by_length": 0}, "train.group_by_length: expected true or false"),
        ({"train.optimizer.lr": float("inf")}, "train.optimizer.lr: Input should be a finite number"),
        (
            {"model.hidden_sizes": float("inf")},
            "model: hidden_sizes: inf is not allowed (numbers must be finite)",
        ),
        ({"model.hidden_sizes": [8, float("nan")]}, "model: hidden_sizes: nan is not allowed"),
        ({"task.extra": {"a": float("-inf")}}, "task: extra.a: -inf is not allowed"),
        ({"seed": -1}, "seed:"),
        ({"seed": 2**64}, "seed:"),
        ({"train.epochs": 10**30}, "train.epochs: number too large"),
        ({"name": "a" * 101}, "name: String should have at most 100 characters"),
    ],
)
def test_flags_numbers_and_sizes_are_not_coerced(override, says):
    assert says in error_of(BASE, override)


def test_unknown_nested_key():
    msg = error_of(BASE, {"train.optimizer.lrr": 0.1})
    assert "train.optimizer.lrr" in msg and "Did you mean 'lr'?" in msg
    assert "weight_decay" in msg  # the allowed keys of that section


def test_unknown_top_level_key():
    msg = error_of({**BASE, "trian": {"epochs": 2}})
    assert "trian" in msg and "Did you mean 'train'?" in msg


def test_wrong_type_names_field_and_value():
    msg = error_of(BASE, {"train.epochs": "ten"})
    assert "train.epochs" in msg and "'ten'" in msg and "integer" in msg


def test_out_of_range_names_field_and_value():
    msg = error_of(BASE, {"train.epochs": 0})
    assert "train.epochs" in msg and "(got 0)" in msg and "greater than or equal to 1" in msg
    msg = error_of(BASE, {"train.optimizer.lr": -0.1})
    assert "train.optimizer.lr" in msg and "-0.1" in msg
    msg = error_of(BASE, {"train.batch_size": 0})
    assert "train.batch_size" in msg and "'all'" in msg


def test_missing_required_field():
    msg = error_of({"name": "x", "model": {"arch": "mlp"}})
    assert "data" in msg and "missing" in msg


@pytest.mark.parametrize(
    ("override", "field", "bad", "allowed", "suggestion"),
    [
        ({"train.optimizer": "adamx"}, "train.optimizer.name", "'adamx'", "rmsprop", "adam"),
        ({"train.schedule": "cosin"}, "train.schedule.name", "'cosin'", "linear", "cosine"),
    ],
)
def test_unknown_names(override, field, bad, allowed, suggestion):
    msg = error_of(BASE, override)
    assert field in msg and bad in msg and allowed in msg
    assert f"Did you mean '{suggestion}'?" in msg


@pytest.mark.parametrize(
    ("override", "field", "bad", "allowed", "suggestion"),
    [
        ({"task": "regresion"}, "task.name", "'regresion'", "classification", "regression"),
        ({"task": {"name": "regression", "loss": "maee"}}, "task.loss", "'maee'", "mse", "mae"),
        ({"task": {"name": "regression", "los": "mae"}}, "task.los", "'los'", "loss", "loss"),
    ],
)
def test_unknown_task_names_and_options(override, field, bad, allowed, suggestion):
    """Task names and options are checked when the pipeline builds the task (recipe/ has no torch)."""
    import bigmodel

    with pytest.raises(RecipeError) as info:
        bigmodel.load_recipe(BASE, **override)
    msg = str(info.value)
    assert field in msg and bad in msg and allowed in msg
    assert f"Did you mean '{suggestion}'?" in msg


def test_bad_source_scheme():
    msg = error_of(BASE, {"data.source": "ftp:data.csv"})
    assert "data.source" in msg and "'ftp:data.csv'" in msg
    assert "csv" in msg and "parquet" in msg and "builtin" in msg
    msg = error_of(BASE, {"data.source": "data.csv"})  # no scheme at all
    assert "data.source" in msg and "SCHEME:WHAT" in msg


def test_unknown_builtin():
    msg = error_of(BASE, {"data.source": "builtin:digit"})
    assert "data.source" in msg and "'digit'" in msg and "digits" in msg


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.7, 0.4)])
def test_split_fractions_must_leave_training_data(val, test):
    msg = error_of(BASE, {"data.split.validation": val, "data.split.test": test})
    assert "data.split" in msg and str(val) in msg and str(test) in msg and "< 1" in msg


def test_split_fraction_sum_just_below_one_is_fine():
    r = load_recipe(BASE, {"data.split.validation": 0.5, "data.split.test": 0.49})
    assert r.data.split.test == 0.49


def test_non_mapping_yaml(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    msg = error_of(path)
    assert str(path) in msg and "mapping" in msg and "list" in msg


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "name: x\ndata: {source: [unclosed\n")
    msg = error_of(path)
    assert str(path) in msg and "not valid YAML" in msg


def test_missing_recipe_file_lists_shipped_recipes(tmp_path):
    shipped = sorted(shipped_recipes())
    msg = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg
    assert all(name in msg for name in shipped)
    near = shipped[0][:-1]  # one letter short of a shipped name
    assert f"Did you mean '{shipped[0]}'?" in error_of(near)


def test_error_in_file_names_the_file(tmp_path):
    path = write(tmp_path, yaml.safe_dump({**BASE, "seed": "abc"}))
    msg = error_of(path)
    assert str(path) in msg and "seed" in msg and "'abc'" in msg


# ----------------------------------------------------------------------------- round trip


def test_to_yaml_round_trips(tmp_path):
    source = {
        **BASE,
        "description": "round: trip # not a comment",
        "data": {"source": "csv:x.csv", "label": "y", "features": ["a", "b"], "normalize": "global"},
        "task": {"name": "classification", "label_smoothing": 0.1},
        "model": {"arch": "cnn", "channels": [8, 16], "dropout": 0.25},
        "train": {
            "batch_size": "all",
            "optimizer": {"name": "adam", "lr": 3e-4, "betas": [0.8, 0.95], "eps": 1e-7},
            "schedule": {"name": "linear", "warmup_steps": 5, "min_lr_ratio": 0.1},
            "early_stopping": {"metric": "accuracy", "patience": 2},
            "grad_clip": 1.0,
        },
    }
    r = load_recipe(source)
    text = to_yaml(r)
    again = load_recipe(write(tmp_path, text))
    assert again == r
    assert again.train.optimizer.betas == (0.8, 0.95)
    assert again.train.optimizer.eps == 1e-7
    assert to_yaml(again) == text
