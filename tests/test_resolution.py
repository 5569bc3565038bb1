"""Resolution function of MAPS: internal consistency, PyChop (resins) and Tobyfit references.

Agreement reached (printed with ``pytest -s``):

- Jacobian = derivative of the exact ray-traced kinematics to ~1e-9 (relative).
- Monte Carlo covariance of J @ samples (20k) = J C J^T within a few per cent.
- With PyChop's own MAPS parameters (measured moderator widths, 94 mm aperture 8.27 m before
  the chopper, 48 mm sample) energy_fwhm reproduces resins within 4 % at all six PCSMO
  settings, 0-0.8 Ei. The MAPS_RESOLUTION preset (Horace's moderator, fitted to the Tobyfit
  tables) is 8-45 % broader than resins, as the Tobyfit tables are.
- Tobyfit tables (E <= 0.8 Ei, reachable pixels): FWHM ratios h, k, E within 0.86-1.03,
  medians 0.96-1.02 (E at Ei = 100 meV: 0.88, the table matches 250 Hz, not 300 Hz);
  correlation coefficients within 0.25 (median ~0.01), once the tables' sign convention for
  the Q-E cross terms is accounted for (they are covariances of (h, k, -E)).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from exp2sim.instrument.resolution import (
    FWHM_PER_SIGMA,
    MAPS_RESOLUTION,
    VARIABLES,
    IkedaCarpenterModerator,
    ResolutionModel,
    _exact_hkle,
    chopper_pulse_variance,
    chopper_pulse_width,
)
from exp2sim.instrument.spectrometer import E_FROM_K2, MAPS, PCSMO_SETTINGS, Setting
from exp2sim.spinwave.lattice import Lattice

PCSMO = Lattice(5.408, 5.4599, 19.266)
IDS = [f"Ei{s.ei:g}" for s in PCSMO_SETTINGS]


# --------------------------------------------------------------------------------------
# API and internal consistency
# --------------------------------------------------------------------------------------


def test_shapes_and_unreachable_pixels() -> None:
    model = MAPS_RESOLUTION
    st = PCSMO_SETTINGS[2]
    assert model.variables() == list(VARIABLES) and len(VARIABLES) == 10
    h = np.array([0.1, 0.5, -1.0, 3.0, 0.2])
    k = np.array([0.0, -0.5, 0.5, 3.0, 0.1])
    e = np.array([0.0, 20.0, 35.0, 10.0, 60.0])  # 4th: Q_perp > k_f, 5th: E > Ei
    jac = model.jacobian(st, h, k, e, PCSMO)
    cov = model.covariance(st, h, k, e, PCSMO)
    assert jac.shape == (5, 4, 10) and cov.shape == (5, 4, 4)
    assert np.isfinite(jac[:3]).all() and np.isnan(jac[3:]).all()
    np.testing.assert_allclose(cov[:3], cov[:3].transpose(0, 2, 1))
    assert (np.linalg.eigvalsh(cov[:3]) > 0).all()
    # elastic and straight through (Q_perp = 0), dE = 2 E_FROM_K2 k_i dQ_z: rank 3
    singular = model.covariance(st, 0.0, 0.0, 0.0, PCSMO)[0]
    ki = np.sqrt(st.ei / E_FROM_K2)
    np.testing.assert_allclose(
        singular[3, 3], (2 * E_FROM_K2 * ki * 2 * np.pi / PCSMO.c) ** 2 * singular[2, 2]
    )
    assert model.variable_covariance(st).shape == (10, 10)
    samples = model.sample_variables(st, 1000, np.random.default_rng(0))
    assert samples.shape == (1000, 10)
    # scalars broadcast to one pixel
    assert model.covariance(st, 0.1, 0.2, 10.0, PCSMO).shape == (1, 4, 4)


@pytest.mark.parametrize("st", PCSMO_SETTINGS, ids=IDS)
def test_jacobian_is_derivative_of_exact_kinematics(st: Setting) -> None:
    model = MAPS_RESOLUTION
    scale = np.sqrt(np.diag(model.variable_covariance(st)))
    for h, k, frac, psi in [(0.3, -0.5, 0.4, 0.0), (1.0, 0.5, 0.7, 0.0), (0.0, 0.0, 0.0, 30.0)]:
        e = frac * st.ei
        jac = model.jacobian(st, h, k, e, PCSMO, psi)[0]
        steps = 1e-3 * np.diag(scale)
        plus = _exact_hkle(model, st, h, k, e, PCSMO, psi, steps)
        minus = _exact_hkle(model, st, h, k, e, PCSMO, psi, -steps)
        numeric = ((plus - minus) / (2e-3 * scale[:, None])).T  # (4, V)
        # compare contributions (per standard deviation) relative to the largest per row
        err = np.abs(jac - numeric) * scale
        assert (err / np.max(np.abs(numeric) * scale, axis=1, keepdims=True)).max() < 1e-6
        nominal = _exact_hkle(model, st, h, k, e, PCSMO, psi, np.zeros((1, 10)))[0]
        np.testing.assert_allclose(nominal[[0, 1, 3]], [h, k, e], atol=1e-9)


def test_energy_bin_jacobian_moves_along_kf() -> None:
    st, h, k, e, eps = PCSMO_SETTINGS[3], 0.6, -0.3, 30.0, 1e-4
    col = MAPS_RESOLUTION.energy_bin_jacobian(st, h, k, e, PCSMO)[0]
    # fixed detector direction n: k_f' = sqrt((Ei - E - eps) / c) n, Q' = k_i z - k_f' n
    astar, bstar, cstar = (2 * np.pi / x for x in (PCSMO.a, PCSMO.b, PCSMO.c))
    qx, qy = h * astar, k * bstar
    kf = np.sqrt((st.ei - e) / E_FROM_K2)
    n = np.array([-qx, -qy, np.sqrt(kf**2 - qx**2 - qy**2)]) / kf
    kf2 = np.sqrt((st.ei - e - eps) / E_FROM_K2)
    dq = -(kf2 - kf) * n / eps
    np.testing.assert_allclose(col, [dq[0] / astar, dq[1] / bstar, dq[2] / cstar, 1.0], rtol=1e-4)


@pytest.mark.parametrize("st", PCSMO_SETTINGS, ids=IDS)
def test_time_distributions_have_the_right_widths(st: Setting) -> None:
    rng = np.random.default_rng(1)
    model = MAPS_RESOLUTION
    x = model.sample_variables(st, 200_000, rng)
    # Ikeda-Carpenter without storage term: Gamma(3, tau_f), sigma = sqrt(3) tau_f
    tau_f = 70e-6 / np.sqrt(st.ei)
    tm = x[:, VARIABLES.index("moderator_time")]
    assert abs(tm.mean()) < 0.01 * tau_f
    assert tm.std() == pytest.approx(np.sqrt(3) * tau_f, rel=0.01)
    assert tm.min() >= -3 * tau_f  # emission never before the pulse starts
    # Fermi chopper: closed forms of the variance of the transmission vs time (triangle
    # flattened by the slit-curvature mismatch gamma), as used by PyChop.
    delta, gamma = chopper_pulse_width(MAPS, st)
    if gamma <= 1:
        g = (1 - gamma**4 / 10) / (1 - gamma**2 / 6)
        support = delta
    else:
        r = np.sqrt(gamma)
        g = 0.6 * gamma * (r - 2) ** 2 * (r + 8) / (r + 4)
        support = delta * r * (2 - r)
    expected = delta**2 * g / 6
    assert chopper_pulse_variance(MAPS, st) == pytest.approx(expected, rel=1e-4)
    tc = x[:, VARIABLES.index("chopper_time")]
    assert tc.var() == pytest.approx(expected, rel=0.015)
    assert np.abs(tc).max() <= support * (1 + 1e-9)
    # uniform variables: full width sqrt(12) sigma
    cov = np.diag(model.variable_covariance(st))
    np.testing.assert_allclose(x.var(axis=0), cov, rtol=0.015)


def test_chopper_regimes_cover_pcsmo_settings() -> None:
    gammas = [chopper_pulse_width(MAPS, st)[1] for st in PCSMO_SETTINGS]
    # 25 meV at 300 Hz is beyond the curvature match (flat-topped pulse), the rest below
    assert gammas[0] > 1 and all(g < 1 for g in gammas[1:])
    with pytest.raises(ValueError, match="does not transmit"):
        MAPS_RESOLUTION.variable_covariance(Setting(8.0, 600.0))


@pytest.mark.parametrize("st", [PCSMO_SETTINGS[0], PCSMO_SETTINGS[4]], ids=["Ei25", "Ei100"])
def test_monte_carlo_matches_gaussian_covariance(st: Setting) -> None:
    model = MAPS_RESOLUTION
    h = np.array([0.0, 0.7, -0.4])
    k = np.array([0.0, 0.3, 0.9])
    e = np.array([0.1, 0.4, 0.7]) * st.ei
    jac = model.jacobian(st, h, k, e, PCSMO)
    cov = model.covariance(st, h, k, e, PCSMO)
    x = model.sample_variables(st, 20_000, np.random.default_rng(2))
    dev = np.einsum("piv,nv->pni", jac, x)  # (P, n, 4)
    for p in range(len(h)):
        mc = np.cov(dev[p].T)
        sd, sd_mc = np.sqrt(np.diag(cov[p])), np.sqrt(np.diag(mc))
        np.testing.assert_allclose(sd_mc, sd, rtol=0.03)
        np.testing.assert_allclose(
            mc / np.outer(sd_mc, sd_mc), cov[p] / np.outer(sd, sd), atol=0.03
        )


# --------------------------------------------------------------------------------------
# PyChop (resins): incoherent energy resolution
# --------------------------------------------------------------------------------------


def _resins_fwhm(st: Setting, energy: np.ndarray) -> tuple[np.ndarray, float]:
    """resins' MAPS "S" energy FWHM (meV) and its moderator standard deviation (s)."""
    import resins  # a test dependency (pyproject: test extra)
    from resins.models.pychop import PyChopModelFermi

    maps = resins.Instrument.from_default("MAPS")
    model = maps.get_resolution_function(
        "PyChop_fit", chopper_package="S", e_init=st.ei, chopper_frequency=int(st.frequency)
    )
    fwhm = model.get_characteristics(energy[:, None])["sigma"] * FWHM_PER_SIGMA
    data = maps.get_model_data("PyChop_fit", chopper_package="S")
    mod_fwhm2 = PyChopModelFermi._get_moderator_width_squared(data.moderator, st.ei)
    return fwhm, float(np.sqrt(mod_fwhm2) / FWHM_PER_SIGMA)


