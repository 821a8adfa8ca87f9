"""Images as users have them — files, bytes, arrays, folders of files, IDX files — decoded with Pillow.

Every image reaches a task as a float tensor ``(C, H, W)``: 8-bit pixels scaled to [0, 1], float
arrays kept as given (already numbers the user chose). What cannot be an image is refused naming where
it came from: a missing file, a file Pillow cannot decode (a text file, a truncated PNG), a
decompression bomb, an array of the wrong rank or channel count, NaN pixels.

Sources: ``images:FOLDER`` reads a folder with one sub-folder per class (or ``train/``,
``validation/``, ``test/`` folders each holding class folders); ``idx:FILE`` reads MNIST-layout IDX
files (``*-images-idx3-ubyte[.gz]`` with the ``*-labels-idx1-ubyte[.gz]`` beside it);
``builtin:fashion-mnist`` is Zalando's set as Debian's ``dataset-fashion-mnist`` installs it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bigmodel.data.folders import names_file, read_class_folders
from bigmodel.data.records import ColumnRecords, Records
from bigmodel.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".pbm", ".pnm", ".tif", ".tiff",
                  ".webp")  # fmt: skip
MAX_PIXELS = 64_000_000  # a larger "image" is a decompression bomb or a mistake, not a training example


def is_image_path(value) -> bool:
    """Whether ``value`` names an image file by its suffix (a ``Path``, or a short one-line ``str``)."""
    return names_file(value, IMAGE_SUFFIXES)


def load_image(value, where: str, channels: int | None = None) -> torch.Tensor:
    """One image as a float tensor ``(C, H, W)``.

    Args:
        value: a path (``str``/``Path``), encoded bytes (PNG, JPEG, ...), a ``PIL.Image``, or an array
            ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in 1, 3, 4 (uint8 pixels, or floats).
        where: how messages name it (``"train split, row 12"``).
        channels: 1 (grey) or 3 (RGB): a decoded file is converted to it (an RGBA PNG drops its alpha,
            a grey JPEG repeats its channel), as every image library does; an array with another
            channel count is refused, since its channels mean what the user says. None: as stored.
    """
    if isinstance(value, (str, Path)) and not isinstance(value, bytes):
        return _from_pil(_open_file(Path(value), where), where, channels)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _from_pil(_decode(bytes(value), where), where, channels)
    if isinstance(value, Image.Image):
        return _from_pil(value, where, channels)
    if isinstance(value, (np.ndarray, torch.Tensor, list)):
        return _from_array(value, where, channels)
    raise DataError(
        f"{where}: {type(value).__name__} is not an image; give a file path, encoded bytes, a PIL image or "
        "an array (H, W), (H, W, C) or (C, H, W)."
    )


def _open_file(path: Path, where: str) -> Image.Image:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where}: image file not found: '{path}'.") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot read '{path}': {getattr(exc, 'strerror', None) or exc}.") from None
    return _decode(data, f"{where} ('{path}')")


def _decode(data: bytes, where: str) -> Image.Image:
    if not data:
        raise DataError(f"{where}: the image is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError
            image.load()  # decode now: a truncated file fails here, not mid-training
    except UnidentifiedImageError:
        raise DataError(
            f"{where}: not an image Pillow can decode ({_sniff(data)}); give PNG, JPEG, BMP, GIF, PNM, TIFF "
            "or WebP."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{where}: the image is larger than {MAX_PIXELS:,} pixels; refused.") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise DataError(f"{where}: the image is damaged and cannot be decoded ({exc}).") from None
    return image


def _sniff(data: bytes) -> str:
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"starts with bytes {head[:8].hex(' ')}"
    return f"starts with text {text[:30]!r}"


def _from_pil(image: Image.Image, where: str, channels: int | None) -> torch.Tensor:
    if channels is None:
        channels = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    if image.mode in ("I", "I;16", "F"):  # 16/32-bit grey (TIFF, PGM): scale by its own range
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I") and array.max() > 255 else 255.0
        array = array / top
        if channels == 3:
            array = np.repeat(array[..., None], 3, axis=-1)
        return _to_chw(array if array.ndim == 3 else array[..., None])
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return _to_chw(array[..., None] if array.ndim == 2 else array)


def _to_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) pixels -> float (C, H, W); uint8 scaled to [0, 1]."""
    if not array.flags.writeable:  # a view of read-only memory (an IDX buffer): torch needs its own copy
        array = array.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float().contiguous()


