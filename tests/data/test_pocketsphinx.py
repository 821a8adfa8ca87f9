"""builtin:pocketsphinx-speech's reader on a tiny copy in the package's own layout (Sphinx transcription
files beside the WAVs), its refusals, and the installed package when it is there."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from bigmodel.data.pocketsphinx import pocketsphinx_installed, read_pocketsphinx_speech, read_transcription
from bigmodel.errors import DataError


def make_package(root, librivox: str | None = None):
    (root / "librivox").mkdir(parents=True)
    (root / "cards").mkdir()
    (root / "librivox" / "transcription").write_text(
        librivox
        or "<s> he was not an ILL-disposed young man </s> (sense-0880)\n\n"
        "<s> he might even have been made amiable himself </s> (sense-0930)\n"
    )
    (root / "cards" / "cards.transcription").write_text("<s> ten of clubs  </s> (001)\n")
    tone = (0.1 * np.sin(np.arange(1600) / 5)).astype(np.float32)
    for path in ("librivox/sense-0880.wav", "librivox/sense-0930.wav", "cards/001.wav"):
        soundfile.write(root / path, tone, 16000, subtype="PCM_16")
    return root


def test_reads_every_clip_with_its_normalised_text_and_set(tmp_path):
    records = read_pocketsphinx_speech(make_package(tmp_path / "data"))
    rows = [records[i] for i in range(len(records))]
    assert [(r["text"], r["set"]) for r in rows] == [
        ("he was not an ill disposed young man", "librivox"),
        ("he might even have been made amiable himself", "librivox"),
        ("ten of clubs", "cards"),
    ]
    assert rows[2]["audio"] == str(tmp_path / "data" / "cards" / "001.wav")
    again = read_pocketsphinx_speech(tmp_path / "data")
    assert again.fingerprint == records.fingerprint
    soundfile.write(tmp_path / "data" / "cards" / "001.wav", np.zeros(1600, np.float32), 16000)
    assert read_pocketsphinx_speech(tmp_path / "data").fingerprint != records.fingerprint  # audio hashed


def test_refuses_a_bad_line_a_missing_wav_and_a_missing_package(tmp_path):
    bad = make_package(tmp_path / "bad", librivox="<s> no file id here </s>\n")
    with pytest.raises(DataError, match=r"transcription: line 1: expected '<s> words </s> \(file id\)'"):
        read_pocketsphinx_speech(bad)
    gone = make_package(tmp_path / "gone")
    (gone / "librivox" / "sense-0930.wav").unlink()
    with pytest.raises(DataError, match=r"names 'sense-0930', but .*sense-0930.wav is not there"):
        read_pocketsphinx_speech(gone)
    with pytest.raises(DataError, match="apt-get install pocketsphinx-testdata"):
        read_pocketsphinx_speech(tmp_path / "nowhere")
    assert read_transcription(gone / "cards" / "cards.transcription") == [("001", "ten of clubs")]


@pytest.mark.skipif(not pocketsphinx_installed(), reason="apt-get install pocketsphinx-testdata")
def test_the_installed_package_holds_ten_clips():
    records = read_pocketsphinx_speech()
    sets = [records[i]["set"] for i in range(len(records))]
    assert sets.count("librivox") == 5 and sets.count("cards") == 5
    assert records[1]["text"] == "he was not an ill disposed young man"