@pytest.mark.parametrize("st", PCSMO_SETTINGS, ids=IDS)
def test_energy_fwhm_against_resins(st: Setting) -> None:
    energy = np.linspace(0.0, 0.8, 9) * st.ei
    ref, mod_sigma = _resins_fwhm(st, energy)
    # DESIGN: PyChop's elastic FWHM is about 2.9-4.7 % of Ei at these settings
    assert 0.028 < ref[0] / st.ei < 0.048
    # Our model with PyChop's parameters: moderator width (as a Gamma(3) pulse of the same
    # sigma), 94 mm aperture 8.27 m before the chopper, 48 mm wide sample.
    pychop_like = ResolutionModel(
        MAPS,
        moderator=IkedaCarpenterModerator(mod_sigma / np.sqrt(3) * 1e6 * np.sqrt(st.ei)),
        aperture_distance=8.27 + MAPS.chopper_sample,
        aperture_width=0.094,
        sample_size=(0.048, 0.048, 0.0),
    )
    ratio = pychop_like.energy_fwhm(st, energy) / ref
    assert np.all(np.abs(ratio - 1) < 0.04), ratio
    # The preset (Tobyfit's moderator and aperture) is broader, as Tobyfit is (DESIGN:
    # 10-35 %); at 25 meV / 300 Hz up to 45 %.
    ratio = MAPS_RESOLUTION.energy_fwhm(st, energy) / ref
    print(f"Ei {st.ei:g}: preset / resins energy FWHM {ratio.min():.3f}-{ratio.max():.3f}")
    assert np.all((ratio > 1.05) & (ratio < 1.5)), ratio


