"""SQuAD v1.1 JSON files as question records, and ``builtin:wnut16-qa`` (WNUT-16 recast as questions).

A SQuAD file (Rajpurkar et al. 2016) nests ``data[] -> paragraphs[] -> qas[]``::

    {"version": "1.1", "data": [{"title": "...", "paragraphs": [{"context": "...", "qas": [
        {"id": "...", "question": "...", "answers": [{"text": "...", "answer_start": 17}]}]}]}]}

Each question becomes one record in the layout of Hugging Face's ``squad`` dataset::

    {"id", "title", "question", "context", "answers": {"text": [...], "answer_start": [...]}}

A damaged file is refused naming the file and the JSON path of the bad part
(``data[0].paragraphs[1].qas[2].answers[0].answer_start``); an answer whose ``answer_start`` does not
point at its text in the context is refused naming the question id. Questions without answers (SQuAD
2.0's unanswerable ones) are refused: this reader is for v1.1, where every question has an answer.

``builtin:wnut16-qa`` is *not* a QA data set: it recasts the WNUT-16 named entities (the tweets of
``builtin:wnut16-ner``) as reading comprehension, as NER-as-MRC does (Li et al. 2020): a question such
as "Which person is mentioned?" has as gold answers every span of that type in the tweet's words
joined by single spaces. Each tweet that names an entity gets one question (about one of its entity
types, drawn with a fixed seed), so held-out questions are about held-out tweets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

COLUMNS = ("id", "title", "question", "context", "answers")
# WNUT-16's ten entity types as questions.
WNUT16_QUESTIONS = {
    "person": "Which person is mentioned?",
    "geo-loc": "Which place is mentioned?",
    "company": "Which company is mentioned?",
    "facility": "Which facility is mentioned?",
    "product": "Which product is mentioned?",
    "musicartist": "Which music artist is mentioned?",
    "movie": "Which movie is mentioned?",
    "sportsteam": "Which sports team is mentioned?",
    "tvshow": "Which TV show is mentioned?",
    "other": "Which other named thing is mentioned?",
}
WNUT16_QA_SEED = 0  # which entity type each tweet is asked about


# --- SQuAD JSON --------------------------------------------------------------------------------------


def parse_squad(doc, where: str) -> dict[str, list]:
    """The columns of :data:`COLUMNS` (one entry per question) from a parsed SQuAD document.

    Raises:
        DataError: naming ``where`` and the JSON path of a missing or mistyped part, an answer that
            does not match its context (with the question id), or an id used twice.
    """
    columns: dict[str, list] = {name: [] for name in COLUMNS}
    seen: dict[str, str] = {}
    articles = _get(doc, "data", list, where, "")
    for a, article in enumerate(articles):
        at = f"data[{a}]"
        _expect(article, dict, where, at)
        title = article.get("title", "")
        if not isinstance(title, str):
            raise DataError(f"{where}: {at}.title: expected a string, got {type(title).__name__}.")
        for p, paragraph in enumerate(_get(article, "paragraphs", list, where, at)):
            pat = f"{at}.paragraphs[{p}]"
            _expect(paragraph, dict, where, pat)
            context = _get(paragraph, "context", str, where, pat)
            for q, qa in enumerate(_get(paragraph, "qas", list, where, pat)):
                qat = f"{pat}.qas[{q}]"
                _expect(qa, dict, where, qat)
                qid = _get(qa, "id", (str, int), where, qat)
                qid = str(qid)
                if qid in seen:
                    raise DataError(f"{where}: {qat}: question id {qid!r} is already used at {seen[qid]}.")
                seen[qid] = qat
                question = _get(qa, "question", str, where, qat)
                if not question.strip():
                    raise DataError(f"{where}: {qat}.question (id {qid!r}): the question is empty.")
                answers = _answers(_get(qa, "answers", list, where, qat), context, where, qat, qid)
                for name, value in zip(COLUMNS, (qid, title, question, context, answers), strict=True):
                    columns[name].append(value)
    return columns


def _answers(answers: list, context: str, where: str, at: str, qid: str) -> dict[str, list]:
    if not answers:
        raise DataError(
            f"{where}: {at}.answers (id {qid!r}): no answers. Every SQuAD v1.1 question has one; "
            "unanswerable questions (SQuAD 2.0) are not supported."
        )
    texts, starts = [], []
    for k, answer in enumerate(answers):
        aat = f"{at}.answers[{k}]"
        _expect(answer, dict, where, aat)
        text = _get(answer, "text", str, where, aat)
        start = _get(answer, "answer_start", int, where, aat)
        if not text:
            raise DataError(f"{where}: {aat}.text (id {qid!r}): the answer is empty.")
        check_answer(context, text, start, f"{where}: {aat}.answer_start (id {qid!r})")
        texts.append(text)
        starts.append(start)
    return {"text": texts, "answer_start": starts}


def check_answer(context: str, text: str, start: int, where: str) -> None:
    """Refuse an answer whose ``start`` (a character offset) does not point at ``text`` in ``context``."""
    if not 0 <= start <= len(context) - len(text):
        raise DataError(
            f"{where}: {start} is outside the context ({len(context)} characters) "
            f"for the answer {text!r:.60}."
        )
    found = context[start : start + len(text)]
    if found != text:
        hint = context.find(text)
        where_else = f"; the text is at {hint}" if hint >= 0 else "; the text is not in the context"
        raise DataError(
            f"{where}: the context at {start} reads {found!r:.60}, not the answer {text!r:.60}{where_else}."
        )


def _expect(value, kind, where: str, at: str) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(f"{where}: {at}: expected {_NAMES[kind]}, got {type(value).__name__}.")


def _get(obj: dict, key: str, kind, where: str, at: str):
    path = f"{at}.{key}" if at else key
    if not isinstance(obj, dict):
        raise DataError(f"{where}: {at or 'the document'}: expected a JSON object, got {type(obj).__name__}.")
    if key not in obj:
        raise DataError(f"{where}: {path} is missing (a SQuAD file nests data -> paragraphs -> qas).")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool):
        expected = " or ".join(_NAMES[k] for k in kinds)
        raise DataError(f"{where}: {path}: expected {expected}, got {type(value).__name__} {value!r:.60}.")
    return value


_NAMES = {list: "a list", dict: "a JSON object", str: "a string", int: "an integer"}


def read_squad_columns(path: Path, data: bytes | None = None) -> dict[str, list]:
    """The ``squad:PATH`` source: a SQuAD v1.1 JSON file (UTF-8) as columns; ``data``: its bytes."""
    data = Path(path).read_bytes() if data is None else data
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8."
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        ) from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply.") from None
    return parse_squad(doc, str(path))


def read_squad(path: str | Path) -> ColumnRecords:
    """A SQuAD v1.1 file as question records, fingerprinted by its bytes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    data = path.read_bytes()
    columns = read_squad_columns(path, data)
    if not columns["id"]:
        raise DataError(f"{path}: no questions found.")
    return ColumnRecords(columns, str(path), hashlib.sha256(data).hexdigest())