def _from_array(value, where: str, channels: int | None) -> torch.Tensor:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise DataError(f"{where}: an image array must hold numbers; found dtype {array.dtype}.")
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise DataError(
            f"{where}: an image array of shape {tuple(np.shape(value))} is not (H, W), (H, W, C) or "
            "(C, H, W) with C in 1, 3, 4."
        )
    if array.shape[-1] == 4:
        array = array[..., :3]  # RGBA -> RGB, as a decoded file
    if channels is not None and array.shape[-1] != channels:
        raise DataError(
            f"{where}: the image has {array.shape[-1]} channels; the model reads {channels} "
            f"({'grey' if channels == 1 else 'RGB'}). Convert it, or give a file (files are converted)."
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{where}: the image array holds NaN or inf.")
    if array.dtype == np.uint8:
        return _to_chw(array)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1).contiguous()


def image_size(value, where: str) -> tuple[int, int]:
    """``(height, width)`` of an image without decoding its pixels where it is a file."""
    if isinstance(value, (str, Path)):
        try:
            with Image.open(Path(value)) as image:
                return image.height, image.width
        except FileNotFoundError:
            raise DataError(f"{where}: image file not found: '{value}'.") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{where}: '{value}' is not an image Pillow can decode ({exc}).") from None
    tensor = load_image(value, where)
    return int(tensor.shape[1]), int(tensor.shape[2])


# --- folders ----------------------------------------------------------------------------------------


def read_image_folder(root: str | Path) -> dict[str, Records]:
    """``images:FOLDER``: class folders of image files, or split folders (train/validation/test) of them.

    Returns ``{"data": records}`` or the folder's splits; records have columns ``image`` (the file's
    path) and ``label`` (its class folder's name). Files whose suffix is not an image's (a README,
    ``Thumbs.db``) and hidden files are not examples. The fingerprint hashes every file's bytes.
    """
    return read_class_folders(root, "images", "image", IMAGE_SUFFIXES, "cat/, dog/")


# --- IDX (MNIST layout) -----------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or not) as an array: magic 0x0000, a type byte, a rank byte, big-endian dims."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: '{path}'.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"'{path}': damaged gzip data ({exc}).") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise DataError(f"'{path}': not an IDX file (magic bytes {raw[:4].hex(' ')}).")
    rank = raw[3]
    header = 4 + 4 * rank
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"'{path}': IDX header says {dims} ({expected} bytes) but the file has {len(raw)}.")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def read_idx_pair(
    images_path: str | Path, class_names: list[str] | None = None, where: str = ""
) -> ColumnRecords:
    """``idx:FILE``: an images IDX file and the labels file beside it (``images`` -> ``labels`` in the
    name, ``idx3`` -> ``idx1``), as records ``image`` (uint8 (H, W)) and ``label``."""
    images_path = Path(images_path).expanduser()
    labels_path = images_path.with_name(images_path.name.replace("images", "labels").replace("idx3", "idx1"))
    if labels_path == images_path:
        raise DataError(
            f"data.source 'idx:{images_path}': name the images file (MNIST layout: train-images-idx3-ubyte), "
            "whose labels file is found beside it."
        )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"'{images_path}' {images.shape} and '{labels_path}' {labels.shape} are not N images and N "
            "labels."
        )
    names = labels.tolist() if class_names is None else [class_names[int(i)] for i in labels]
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return ColumnRecords({"image": images, "label": names}, where or str(images_path), digest)


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]  # fmt: skip


def fashion_mnist_installed() -> bool:
    return (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


def read_fashion_mnist(folder: Path = FASHION_MNIST_DIR) -> dict[str, Records]:
    """Fashion-MNIST's published splits (60,000 train, 10,000 test) with its class names."""
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        raise DataError(
            "data.source 'builtin:fashion-mnist' reads the Debian package dataset-fashion-mnist, which is "
            f"not installed (no {folder}/train-images-idx3-ubyte.gz): apt-get install dataset-fashion-mnist."
        )
    return {
        split: read_idx_pair(
            folder / f"{stem}-images-idx3-ubyte.gz", FASHION_MNIST_CLASSES, "builtin:fashion-mnist"
        )
        for split, stem in (("train", "train"), ("test", "t10k"))
    }
