"""From magnon modes to a spectrum: Bose factor and Gaussian energy broadening."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import erf

K_B = 0.08617333262  # Boltzmann constant, meV / K


def bose_occupation(energy: np.ndarray, temperature: float) -> np.ndarray:
    """Bose occupation n(E) = 1 / (exp(E / k_B T) - 1) for E > 0 (meV); zeros at T = 0."""
    energy = np.asarray(energy, dtype=float)
    if temperature < 0:
        raise ValueError("temperature must be non-negative (Kelvin)")
    if temperature == 0:
        return np.zeros_like(energy)
    with np.errstate(divide="ignore", over="ignore"):
        return 1.0 / np.expm1(energy / (K_B * temperature))


def broaden(
    energies: np.ndarray,
    intensities: np.ndarray,
    edges: np.ndarray,
    fwhm: float | Callable[[np.ndarray], np.ndarray],
    temperature: float = 0.0,
) -> np.ndarray:
    """Spectrum S(E) per meV in energy bins from modes with Gaussian line shapes.

    energies, intensities: (..., N) positive mode energies (meV) and intensities.
    edges: (E + 1,) increasing bin edges (meV); bins may extend to negative energy.
    fwhm: Gaussian full width at half maximum (meV), a number or a function of mode energy.
    temperature: Kelvin. Each mode contributes (1 + n) at +E and n at -E (detailed balance).
    Returns (..., E), each line integrated exactly over each bin and divided by its width.
    NaN energies (unstable parameter sets) give NaN spectra.
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("energy bin edges must be a 1D increasing array of at least 2 values")
    e = np.asarray(energies, dtype=float)
    w = np.asarray(intensities, dtype=float)
    if e.shape != w.shape:
        raise ValueError(f"energies {e.shape} and intensities {w.shape} differ in shape")
    width = fwhm(np.abs(e)) if callable(fwhm) else np.full_like(e, float(fwhm))
    if np.any(width[np.isfinite(width)] <= 0):
        raise ValueError("fwhm must be positive")
    sigma = np.asarray(width, dtype=float)[..., None] / (2 * np.sqrt(2 * np.log(2)))
    n = bose_occupation(np.abs(e), temperature)

    def lines(centre: np.ndarray, weight: np.ndarray) -> np.ndarray:
        z = (edges - centre[..., None]) / (np.sqrt(2) * sigma)  # (..., N, E+1)
        cdf = 0.5 * (1 + erf(z))
        return np.sum(weight[..., None] * np.diff(cdf, axis=-1), axis=-2)

    total = lines(e, w * (1 + n))
    if temperature > 0:
        total = total + lines(-e, w * n)
    return total / np.diff(edges)
