"""Counting noise: what a finite measurement adds to a spectrum.

A measured bin holds N neutrons, Poisson-distributed about the true intensity times the
counts per unit of intensity. The level is given as counts at a spectrum's bright level
(the 99th percentile of its |intensity|), so it reads the same for any intensity units
(the evaluation's artefact spectra have 20 counts there; `ClassifierConfig.noise_counts`
draws from 20-500 by default).
"""

from __future__ import annotations

import numpy as np


def bright_level(spectra: np.ndarray) -> float:
    """The 99th percentile of |intensity| over the unmasked non-zero bins of `spectra`
    (any shape), in their units: the scale noise, artefacts and out-of-distribution images
    are set against. 0 for spectra with no such bin."""
    finite = spectra[np.isfinite(spectra)]
    lit = np.abs(finite[finite != 0])
    return float(np.percentile(lit, 99.0)) if lit.size else 0.0


def add_counting_noise(spectrum: np.ndarray, counts: float, rng: np.random.Generator) -> None:
    """Replace the unmasked bins of `spectrum` (any shape, float, in place) by Poisson
    counts at `counts` counts per unit of intensity, in the same units (negative
    intensities count as 0)."""
    ok = np.isfinite(spectrum)
    spectrum[ok] = rng.poisson(np.clip(spectrum[ok], 0, None) * counts) / counts


def with_counting_noise(
    spectra: np.ndarray, counts: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """A copy of spectra (n, *S) with counting noise, each spectrum at its own level drawn
    log-uniformly from counts = (low, high) counts at its bright level. Spectra that are
    all zero or masked stay as they are. Same dtype as the input."""
    low, high = counts
    out = np.array(spectra, dtype=np.float64)
    for x in out:
        level = bright_level(x)
        if level > 0:
            add_counting_noise(x, np.exp(rng.uniform(np.log(low), np.log(high))) / level, rng)
    return out.astype(spectra.dtype)
