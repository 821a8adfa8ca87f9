"""Semantic-role column files (CoNLL-2012 / OntoNotes ``*_conll``, CoNLL-2005 props) as records.

One record per *predicate frame*: ``{"tokens": [...], "predicate_index": i, "tags": [...], "line": N}``
with BIO tags over the frame's argument labels (``B-ARG0``, ``I-ARG0``, ``B-V``, ``O``, ...); a
sentence with three predicates gives three records. ``line`` is where the sentence starts.

Both formats hold one word per line, a blank line between sentences, and one column of bracketed
spans per predicate: ``(ARG0*`` opens an argument on this word, ``*`` continues (or is outside), ``*)``
closes it, ``(V*)`` is a one-word span. The predicate of a column is the word its ``(V`` span begins
on. Nested spans inside one column are refused (PropBank frames in these files do not nest).

- CoNLL-2012 (``.gold_conll``, ``_conll``; what AllenNLP's ``Ontonotes`` reader reads): columns split
  on whitespace — 0 document id, 1 part, 2 word index, 3 word, 4 POS, 5 parse bit, 6 predicate lemma,
  7 frameset id, 8 word sense, 9 speaker, 10 named entities, 11..N-2 one argument column per
  predicate, N-1 coreference. ``#begin document`` / ``#end document`` lines are skipped.
- CoNLL-2005 (the ``words`` and ``props`` files pasted side by side, as srl-eval.pl's users do): 0 word,
  1 the target verb's lemma or ``-``, 2.. one argument column per predicate (as many as rows with a
  target).

Every damaged line is a :class:`DataError` naming the file and the line.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

FORMATS = ("2012", "2005")
FIRST_ARG_COLUMN = {"2012": 11, "2005": 2}
_CELL = re.compile(r"^((?:\([^()*\s]+)*)\*(\)*)$")  # "(ARG0(X*))": opens, star, closes


def brackets_to_bio(cells: list[str], where: str = "") -> list[str]:
    """One predicate's column of bracketed spans as BIO tags: ``["(ARG0*", "*)", "(V*)", "*"]`` ->
    ``["B-ARG0", "I-ARG0", "B-V", "O"]``.

    Raises:
        DataError: a cell that is not ``(LABEL*``, ``*``, ``*)`` or ``(LABEL*)``, a nested or unclosed
            span, or a close without an open; ``where(i)`` names the word (``where`` is prefixed).
    """
    tags, label = [], None
    for i, cell in enumerate(cells):
        match = _CELL.match(cell)
        if match is None:
            raise DataError(
                f"{where}word {i + 1}: {cell!r} is not an argument cell ((LABEL*, *, *) or (LABEL*))."
            )
        opens = [x for x in match.group(1).split("(") if x]
        closes = len(match.group(2))
        if len(opens) > 1 or closes > 1 or (opens and label is not None):
            raise DataError(f"{where}word {i + 1}: {cell!r} nests argument spans, which is not supported.")
        if opens:
            label = opens[0]
            tags.append(f"B-{label}")
        elif label is not None:
            tags.append(f"I-{label}")
        else:
            tags.append("O")
        if closes:
            if label is None:
                raise DataError(f"{where}word {i + 1}: {cell!r} closes a span that was never opened.")
            label = None
    if label is not None:
        raise DataError(f"{where}the span {label!r} is not closed by the end of the sentence.")
    return tags


def parse_srl(lines, where: str, kind: str = "2012") -> dict[str, list]:
    """Columns ``tokens``, ``predicate_index``, ``tags``, ``line`` (one entry per predicate frame).

    Args:
        lines: the file's lines (with or without newlines).
        where: the file's name, for messages.
        kind: ``"2012"`` (OntoNotes) or ``"2005"`` (words + props).
    """
    if kind not in FORMATS:
        raise DataError(f"format {kind!r}: allowed: {', '.join(FORMATS)}.")
    first = FIRST_ARG_COLUMN[kind]
    out: dict[str, list] = {"tokens": [], "predicate_index": [], "tags": [], "line": []}
    rows: list[tuple[int, list[str]]] = []

    def finish():
        if rows:
            _frames(rows, where, kind, first, out)
        rows.clear()

    for line_no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            finish()
            continue
        if kind == "2012" and line.startswith("#"):  # #begin document / #end document
            finish()
            continue
        fields = line.split()
        least = first + 1 if kind == "2012" else first  # 2012 always has the coreference column
        if len(fields) < least:
            raise DataError(
                f"{where}: line {line_no} has {len(fields)} column(s); a CoNLL-{kind} line has at least "
                f"{least}: {line[:80]!r}."
            )
        if rows and len(fields) != len(rows[0][1]):
            raise DataError(
                f"{where}: line {line_no} has {len(fields)} columns, the sentence's first line (line "
                f"{rows[0][0]}) has {len(rows[0][1])}: {line[:80]!r}."
            )
        rows.append((line_no, fields))
    finish()
    return out


def _frames(rows: list[tuple[int, list[str]]], where: str, kind: str, first: int, out: dict) -> None:
    words = [fields[3] if kind == "2012" else fields[0] for _, fields in rows]
    width = len(rows[0][1])
    last = width - 1 if kind == "2012" else width  # 2012: the last column is coreference
    start = rows[0][0]
    if kind == "2005":
        targets = sum(fields[1] != "-" for _, fields in rows)
        if targets != last - first:
            raise DataError(
                f"{where}: sentence at line {start} has {targets} target verb(s) in column 2 but "
                f"{last - first} argument column(s)."
            )
    for column in range(first, last):
        cells = [fields[column] for _, fields in rows]
        try:
            tags = brackets_to_bio(cells)
        except DataError as exc:
            word = re.match(r"word (\d+)", str(exc))
            line = rows[int(word.group(1)) - 1][0] if word else start
            raise DataError(f"{where}: line {line}, column {column + 1}: {exc}") from None
        verbs = [i for i, t in enumerate(tags) if t == "B-V"]
        if len(verbs) != 1:
            raise DataError(
                f"{where}: sentence at line {start}, column {column + 1}: a predicate column needs exactly "
                f"one (V*) span, found {len(verbs)}."
            )
        out["tokens"].append(words)
        out["predicate_index"].append(verbs[0])
        out["tags"].append(tags)
        out["line"].append(start)


def read_srl_columns(path: Path, data: bytes | None = None) -> dict[str, list]:
    """The ``conll2012:PATH`` source: a UTF-8 CoNLL-2012 file (or CoNLL-2005 if its name ends ``.props``
    or ``.2005``); ``data``: its bytes, if read."""
    path = Path(path)
    data = path.read_bytes() if data is None else data
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start} (line {line}). Re-save it as UTF-8."
        ) from None
    kind = "2005" if path.suffix.lower() in (".props", ".2005") else "2012"
    return parse_srl(text.split("\n"), str(path), kind)


def read_srl(path: str | Path, kind: str | None = None) -> ColumnRecords:
    """A CoNLL-2012 (or ``kind="2005"``) file as records, one per predicate frame."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    data = path.read_bytes()
    if kind is None:
        columns = read_srl_columns(path, data)
    else:
        columns = parse_srl(data.decode("utf-8-sig").split("\n"), str(path), kind)
    if not columns["tokens"]:
        raise DataError(f"{path}: no predicate frames found.")
    return ColumnRecords(columns, str(path), hashlib.sha256(data).hexdigest())


