"""Kinematics of a crystal with c along the beam, MAPS detector coverage, and bin masks.

Hand-derived cases for the kinematics; the real experiment's mask (nanmask.mat, read from
../shared/data/reference, never copied) for the coverage model and the layout orientation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.io

from exp2sim.instrument.detectors import (
    MAPS_COVERAGE,
    PCSMO_PSI,
    PCSMO_TILT,
    DetectorCoverage,
    TubeWindow,
    bin_mask,
    direction_from_angles,
)
from exp2sim.instrument.kinematics import (
    crystal_axes,
    detector_angles,
    final_wavevector,
    kinematic_l,
    neutron_energy,
    wavenumber,
)
from exp2sim.instrument.spectrometer import PCSMO_SETTINGS
from exp2sim.spectra.layout import Bins, MosaicLayout
from exp2sim.spinwave.lattice import Lattice

PCSMO = Lattice(5.408, 5.4599, 19.266)
TWO_PI = 2.0 * np.pi


def test_energy_wavenumber_conversion():
    # a 1 Angstrom neutron (k = 2 pi) has 81.8 meV; E = 2.0721 k^2
    assert neutron_energy(TWO_PI) == pytest.approx(81.80, abs=0.01)
    assert wavenumber(81.8042) == pytest.approx(TWO_PI, rel=1e-4)
    e = np.array([0.5, 25.0, 140.0, 1000.0])
    np.testing.assert_allclose(neutron_energy(wavenumber(e)), e, rtol=1e-12)


def test_l_on_the_beam_axis():
    # h = k = 0: Q is along the beam, Q_z = k_i - k_f, L = c (k_i - k_f) / 2 pi
    ei = 70.0
    e = np.array([-10.0, 0.0, 7.0, 35.0, 69.0])
    l_rlu, valid = kinematic_l(0.0, 0.0, e, ei, PCSMO)
    expected = PCSMO.c * (wavenumber(ei) - wavenumber(ei - e)) / TWO_PI
    assert valid.all()
    np.testing.assert_allclose(l_rlu, expected, atol=1e-12)
    assert l_rlu[1] == pytest.approx(0.0, abs=1e-12)  # elastic, forward: Q = 0
    assert l_rlu[2] == pytest.approx(0.9146, abs=1e-3)  # 7 meV at Ei = 70: by hand


def test_l_off_axis_by_hand():
    # (0.5, 0.25): Q_perp^2 = (pi/a)^2 + (pi/2b)^2; k_f,z = sqrt(k_f^2 - Q_perp^2)
    ei, e = 50.0, 12.0
    ki, kf = wavenumber(ei), wavenumber(ei - e)
    qperp2 = (0.5 * TWO_PI / PCSMO.a) ** 2 + (0.25 * TWO_PI / PCSMO.b) ** 2
    expected = PCSMO.c * (ki - np.sqrt(kf**2 - qperp2)) / TWO_PI
    l_rlu, valid = kinematic_l(0.5, 0.25, e, ei, PCSMO)
    assert valid
    assert l_rlu == pytest.approx(expected, rel=1e-12)
    # without tilt, L depends on |Q_perp| only: rotating the crystal leaves it alone
    l_rot, _ = kinematic_l(0.5, 0.25, e, ei, PCSMO, psi=37.0)
    assert l_rot == pytest.approx(expected, rel=1e-12)


def test_psi_rotates_the_azimuth():
    h, k, e, ei = 0.6, -0.2, 20.0, 100.0
    tt0, phi0 = detector_angles(h, k, e, ei, PCSMO)
    tt1, phi1 = detector_angles(h, k, e, ei, PCSMO, psi=30.0)
    assert tt1 == pytest.approx(tt0, abs=1e-12)
    assert (phi1 - phi0 + 180.0) % 360.0 - 180.0 == pytest.approx(30.0, abs=1e-9)
    axes = crystal_axes(PCSMO, psi=30.0)
    assert np.degrees(np.arctan2(axes[0, 1], axes[0, 0])) == pytest.approx(30.0)
    np.testing.assert_allclose(axes[2], [0.0, 0.0, TWO_PI / PCSMO.c], atol=1e-12)


@pytest.mark.parametrize(
    ("lattice", "psi", "tilt"),
    [
        (PCSMO, 0.0, (0.0, 0.0)),
        (PCSMO, 23.0, (0.0, 0.0)),
        (PCSMO, PCSMO_PSI, PCSMO_TILT),
        (Lattice(4.0, 5.0, 12.0, gamma=110.0), -40.0, (2.0, -3.0)),
    ],
)
def test_q_from_detector_angles_equals_input(lattice, psi, tilt):
    rng = np.random.default_rng(1)
    h, k = rng.uniform(-1.5, 1.5, (2, 500))
    ei = 100.0
    e = rng.uniform(-20.0, 90.0, 500)
    l_rlu, valid = kinematic_l(h, k, e, ei, lattice, psi=psi, tilt=tilt)
    tt, phi = detector_angles(h, k, e, ei, lattice, psi=psi, tilt=tilt)
    assert valid.sum() > 300
    assert np.all(tt[valid] < 90.0)
    kf = wavenumber(ei - e)[:, None] * direction_from_angles(tt, phi)
    q_from_angles = np.array([0.0, 0.0, wavenumber(ei)]) - kf
    hkl = np.stack([h, k, l_rlu], axis=-1)
    q_input = hkl @ crystal_axes(lattice, psi, tilt)
    np.testing.assert_allclose(q_from_angles[valid], q_input[valid], atol=1e-10)


def test_invalid_region():
    ei = 25.0
    l_rlu, valid = kinematic_l(0.0, 0.0, [25.0, 30.0, 24.999], ei, PCSMO)
    assert valid.tolist() == [False, False, True]
    assert np.isnan(l_rlu[:2]).all() and np.isfinite(l_rlu[2])
    # Q_perp just below and just above k_f (h only): reachable, then not
    e = 10.0
    h_max = wavenumber(ei - e) / (TWO_PI / PCSMO.a)
    l_rlu, valid = kinematic_l([0.999 * h_max, 1.001 * h_max], 0.0, e, ei, PCSMO)
    assert valid.tolist() == [True, False]
    tt, phi = detector_angles([0.999 * h_max, 1.001 * h_max], 0.0, e, ei, PCSMO)
    assert tt[0] == pytest.approx(90.0, abs=3.0) and np.isnan(tt[1]) and np.isnan(phi[1])
    kf, valid = final_wavevector(2.0, 2.0, 24.0, ei, PCSMO)
    assert not valid and np.isnan(kf).all()


def test_errors():
    with pytest.raises(ValueError):
        kinematic_l(np.zeros(3), np.zeros(4), 1.0, 10.0, PCSMO)
    with pytest.raises(ValueError):
        detector_angles(np.zeros((2, 3)), np.zeros(2), 1.0, 10.0, PCSMO)
    with pytest.raises(ValueError):
        kinematic_l(0.0, 0.0, 1.0, 0.0, PCSMO)  # Ei must be positive
    with pytest.raises(ValueError):
        kinematic_l(0.0, 0.0, 1.0, 10.0, Lattice(5.0, 5.0, 10.0, alpha=80.0))
    with pytest.raises(ValueError):
        MAPS_COVERAGE.covers(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError):
        MAPS_COVERAGE.covers_direction(np.zeros((5, 2)))
    with pytest.raises(ValueError):
        TubeWindow("bad", "vertical", ((5.0, 3.0),), (-1.0, 1.0))
    bins = MosaicLayout().bins()
    with pytest.raises(ValueError):
        bin_mask(dataclasses.replace(bins, k=bins.k[:, :-1]), PCSMO)
    with pytest.raises(ValueError):
        bin_mask(bins, PCSMO, n_sub=(2, 2))


@pytest.mark.parametrize(
    ("two_theta", "phi", "covered"),
    [
        (0.0, 0.0, False),  # direct beam
        (2.0, 45.0, False),  # inside the central hole
        (10.0, 0.0, True),  # A1, +x
        (10.0, 180.0, True),  # A2, -x
        (11.4, 0.0, False),  # missing tube between the halves of A1
        (10.0, 90.0, True),  # B1, up
        (5.5, 90.0, False),  # between E1 and B1
        (4.0, -90.0, True),  # E2, just below the beam
        (14.0, 45.0, True),  # D1 corner
        (45.0, 180.0, True),  # high-angle bank on the -x side
        (30.5, 180.0, False),  # gap between C1 and C2
        (45.0, 0.0, False),  # no high-angle bank on the +x side
        (45.0, 150.0, False),  # above the high-angle bank
        (65.0, 180.0, False),  # beyond 60 degrees
    ],
)
def test_maps_coverage_points(two_theta, phi, covered):
    assert bool(MAPS_COVERAGE.covers(two_theta, phi)) is covered


def test_coverage_pad_and_shapes():
    tt = np.array([[3.5, 11.4], [30.5, 0.0]])
    phi = np.array([0.0, 0.0])
    assert MAPS_COVERAGE.covers(tt, phi).shape == (2, 2)
    # the 0.5 degree gap in A closes when every interval widens by 0.3 degrees
    wide = DetectorCoverage("wide", MAPS_COVERAGE.windows, pad=0.3)
    assert wide.covers(11.4, 0.0) and not MAPS_COVERAGE.covers(11.4, 0.0)


def test_bin_mask_kinematic_limit():
    # bins entirely at E >= Ei or far beyond |Q_perp| <= k_f have no data
    shape = (4,)
    settings = PCSMO_SETTINGS[:1]
    bins = Bins(
        h=np.array([0.3, 0.3, 0.3, 6.0]),
        k=np.zeros(shape),
        dh=np.full(shape, 0.02),
        dk=np.full(shape, 0.02),
        e_lo=np.array([5.0, 25.0, 26.0, 5.0]),
        e_hi=np.array([6.0, 30.0, 28.0, 6.0]),
        ei=np.full(shape, 25.0),
        setting=np.zeros(shape, dtype=int),
        settings=settings,
    )
    mask = bin_mask(bins, PCSMO)
    assert mask.tolist() == [False, True, True, True]


@pytest.fixture(scope="module")
def nanmask(reference):
    raw = scipy.io.loadmat(reference / "maps_resolution" / "nanmask.mat")["nan_mask"]
    assert raw.shape == (240, 400)
    return np.flipud(raw).astype(bool)  # stored with the Ei = 140 block first


def agreement(mask, ref):
    same = mask == ref
    return same.mean(), [same[40 * i : 40 * (i + 1)].mean() for i in range(6)]


def test_mask_matches_the_experiment(nanmask):
    # measured: 98.25 % overall, 97.86-98.70 % per Ei block (25 ... 140 meV)
    bins = MosaicLayout().bins()
    mask = bin_mask(bins, PCSMO, MAPS_COVERAGE, psi=PCSMO_PSI, tilt=PCSMO_TILT)
    assert mask.shape == (240, 400)
    overall, per_block = agreement(mask, nanmask)
    assert overall > 0.975
    assert min(per_block) > 0.97
    assert abs(mask.mean() - nanmask.mean()) < 0.01  # about 20 % masked in both


def test_mask_orientation_evidence(nanmask):
    # tile rows run along lab x, h ascending towards the high-angle bank (Q_x > 0):
    # turning the crystal by 180 degrees (h and k reversed) or by 90 (rows vertical) is worse
    bins = MosaicLayout().bins()
    best, _ = agreement(bin_mask(bins, PCSMO, psi=PCSMO_PSI, tilt=PCSMO_TILT), nanmask)
    flipped_tilt = (-PCSMO_TILT[0], -PCSMO_TILT[1])
    turned, _ = agreement(bin_mask(bins, PCSMO, psi=PCSMO_PSI + 180.0, tilt=flipped_tilt), nanmask)
    untilted, _ = agreement(bin_mask(bins, PCSMO), nanmask)
    rows_vertical, _ = agreement(bin_mask(bins, PCSMO, psi=90.0), nanmask)
    assert best > turned + 0.005  # measured 98.25 % vs 97.26 %
    assert best > untilted + 0.02  # measured 98.25 % vs 94.46 %
    assert best > rows_vertical + 0.05  # measured 98.25 % vs 89.44 %
