"""Audio augmentation: functions on one clip, every random choice drawn from the example's numpy
Generator (so a resumed run sees the same augmented examples, and evaluation, which passes no
generator, sees none).

Waveform ``(T,)``: :func:`fit_length` (crop or pad to a fixed length), :func:`time_shift`,
:func:`add_noise` (white noise or a noise recording at a signal-to-noise ratio), :func:`speed_perturb`
(Kaldi-style: resampled, so tempo and pitch change together). Features ``(F, frames)``:
:func:`spec_augment` (frequency and time masks, Park et al. 2019, without time warping).
"""

from __future__ import annotations

import numpy as np
import torch

from bigmodel.data.audio import resample


def fit_length(wave: torch.Tensor, length: int, rng: np.random.Generator | None = None) -> torch.Tensor:
    """``wave`` ``(T,)`` cropped or zero-padded to ``length`` samples: centred without ``rng``, at a
    random offset with it (a longer clip's window, or a shorter clip's place in the silence)."""
    extra = wave.shape[-1] - length
    if extra == 0:
        return wave
    offset = abs(extra) // 2 if rng is None else int(rng.integers(0, abs(extra) + 1))
    if extra > 0:
        return wave[..., offset : offset + length]
    return torch.nn.functional.pad(wave, (offset, -extra - offset))


def time_shift(wave: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """``wave`` moved by a whole number of samples drawn from ``[-max_shift, max_shift]``; what moves out
    is dropped and the gap is silence (zeros), so the length stays."""
    shift = int(rng.integers(-max_shift, max_shift + 1)) if max_shift > 0 else 0
    if shift == 0:
        return wave
    out = torch.zeros_like(wave)
    if shift > 0:
        out[..., shift:] = wave[..., :-shift]
    else:
        out[..., :shift] = wave[..., -shift:]
    return out


def add_noise(
    wave: torch.Tensor,
    snr_db: tuple[float, float],
    rng: np.random.Generator,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """``wave`` plus noise at a signal-to-noise ratio drawn uniformly from ``snr_db`` (dB, over the clip's
    mean power): white Gaussian noise, or a random stretch of ``noise`` (a recording, repeated when
    shorter than the clip). A silent clip has no SNR and is returned unchanged."""
    signal_power = float(wave.double().pow(2).mean())
    if signal_power == 0.0:
        return wave
    snr = float(rng.uniform(snr_db[0], snr_db[1]))
    length = wave.shape[-1]
    if noise is None:
        stretch = torch.from_numpy(rng.standard_normal(length)).to(wave.dtype)
    else:
        looped = noise if noise.shape[-1] >= length else noise.repeat(-(-length // noise.shape[-1]))
        start = int(rng.integers(0, looped.shape[-1] - length + 1))
        stretch = looped[start : start + length].to(wave.dtype)
    noise_power = float(stretch.double().pow(2).mean())
    if noise_power == 0.0:  # a silent noise recording adds nothing
        return wave
    gain = (signal_power / (noise_power * 10.0 ** (snr / 10.0))) ** 0.5
    return wave + gain * stretch


def speed_factor(factors: tuple[float, float], rng: np.random.Generator) -> float:
    """A speed drawn uniformly from ``factors``, rounded to 0.01 (so the resampling filters it needs are
    a few cached ones)."""
    return round(float(rng.uniform(factors[0], factors[1])), 2)


def speed_perturb(
    wave: torch.Tensor, factors: tuple[float, float], sample_rate: int, rng: np.random.Generator
) -> torch.Tensor:
    """``wave`` played faster or slower by a factor drawn by :func:`speed_factor`: resampled from
    ``sample_rate * factor`` to ``sample_rate``, so a factor of 1.1 lasts 1/1.1 as long and sounds
    higher. (A clip that needs resampling anyway is best sped up in the same pass: resample it from
    ``its_rate * factor``.)"""
    factor = speed_factor(factors, rng)
    if factor == 1.0:
        return wave
    return resample(wave, round(sample_rate * factor), sample_rate)


def spec_augment(
    features: torch.Tensor,
    rng: np.random.Generator,
    freq_masks: int = 2,
    freq_width: int = 8,
    time_masks: int = 2,
    time_width: int = 10,
    fill: float = 0.0,
) -> torch.Tensor:
    """SpecAugment's masks on ``features`` ``(F, frames)`` (or ``(C, F, frames)``): ``freq_masks`` bands
    of ``[0, freq_width]`` rows and ``time_masks`` spans of ``[0, time_width]`` frames set to ``fill``
    (0 = the mean of normalised features). Widths and places are drawn from ``rng``; a copy is returned."""
    out = features.clone()
    rows, frames = out.shape[-2], out.shape[-1]
    for count, width, size, axis in (
        (freq_masks, freq_width, rows, -2),
        (time_masks, time_width, frames, -1),
    ):
        for _ in range(count):
            w = int(rng.integers(0, min(width, size) + 1))
            start = int(rng.integers(0, size - w + 1))
            if w:
                out.narrow(axis, start, w).fill_(fill)
    return out
