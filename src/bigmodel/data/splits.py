"""Deterministic train/validation/test splits from the seed, stratified by class when asked."""

from __future__ import annotations

import numpy as np


def split_indices(
    n: int, validation: float, test: float, seed: int, strata: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Return sorted index arrays ``{"train", "validation", "test"}`` that partition ``range(n)``.

    With ``strata`` (class labels), each class is split in the same proportions, so a rare class
    appears in every split it can. Counts are rounded per class, so split sizes may differ from
    the exact fractions by up to one row per class.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == c) for c in np.unique(strata)]
    out = {"train": [], "validation": [], "test": []}
    for members in groups:
        members = rng.permutation(members)
        n_test = int(round(len(members) * test))
        n_val = int(round(len(members) * validation))
        out["test"].append(members[:n_test])
        out["validation"].append(members[n_test : n_test + n_val])
        out["train"].append(members[n_test + n_val :])
    return {name: np.sort(np.concatenate(parts)).astype(np.int64) for name, parts in out.items()}
