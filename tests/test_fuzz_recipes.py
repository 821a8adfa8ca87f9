"""Fuzzing recipes: random YAML trees, damaged YAML text and random dotted overrides.

Every generated case either loads or raises a :class:`RecipeError` that names the field; a recipe
that loads keeps what was asked (override values land where they were aimed) and survives its own
``recipe.yaml`` round trip. Never another exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import bigmodel
from bigmodel.errors import RecipeError, UserError
from bigmodel.recipe import Recipe, load_recipe, parse_overrides, to_yaml

# Bounded for CI; BIGMODEL_FUZZ_EXAMPLES=5000 for a longer hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("BIGMODEL_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BASE = {
    "name": "fuzz",
    "seed": 3,
    "data": {"source": "builtin:iris", "label": "label", "split": {"validation": 0.2, "test": 0.2}},
    "task": "classification",
    "model": {"arch": "mlp", "hidden_sizes": [7]},
    "train": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.01}},
}

# Every dotted path of the schema's own sections (from the model classes, so new fields are fuzzed too).
SECTIONS = {
    "": Recipe,
    "data": Recipe.model_fields["data"].annotation,
    "data.split": Recipe.model_fields["data"].annotation.model_fields["split"].annotation,
    "train": Recipe.model_fields["train"].annotation,
}
SECTIONS["train.optimizer"] = SECTIONS["train"].model_fields["optimizer"].annotation
SECTIONS["train.schedule"] = SECTIONS["train"].model_fields["schedule"].annotation
REAL_PATHS = sorted(
    f"{prefix}.{name}".lstrip(".") for prefix, model in SECTIONS.items() for name in model.model_fields
) + ["train.early_stopping.metric", "train.early_stopping.patience", "task.name", "model.arch",
     "model.hidden_sizes", "model.dropout", "model.norm", "model.pretrained"]  # fmt: skip


def near(word: str) -> st.SearchStrategy[str]:
    """A typo of ``word``: a character dropped, doubled, swapped or upper-cased."""
    n = len(word)
    return st.integers(0, max(n - 1, 0)).flatmap(
        lambda i: st.sampled_from(
            [
                word[:i] + word[i + 1 :],
                word[:i] + word[i] * 2 + word[i + 1 :],
                word.upper(),
                word[:i] + word[i + 1 : i + 2] + word[i : i + 1] + word[i + 2 :],
                word + "s",
            ]  # fmt: skip
        )
    )


names = st.sampled_from(sorted({p.split(".")[-1] for p in REAL_PATHS}))
keys = st.one_of(names, names.flatmap(near), st.text(max_size=8))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # nan and inf included
    st.text(max_size=12),
    st.sampled_from(["all", "adamw", "cosine", "builtin:iris", "csv:x.csv", "cpu", "cuda:1", "1e-3", "yes"]),
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def set_path(data: dict, path: str, value: Any) -> dict:
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        node[part] = child = {"name": child} if isinstance(child, str) else dict(child or {})
        node = child
    node[leaf] = value
    return data


def check_loads_or_names(source, overrides=None, field: str | None = None) -> Recipe | None:
    """Load; a failure must be a RecipeError naming ``field``'s section (or the file)."""
    try:
        recipe = load_recipe(source, overrides)
    except RecipeError as exc:
        message = str(exc)
        assert message and "Traceback" not in message
        if field is not None:
            assert field.split(".")[0] in message, (field, message)
        return None
    again = load_recipe(yaml.safe_load(to_yaml(recipe)))  # what recipe.yaml of the run would hold
    assert again.model_dump() == recipe.model_dump()
    return recipe


def dig(dumped: dict, path: str):
    node: Any = dumped
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


# ----------------------------------------------------------------------------- dicts


@FUZZ
@given(tree=trees)
def test_random_tree_as_a_whole_recipe(tree):
    if isinstance(tree, dict):
        check_loads_or_names(tree)
    else:  # a list, a number, None; a string is a file or shipped name that does not exist
        with pytest.raises(RecipeError, match="recipe"):
            load_recipe(tree)


