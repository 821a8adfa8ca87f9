"""Masks: read from palette/grey/16-bit PNGs and arrays as class ids, resized by nearest neighbour,
moved together with their image by the joint transforms, written back as palette PNGs exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bigmodel.data.masks import (
    joint_random_crop,
    joint_resized_crop,
    joint_window,
    load_mask,
    mask_image,
    palette,
    resize_mask,
    save_mask,
)
from bigmodel.errors import DataError


def test_masks_read_from_palette_pngs_and_arrays(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    image = Image.frombytes("P", (2, 2), ids.tobytes())
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * 759)
    image.save(tmp_path / "palette.png")
    assert np.array_equal(load_mask(tmp_path / "palette.png", "x"), ids)  # indices, not colours
    assert np.array_equal(load_mask(str(tmp_path / "palette.png"), "x"), ids)
    assert np.array_equal(load_mask((tmp_path / "palette.png").read_bytes(), "x"), ids)
    assert np.array_equal(load_mask(np.array([[True, False]]), "x"), [[1, 0]])
    assert np.array_equal(load_mask(np.array([[[2.0, 0.0]]]), "x"), [[2, 0]])  # (1, H, W)
    assert np.array_equal(load_mask(np.array([[[3], [4]]]), "x"), [[3], [4]])  # (H, W, 1)
    assert np.array_equal(load_mask(torch.tensor([[5, 6]]), "x"), [[5, 6]])
    wide = np.array([[0, 300], [70000 // 2, 7]], np.uint16)  # ids above 255 in a 16-bit PNG
    Image.fromarray(wide).save(tmp_path / "wide.png")
    loaded = load_mask(tmp_path / "wide.png", "x")
    assert loaded.dtype == np.int64 and np.array_equal(loaded, wide)


def test_what_is_not_a_mask_is_refused_naming_it(tmp_path):
    Image.new("P", (3, 2)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "colour.png")
    cases = [
        ([[0, -1]], r"row 9: a mask holds class ids >= 0; found -1"),
        (np.full((2, 2), 0.5), r"row 9: a mask holds whole class ids; found dtype float64"),
        (np.array([[0.0, np.nan]]), r"row 9: a mask holds whole class ids"),
        (np.zeros((2, 2, 3)), r"row 9: a mask must be an array \(H, W\) of class ids; got shape \(2, 2, 3\)"),
        (np.zeros((0, 3)), r"row 9: a mask must be an array"),
        (3.0, r"row 9: float is not a mask"),
        (tmp_path / "missing.png", r"row 9: mask file not found: '.*missing.png'"),
        (tmp_path / "colour.png", r"row 9: a RGB image is not a mask"),
        (b"", r"row 9: the image is empty"),
        (data[:40], r"row 9: .*(damaged|not an image)"),
        (b"not a png at all", r"row 9: not an image Pillow can decode"),
    ]
    for value, message in cases:
        with pytest.raises(DataError, match=message):
            load_mask(value, "row 9")


def test_resize_mask_picks_nearest_pixel_centres():
    mask = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]])
    # 4 -> 2: pixel centres 0.5 and 1.5 map to source rows/columns 1 and 3 (no half-pixel shift)
    assert resize_mask(mask, (2, 2)).tolist() == [[5, 7], [13, 15]]
    up = resize_mask(torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8), (4, 4))
    assert up.dtype == torch.long and up.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert torch.equal(resize_mask(mask, (4, 4)), mask)  # the same size: unchanged


def _aligned(seed=0, size=(12, 10)):
    """A mask of random ids and an image whose pixels are those ids + 1 (so padding, 0, differs)."""
    y = torch.from_numpy(np.random.default_rng(seed).integers(0, 5, size))
    return y[None].float().repeat(2, 1, 1) + 1, y


def test_joint_transforms_keep_image_and_mask_aligned():
    x, y = _aligned()
    windows = [joint_window(x, y, (5, 4), np.random.default_rng(s)) for s in range(12)]
    for xa, ya in windows:
        assert xa.shape == (2, 5, 4) and ya.shape == (5, 4)
        assert torch.equal(xa[0], ya.float() + 1) and torch.equal(xa[1], xa[0])
    assert len({tuple(ya.flatten().tolist()) for _, ya in windows}) > 6  # the draws differ
    for seed in range(12):
        xa, ya = joint_random_crop(x, y, 3, 255, np.random.default_rng(seed))
        labelled = ya != 255
        assert ya.shape == (12, 10) and torch.equal(xa[0][labelled], ya[labelled].float() + 1)
        assert (xa[:, ~labelled] == 0).all()  # padded pixels: zero image, unlabelled mask
    shifted = [joint_random_crop(x, y, 3, 255, np.random.default_rng(s))[1] for s in range(12)]
    assert any((ya == 255).any() for ya in shifted)
    for seed in range(8):
        xa, ya = joint_resized_crop(x, y, (12, 10), np.random.default_rng(seed))
        assert xa.shape == (2, 12, 10) and ya.shape == (12, 10) and ya.dtype == torch.long
        assert set(ya.unique().tolist()) <= set(y.unique().tolist())  # nearest neighbour invents no id
    again = joint_resized_crop(x, y, (6, 6), np.random.default_rng(4))
    assert torch.equal(again[1], joint_resized_crop(x, y, (6, 6), np.random.default_rng(4))[1])


def test_a_resized_crop_of_the_whole_image_is_the_mask_itself():
    """Scale 1 and aspect 1 on a square image: the window is everything, so the mask comes back as it was
    and the image only through a same-size resize (a no-op)."""
    x, y = _aligned(size=(8, 8))
    xa, ya = joint_resized_crop(x, y, (8, 8), np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(ya, y) and torch.equal(xa, x)


def test_palette_pngs_write_class_ids_exactly(tmp_path):
    colours = palette()
    assert len(colours) == 768
    # PASCAL VOC's colours: background black, then maroon, green, olive, navy, purple
    assert colours[:18] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128]
    assert colours[255 * 3 :] == [224, 224, 192]  # VOC's border colour for 255
    ids = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    image = mask_image(ids)
    assert image.mode == "P" and image.size == (3, 2) and np.array_equal(np.asarray(image), ids)
    path = save_mask({"mask": image}, tmp_path / "m.png")
    written = Image.open(path)
    assert written.mode == "P" and np.array_equal(np.asarray(written), ids)
    assert np.array_equal(load_mask(path, "x"), ids)
    save_mask(ids.astype(np.int64), tmp_path / "from-ids.PNG")
    assert np.array_equal(load_mask(tmp_path / "from-ids.PNG", "x"), ids)
    with pytest.raises(DataError, match=r"must end in .png"):
        save_mask(ids, tmp_path / "mask.jpg")
    with pytest.raises(DataError, match=r"class ids 0..300 do not fit a palette PNG"):
        mask_image(np.array([[0, 300]]))
    with pytest.raises(DataError, match=r"cannot write"):
        save_mask(ids, tmp_path / "no-such-folder" / "m.png")
