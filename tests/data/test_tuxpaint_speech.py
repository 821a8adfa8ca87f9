"""builtin:tuxpaint-speech's reader on a tiny copy in the package's own layout: `<stamp>_desc_<lang>.ogg`
recordings beside `<stamp>.txt`, languages outside the 9 left out, every language of a stamp in one
split, the phrase text read from the description file, and a clear error when nothing is installed."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from bigmodel.data.tuxpaint_speech import LANGUAGES, held_out_split, read_recordings, tuxpaint_installed
from bigmodel.errors import DataError

DESCRIPTION = "A lion.\nfr.utf8=Un lion.\nes.utf8=Un león.\nru.utf8=Лев.\n"


def make_stamps(root, stamps=("animals/cats/lion", "food/apple", "town/car", "people/kid")):
    rng = np.random.default_rng(0)
    for stamp in stamps:
        folder = (root / stamp).parent
        folder.mkdir(parents=True, exist_ok=True)
        name = stamp.rsplit("/", 1)[-1]
        (folder / f"{name}.txt").write_text(DESCRIPTION, encoding="utf-8")
        (folder / f"{name}.png").write_bytes(b"not read")
        for lang in ("fr", "es", "ru", "nl"):  # nl: one of the languages with too few phrases
            clip = 0.1 * rng.standard_normal((4410, 2))  # 0.1 s of stereo, as the package's recordings
            soundfile.write(folder / f"{name}_desc_{lang}.ogg", clip, 44100, format="OGG", subtype="VORBIS")
    return root


def test_recordings_are_labelled_by_language_and_held_out_by_stamp(tmp_path):
    splits = read_recordings(make_stamps(tmp_path))
    rows = [(split, records[i]) for split, records in splits.items() for i in range(len(records))]
    assert len(rows) == 4 * 3  # nl left out
    assert {row["label"] for _, row in rows} == {"fr", "es", "ru"} and set(LANGUAGES) >= {"fr", "es", "ru"}
    for split, row in rows:
        assert split == held_out_split(row["stamp"])  # every language of a stamp in the stamp's split
        assert row["audio"].endswith(f"_desc_{row['label']}.ogg")
    lion_fr = next(row for _, row in rows if row["stamp"] == "animals/cats/lion" and row["label"] == "fr")
    assert lion_fr["text"] == "Un lion."
    wave, rate = soundfile.read(lion_fr["audio"])
    assert rate == 44100 and wave.shape == (4410, 2)
    fingerprints = {records.fingerprint for records in splits.values()}
    assert len(fingerprints) == 1


def test_the_split_rule_is_fixed_and_holds_out_about_a_fifth():
    stamps = [f"category/stamp-{i}" for i in range(2000)]
    held = [held_out_split(s) for s in stamps]
    assert held == [held_out_split(s) for s in stamps]
    assert 0.15 < sum(h != "train" for h in held) / len(held) < 0.25


def test_a_missing_package_names_the_install_command(tmp_path):
    with pytest.raises(DataError, match="apt-get install tuxpaint-stamps-default"):
        read_recordings(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no '<stamp>_desc_<lang>.ogg' recording"):
        read_recordings(tmp_path / "empty")


@pytest.mark.skipif(not tuxpaint_installed(), reason="apt-get install tuxpaint-stamps-default")
def test_the_installed_package_gives_nine_languages():
    splits = read_recordings()
    labels = {splits["train"][i]["label"] for i in range(len(splits["train"]))}
    assert labels == set(LANGUAGES)
    assert len(splits["train"]) > 5000 and len(splits["test"]) > 500
