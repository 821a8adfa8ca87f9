"""Every shipped recipe loads, resolves its model, and trains one step."""

import pytest
import yaml

import bigmodel
from bigmodel.recipe import shipped_recipes
from helpers import write_wine_csv

RECIPES = shipped_recipes()


def test_the_promised_recipes_ship():
    assert {"digits-mlp", "digits-cnn", "tabular-csv"} <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_and_trains_one_step(name, tmp_path):
    path = RECIPES[name]
    assert yaml.safe_load(path.read_text())["name"] == name  # file name and recipe name agree
    overrides = {"train.max_steps": 1}
    if bigmodel.load_recipe(path).data.source.startswith("csv:"):  # its CSV is the user's; make one
        overrides["data.source"] = f"csv:{write_wine_csv(tmp_path / 'data.csv')}"
    run = bigmodel.train(path, output=tmp_path / "runs", progress=False, **overrides)
    assert run.metrics["train"]["steps"] == 1
    assert (run.path / "recipe.yaml").is_file() and (run.path / "model.safetensors").is_file()
