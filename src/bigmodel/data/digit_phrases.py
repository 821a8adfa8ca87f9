"""``builtin:digit-phrases`` and ``builtin:digit-phrases-tts``: phrases of 1-5 English digit words
("three one four") spoken by espeak-ng, held out by phrase text.

Synthetic speech generated once on this machine into the cache like ``builtin:spoken-digits`` (the
generation, cache keying and reading are :mod:`bigmodel.data.spoken_digits`'): ``$BIGMODEL_CACHE/NAME/KEY``.

The phrases are drawn by a seeded generator (a word count 1-5, then the words) and each goes to the
split its text's digest picks, until every split has its count: 2,000 train, 150 validation and 150 test
phrases. A test phrase is never heard in training, by any voice (single digits and pairs repeat across
phrases as parts, never as a whole phrase).

- ``digit-phrases`` (the recogniser's data): every phrase is spoken by the text-to-speech voice
  (:data:`TTS_VOICE`) and by random voices — one of 7 English accents x 34 voice variants, a speed and a
  pitch each — 3 more in train, 3 in validation and test (which leave out the TTS voice): 8,000 train,
  450 validation and 450 test clips.
- ``digit-phrases-tts`` (text -> speech of one speaker): each phrase once, by the TTS voice only.

Records: ``audio`` (the WAV's path; 22,050 Hz mono 16-bit), ``text``, ``words``, ``voice``, ``accent``,
``variant``, ``speed``, ``pitch``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from bigmodel.data import spoken_digits
from bigmodel.data.records import ColumnRecords
from bigmodel.data.spoken_digits import DIGIT_WORDS, ENGLISH_ACCENTS, cache_root
from bigmodel.errors import DataError

GENERATOR_VERSION = 1  # part of the cache key: bump when the generation below changes
SPLITS = ("train", "validation", "test")
VARIANTS = tuple(v for variants in spoken_digits.DIGIT_VOICES.values() for v in variants)
TTS_VOICE = ("en-us", "", 160, 50)  # accent, variant ("" = the accent's own voice), speed, pitch
COLUMNS = ("audio", "text", "words", "voice", "accent", "variant", "speed", "pitch")


@dataclass(frozen=True)
class DigitPhrases:
    """What a generated set holds.

    Attributes:
        name: the builtin's name (and cache folder).
        phrases: phrases per split; which split a phrase is in depends on its text only.
        max_words: a phrase has 1..max_words digit words.
        tts_voice: (accent, variant, speed, pitch) of the voice every phrase is spoken by in
            ``tts_splits`` (None: none).
        tts_splits: the splits the TTS voice speaks in.
        random_voices: per split, how many more voices (drawn from ``accents`` x ``variants`` x
            ``speeds`` x ``pitches``) speak each phrase.
        seed: the phrase and voice draws.
    """

    name: str
    phrases: dict[str, int]
    max_words: int = 5
    tts_voice: tuple[str, str, int, int] | None = TTS_VOICE
    tts_splits: tuple[str, ...] = SPLITS
    random_voices: dict[str, int] | None = None
    accents: tuple[str, ...] = ENGLISH_ACCENTS
    variants: tuple[str, ...] = VARIANTS
    speeds: tuple[int, ...] = (140, 160, 180, 200)
    pitches: tuple[int, ...] = (35, 50, 65)
    seed: int = 0

    @property
    def size(self) -> int:
        def voices(split: str) -> int:
            tts = split in self.tts_splits and self.tts_voice is not None
            return int(tts) + (self.random_voices or {}).get(split, 0)

        return sum(self.phrases.get(s, 0) * voices(s) for s in SPLITS)


PHRASE_COUNTS = {"train": 2000, "validation": 150, "test": 150}
DIGIT_PHRASES_SET = DigitPhrases(
    name="digit-phrases", phrases=PHRASE_COUNTS, tts_splits=("train",),
    random_voices={"train": 3, "validation": 3, "test": 3},
)  # fmt: skip
DIGIT_PHRASES_TTS_SET = DigitPhrases(name="digit-phrases-tts", phrases=PHRASE_COUNTS)


def phrase_split(text: str, validation_share: float = 0.065, test_share: float = 0.065) -> str:
    """The split of a phrase, from a digest of its text alone (so a phrase is in one split in every set)."""
    fraction = int(hashlib.sha256(f"digit-phrase:{text}".encode()).hexdigest()[:12], 16) / 16**12
    if fraction < test_share:
        return "test"
    return "validation" if fraction < test_share + validation_share else "train"


def draw_phrases(counts: dict[str, int], max_words: int = 5, seed: int = 0) -> dict[str, list[str]]:
    """``{split: phrases}``, ``counts[split]`` distinct phrases each, split by :func:`phrase_split`.

    Raises:
        DataError: the counts cannot be met (more phrases than 1..max_words digit words make).
    """
    rng = random.Random(seed)
    chosen: dict[str, list[str]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for _ in range(200 * (sum(counts.values()) + 10)):
        if all(len(chosen[s]) >= counts.get(s, 0) for s in SPLITS):
            return chosen
        text = " ".join(rng.choices(DIGIT_WORDS, k=rng.randint(1, max_words)))
        split = phrase_split(text)
        if text not in seen and len(chosen[split]) < counts.get(split, 0):
            seen.add(text)
            chosen[split].append(text)
    raise DataError(
        f"digit phrases: cannot draw {counts} distinct phrases of 1-{max_words} digit words; ask for fewer."
    )


def read_digit_phrases() -> dict[str, ColumnRecords]:
    """``builtin:digit-phrases``: many voices, the recogniser's data (generated on first use)."""
    return read_phrase_set(DIGIT_PHRASES_SET)


