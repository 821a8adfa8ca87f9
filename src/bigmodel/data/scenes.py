"""``builtin:scenes`` and ``builtin:scene-objects``: composed scenes from real photo cut-outs.

Not photographs of scenes: Tux Paint's stamps (Debian ``tuxpaint-stamps-default``, GPL-2) include a
few hundred RGBA photo cut-outs with a real alpha mask — animals, food, household objects, plants,
vehicles. Pasting them at random scale and position onto crops of real background photos (the
sample images scikit-image and scikit-learn ship) gives scenes whose every box and mask is exact.

Curation (:func:`load_cutouts`): RGBA PNGs with real transparency, one category per top-level folder
of :data:`SCENE_CATEGORIES`; Tux Paint's ``cartoon`` folders (clipart), its ``_mirror`` copies and
the few clipart or off-category stamps listed in :data:`EXCLUDED` are left out (244 cut-outs:
animals 124, food 49, household 28, plants 28, vehicles 15).

Splits hold out cut-outs: per category, a seeded 20 % of the cut-outs appear only in test scenes and
10 % only in validation scenes, so a test object was never seen in training (backgrounds are shared:
random crops of the same photos). A fixed seed gives the same data set; it is cached as one ``.npz``
under ``$BIGMODEL_CACHE/scenes`` (else ``$XDG_CACHE_HOME/bigmodel`` or ``~/.cache/bigmodel``), keyed
by the parameters and the content of every file read.

Scene records: ``image`` uint8 ``(H, W, 3)``; ``boxes`` a list of ``[x0, y0, x1, y1]`` pixel edges
(``x1``/``y1`` exclusive, so ``x1 - x0`` is the width); ``labels`` their category names; ``mask``
uint8 ``(H, W)``: 0 background, ``k`` the category ``categories[k - 1]`` (the records'
``categories`` attribute; :data:`SCENE_CATEGORIES` for the built-in set, sorted); ``instances``
uint16 ``(H, W)``: 0 background, ``i`` the ``i``-th box; ``objects`` the cut-outs' names. Boxes and
masks are read off what stays visible after later pastes occlude earlier ones; a placement that
would hide more than half of an earlier object is redrawn, and a remnant under
:data:`MIN_VISIBLE_PIXELS` is dropped (and its pixels become background in ``mask``).

Object records (``scene-objects``): ``image`` uint8 ``(H, W, 3)`` with one cut-out on a background
crop, ``label`` its category, ``object`` its name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from bigmodel.data.io import atomic_path
from bigmodel.data.records import ColumnRecords
from bigmodel.errors import DataError

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
SCENE_CATEGORIES = ("animals", "food", "household", "plants", "vehicles")  # sorted: mask ids 1..5
EXCLUDED = {
    "animals/mammals/hedgehog.png",  # clipart outside a cartoon folder
    "animals/mammals/bears/toys/edward_bear.png",  # a teddy bear, not an animal
    "food/pizza.png",  # clipart
    "vehicles/wheel_tractor.png",  # a tyre, not a vehicle
}
# Real photos with no object of the five categories in them (no cat, person, rocket, cup or flower).
SKIMAGE_BACKGROUNDS = (
    "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "hubble_deep_field.jpg", "ihc.png",
    "retina.jpg",
)  # fmt: skip
SKLEARN_BACKGROUNDS = ("china.jpg",)
SCENE_SIZES = {"train": 2000, "validation": 200, "test": 500}
OBJECT_SIZES = {"train": 2000, "validation": 300, "test": 600}
HELD_OUT = {"validation": 0.1, "test": 0.2}  # shares of each category's cut-outs held out
MAX_CUTOUT_SIDE = 192  # cut-outs are stored at most this large (scenes are small)
MAX_BACKGROUND_SIDE = 384
MIN_VISIBLE_PIXELS = 24
KEEP_VISIBLE = 0.5  # a paste may hide at most half of an earlier object
CACHE_FORMAT = 1  # part of every cache key: a new layout never reads an old file


@dataclass(frozen=True)
class Cutout:
    """One photo cut-out: ``name`` (its path under the stamps folder), ``category`` and ``image`` (RGBA,
    cropped to its alpha, at most :data:`MAX_CUTOUT_SIDE` pixels on a side)."""

    name: str
    category: str
    image: Image.Image


# --- sources ----------------------------------------------------------------------------------------


def scenes_installed(stamps: Path = STAMPS_DIR) -> bool:
    """Whether the stamps (Debian tuxpaint-stamps-default) and the background photos are here."""
    return (stamps / "animals").is_dir() and _skimage_data() is not None


def _skimage_data() -> Path | None:
    """scikit-image's bundled sample images, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if all((folder / name).is_file() for name in SKIMAGE_BACKGROUNDS) else None


