"""Counting noise (exp2sim.spectra.noise): Poisson statistics in closed form, levels drawn
from the range asked for, masks and empty spectra left alone."""

import numpy as np
import pytest

from exp2sim.spectra.noise import add_counting_noise, bright_level, with_counting_noise


def test_bright_level_is_the_99th_percentile_of_lit_bins():
    x = np.full((4, 50), np.nan)
    x[0] = 0.0  # unlit bins do not count
    x[1:] = -np.arange(150).reshape(3, 50)  # |intensity|
    assert bright_level(x) == pytest.approx(np.percentile(np.arange(1, 150), 99.0))
    assert bright_level(np.zeros(10)) == 0.0 and bright_level(np.full(3, np.nan)) == 0.0


def test_counting_noise_has_poisson_mean_and_variance():
    """Intensity 2 at 50 counts per unit: 100 counts per bin, so the noisy values have
    mean 2 and variance 2 / 50 (Poisson: variance = mean in counts)."""
    x = np.full(200_000, 2.0)
    add_counting_noise(x, 50.0, np.random.default_rng(0))
    assert x.mean() == pytest.approx(2.0, rel=2e-3)
    assert x.var() == pytest.approx(2.0 / 50.0, rel=2e-2)
    assert np.allclose(x * 50, np.round(x * 50))  # whole counts


def test_with_counting_noise_draws_each_spectrum_a_level_in_range():
    rng = np.random.default_rng(1)
    spectra = np.ones((40, 5000), dtype=np.float32)  # bright level 1
    spectra[:, :100] = np.nan
    spectra[3, 100:] = 0.0
    noisy = with_counting_noise(spectra, (10.0, 1000.0), rng)
    assert noisy.dtype == np.float32 and noisy.shape == spectra.shape
    assert np.isnan(noisy[:, :100]).all() and not np.isnan(noisy[:, 100:]).any()
    assert np.array_equal(noisy[3], spectra[3], equal_nan=True)  # nothing to count: left as it is
    counts = 1 / np.delete(noisy[:, 100:], 3, axis=0).var(axis=1)  # Poisson: var = 1 / counts
    assert counts.min() > 10 * 0.85 and counts.max() < 1000 * 1.15
    assert counts.max() / counts.min() > 10  # levels differ between spectra
    same = with_counting_noise(spectra, (10.0, 1000.0), np.random.default_rng(1))
    assert np.array_equal(same, noisy, equal_nan=True)
