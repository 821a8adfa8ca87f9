"""Audio classification: one label per clip (keyword spotting, spoken digits, language ID).

Clips come from class folders or manifests (``audio:FOLDER``, ``audio:FILE.csv``), a built-in set, or
any records with an audio column (``data.audio``, default ``audio``) holding file paths, encoded bytes,
arrays or ``{"array", "sampling_rate"}`` records. Each clip is decoded to mono at ``task.sample_rate``
(resampled, or refused with ``task.resample: false``), cropped or padded to ``task.clip_seconds``,
turned into log-mel (or MFCC) features normalised per band with the train split's statistics, and read
by an image family (``cnn``, ``resnet``) as a one-channel ``(features, frames)`` picture — the usual
keyword-spotting baseline. Augmentation (speed, time shift, noise, SpecAugment masks) is drawn from the
example RNG. Predict takes audio files, bytes or arrays and returns the label, its score, the top-k and
every class's probability.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from bigmodel.data.audio import (
    decode_audio,
    load_audio,
)
from bigmodel.data.audio_features import FeatureSpec, features
from bigmodel.data.audio_transforms import fit_length, spec_augment, speed_factor
from bigmodel.data.records import Records
from bigmodel.errors import DataError, RecipeError, did_you_mean
from bigmodel.models.registry import build_config
from bigmodel.tasks.audio import AudioTask
from bigmodel.tasks.base import (
    ExportSignature,
    LabelOptions,
    batch_signature,
    check_targets,
    clean_missing_labels,
    label_column,
    record_schema,
)
from bigmodel.tasks.classification import SingleLabel
from bigmodel.tasks.heads import FeatureModel

STATS_SAMPLE = 2000  # clips the per-band mean/std is measured on (evenly spaced over train)


class FeatureOptions(BaseModel):
    """The features a clip becomes (data/audio_features.py)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["log_mel", "mfcc"] = Field("log_mel", description="log-mel spectrogram (dB) or MFCCs")
    n_mels: int = Field(40, ge=1, le=512, description="mel bands")
    n_mfcc: int = Field(13, ge=1, le=512, description="cepstral coefficients kept (kind: mfcc)")
    window_ms: float = Field(25.0, gt=0, description="analysis window (Hann) in milliseconds")
    hop_ms: float = Field(10.0, gt=0, description="step between frames in milliseconds")
    n_fft: int | None = Field(None, ge=2, description="FFT size; default: the window's next power of two")
    fmin: float = Field(20.0, ge=0, description="lowest filterbank frequency (Hz)")
    fmax: float | None = Field(None, gt=0, description="highest filterbank frequency (Hz); default: Nyquist")
    mel_scale: Literal["slaney", "htk"] = Field("slaney", description="mel scale of the filter edges")


class AudioAugmentOptions(BaseModel):
    """Training-time augmentation, drawn per example from the example RNG (never in evaluation)."""

    model_config = ConfigDict(extra="forbid")
    speed: tuple[float, float] | None = Field(
        None, description="play at a speed drawn from [low, high] (e.g. [0.9, 1.1]; pitch changes too)"
    )
    time_shift: float = Field(0.0, ge=0.0, description="shift by up to this many seconds either way")
    noise_snr: tuple[float, float] | None = Field(
        None, description="add noise at a signal-to-noise ratio drawn from [low, high] dB"
    )
    noise: str | None = Field(
        None, description="a noise recording, or a folder of them, for noise_snr; default: white noise"
    )
    noise_probability: float = Field(1.0, ge=0.0, le=1.0, description="share of clips that get noise")
    freq_masks: int = Field(0, ge=0, description="SpecAugment: frequency bands masked per clip")
    freq_width: int = Field(8, ge=1, description="SpecAugment: widest frequency mask (feature rows)")
    time_masks: int = Field(0, ge=0, description="SpecAugment: time spans masked per clip")
    time_width: int = Field(10, ge=1, description="SpecAugment: widest time mask (frames)")

    @model_validator(mode="after")
    def _ranges(self):
        if self.speed is not None and not 0.5 <= self.speed[0] <= self.speed[1] <= 2.0:
            raise ValueError(
                f"speed must be [low, high] with 0.5 <= low <= high <= 2, got {list(self.speed)}"
            )
        if self.noise_snr is not None and self.noise_snr[0] > self.noise_snr[1]:
            raise ValueError(f"noise_snr must be [low, high] dB, got {list(self.noise_snr)}")
        if self.noise is not None and self.noise_snr is None:
            raise ValueError("noise needs noise_snr, the [low, high] dB it is added at")
        return self


class AudioClassificationOptions(LabelOptions):
    sample_rate: int = Field(16000, ge=1000, le=384000, description="Hz every clip is resampled to")
    resample: bool = Field(True, description="resample clips stored at another rate (false: refuse them)")
    clip_seconds: float | None = Field(
        1.0, gt=0, description="crop or pad every clip to this length (null: whole clips, padded per batch)"
    )
    features: FeatureOptions = FeatureOptions()
    normalize: Literal["dataset", "none"] = Field(
        "dataset", description="per-band mean/std of the train split's features, or none"
    )
    augment: AudioAugmentOptions = AudioAugmentOptions()
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    top_k: int = Field(5, ge=1, description="labels predict lists in top_k, most probable first")