def _background_files() -> list[Path]:
    skimage = _skimage_data()
    if skimage is None:
        raise DataError(
            "builtin:scenes pastes cut-outs onto scikit-image's sample photos, which are not installed: "
            "pip install scikit-image."
        )
    spec = importlib.util.find_spec("sklearn")
    sklearn = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    return [skimage / name for name in SKIMAGE_BACKGROUNDS] + [sklearn / name for name in SKLEARN_BACKGROUNDS]


def background_photos(files: list[Path] | None = None) -> list[np.ndarray]:
    """The background photos as uint8 RGB arrays (grey ones repeated to 3 channels), at most
    :data:`MAX_BACKGROUND_SIDE` on their shorter side."""
    photos = []
    for path in files or _background_files():
        image = Image.open(path).convert("RGB")
        scale = MAX_BACKGROUND_SIDE / min(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        photos.append(np.asarray(image))
    return photos


def _candidate_files(stamps: Path, categories) -> list[tuple[str, str, Path]]:
    """``(name, category, path)`` of every stamp PNG the curation may keep, sorted by name."""
    found = []
    for category in categories:
        for path in sorted((stamps / category).rglob("*.png")):
            name = path.relative_to(stamps).as_posix()
            if (
                "cartoon" in path.relative_to(stamps).parts
                or path.stem.endswith("_mirror")
                or name in EXCLUDED
            ):
                continue
            found.append((name, category, path))
    return found


def load_cutouts(stamps: str | Path = STAMPS_DIR, categories=SCENE_CATEGORIES) -> list[Cutout]:
    """The curated photo cut-outs of ``stamps`` (a Tux Paint stamps folder: one sub-folder per
    category), sorted by name. Kept: RGBA PNGs with real transparency (2-98 % of the pixels opaque)."""
    stamps = Path(stamps)
    if not stamps.is_dir():
        raise DataError(
            f"builtin:scenes reads Tux Paint's stamps, which are not installed (no folder {stamps}): "
            "apt-get install tuxpaint-stamps-default."
        )
    cutouts = []
    for name, category, path in _candidate_files(stamps, categories):
        try:
            image = Image.open(path)
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: the stamp cannot be decoded ({exc}).") from None
        if image.mode != "RGBA":  # palette and grey stamps are Tux Paint's clipart
            continue
        pixels = np.asarray(image)
        opaque = pixels[..., 3] > 127
        if not 0.02 <= opaque.mean() <= 0.98:
            continue
        ys, xs = np.nonzero(opaque)
        pixels = pixels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        cropped = Image.fromarray(pixels)
        scale = MAX_CUTOUT_SIDE / max(pixels.shape[:2])
        if scale < 1:
            size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
            cropped = cropped.resize(size, Image.LANCZOS)
        cutouts.append(Cutout(name, category, cropped))
    return cutouts


def split_cutouts(cutouts: list[Cutout], seed: int = 0, held_out: dict = HELD_OUT) -> dict[str, list[Cutout]]:
    """Cut-outs per split: per category a seeded ``held_out[split]`` share (at least one) for
    validation and test, the rest for training. Refused: a category with too few cut-outs."""
    rng = np.random.default_rng([seed, 7])
    splits: dict[str, list[Cutout]] = {"train": [], **{name: [] for name, share in held_out.items() if share}}
    for category in sorted({c.category for c in cutouts}):
        members = [c for c in cutouts if c.category == category]
        counts = {name: max(1, round(len(members) * share)) for name, share in held_out.items() if share}
        if len(members) < sum(counts.values()) + 1:
            raise DataError(
                f"scenes: category '{category}' has {len(members)} photo cut-out(s); holding out "
                f"{counts} leaves none to train on. Give it at least {sum(counts.values()) + 1}."
            )
        order = rng.permutation(len(members))
        start = 0
        for name, count in counts.items():
            splits[name] += [members[i] for i in order[start : start + count]]
            start += count
        splits["train"] += [members[i] for i in order[start:]]
    return splits


# --- composing --------------------------------------------------------------------------------------


def _background_crop(rng: np.random.Generator, photos: list[Image.Image], size: int) -> np.ndarray:
    """A random square crop (35-100 % of the shorter side) of a random photo, resized, maybe mirrored:
    float32 ``(size, size, 3)``."""
    photo = photos[int(rng.integers(len(photos)))]
    w, h = photo.size
    side = max(8, round(min(h, w) * rng.uniform(0.35, 1.0)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    canvas = np.asarray(crop, dtype=np.float32)
    return np.ascontiguousarray(canvas[:, ::-1]) if rng.random() < 0.5 else canvas.copy()


def _draw_cutout(rng: np.random.Generator, by_category: dict, size: int, scale) -> tuple[Cutout, np.ndarray]:
    """A cut-out of a random category (categories equally likely), scaled so its longer side is a
    ``scale`` share of the scene, maybe mirrored: ``(cutout, RGBA float32 (h, w, 4))``."""
    categories = sorted(by_category)
    members = by_category[categories[int(rng.integers(len(categories)))]]
    cutout = members[int(rng.integers(len(members)))]
    w, h = cutout.image.size
    factor = rng.uniform(*scale) * size / max(h, w)
    shape = (max(4, min(size, round(w * factor))), max(4, min(size, round(h * factor))))
    pixels = np.asarray(cutout.image.resize(shape, Image.BILINEAR), dtype=np.float32)
    return cutout, (pixels[:, ::-1] if rng.random() < 0.5 else pixels)


def compose_scene(rng, by_category: dict, photos, size: int, objects=(1, 4), scale=(0.25, 0.6)) -> dict:
    """One scene with ``objects`` (an inclusive range) cut-outs pasted in turn on a background crop.

    Returns ``image``, ``boxes``, ``labels``, ``objects`` and the ``instances`` id map (see the module
    docstring); ``mask`` is made by the caller, which knows the category list.
    """
    canvas = _background_crop(rng, photos, size)  # float32 (size, size, 3)
    instances = np.zeros((size, size), np.uint16)
    placed: list[tuple[Cutout, int]] = []  # (cut-out, full area in pixels)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        for _attempt in range(10):
            cutout, pixels = _draw_cutout(rng, by_category, size, scale)
            h, w = pixels.shape[:2]
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            opaque = pixels[..., 3] > 127
            region = instances[top : top + h, left : left + w]
            hidden = np.bincount(region[opaque], minlength=len(placed) + 1)[1:]
            visible = np.bincount(instances.ravel(), minlength=len(placed) + 1)[1:]
            if placed and np.any(visible - hidden < KEEP_VISIBLE * np.array([a for _, a in placed])):
                continue  # it would hide too much of an earlier object: draw another placement
            alpha = pixels[..., 3:] / 255.0
            window = canvas[top : top + h, left : left + w]
            canvas[top : top + h, left : left + w] = window * (1 - alpha) + pixels[..., :3] * alpha
            region[opaque] = len(placed) + 1
            placed.append((cutout, int(opaque.sum())))
            break
    boxes, labels, names, ids = [], [], [], np.zeros(len(placed) + 1, np.uint16)
    for i, (cutout, _) in enumerate(placed, start=1):
        ys, xs = np.nonzero(instances == i)
        if len(ys) < MIN_VISIBLE_PIXELS:
            continue  # a remnant too small to label: left out (its pixels count as background)
        ids[i] = len(boxes) + 1
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
        labels.append(cutout.category)
        names.append(cutout.name)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return {"image": image, "boxes": boxes, "labels": labels, "objects": names, "instances": ids[instances]}


def _photos(backgrounds: list[np.ndarray] | None) -> list[Image.Image]:
    """The background photos as RGB images; refused: an array that is not uint8 (H, W, 3)."""
    arrays = background_photos() if backgrounds is None else backgrounds
    for i, array in enumerate(arrays):
        if (
            not isinstance(array, np.ndarray)
            or array.dtype != np.uint8
            or array.ndim != 3
            or array.shape[2] != 3
        ):
            raise DataError(f"scenes: background {i + 1} must be a uint8 array (H, W, 3).")
    return [Image.fromarray(array) for array in arrays]


def _by_category(cutouts: list[Cutout]) -> dict[str, list[Cutout]]:
    out: dict[str, list[Cutout]] = {}
    for cutout in cutouts:
        out.setdefault(cutout.category, []).append(cutout)
    return out


def _checked_sizes(sizes: dict[str, int]) -> dict[str, int]:
    """The splits to build (size > 0); an unknown split name or a negative size is refused."""
    for split, count in sizes.items():
        if split not in ("train", "validation", "test") or not isinstance(count, int) or count < 0:
            raise DataError(f"scenes: sizes[{split!r}] = {count!r}; give train/validation/test sizes >= 0.")
    return {split: count for split, count in sizes.items() if count}


def _split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, ("train", "validation", "test").index(split) + 1])


def compose_scenes(
    stamps: str | Path = STAMPS_DIR,
    sizes: dict[str, int] = SCENE_SIZES,
    image_size: int = 128,
    seed: int = 0,
    backgrounds: list[np.ndarray] | None = None,
    objects: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.25, 0.6),
    categories=SCENE_CATEGORIES,
) -> dict[str, ColumnRecords]:
    """Detection / segmentation scenes per split (``sizes``: scenes per split; a split of size 0 is
    left out), from the cut-outs of a stamps folder pasted on ``backgrounds`` (uint8 RGB arrays;
    default: :func:`background_photos`). Same arguments, same scenes. Columns: see the module docstring."""
    cutouts = load_cutouts(stamps, categories)
    names = sorted({c.category for c in cutouts})
    if not names:
        raise DataError(f"{stamps}: no RGBA photo cut-outs in the folders {', '.join(categories)}.")
    photos = _photos(backgrounds)
    pools = split_cutouts(cutouts, seed)
    out = {}
    for split, count in _checked_sizes(sizes).items():
        rng, by_category = _split_seed(seed, split), _by_category(pools[split])
        scenes = [compose_scene(rng, by_category, photos, image_size, objects, scale) for _ in range(count)]
        out[split] = _scene_records(scenes, names, f"builtin:scenes [{split}]")
    return out


