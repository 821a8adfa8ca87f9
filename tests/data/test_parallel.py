"""SWORD zText reading (on a module written here in the real binary format), OSIS stripping, the
book hold-out of builtin:kjv-rv1909, and line-aligned parallel files."""

import struct
import zlib

import pytest

from bigmodel.data import parallel
from bigmodel.errors import DataError

OT = [  # slots: 2 testament headers, then per book an intro, per chapter an intro, then verses
    "",
    '<milestone type="x-importer"/>',
    '<div osisID="Gen" sID="g1" type="book"/><title type="main">GENESIS</title>',
    '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>',
    'In the <w lemma="strong:H7225">beginning</w> God created.<note type="x">a note</note>',
    "¶ And the earth &amp; the sea.",
    "",  # an empty verse: dropped
    '<div osisID="Ruth" sID="r1" type="book"/>',
    '<chapter n="1" osisID="Ruth.1" sID="Ruth.1"/>',
    "Now it came to pass.",
    'And Elimelech died.<chapter eID="Ruth.1"/><div eID="r1" type="book"/>',
]
NT = ["", "", '<div osisID="Mark" sID="m1" type="book"/>', '<chapter osisID="Mark.1" sID="Mark.1"/>',
      "The beginning of the gospel."]  # fmt: skip


def write_ztext(folder, slots_by_testament, per_block=3):
    """A zText module: verses packed into zlib blocks of ``per_block`` slots."""
    folder.mkdir(parents=True)
    for testament, slots in slots_by_testament.items():
        bzs, bzv, bzz = bytearray(), bytearray(), bytearray()
        for start in range(0, len(slots), per_block):
            block, entries = bytearray(), []
            for text in slots[start : start + per_block]:
                data = text.encode()
                entries.append((len(block), len(data)))
                block += data
            number = start // per_block
            for offset, size in entries:
                bzv += struct.pack("<IIH", number, offset if size else 0, size)
            packed = zlib.compress(bytes(block))
            bzs += struct.pack("<III", len(bzz), len(packed), len(block))
            bzz += packed
        for ext, data in (("bzs", bzs), ("bzv", bzv), ("bzz", bzz)):
            (folder / f"{testament}.{ext}").write_bytes(bytes(data))
    return folder


def spanish(slots):
    out = []
    for text in slots:
        out.append(text if "<div" in text or "<chapter" in text or not text.strip() else f"ES {text}")
    return out


@pytest.fixture
def sword(tmp_path, monkeypatch):
    root = tmp_path / "sword"
    base = root / "modules" / "texts" / "ztext"
    write_ztext(base / "engKJV2006eb", {"ot": OT, "nt": NT})
    write_ztext(base / "spaRV1909eb", {"ot": spanish(OT), "nt": spanish(NT)}, per_block=2)
    monkeypatch.setenv("SWORD_PATH", str(root))
    return base


def test_read_ztext_round_trips_every_slot(sword):
    assert parallel.read_ztext(sword / "engKJV2006eb") == OT + NT


def test_strip_osis_drops_tags_notes_titles_and_marks():
    assert parallel.strip_osis(OT[4]) == "In the beginning God created."
    assert parallel.strip_osis(OT[5]) == "And the earth & the sea."
    assert parallel.strip_osis(OT[2]) == ""
    assert parallel.strip_osis(" a \n  <i>b</i>  ") == "a b"


def test_verse_slots_name_books_and_skip_introductions():
    books = parallel.verse_slots(OT)
    assert books[:4] == [None, None, None, None]
    assert books[4:7] == ["Gen"] * 3
    assert books[7:9] == [None, None] and books[9:] == ["Ruth", "Ruth"]  # a book's end marker is a verse


def test_builtin_pairs_and_book_hold_out(sword, monkeypatch):
    monkeypatch.setattr(parallel, "KJV_HELD_OUT", {"validation": ("Mark",), "test": ("Ruth",)})
    splits = parallel.read_kjv_rv1909()
    assert set(splits) == {"train", "validation", "test"}
    train = list(splits["train"])
    assert train == [
        {
            "source": "In the beginning God created.",
            "target": "ES In the beginning God created.",
            "book": "Gen",
        },
        {"source": "And the earth & the sea.", "target": "ES And the earth & the sea.", "book": "Gen"},
    ]  # the empty verse is dropped
    assert splits["test"].column("book") == ["Ruth", "Ruth"]
    assert splits["validation"].column("source") == ["The beginning of the gospel."]
    assert splits["train"].fingerprint != splits["test"].fingerprint


def test_published_hold_out_is_whole_books():
    held = [book for books in parallel.KJV_HELD_OUT.values() for book in books]
    assert len(held) == len(set(held)) == 7


def test_missing_packages_name_the_apt_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SWORD_PATH", str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="apt-get install sword-text-kjv sword-text-sparv"):
        parallel.read_kjv_rv1909()
    assert not parallel.kjv_installed()


def test_damaged_module_is_a_data_error(sword):
    (sword / "engKJV2006eb" / "nt.bzv").write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="nt.bzs or nt.bzv"):
        parallel.read_ztext(sword / "engKJV2006eb")
    (sword / "engKJV2006eb" / "ot.bzz").unlink()
    with pytest.raises(DataError, match="not a SWORD zText module"):
        parallel.read_ztext(sword / "engKJV2006eb")


def test_parallel_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("uno\n\ndos\n", encoding="utf-8")
    records = parallel.read_parallel_files(tmp_path / "a.txt", tmp_path / "b.txt")
    assert list(records) == [{"source": "one", "target": "uno"}, {"source": "two", "target": "dos"}]
    (tmp_path / "b.txt").write_text("uno\nx\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="a.txt: line 2 is blank"):
        parallel.read_parallel_files(tmp_path / "a.txt", tmp_path / "b.txt")


@pytest.mark.skipif(not parallel.kjv_installed(), reason="sword-text-kjv / sword-text-sparv not installed")
def test_real_modules():
    splits = parallel.read_kjv_rv1909()
    sizes = {name: len(records) for name, records in splits.items()}
    assert sum(sizes.values()) == 31084 and sizes["validation"] == 1491 and sizes["test"] == 2028
    assert splits["train"][0]["source"] == "In the beginning God created the heaven and the earth."
    assert splits["train"][0]["target"] == "EN el principio crió Dios los cielos y la tierra."
