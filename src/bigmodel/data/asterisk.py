"""``builtin:asterisk-en``: real human speech with transcripts — the Asterisk PBX's English prompts.

Debian's ``asterisk-core-sounds-en-wav`` installs Allison Smith's recorded prompts as 8 kHz mono 16-bit
WAVs under ``/usr/share/asterisk/sounds/en/`` (sub-folders ``digits/``, ``letters/``, ``phonetic/``,
...); ``asterisk-core-sounds-en`` installs their transcripts,
``/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz``, one ``name: text`` line per prompt
(``;`` starts a comment). Both CC-BY-SA-3.0; nothing is downloaded.

Transcripts are normalised for character-level recognition (:func:`normalize_transcript`): notes
(``[beep]``, ``<beep ascending>``, ``(1 second of silence)``, the ``[@]`` after ``letters/at``)
removed, lower case, hyphens and slashes as spaces, only letters, digits, apostrophes and single
spaces kept. A prompt whose text is only a note (a tone, monkeys screaming, silence) or whose WAV is
not installed is left out.

Held-out prompts are chosen by a digest of the normalised text, so the split never changes between
runs or machines and prompts that say the same thing ("Goodbye." is recorded twice) share a split:
about 10 % validation and 10 % test. The fingerprint hashes the transcript file and every WAV.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

ASTERISK_EN = "asterisk-en"
SOUNDS = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
INSTALL = "apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en"
HELD_OUT = {"validation": range(0, 10), "test": range(10, 20)}  # buckets of 100, by the text's digest

_NOTE = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")  # [beep], <beep ascending>, (silence)
_SPACES = re.compile(r"[-/_\s]+")
_KEPT = re.compile(r"[^\w' ]|_")  # \w: letters and digits of any script (and _, dropped too)


def normalize_transcript(text: str) -> str:
    """Lower case; notes in brackets, angle brackets or parentheses removed; hyphens, slashes and white
    space as single spaces; only letters, digits, apostrophes and spaces kept ("Call-Forward on Busy."
    -> "call forward on busy")."""
    text = _SPACES.sub(" ", _NOTE.sub(" ", text).lower())
    return " ".join(_KEPT.sub("", text).split())


def read_transcripts(path: str | Path) -> list[tuple[str, str]]:
    """``(name, raw text)`` per ``name: text`` line of a transcript file (gzip or plain UTF-8); blank
    lines and ``;`` comments skipped. A line without ``: `` is refused naming its number."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the transcripts: {exc.strerror or exc}.") from None
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    entries = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        name, sep, text = line.partition(":")
        if not sep or not name.strip():
            raise DataError(f"{path}: line {number}: expected 'name: text', got {line[:60]!r}.")
        entries.append((name.strip(), text.strip()))
    return entries


def held_out_split(text: str) -> str:
    """``train``, ``validation`` or ``test`` for a normalised transcript, from its SHA-256."""
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100
    return next((split for split, buckets in HELD_OUT.items() if bucket in buckets), "train")


def read_prompts(
    sounds: str | Path = SOUNDS, transcripts: str | Path = TRANSCRIPTS, where: str = f"builtin:{ASTERISK_EN}"
) -> dict[str, ColumnRecords]:
    """The prompts as ``{"train", "validation", "test"}`` records with columns ``audio`` (the WAV's
    path), ``text`` (normalised) and ``name`` (the prompt's name, e.g. ``digits/7``)."""
    sounds, transcripts = Path(sounds), Path(transcripts)
    if not sounds.is_dir() or not transcripts.is_file():
        missing = sounds if not sounds.is_dir() else transcripts
        raise DataError(f"data.source '{where}': '{missing}' is not there; install it: {INSTALL}.")
    digest = hashlib.sha256(transcripts.read_bytes())
    columns = {split: {"audio": [], "text": [], "name": []} for split in ("train", *HELD_OUT)}
    for name, raw in read_transcripts(transcripts):
        text = normalize_transcript(raw)
        wav = sounds / f"{name}.wav"
        if not text or not wav.is_file():
            continue  # a tone or other noise, or a prompt this package does not ship
        digest.update(f"{name}\0{text}\0".encode())
        digest.update(wav.read_bytes())
        split = columns[held_out_split(text)]
        split["audio"].append(str(wav))
        split["text"].append(text)
        split["name"].append(name)
    if not columns["train"]["audio"]:
        raise DataError(f"data.source '{where}': no transcript of {transcripts} names a WAV in {sounds}.")
    fingerprint = digest.hexdigest()
    return {split: ColumnRecords(c, f"{where} ({split})", fingerprint) for split, c in columns.items()}


def read_asterisk_en() -> dict[str, ColumnRecords]:
    """``builtin:asterisk-en`` from the installed Debian packages."""
    return read_prompts()


def asterisk_installed() -> bool:
    return SOUNDS.is_dir() and TRANSCRIPTS.is_file()
