"""What every audio task shares: reading a record's clip at the task's rate (with speed perturbation
in the same resampling pass), waveform augmentation from the example RNG (time shift, noise from
recordings or white), the base64 audio field of ``input_schema``, and ``parse`` of clips as users have
them (files, bytes, arrays, records, manifests). ``audio_classification`` and ``speech_recognition``
build on it; each keeps its own fitting, features, batches, head and metric. ``Transcribed`` is what
tasks pairing clips with their text share (``speech_recognition``, ``text_to_speech``).

A subclass sets ``self.audio_spec`` (at least ``sample_rate``) when it fits, and has ``options.resample``
and ``options.augment`` (:class:`~bigmodel.tasks.audio_classification.AudioAugmentOptions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from bigmodel.data.asterisk import normalize_transcript
from bigmodel.data.audio import (
    AUDIO_SUFFIXES,
    PATH_COLUMNS,
    decode_audio,
    is_audio_path,
    load_audio,
    resample,
)
from bigmodel.data.audio_features import FeatureSpec, features
from bigmodel.data.audio_transforms import add_noise, time_shift
from bigmodel.data.records import Records, evenly_spaced
from bigmodel.errors import DataError, RecipeError, did_you_mean
from bigmodel.tasks.base import Task, is_data_file, read_inputs

TEXT_COLUMNS = ("text", "transcript", "sentence")  # where the text is looked for without data.label
STATS_SAMPLE = 2000  # clips the per-band mean/std is measured on (evenly spaced over train)


class AudioTask(Task):
    """The base of audio tasks (see the module docstring)."""

    def __init__(self, options, data: dict):
        super().__init__(options, data)
        self.audio_spec: dict = {}  # fitted on train: at least the sample rate
        self._noise: list[torch.Tensor] | None = None  # noise recordings, loaded on first use

    @property
    def audio_column(self) -> str:
        return self.data.get("audio") or "audio"

    # -- examples -----------------------------------------------------------------------------------

    def load(self, example: Mapping, where: str, speed: float = 1.0) -> torch.Tensor:
        """The example's clip, mono at the task's sample rate ``(T,)``; played ``speed`` times as fast
        (speed perturbation, done in the same resampling pass as the change of rate)."""
        if self.audio_column not in example:
            raise DataError(f"{where}: no '{self.audio_column}' (the audio column).")
        rate, value = self.audio_spec["sample_rate"], example[self.audio_column]
        if speed == 1.0:
            return load_audio(value, where, rate, self.options.resample)
        wave, found = decode_audio(value, where, rate)
        if found != rate and not self.options.resample:
            load_audio(value, where, rate, resample_other_rates=False)  # raises, naming both rates
        return resample(wave, round(found * speed), rate)

    def _feature_spec(self, rate: int) -> FeatureSpec:
        """The features ``options.features`` asks for at ``rate`` (windows in samples, n_fft the next
        power of two above the window unless given); a bad combination names ``task.features``."""
        f = self.options.features
        win, hop = round(f.window_ms * rate / 1000), round(f.hop_ms * rate / 1000)
        n_fft = f.n_fft or 1 << max(1, (win - 1).bit_length())
        try:
            return FeatureSpec(sample_rate=rate, kind=f.kind, n_fft=n_fft, win_length=win, hop_length=hop,
                               n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, mel_scale=f.mel_scale,
                               n_mfcc=f.n_mfcc)  # fmt: skip
        except DataError as exc:
            raise RecipeError(f"task.features: {exc}".replace("audio features: ", "")) from None

    def band_statistics(self, train: Records, spec: FeatureSpec) -> tuple[list[float], list[float]]:
        """Per-band mean and std of ``spec``'s features over up to STATS_SAMPLE train clips (unaugmented,
        as evaluation sees them): the normalisation ``task.normalize: dataset`` fits."""
        total = torch.zeros(spec.num_features, dtype=torch.float64)
        squares, count = torch.zeros_like(total), 0
        for i in evenly_spaced(len(train), STATS_SAMPLE):
            wave = self.load(train[i], f"{train.where} (train split), row {train.row_number(i)}")
            x = features(wave, spec).double()  # (bands, frames)
            total += x.sum(dim=1)
            squares += (x * x).sum(dim=1)
            count += x.shape[1]
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
        return mean.tolist(), std.tolist()

    def augment_wave(self, wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        aug, rate = self.options.augment, self.audio_spec["sample_rate"]
        if aug.time_shift:
            wave = time_shift(wave, round(aug.time_shift * rate), rng)
        if aug.noise_snr is not None and rng.random() < aug.noise_probability:
            recordings = self._noise_recordings()
            noise = recordings[int(rng.integers(len(recordings)))] if recordings else None
            wave = add_noise(wave, aug.noise_snr, rng, noise)
        return wave

    def _noise_recordings(self) -> list[torch.Tensor]:
        if self._noise is None:
            where = self.options.augment.noise
            if where is None:
                self._noise = []
            else:
                folder = Path(where).expanduser()
                files = (sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
                         if folder.is_dir() else [folder])  # fmt: skip
                if not files:
                    raise DataError(f"task.augment.noise: '{folder}' holds no audio files.")
                rate = self.audio_spec["sample_rate"]
                self._noise = [load_audio(f, f"task.augment.noise '{f}'", rate) for f in files]
        return self._noise

    # -- prediction ---------------------------------------------------------------------------------

    def audio_field(self, description: str, clip_seconds: float | None = None) -> dict:
        """The JSON Schema of the audio field: the base64 text of an audio file, which the server decodes
        to bytes; ``x-bigmodel-audio`` says the rate (and length) it becomes."""
        return {"type": "string", "minLength": 1, "contentEncoding": "base64",
                "contentMediaType": "audio/wav", "x-bigmodel-kind": "audio",
                "x-bigmodel-audio": {"sample_rate": self.audio_spec["sample_rate"],
                                     "clip_seconds": clip_seconds},
                "description": description}  # fmt: skip

    def parse(self, raw) -> list[dict]:
        """Clips to predict on: an audio file, encoded bytes, an array (``(T,)`` one clip at the model's
        rate, ``(N, T)`` N clips), a ``{"array", "sampling_rate"}`` record, a list of those, records with
        the audio column, or a .csv/.jsonl file of records (relative paths resolved against its folder).
        Each clip is decoded here, so a bad one is refused naming it."""
        if isinstance(raw, (list, tuple)) and not raw:
            raise DataError(f"inputs: nothing to predict (an empty {type(raw).__name__}).")
        column = self.audio_column
        if is_data_file(raw) and not is_audio_path(raw):
            inputs = read_inputs(raw)
            base = Path(raw).parent
            records = [_resolved(r, column, base) for r in inputs.records]
            names = [f"{inputs.where}: row {r}" for r in inputs.rows]
        elif _is_record(raw, column) or (
            isinstance(raw, (list, tuple)) and any(_is_record(r, column) for r in raw)
        ):
            inputs = read_inputs(raw)
            records, names = inputs.records, [f"{inputs.where}: row {r}" for r in inputs.rows]
        else:
            clips = self._clip_list(raw)
            records = [{column: clip} for clip in clips]
            names = [_input_name(i, len(clips)) for i in range(len(clips))]
        for record, name in zip(records, names, strict=True):
            self.load(record, name)  # refuse what cannot be read, naming it
        return records

    def _clip_list(self, raw) -> list:
        if isinstance(raw, (np.ndarray, torch.Tensor)):
            if raw.ndim == 2:
                return list(raw)  # (N, T): N clips
            return [raw]
        if isinstance(raw, (list, tuple)) and all(
            isinstance(r, (str, Path, bytes, bytearray, np.ndarray, torch.Tensor, Mapping)) for r in raw
        ):
            return list(raw)
        if isinstance(raw, (str, Path)) and not is_audio_path(raw):
            raise DataError(
                f"inputs: '{raw}' is neither an audio file ({', '.join(AUDIO_SUFFIXES[:6])}, ...) nor a "
                ".csv/.jsonl file of records."
            )
        return [raw]


def _is_record(value, column: str) -> bool:
    """A record (a dict with the audio column), not an audio value such as ``{"array", "sampling_rate"}``."""
    return isinstance(value, Mapping) and (column in value or not {"array", "bytes", "path"} & set(value))


def _resolved(record: dict, column: str, base: Path) -> dict:
    """A manifest's record with its clip under ``column`` (found under a path column's name when the
    manifest has no ``column``, as ``audio:`` manifests), a relative path taken from the manifest's folder."""
    if column not in record:
        found = next((c for c in PATH_COLUMNS if c in record), None)
        if found is not None:
            record = {**{k: v for k, v in record.items() if k != found}, column: record[found]}
    value = record.get(column)
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return {**record, column: str(base / value)}
    return record


