"""CoNLL-2012 / CoNLL-2005 semantic-role columns -> one record per predicate frame; brackets -> BIO;
damaged lines named by file and line; the conll2012: source; builtin:srl-templates."""

from __future__ import annotations

import pytest

from bigmodel.data.conll2012 import brackets_to_bio, parse_srl, read_srl, srl_template_columns
from bigmodel.data.sources import load_source
from bigmodel.errors import DataError

# OntoNotes 5 / CoNLL-2012 layout: doc, part, word index, word, POS, parse bit, predicate lemma,
# frameset, sense, speaker, NE, one argument column per predicate, coreference.
ROWS_2012 = [
    ("0", "The", "DT", "(TOP(S(NP*", "-", "-", "(ARG0*", "*", "(0"),
    ("1", "cat", "NN", "*)", "-", "-", "*)", "*", "0)"),
    ("2", "chased", "VBD", "(VP*", "chase", "01", "(V*)", "*", "-"),
    ("3", "the", "DT", "(NP(NP*", "-", "-", "(ARG1*", "(ARG0*", "(1"),
    ("4", "mouse", "NN", "*)", "-", "-", "*", "*)", "1)"),
    ("5", "that", "WDT", "(SBAR(WHNP*)", "-", "-", "*", "(R-ARG0*)", "-"),
    ("6", "squeaked", "VBD", "(S(VP*)))))", "squeak", "01", "*)", "(V*)", "-"),
    ("7", ".", ".", "*))", "-", "-", "*", "*", "-"),
]
GOLD_CONLL = (
    "#begin document (bc/cctv/00/cctv_0001); part 000\n"
    + "".join(
        f"bc/cctv/00/cctv_0001   0   {i:>2}   {w:<9} {pos:<4} {parse:<14} {lemma:<7} {frame:<3} "
        "- Speaker#1  *  "
        f"{a:<8} {b:<10} {coref}\n"
        for i, w, pos, parse, lemma, frame, a, b, coref in ROWS_2012
    )
    + "\n"
    + (
        "bc/cctv/00/cctv_0001   0   0   Dogs  NNS  (TOP(S(NP*)  -  -  -  Speaker#1  *  (ARG0*)  -\n"
        "bc/cctv/00/cctv_0001   0   1   bark  VBP  (VP*))  bark  01  1  Speaker#1  *  (V*)  -\n"
        "\n#end document\n"
    )
)

# CoNLL-2005: the words file and the props file pasted side by side (word, target lemma, one column
# per predicate).
PROPS_2005 = """\
The        -       (A0*
economy    -       *)
's         -       *
temperature -      *
will       -       (AM-MOD*)
be         -       *
taken      take    (V*)
.          -       *

He         -       (A0*)
said       say     (V*)
so         -       (A1*)
"""


def test_conll2012_gives_one_record_per_predicate(tmp_path):
    path = tmp_path / "nt.gold_conll"
    path.write_text(GOLD_CONLL)
    records = read_srl(path)
    assert len(records) == 3
    words = ["The", "cat", "chased", "the", "mouse", "that", "squeaked", "."]
    assert records[0] == {
        "tokens": words, "predicate_index": 2, "line": 2,
        "tags": ["B-ARG0", "I-ARG0", "B-V", "B-ARG1", "I-ARG1", "I-ARG1", "I-ARG1", "O"],
    }  # fmt: skip
    assert records[1]["predicate_index"] == 6
    assert records[1]["tags"] == ["O", "O", "O", "B-ARG0", "I-ARG0", "B-R-ARG0", "B-V", "O"]
    assert records[2] == {"tokens": ["Dogs", "bark"], "predicate_index": 1, "tags": ["B-ARG0", "B-V"],
                          "line": 11}  # fmt: skip


