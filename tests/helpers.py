"""Data the tests build for themselves (real tables from scikit-learn written as files)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sklearn import datasets


def write_wine_csv(path: Path) -> Path:
    """The UCI wine table (178 rows, 13 numeric features, 3 cultivars) as a CSV with a text label."""
    wine = datasets.load_wine()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*wine.feature_names, "label"])
        for row, target in zip(wine.data, wine.target, strict=True):
            writer.writerow([*(f"{v:.6g}" for v in row), wine.target_names[target]])
    return path


def write_diabetes_jsonl(path: Path) -> Path:
    """The diabetes regression table (442 rows, 10 features, target = disease progression) as JSONL."""
    diabetes = datasets.load_diabetes()
    with open(path, "w") as f:
        for row, target in zip(diabetes.data, diabetes.target, strict=True):
            record = dict(zip(diabetes.feature_names, map(float, row), strict=True))
            f.write(json.dumps({**record, "progression": float(target)}) + "\n")
    return path