def _input_name(i: int, n: int) -> str:
    """How messages name an input (a file's messages add its path)."""
    return "inputs" if n == 1 else f"inputs: clip {i + 1}"


class Transcribed:
    """The text column of clips paired with their text (``data.label``, or the first of ``TEXT_COLUMNS``
    the train split has; fitted into ``text_column_name``), its normalisation (``task.text_normalize``:
    ``basic`` = the Asterisk transcripts' lower-case letters, digits, apostrophes and spaces) and the
    split's texts checked row by row (``checked_text``, which a task may make stricter)."""

    text_column_name = "text"

    def text_column(self, records: Records | None = None) -> str:
        if self.data.get("label"):
            return self.data["label"]
        if records is not None:
            return next((c for c in TEXT_COLUMNS if c in records.columns), "text")
        return self.text_column_name

    def normalize(self, text: str) -> str:
        return normalize_transcript(text) if self.options.text_normalize == "basic" else text

    def texts(self, records: Records, split: str) -> list[str]:
        """The split's normalised texts; a missing column or a bad value refused naming its row."""
        column = self.text_column(records)
        if column not in records.columns:
            raise DataError(
                f"data.label: column '{column}' (the text) is not in {records.where}. Columns: "
                f"{', '.join(records.columns)}.{did_you_mean(column, records.columns)}"
            )
        return [
            self.checked_text(
                value, f"{records.where} ({split} split), row {records.row_number(i)}, column '{column}'"
            )
            for i, value in enumerate(records.column(column))
        ]

    def checked_text(self, value, where: str) -> str:
        if not isinstance(value, str):
            raise DataError(f"{where}: expected the text, got {type(value).__name__} {value!r:.40}.")
        return self.normalize(value)