def test_conll2005_props(tmp_path):
    path = tmp_path / "dev.props"
    path.write_text(PROPS_2005)
    records = read_srl(path)
    assert [r["predicate_index"] for r in records] == [6, 1]
    assert records[0]["tags"] == ["B-A0", "I-A0", "O", "O", "B-AM-MOD", "O", "B-V", "O"]
    assert records[1] == {"tokens": ["He", "said", "so"], "predicate_index": 1,
                          "tags": ["B-A0", "B-V", "B-A1"], "line": 10}  # fmt: skip
    assert parse_srl(PROPS_2005.splitlines(), "x", "2005")["tags"] == records.column("tags")


def test_brackets_to_bio():
    assert brackets_to_bio(["(ARG0*", "*", "*)", "(V*)", "*", "(ARGM-TMP*)"]) == [
        "B-ARG0", "I-ARG0", "I-ARG0", "B-V", "O", "B-ARGM-TMP"]  # fmt: skip
    assert brackets_to_bio(["(A1*", "*)", "(A1*)"]) == ["B-A1", "I-A1", "B-A1"]  # adjacent, same label
    for cells, message in [
        (["(A0*", "*"], "'A0' is not closed"),
        (["*)"], "word 1: '\\*\\)' closes a span that was never opened"),
        (["(A0(A1*))"], "word 1: .* nests"),
        (["(A0*", "(A1*)"], "word 2: .* nests"),
        (["A0"], "word 1: 'A0' is not an argument cell"),
    ]:
        with pytest.raises(DataError, match=message):
            brackets_to_bio(cells)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.replace("Speaker#1  *  (ARG0*)  -", "Speaker#1  *  (ARG0*)"),
         r"line 12 has 13 columns, the sentence's first line \(line 11\) has 12"),
        (lambda t: t.replace("(V*)  -", "(V*  -"), r"nt.gold_conll: line 11, column 12: .*'V' is not closed"),
        (lambda t: t.replace("*)       *   ", "*)  ARG1  ", 1), r"line 3, column 13: word 2: 'ARG1'"),
        (lambda t: t.replace("(V*)  -", "*  -"), r"sentence at line 11, column 12: .* exactly one \(V\*\)"),
        (lambda t: t.replace("bark  VBP", "bark"), r"line 12 has 12 columns, .* \(line 11\) has 13"),
        (lambda t: "a b c\n", r"line 1 has 3 column\(s\); a CoNLL-2012 line has at least 12"),
    ],
)  # fmt: skip
def test_damaged_lines_name_the_file_and_line(change, message, tmp_path):
    path = tmp_path / "nt.gold_conll"
    text = change(GOLD_CONLL)
    assert text != GOLD_CONLL
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_srl(path)


def test_props_count_targets(tmp_path):
    path = tmp_path / "x.props"
    path.write_text(PROPS_2005.replace("taken      take", "taken      -"))
    with pytest.raises(DataError, match=r"x.props: sentence at line 1 has 0 target verb\(s\) .* 1 argument"):
        read_srl(path)
    path.write_bytes(b"He - (A0*)\nsaid say (V*)\n\xff\n")
    with pytest.raises(DataError, match=r"not UTF-8 .*\(line 3\)"):
        read_srl(path)


def test_conll2012_source(tmp_path):
    path = tmp_path / "train.gold_conll"
    path.write_text(GOLD_CONLL)
    records = load_source(f"conll2012:{path}")["data"]
    assert len(records) == 3 and records.column("predicate_index") == [2, 6, 1]


def test_srl_templates_are_deterministic_bio_frames():
    a, b = srl_template_columns(200), srl_template_columns(200)
    assert a == b and len(a["tokens"]) > 200  # some sentences hold two frames
    labels = {t[2:] for tags in a["tags"] for t in tags if t != "O"}
    assert labels == {"ARG0", "ARG1", "ARGM-LOC", "ARGM-TMP", "V"}
    for words, p, tags in zip(a["tokens"], a["predicate_index"], a["tags"], strict=True):
        assert len(words) == len(tags) and tags[p] == "B-V" and tags.count("B-V") == 1
    shared = [i for i in range(1, len(a["line"])) if a["line"][i] == a["line"][i - 1]]
    assert shared and all(a["tokens"][i] == a["tokens"][i - 1] for i in shared)