# --- WNUT-16 recast as questions --------------------------------------------------------------------


def bio_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, first word, last word)`` of the entities of BIO tags; an ``I-`` after ``O`` or after
    another type begins an entity (conlleval's reading)."""
    spans: list[list] = []
    previous = "O"
    for i, tag in enumerate(tags):
        if tag == "O":
            previous = "O"
            continue
        prefix, kind = tag[0], tag[2:]
        if prefix == "I" and previous == kind:
            spans[-1][2] = i
        else:
            spans.append([kind, i, i])
        previous = kind
    return [tuple(s) for s in spans]


def recast_entities(tokens: list[str], tags: list[str]) -> list[dict]:
    """One question per entity type present in a sentence, with every span of that type as its gold
    answers (text and character offset in the words joined by single spaces)."""
    context = " ".join(tokens)
    starts = np.cumsum([0] + [len(t) + 1 for t in tokens]).tolist()
    by_type: dict[str, dict[str, list]] = {}
    for kind, first, last in bio_spans(tags):
        start, end = starts[first], starts[last] + len(tokens[last])
        answers = by_type.setdefault(kind, {"text": [], "answer_start": []})
        answers["text"].append(context[start:end])
        answers["answer_start"].append(start)
    return [
        {
            "type": kind,
            "question": WNUT16_QUESTIONS.get(kind, f"Which {kind} is mentioned?"),
            "context": context,
            "answers": answers,
        }
        for kind, answers in sorted(by_type.items())
    ]


def read_wnut16_qa() -> ColumnRecords:
    """``builtin:wnut16-qa``: ONE question per tweet that names an entity, about one of the entity
    types present (drawn with a fixed seed), with every span of that type as its gold answers.

    One question per tweet makes any split of the questions a split of the tweets: the questions held
    out (``data.split``) are about tweets never seen in training.
    """
    from bigmodel.data.conll import read_conll, wnut16_path

    path = wnut16_path()
    rng = np.random.default_rng(WNUT16_QA_SEED)
    names = ("id", "question", "context", "answers", "type", "tweet")
    columns: dict[str, list] = {name: [] for name in names}
    for i, example in enumerate(read_conll(path)):
        questions = recast_entities(example["tokens"], example["tags"])
        if not questions:
            continue
        qa = questions[int(rng.integers(len(questions)))]
        columns["id"].append(f"wnut16-{i + 1}-{qa['type']}")
        columns["tweet"].append(i + 1)
        for key in ("question", "context", "answers", "type"):
            columns[key].append(qa[key])
    digest = hashlib.sha256(path.read_bytes() + b"|wnut16-qa/1").hexdigest()
    return ColumnRecords(columns, "builtin:wnut16-qa", digest)
