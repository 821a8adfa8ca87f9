"""Composed detection scenes from photo cut-outs: curation, exact boxes and masks after occlusion,
held-out cut-outs, determinism, the cache, and the real Tux Paint stamps where installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigmodel.data import scenes
from bigmodel.errors import DataError

CATEGORIES = ("animals", "food")


def write_stamp(
    path: Path, colour, seed: int, shape: str = "disc", mode: str = "RGBA", size=(40, 30)
) -> Path:
    """A cut-out: a noisy coloured disc or square with a real alpha, on transparent pixels."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (h / 2.2)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 < 1 if shape == "disc" else (
        (abs(yy - h / 2) < h / 3) & (abs(xx - w / 2) < w / 3))  # fmt: skip
    rgb = np.clip(np.array(colour) + rng.normal(0, 20, (h, w, 3)), 0, 255)
    alpha = np.where(inside, 255, 0)
    if mode == "opaque":
        alpha[:] = 255
    pixels = np.dstack([rgb, alpha]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels, "RGBA")
    (image.convert("RGB") if mode == "RGB" else image).save(path)
    return path


def write_stamps(root: Path, per_category: int = 4, categories=CATEGORIES) -> Path:
    colours = {"animals": (200, 60, 40), "food": (40, 80, 220), "household": (40, 200, 60),
               "plants": (220, 220, 40), "vehicles": (150, 40, 200)}  # fmt: skip
    for c, category in enumerate(categories):
        for i in range(per_category):
            shape = "disc" if i % 2 else "square"
            write_stamp(root / category / "sub" / f"{category}{i}.png", colours[category], 10 * c + i, shape)
    # what the curation leaves out: clipart folders, mirror copies, stamps without alpha, opaque ones
    write_stamp(root / "animals" / "cartoon" / "toon.png", (0, 0, 0), 1)
    write_stamp(root / "animals" / "sub" / "animals0_mirror.png", (0, 0, 0), 2)
    write_stamp(root / "animals" / "flat.png", (0, 0, 0), 3, mode="RGB")
    write_stamp(root / "animals" / "block.png", (0, 0, 0), 4, mode="opaque")
    return root


def backgrounds() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), np.full((70, 70, 3), 128, np.uint8)]


@pytest.fixture(scope="module")
def stamps(tmp_path_factory) -> Path:
    return write_stamps(tmp_path_factory.mktemp("stamps"))


def compose(stamps: Path, seed: int = 0, **kwargs):
    options = {"sizes": {"train": 12, "validation": 3, "test": 6}, "image_size": 48, "seed": seed,
               "backgrounds": backgrounds(), "categories": CATEGORIES, **kwargs}  # fmt: skip
    return scenes.compose_scenes(stamps, **options)


def test_curation_keeps_only_photo_cutouts(stamps):
    names = [c.name for c in scenes.load_cutouts(stamps, CATEGORIES)]
    assert names == [f"{c}/sub/{c}{i}.png" for c in CATEGORIES for i in range(4)]
    cutout = scenes.load_cutouts(stamps, CATEGORIES)[1]  # a disc: cropped to its alpha
    alpha = np.asarray(cutout.image)[..., 3] > 127
    assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()


def test_boxes_and_masks_are_exact_after_occlusion(stamps):
    splits = compose(stamps, objects=(2, 4), scale=(0.4, 0.9))
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "validation": 3, "test": 6}
    records = splits["train"]
    assert records.categories == list(CATEGORIES)
    counted = 0
    for example in records:
        image, mask, instances = example["image"], example["mask"], example["instances"]
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert mask.shape == instances.shape == (48, 48) and instances.dtype == np.uint16
        assert len(example["boxes"]) == len(example["labels"]) == len(example["objects"]) >= 1
        assert set(np.unique(instances)) <= set(range(len(example["boxes"]) + 1))
        for i, (box, label) in enumerate(zip(example["boxes"], example["labels"], strict=True), start=1):
            ys, xs = np.nonzero(instances == i)
            assert len(ys) >= scenes.MIN_VISIBLE_PIXELS
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # the visible pixels' extent
            assert (mask[instances == i] == CATEGORIES.index(label) + 1).all()
            counted += 1
        assert (mask[instances == 0] == 0).all()
    assert counted > 2 * len(records)  # scenes really hold several (overlapping) objects


