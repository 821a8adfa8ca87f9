"""builtin:nuclei: stardist's image and instance labels tiled into crops from disjoint bands."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tifffile

from bigmodel.data.nuclei import BANDS, read_nuclei
from bigmodel.errors import DataError


def write_stardist_folder(folder, seed=0):
    """A folder laid out as stardist's ``data/images``: a 512x512 uint16 image and instance labels."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 236, (512, 512)).astype(np.uint16)
    labels = np.zeros((512, 512), np.uint16)
    for i, (r, c) in enumerate(rng.integers(10, 500, (40, 2)), start=1):
        labels[r - 6 : r + 6, c - 5 : c + 5] = i
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "img2d.tif", image)
    tifffile.imwrite(folder / "mask2d.tif", labels)
    return image, labels


def test_crops_come_from_their_band_and_match_the_source(tmp_path):
    image, labels = write_stardist_folder(tmp_path)
    splits = read_nuclei(tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 5 * 13, "validation": 4, "test": 4}
    for split, records in splits.items():
        start, end = BANDS[split]
        assert records.class_names == ["background", "nucleus"] and records.where == "builtin:nuclei"
        for row in records:
            top, left = row["top"], row["left"]
            assert start <= top and top + 128 <= end  # no pixel of a crop leaves its band
            window = (slice(top, top + 128), slice(left, left + 128))
            assert row["image"].dtype == np.uint8 and np.array_equal(row["image"], image[window])
            assert np.array_equal(row["mask"], (labels[window] > 0).astype(np.uint8))
    # held-out crops tile their band without overlap
    assert sorted(splits["test"].column("left")) == [0, 128, 256, 384]


def test_the_fingerprint_follows_the_content(tmp_path):
    write_stardist_folder(tmp_path / "a", seed=0)
    write_stardist_folder(tmp_path / "b", seed=1)
    assert read_nuclei(tmp_path / "a")["train"].fingerprint == read_nuclei(tmp_path / "a")["test"].fingerprint
    assert (
        read_nuclei(tmp_path / "a")["train"].fingerprint != read_nuclei(tmp_path / "b")["train"].fingerprint
    )


def test_wider_than_8_bit_images_are_scaled_into_uint8(tmp_path):
    write_stardist_folder(tmp_path)
    tifffile.imwrite(tmp_path / "img2d.tif", np.full((512, 512), 1000, np.uint16))
    assert (read_nuclei(tmp_path)["train"][0]["image"] == 255).all()


def test_missing_or_damaged_files_are_named(tmp_path):
    write_stardist_folder(tmp_path)
    (tmp_path / "mask2d.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"mask2d.tif' cannot be read as a TIFF"):
        read_nuclei(tmp_path)
    (tmp_path / "mask2d.tif").unlink()
    with pytest.raises(
        DataError, match=r"mask2d.tif' is missing; reinstall stardist \(pip install --no-deps"
    ):
        read_nuclei(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("stardist") is None, reason="pip install --no-deps stardist")
def test_the_real_image_has_its_125_nuclei():
    splits = read_nuclei()
    assert {k: len(v) for k, v in splits.items()} == {"train": 65, "validation": 4, "test": 4}
    test = np.concatenate([r["mask"] for r in splits["test"]], axis=1)  # the whole bottom band, 128x512
    assert set(np.unique(test)) == {0, 1} and 0.15 < test.mean() < 0.3  # about a fifth is nucleus