# --------------------------------------------------------------------------------------
# Tobyfit tables of the PCSMO experiment
# --------------------------------------------------------------------------------------


def _table(reference, ei: float) -> tuple[np.ndarray, ...]:
    data = np.loadtxt(reference / "maps_resolution" / f"PCSMO_ei{ei:g}_resolution.txt")
    return data[:, 0], data[:, 1], data[:, 2], data[:, 3:].reshape(-1, 3, 3)


def _compare(model, st, table, emax=0.8):
    """FWHM ratios (n, 3) for h, k, E and correlation differences (n, 3) for hk, hE, kE."""
    h, k, e, ref = table
    cov = model.covariance(st, h, k, e, PCSMO)[:, [0, 1, 3]][:, :, [0, 1, 3]]
    # the tables' Q-E cross terms have the opposite sign to Q = k_i - k_f, E = E_i - E_f
    cov[:, 2, :2] *= -1
    cov[:, :2, 2] *= -1
    ok = np.isfinite(cov).all(axis=(1, 2)) & (e <= emax * st.ei)
    cov, ref = cov[ok], ref[ok]
    sd = np.sqrt(np.einsum("pii->pi", cov))
    sd_ref = np.sqrt(np.einsum("pii->pi", ref))
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    corr_ref = ref / (sd_ref[:, :, None] * sd_ref[:, None, :])
    pairs = ([0, 0, 1], [1, 2, 2])
    return sd / sd_ref, corr[:, pairs[0], pairs[1]] - corr_ref[:, pairs[0], pairs[1]]