# --- builtin:srl-templates: synthetic frames for a recipe that trains -------------------------------

_AGENTS = ["the farmer", "Alice", "Bob", "the old teacher", "our neighbours", "a young doctor", "the company",
           "my sister", "the committee", "Carlos", "the tired students", "a journalist"]  # fmt: skip
_THINGS = ["a new car", "the letter", "bread", "the report", "three apples", "the old house", "a ticket",
           "the contract", "some flowers", "the keys", "a small boat", "the plan"]  # fmt: skip
_VERBS = ["bought", "sold", "wrote", "found", "lost", "painted", "signed", "cooked", "read", "repaired"]
_SAY = ["said", "claimed", "thought", "announced"]
_PLACES = ["in Paris", "at the market", "near the river", "in the office", "at home", "in Lagos"]
_TIMES = ["yesterday", "last week", "on Monday", "this morning", "in 2019"]
SRL_TEMPLATES = {
    "about": "Synthetic, not a real corpus: 3,000 template sentences ('the farmer bought bread at the "
    "market yesterday', 'Alice said that Bob sold the keys') with PropBank-style ARG0/ARG1/ARGM-LOC/"
    "ARGM-TMP/V frames, one record per predicate (about 4,000 frames), generated deterministically "
    "(seed 0) by bigmodel; for a semantic-role recipe that trains on a CPU. Public domain.",
}


def _phrase(text: str, role: str | None) -> tuple[list[str], list[str]]:
    words = text.split()
    if role is None:
        return words, ["O"] * len(words)
    return words, [f"B-{role}"] + [f"I-{role}"] * (len(words) - 1)


def srl_template_columns(n: int = 3000, seed: int = 0) -> dict[str, list]:
    """``n`` template sentences as frame columns (``tokens``, ``predicate_index``, ``tags``, ``line``:
    the sentence's number). Some sentences embed a clause ("X said that Y verb Z") and so hold two
    frames: the predicate indicator is what tells them apart."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"tokens": [], "predicate_index": [], "tags": [], "line": []}
    pick = lambda items: items[int(rng.integers(len(items)))]  # noqa: E731
    for s in range(n):
        agent, verb, thing = pick(_AGENTS), pick(_VERBS), pick(_THINGS)
        extras = []
        if rng.random() < 0.5:
            extras.append((pick(_PLACES), "ARGM-LOC"))
        if rng.random() < 0.5:
            extras.append((pick(_TIMES), "ARGM-TMP"))
        rng.shuffle(extras)
        inner = [(agent, "ARG0"), (verb, "V"), (thing, "ARG1"), *extras]
        if rng.random() < 0.25:  # "the thing was verb by the agent"
            inner = [(thing, "ARG1"), ("was", None), (verb, "V"), (f"by {agent}", "ARG0"), *extras]
        if rng.random() < 0.35:  # embedded under a verb of saying: two frames
            speaker, say = pick([a for a in _AGENTS if a != agent]), pick(_SAY)
            clause = [("that", None), *inner]
            inner_words = [w for text, _ in clause for w in text.split()]
            outer = [(speaker, "ARG0"), (say, "V"), (" ".join(inner_words), "ARG1")]
            frames = [outer, [(speaker, None), (say, None), *clause]]
        else:
            frames = [inner]
        for frame in frames:
            words, tags = [], []
            for text, role in frame:
                w, t = _phrase(text, role)
                words += w
                tags += t
            out["tokens"].append(words)
            out["predicate_index"].append(tags.index("B-V"))
            out["tags"].append(tags)
            out["line"].append(s + 1)
    return out


def read_srl_templates() -> ColumnRecords:
    """``builtin:srl-templates`` (synthetic; see :data:`SRL_TEMPLATES`)."""
    columns = srl_template_columns()
    digest = hashlib.sha256(repr(columns["tags"]).encode() + repr(columns["tokens"]).encode()).hexdigest()
    return ColumnRecords(columns, "builtin:srl-templates", digest)
