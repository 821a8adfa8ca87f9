"""Semantic role labeling: the predicate indicator (embedding and second segment), span F1 against an
srl-eval-style reference written here, a predicate-aware BiLSTM that learns template frames, predict's
arguments with spans, CoNLL-2012 files as a source, and bad input named by row and field."""

from __future__ import annotations

import json
import random

import pytest
import torch

import bigmodel
from bigmodel.data.conll2012 import srl_template_columns
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.models.registry import get_family
from bigmodel.tasks import TASKS
from bigmodel.tasks.semantic_role_labeling import (
    SemanticRoleLabelingOptions,
    SemanticRoleLabelingTask,
    SRLMetric,
)

COLUMNS = srl_template_columns(240)


def _records(n: int = 240) -> ColumnRecords:
    return ColumnRecords({k: v[:n] for k, v in COLUMNS.items()}, "frames")


def _fitted(**options) -> SemanticRoleLabelingTask:
    opts = SemanticRoleLabelingOptions(**options)
    opts.tokenizer.vocab_size, opts.tokenizer.min_frequency = 200, 1
    task = SemanticRoleLabelingTask(opts, {"max_length": 64})
    task.fit(_records())
    return task


def write_jsonl(path, n: int = 240):
    with open(path, "w") as f:
        for words, p, tags in zip(COLUMNS["tokens"][:n], COLUMNS["predicate_index"][:n], COLUMNS["tags"][:n],
                                  strict=True):  # fmt: skip
            f.write(json.dumps({"tokens": words, "predicate_index": p, "tags": tags}) + "\n")
    return path


# --- the predicate indicator ---------------------------------------------------------------------------


def test_indicator_marks_the_predicate_sub_tokens():
    task = _fitted()
    example = {"tokens": ["Alice", "repainted", "the", "boat"], "predicate_index": 1,
               "tags": ["B-ARG0", "B-V", "B-ARG1", "I-ARG1"]}  # fmt: skip
    item = task.encode(example, None)
    pieces = [task.tokenizer.id_to_token(i) for i in item["ids"]]
    marked = [p for p, flag in zip(pieces, item["indicator"], strict=True) if flag]
    assert len(marked) >= 2 and "".join(m.removeprefix("##") for m in marked) == "repainted"  # sub-tokens
    assert [task.tags.names[t] for t in item["labels"] if t != -100] == example["tags"]
    other = task.encode({**example, "predicate_index": 3}, None)
    assert other["ids"] == item["ids"] and other["indicator"] != item["indicator"]
    batch = task.collate([item, task.encode({"tokens": ["hi"], "predicate_index": 0, "tags": ["B-V"]}, None)])
    assert batch["predicate_mask"].shape == batch["input_ids"].shape
    hi = batch["predicate_mask"][1].tolist()
    assert hi[0] == 0 and hi[1] == 1 and sum(hi) == int(batch["attention_mask"][1].sum()) - 2  # all of "hi"


def test_second_segment_holds_the_predicate_and_gets_no_tags():
    task = _fitted(predicate_segment=True)
    example = {"tokens": ["Bob", "sold", "the"], "predicate_index": 1, "tags": ["B-ARG0", "B-V", "B-ARG1"]}
    item = task.encode(example, None)
    pieces = [task.tokenizer.id_to_token(i) for i in item["ids"]]
    assert pieces == ["[CLS]", "bob", "sold", "the", "[SEP]", "sold", "[SEP]"]
    assert item["type_ids"] == [0, 0, 0, 0, 0, 1, 1]
    assert item["indicator"] == [0, 0, 1, 0, 0, 1, 0]
    assert item["labels"][4:] == [-100] * 3 and item["first"] == [1, 2, 3]


def test_the_indicator_changes_the_output_and_starts_at_zero():
    task = _fitted()
    family = get_family("rnn")
    model = task.build_model(family, {"embed_dim": 8, "hidden_size": 8, "bidirectional": True}, None).eval()
    batch = task.collate([task.encode({"tokens": ["Bob", "sold", "bread"], "predicate_index": p}, None)
                          for p in (0, 1)])  # fmt: skip
    a = task.forward(model, batch).emissions
    torch.testing.assert_close(a[0], a[1])  # zero-initialised: a pretrained encoder starts unchanged
    with torch.no_grad():
        model.predicate.weight.normal_()
    b = task.forward(model, batch).emissions
    assert not torch.allclose(b[0], b[1])
    assert model._call.indicator is None  # nothing left behind for the next call


# --- the metric ---------------------------------------------------------------------------------------


