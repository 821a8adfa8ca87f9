"""builtin:asterisk-en's reader on a tiny copy in the packages' own layout: transcripts normalised,
notes and missing WAVs left out, held-out prompts chosen by their text, a fingerprint of the files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import soundfile

from bigmodel.data.asterisk import (
    asterisk_installed,
    held_out_split,
    normalize_transcript,
    read_asterisk_en,
    read_prompts,
    read_transcripts,
)
from bigmodel.errors import DataError

TRANSCRIPTS = """; Core Asterisk Sounds in English

activated: Activated.
agent-pass: Please enter your password followed by the pound key.
beep: [this is a simple beep tone]
confbridge-join: <beep ascending>
call-fwd-no-ans: Call-Forward on No Answer.
spy-iax2: IAX (note: does not say "2")
digits/7: seven
letters/at: at [@]
silence/1: (1 second of silence)
goodbye: Goodbye.
vm-goodbye: Goodbye.
not-shipped: This prompt has no WAV.
dir-usingkeypad: ... using your touchtone keypad.  Use the 7 key for Q, and the 9 key for Z.
"""


def make_package(root, transcripts: str = TRANSCRIPTS):
    """A sounds folder of short 8 kHz WAVs (one per transcript line except not-shipped) and a gzip
    transcript file, as the Debian packages install them."""
    sounds = root / "sounds" / "en"
    rng = np.random.default_rng(0)
    for line in transcripts.splitlines():
        name = line.partition(":")[0]
        if not line or line.startswith(";") or name == "not-shipped":
            continue
        (sounds / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(sounds / f"{name}.wav", 0.1 * rng.standard_normal(800), 8000, subtype="PCM_16")
    path = root / "core-sounds-en.txt.gz"
    path.write_bytes(gzip.compress(transcripts.encode()))
    return sounds, path


def test_normalisation_keeps_letters_digits_apostrophes_and_single_spaces():
    assert normalize_transcript("Call-Forward on No Answer.") == "call forward on no answer"
    assert normalize_transcript("Welcome to your party's extension!  Press 1.") == (
        "welcome to your party's extension press 1"
    )
    assert normalize_transcript("at [@]") == "at"
    assert normalize_transcript("<beep ascending>") == ""
    assert normalize_transcript('IAX (note: does not say "2")') == "iax"
    assert normalize_transcript("... using the 7 key/the 9 key") == "using the 7 key the 9 key"


def test_prompts_pair_wavs_with_normalised_transcripts(tmp_path):
    sounds, transcripts = make_package(tmp_path)
    splits = read_prompts(sounds, transcripts, where="builtin:asterisk-en")
    assert set(splits) == {"train", "validation", "test"}
    rows = {r["name"]: r for records in splits.values() for r in records}
    # notes (a tone, silence) and the prompt without a WAV are left out
    assert set(rows) == {"activated", "agent-pass", "call-fwd-no-ans", "spy-iax2", "digits/7", "letters/at",
                         "goodbye", "vm-goodbye", "dir-usingkeypad"}  # fmt: skip
    assert rows["call-fwd-no-ans"]["text"] == "call forward on no answer"
    assert rows["digits/7"]["audio"] == str(sounds / "digits" / "7.wav")
    assert (
        rows["dir-usingkeypad"]["text"]
        == "using your touchtone keypad use the 7 key for q and the 9 key for z"
    )
    # the split follows the text: the two "goodbye" prompts share one
    for name, row in rows.items():
        assert row in list(splits[held_out_split(row["text"])]), name
    assert splits["train"].where == "builtin:asterisk-en (train)"
    again = read_prompts(sounds, transcripts)
    assert [list(r) for r in again.values()] == [list(r) for r in splits.values()]
    assert again["test"].fingerprint == splits["train"].fingerprint
    soundfile.write(sounds / "activated.wav", np.zeros(800), 8000, subtype="PCM_16")  # a changed recording
    assert read_prompts(sounds, transcripts)["train"].fingerprint != splits["train"].fingerprint


def test_held_out_share_is_about_a_fifth_and_stable():
    texts = [f"prompt number {i}" for i in range(2000)]
    splits = [held_out_split(t) for t in texts]
    assert 0.08 < splits.count("validation") / 2000 < 0.12 and 0.08 < splits.count("test") / 2000 < 0.12
    assert held_out_split("please enter your password followed by the pound key") == "validation"


def test_bad_files_are_refused_by_name(tmp_path):
    sounds, transcripts = make_package(tmp_path)
    plain = tmp_path / "plain.txt"
    plain.write_text("activated: Activated.\nthis line has no colon\n")
    with pytest.raises(DataError, match=r"plain.txt: line 2: expected 'name: text'"):
        read_transcripts(plain)
    with pytest.raises(DataError, match=r"'builtin:asterisk-en'.*is not there; install it: apt-get install"):
        read_prompts(tmp_path / "nowhere", transcripts)
    other = tmp_path / "other.txt"
    other.write_text("missing-one: Hello.\n")
    with pytest.raises(DataError, match="no transcript of .*other.txt names a WAV"):
        read_prompts(sounds, other)


@pytest.mark.skipif(not asterisk_installed(), reason="asterisk-core-sounds-en(-wav) is not installed")
def test_the_installed_prompts():
    splits = read_asterisk_en()
    sizes = {split: len(records) for split, records in splits.items()}
    assert sum(sizes.values()) > 500 and sizes["validation"] > 30 and sizes["test"] > 30
    texts = [t for records in splits.values() for t in records.column("text")]
    assert all(t and set(t) <= set("abcdefghijklmnopqrstuvwxyz0123456789' ") for t in texts)
    held_out = set(splits["validation"].column("text")) | set(splits["test"].column("text"))
    assert not held_out & set(splits["train"].column("text"))