def _scene_records(
    scenes: list[dict], categories: list[str], where: str, fingerprint: str = ""
) -> ColumnRecords:
    masks = []
    for scene in scenes:  # instance id i -> the category id of the i-th label (0 stays background)
        lookup = np.array([0] + [categories.index(label) + 1 for label in scene["labels"]], np.uint8)
        masks.append(lookup[scene["instances"]])
    columns = {
        "image": np.stack([s["image"] for s in scenes]),
        "boxes": [s["boxes"] for s in scenes],
        "labels": [s["labels"] for s in scenes],
        "mask": np.stack(masks),
        "instances": np.stack([s["instances"] for s in scenes]),
        "objects": [s["objects"] for s in scenes],
    }
    records = ColumnRecords(columns, where, fingerprint)
    records.categories = list(categories)  # mask value k is categories[k - 1]; kept by select()
    return records


def compose_objects(
    stamps: str | Path = STAMPS_DIR,
    sizes: dict[str, int] = OBJECT_SIZES,
    image_size: int = 128,
    seed: int = 0,
    backgrounds: list[np.ndarray] | None = None,
    scale: tuple[float, float] = (0.55, 0.95),
    categories=SCENE_CATEGORIES,
) -> dict[str, ColumnRecords]:
    """Classification images: one cut-out per image (categories equally likely) on a background crop,
    ``label`` its category; the cut-outs are held out per split as for :func:`compose_scenes`."""
    cutouts = load_cutouts(stamps, categories)
    photos = _photos(backgrounds)
    pools = split_cutouts(cutouts, seed)
    out = {}
    for split, count in _checked_sizes(sizes).items():
        rng, by_category = _split_seed(seed, split), _by_category(pools[split])
        scenes = [compose_scene(rng, by_category, photos, image_size, (1, 1), scale) for _ in range(count)]
        columns = {
            "image": np.stack([s["image"] for s in scenes]),
            "label": [s["labels"][0] for s in scenes],
            "object": [s["objects"][0] for s in scenes],
        }
        out[split] = ColumnRecords(columns, f"builtin:scene-objects [{split}]")
    return out


