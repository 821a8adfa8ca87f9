"""``Task.report_rows``: the examples the HTML report shows — input (text, or the image itself),
truth, prediction and whether they agree — from a split's raw records and what predict returned."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bigmodel.data.records import ColumnRecords
from bigmodel.models.registry import get_family
from bigmodel.recipe import load_recipe
from bigmodel.serve.predictor import Predictor
from bigmodel.tasks import TASKS, create_task
from helpers import text_rows

TINY_BERT = {"arch": "bert", "embed_dim": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 20, "dropout": 0.0,
             "attn_dropout": 0.0}  # fmt: skip


def fitted(data: dict, task: dict, model: dict, columns: dict):
    """A task fitted on ``columns`` and a Predictor with the untrained model it builds."""
    recipe = load_recipe({"name": "t", "seed": 0, "data": {"source": "csv:unused.csv", **data}, "task": task,
                          "model": model})  # fmt: skip
    family = get_family(recipe.model.arch)
    fitted_task = create_task(recipe)
    fitted_task.check(recipe, family)
    fitted_task.fit(fitted_task.clean(ColumnRecords(columns, "train"), "train"))
    torch.manual_seed(0)
    return fitted_task, Predictor(fitted_task.build_model(family, recipe.model.options(), None), fitted_task)


def test_text_classification_rows_show_the_text_its_class_and_the_prediction():
    rows = text_rows(40)
    data = {"text": "text", "max_length": 32}
    task, predictor = fitted(data, {"name": "text_classification", "tokenizer": {"vocab_size": 100,
                             "min_frequency": 1}}, TINY_BERT,
                             {"text": [t for t, _ in rows], "label": [y for _, y in rows]})  # fmt: skip
    records = [{"text": "our team won the cup", "label": "sports"},
               {"text": "she baked the bread", "label": "cooking"},
               {"text": "add some salt"}]  # fmt: skip
    guessed = [{"label": "sports"}, {"label": "sports"}, {"label": "cooking"}]
    assert task.report_rows(records, guessed) == [
        {"input": "our team won the cup", "truth": "sports", "prediction": "sports", "correct": True},
        {"input": "she baked the bread", "truth": "cooking", "prediction": "sports", "correct": False},
        {"input": "add some salt", "truth": None, "prediction": "cooking", "correct": None},  # no label
    ]
    # end to end: what predict returned for the records
    predictions = predictor.predict(records)
    shown = task.report_rows(records, predictions)
    assert [r["prediction"] for r in shown] == [p["label"] for p in predictions]
    agree = [p["label"] == r["label"] for p, r in zip(predictions[:2], records[:2], strict=True)]
    assert [r["correct"] for r in shown] == [*agree, None]
    with pytest.raises(ValueError):  # one prediction per record, or nothing is shown
        task.report_rows(records, predictions[:2])


def test_a_text_pair_is_shown_as_both_texts():
    rows = text_rows(20)
    task, _ = fitted({"text": "a", "text_pair": "b", "max_length": 32},
                     {"name": "text_classification", "tokenizer": {"vocab_size": 100, "min_frequency": 1}},
                     TINY_BERT, {"a": [t for t, _ in rows], "b": [t for t, _ in rows],
                                 "label": [y for _, y in rows]})  # fmt: skip
    (row,) = task.report_rows([{"a": "first", "b": "second", "label": "sports"}], [{"label": "cooking"}])
    assert row == {"input": "first ‖ second", "truth": "sports", "prediction": "cooking", "correct": False}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("colour", [False, True])
def test_image_classification_rows_show_the_image_itself(colour, tmp_path):
    rng = np.random.default_rng(0)
    shape = (12, 10, 3) if colour else (12, 10)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(8)]
    task, predictor = fitted({}, {"name": "image_classification"}, {"arch": "cnn", "channels": [4, 8]},
                             {"image": images, "label": ["cat", "dog"] * 4})  # fmt: skip
    bigger = rng.integers(0, 256, (20, 16, *shape[2:]), dtype=np.uint8)  # shown at its own size
    path = tmp_path / "bigger.png"
    path.write_bytes(_png(bigger))
    records = [{"image": images[0], "label": "cat"}, {"image": _png(images[1]), "label": "dog"},
               {"image": str(path), "label": "dog"}]  # fmt: skip
    predictions = predictor.predict([{"image": r["image"]} for r in records])
    shown = task.report_rows(records, predictions)
    originals = [images[0], images[1], bigger]
    for row, original, record, prediction in zip(shown, originals, records, predictions, strict=True):
        assert isinstance(row["input"], Image.Image) and row["input"].mode == ("RGB" if colour else "L")
        np.testing.assert_array_equal(np.asarray(row["input"]), original)
        assert row["truth"] == record["label"] and row["prediction"] == prediction["label"]
        assert row["correct"] == (prediction["label"] == record["label"])


def test_token_classification_rows_compare_entity_sets():
    people, places = ["Alice", "Bob"], ["Paris", "Rome"]
    columns = {"tokens": [[people[i % 2], "visited", places[i % 2]] for i in range(12)],
               "tags": [["B-PER", "O", "B-LOC"]] * 12}  # fmt: skip
    task, _ = fitted({"max_length": 32}, {"name": "token_classification", "tokenizer": {"vocab_size": 100,
                     "min_frequency": 1}}, TINY_BERT, columns)  # fmt: skip
    record = {"tokens": ["Alice", "visited", "New", "York"], "tags": ["B-PER", "O", "B-LOC", "I-LOC"]}
    right = {"entities": [{"text": "Alice", "type": "PER", "start": 0, "end": 5},
                          {"text": "New York", "type": "LOC", "start": 14, "end": 22}]}  # fmt: skip
    wrong = {"entities": [{"text": "New", "type": "LOC", "start": 14, "end": 17}]}
    shown = task.report_rows([record, record, {"tokens": "Bob slept"}], [right, wrong, {"entities": []}])
    assert shown == [
        {"input": "Alice visited New York", "truth": "Alice (PER); New York (LOC)",
         "prediction": "Alice (PER); New York (LOC)", "correct": True},
        {"input": "Alice visited New York", "truth": "Alice (PER); New York (LOC)", "prediction": "New (LOC)",
         "correct": False},
        {"input": "Bob slept", "truth": None, "prediction": "(none)", "correct": None},
    ]  # fmt: skip


def test_tabular_rows_show_the_features_as_name_value_pairs():
    columns = {"x": [0.5, 1.25, 2.0, 3.0] * 3, "city": ["paris", "rome"] * 6, "label": ["a", "b"] * 6}
    task, _ = fitted({}, {"name": "classification"}, {"arch": "mlp", "hidden_sizes": [4]}, columns)
    (row,) = task.report_rows(
        [{"x": 1 / 3, "city": "rome", "label": "b"}], [{"label": "b", "probabilities": {}}]
    )
    assert row == {"input": "x=0.3333, city=rome", "truth": "b", "prediction": "b", "correct": True}
    columns["target"] = [float(i) for i in range(12)]
    regression, _ = fitted({"label": "target", "features": ["x", "city"]}, {"name": "regression"},
                           {"arch": "mlp", "hidden_sizes": [4]}, columns)  # fmt: skip
    (row,) = regression.report_rows([{"x": 2.0, "city": "paris", "target": "7"}], [{"prediction": 6.54321}])
    assert row == {"input": "x=2, city=paris", "truth": "7", "prediction": "6.54321", "correct": None}


def test_generated_text_rows_have_a_reference_but_no_right_or_wrong():
    seq2seq = TASKS["seq2seq"](TASKS["seq2seq"].Options(), {})
    shown = seq2seq.report_rows(
        [{"source": "a b", "target": "b a"}], [{"source": "a b", "translation": "b b"}]
    )
    assert shown == [{"input": "a b", "truth": "b a", "prediction": "b b", "correct": None}]
    lm = TASKS["causal_lm"](TASKS["causal_lm"].Options(), {})
    records = [{"prompt": "Q: hi", "response": " A: hello"}, {"prompt": "once"}]
    shown = lm.report_rows(
        records, [{"prompt": "Q: hi", "text": " A: hey"}, {"prompt": "once", "text": " upon"}]
    )
    assert shown == [{"input": "Q: hi", "truth": " A: hello", "prediction": " A: hey", "correct": None},
                     {"input": "once", "truth": None, "prediction": " upon", "correct": None}]  # fmt: skip


def test_tasks_without_rows_say_so():
    srl = TASKS["semantic_role_labeling"]
    assert srl(srl.Options(), {}).report_rows([{}], [{}]) is None
