"""Mel-cepstral distance: DTW equal to librosa's, exact values on constructed cepstra, 0 for identical
waves, blind to gain, symmetric, mergeable sums, and bad waves refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigmodel.errors import DataError
from bigmodel.evaluation.speech_quality import (
    MCD_SCALE_DB,
    MelCepstralDistanceSums,
    dtw,
    mcd_of_cepstra,
    mel_cepstra,
    mel_cepstral_distance,
)

librosa = pytest.importorskip("librosa")


def vowel(seconds: float, pitch: float, formant: float, rate: int = 16000, seed: int = 0) -> torch.Tensor:
    """Harmonics of ``pitch`` shaped by one resonance at ``formant`` Hz, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    harmonics = np.arange(1, int(rate / 2 / pitch))
    gains = 1.0 / (1.0 + ((harmonics * pitch - formant) / 300.0) ** 2)
    wave = (gains[:, None] * np.sin(2 * np.pi * pitch * harmonics[:, None] * t)).sum(0)
    return torch.tensor(0.1 * wave / np.abs(wave).max() + 1e-3 * rng.standard_normal(t.size))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (23, 31), (40, 12)])
def test_dtw_equals_librosa(shape):
    cost = np.random.default_rng(sum(shape)).random(shape)
    reference_total, reference_path = librosa.sequence.dtw(C=cost)
    total, path = dtw(cost)
    assert total == pytest.approx(reference_total[-1, -1], abs=1e-12)
    np.testing.assert_array_equal(path, reference_path[::-1])
    assert cost[path[:, 0], path[:, 1]].sum() == pytest.approx(total, abs=1e-12)


def test_mcd_of_constructed_cepstra_is_exact():
    rng = np.random.default_rng(0)
    offset = np.array([0.3, -0.4] + [0.0] * 11)  # |offset| = 0.5
    constant = np.tile(rng.standard_normal(13), (20, 1))
    # every frame differs by the same vector: MCD = (10 / ln 10) sqrt(2) |offset|
    assert mcd_of_cepstra(constant, constant + offset) == pytest.approx(MCD_SCALE_DB * 0.5, abs=1e-12)
    assert MCD_SCALE_DB * 0.5 == pytest.approx(10 / math.log(10) * math.sqrt(2 * 0.25))
    # the same frames said at half speed: DTW aligns them exactly
    frames = rng.standard_normal((15, 13))
    assert mcd_of_cepstra(frames, np.repeat(frames, 2, axis=0)) == 0.0


def test_mcd_of_waves_identical_gain_symmetry_and_difference():
    ah, ee = vowel(0.5, 120, 700), vowel(0.5, 120, 2300, seed=1)
    assert mel_cepstral_distance(ah, ah, 16000) == 0.0
    assert mel_cepstral_distance(ah, 0.25 * ah, 16000) < 1e-6  # a gain moves c0 only
    different = mel_cepstral_distance(ah, ee, 16000)
    assert different == pytest.approx(mel_cepstral_distance(ee, ah, 16000), abs=1e-9)
    assert different > 5.0  # measured 9.0 dB (resonances 1.6 kHz apart)
    # a slower rendition of the same vowel is much nearer than another vowel
    assert (
        mel_cepstral_distance(ah, vowel(0.8, 120, 700, seed=2), 16000) < 0.3 * different
    )  # measured 0.47 dB
    as_numpy = mel_cepstral_distance(ah.numpy(), ee.float().numpy(), 16000)  # NumPy waves, any float dtype
    assert as_numpy == pytest.approx(different, abs=1e-3)
    assert mel_cepstra(ah, 16000).shape == (51, 24)  # 1 + 8000 // 160 frames, c1..c24


def test_sums_merge_to_the_mean_over_utterances():
    ah, ee = vowel(0.3, 110, 700), vowel(0.3, 110, 2300, seed=1)
    first, second = MelCepstralDistanceSums(), MelCepstralDistanceSums()
    values = [first.update(ah, ee, 16000), first.update(ah, ah, 16000), second.update(ee, ah, 16000)]
    first.merge(second)
    result = first.compute()
    assert result["mcd_utterances"] == 3 and result["mcd_db"] == pytest.approx(sum(values) / 3)
    assert MelCepstralDistanceSums().compute() == {"mcd_db": None, "mcd_utterances": 0}


@pytest.mark.parametrize(
    ("wave", "match"),
    [
        (torch.zeros(2, 8000), r"reference wave must be one-dimensional .* got shape \(2, 8000\)"),
        (torch.zeros(100), r"at least 25 ms \(400 samples at 16000 Hz\); got shape \(100,\)"),
        (torch.full((8000,), math.nan), "holding NaN or inf"),
    ],
)
def test_bad_waves_are_refused(wave, match):
    with pytest.raises(DataError, match=match):
        mel_cepstral_distance(wave, torch.zeros(8000), 16000)