def reference_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Arguments as srl-eval reads them from brackets, from BIO tags: a span opens at B-X, or at I-X not
    continuing an X; it runs while I-X follows; V is not scored."""
    spans, label, begin = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        kind = tag[2:] if tag != "O" else None
        continues = tag.startswith("I-") and label == kind
        if label is not None and not continues:
            spans.add((label, begin, i - 1))
            label = None
        if kind is not None and not continues:
            label, begin = kind, i
    return {s for s in spans if s[0] != "V"}


def reference_scores(gold: list[list[str]], predicted: list[list[str]]) -> tuple[float, float, float]:
    correct = found = wanted = 0
    for g, p in zip(gold, predicted, strict=True):
        gs, ps = reference_spans(g), reference_spans(p)
        correct, found, wanted = correct + len(gs & ps), found + len(ps), wanted + len(gs)
    precision = correct / found if found else 0.0
    recall = correct / wanted if wanted else 0.0
    return precision, recall, 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def test_span_f1_equals_the_reference_on_random_tags():
    task = _fitted()
    names = task.tags.names
    rng = random.Random(0)
    for trial in range(30):
        gold, pred = [], []
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(1, 9)
            g = list(COLUMNS["tags"][rng.randrange(200)])[:n]
            p = [rng.choice(names) if rng.random() < 0.4 else t for t in g]  # ill-formed tags too
            gold.append(g)
            pred.append(p)
        metric, halves = SRLMetric(task), [SRLMetric(task), SRLMetric(task)]
        to_ids = lambda rows: [[names.index(t) for t in row] for row in rows]  # noqa: E731
        metric.add_sentences(to_ids(gold), to_ids(pred))
        k = len(gold) // 2
        halves[0].add_sentences(to_ids(gold[:k]), to_ids(pred[:k]))
        halves[1].add_sentences(to_ids(gold[k:]), to_ids(pred[k:]))
        for m in (metric, *halves):
            m.add("loss", torch.tensor(0.0))
            m.add("items", torch.tensor(1.0))
        merged = {name: halves[0].sums[name] + halves[1].sums[name] for name in metric.sums}
        halves[0].sums = merged
        got, combined = metric.compute(), halves[0].compute()
        want = reference_scores(gold, pred)
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(want), trial
        assert combined["f1"] == pytest.approx(got["f1"])
        assert "V" not in {row["type"] for row in got["per_type"]}


GOLD_CONLL = """\
#begin document (nw/x/00/x_0001); part 000
nw/x/00/x_0001  0  0  The     DT   (TOP(S(NP*  -      -   -  -  *  (ARG0*  -
nw/x/00/x_0001  0  1  cat     NN   *)          -      -   -  -  *  *)      -
nw/x/00/x_0001  0  2  chased  VBD  (VP*        chase  01  1  -  *  (V*)    -
nw/x/00/x_0001  0  3  mice    NNS  (NP*))      -      -   -  -  *  (ARG1*) -

#end document
"""


# --- end to end ---------------------------------------------------------------------------------------


def recipe(source: str, **changes) -> dict:
    spec = {
        "name": "srl-tiny",
        "data": {"source": source, "max_length": 48, "split": {"validation": 0.15, "test": 0.15}},
        "task": {"name": "semantic_role_labeling", "crf": True,
                 "tokenizer": {"vocab_size": 300, "min_frequency": 1}},
        "model": {"arch": "rnn", "bidirectional": True, "embed_dim": 24, "hidden_size": 24},
        "train": {"epochs": 6, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 1e-2}},
    }  # fmt: skip
    for key, value in changes.items():
        section, _, field = key.partition(".")
        spec[section] = {**spec[section], field: value} if field else value
    return spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srl")
    jsonl = write_jsonl(tmp / "frames.jsonl")
    return bigmodel.train(recipe(f"jsonl:{jsonl}"), output=tmp / "runs", progress=False), jsonl


def test_bilstm_learns_the_frames_and_loss_falls(trained):
    run, _ = trained
    assert "semantic_role_labeling" in TASKS
    history = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in history if "split" not in row and "loss" in row]
    assert losses and losses[-1] < 0.5 * losses[0]
    assert run.metrics["test"]["f1"] >= 0.8, run.metrics["test"]
    state = json.loads((run.path / "task.json").read_text())
    assert state["types"] == ["ARG0", "ARG1", "ARGM-LOC", "ARGM-TMP", "V"]


def test_predict_gives_arguments_with_spans(trained):
    run, jsonl = trained
    predictor = bigmodel.load(run.path)
    sentence = "my sister  said that Bob sold the keys"
    said, sold = predictor.predict([{"sentence": sentence, "predicate_index": 2},
                                    {"sentence": sentence, "predicate_index": 5}])  # fmt: skip
    assert said["predicate"] == {"text": "said", "index": 2, "start": 11, "end": 15}
    roles = {a["role"]: a["text"] for a in sold["arguments"]}
    assert roles == {"ARG0": "Bob", "ARG1": "the keys"}, sold
    assert {a["role"]: a["text"] for a in said["arguments"]} == {
        "ARG0": "my sister",
        "ARG1": "that Bob sold the keys",
    }
    assert sentence[sold["arguments"][0]["start"] : sold["arguments"][0]["end"]] in ("Bob", "the keys")
    (tokens,) = predictor.predict({"tokens": ["Alice", "bought", "bread"], "predicate_index": 1})
    assert tokens["tags"][1] == "B-V" and len(tokens["tags"]) == 3
    assert len(predictor.predict(str(jsonl))) == 240
    with pytest.raises(DataError, match=r"needs its predicate"):
        predictor.predict("Alice bought bread")
    with pytest.raises(DataError, match=r"record 2: column 'predicate_index': .* 0 to 2, got 3"):
        predictor.predict(
            [{"tokens": ["a", "b"], "predicate_index": 0}, {"sentence": "a b c", "predicate_index": 3}]
        )


def test_conll2012_file_trains_a_bert_with_a_second_segment(tmp_path):
    path = tmp_path / "train.gold_conll"
    path.write_text(GOLD_CONLL * 4)
    bert = {"arch": "bert", "embed_dim": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 20,
            "max_positions": 48}  # fmt: skip
    spec = recipe(
        f"conll2012:{path}",
        model=bert,
        **{
            "train.max_steps": 2,
            "task.predicate_segment": True,
            "data.split": {"validation": 0.0, "test": 0.0},
        },
    )
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    assert run.metrics["train"]["steps"] == 2
    (out,) = bigmodel.load(run.path).predict(str(path))[:1]
    assert out["predicate"]["text"] == "chased"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model": {"arch": "mlp"}}, "model.arch"),
        ({"task": {"name": "semantic_role_labeling", "scheme": "BIOES"}}, "task.scheme"),
        ({"data.features": ["x"]}, "data.features"),
    ],
)
def test_recipe_errors_name_the_field(change, field, tmp_path):
    with pytest.raises(RecipeError, match=rf"^{field}:"):
        bigmodel.load_recipe(recipe(f"jsonl:{tmp_path / 'x.jsonl'}", **change))


def test_bad_records_name_the_row_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    split = {"data.split": {"validation": 0.0, "test": 0.0}}
    path.write_text('{"tokens": ["a", "b"], "predicate_index": 1, "tags": ["O", "B-V"]}\n'
                    '{"tokens": ["a", "b"], "predicate_index": 5, "tags": ["O", "B-V"]}\n')  # fmt: skip
    with pytest.raises(DataError, match=r"bad.jsonl \(train split\), sentence 2: column 'predicate_index'"):
        bigmodel.train(recipe(f"jsonl:{path}", **split), output=tmp_path)
    path.write_text('{"tokens": ["a", "b"], "tags": ["O", "B-V"]}\n')
    with pytest.raises(DataError, match=r"column 'predicate_index' is not in"):
        bigmodel.train(recipe(f"jsonl:{path}", **split), output=tmp_path)
    path.write_text('{"tokens": ["a", "b"], "predicate_index": 0, "tags": ["B-V", "I-A0"]}\n')
    with pytest.raises(DataError, match=r"sentence 1: word 2 .* begins with B-"):
        bigmodel.train(recipe(f"jsonl:{path}", **split), output=tmp_path)


def test_the_indicator_is_per_call_so_threads_do_not_mix_predicates():
    """A Predictor serves many threads: each call's predicate must reach only its own forward pass."""
    from concurrent.futures import ThreadPoolExecutor

    task = _fitted()
    sizes = {"embed_dim": 8, "hidden_size": 8, "bidirectional": True}
    model = task.build_model(get_family("rnn"), sizes, None)
    with torch.no_grad():
        model.predicate.weight.normal_()
    model.eval()
    words = ["Alice", "said", "that", "Bob", "sold", "bread"]
    batches = [task.collate([task.encode({"tokens": words, "predicate_index": p}, None)]) for p in (1, 4)]
    with torch.no_grad():
        alone = [task.forward(model, b).emissions for b in batches]

        def run(i: int) -> torch.Tensor:
            return task.forward(model, batches[i % 2]).emissions

        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(run, range(40)))
    for i, emissions in enumerate(together):
        torch.testing.assert_close(emissions, alone[i % 2])
