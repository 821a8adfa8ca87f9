"""``builtin:pocketsphinx-speech``: a few real human recordings with transcripts, for checking a speech
model on speech it was not trained for.

Debian's ``pocketsphinx-testdata`` (BSD-2, CMU) installs under ``/usr/share/pocketsphinx/test/data/``
five LibriVox clips of a man reading *Sense and Sensibility* (``librivox/``, 16 kHz, 2.5-7 s) and five
short card names ("eight of spades four of clubs seven of hearts", ``cards/``, 16 kHz), each folder
with a Sphinx transcription file: one ``<s> words </s> (file id)`` line per clip.

Ten clips are far too few to train on; they are an out-of-domain test (another speaker, another
microphone, read prose rather than prompts), one table without splits, so
``bigmodel evaluate RUN --data builtin:pocketsphinx-speech`` measures a recogniser on all of it.
Transcripts are normalised as the Asterisk prompts are (:func:`asterisk.normalize_transcript`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bigmodel.data.asterisk import normalize_transcript
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

POCKETSPHINX_SPEECH = "pocketsphinx-speech"
TEST_DATA = Path("/usr/share/pocketsphinx/test/data")
SETS = {"librivox": "transcription", "cards": "cards.transcription"}  # folder -> its transcription file
INSTALL = "apt-get install pocketsphinx-testdata"

_LINE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()]+)\)\s*$")


def read_transcription(path: Path) -> list[tuple[str, str]]:
    """``(file id, text)`` per line of a Sphinx transcription file, ``<s>``/``</s>`` and other markers in
    angle brackets dropped; a line without its ``(file id)`` is refused naming its number."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the transcription: {exc.strerror or exc}.") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        found = _LINE.match(line)
        if found is None:
            raise DataError(f"{path}: line {number}: expected '<s> words </s> (file id)', got {line[:60]!r}.")
        entries.append((found["id"].strip(), " ".join(re.sub(r"<[^>]*>", " ", found["text"]).split())))
    return entries


def read_pocketsphinx_speech(root: str | Path = TEST_DATA) -> ColumnRecords:
    """All clips as one table: ``audio`` (the WAV's path), ``text`` (normalised) and ``set``
    (``librivox`` or ``cards``). The fingerprint hashes the transcriptions and every WAV."""
    root, where = Path(root), f"builtin:{POCKETSPHINX_SPEECH}"
    if not all((root / folder / name).is_file() for folder, name in SETS.items()):
        raise DataError(f"data.source '{where}': the recordings are not in {root}; install them: {INSTALL}.")
    columns, digest = {"audio": [], "text": [], "set": []}, hashlib.sha256()
    for folder, name in SETS.items():
        for file_id, raw in read_transcription(root / folder / name):
            wav = root / folder / f"{Path(file_id).name}.wav"
            if not wav.is_file():
                raise DataError(f"{root / folder / name}: names '{file_id}', but {wav} is not there.")
            text = normalize_transcript(raw)
            digest.update(f"{folder}\0{file_id}\0{text}\0".encode())
            digest.update(wav.read_bytes())
            columns["audio"].append(str(wav))
            columns["text"].append(text)
            columns["set"].append(folder)
    return ColumnRecords(columns, where, digest.hexdigest())


def pocketsphinx_installed() -> bool:
    return all((TEST_DATA / folder / name).is_file() for folder, name in SETS.items())