@pytest.mark.parametrize("st", PCSMO_SETTINGS, ids=IDS)
def test_covariance_against_tobyfit_tables(reference, st: Setting) -> None:
    table = _table(reference, st.ei)
    assert table[0].size == 23 * 23 * np.unique(table[2]).size
    ratio, dcorr = _compare(MAPS_RESOLUTION, st, table)
    assert ratio.shape[0] > 0.5 * table[0].size  # most of the grid has E <= 0.8 Ei
    med = np.median(ratio, axis=0)
    print(
        f"Ei {st.ei:g} FWHM ratio h/k/E median {np.round(med, 3)} "
        f"min {np.round(ratio.min(0), 3)} max {np.round(ratio.max(0), 3)}; "
        f"|d corr| max {np.round(np.abs(dcorr).max(0), 3)}"
    )
    assert np.all(np.abs(ratio - 1) < 0.15)  # target 25 %
    e_med = (0.85, 0.92) if st.ei == 100 else (0.95, 1.0)
    assert np.all(np.abs(med[:2] - 1) < 0.03) and e_med[0] < med[2] < e_med[1]
    assert np.abs(dcorr).max() < 0.25 and np.median(np.abs(dcorr)) < 0.03


def test_tobyfit_table_at_100mev_matches_250hz(reference) -> None:
    """The 100 meV table's energy widths fit a 250 Hz chopper (300 Hz in PCSMO_SETTINGS)."""
    table = _table(reference, 100)
    r300, _ = _compare(MAPS_RESOLUTION, Setting(100.0, 300.0), table)
    r250, _ = _compare(MAPS_RESOLUTION, Setting(100.0, 250.0), table)
    assert np.median(r300[:, 2]) < 0.9 < 0.95 < np.median(r250[:, 2]) < 1.0


def test_tobyfit_sign_conventions_are_physical(reference) -> None:
    """The h-E correlations (from the chopper and moderator-face timing of horizontal
    paths) fit only with Tobyfit's relative sign of slit rotation and face tilt."""
    st = PCSMO_SETTINGS[1]
    table = _table(reference, st.ei)
    _, good = _compare(MAPS_RESOLUTION, st, table)
    _, bad = _compare(replace(MAPS_RESOLUTION, moderator_tilt=-32.0), st, table)
    assert np.median(np.abs(good[:, 1])) < 0.03 < 0.1 < np.median(np.abs(bad[:, 1]))
