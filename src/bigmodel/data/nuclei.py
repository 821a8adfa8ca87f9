"""``builtin:nuclei``: stardist's real fluorescence nuclei image, tiled into crops with foreground masks.

PyPI ``stardist`` ships ``data/images/img2d.tif`` (512×512, 16-bit storage of 8-bit values; a DSB2018
/ BBBC038 image, CC0) and ``mask2d.tif`` (its 125 nuclei as instance labels). The instance labels
become a binary class map (0 background, 1 nucleus). The image is cut into horizontal bands so that
no pixel of a held-out crop is ever seen in training:

    rows   0-255  train       crops at every ``stride`` pixels (overlapping; 65 crops of 128×128)
    rows 256-383  validation  non-overlapping crops (4)
    rows 384-511  test        non-overlapping crops (4)

Only the two TIFFs are read (with tifffile), from the installed package's folder, without importing
stardist (``pip install --no-deps stardist`` is enough).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel.data.builtin import package_folder
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

CLASS_NAMES = ["background", "nucleus"]
BANDS = {"train": (0, 256), "validation": (256, 384), "test": (384, 512)}  # rows [start, end)
INSTALL = "pip install --no-deps stardist"


def read_nuclei(folder: Path | None = None, crop: int = 128, stride: int = 32) -> dict[str, ColumnRecords]:
    """The train/validation/test crops.

    Args:
        folder: where ``img2d.tif`` and ``mask2d.tif`` are (default: the installed stardist's
            ``data/images``).
        crop: side of the square crops; every band's height must hold at least one.
        stride: step between train crops (held-out crops never overlap: their step is ``crop``).

    Returns:
        ``{split: records}`` with columns ``image`` (uint8 ``(crop, crop)``), ``mask`` (uint8, 0
        background / 1 nucleus), ``top`` and ``left`` (the crop's position in the full image). Each
        records object carries ``class_names`` (``["background", "nucleus"]``).
    """
    if folder is None:
        folder = package_folder("nuclei", "stardist", INSTALL) / "data" / "images"
    image, labels, digest = _read_pair(Path(folder))
    if image.shape != (512, 512):
        raise DataError(f"builtin:nuclei: expected a 512x512 image in '{folder}', found {image.shape}.")
    if not 1 <= crop <= 128 or stride < 1:
        raise ValueError(
            f"crop must be in [1, 128] (held-out bands are 128 rows), stride >= 1; got {crop}, {stride}"
        )
    mask = (labels > 0).astype(np.uint8)
    digest.update(f"crop={crop} stride={stride}".encode())
    splits = {}
    for split, (start, end) in BANDS.items():
        step = stride if split == "train" else crop
        tops = range(start, end - crop + 1, step)
        lefts = range(0, image.shape[1] - crop + 1, step)
        corners = [(t, left) for t in tops for left in lefts]
        records = ColumnRecords(
            {
                "image": np.stack([image[t : t + crop, left : left + crop] for t, left in corners]),
                "mask": np.stack([mask[t : t + crop, left : left + crop] for t, left in corners]),
                "top": [t for t, _ in corners],
                "left": [left for _, left in corners],
            },
            "builtin:nuclei",
            digest.hexdigest(),
        )
        records.class_names = list(CLASS_NAMES)
        splits[split] = records
    return splits


def _read_pair(folder: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """The image as uint8 and the instance labels, and a digest of both files' bytes."""
    import tifffile

    digest = hashlib.sha256()
    arrays = []
    for name in ("img2d.tif", "mask2d.tif"):
        path = folder / name
        try:
            data = path.read_bytes()
            arrays.append(tifffile.imread(path))
        except FileNotFoundError:
            raise DataError(f"builtin:nuclei: '{path}' is missing; reinstall stardist ({INSTALL}).") from None
        except (OSError, ValueError) as exc:  # tifffile raises TiffFileError (a ValueError) on damage
            raise DataError(f"builtin:nuclei: '{path}' cannot be read as a TIFF ({exc}).") from None
        digest.update(data)
    image, labels = arrays
    if image.shape != labels.shape:
        raise DataError(f"builtin:nuclei: image {image.shape} and mask {labels.shape} differ in size.")
    if image.max() > 255:  # the shipped file stores 8-bit values in 16 bits; scale anything wider
        image = image.astype(np.float64) * (255.0 / image.max())
    return np.round(image).astype(np.uint8), labels, digest
