"""Scores of generated images: the Fréchet distance against scipy's sqrtm and closed forms, Gaussian fits
from streamed sums, the recognisability report and the PNG grid."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from bigmodel.evaluation.generation import (
    frechet_distance,
    gaussian_fit,
    gaussian_from_sums,
    recognition_report,
    save_grid,
)


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook computation (as pytorch-fid writes it): sqrtm of the product, real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def _random_covariance(rng, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d + 3))
    return a @ a.T / d


def test_frechet_distance_equals_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 17):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_covariance(rng, d), _random_covariance(rng, d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-7)


def test_frechet_distance_with_singular_covariances_stays_real_and_agrees():
    """Fewer samples than dimensions (a rank-deficient fit): finite, >= 0, scipy's real part."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 10)), rng.normal(size=(6, 10)) + 0.5
    (mu1, s1), (mu2, s2) = gaussian_fit(a), gaussian_fit(b)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-5, abs=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_samples_of_one_gaussian_are_near_zero_and_shifted_ones_near_the_closed_form():
    rng = np.random.default_rng(2)
    d, n = 4, 40_000
    scale1, scale2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([1.0, 1.0, 1.0, 3.0])
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    x = rng.normal(size=(n, d)) * scale1
    same = rng.normal(size=(n, d)) * scale1
    other = rng.normal(size=(n, d)) * scale2 + shift
    assert frechet_distance(*gaussian_fit(x), *gaussian_fit(same)) < 0.01
    # diagonal covariances: |shift|² + sum (s1 - s2)² over the standard deviations
    expected = float(shift @ shift + ((scale1 - scale2) ** 2).sum())
    assert expected == pytest.approx(5.25 + 3.5)
    assert frechet_distance(*gaussian_fit(x), *gaussian_fit(other)) == pytest.approx(expected, rel=0.02)


def test_gaussian_from_streamed_sums_equals_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 5)) @ rng.normal(size=(5, 5)) + 3.0
    parts = np.array_split(x, 4)
    n = sum(len(p) for p in parts)
    total = sum(p.sum(0) for p in parts)
    outer = sum(p.T @ p for p in parts)
    mu, sigma = gaussian_from_sums(n, total, outer)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_from_sums(1, x[0], np.outer(x[0], x[0]))


def test_frechet_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_recognition_report_counts_the_diagonal():
    confusion = np.array([[8, 2, 0], [1, 4, 5], [0, 0, 0]])  # rows: wanted class, columns: judged
    report = recognition_report(confusion, ["a", "b", "c"])
    assert report["recognisability"] == pytest.approx(12 / 20)
    assert report["recognisability_per_class"] == {"a": 0.8, "b": 0.4}  # no sample of c: not listed
    assert recognition_report(np.zeros((2, 2)), ["a", "b"])["recognisability"] == 0.0


def test_save_grid_places_images_row_by_row(tmp_path):
    images = [np.full((3, 4), 10 * (i + 1), np.uint8) for i in range(5)]
    path = save_grid(images, tmp_path / "grid.png", columns=2, padding=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 4 + 1, 2 * 5 + 1)  # 3 rows of 2, 1-pixel gaps around every image
    assert grid[1, 1] == 10 and grid[1, 6] == 20 and grid[5, 1] == 30 and grid[9, 1] == 50
    assert grid[0].max() == 0 and grid[9, 6] == 0  # padding and the empty sixth cell stay black
    rgb = save_grid([np.zeros((2, 2, 3), np.uint8)] * 4, tmp_path / "rgb.png")
    assert np.asarray(Image.open(rgb)).shape == (10, 10, 3)  # 2 x 2 by default, 2-pixel gaps


def test_save_grid_refuses_mixed_or_non_uint8_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_grid([np.zeros((3, 3), np.uint8), np.zeros((4, 3), np.uint8)], tmp_path / "g.png")
    with pytest.raises(ValueError, match="uint8"):
        save_grid([np.zeros((3, 3), np.float32)], tmp_path / "g.png")
    with pytest.raises(ValueError, match="no images"):
        save_grid([], tmp_path / "g.png")
