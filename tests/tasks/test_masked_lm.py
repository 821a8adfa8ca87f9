"""masked_lm: BERT's 80/10/10 dynamic masking, the loss on masked positions only, parity of the MLM
head with transformers' BertForMaskedLM, and a tiny pretrain → export → fine-tune chain."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bigmodel
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.pipeline import export_pretrained
from bigmodel.tasks.masked_lm import MaskedLMOptions, MaskedLMTask
from helpers import text_rows

TINY = {"arch": "bert", "embed_dim": 24, "num_layers": 1, "num_heads": 2, "ffn_dim": 37, "dropout": 0.0,
        "attn_dropout": 0.0}  # fmt: skip


def _task(**options) -> MaskedLMTask:
    task = MaskedLMTask(MaskedLMOptions(**options), {"text": "text", "max_length": 64})
    rows = [t for t, _ in text_rows(200)]
    task.fit(ColumnRecords({"text": rows}, "texts"))
    return task


def test_masking_statistics_on_many_tokens():
    task = _task()
    mask_id = task.tokenizer.mask_token_id
    rng = np.random.default_rng(0)
    ids = rng.integers(5, task.tokenizer.vocab_size, 100_000)  # ordinary tokens
    special = np.zeros(len(ids), bool)
    special[::50] = True  # e.g. [CLS]/[SEP]
    inputs, labels = task.mask(ids, special, np.random.default_rng(1))
    chosen = labels != -100
    assert not chosen[special].any()  # specials never
    assert chosen.sum() == round((~special).sum() * 0.15)  # BERT's count: round(n * 15 %)
    assert (labels[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    masked = inputs[chosen] == mask_id
    unchanged = inputs[chosen] == ids[chosen]
    replaced = ~masked & ~unchanged
    n = chosen.sum()
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(unchanged.sum() / n - 0.1) < 0.01  # (a random token equal to the original: ~1/vocab)
    assert abs(replaced.sum() / n - 0.1) < 0.01
    specials = {task.tokenizer.token_to_id(t) for t in task.tokenizer.special_tokens.values()}
    assert not set(inputs[chosen][replaced].tolist()) & specials  # random tokens are ordinary ones


def test_masks_are_fresh_each_epoch_and_deterministic_per_key():
    from bigmodel.data.loader import TaskDataset

    task = _task()
    records = ColumnRecords({"text": ["the home team won the cup on sunday and the coach smiled " * 3]}, "t")
    dataset = TaskDataset(records, task.encode, seed=7, train=True)
    a, b, again = dataset[(0, 0)], dataset[(1, 0)], dataset[(0, 0)]
    assert np.array_equal(a["ids"], again["ids"]) and np.array_equal(a["labels"], again["labels"])
    assert not np.array_equal(a["labels"], b["labels"])  # another epoch, other positions
    encoded = task.tokenizer.encode_one(records[0]["text"])
    assert a["labels"][0] == -100 and a["labels"][len(encoded.ids) - 1] == -100  # [CLS], [SEP]
    evaluation = [task.encode(records[0], None) for _ in range(2)]  # evaluation: fixed masks
    assert np.array_equal(evaluation[0]["labels"], evaluation[1]["labels"])


def test_loss_counts_masked_positions_only():
    torch.manual_seed(0)
    task = _task()
    from bigmodel.models.registry import get_family

    family = get_family("bert")
    model = task.build_model(family, {k: v for k, v in TINY.items() if k != "arch"}, None).eval()
    texts = [t for t, _ in text_rows(4)]
    batch = task.collate([task.encode({"text": t}, np.random.default_rng(i)) for i, t in enumerate(texts)])
    assert batch["num_items"] == int((batch["labels"] != -100).sum()) > 0
    loss = task.loss(model, batch)
    logits = model.mlm_logits(model.encode(batch["input_ids"], batch["attention_mask"]))  # (B, T, V)
    reference = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch["labels"], ignore_index=-100, reduction="sum"
    )
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_mlm_logits_match_transformers_bert_for_masked_lm(tmp_path):
    transformers = pytest.importorskip("transformers")
    from bigmodel.hub.pretrained import from_pretrained

    config = transformers.BertConfig(
        vocab_size=53, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
        max_position_embeddings=40,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        reference.cls.predictions.bias.normal_()  # a non-trivial bias, as after training
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    ids = torch.randint(0, 53, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours.mlm_logits(ours.encode(ids, mask))
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def _pretrain_recipe(csv_path) -> dict:
    return {
        "name": "mlm-tiny", "seed": 0,
        "data": {"source": f"csv:{csv_path}", "text": "text", "max_length": 32,
                 "split": {"validation": 0.1, "test": 0.0}},
        "task": {"name": "masked_lm", "tokenizer": {"vocab_size": 120, "min_frequency": 1}},
        "model": TINY,
        "train": {"epochs": 3, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 5e-3}},
    }  # fmt: skip


def test_pretrain_export_and_fine_tune_chain(tmp_path):
    from helpers import write_text_csv

    csv_path = write_text_csv(tmp_path / "texts.csv", n=160)
    run = bigmodel.train(_pretrain_recipe(csv_path), output=tmp_path / "runs", progress=False)
    metrics = run.metrics["validation"]
    assert {"loss", "accuracy", "perplexity"} <= set(metrics)
    vocab = bigmodel.load(run.path).task.tokenizer.vocab_size
    assert metrics["perplexity"] < vocab * 0.75, (metrics, vocab)  # better than uniform guessing

    predictor = bigmodel.load(run.path)
    [out] = predictor.predict("the home [MASK] won the cup")
    assert len(out["masks"]) == 1 and len(out["masks"][0]["fillers"]) == 5
    assert "[MASK]" not in out["filled"]
    with pytest.raises(DataError, match="no \\[MASK\\]"):
        predictor.predict("no mask here")

    folder = export_pretrained(run.path)
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForMaskedLM.from_pretrained(folder).eval()  # transformers reads it too
    batch = predictor.task.collate([predictor.task.encode(e, None) for e in predictor.task.parse("a [MASK]")])
    with torch.no_grad():
        ours = predictor.model.mlm_logits(predictor.model.encode(batch["input_ids"], batch["attention_mask"]))
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    # fine-tune text_classification from it: the encoder starts from the pretrained weights
    pretrained = load_file(str(run.path / "model.safetensors"))
    recipe = {
        "name": "cls-from-mlm", "seed": 0,
        "data": {"source": f"csv:{csv_path}", "text": "text", "label": "label", "max_length": 32,
                 "split": {"validation": 0.1, "test": 0.1}},
        "task": {"name": "text_classification"},
        "model": {"arch": "bert", "pretrained": str(folder)},
        "train": {"max_steps": 1, "batch_size": 16},
    }  # fmt: skip
    from bigmodel.models.registry import get_family
    from bigmodel.tasks import create_task

    loaded = bigmodel.load_recipe(recipe)
    task = create_task(loaded)
    task.fit(ColumnRecords({"text": ["a b", "c"], "label": ["x", "y"]}, "t"))  # the checkpoint's tokenizer
    assert task.tokenizer.vocab_size == predictor.task.tokenizer.vocab_size
    model = task.build_model(get_family("bert"), loaded.model.options(), loaded.model.pretrained)  # step 0
    start = model.state_dict()
    encoder = [k for k in pretrained if not k.startswith("mlm.")]
    assert len(encoder) > 10
    for key in encoder:
        torch.testing.assert_close(start[f"backbone.{key}"], pretrained[key], rtol=0, atol=0)
    tuned = bigmodel.train(recipe, output=tmp_path / "runs", progress=False)  # and it trains
    assert tuned.metrics["train"]["steps"] == 1


def test_recipe_errors_name_the_field(tmp_path):
    from helpers import write_text_csv

    recipe = _pretrain_recipe(write_text_csv(tmp_path / "t.csv", n=20))
    with pytest.raises(RecipeError, match="model.arch"):
        bigmodel.load_recipe({**recipe, "model": {"arch": "rnn"}})
    with pytest.raises(RecipeError, match="data.text"):
        bigmodel.load_recipe({**recipe, "data": {"source": recipe["data"]["source"]}})
    with pytest.raises(RecipeError, match="mask_token_frac"):
        bigmodel.load_recipe({**recipe, "task": {"name": "masked_lm", "mask_token_frac": 0.95}})