# --- built-in data sets (cached) --------------------------------------------------------------------


def read_scenes(image_size: int = 128, seed: int = 0) -> dict[str, ColumnRecords]:
    """``builtin:scenes``: 2,000 train, 200 validation and 500 test scenes (128x128, 1-4 objects of
    the five :data:`SCENE_CATEGORIES`), built once and cached."""
    params = {"kind": "scenes", "sizes": SCENE_SIZES, "image_size": image_size, "seed": seed,
              "objects": [1, 4], "scale": [0.25, 0.6]}  # fmt: skip
    return _cached(params, lambda: compose_scenes(STAMPS_DIR, SCENE_SIZES, image_size, seed))


def read_scene_objects(image_size: int = 128, seed: int = 0) -> dict[str, ColumnRecords]:
    """``builtin:scene-objects``: 2,000 train, 300 validation and 600 test images of one cut-out
    each, labelled by category, built once and cached."""
    params = {"kind": "objects", "sizes": OBJECT_SIZES, "image_size": image_size, "seed": seed,
              "scale": [0.55, 0.95]}  # fmt: skip
    return _cached(params, lambda: compose_objects(STAMPS_DIR, OBJECT_SIZES, image_size, seed))


def cache_folder() -> Path:
    """``$BIGMODEL_CACHE``, ``$XDG_CACHE_HOME/bigmodel`` or ``~/.cache/bigmodel``, then ``scenes/``."""
    root = os.environ.get("BIGMODEL_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "bigmodel") if xdg else str(Path.home() / ".cache" / "bigmodel")
    return Path(root).expanduser() / "scenes"


def _inputs_digest(params: dict) -> str:
    """A digest of the parameters, the curation and the bytes of every file the set is built from."""
    if not scenes_installed():
        raise DataError(
            f"builtin:scenes reads Tux Paint's stamps (no folder {STAMPS_DIR}/animals) and scikit-image's "
            "sample photos: apt-get install tuxpaint-stamps-default; pip install scikit-image."
        )
    # Pillow's resampling is part of the content: another version may round pixels differently.
    settings = {
        **params,
        "format": CACHE_FORMAT,
        "excluded": sorted(EXCLUDED),
        "held_out": HELD_OUT,
        "pillow": PIL.__version__,
        "backgrounds": [*SKIMAGE_BACKGROUNDS, *SKLEARN_BACKGROUNDS],
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    files = [(name, path) for name, _, path in _candidate_files(STAMPS_DIR, SCENE_CATEGORIES)]
    files += [(path.name, path) for path in _background_files()]
    for name, path in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _cached(params: dict, build) -> dict[str, ColumnRecords]:
    """The splits ``build()`` returns, read from (or first written to) the cache file of ``params``."""
    key = _inputs_digest(params)
    where = f"builtin:{'scenes' if params['kind'] == 'scenes' else 'scene-objects'}"
    path = cache_folder() / f"{params['kind']}-{key[:32]}.npz"
    if not path.is_file():
        splits = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **_pack(splits))
    try:
        with np.load(path, allow_pickle=False) as packed:
            splits = _unpack(dict(packed))
    except (OSError, ValueError, KeyError) as exc:  # a damaged cache file: build it again next time
        path.unlink(missing_ok=True)
        raise DataError(
            f"{path}: the cached data set is damaged ({exc}); it was removed, run again."
        ) from None
    for split, records in splits.items():
        records.where, records.fingerprint = f"{where} [{split}]", f"{key}/{split}"
    return splits


def _pack(splits: dict[str, ColumnRecords]) -> dict[str, np.ndarray]:
    """Columns as plain arrays (lists of boxes/labels/names flattened, with per-record counts)."""
    arrays: dict[str, np.ndarray] = {}
    for split, records in splits.items():
        data = {name: records.column(name) for name in records.columns}
        arrays[f"{split}/image"] = data["image"]
        if "boxes" in data:
            arrays[f"{split}/count"] = np.array([len(b) for b in data["boxes"]], np.int64)
            arrays[f"{split}/boxes"] = np.array([b for bs in data["boxes"] for b in bs], np.int32).reshape(
                -1, 4
            )
            arrays[f"{split}/mask"], arrays[f"{split}/instances"] = data["mask"], data["instances"]
            arrays[f"{split}/categories"] = np.array(records.categories)
            arrays[f"{split}/labels"] = np.array([label for ls in data["labels"] for label in ls])
            arrays[f"{split}/objects"] = np.array([name for ns in data["objects"] for name in ns])
        else:
            arrays[f"{split}/label"] = np.array(data["label"])
            arrays[f"{split}/object"] = np.array(data["object"])
    return arrays


def _unpack(arrays: dict[str, np.ndarray]) -> dict[str, ColumnRecords]:
    splits = {}
    for split in sorted({key.split("/")[0] for key in arrays}):
        get = {key.split("/")[1]: value for key, value in arrays.items() if key.startswith(f"{split}/")}
        if "boxes" in get:
            ends = np.cumsum(get["count"])
            starts = ends - get["count"]
            columns = {
                "image": get["image"],
                "boxes": [get["boxes"][s:e].tolist() for s, e in zip(starts, ends, strict=True)],
                "labels": [get["labels"][s:e].tolist() for s, e in zip(starts, ends, strict=True)],
                "mask": get["mask"],
                "instances": get["instances"],
                "objects": [get["objects"][s:e].tolist() for s, e in zip(starts, ends, strict=True)],
            }
            records = ColumnRecords(columns, split)
            records.categories = get["categories"].tolist()
        else:
            columns = {
                "image": get["image"],
                "label": get["label"].tolist(),
                "object": get["object"].tolist(),
            }
            records = ColumnRecords(columns, split)
        splits[split] = records
    return splits
