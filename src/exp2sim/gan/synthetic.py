"""Synthetic spectra with a known resolution, for tests, benchmarks and examples.

`sharp_spectra` draws spectra made of thin dispersion-like lines (cosine bands in 2D and 3D,
peaks in 1D); `blur` convolves them with a Gaussian of known width: the pair is a
miniature of simulated vs experiment-like data where the true translation is known.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def sharp_spectra(
    n: int,
    shape: tuple[int, ...],
    seed: int = 0,
    width: float = 0.7,
    lines: int = 3,
    mask_fraction: float = 0.0,
) -> np.ndarray:
    """n spectra (n, *shape) of `lines` sharp features each (Gaussian cross-section of
    `width` pixels) on a zero background, peak heights in [0.5, 2]. With mask_fraction > 0,
    a band of that fraction of the last axis (same for all spectra) is NaN."""
    rng = np.random.default_rng(seed)
    dim = len(shape)
    grids = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    out = np.zeros((n, *shape))
    for i in range(n):
        for _ in range(lines):
            height = rng.uniform(0.5, 2.0)
            if dim == 1:
                centre = rng.uniform(0, shape[0])
                dist = grids[0] - centre
            else:
                # the first axis is energy: E(q) = e0 + amp * cos(k q + phase) over the others
                e0 = rng.uniform(0.2, 0.8) * shape[0]
                amp = rng.uniform(0.05, 0.2) * shape[0]
                phase = sum(
                    rng.uniform(0.5, 2.0) * 2 * np.pi * g / s
                    for g, s in zip(grids[1:], shape[1:], strict=True)
                )
                dist = grids[0] - (e0 + amp * np.cos(phase + rng.uniform(0, 2 * np.pi)))
            out[i] += height * np.exp(-0.5 * (dist / width) ** 2)
    if mask_fraction > 0:
        edge = int(round(shape[-1] * (1 - mask_fraction)))
        out[..., edge:] = np.nan
    return out.astype(np.float32)


def blur(spectra: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each spectrum (n, *S) over its spatial axes with standard deviation
    `sigma` pixels; NaN pixels are left out of the average and stay NaN."""
    valid = np.isfinite(spectra)
    sig = (0,) + (sigma,) * (spectra.ndim - 1)
    num = gaussian_filter(np.where(valid, spectra, 0.0), sig, mode="reflect")
    den = gaussian_filter(valid.astype(float), sig, mode="reflect")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(valid, out, np.nan).astype(np.float32)
