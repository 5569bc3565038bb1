"""Frechet distance between sets of spectra, in a feature space made for spectra.

Inception features describe RGB photographs; what separates a resolution-broadened spectrum
from a sharp one is how its power is spread over spatial frequencies and how its intensities
and gradients are distributed. Each spectrum is cut into patches and every patch is
described by (all on normalised intensities, masked pixels left out or set to 0):

- the fraction of its power in each of `n_bands` radial spatial-frequency bands (log10):
  broadening moves power from the outer to the inner bands;
- quantiles (10, 25, 50, 75, 90, 99 %) and mean of its unmasked intensities;
- quantiles (50, 90, 99 %) of its gradient magnitude.

Patches overlap by half, so even a few held-out spectra give enough feature vectors.

The Frechet distance between two sets of such vectors (Gaussian fits, Heusel et al. 2017)
is then the model-selection score: 0 for identical distributions, growing as the translated
spectra's sharpness, contrast or intensity distribution departs from the target domain's.
Works for 1D, 2D and 3D patches.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

INTENSITY_QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
GRADIENT_QUANTILES = (0.50, 0.90, 0.99)


def _patches(spectrum: np.ndarray, side: int) -> list[np.ndarray]:
    """Patches of side `side` (clipped to the spectrum) on a grid of half-patch steps."""
    sides = [min(side, s) for s in spectrum.shape]
    starts = [
        range(0, s - p + 1, max(1, p // 2)) for s, p in zip(spectrum.shape, sides, strict=True)
    ]
    grids = np.meshgrid(*[np.array(list(r)) for r in starts], indexing="ij")
    corners = np.stack([g.ravel() for g in grids], axis=1)
    return [
        spectrum[tuple(slice(c, c + p) for c, p in zip(corner, sides, strict=True))]
        for corner in corners
    ]


def patch_features(patch: np.ndarray, n_bands: int = 12) -> np.ndarray | None:
    """Feature vector of one patch (NaN = masked), or None if under half of it holds data."""
    valid = np.isfinite(patch)
    if valid.mean() < 0.5:
        return None
    values = patch[valid]
    filled = np.where(valid, patch - values.mean(), 0.0)
    power = np.abs(np.fft.fftn(filled)) ** 2
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in patch.shape], indexing="ij")
    radius = np.sqrt(sum(f**2 for f in freqs)) / (0.5 * np.sqrt(patch.ndim))
    band = np.minimum((radius * n_bands).astype(int), n_bands - 1)
    band_power = np.bincount(band.ravel(), weights=power.ravel(), minlength=n_bands)
    band_power = np.log10(band_power / max(band_power.sum(), 1e-30) + 1e-8)
    grads = np.gradient(np.where(valid, patch, values.mean()))
    grads = [grads] if patch.ndim == 1 else grads
    gmag = np.sqrt(sum(g**2 for g in grads))[valid]
    return np.concatenate(
        [
            band_power,
            np.quantile(values, INTENSITY_QUANTILES),
            [values.mean()],
            np.quantile(gmag, GRADIENT_QUANTILES),
        ]
    )


def spectra_features(spectra: np.ndarray, patch: int, n_bands: int = 12) -> np.ndarray:
    """Features of every usable patch of spectra (n, *S): (n_patches, n_features)."""
    rows = [
        f
        for s in spectra
        for p in _patches(s, patch)
        if (f := patch_features(p, n_bands)) is not None
    ]
    if not rows:
        raise ValueError("no patch with enough unmasked pixels to compute features")
    return np.array(rows)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) between two Gaussians."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            # (nearly) constant features make the product singular: a tiny ridge, as in
            # pytorch-fid
            eps = 1e-6 * max(np.trace(sigma1), np.trace(sigma2), 1e-12) / len(mu1)
            ridge = eps * np.eye(len(mu1))
            covmean = linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between two feature sets (n, d) and (m, d)."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("need at least two feature vectors on each side")
    return frechet_distance(
        x.mean(0),
        np.atleast_2d(np.cov(x, rowvar=False)),
        y.mean(0),
        np.atleast_2d(np.cov(y, rowvar=False)),
    )


def spectra_distance(a: np.ndarray, b: np.ndarray, patch: int) -> float:
    """Frechet distance between spectra sets a (n, *S) and b (m, *S') in the feature space,
    over patches of side `patch` (halved, down to 8, while a set yields under two)."""
    while True:
        fa, fb = spectra_features(a, patch), spectra_features(b, patch)
        if min(len(fa), len(fb)) >= 2 or patch <= 8:
            return feature_distance(fa, fb)
        patch //= 2
