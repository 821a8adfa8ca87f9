"""Speech features in torch: STFT, mel filterbanks (Slaney and HTK), log-mel and MFCC.

The definitions are librosa's, and tests/data/test_audio_features.py checks each against it on the
same signal: ``stft`` = ``librosa.stft`` (centred frames, zero padding, periodic Hann window),
``mel_filterbank`` = ``librosa.filters.mel``, ``mel_spectrogram`` = ``librosa.feature.melspectrogram``,
``power_to_db`` = ``librosa.power_to_db`` (its ``top_db`` floor taken per clip), ``mfcc`` =
``librosa.feature.mfcc`` (DCT-II, orthonormal, of the log-mel in dB). Computed in the waveform's
dtype. Measured on espeak speech at 16 kHz (n_fft 512, 25 ms window, 10 ms hop, 40 bands), against
librosa in float64, as a fraction of the largest value: in float64 every stage agrees to 2e-15 (the
log-mel to 2e-12 dB); in float32 (what training uses) the STFT to 1.2e-7, the filterbank to 3.4e-8,
the mel spectrogram to 1.7e-7, the log-mel to 6e-4 dB and the MFCCs to 6.4e-7.

A :class:`FeatureSpec` fixes every number, so task.json can hold it and predict computes exactly the
features training saw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bigmodel.errors import DataError

# The floor of ``log: ln`` features (HiFi-GAN's ``dynamic_range_compression`` clamp).
LN_FLOOR = 1e-5

# Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 steps per 6.4x).
_SLANEY_STEP_HZ = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


@dataclass(frozen=True)
class FeatureSpec:
    """Every number that decides a clip's features.

    Attributes:
        sample_rate: Hz of the waveform.
        kind: ``log_mel`` (``n_mels`` rows, dB) or ``mfcc`` (``n_mfcc`` rows).
        n_fft: FFT size (frequency bins ``n_fft // 2 + 1``).
        win_length: Hann window length (<= n_fft; centred in the frame); None = n_fft.
        hop_length: samples between frames.
        n_mels: mel bands.
        fmin, fmax: the filterbank's frequency range (fmax None = Nyquist).
        mel_scale: ``slaney`` (librosa's default) or ``htk``.
        mel_norm: ``slaney`` (each band's area equal) or None (peak 1).
        power: 2 for power, 1 for magnitude.
        top_db: floor of the dB values below each clip's maximum (None: no floor).
        n_mfcc: cepstral coefficients kept (``kind: mfcc``).
        log: ``db`` (``10 log10``, floored at ``top_db``; librosa's ``power_to_db``) or ``ln`` (the natural
            log of the mel clamped at ``LN_FLOOR`` = 1e-5, what HiFi-GAN-style vocoders take; ``top_db``
            must be null).
        framing: ``center`` (librosa: frame ``t`` centred on sample ``t * hop``, zero padding,
            ``1 + T // hop`` frames) or ``hop`` (HiFi-GAN's: the clip reflect-padded by
            ``(n_fft - hop) / 2`` each side and not centred, so frame ``t`` is centred on the hop block
            ``[t * hop, (t + 1) * hop)`` and a vocoder's ``frames * hop`` samples line up with the clip;
            ``max(1, T // hop)`` frames).
    """

    sample_rate: int = 16000
    kind: Literal["log_mel", "mfcc"] = "log_mel"
    n_fft: int = 512
    win_length: int | None = 400
    hop_length: int = 160
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float | None = None
    mel_scale: Literal["slaney", "htk"] = "slaney"
    mel_norm: Literal["slaney"] | None = "slaney"
    power: float = 2.0
    top_db: float | None = 80.0
    n_mfcc: int = 13
    log: Literal["db", "ln"] = "db"
    framing: Literal["center", "hop"] = "center"

    def __post_init__(self):
        win = self.win_length or self.n_fft
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        problems = [
            (self.sample_rate <= 0, f"sample_rate must be positive, got {self.sample_rate}"),
            (self.kind not in ("log_mel", "mfcc"), f"kind must be log_mel or mfcc, got {self.kind!r}"),
            (self.n_fft < 2, f"n_fft must be >= 2, got {self.n_fft}"),
            (not 1 <= win <= self.n_fft, f"win_length must be in [1, n_fft={self.n_fft}], got {win}"),
            (self.hop_length < 1, f"hop_length must be >= 1, got {self.hop_length}"),
            (self.n_mels < 1, f"n_mels must be >= 1, got {self.n_mels}"),
            (not 0 <= self.fmin < fmax <= self.sample_rate / 2,
             f"need 0 <= fmin < fmax <= sample_rate / 2 = {self.sample_rate / 2:g}, got fmin "
             f"{self.fmin:g} and fmax {fmax:g}"),
            (self.mel_scale not in ("slaney", "htk"), f"mel_scale must be slaney or htk: {self.mel_scale!r}"),
            (self.mel_norm not in ("slaney", None), f"mel_norm must be slaney or null: {self.mel_norm!r}"),
            (self.power <= 0, f"power must be positive, got {self.power}"),
            (self.top_db is not None and self.top_db <= 0, f"top_db must be positive, got {self.top_db}"),
            (self.kind == "mfcc" and not 1 <= self.n_mfcc <= self.n_mels,
             f"n_mfcc must be in [1, n_mels={self.n_mels}], got {self.n_mfcc}"),
            (self.log not in ("db", "ln"), f"log must be db or ln, got {self.log!r}"),
            (self.log == "ln" and self.top_db is not None,
             f"top_db is a floor in dB (log: db); with log: ln it must be null, got {self.top_db}"),
            (self.framing not in ("center", "hop"), f"framing must be center or hop, got {self.framing!r}"),
        ]  # fmt: skip
        bad = [message for failed, message in problems if failed]
        if bad:
            raise DataError(f"audio features: {'; '.join(bad)}.")

    @property
    def num_features(self) -> int:
        """Rows of :func:`features`: ``n_mels`` or ``n_mfcc``."""
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    def frames(self, samples: int) -> int:
        """Frames of a clip of ``samples`` samples."""
        if self.framing == "hop":
            return max(1, samples // self.hop_length)
        return 1 + samples // self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- spectrograms -----------------------------------------------------------------------------------


def stft(wave: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None) -> torch.Tensor:
    """Complex STFT ``(..., n_fft // 2 + 1, frames)`` of ``wave`` ``(..., T)``: frames centred on
    ``t * hop_length`` (the clip padded with ``n_fft // 2`` zeros each side), a periodic Hann window of
    ``win_length`` centred in each ``n_fft`` frame."""
    win = win_length or n_fft
    window = torch.hann_window(win, periodic=True, dtype=wave.dtype, device=wave.device)
    lead = wave.shape[:-1]
    spec = torch.stft(wave.reshape(-1, wave.shape[-1]), n_fft, hop_length, win, window, center=True,
                      pad_mode="constant", return_complex=True)  # fmt: skip
    return spec.reshape(*lead, *spec.shape[-2:])


def hz_to_mel(hz: np.ndarray | float, scale: str = "slaney") -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    linear = hz / _SLANEY_STEP_HZ
    above = (
        _SLANEY_BREAK_HZ / _SLANEY_STEP_HZ
        + np.log(np.maximum(hz, 1e-300) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    )
    return np.where(hz >= _SLANEY_BREAK_HZ, above, linear)


def mel_to_hz(mel: np.ndarray | float, scale: str = "slaney") -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    break_mel = _SLANEY_BREAK_HZ / _SLANEY_STEP_HZ
    return np.where(
        mel >= break_mel,
        _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - break_mel)),
        mel * _SLANEY_STEP_HZ,
    )


@functools.lru_cache(maxsize=16)
def _mel_weights(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, scale: str,
                 norm: str | None) -> np.ndarray:  # fmt: skip
    bins = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin, scale), hz_to_mel(fmax, scale), n_mels + 2), scale)
    widths = np.diff(edges)
    distance = edges[:, None] - bins[None, :]  # (n_mels + 2, bins): edge minus bin frequency
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # triangles on consecutive edges
    if norm == "slaney":  # equal area: divide by half the band's width in Hz
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.flags.writeable = False
    return weights


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: float | None = None,
    scale: str = "slaney",
    norm: str | None = "slaney",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular mel filters ``(n_mels, n_fft // 2 + 1)`` on ``n_mels + 2`` edges evenly spaced in mels
    between ``fmin`` and ``fmax`` (default: Nyquist); ``norm="slaney"`` scales each to equal area."""
    fmax = sample_rate / 2 if fmax is None else fmax
    weights = _mel_weights(int(sample_rate), int(n_fft), int(n_mels), float(fmin), float(fmax), scale, norm)
    return torch.tensor(weights, dtype=dtype)


def hop_framed_stft(
    wave: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None
) -> torch.Tensor:
    """Complex STFT ``(..., n_fft // 2 + 1, max(1, T // hop))`` in ``framing: hop``: ``wave`` ``(..., T)``
    reflect-padded by ``(n_fft - hop) // 2`` each side (zeros where the clip is too short to reflect),
    frames not centred — frame ``t`` is centred on samples ``[t * hop, (t + 1) * hop)``."""
    win = win_length or n_fft
    lead, samples = wave.shape[:-1], wave.shape[-1]
    flat = wave.reshape(-1, 1, samples)
    if samples < hop_length:  # one frame at least: a clip shorter than a hop is zero-padded to one
        flat = torch.nn.functional.pad(flat, (0, hop_length - samples))
    left = (n_fft - hop_length) // 2
    right = n_fft - hop_length - left
    mode = "reflect" if flat.shape[-1] > max(left, right) else "constant"
    padded = torch.nn.functional.pad(flat, (left, right), mode=mode)[:, 0]
    window = torch.hann_window(win, periodic=True, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(padded, n_fft, hop_length, win, window, center=False, return_complex=True)
    return spec.reshape(*lead, *spec.shape[-2:])


def spectrogram(wave: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """The complex STFT ``(..., n_fft // 2 + 1, spec.frames(T))`` in the spec's framing."""
    framed = hop_framed_stft if spec.framing == "hop" else stft
    return framed(wave, spec.n_fft, spec.hop_length, spec.win_length)


def mel_spectrogram(wave: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """``(..., n_mels, frames)``: the mel filterbank applied to ``|STFT| ** power``."""
    magnitude = spectrogram(wave, spec).abs()
    power = magnitude**2 if spec.power == 2.0 else magnitude**spec.power
    basis = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, spec.mel_scale,
                           spec.mel_norm, dtype=power.dtype).to(power.device)  # fmt: skip
    return torch.matmul(basis, power)


def power_to_db(power: torch.Tensor, amin: float = 1e-10, top_db: float | None = 80.0) -> torch.Tensor:
    """``10 * log10(max(power, amin))`` (reference 1), floored at ``top_db`` below each clip's maximum
    (the maximum over the last two axes)."""
    db = 10.0 * torch.log10(power.clamp_min(amin))
    if top_db is not None:
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = torch.maximum(db, peak - top_db)
    return db


@functools.lru_cache(maxsize=16)
def _dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    n = np.arange(n_in)
    k = np.arange(n_out)[:, None]
    matrix = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    matrix[0] /= math.sqrt(2.0)  # orthonormal: the DC row has weight sqrt(1 / n_in)
    matrix.flags.writeable = False
    return matrix


def dct_matrix(n_out: int, n_in: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The first ``n_out`` rows of the orthonormal DCT-II of length ``n_in``: ``(n_out, n_in)``."""
    return torch.tensor(_dct_matrix(int(n_out), int(n_in)), dtype=dtype)


def log_compress(mel: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """A mel spectrogram in the spec's log units: dB (``power_to_db``) or ``ln(max(mel, LN_FLOOR))``."""
    if spec.log == "ln":
        return torch.log(mel.clamp_min(LN_FLOOR))
    return power_to_db(mel, top_db=spec.top_db)


def log_mel(wave: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Log-mel spectrogram ``(..., n_mels, frames)`` in the spec's log units (dB by default)."""
    return log_compress(mel_spectrogram(wave, spec), spec)


def mfcc(wave: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """MFCCs ``(..., n_mfcc, frames)``: the orthonormal DCT-II of the log-mel (dB or ln) over mel bands."""
    db = log_mel(wave, spec)
    return torch.matmul(dct_matrix(spec.n_mfcc, spec.n_mels, dtype=db.dtype).to(db.device), db)


def features(wave: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """The spec's features of ``wave`` ``(..., T)``: ``(..., spec.num_features, spec.frames(T))``."""
    return mfcc(wave, spec) if spec.kind == "mfcc" else log_mel(wave, spec)
