"""Speech features in torch equal librosa's on the same signal: STFT, mel filterbanks (Slaney and HTK),
mel spectrogram, log-mel (dB) and MFCC, in float64 and in float32 (what training uses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigmodel.data.audio_features import (
    FeatureSpec,
    dct_matrix,
    features,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_spectrogram,
    mel_to_hz,
    mfcc,
    stft,
)
from bigmodel.errors import DataError

librosa = pytest.importorskip("librosa", reason="librosa is the reference (test extra)")
scipy_fft = pytest.importorskip("scipy.fft")


def speech_like(seconds=1.0, rate=16000, seed=0) -> np.ndarray:
    """Voiced harmonics gliding in pitch, a fricative noise burst and silence: the dynamic range of
    speech (the log-mel floor and the top_db clip both matter)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    phase = 2 * np.pi * np.cumsum(120 + 60 * t / seconds) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25)) * (t < 0.45 * seconds)
    hiss = rng.standard_normal(n) * 0.2 * ((t > 0.55 * seconds) & (t < 0.8 * seconds))
    return 0.4 * (voiced + hiss) / np.abs(voiced + hiss).max()


def relative(ours, ref) -> float:
    """Largest difference as a fraction of the reference's largest magnitude."""
    ours = ours.numpy() if isinstance(ours, torch.Tensor) else ours
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


WAVE = speech_like()
SETTINGS = [
    {"n_fft": 512, "hop_length": 160, "win_length": 400},  # 25 ms / 10 ms at 16 kHz
    {"n_fft": 256, "hop_length": 64, "win_length": None},
    {"n_fft": 1024, "hop_length": 512, "win_length": 1024},
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_stft_equals_librosa(settings):
    ref = librosa.stft(WAVE, **settings)
    ours = stft(torch.from_numpy(WAVE), settings["n_fft"], settings["hop_length"], settings["win_length"])
    assert ours.shape == ref.shape and ours.dtype == torch.complex128
    assert relative(ours, ref) < 1e-12
    assert relative(stft(torch.from_numpy(WAVE).float(), **settings), ref) < 1e-6


@pytest.mark.parametrize(
    "scale, norm, fmin, fmax",
    [("slaney", "slaney", 0.0, None), ("htk", None, 20.0, 7600.0), ("htk", "slaney", 300.0, None),
     ("slaney", None, 50.0, 4000.0)],
)  # fmt: skip
def test_mel_filterbank_equals_librosa(scale, norm, fmin, fmax):
    htk = scale == "htk"
    ref = librosa.filters.mel(
        sr=16000, n_fft=512, n_mels=40, fmin=fmin, fmax=fmax, htk=htk, norm=norm, dtype=np.float64
    )
    ours = mel_filterbank(16000, 512, 40, fmin, fmax, scale, norm, dtype=torch.float64)
    assert ours.shape == (40, 257) and relative(ours, ref) < 1e-12
    hz = np.array([0.0, 440.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0])
    assert np.allclose(hz_to_mel(hz, scale), librosa.hz_to_mel(hz, htk=scale == "htk"), rtol=1e-12)
    assert np.allclose(mel_to_hz(hz_to_mel(hz, scale), scale), hz, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_mel_spectrogram_log_mel_and_mfcc_equal_librosa(dtype, tolerance):
    spec = FeatureSpec(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=40, fmin=20.0)
    kwargs = {"sr": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40, "fmin": 20.0}
    wave = torch.from_numpy(WAVE).to(dtype)
    ref_mel = librosa.feature.melspectrogram(y=WAVE, dtype=np.float64, **kwargs)
    ours = mel_spectrogram(wave, spec)
    assert ours.shape == ref_mel.shape == (40, spec.frames(len(WAVE))) and ours.dtype == dtype
    assert relative(ours, ref_mel) < tolerance
    ref_db = librosa.power_to_db(ref_mel, top_db=80.0)
    ours_db = log_mel(wave, spec)
    assert float((ours_db - torch.from_numpy(ref_db)).abs().max()) < (
        1e-9 if dtype == torch.float64 else 2e-3
    )
    assert float(ours_db.min()) == pytest.approx(
        float(ours_db.max()) - 80.0, abs=1e-3
    )  # the floor bites here
    ref_mfcc = librosa.feature.mfcc(y=WAVE, n_mfcc=13, dtype=np.float64, **kwargs)
    ours_mfcc = mfcc(wave, FeatureSpec(**{**spec.to_dict(), "kind": "mfcc", "n_mfcc": 13}))
    assert ours_mfcc.shape == ref_mfcc.shape == (13, spec.frames(len(WAVE)))
    assert relative(ours_mfcc, ref_mfcc) < tolerance


def test_dct_is_scipys_orthonormal_dct_ii_and_features_batch():
    x = np.random.default_rng(0).standard_normal((40, 7))
    ref = scipy_fft.dct(x, type=2, norm="ortho", axis=0)[:13]
    assert np.allclose(dct_matrix(13, 40, torch.float64).numpy() @ x, ref, atol=1e-12)
    full = dct_matrix(40, 40, torch.float64)
    assert torch.allclose(full @ full.T, torch.eye(40, dtype=torch.float64), atol=1e-12)
    spec = FeatureSpec(kind="mfcc", n_mfcc=20)
    pair = torch.from_numpy(np.stack([WAVE, speech_like(seed=1)])).float()
    batched = features(pair, spec)
    assert batched.shape == (2, 20, 101)
    assert torch.allclose(batched[1], features(pair[1], spec), atol=1e-4)  # the floor is per clip


def test_impossible_feature_settings_are_refused_by_name():
    with pytest.raises(
        DataError, match=r"need 0 <= fmin < fmax <= sample_rate / 2 = 4000, got fmin 20 and fmax 6000"
    ):
        FeatureSpec(sample_rate=8000, fmax=6000.0)
    with pytest.raises(
        DataError, match=r"win_length must be in \[1, n_fft=256\], got 400.*n_mfcc must be in"
    ):
        FeatureSpec(n_fft=256, win_length=400, kind="mfcc", n_mfcc=60)
    assert FeatureSpec().num_features == 40 and FeatureSpec(kind="mfcc").num_features == 13
