"""Segmentation masks: class ids per pixel, read from PNGs or arrays, resized, augmented together with
their image, and written back as palette PNGs.

A mask is an integer array ``(H, W)`` whose values are class ids (a PNG: grey, palette — its indices
are the ids, not its colours — or 16-bit). Geometric transforms move an image ``(C, H, W)`` and its mask
``(H, W)`` together; a mask is only ever resized by nearest neighbour, so no transform invents an id.
The random ones draw from the example's numpy ``Generator`` as ``data/transforms.py``'s do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bigmodel.data.images import _decode
from bigmodel.data.transforms import resize
from bigmodel.errors import DataError

MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")  # PIL modes that hold one integer per pixel


# --- reading ---------------------------------------------------------------------------------------


def load_mask(value, where: str) -> np.ndarray:
    """A mask as class ids ``(H, W)`` int64.

    Args:
        value: a PNG (or other lossless image) path or its bytes, a ``PIL.Image`` with one integer per
            pixel (grey, palette — its indices are the ids — or 16-bit), or an integer/boolean array
            ``(H, W)`` (also ``(1, H, W)`` or ``(H, W, 1)``).
        where: how messages name it.
    """
    if isinstance(value, (str, Path)):
        value = _read_file(Path(value), where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = _decode(bytes(value), where)
    if isinstance(value, Image.Image):
        if value.mode not in MASK_MODES:
            raise DataError(
                f"{where}: a {value.mode} image is not a mask; a mask holds one class id per pixel (a grey, "
                "palette or 16-bit PNG), not colours."
            )
        value = np.asarray(value)
    if not isinstance(value, (np.ndarray, torch.Tensor, list, tuple)):
        raise DataError(
            f"{where}: {type(value).__name__} is not a mask; give a PNG path, PNG bytes or an integer array "
            "(H, W)."
        )
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return _class_ids(array, where)


def _read_file(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where}: mask file not found: '{path}'.") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot read '{path}': {getattr(exc, 'strerror', None) or exc}.") from None


def _class_ids(array: np.ndarray, where: str) -> np.ndarray:
    """An array ``(H, W)`` (or with a unit channel axis) of whole numbers >= 0 as int64 ids."""
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2 or min(array.shape) < 1:
        raise DataError(f"{where}: a mask must be an array (H, W) of class ids; got shape {array.shape}.")
    if array.dtype == np.bool_:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        floats = np.issubdtype(array.dtype, np.floating)
        if not (floats and np.isfinite(array).all() and (array == np.round(array)).all()):
            raise DataError(
                f"{where}: a mask holds whole class ids; found dtype {array.dtype} with other values."
            )
    if array.min() < 0:
        raise DataError(f"{where}: a mask holds class ids >= 0; found {int(array.min())}.")
    return array.astype(np.int64)


# --- image and mask together -----------------------------------------------------------------------


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids ``(H, W)`` -> ``(*size)`` long, by nearest neighbour (pixel centres: no half-pixel shift)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.long()
    resized = F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest-exact")
    return resized[0, 0].long()


def joint_random_crop(x: torch.Tensor, y: torch.Tensor, padding: int, ignore: int, rng: np.random.Generator):
    """Pad the image ``(C, H, W)`` with zeros and the mask ``(H, W)`` with ``ignore`` (unlabelled), then crop
    both back to their size at one random position."""
    h, w = y.shape
    x = F.pad(x, (padding,) * 4)
    y = F.pad(y, (padding,) * 4, value=ignore)
    top, left = int(rng.integers(0, 2 * padding + 1)), int(rng.integers(0, 2 * padding + 1))
    return x[:, top : top + h, left : left + w], y[top : top + h, left : left + w]


def joint_window(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], rng: np.random.Generator):
    """The same random ``size`` window of image ``(C, H, W)`` and mask ``(H, W)`` (no resizing)."""
    h, w = y.shape
    top, left = int(rng.integers(0, h - size[0] + 1)), int(rng.integers(0, w - size[1] + 1))
    return x[:, top : top + size[0], left : left + size[1]], y[top : top + size[0], left : left + size[1]]


def joint_resized_crop(x, y, size, rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """One random window (``scale`` of the area, aspect ``ratio`` log-uniform) of image and mask, resized
    back to ``size``: the image bilinearly, the mask by nearest neighbour. After 10 misses, unchanged."""
    h, w = y.shape
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        ch, cw = round((area / aspect) ** 0.5), round((area * aspect) ** 0.5)
        if 0 < ch <= h and 0 < cw <= w:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            window = (slice(top, top + ch), slice(left, left + cw))
            return resize(x[(slice(None), *window)], size), resize_mask(y[window], size)
    return x, y


# --- writing ---------------------------------------------------------------------------------------


def palette(n: int = 256) -> list[int]:
    """``n`` RGB colours, flat, as PASCAL VOC colours its class maps: class 0 black, and the bits of each
    id spread over the high bits of red, green and blue so that neighbouring ids differ clearly."""
    colours = []
    for i in range(n):
        r = g = b = 0
        for j in range(8):
            r |= ((i >> (3 * j)) & 1) << (7 - j)
            g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
            b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
        colours += [r, g, b]
    return colours


def mask_image(ids: np.ndarray, where: str = "mask") -> Image.Image:
    """Class ids ``(H, W)`` as a palette image: pixel values are the ids, colours from :func:`palette`."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise DataError(
            f"{where}: class ids {int(ids.min())}..{int(ids.max())} do not fit a palette PNG (0-255)."
        )
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    image.putpalette(palette())
    return image


def save_mask(prediction, path: str | Path) -> Path:
    """Write a class map as a palette PNG (pixel values are the class ids, so it reads back exactly).

    Args:
        prediction: one result of a segmentation ``predict`` (its ``mask``), or a class map (image or ids
            ``(H, W)``).
        path: a ``.png`` file (its folder must exist).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(f"save_mask: '{path}' must end in .png (a palette PNG keeps the class ids exactly).")
    mask = prediction["mask"] if isinstance(prediction, dict) else prediction
    image = mask_image(load_mask(mask, "save_mask"), "save_mask")
    try:
        image.save(path, format="PNG")
    except OSError as exc:
        raise DataError(
            f"save_mask: cannot write '{path}': {getattr(exc, 'strerror', None) or exc}."
        ) from None
    return path