@FUZZ
@given(path=st.one_of(st.sampled_from(REAL_PATHS), st.sampled_from(REAL_PATHS).flatmap(near)), value=trees)
@example(path="seed", value=True)  # YAML "yes" is True: not seed 1
@example(path="train.optimizer.lr", value=float("inf"))
@example(path="seed", value=-1)  # numpy refuses negative seeds
@example(path="seed", value=2**64)
@example(path="name", value="a" * 300)  # a folder name
@example(path="data.split.validation", value=False)
def test_one_real_field_given_a_random_value(path, value):
    recipe = check_loads_or_names(set_path(yaml.safe_load(yaml.safe_dump(BASE)), path, value), field=path)
    if recipe is not None:
        got = dig(recipe.model_dump(mode="json"), path)
        if isinstance(value, bool) and path not in ("model.norm", "model.hidden_sizes", "model.dropout"):
            assert isinstance(got, bool) or got is KeyError or isinstance(got, dict), (path, value, got)


# ----------------------------------------------------------------------------- YAML files


def yaml_text(data: Any, flow: bool | None) -> str:
    return yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True, sort_keys=False)


@FUZZ
@given(
    tree=st.one_of(trees, st.fixed_dictionaries({}, optional={k: trees for k in BASE}), st.just(BASE)),
    flow=st.sampled_from([None, True, False]),
    damage=st.sampled_from(["none", "duplicate-line", "cut", "insert", "tab"]),
    where=st.floats(0, 1),
    junk=st.text(max_size=6),
)
@example(tree=BASE, flow=False, damage="duplicate-line", where=0.0, junk="")
def test_yaml_file_damaged_or_not(tmp_path_factory, tree, flow, damage, where, junk):
    text = yaml_text(tree, flow)
    lines = text.splitlines(keepends=True)
    at = int(where * len(lines)) if lines else 0
    cut = int(where * len(text))
    text = {
        "none": text,
        "duplicate-line": "".join(lines[: at + 1] + lines[at : at + 1] + lines[at + 1 :]),
        "cut": text[:cut],
        "insert": text[:cut] + junk + text[cut:],
        "tab": text.replace("  ", "\t", 1),
    }[damage]
    path = tmp_path_factory.mktemp("yaml") / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(recipe, Recipe)
    assert load_recipe(yaml.safe_load(to_yaml(recipe))).model_dump() == recipe.model_dump()


BOMB = "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(  # 10**7 values from a few lines
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7)
)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- a\n- b\n", "mapping"),
        ("", "mapping"),
        ("42\n", "mapping"),
        ("name: a\nname: b\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\n", "'name' appears twice"),
        (
            "name: a\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\ntrain: {epochs: 1, epochs: 2}\n",
            "'epochs' appears twice",
        ),
        (BOMB + "name: a\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\n", "more than"),
        ("name: a\ndescription: &x [*x]\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\n", "more than"),
        ("name: a\ntrain: &x {a: *x}\n", "recursive"),
        ("description: " + "[" * 3000 + "]" * 3000 + "\n", "nested"),
        ("name: a\nseed: !!python/object/apply:os.system ['true']\n", "python/object"),
        ("name: a\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\nseed: yes\n", "seed: true/false"),
        (
            "name: a\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\ntrain: {optimizer: {lr: 1e999}}\n",
            "train.optimizer.lr",
        ),
        (
            "name: a\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\nseed: 123456789012345678901234\n",
            "seed",
        ),
    ],
)
def test_yaml_that_is_not_a_recipe(tmp_path, text, says):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and says in str(info.value)


def test_yaml_merge_keys_and_anchors_still_work(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: a\ndata: &data {source: builtin:iris}\nmodel: {arch: mlp}\n"
        "train:\n  optimizer: {name: sgd, lr: 0.5}\n  early_stopping: {metric: &m loss}\n"
        "description: *m\n",
        encoding="utf-8",
    )
    recipe = load_recipe(path)
    assert (recipe.train.optimizer.lr, recipe.description) == (0.5, "loss")
    path.write_text(
        "name: a\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\n"
        "train:\n  optimizer:\n    <<: {name: sgd, lr: 0.5}\n    lr: 0.25\n",
        encoding="utf-8",
    )
    optimizer = load_recipe(path).train.optimizer
    assert (optimizer.name, optimizer.lr) == ("sgd", 0.25)  # a merged key may be overridden


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"name: caf\xe9\n", "not UTF-8 text"),
        ("name: a\n".encode("utf-16"), "not UTF-8 text"),
        (b"name: a\x00\n", "not valid YAML"),
    ],
)
def test_recipe_bytes_that_are_not_utf8_text(tmp_path, data, says):
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    with pytest.raises(RecipeError, match=says):
        load_recipe(path)


def test_recipe_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(BASE).encode())
    assert load_recipe(path).name == "fuzz"


# ----------------------------------------------------------------------------- overrides

