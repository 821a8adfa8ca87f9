"""Scores of generated images (NumPy and SciPy; a leaf the tasks use, like evaluation/metrics.py).

* :func:`frechet_distance`: the Fréchet (2-Wasserstein) distance between two Gaussians, the formula
  of FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule"). FID proper fits the
  Gaussians to Inception-v3 pool features; here the features are whatever the caller has — in
  bigmodel, the penultimate features of the project's own classifier (no Inception weights are
  available offline), so the figures are NOT comparable with published FID numbers.
* :func:`gaussian_from_sums`: the mean and covariance from summed statistics (count, sum, sum of outer
  products), which add across batches and processes, so the distance streams.
* :func:`recognition_report`: how often a judge classifier names the class a sample was generated for.
* :func:`save_grid`: generated images as one PNG grid to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def gaussian_from_sums(count: float, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``count`` vectors from their sum ``(D,)`` and
    the sum of their outer products ``(D, D)`` (``np.cov`` of the same vectors, up to rounding)."""
    n = float(count)
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 vectors, got {n:g}")
    mu = np.asarray(total, dtype=np.float64) / n
    sigma = (np.asarray(outer, dtype=np.float64) - n * np.outer(mu, mu)) / (n - 1)
    return mu, (sigma + sigma.T) / 2  # symmetric up to rounding


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the rows of ``features`` ``(N, D)``."""
    x = np.asarray(features, dtype=np.float64)
    return gaussian_from_sums(len(x), x.sum(0), x.T @ x)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½)`` between ``N(mu1, S1)`` and ``N(mu2, S2)``.

    ``Tr (S1 S2)^½`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which are those
    of the symmetric ``S1^½ S2 S1^½`` (similar matrices): so it is computed with two symmetric
    eigendecompositions, real and stable for singular covariances (fewer samples than dimensions),
    where ``scipy.linalg.sqrtm(S1 @ S2)`` can return complex parts that must be dropped.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shapes differ: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^½
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def recognition_report(confusion: np.ndarray, class_names: list[str]) -> dict:
    """From ``confusion[wanted, judged]`` counts: the share of samples the judge names as the class
    they were generated for (``recognisability``), per class, and how many samples there were."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    per_class_total = confusion.sum(1)
    hits = np.diag(confusion)
    return {
        "recognisability": float(hits.sum() / total) if total else 0.0,
        "recognisability_per_class": {
            name: round(float(h / n), 4)
            for name, h, n in zip(class_names, hits, per_class_total, strict=True)
            if n
        },
    }


def save_grid(
    images: list[np.ndarray], path: str | Path, columns: int | None = None, padding: int = 2
) -> Path:
    """Write equal-sized uint8 images (``(H, W)`` grey or ``(H, W, 3)``) as one PNG grid, row by row
    (``columns`` per row, default about square), on a black background with ``padding`` pixels
    between them. Returns the path."""
    from PIL import Image

    if not len(images):
        raise ValueError("no images to put in a grid")
    arrays = [np.asarray(im) for im in images]
    shape = arrays[0].shape
    if any(a.shape != shape or a.dtype != np.uint8 for a in arrays) or len(shape) not in (2, 3):
        raise ValueError(
            f"the images must all be uint8 (H, W) or (H, W, 3) of one shape; the first is {shape}"
        )
    columns = columns or int(np.ceil(np.sqrt(len(arrays))))
    rows = -(-len(arrays) // columns)
    H, W = shape[:2]
    grid = np.zeros((rows * (H + padding) + padding, columns * (W + padding) + padding, *shape[2:]), np.uint8)
    for i, a in enumerate(arrays):
        r, c = divmod(i, columns)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[top : top + H, left : left + W] = a
    path = Path(path)
    Image.fromarray(grid).save(path)
    return path
