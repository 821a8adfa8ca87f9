"""``builtin:spoken-digits-noisy``: the digits zero to nine from two synthesisers, mixed with real
recordings of non-speech sounds; test voices and test noises are never heard in training.

Speech (16 kHz mono 16-bit WAV, every clip one word):

- espeak-ng: every clip of ``builtin:spoken-digits`` (its split by voice variant as is; read from — or
  generated into — that set's own cache): 6,160 train, 1,400 validation, 1,960 test clips.
- flite (CMU, Debian's ``flite``), split by voice: train ``kal16`` and ``rms``, validation ``kal``
  (8 kHz, so telephone-band), test ``slt`` and ``awb`` — a female US and a Scottish male voice of
  another synthesiser, the honest hard part. Each word is spoken at 6 duration stretches x 5 pitch
  targets (flite's ``int_f0_target_mean``; ``rms`` ignores it — identical bytes — so it has its own
  pitch only), leading and trailing silence trimmed; train clips are mixed twice (different noise):
  720 train, 300 validation, 600 test clips.

Noise: the sound effects Debian's ``tuxpaint-stamps-default`` ships beside its stamps (animals,
vehicles, instruments, household machines; ~250 s in 107 Ogg files; GPL-2), split by file with
:func:`~bigmodel.data.tuxpaint_speech.held_out_split` (the held-out stamps of ``builtin:tuxpaint-speech``):
87 train, 9 validation, 11 test files. Every clip gets a stretch of one of its split's files (at a
random offset, looped when shorter than the word; an offset in a near-silent stretch is redrawn) at an
SNR drawn uniformly from 0-20 dB over the clip's mean power; a mix that would clip is scaled down as a
whole (the SNR stays). All draws come from one seeded generator in a fixed clip order, so the same
seed writes the same bytes; ``clips.json`` records each clip's ``snr_db``, ``noise`` and
``noise_start`` (samples at 16 kHz into the noise file, resampled to 16 kHz).

Generated once into ``$BIGMODEL_CACHE/spoken-digits-noisy/KEY`` with :mod:`~bigmodel.data.spoken_digits`'
machinery (temporary folder renamed into place, every file's size checked on reading); ``KEY`` digests
this module's generator version, flite's and espeak-ng's versions, the spec, the espeak clips'
fingerprint and the noise files' names and sizes. Records: ``audio``, ``label``, ``word``,
``generator`` (``espeak-ng`` or ``flite``), ``voice``, ``snr_db``, ``noise``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import torch

from bigmodel.data import spoken_digits, tuxpaint_speech
from bigmodel.data.audio import load_audio
from bigmodel.data.audio_transforms import add_noise
from bigmodel.data.records import ColumnRecords
from bigmodel.data.spoken_digits import DIGIT_WORDS, SPOKEN_DIGITS_SET, SpokenWords, cache_root
from bigmodel.errors import DataError

SPOKEN_DIGITS_NOISY = "spoken-digits-noisy"
GENERATOR_VERSION = 1  # part of the cache key: bump when the generation below changes
FLITE_INSTALL = "apt-get install flite"
FLITE_TIMEOUT_S = 30.0  # one word takes ~10 ms
SPLITS = ("train", "validation", "test")
COLUMNS = ("audio", "label", "word", "generator", "voice", "snr_db", "noise")
# Stamp sounds left out: its 5 kHz rate and name suggest the Apollo landing's radio voice, and spoken
# numbers in the noise would put a digit under the wrong label.
EXCLUDED_NOISES = ("space/apollo_lander.ogg",)
_LANGUAGE_SUFFIX = re.compile(r"^(?P<base>.+)_[a-z]{2}(_[A-Z]{2})?$")
ACTIVE_SHARE = 0.25  # a noise stretch quieter than this share of its file's RMS is redrawn (up to 20 x)


@dataclass(frozen=True)
class NoisyDigits:
    """What a generated set holds.

    Attributes:
        name: the builtin's name (and cache folder).
        words: label -> the word spoken.
        espeak: the espeak-ng set whose clips are mixed too, split as it is (None: flite only).
        flite_voices: flite voices per split (no voice in two splits).
        stretches: flite ``duration_stretch`` values (1.0: its own pace).
        pitches: flite ``int_f0_target_mean`` values in Hz (0: the voice's own).
        own_pitch_only: voices that ignore ``int_f0_target_mean`` (spoken at pitch 0 only).
        flite_copies: per split, how many noisy mixes of each flite clip.
        snr_db: the SNR range (dB) drawn from uniformly.
        sample_rate: the clips' rate (Hz).
        seed: every draw (noise file, offset, SNR).
    """

    name: str = SPOKEN_DIGITS_NOISY
    words: dict[str, str] = field(default_factory=lambda: {str(i): w for i, w in enumerate(DIGIT_WORDS)})
    espeak: SpokenWords | None = SPOKEN_DIGITS_SET
    flite_voices: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"train": ("kal16", "rms"), "validation": ("kal",), "test": ("slt", "awb")}
    )
    stretches: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
    pitches: tuple[int, ...] = (0, 90, 120, 150, 190)
    own_pitch_only: tuple[str, ...] = ("rms",)
    flite_copies: dict[str, int] = field(default_factory=lambda: {"train": 2, "validation": 1, "test": 1})
    snr_db: tuple[float, float] = (0.0, 20.0)
    sample_rate: int = 16000
    seed: int = 0

    def flite_size(self) -> int:
        def per_voice(voice: str) -> int:
            return len(self.stretches) * (1 if voice in self.own_pitch_only else len(self.pitches))

        return sum(
            len(self.words) * self.flite_copies.get(split, 1) * sum(per_voice(v) for v in voices)
            for split, voices in self.flite_voices.items()
        )


SPOKEN_DIGITS_NOISY_SET = NoisyDigits()


def flite_installed() -> bool:
    return shutil.which("flite") is not None


def noisy_digits_installed() -> bool:
    return flite_installed() and spoken_digits.espeak_installed() and bool(noise_files())


def read_spoken_digits_noisy() -> dict[str, ColumnRecords]:
    """``builtin:spoken-digits-noisy`` as ``{"train", "validation", "test"}`` records (generated on first
    use)."""
    return read_noisy_digits(SPOKEN_DIGITS_NOISY_SET)


def read_noisy_digits(
    spec: NoisyDigits,
    cache: str | Path | None = None,
    stamps: str | Path = tuxpaint_speech.STAMPS,
    progress: bool = True,
) -> dict[str, ColumnRecords]:
    """A generated set as ``{split: records}`` with :data:`COLUMNS`; ``where`` is ``builtin:NAME``.

    Args:
        spec: what to generate.
        cache: the folder sets are cached in (default :func:`~bigmodel.data.spoken_digits.cache_root`).
        stamps: Tux Paint's stamps folder, where the noise recordings are.
        progress: print generation progress on stderr.

    Raises:
        DataError: flite (naming ``apt-get install flite``), espeak-ng or the noise recordings (naming
            ``apt-get install tuxpaint-stamps-default``) are missing, a split has no noise file, a
            synthesiser fails or hangs, or the cache cannot be written or is damaged.
    """
    flite, flite_version = find_flite(spec.name)
    check_flite_voices(spec, flite)
    noises = noise_files(stamps)
    if not noises:
        raise DataError(
            f"data.source 'builtin:{spec.name}' mixes speech with the sound effects of Tux Paint's stamps, "
            f"and '{stamps}' has none (no '<stamp>.ogg' outside symbols/): {tuxpaint_speech.INSTALL}."
        )
    by_split = {
        split: [n for n in noises if tuxpaint_speech.held_out_split(n[:-4]) == split] for split in SPLITS
    }
    empty = [split for split in SPLITS if not by_split[split]]
    if empty:
        raise DataError(
            f"builtin:{spec.name}: no noise recording of '{stamps}' falls in the {', '.join(empty)} split "
            f"(split by stamp path; {len(noises)} files in all): reinstall {tuxpaint_speech.INSTALL}."
        )
    espeak = spoken_digits.read_spoken_words(spec.espeak, cache, progress) if spec.espeak else {}
    espeak_version = spoken_digits.find_espeak(spec.name)[1] if spec.espeak else ""
    sizes = {n: (Path(stamps) / n).stat().st_size for n in noises}
    what = {
        "generator": GENERATOR_VERSION, "flite": flite_version, "espeak": espeak_version, **asdict(spec),
        "espeak_clips": next(iter(espeak.values())).fingerprint if espeak else "", "noises": sizes,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    folder = Path(cache or cache_root()).expanduser() / spec.name / key[:16]
    if not (folder / "clips.json").is_file():
        waves = {
            n: load_audio(Path(stamps) / n, f"builtin:{spec.name} noise", spec.sample_rate) for n in noises
        }
        clips = noisy_clips(spec, espeak, by_split, waves)
        espeak_folder = Path(espeak["train"][0]["audio"]).parents[2] if espeak else None  # split/label/x.wav
        mixer = _Mixer(spec, flite, waves, espeak_folder)
        version = f"{flite_version}; {espeak_version}" if espeak_version else flite_version
        spoken_digits.generate_clips(spec.name, clips, "", folder, key, version, GENERATOR_VERSION, progress,
                                     make=mixer.make, tool="synthesisers")  # fmt: skip
    return spoken_digits.read_clips(spec.name, folder, COLUMNS)


def find_flite(name: str) -> tuple[str, str]:
    """flite's path and version line, for the generated set ``builtin:NAME``.

    Raises:
        DataError: flite is not on PATH (naming ``apt-get install flite``) or does not run.
    """
    flite = shutil.which("flite")
    if flite is None:
        raise DataError(
            f"data.source 'builtin:{name}' is generated with the speech synthesiser flite, which is not "
            f"installed (no flite on PATH): {FLITE_INSTALL}."
        )
    try:
        done = subprocess.run([flite, "--version"], capture_output=True, text=True, timeout=FLITE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"'{flite} --version' failed ({exc}); reinstall it: {FLITE_INSTALL}.") from None
    match = re.search(r"version:\s*(\S+)", done.stdout)
    return flite, match.group(1) if match else done.stdout.strip()[:80]


def check_flite_voices(spec: NoisyDigits, flite: str) -> None:
    """flite speaks an unknown ``-voice`` with its default voice, silently: refuse it here (``flite -lv``
    lists the voices compiled in)."""
    try:
        done = subprocess.run([flite, "-lv"], capture_output=True, text=True, timeout=FLITE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"'{flite} -lv' failed ({exc}); reinstall it: {FLITE_INSTALL}.") from None
    known = set(done.stdout.split(":", 1)[-1].split())
    missing = sorted({v for voices in spec.flite_voices.values() for v in voices} - known)
    if missing:
        raise DataError(
            f"builtin:{spec.name}: flite has no voice {', '.join(missing)} ('{flite} -lv' lists "
            f"{', '.join(sorted(known)) or 'none'}); this set needs flite 2.2's voices: {FLITE_INSTALL}."
        )


def noise_files(stamps: str | Path = tuxpaint_speech.STAMPS) -> list[str]:
    """The stamps' own sound effects, as paths relative to ``stamps`` (sorted): every ``.ogg`` but the
    spoken descriptions (``*_desc*.ogg``), translations of another sound (``name_fr.ogg`` beside
    ``name.ogg``), the spoken numbers and letters under ``symbols/`` and :data:`EXCLUDED_NOISES`."""
    stamps = Path(stamps)
    if not stamps.is_dir():
        return []
    found = []
    for path in sorted(stamps.rglob("*.ogg")):
        name = path.relative_to(stamps).as_posix()
        translated = _LANGUAGE_SUFFIX.match(path.stem)
        if (
            "_desc" in path.stem
            or name.startswith("symbols/")
            or name in EXCLUDED_NOISES
            or (translated and path.with_name(f"{translated['base']}.ogg").is_file())
        ):
            continue
        found.append(name)
    return found


def noisy_clips(
    spec: NoisyDigits, espeak: dict[str, ColumnRecords], noises: dict[str, list[str]], waves: dict
) -> list[dict]:
    """Every clip in a fixed order (split; espeak-ng clips as their set lists them, then flite's by
    label, voice, stretch, pitch, copy), each with its noise file, offset and SNR drawn in that order."""
    rng = np.random.default_rng(spec.seed)
    clips = []
    for split in SPLITS:
        for row in espeak[split] if split in espeak else []:
            folder, name = f"{split}/{row['label']}", Path(row["audio"]).name  # as the espeak folder holds it
            clips.append({"split": split, "label": row["label"], "word": row["word"],
                          "generator": "espeak-ng", "voice": row["voice"], "source": f"{folder}/{name}",
                          "file": f"{folder}/espeak-{name}"})  # fmt: skip
        clips += _flite_clips(spec, split)
    for clip in clips:
        noise = noises[clip["split"]][int(rng.integers(len(noises[clip["split"]])))]
        clip["noise"], clip["noise_start"] = noise, _active_offset(waves[noise], rng)
        clip["snr_db"] = round(float(rng.uniform(*spec.snr_db)), 2)
    return clips


def _flite_clips(spec: NoisyDigits, split: str) -> list[dict]:
    """The split's flite clips by label, voice, stretch, pitch and copy (noise not drawn yet)."""
    clips = []
    for (label, word), voice in itertools.product(spec.words.items(), spec.flite_voices.get(split, ())):
        pitches = (0,) if voice in spec.own_pitch_only else spec.pitches
        for stretch, pitch, copy in itertools.product(
            spec.stretches, pitches, range(spec.flite_copies.get(split, 1))
        ):
            file = f"{split}/{label}/flite-{voice}-d{stretch}-p{pitch}-{copy}.wav"
            clips.append({"split": split, "label": label, "word": word, "generator": "flite", "voice": voice,
                          "stretch": stretch, "pitch": pitch, "file": file})  # fmt: skip
    return clips


def _active_offset(wave: torch.Tensor, rng: np.random.Generator, span: int = 8000) -> int:
    """An offset into ``wave`` whose next ``span`` samples (read circularly) are not near-silent: drawn
    up to 20 times; else the loudest drawn."""
    whole = float(wave.double().pow(2).mean()) ** 0.5
    best, best_rms = 0, -1.0
    for _ in range(20):
        start = int(rng.integers(len(wave)))
        rms = float(noise_stretch(wave, start, span).double().pow(2).mean()) ** 0.5
        if rms >= ACTIVE_SHARE * whole:
            return start
        if rms > best_rms:
            best, best_rms = start, rms
    return best


def noise_stretch(wave: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``length`` samples of ``wave`` from ``start``, read circularly (a short recording loops)."""
    return wave[torch.arange(start, start + length) % len(wave)]


def trim_silence(
    wave: torch.Tensor, rate: int, floor_db: float = -40.0, margin_s: float = 0.02
) -> torch.Tensor:
    """``wave`` without the leading and trailing 10 ms frames quieter than ``floor_db`` under its loudest
    frame (flite pads a word with ~0.15 s of silence each side), keeping ``margin_s`` either side."""
    frame = max(1, rate // 100)
    usable = len(wave) // frame * frame
    if usable == 0:
        return wave
    rms = wave[:usable].reshape(-1, frame).double().pow(2).mean(dim=1).sqrt()
    loud = torch.nonzero(rms >= rms.max() * 10.0 ** (floor_db / 20.0)).flatten()
    if len(loud) == 0:
        return wave
    margin = round(margin_s * rate)
    return wave[max(0, int(loud[0]) * frame - margin) : min(len(wave), (int(loud[-1]) + 1) * frame + margin)]


class _Mixer:
    """Writes one clip: its speech (flite, or the espeak-ng clip) plus its noise stretch at its SNR."""

    def __init__(self, spec: NoisyDigits, flite: str, waves: dict[str, torch.Tensor], espeak: Path | None):
        self.spec, self.flite, self.waves, self.espeak = spec, flite, waves, espeak

    def make(self, clip: dict, path: Path) -> None:
        speech = self.speech(clip, path)
        mixed = mix(speech, noise_stretch(self.waves[clip["noise"]], clip["noise_start"], len(speech)),
                    clip["snr_db"])  # fmt: skip
        soundfile.write(str(path), mixed.numpy(), self.spec.sample_rate, subtype="PCM_16")

    def speech(self, clip: dict, path: Path) -> torch.Tensor:
        """The clean word at the set's rate ``(T,)``."""
        rate, where = self.spec.sample_rate, f"builtin:{self.spec.name}"
        if clip["generator"] == "espeak-ng":
            return load_audio(self.espeak / clip["source"], where, rate)
        clean = path.with_suffix(".clean.wav")
        command = [self.flite, "-voice", clip["voice"], "--setf", f"duration_stretch={clip['stretch']}"]
        if clip["pitch"]:
            command += ["--setf", f"int_f0_target_mean={clip['pitch']}"]
        command += ["-t", clip["word"], "-o", str(clean)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=FLITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DataError(
                f"{where}: flite took over {FLITE_TIMEOUT_S:.0f} s on: {' '.join(command)}"
            ) from None
        if done.returncode != 0 or not clean.is_file() or clean.stat().st_size <= 44:
            raise DataError(
                f"{where}: flite failed (exit {done.returncode}) on: {' '.join(command)}. "
                f"{(done.stderr or done.stdout).strip()[:300]}"
            )
        try:
            return trim_silence(load_audio(clean, where, rate), rate)
        finally:
            clean.unlink()


def mix(speech: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``speech + gain * noise`` (both ``(T,)``) at ``snr_db`` over the clip's mean power, scaled down
    as a whole where it would clip (peak 0.99)."""
    # add_noise draws the SNR and the stretch from an RNG: a range of one value and a stretch of the
    # clip's length leave it nothing to draw
    mixed = add_noise(speech, (snr_db, snr_db), np.random.default_rng(0), noise=noise)
    peak = float(mixed.abs().max())
    return mixed * (0.99 / peak) if peak > 0.99 else mixed