override_keys = st.one_of(
    st.sampled_from(REAL_PATHS),
    st.sampled_from(REAL_PATHS).flatmap(near),
    st.lists(keys, min_size=1, max_size=3).map(".".join),
)
override_values = st.one_of(
    scalars.map(lambda v: yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip()),
    trees.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()),
    st.text(max_size=10),
)


@FUZZ
@given(items=st.lists(st.tuples(override_keys, override_values), max_size=4))
@example(items=[("model.", "1")])
@example(items=[("train..epochs", "1")])
@example(items=[("train.epochs", "{a: 1, a: 2}")])
@example(items=[("seed", "yes")])
def test_random_overrides(items):
    try:
        overrides = parse_overrides([f"{k}={v}" for k, v in items])
    except RecipeError:
        return
    recipe = check_loads_or_names(BASE, overrides)
    if recipe is None:
        return
    dumped = recipe.model_dump(mode="json")
    for key, value in overrides.items():
        if any(
            other != key and (other.startswith(key + ".") or key.startswith(other + "."))
            for other in overrides
        ):
            continue  # one override replaced or extended another
        got = dig(dumped, key)
        if isinstance(got, dict) and isinstance(value, str):
            got = got.get("name")  # "train.optimizer=sgd" is the shorthand for {name: sgd}
        if isinstance(value, dict) or got is KeyError:
            continue  # merged sections and a model/task option checked later by the family/task
        if isinstance(value, bool) or isinstance(got, bool):
            assert isinstance(value, bool) and isinstance(got, bool) and value == got, (key, value, got)
        elif isinstance(value, int | float) and isinstance(got, int | float):
            assert float(got) == float(value), (key, value, got)


def test_override_keys_must_be_dotted_names():
    for bad in [{"model.": 1}, {".seed": 1}, {"train..epochs": 1}, {3: 1}]:
        with pytest.raises(RecipeError, match="override"):
            load_recipe(BASE, bad)


# ----------------------------------------------------------------------------- the public API and the CLI


@FUZZ
@given(path=st.sampled_from(REAL_PATHS), value=trees)
@example(path="model.hidden_sizes", value=["x"])
@example(path="model.norm", value=5)
@example(path="task.name", value="os:system")
def test_public_load_recipe_checks_model_and_task_too(path, value):
    data = set_path(yaml.safe_load(yaml.safe_dump(BASE)), path, value)
    try:
        recipe = bigmodel.load_recipe(data)
    except UserError as exc:
        assert str(exc)
        return
    assert isinstance(recipe, Recipe)


CLI_CASES = [
    ("- just\n- a list\n", "mapping"),
    ("name: bad\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\ntrain: {epochs: 0}\n", "train.epochs"),
    ("name: bad\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\ntrain: {optimiser: adam}\n", "optimizer"),
    ("name: bad\ndata: {source: builtin:iris}\nmodel: {arch: mlp}\nseed: yes\n", "seed"),
    ("name: bad\ndata: {source: builtin:iris}\nmodel: {arch: mlpp}\n", "model.arch"),
    ("name: bad\nname: again\n", "appears twice"),
]


def test_cli_refuses_bad_recipes_with_exit_2_and_no_traceback(tmp_path):
    """One interpreter runs every case through ``bigmodel.cli.main`` (the console script's code)."""
    paths = []
    for i, (text, _) in enumerate(CLI_CASES):
        paths.append(tmp_path / f"bad{i}.yaml")
        paths[-1].write_text(text, encoding="utf-8")
    code = (
        "import sys\nfrom bigmodel.cli import main\n"
        "for path in sys.argv[1:]:\n"
        "    sys.argv = ['bigmodel', 'train', path, '--output', path + '.runs']\n"
        "    try:\n        main()\n    except SystemExit as exc:\n"
        "        print('EXIT', exc.code, file=sys.stderr, flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in result.stderr, result.stderr
    reports = result.stderr.split("EXIT")
    assert len(reports) == len(CLI_CASES) + 1, result.stderr
    for (_, says), report, code_line in zip(CLI_CASES, reports[:-1], reports[1:], strict=True):
        assert code_line.split()[0] == "2", result.stderr
        assert says in " ".join(report.split()), report
    assert not any(p.with_name(p.name + ".runs").exists() for p in paths)


def test_cli_refuses_a_bad_override_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bigmodel", "train", "digits-mlp", "train.epochs=-1", "train..x=1",
         "--output", str(tmp_path)],  # fmt: skip
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "override" in result.stderr
