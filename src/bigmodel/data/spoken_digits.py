"""``builtin:spoken-digits``: the digits zero to nine spoken by espeak-ng, split by voice.

Synthetic speech, generated once on this machine (Debian's ``espeak-ng``; nothing is downloaded) into
a cache folder: ``$BIGMODEL_CACHE/spoken-digits/KEY``, else ``$XDG_CACHE_HOME/bigmodel/...``, else
``~/.cache/bigmodel/...``. ``KEY`` digests everything that decides the clips — this module's
generator version, espeak-ng's version, the words, accents, voices, speeds and pitches — so a changed
generator writes a new folder and never reads an old one. Generation writes into a temporary folder
renamed into place when complete (two processes generating at once both succeed; one folder wins).

Each clip is one word: 7 English accents x 34 voice variants x 2 speeds x 2 pitches x 10 digits
(9,520 clips, 22,050 Hz mono 16-bit WAV of 0.2-0.75 s, 175 MB). The split is by voice variant:
train, validation and test use disjoint variants (each in all accents), so test accuracy is
accuracy on voices the model never heard. espeak-ng output is deterministic (same bytes each run).

The fingerprint is the digest of ``clips.json``, which records every clip's SHA-256 when generated;
reading checks that every file is there with its recorded size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

SPOKEN_DIGITS = "spoken-digits"
GENERATOR_VERSION = 2  # part of the cache key: bump when the generation below changes
ESPEAK_INSTALL = "apt-get install espeak-ng"
ESPEAK_TIMEOUT_S = 30.0  # one word takes ~15 ms; a hung synthesiser is an error, not a wait

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ENGLISH_ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
# espeak-ng voice variants (files in espeak-ng-data/voices/!v): formant, pitch-range and breathiness
# settings of men, women, older and whispering speakers and the Klatt synthesiser. Each split mixes
# them; no variant is in two splits.
DIGIT_VOICES = {
    "train": ("m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "f5", "croak", "whisper", "klatt",
              "klatt2", "grandpa", "Annie", "aunty", "linda", "steph", "Andy", "david"),
    "validation": ("m7", "f4", "klatt3", "Alicia", "edward"),
    "test": ("benjamin", "belinda", "whisperf", "grandma", "klatt4", "john", "Andrea"),
}  # fmt: skip


@dataclass(frozen=True)
class SpokenWords:
    """What a generated set holds: ``words`` (label -> the word spoken), in every accent, voice of its
    split, speed (words per minute) and pitch (0-99; espeak's default is 50)."""

    name: str
    words: dict[str, str]
    accents: tuple[str, ...]
    voices: dict[str, tuple[str, ...]]
    speeds: tuple[int, ...]
    pitches: tuple[int, ...]

    @property
    def size(self) -> int:
        voices = sum(len(v) for v in self.voices.values())
        return len(self.words) * len(self.accents) * voices * len(self.speeds) * len(self.pitches)


SPOKEN_DIGITS_SET = SpokenWords(
    name=SPOKEN_DIGITS,
    words={str(i): word for i, word in enumerate(DIGIT_WORDS)},
    accents=ENGLISH_ACCENTS,
    voices=DIGIT_VOICES,
    speeds=(145, 185),  # words per minute: every clip < 1 s, so a 1-second window holds the whole word
    pitches=(35, 65),
)


def cache_root() -> Path:
    """``$BIGMODEL_CACHE``, else ``$XDG_CACHE_HOME/bigmodel``, else ``~/.cache/bigmodel``."""
    root = os.environ.get("BIGMODEL_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bigmodel"


def espeak_installed() -> bool:
    return shutil.which("espeak-ng") is not None


def read_spoken_digits() -> dict[str, ColumnRecords]:
    """The spoken digits as ``{"train", "validation", "test"}`` records, generated on first use."""
    return read_spoken_words(SPOKEN_DIGITS_SET)


def read_spoken_words(
    spec: SpokenWords, cache: str | Path | None = None, progress: bool = True
) -> dict[str, ColumnRecords]:
    """A generated set as ``{split: records}`` with columns ``audio`` (the WAV's path), ``label``,
    ``word``, ``voice`` (``accent+variant``), ``accent``, ``variant``, ``speed`` and ``pitch``; ``where``
    is ``builtin:NAME``.

    Args:
        spec: what to generate.
        cache: the folder sets are cached in (default :func:`cache_root`).
        progress: print generation progress lines on stderr (generation happens once per key).

    Raises:
        DataError: espeak-ng is missing (naming ``apt-get install espeak-ng``), a voice is unknown to it,
            it fails or hangs on a clip (naming the command), or the cache folder cannot be written.
    """
    espeak, version, data_dir = find_espeak(spec.name)
    key = _cache_key(spec, version)
    folder = Path(cache or cache_root()).expanduser() / spec.name / key[:16]
    if not (folder / "clips.json").is_file():
        check_variants(spec.name, {v for vs in spec.voices.values() for v in vs}, data_dir)
        generate_clips(spec.name, _clips(spec), espeak, folder, key, version, GENERATOR_VERSION, progress)
    columns = ("audio", "label", "word", "voice", "accent", "variant", "speed", "pitch")
    return read_clips(spec.name, folder, columns)


def find_espeak(name: str) -> tuple[str, str, Path | None]:
    """espeak-ng's path, version line and voice data folder, for the generated set ``builtin:NAME``.

    Raises:
        DataError: espeak-ng is not on PATH (naming ``apt-get install espeak-ng``) or does not run.
    """
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise DataError(
            f"data.source 'builtin:{name}' is generated with the speech synthesiser espeak-ng, which is "
            f"not installed (no espeak-ng on PATH): {ESPEAK_INSTALL}."
        )
    return (espeak, *_espeak_version(espeak))


def _espeak_version(espeak: str) -> tuple[str, Path | None]:
    """espeak-ng's version line and the voice data folder it names (``Data at: ...``)."""
    try:
        done = subprocess.run([espeak, "--version"], capture_output=True, text=True, timeout=ESPEAK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"'{espeak} --version' failed ({exc}); reinstall it: {ESPEAK_INSTALL}.") from None
    line = done.stdout.strip()
    match = re.search(r"Data at:\s*(\S.*)$", line)
    return line.split("Data at:")[0].strip(), Path(match.group(1).strip()) if match else None


def _cache_key(spec: SpokenWords, espeak_version: str) -> str:
    what = {"generator": GENERATOR_VERSION, "espeak": espeak_version, **asdict(spec)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _clips(spec: SpokenWords) -> list[dict]:
    """Every clip of the set, in a fixed order: split, label, accent, variant, speed, pitch."""
    return [
        {"split": split, "label": label, "word": word, "accent": accent, "variant": variant, "speed": speed,
         "pitch": pitch, "file": f"{split}/{label}/{accent}+{variant}-s{speed}-p{pitch}.wav"}
        for split, variants in spec.voices.items()
        for label, word in spec.words.items()
        for accent in spec.accents
        for variant in variants
        for speed in spec.speeds
        for pitch in spec.pitches
    ]  # fmt: skip


def check_variants(name: str, variants: set[str], data_dir: Path | None) -> None:
    """espeak-ng silently falls back to its default voice for an unknown variant: refuse it here
    (an empty variant is the accent's own voice)."""
    if data_dir is None or not (data_dir / "voices" / "!v").is_dir():
        return  # an unusual install: trust it
    missing = sorted(v for v in variants if v and not (data_dir / "voices" / "!v" / v).is_file())
    if missing:
        raise DataError(
            f"builtin:{name}: espeak-ng has no voice variant {', '.join(missing)} (looked in "
            f"{data_dir / 'voices' / '!v'}); this set needs espeak-ng 1.51's variants: {ESPEAK_INSTALL}."
        )


def voice_name(clip: dict) -> str:
    """espeak-ng's ``-v`` value: ``accent+variant``, or the accent alone for its own voice."""
    return f"{clip['accent']}+{clip['variant']}" if clip["variant"] else clip["accent"]


def generate_clips(name: str, clips: list[dict], espeak: str, folder: Path, key: str, version: str,
                   generator: int, progress: bool, make: Callable[[dict, Path], None] | None = None,
                   tool: str = "espeak") -> None:  # fmt: skip
    """Synthesise every clip (``file``, ``accent``, ``variant``, ``speed``, ``pitch`` and the text in
    ``text`` or ``word``) into a temporary folder renamed to ``folder`` when complete, with
    ``clips.json`` recording each clip's SHA-256 and size.

    Another generator passes ``make(clip, path)``, which writes the clip's file (``espeak`` is then
    unused), and ``tool``, the manifest's key for ``version``."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise DataError(f"builtin:{name}: cannot write the cache folder '{folder.parent}' ({exc}).") from None
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    say(f"builtin:{name}: generating {len(clips):,} clips with {version} into {folder} (once)")
    start, done, step = time.monotonic(), 0, max(1, len(clips) // 10)
    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            write = (
                (lambda c: _synthesise(espeak, c, work, name))
                if make is None
                else (lambda c: _made(make, c, work))
            )
            for clip, digest, size in pool.map(write, clips):
                clip["sha256"], clip["bytes"] = digest, size
                done += 1
                if done % step == 0 or done == len(clips):
                    say(f"  {done:,}/{len(clips):,} clips ({time.monotonic() - start:.0f} s)")
        manifest = {"name": name, "key": key, tool: version, "generator": generator, "clips": clips}
        (work / "clips.json").write_text(json.dumps(manifest, indent=0))
        try:
            work.rename(folder)
        except OSError:  # another process finished first: its folder is the same set
            if not (folder / "clips.json").is_file():
                raise
    except OSError as exc:
        raise DataError(f"builtin:{name}: cannot write the cache folder '{folder}' ({exc}).") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _made(make: Callable[[dict, Path], None], clip: dict, work: Path) -> tuple[dict, str, int]:
    path = work / clip["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    make(clip, path)
    data = path.read_bytes()
    return clip, hashlib.sha256(data).hexdigest(), len(data)


def _synthesise(espeak: str, clip: dict, work: Path, name: str) -> tuple[dict, str, int]:
    path = work / clip["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    # -z: no sentence pause after the word, so a clip ends when the word does
    command = [espeak, "-z", "-v", voice_name(clip), "-s", str(clip["speed"]), "-p", str(clip["pitch"]), "-w",
               str(path), clip["text"] if "text" in clip else clip["word"]]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ESPEAK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataError(
            f"builtin:{name}: espeak-ng took over {ESPEAK_TIMEOUT_S:.0f} s on: {' '.join(command)}"
        ) from None
    data = path.read_bytes() if path.is_file() else b""
    if done.returncode != 0 or len(data) <= 44:  # 44 bytes: a WAV header and no samples
        raise DataError(
            f"builtin:{name}: espeak-ng failed (exit {done.returncode}) on: {' '.join(command)}. "
            f"{done.stderr.strip()[:300]}"
        )
    return clip, hashlib.sha256(data).hexdigest(), len(data)


def read_clips(name: str, folder: Path, columns: tuple[str, ...]) -> dict[str, ColumnRecords]:
    """A generated folder's clips as ``{split: records}`` with ``columns`` (``audio`` = the WAV's path,
    ``voice`` = the clip's own or :func:`voice_name`, the rest from ``clips.json``); every file checked
    by size."""
    text = (folder / "clips.json").read_text()
    try:
        clips = json.loads(text)["clips"]
    except (ValueError, KeyError):
        raise DataError(f"builtin:{name}: '{folder / 'clips.json'}' is damaged; delete '{folder}'.") from None
    splits: dict[str, dict[str, list]] = {}
    for clip in clips:
        path = folder / clip["file"]
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        if size != clip["bytes"]:
            raise DataError(
                f"builtin:{name}: the cached clip '{path}' is missing or changed; delete '{folder}' to "
                "generate the set again."
            )
        row = {"voice": voice_name(clip) if "accent" in clip else None, **clip, "audio": str(path)}
        split = splits.setdefault(clip["split"], {c: [] for c in columns})
        for c in columns:
            split[c].append(row[c])
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    return {split: ColumnRecords(cols, f"builtin:{name}", fingerprint) for split, cols in splits.items()}
