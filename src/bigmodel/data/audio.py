"""Audio as users have it — files, bytes, arrays, class folders, manifests — decoded with soundfile.

Every clip reaches a task as a float32 mono waveform ``(T,)`` at the task's sample rate: 16-bit and
24-bit PCM scaled to [-1, 1] (as soundfile reads them), several channels averaged, another sample rate
resampled (:func:`resample`) or refused (``resample=False``). What cannot be a clip is refused naming
where it came from: a missing or empty file, a file soundfile cannot decode (a text file, a PNG), a WAV
whose data chunk is cut short, a clip of no samples, NaN or inf samples, an array of the wrong rank.

Resampling is band-limited and done in torch: a Kaiser-windowed sinc low-pass (beta 5, cut-off at the
lower of the two Nyquist rates, 10 zero-crossings of the slower rate per side) applied polyphase — the
filter scipy.signal.resample_poly designs, so ``librosa.resample(res_type="polyphase")`` agrees to
float precision (measured on espeak speech, 22,050 -> 16,000 Hz: 2e-15 in float64, 1.4e-7 of the peak
in float32). librosa's default ``soxr_hq`` has a sharper transition band: on full-band speech (energy
up to 11 kHz) the two differ by up to 4 % of the peak, but on the same speech low-passed below 6 kHz
they agree within 1e-3 of the peak, so the difference lies in the band around the new Nyquist rate.

Sources: ``audio:FOLDER`` reads a folder with one sub-folder per class (or ``train/``, ``validation/``,
``test/`` folders each holding class folders); ``audio:FILE.csv`` / ``audio:FILE.jsonl`` read a
manifest of records with a path column (``audio``, ``path``, ``file``, ``filename`` or ``wav``) and a
label column, paths resolved relative to the manifest's folder.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bigmodel.data.folders import names_file, read_class_folders
from bigmodel.data.records import ColumnRecords, Records
from bigmodel.errors import DataError

AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
                  ".au", ".snd", ".caf", ".w64", ".rf64")  # fmt: skip
PATH_COLUMNS = ("audio", "path", "file", "filename", "wav")  # what a manifest may call its path column
MAX_SECONDS = 3600.0  # a longer "clip" is a mistake, not one training example
RESAMPLE_CHUNK = 1 << 15  # output samples gathered at a time (bounds memory on long clips)


def is_audio_path(value) -> bool:
    """Whether ``value`` names an audio file by its suffix (a ``Path``, or a short one-line ``str``)."""
    return names_file(value, AUDIO_SUFFIXES)


@dataclass(frozen=True, eq=False)
class Waveform:
    """Audio a prediction holds (text-to-speech): mono float samples ``(T,)`` in [-1, 1] at
    ``sample_rate`` Hz. ``bigmodel predict`` writes it as a WAV file, the server as a base64 WAV."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def wav_bytes(self) -> bytes:
        """A 16-bit PCM mono WAV file of the samples (clipped to [-1, 1])."""
        buffer = io.BytesIO()
        clipped = np.clip(np.asarray(self.samples, dtype=np.float32), -1.0, 1.0)
        _soundfile().write(buffer, clipped, self.sample_rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue()


# --- one clip ---------------------------------------------------------------------------------------


def load_audio(value, where: str, sample_rate: int, resample_other_rates: bool = True) -> torch.Tensor:
    """One clip as a float32 mono waveform ``(T,)`` at ``sample_rate``.

    Args:
        value: a path (``str``/``Path``), encoded bytes (WAV, FLAC, OGG, MP3, ...), an array of samples
            (``(T,)`` mono, or ``(T, C)`` / ``(C, T)`` with at most 8 channels, which are averaged;
            taken to be at ``sample_rate`` already), or a record as Hugging Face ``datasets`` gives it:
            ``{"array", "sampling_rate"}`` or ``{"bytes"}`` / ``{"path"}``.
        where: how messages name it (``"train split, row 12"``).
        sample_rate: the rate the task works at (Hz).
        resample_other_rates: resample a clip stored at another rate; False refuses it, naming both rates.
    """
    samples, rate = decode_audio(value, where, sample_rate)
    if isinstance(value, (str, Path)):
        where = f"{where} ('{value}')"
    if rate != sample_rate:
        if not resample_other_rates:
            raise DataError(
                f"{where}: the clip is sampled at {rate} Hz; the model reads {sample_rate} Hz and resampling "
                "is off (task.resample: false). Resample it, or turn task.resample on."
            )
        samples = resample(samples, rate, sample_rate)
    if samples.numel() == 0:
        raise DataError(f"{where}: the clip is empty (0 samples after resampling to {sample_rate} Hz).")
    return samples


def decode_audio(value, where: str, array_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """``(float32 mono waveform (T,), its sample rate)`` of one clip, at the rate it is stored at.

    ``array_rate`` is the rate a bare array is taken to have (it carries none)."""
    if isinstance(value, Mapping):
        return _from_record(value, where, array_rate)
    if isinstance(value, (str, Path)):
        return _read(_file_bytes(Path(value), where), f"{where} ('{value}')")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _read(bytes(value), where)
    if isinstance(value, (np.ndarray, torch.Tensor, list, tuple)):
        if array_rate is None:
            raise DataError(f"{where}: an array of samples carries no sample rate; say which it has.")
        return _from_array(value, where), int(array_rate)
    raise DataError(
        f"{where}: {type(value).__name__} is not audio; give an audio file path, encoded bytes (WAV, FLAC, "
        "OGG, MP3), an array of samples or a record {'array', 'sampling_rate'}."
    )


def _from_record(value: Mapping, where: str, array_rate: int | None) -> tuple[torch.Tensor, int]:
    if value.get("array") is not None:
        rate = value.get("sampling_rate", array_rate)
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise DataError(f"{where}: 'sampling_rate' must be a positive whole number of Hz; got {rate!r}.")
        return _from_array(value["array"], where), int(rate)
    if value.get("bytes") is not None:
        return decode_audio(value["bytes"], where, array_rate)
    if value.get("path") is not None:
        return decode_audio(value["path"], where, array_rate)
    raise DataError(
        f"{where}: an audio record needs 'array' and 'sampling_rate', 'bytes' or 'path'; it has keys "
        f"{sorted(map(str, value))}."
    )


def _file_bytes(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where}: audio file not found: '{path}'.") from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a name too long
        raise DataError(f"{where}: cannot read '{path}': {getattr(exc, 'strerror', None) or exc}.") from None


def _soundfile():
    """The soundfile module (libsndfile), imported when audio is first read."""
    try:
        import soundfile
    except ImportError as exc:  # the wheel is missing, or its bundled libsndfile cannot load
        raise DataError(
            f"reading audio needs the soundfile package ({exc}): pip install soundfile (or "
            "pip install 'bigmodel[audio]')."
        ) from None
    return soundfile


def _read(data: bytes, where: str) -> tuple[torch.Tensor, int]:
    soundfile = _soundfile()
    if not data:
        raise DataError(f"{where}: the audio file is empty (0 bytes).")
    short = wav_shortfall(data)
    if short:
        raise DataError(
            f"{where}: the WAV file is truncated: its header promises {short:,} more bytes of samples than "
            "the file holds."
        )
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            if f.frames > MAX_SECONDS * f.samplerate:
                raise DataError(f"{where}: the clip lasts over {MAX_SECONDS:.0f} s; refused.")
            samples, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except soundfile.LibsndfileError as exc:
        reason = exc.error_string.rstrip(".")
        raise DataError(
            f"{where}: not audio soundfile can decode ({_sniff(data)}; {reason}); give WAV, FLAC, OGG, MP3 "
            "or AIFF."
        ) from None
    except (RuntimeError, TypeError, ValueError) as exc:  # damaged data inside a recognised container
        raise DataError(f"{where}: the audio is damaged and cannot be decoded ({exc}).") from None
    if samples.shape[0] == 0:
        raise DataError(f"{where}: the clip is empty (a header and no samples).")
    wave = torch.from_numpy(samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0].copy())
    if not torch.isfinite(wave).all():
        raise DataError(f"{where}: the clip holds NaN or inf samples.")
    return wave, int(rate)


def wav_shortfall(data: bytes) -> int:
    """For a RIFF/WAVE file, how many bytes of its data chunk are missing (0 when complete, when it is
    not a WAV, or when the writer left the size open — 0 or 0xFFFFFFFF, as streaming writers do).
    libsndfile reads a cut-short WAV without complaint, so this is checked first."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            return 0 if size in (0, 0xFFFFFFFF) else max(0, size - (len(data) - pos - 8))
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    return 0


def _sniff(data: bytes) -> str:
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"starts with bytes {head[:8].hex(' ')}"
    return f"starts with text {text[:30]!r}"


def _from_array(value, where: str) -> torch.Tensor:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise DataError(f"{where}: audio samples must be numbers; found dtype {array.dtype}.")
    if array.ndim == 2 and min(array.shape) <= 8:  # (T, C) as soundfile reads, or (C, T): average them
        array = array.mean(axis=int(np.argmin(array.shape)), dtype=np.float64)
    if array.ndim != 1:
        raise DataError(
            f"{where}: an audio array of shape {tuple(np.shape(value))} is not a clip: give (samples,) mono, "
            "or (samples, channels) with at most 8 channels."
        )
    if array.size == 0:
        raise DataError(f"{where}: the clip is empty (0 samples).")
    if np.issubdtype(array.dtype, np.integer):  # PCM: scale by the type's range, as soundfile does
        info = np.iinfo(array.dtype)
        array = (array.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    elif not np.isfinite(array).all():
        raise DataError(f"{where}: the clip holds NaN or inf samples.")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# --- resampling -------------------------------------------------------------------------------------


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling of ``wave`` (``(..., T)``) from ``orig_rate`` to ``new_rate`` (whole Hz).

    Output sample ``n`` sits at input time ``n * orig / new``; it is the sum of the input samples within
    the filter's reach, weighted by the windowed sinc at their distance (the filter of
    scipy.signal.resample_poly; see the module docstring). Output length: ``ceil(T * new / orig)``;
    the signal is taken as zero outside the clip. Works in float32 (float64 input stays float64).
    """
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate <= 0 or new_rate <= 0:
        raise DataError(f"resample: sample rates must be positive; got {orig_rate} and {new_rate} Hz.")
    if orig_rate == new_rate:
        return wave
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    kernels, starts, reach = _polyphase_kernels(up, down)
    dtype = wave.dtype if wave.dtype == torch.float64 else torch.float32
    kernels = torch.from_numpy(kernels).to(device=wave.device, dtype=dtype)  # (up, taps)
    starts = torch.from_numpy(starts).to(wave.device)  # (up,)
    taps = kernels.shape[1]
    length, lead = wave.shape[-1], wave.shape[:-1]
    n_out = -(-length * up // down)
    periods = -(-n_out // up)  # outputs come in periods of `up`, each `down` input samples further on
    flat = wave.to(dtype).reshape(-1, length)
    padded = torch.nn.functional.pad(flat, (reach, periods * down + taps - length - reach))
    windows = padded.unfold(-1, taps, 1)  # (B, positions, taps): a view, no copy
    chunk = max(1, RESAMPLE_CHUNK // up)
    out = []
    for first in range(0, periods, chunk):
        k = torch.arange(first, min(first + chunk, periods), device=wave.device)
        rows = windows[:, (k[:, None] * down + starts[None, :]).reshape(-1)]  # (B, P * up, taps)
        out.append(
            torch.einsum("bkjt,jt->bkj", rows.reshape(len(flat), len(k), up, taps), kernels).flatten(1)
        )
    return torch.cat(out, dim=-1)[:, :n_out].reshape(*lead, n_out)


@functools.lru_cache(maxsize=32)
def _polyphase_kernels(up: int, down: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The filter cut into one kernel per output of a period: output ``k * up + j`` is
    ``kernels[j] . x_padded[k * down + starts[j] : ... + taps]`` (``x`` padded with ``reach`` zeros).

    The filter: a low-pass at ``1 / max(up, down)`` of the upsampled Nyquist rate, ``10 * max(up, down)``
    taps each side, a symmetric Kaiser window (beta 5), unit gain at DC, times ``up`` (upsampling inserts
    ``up - 1`` zeros per sample) — scipy.signal.resample_poly's defaults."""
    rate = max(up, down)
    half = 10 * rate
    m = np.arange(-half, half + 1, dtype=np.float64)
    h = np.sinc(m / rate) * np.kaiser(2 * half + 1, 5.0)
    h *= up / h.sum()
    reach = half // up + 1  # input samples each side an output can reach
    j = np.arange(up)
    starts, phase = (j * down) // up, (j * down) % up  # output j sits `phase / up` after input `starts`
    # tap t reads input starts + t - reach, at distance (phase + (reach - t) * up) upsampled samples
    distance = phase[:, None] + (reach - np.arange(2 * reach + 1))[None, :] * up
    kernels = np.where(np.abs(distance) <= half, h[np.clip(distance + half, 0, 2 * half)], 0.0)
    return kernels, starts, reach


# --- folders and manifests --------------------------------------------------------------------------


def read_audio_source(what: str | Path) -> dict[str, Records]:
    """``audio:FOLDER`` or ``audio:MANIFEST`` (.csv / .jsonl): ``{"data": records}`` or the folder's
    splits; records have the column ``audio`` (the file's path) and the label column."""
    path = Path(what).expanduser()
    if path.is_dir():
        return read_audio_folder(path)
    if path.suffix.lower() in (".csv", ".jsonl", ".json"):
        return {"data": read_audio_manifest(path)}
    if not path.exists():
        raise DataError(f"data.source 'audio:{what}': no such folder or manifest file.")
    raise DataError(
        f"data.source 'audio:{what}': give a folder of class folders, or a .csv/.jsonl manifest with a path "
        "and a label column."
    )


def read_audio_folder(root: str | Path) -> dict[str, Records]:
    """Class folders of audio files, or split folders (train/validation/test) of them.

    Returns ``{"data": records}`` or the folder's splits; columns ``audio`` (the path) and ``label``
    (the class folder's name). Files whose suffix is not audio (a README) and hidden files are not
    examples. The fingerprint hashes every file's bytes."""
    return read_class_folders(root, "audio", "audio", AUDIO_SUFFIXES, "yes/, no/")


def read_audio_manifest(path: str | Path) -> ColumnRecords:
    """A CSV or JSONL manifest: one record per clip, a path column (``audio``, ``path``, ``file``,
    ``filename`` or ``wav``; relative paths are relative to the manifest's folder) and any other columns
    (the label). The path column becomes ``audio``; the fingerprint hashes the manifest and every clip."""
    from bigmodel.data.sources import load_source  # sources reads audio: sources through this module

    path = Path(path).expanduser()
    scheme = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    (records,) = load_source(f"{scheme}:{path}").values()
    column = next((c for c in PATH_COLUMNS if c in records.columns), None)
    if column is None:
        raise DataError(
            f"{path}: a manifest needs a column holding each clip's path, named one of "
            f"{', '.join(PATH_COLUMNS)}. Columns: {', '.join(records.columns)}."
        )
    digest = hashlib.sha256(records.fingerprint.encode())
    paths = []
    for i, value in enumerate(records.column(column)):
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"{path}: row {records.row_number(i)}, column '{column}': expected the path of an audio "
                f"file, got {value!r}."
            )
        clip = Path(value).expanduser()
        clip = clip if clip.is_absolute() else path.parent / clip
        paths.append(str(clip))
        digest.update(_file_bytes(clip, f"{path}: row {records.row_number(i)}, column '{column}'"))
    columns = {name: records.column(name) for name in records.columns if name != column}
    return ColumnRecords({"audio": paths, **columns}, str(path), digest.hexdigest())