def test_test_and_validation_objects_are_never_seen_in_training(stamps):
    splits = compose(stamps)
    seen = {
        split: {name for names in records.column("objects") for name in names}
        for split, records in splits.items()
    }
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]
    pools = scenes.split_cutouts(scenes.load_cutouts(stamps, CATEGORIES))
    assert {len(v) for v in pools.values()} == {2, 4} and len(
        pools["train"]
    ) == 4  # 1+1 held out per category


def test_a_seed_gives_the_same_scenes(stamps):
    first, again, other = compose(stamps), compose(stamps), compose(stamps, seed=1)
    for split in first:
        assert np.array_equal(first[split].column("image"), again[split].column("image"))
        assert first[split].column("boxes") == again[split].column("boxes")
    assert not np.array_equal(first["train"].column("image"), other["train"].column("image"))


def test_objects_one_labelled_cutout_per_image(stamps):
    sizes = {"train": 10, "test": 4}
    splits = scenes.compose_objects(stamps, sizes, image_size=40, backgrounds=backgrounds(),
                                    categories=CATEGORIES)  # fmt: skip
    assert set(splits) == {"train", "test"}
    records = splits["train"]
    assert records.columns == ["image", "label", "object"] and records[0]["image"].shape == (40, 40, 3)
    assert set(records.column("label")) == set(CATEGORIES)  # categories are drawn equally often
    assert all(
        name.startswith(label)
        for name, label in zip(records.column("object"), records.column("label"), strict=True)
    )
    assert not set(records.column("object")) & set(splits["test"].column("object"))


def test_too_few_cutouts_and_bad_arguments_are_refused(tmp_path, stamps):
    write_stamps(tmp_path / "few", per_category=2)
    with pytest.raises(DataError, match="category 'animals' has 2 photo cut-out.*at least 3"):
        scenes.compose_scenes(
            tmp_path / "few", image_size=32, backgrounds=backgrounds(), categories=CATEGORIES
        )
    with pytest.raises(DataError, match=r"sizes\['dev'\]"):
        compose(stamps, sizes={"dev": 3})
    with pytest.raises(DataError, match="background 1 must be a uint8 array"):
        compose(stamps, backgrounds=[np.zeros((20, 20))])
    with pytest.raises(DataError, match="apt-get install tuxpaint-stamps-default"):
        scenes.load_cutouts(tmp_path / "nowhere")
    assert not scenes.scenes_installed(tmp_path / "nowhere")


def test_the_builtin_readers_cache_by_content(tmp_path, monkeypatch):
    if scenes._skimage_data() is None:
        pytest.skip("scikit-image's sample photos are not installed")
    root = write_stamps(tmp_path / "stamps", per_category=3, categories=scenes.SCENE_CATEGORIES)
    monkeypatch.setattr(scenes, "STAMPS_DIR", root)
    monkeypatch.setattr(scenes, "SCENE_SIZES", {"train": 4, "test": 2})
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))
    built = scenes.read_scenes(image_size=32)
    assert len(list((tmp_path / "cache" / "scenes").glob("scenes-*.npz"))) == 1
    cached = scenes.read_scenes(image_size=32)
    for split in ("train", "test"):
        assert cached[split].where == f"builtin:scenes [{split}]"
        assert cached[split].fingerprint == built[split].fingerprint
        assert cached[split].categories == list(scenes.SCENE_CATEGORIES)
        for column in ("image", "mask", "instances"):
            assert np.array_equal(cached[split].column(column), built[split].column(column))
        assert cached[split].column("boxes") == built[split].column("boxes")
        assert cached[split].column("labels") == built[split].column("labels")
    write_stamp(root / "food" / "sub" / "food0.png", (1, 2, 3), 99)  # a stamp changes: a new data set
    changed = scenes.read_scenes(image_size=32)
    assert changed["train"].fingerprint != built["train"].fingerprint
    monkeypatch.setattr(scenes, "OBJECT_SIZES", {"train": 3, "test": 2})
    objects = scenes.read_scene_objects(image_size=32)
    assert objects["test"].where == "builtin:scene-objects [test]" and len(objects["train"]) == 3


@pytest.mark.skipif(not scenes.scenes_installed(), reason="apt-get install tuxpaint-stamps-default")
def test_the_real_stamps_curation():
    cutouts = scenes.load_cutouts()
    counts = {c: sum(1 for x in cutouts if x.category == c) for c in scenes.SCENE_CATEGORIES}
    assert counts == {"animals": 124, "food": 49, "household": 28, "plants": 28, "vehicles": 15}
    assert not any("cartoon" in c.name or c.name in scenes.EXCLUDED for c in cutouts)