def read_digit_phrases_tts() -> dict[str, ColumnRecords]:
    """``builtin:digit-phrases-tts``: one voice, the text-to-speech data (generated on first use)."""
    return read_phrase_set(DIGIT_PHRASES_TTS_SET)


def read_phrase_set(
    spec: DigitPhrases, cache: str | Path | None = None, progress: bool = True
) -> dict[str, ColumnRecords]:
    """A generated set as ``{split: records}`` with :data:`COLUMNS`; ``where`` is ``builtin:NAME``.

    Raises:
        DataError: espeak-ng is missing, fails or hangs (see :mod:`bigmodel.data.spoken_digits`), or the
            cache cannot be written or is damaged.
    """
    espeak, version, data_dir = spoken_digits.find_espeak(spec.name)
    what = {"generator": GENERATOR_VERSION, "espeak": version, **asdict(spec)}
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    folder = Path(cache or cache_root()).expanduser() / spec.name / key[:16]
    if not (folder / "clips.json").is_file():
        variants = set(spec.variants) | ({spec.tts_voice[1]} if spec.tts_voice else set())
        spoken_digits.check_variants(spec.name, variants, data_dir)
        clips = phrase_clips(spec)
        spoken_digits.generate_clips(
            spec.name, clips, espeak, folder, key, version, GENERATOR_VERSION, progress
        )
    return spoken_digits.read_clips(spec.name, folder, COLUMNS)


def phrase_clips(spec: DigitPhrases) -> list[dict]:
    """Every clip of the set in a fixed order: split, phrase, then its voices (the TTS voice first)."""
    rng = random.Random(spec.seed + 1)  # the voice draws; the phrase draws use spec.seed
    clips = []
    for split, phrases in draw_phrases(spec.phrases, spec.max_words, spec.seed).items():
        for text in phrases:
            voices = [spec.tts_voice] if spec.tts_voice and split in spec.tts_splits else []
            for _ in range((spec.random_voices or {}).get(split, 0)):
                voices.append((rng.choice(spec.accents), rng.choice(spec.variants), rng.choice(spec.speeds),
                               rng.choice(spec.pitches)))  # fmt: skip
            folder = f"{split}/{text.replace(' ', '-')}"
            for number, (accent, variant, speed, pitch) in enumerate(voices):
                file = f"{folder}/{number}-{accent}+{variant or 'own'}-s{speed}-p{pitch}.wav"
                clips.append({"split": split, "text": text, "words": len(text.split()), "accent": accent,
                              "variant": variant, "speed": speed, "pitch": pitch, "file": file})  # fmt: skip
    return clips