class AudioClassificationTask(SingleLabel, AudioTask):
    """Single-label classification of audio clips over the classes seen in the training split."""

    name = "audio_classification"
    Options = AudioClassificationOptions
    predict_options = ("top_k",)
    state_types = {"audio": dict, "class_names": list}

    def __init__(self, options, data: dict):
        super().__init__(options, data)  # audio_spec: rate, clip length, features, mean/std, pad, frames
        self._notes: list[str] = []

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(**self.audio_spec["features"])

    # -- recipe and fitting -------------------------------------------------------------------------

    def check(self, recipe, family) -> None:
        if recipe.data.text is not None:
            raise RecipeError(f"data.text: task {self.name} reads audio (the '{self.audio_column}' column).")
        if not {"input_shape", "in_channels"} & set(family.config_fields()):
            raise RecipeError(
                f"model.arch: task {self.name} reads each clip as a (features, frames) picture and needs an "
                f"image family (cnn, resnet, efficientnet, mobilenet_v2); '{family.name}' reads token "
                "sequences."
            )
        if recipe.model.pretrained:
            raise RecipeError(
                f"model.pretrained: task {self.name} trains from scratch; no pretrained audio model is known."
            )
        for key in ("input_shape", "in_channels", "num_outputs"):
            if key in recipe.model.options():
                raise RecipeError(f"model.{key}: set by the task from the data; remove it from the recipe.")
        self._feature_spec(self.options.sample_rate)  # refuse impossible feature settings now

    def clean(self, records: Records, split: str) -> Records:
        records, notes = clean_missing_labels(self.data, records, split, self.options.missing_labels)
        self._notes += notes
        return records

    def notes(self) -> list[str]:
        return list(self._notes)

    def fit(self, train: Records) -> None:
        self.require_audio_column(train)
        label = label_column(self.data, train)
        self.labels.fit(train.column(label), f"{train.where} (train split)")
        rate = self.options.sample_rate
        spec = self._feature_spec(rate)
        clip = None if self.options.clip_seconds is None else round(self.options.clip_seconds * rate)
        self.audio_spec = {"sample_rate": rate, "clip_samples": clip, "features": spec.to_dict(),
                           "mean": [0.0] * spec.num_features, "std": [1.0] * spec.num_features}  # fmt: skip
        mean, std, longest, cropped, measured = self._measure(train, spec, clip)
        if self.options.normalize == "dataset":
            self.audio_spec["mean"], self.audio_spec["std"] = mean, std
        # what a shorter clip is padded with in a batch: the train mean of each band (0 once normalised)
        self.audio_spec["pad"] = [0.0] * spec.num_features if self.options.normalize == "dataset" else mean
        self.audio_spec["frames"] = spec.frames(clip) if clip else longest
        if cropped:
            self._notes.append(
                f"{cropped} of {measured} train clips measured are longer than task.clip_seconds "
                f"({self.options.clip_seconds:g} s) and are cropped (centred in evaluation)."
            )

    def _measure(self, train: Records, spec: FeatureSpec, clip: int | None):
        """Per-band mean/std of the features of up to STATS_SAMPLE train clips (as evaluation sees them),
        the most frames seen, and how many of those clips are longer than the clip length."""
        picks = np.unique(np.linspace(0, len(train) - 1, min(len(train), STATS_SAMPLE)).round().astype(int))
        total = torch.zeros(spec.num_features, dtype=torch.float64)
        squares = torch.zeros(spec.num_features, dtype=torch.float64)
        count = longest = cropped = 0
        for i in picks:
            where = f"{train.where} (train split), row {train.row_number(int(i))}"
            wave = self.load(train[int(i)], where)
            cropped += clip is not None and wave.shape[-1] > clip
            x = features(fit_length(wave, clip) if clip else wave, spec).double()  # (F, frames)
            total += x.sum(dim=1)
            squares += (x * x).sum(dim=1)
            count += x.shape[1]
            longest = max(longest, x.shape[1])
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
        return mean.tolist(), std.tolist(), longest, int(cropped), len(picks)

    def validate(self, records: Records, split: str) -> None:
        """Every clip of a split decodes, at a rate the task accepts (decoded once, before training)."""
        self.require_audio_column(records)
        check_targets(self.data, records, split, self.labels.index)
        rate = self.audio_spec["sample_rate"]
        for i in range(len(records)):
            where = f"{records.where} ({split} split), row {records.row_number(i)}"
            value = records[i][self.audio_column]
            _, found = decode_audio(value, where, rate)
            if found != rate and not self.options.resample:
                load_audio(value, where, rate, resample_other_rates=False)  # raises, naming both rates

    def require_audio_column(self, records: Records) -> None:
        if self.audio_column not in records.columns:
            raise DataError(
                f"data.audio: column '{self.audio_column}' is not in {records.where}. Columns: "
                f"{', '.join(records.columns)}.{did_you_mean(self.audio_column, records.columns)}"
            )

    def state(self) -> dict:
        return {**super().state(), "audio": self.audio_spec}

    @classmethod
    def restore(cls, state, run_dir):
        task = super().restore(state, run_dir)
        spec = state.get("audio")
        keys = {"sample_rate", "clip_samples", "features", "mean", "std", "pad", "frames"}
        if not isinstance(spec, dict) or not keys <= set(spec):
            raise DataError(f"task.json: 'audio' must hold {', '.join(sorted(keys))}.")
        try:
            FeatureSpec(**spec["features"])
        except (TypeError, DataError) as exc:
            raise DataError(f"task.json: audio.features: {exc}") from None
        task.audio_spec = spec
        return task

    # -- model --------------------------------------------------------------------------------------

    def build_model(self, family, options: dict, pretrained: str | None) -> nn.Module:
        fields = family.config_fields()
        picture = (1, self.feature_spec.num_features, int(self.audio_spec["frames"]))
        shape = {"input_shape": picture} if "input_shape" in fields else {"in_channels": 1}
        backbone = family.model_cls(build_config(family, {**shape, "num_outputs": 0, **options}))
        return FeatureModel(backbone, self.num_outputs)

    # -- examples -----------------------------------------------------------------------------------

    def encode(self, example: dict, rng: np.random.Generator | None) -> dict:
        spec, clip = self.feature_spec, self.audio_spec["clip_samples"]
        aug = self.options.augment
        speed = speed_factor(aug.speed, rng) if rng is not None and aug.speed is not None else 1.0
        wave = self.load(example, "example", speed)
        if clip:
            wave = fit_length(wave, clip, rng)
        if rng is not None:
            wave = self.augment_wave(wave, rng)
        x = features(wave, spec)  # (F, frames)
        mean = torch.tensor(self.audio_spec["mean"])[:, None]
        std = torch.tensor(self.audio_spec["std"])[:, None]
        x = (x - mean) / std
        if rng is not None and (aug.freq_masks or aug.time_masks):
            x = spec_augment(x, rng, aug.freq_masks, aug.freq_width, aug.time_masks, aug.time_width)
        label = self.data.get("label") or "label"
        y = self.labels.index(example[label]) if label in example else None
        return {"x": x.unsqueeze(0), "y": y}  # x: (1, F, frames)

    def collate(self, items: list[dict]) -> dict:
        frames = max(item["x"].shape[-1] for item in items)
        pad = torch.tensor(self.audio_spec["pad"], dtype=items[0]["x"].dtype)[:, None]  # (F, 1)
        x = pad.expand(len(items), 1, -1, frames).clone()  # (B, 1, F, frames)
        for row, item in zip(x, items, strict=True):
            row[..., : item["x"].shape[-1]] = item["x"]
        batch = {"x": x, "num_items": len(items)}
        if items[0]["y"] is not None:
            batch["y"] = torch.as_tensor([item["y"] for item in items])
        return batch

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["x"])

    def export_signature(self, model: nn.Module, batch: dict) -> ExportSignature:
        """``x`` (B, 1, F, frames): normalised features, a one-channel picture; its batch varies, and
        its frames too when clips are not cut to ``clip_seconds`` (the family must pool over time)."""
        signature = batch_signature(model, batch, ["x"], task=self.name)
        if not self.audio_spec.get("clip_samples"):
            signature.dynamic["x"][3] = "frames"
        return signature

    # -- prediction ---------------------------------------------------------------------------------

    def input_schema(self) -> dict:
        """JSON Schema of one input record: the clip as the base64 text of an audio file."""
        rate, clip = self.audio_spec["sample_rate"], self.audio_spec["clip_samples"]
        seconds = None if clip is None else clip / rate
        shaped = f"resampled to {rate} Hz" + (f", cropped or padded to {seconds:g} s" if seconds else "")
        field = self.audio_field(
            f"the clip: an audio file (WAV, FLAC, OGG, MP3) in base64, mixed to mono and {shaped}", seconds
        )
        return record_schema({self.audio_column: field}, [self.audio_column], "an audio clip")

    def predict(self, model: nn.Module, batch: dict) -> list[dict]:
        probs = self.forward(model, batch).float().softmax(dim=-1).cpu()
        names = self.labels.names
        k = min(self.options.top_k, len(names))
        rows = []
        for p in probs:
            top = p.topk(k)
            rows.append({
                "label": names[int(top.indices[0])],
                "score": round(float(top.values[0]), 6),
                "top_k": [{"label": names[int(i)], "score": round(float(q), 6)}
                          for q, i in zip(top.values, top.indices, strict=True)],
                "probabilities": {n: round(float(q), 6) for n, q in zip(names, p, strict=True)},
            })  # fmt: skip
        return rows
