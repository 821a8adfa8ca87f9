"""Feature normalisation fitted on the training split and saved with the run (``data.json``)."""

from __future__ import annotations

import numpy as np


class Normalizer:
    """``(x - mean) / std`` with statistics from training data only.

    Args:
        mode: ``standard`` (one mean/std per feature), ``global`` (one for all), or ``none``.
    """

    def __init__(self, mode: str = "standard", mean=None, std=None):
        self.mode = mode
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.std = None if std is None else np.asarray(std, dtype=np.float32)

    def fit(self, x: np.ndarray) -> Normalizer:
        if self.mode == "standard":
            self.mean, self.std = x.mean(axis=0), x.std(axis=0)
        elif self.mode == "global":
            self.mean, self.std = np.float32(x.mean()), np.float32(x.std())
        else:
            self.mean, self.std = np.float32(0.0), np.float32(1.0)
        self.std = np.where(self.std > 1e-8, self.std, 1.0).astype(np.float32)  # constant features stay put
        self.mean = np.asarray(self.mean, dtype=np.float32)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(d["mode"], d["mean"], d["std"])
