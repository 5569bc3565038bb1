"""Bose factor and Gaussian broadening against closed forms."""

import numpy as np
import pytest

from exp2sim.spinwave.lineshape import K_B, bose_occupation, broaden


def test_bose_occupation_closed_form_and_zero_temperature():
    e = np.array([0.5, 2.0, 10.0])
    np.testing.assert_allclose(bose_occupation(e, 10.0), 1 / (np.exp(e / (K_B * 10.0)) - 1))
    np.testing.assert_array_equal(bose_occupation(e, 0.0), 0.0)
    with pytest.raises(ValueError):
        bose_occupation(e, -1.0)


def test_broadening_conserves_intensity_and_places_peaks():
    energies = np.array([[3.0, 7.5]])
    weights = np.array([[2.0, 0.5]])
    edges = np.linspace(-5, 20, 2501)
    s = broaden(energies, weights, edges, fwhm=0.8)
    assert s.shape == (1, 2500)
    np.testing.assert_allclose(np.sum(s * np.diff(edges)), 2.5, rtol=1e-9)
    centres = (edges[1:] + edges[:-1]) / 2
    lower = centres < 5
    np.testing.assert_allclose(centres[lower][np.argmax(s[0, lower])], 3.0, atol=0.01)
    # full width at half maximum of the first line
    half = s[0, lower] >= s[0, lower].max() / 2
    np.testing.assert_allclose(np.ptp(centres[lower][half]), 0.8, atol=0.02)


def test_broadening_width_can_depend_on_energy():
    edges = np.linspace(0, 40, 4001)
    centres = (edges[1:] + edges[:-1]) / 2
    s = broaden(np.array([10.0, 30.0]), np.array([1.0, 1.0]), edges, fwhm=lambda e: 0.1 * e)
    for e0 in (10.0, 30.0):
        near = np.abs(centres - e0) < 10
        half = s[near] >= s[near].max() / 2
        np.testing.assert_allclose(np.ptp(centres[near][half]), 0.1 * e0, rtol=0.03)


def test_detailed_balance_at_finite_temperature():
    omega, temperature = 4.0, 30.0
    edges = np.linspace(-10, 10, 201)
    s = broaden(np.array([omega]), np.array([1.0]), edges, fwhm=0.3, temperature=temperature)
    de = np.diff(edges)
    gain, loss = np.sum((s * de)[edges[1:] <= 0]), np.sum((s * de)[edges[:-1] >= 0])
    np.testing.assert_allclose(gain / loss, np.exp(-omega / (K_B * temperature)), rtol=1e-6)
    n = 1 / np.expm1(omega / (K_B * temperature))
    np.testing.assert_allclose(gain + loss, 1 + 2 * n, rtol=1e-6)


def test_unstable_modes_give_nan_and_bad_input_is_refused():
    s = broaden(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]), np.linspace(0, 2, 5), 0.1)
    assert np.all(np.isnan(s))
    with pytest.raises(ValueError, match="increasing"):
        broaden(np.array([1.0]), np.array([1.0]), np.array([1.0, 0.5]), 0.1)
    with pytest.raises(ValueError, match="shape"):
        broaden(np.array([1.0, 2.0]), np.array([1.0]), np.linspace(0, 2, 5), 0.1)
    with pytest.raises(ValueError, match="positive"):
        broaden(np.array([1.0]), np.array([1.0]), np.linspace(0, 2, 5), 0.0)
