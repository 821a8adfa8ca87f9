"""Parallel text for translation: SWORD Bible modules read verse by verse, and line-aligned files.

**SWORD zText modules** (the format of Debian's ``sword-text-*`` packages, read here without
libsword). A module folder holds, per testament (``ot``, ``nt``), three files:

- ``.bzs``: the compressed blocks, 12 bytes each: ``<III`` = offset in ``.bzz``, compressed size,
  uncompressed size;
- ``.bzv``: one 10-byte entry per verse slot: ``<IIH`` = block number, offset in the uncompressed
  block, length in bytes (0: an empty slot);
- ``.bzz``: the zlib-compressed blocks, one after another.

The slots follow the module's versification: two header slots per testament, then per book an
introduction slot, per chapter an introduction slot, then the chapter's verses. The introduction
slots carry OSIS milestones (``<div type="book" osisID="Gen"/>``, ``<chapter osisID="Gen.1"
sID=.../>``); :func:`verse_slots` reads them to tell verses from introductions and to name each verse's
book. Two modules with the same versification (the KJV's, here) align slot for slot.

``builtin:kjv-rv1909``: the King James Version (``engKJV2006eb``) and the Reina-Valera 1909
(``spaRV1909eb``), both public domain, verse *i* paired with verse *i*, OSIS markup stripped, pairs
with an empty side dropped: records ``{source (English), target (Spanish), book}``. Whole books are
held out (:data:`KJV_HELD_OUT`), so no held-out verse shares a chapter with a training one.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import struct
import zlib
from pathlib import Path

from bigmodel.data.records import ColumnRecords, Records
from bigmodel.errors import DataError

SWORD_INSTALL = "apt-get install sword-text-kjv sword-text-sparv"
KJV_MODULES = {"source": "engKJV2006eb", "target": "spaRV1909eb"}  # English -> Spanish
# Whole books held out (OSIS ids). Validation ~1.5k verses, test ~2k, mixing narrative, wisdom,
# gospel and letter; Mark is not in test (it parallels Matthew and Luke too closely), John is.
KJV_HELD_OUT = {
    "validation": ("Josh", "Mark", "Eph"),
    "test": ("Ruth", "Prov", "John", "Gal"),
}

_BOOK = re.compile(r'<div\b(?=[^>]*\btype="book")(?=[^>]*\bsID=)[^>]*>')  # a book's start, not its end
_CHAPTER = re.compile(r"<chapter\b(?=[^>]*\bsID=)[^>]*>")  # a chapter's start milestone
_OSIS_ID = re.compile(r'\bosisID="([^".]+)')
_DROPPED = re.compile(r"<note\b.*?</note>|<title\b.*?</title>", re.S)
_TAG = re.compile(r"<[^>]*>")


def read_ztext(folder: str | Path) -> list[str]:
    """Every slot of a zText module (the Old Testament's, then the New's), as raw OSIS text.

    Raises:
        DataError: a file missing or damaged (naming it and the slot).
    """
    folder = Path(folder)
    slots: list[str] = []
    for testament in ("ot", "nt"):
        paths = {ext: folder / f"{testament}.{ext}" for ext in ("bzs", "bzv", "bzz")}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise DataError(f"{folder}: not a SWORD zText module: missing {', '.join(missing)}.")
        bzs, bzv, bzz = (paths[ext].read_bytes() for ext in ("bzs", "bzv", "bzz"))
        if len(bzs) % 12 or len(bzv) % 10:
            raise DataError(f"{folder}: damaged {testament}.bzs or {testament}.bzv (truncated entries).")
        blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs), 12)]
        cache: dict[int, bytes] = {}
        for i in range(0, len(bzv), 10):
            block, offset, size = struct.unpack_from("<IIH", bzv, i)
            if size == 0:
                slots.append("")
                continue
            if block not in cache:
                if block >= len(blocks):
                    raise DataError(f"{paths['bzv']}: slot {i // 10} names block {block} of {len(blocks)}.")
                start, csize, _ = blocks[block]
                try:
                    cache[block] = zlib.decompress(bzz[start : start + csize])
                except zlib.error as exc:
                    raise DataError(
                        f"{paths['bzz']}: block {block} cannot be decompressed ({exc})."
                    ) from None
            data = cache[block][offset : offset + size]
            slots.append(data.decode("utf-8", "replace"))
    return slots


def strip_osis(text: str) -> str:
    """The plain text of an OSIS verse: notes and titles dropped, tags removed, entities decoded,
    paragraph marks (¶) removed, whitespace collapsed."""
    text = _TAG.sub("", _DROPPED.sub("", text))
    text = html.unescape(text).replace("\u00b6", " ")
    return " ".join(text.split())


def verse_slots(slots: list[str]) -> list[str | None]:
    """The book (OSIS id) of each verse slot, None for header and introduction slots.

    A slot holding a book ``<div type="book">`` or a chapter start milestone is an introduction;
    verses follow their chapter's introduction.
    """
    books: list[str | None] = []
    book = None
    for slot in slots:
        marker = _BOOK.search(slot) or _CHAPTER.search(slot)
        if marker is not None:
            found = _OSIS_ID.search(marker.group(0))
            book = found.group(1) if found else book
            books.append(None)
        else:
            books.append(book)
    return books


def sword_folder(module: str) -> Path:
    """The folder of an installed zText module: under ``$SWORD_PATH`` (SWORD's own variable) if set,
    else Debian's ``/usr/share/sword``."""
    root = Path(os.environ.get("SWORD_PATH") or "/usr/share/sword")
    return root / "modules" / "texts" / "ztext" / module


def kjv_installed() -> bool:
    """Whether both SWORD modules of ``builtin:kjv-rv1909`` are installed."""
    return all(sword_folder(module).is_dir() for module in KJV_MODULES.values())


def read_verse_pairs(source: str | Path, target: str | Path, where: str) -> dict[str, list]:
    """Columns ``source``, ``target``, ``book`` of two slot-aligned zText modules' verses, pairs with
    an empty side dropped. Books come from the source module's milestones (else the target's)."""
    src, tgt = read_ztext(source), read_ztext(target)
    if len(src) != len(tgt):
        raise DataError(
            f"{where}: the modules have {len(src)} and {len(tgt)} verse slots; they do not share a "
            "versification, so verse i is not verse i."
        )
    books = verse_slots(src)
    if not any(books):
        books = verse_slots(tgt)
    columns: dict[str, list] = {"source": [], "target": [], "book": []}
    for book, a, b in zip(books, src, tgt, strict=True):
        if book is None:
            continue
        a, b = strip_osis(a), strip_osis(b)
        if a and b:
            columns["source"].append(a)
            columns["target"].append(b)
            columns["book"].append(book)
    return columns


def split_by_book(columns: dict[str, list], held_out: dict[str, tuple[str, ...]], where: str,
                  digest: str) -> dict[str, Records]:  # fmt: skip
    """``{"train", "validation", "test"}``: the held-out books' rows, the rest train (order kept)."""
    split_of = {book: split for split, books in held_out.items() for book in books}
    parts = {split: {name: [] for name in columns} for split in ("train", *held_out)}
    for i, book in enumerate(columns["book"]):
        part = parts[split_of.get(book, "train")]
        for name, values in columns.items():
            part[name].append(values[i])
    return {
        split: ColumnRecords(cols, f"{where} [{split}]", f"{digest}:{split}") for split, cols in parts.items()
    }


def read_kjv_rv1909() -> dict[str, Records]:
    """``builtin:kjv-rv1909``: KJV English -> Reina-Valera 1909 Spanish verse pairs, whole books held out."""
    where = "builtin:kjv-rv1909"
    folders = {side: sword_folder(module) for side, module in KJV_MODULES.items()}
    for folder in folders.values():
        if not folder.is_dir():
            raise DataError(
                f"data.source '{where}' reads the SWORD modules of the Debian packages sword-text-kjv and "
                f"sword-text-sparv; {folder} is not there: {SWORD_INSTALL} (as root), or set SWORD_PATH to "
                "the folder holding modules/texts/ztext."
            )
    digest = hashlib.sha256()
    for folder in folders.values():
        for path in sorted(folder.iterdir()):
            digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    columns = read_verse_pairs(folders["source"], folders["target"], where)
    if not columns["source"]:
        raise DataError(f"{where}: no verse pairs in {folders['source']} and {folders['target']}.")
    return split_by_book(columns, KJV_HELD_OUT, where, digest.hexdigest())


def read_parallel_files(source: str | Path, target: str | Path) -> ColumnRecords:
    """Two line-aligned plain-text files (UTF-8) as records ``{source, target}``; blank lines on both
    sides are skipped, a blank line on one side only is refused naming the line."""
    sides = []
    for path in (source, target):
        try:
            sides.append(Path(path).read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read as UTF-8 text ({exc}).") from None
    if len(sides[0]) != len(sides[1]):
        raise DataError(
            f"{source} and {target}: {len(sides[0])} and {len(sides[1])} lines; parallel files need one "
            "line per sentence on each side."
        )
    columns: dict[str, list] = {"source": [], "target": []}
    for line, (a, b) in enumerate(zip(*sides, strict=True), start=1):
        a, b = a.strip(), b.strip()
        if not a and not b:
            continue
        if not a or not b:
            empty = source if not a else target
            raise DataError(f"{empty}: line {line} is blank but its pair is not; the files are misaligned.")
        columns["source"].append(a)
        columns["target"].append(b)
    digest = hashlib.sha256("\0".join(columns["source"] + columns["target"]).encode()).hexdigest()
    return ColumnRecords(columns, f"{source} | {target}", digest)
