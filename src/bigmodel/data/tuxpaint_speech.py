"""``builtin:tuxpaint-speech``: real recorded phrases in 9 languages, for spoken-language identification.

Debian's ``tuxpaint-stamps-default`` installs, beside each stamp picture under
``/usr/share/tuxpaint/stamps/<category>/.../<stamp>.png``, volunteers' recordings of the stamp's
description in several languages: ``<stamp>_desc_<lang>.ogg`` (Ogg Vorbis, 44.1 kHz), whose text is
the ``<lang>.utf8=`` line of ``<stamp>.txt`` ("Un lion."). The 9 languages with hundreds of phrases
are kept — ca, fr, ro, ru, bg, es, be, el, da (7,190 phrases, ~3 h); en, nl, lt and ml have under 100
and are left out. One volunteer recorded each language, so a model may learn the voice as much as
the language: the recipe's figure is language-and-speaker identification, and the data card says so.

Held-out phrases are chosen by a digest of the stamp's path, so a stamp described in the test split is
never heard in training in any language: 5,662 train, 694 validation, 834 test phrases. GPL-2 (Debian's
copyright file); nothing is downloaded. The fingerprint hashes every file's path and size.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

TUXPAINT_SPEECH = "tuxpaint-speech"
STAMPS = Path("/usr/share/tuxpaint/stamps")
INSTALL = "apt-get install tuxpaint-stamps-default"
LANGUAGES = ("ca", "fr", "ro", "ru", "bg", "es", "be", "el", "da")
HELD_OUT = {"validation": range(0, 10), "test": range(10, 20)}  # buckets of 100, by the stamp's digest
_RECORDING = re.compile(r"^(?P<stamp>.+)_desc_(?P<lang>[a-z]{2})\.ogg$")


def held_out_split(stamp: str) -> str:
    """``train``, ``validation`` or ``test`` for a stamp (its path under the stamps folder, no suffix)."""
    bucket = int.from_bytes(hashlib.sha256(stamp.encode()).digest()[:8], "big") % 100
    return next((split for split, buckets in HELD_OUT.items() if bucket in buckets), "train")


def phrase_text(txt: Path, lang: str) -> str:
    """The ``<lang>.utf8=`` line of a stamp's description file, or "" where it has none."""
    try:
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    prefix = f"{lang}.utf8="
    return next((line[len(prefix) :].strip() for line in lines if line.startswith(prefix)), "")


def read_recordings(
    stamps: str | Path = STAMPS, languages=LANGUAGES, where: str = f"builtin:{TUXPAINT_SPEECH}"
) -> dict[str, ColumnRecords]:
    """The recordings as ``{"train", "validation", "test"}`` records with columns ``audio`` (the Ogg
    file's path), ``label`` (the language code), ``text`` (the phrase, "" where the stamp's .txt has no
    line for it) and ``stamp``."""
    stamps = Path(stamps)
    if not stamps.is_dir():
        raise DataError(f"data.source '{where}': '{stamps}' is not there; install it: {INSTALL}.")
    digest = hashlib.sha256()
    columns = {split: {"audio": [], "label": [], "text": [], "stamp": []} for split in ("train", *HELD_OUT)}
    for path in sorted(stamps.rglob("*_desc_*.ogg")):
        match = _RECORDING.match(path.name)
        if match is None or match["lang"] not in languages:
            continue
        stamp = str(path.parent.relative_to(stamps) / match["stamp"])
        digest.update(f"{stamp}\0{match['lang']}\0{path.stat().st_size}\0".encode())
        split = columns[held_out_split(stamp)]
        split["audio"].append(str(path))
        split["label"].append(match["lang"])
        split["text"].append(phrase_text(path.with_name(f"{match['stamp']}.txt"), match["lang"]))
        split["stamp"].append(stamp)
    if not columns["train"]["audio"]:
        raise DataError(
            f"data.source '{where}': no '<stamp>_desc_<lang>.ogg' recording in {stamps} for "
            f"{', '.join(languages)}; install them: {INSTALL}."
        )
    fingerprint = digest.hexdigest()
    return {split: ColumnRecords(c, f"{where} ({split})", fingerprint) for split, c in columns.items()}


def read_tuxpaint_speech() -> dict[str, ColumnRecords]:
    """``builtin:tuxpaint-speech`` from the installed Debian package."""
    return read_recordings()


def tuxpaint_installed() -> bool:
    return STAMPS.is_dir() and any(STAMPS.rglob("*_desc_fr.ogg"))
