"""The input-space check of exp2sim.classifier.subspace against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from exp2sim.classifier import subspace
from exp2sim.classifier.subspace import Subspace, calibrated, fold_labels

P, K = 300, 3


def spanned(n: int, seed: int, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n inputs (n, P) = offset + a combination of K fixed orthonormal directions (+ noise),
    and those directions' orthonormal complement's first vector (P,)."""
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(P, K + 1)))[0].T  # (K+1, P)
    rng = np.random.default_rng(seed)
    x = 0.5 + rng.normal(0, 3, (n, K)) @ basis[:K] + rng.normal(0, noise, (n, P))
    return x, basis[K]


def test_spectra_in_the_span_leave_no_residual_even_with_pixels_missing():
    train, _ = spanned(40, seed=1)
    fitted = Subspace.fit(train, components=K)
    assert fitted.components.shape == (K, P) and fitted.mean.shape == (P,)
    x, _ = spanned(10, seed=2)
    measured = np.random.default_rng(3).random((10, P)) > 0.3  # 30 % of pixels missing
    measured[0] = True
    np.testing.assert_allclose(fitted.residuals(x, measured), 0, atol=1e-9)
    # what missing pixels hold does not matter
    garbage = np.where(measured, x, 1e6)
    np.testing.assert_allclose(fitted.residuals(garbage, measured), 0, atol=1e-9)


def test_residual_is_the_rms_of_the_part_off_the_span():
    train, off = spanned(40, seed=1)
    fitted = Subspace.fit(train, components=K)
    x, _ = spanned(5, seed=4)
    t = np.array([0.0, 1.0, 2.0, 5.0, 10.0])
    moved = x + t[:, None] * off  # off: unit norm, orthogonal to every direction of x
    measured = np.ones_like(moved, bool)
    np.testing.assert_allclose(fitted.residuals(moved, measured), t / np.sqrt(P), atol=1e-9)
    # no measured pixel: nothing to measure
    none = np.zeros((1, P), bool)
    assert fitted.residuals(moved[:1], none)[0] == 0


def test_calibrated_limit_is_the_quantile_of_out_of_fit_residuals():
    """Training inputs: the span plus white noise of sigma; an unseen input's residual is
    then about sigma (the noise off the span), so the 99th percentile lies a little above
    sigma, and an input moved off the span by 20 sigma in RMS lies far beyond it."""
    sigma = 0.1
    train, off = spanned(200, seed=5, noise=sigma)
    measured = np.ones_like(train, bool)
    rng = np.random.default_rng(0)
    folds = np.stack([rng.permutation(200) % 10 for _ in range(2)])
    fitted = calibrated(train, measured, folds, components=K, quantile=0.99)
    out_of_fit = np.concatenate(
        [
            Subspace.fit(train[labels != f], K).residuals(train[labels == f], measured[:20])
            for labels in folds
            for f in range(10)
        ]
    )
    assert len(out_of_fit) == 400  # every input twice
    assert fitted.limit == pytest.approx(np.quantile(out_of_fit, 0.99))
    assert sigma < fitted.limit < 1.3 * sigma
    fresh, _ = spanned(100, seed=6, noise=sigma)
    ones = np.ones_like(fresh, bool)
    assert np.mean(fitted.residuals(fresh, ones) <= fitted.limit) >= 0.95
    far = fresh[:10] + 20 * sigma * np.sqrt(P) * off
    assert np.all(fitted.residuals(far, ones[:10]) > 10 * fitted.limit)


def test_large_training_sets_are_subsampled_and_small_ones_keep_fewer_directions(
    monkeypatch,
):
    monkeypatch.setattr(subspace, "MAX_FIT_SPECTRA", 20)
    train, _ = spanned(100, seed=7)
    fitted = Subspace.fit(train, components=K)
    # the mean of 20 of the spectra, not of all 100
    assert not np.allclose(fitted.mean, train.mean(0))
    x, _ = spanned(5, seed=8)
    np.testing.assert_allclose(fitted.residuals(x, np.ones_like(x, bool)), 0, atol=1e-9)
    # 3 spectra span at most 2 directions around their mean
    assert Subspace.fit(train[:3], components=10).components.shape == (2, P)


def test_fold_labels_keep_each_group_in_one_fold_and_fill_the_folds_evenly():
    groups = np.repeat(np.arange(30), 3)[np.random.default_rng(1).permutation(90)]  # 3 rows each
    labels = fold_labels(groups, folds=10, repeats=2, rng=np.random.default_rng(0))
    assert labels.shape == (2, 90)
    for draw in labels:
        for g in range(30):
            assert len(set(draw[groups == g])) == 1
        assert np.array_equal(np.bincount(draw), np.full(10, 9))  # 3 groups per fold
    assert not np.array_equal(labels[0], labels[1])  # two draws
