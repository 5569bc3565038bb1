"""Kinematics of a direct-geometry spectrometer with a single crystal, c along the beam.

Laboratory frame (as in :mod:`exp2sim.instrument.spectrometer`): z along the incident wave
vector k_i, x horizontal, y vertical (up), right-handed. The crystal is mounted with c* along
z; a* lies in the horizontal plane along +x rotated by ``psi`` (degrees, about +z, from +x
towards +y), and b* in the xy plane.

Scattering vector Q = k_i - k_f (inverse Angstrom). For a constant-energy (h, k) map the
in-plane components (Q_x, Q_y) are fixed by (h, k), and |k_f|^2 = Q_perp^2 + (k_i - Q_z)^2
fixes Q_z, hence L. Of the two roots the forward one (k_f,z > 0, 2 theta < 90 degrees) is
taken: it is the only one a spectrometer with detectors below 90 degrees records.

Energies are in meV, wave numbers in inverse Angstrom, angles in degrees; E = 2.0721 k^2.
"""

from __future__ import annotations

import numpy as np

from exp2sim.instrument.spectrometer import E_FROM_K2, wavenumber
from exp2sim.spinwave.lattice import Lattice

__all__ = [
    "crystal_axes",
    "detector_angles",
    "final_wavevector",
    "kinematic_l",
    "neutron_energy",
    "wavenumber",
]


def neutron_energy(k: np.ndarray) -> np.ndarray:
    """Neutron energy (meV) for wave number k (inverse Angstrom), any shape."""
    k = np.asarray(k, dtype=float)
    return E_FROM_K2 * k * k


def crystal_axes(
    lattice: Lattice, psi: float = 0.0, tilt: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Reciprocal vectors a*, b*, c* in the laboratory frame, rows of a (3, 3) array (1/A).

    Without tilt, c* lies along +z, a* along +x rotated by ``psi`` degrees about +z (towards
    +y), and b* in the xy plane. ``tilt`` = (about x, about y), degrees: small misalignments
    of the c axis applied after psi, first about the lab x axis (positive turns +y towards
    +z), then about the lab y axis (positive turns +z towards +x). Requires alpha = beta = 90
    degrees (c* perpendicular to a* and b*); gamma is free.
    """
    if not (np.isclose(lattice.alpha, 90.0) and np.isclose(lattice.beta, 90.0)):
        raise ValueError(
            "c along the beam needs c* perpendicular to a* and b* (alpha = beta = 90 degrees), "
            f"got alpha = {lattice.alpha}, beta = {lattice.beta}"
        )
    if not np.isfinite(psi):
        raise ValueError(f"psi must be finite, got {psi}")
    recip = lattice.reciprocal  # rows a*, b*, c*; a along x, so c* along z here
    angle = np.radians(float(psi)) - np.arctan2(recip[0, 1], recip[0, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    axes = recip @ rot.T
    axes[2] = [0.0, 0.0, np.linalg.norm(recip[2])]
    tx, ty = np.radians(np.asarray(tilt, dtype=float))
    if not (np.isfinite(tx) and np.isfinite(ty)):
        raise ValueError(f"tilt must be finite, got {tilt}")
    if tx or ty:
        rx = np.array(
            [[1.0, 0.0, 0.0], [0.0, np.cos(tx), -np.sin(tx)], [0.0, np.sin(tx), np.cos(tx)]]
        )
        ry = np.array(
            [[np.cos(ty), 0.0, np.sin(ty)], [0.0, 1.0, 0.0], [-np.sin(ty), 0.0, np.cos(ty)]]
        )
        axes = axes @ (ry @ rx).T
    return axes


def _broadcast(*arrays: np.ndarray) -> list[np.ndarray]:
    try:
        return np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in arrays))
    except ValueError as err:
        shapes = [np.shape(a) for a in arrays]
        raise ValueError(f"input shapes do not broadcast: {shapes}") from err


def _solve(
    h: np.ndarray,
    k: np.ndarray,
    energy: np.ndarray,
    ei: np.ndarray,
    axes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(l, kf, valid) for broadcast float arrays; see final_wavevector."""
    if np.any(~(ei > 0)):
        raise ValueError("incident energies must be positive")
    ki = np.sqrt(ei / E_FROM_K2)
    # Q = u + l w with u = h a* + k b*, w = c*; k_f = k_i z - Q = p - l w, |k_f| fixed.
    p = [-(h * axes[0, i] + k * axes[1, i]) for i in range(3)]
    p[2] = p[2] + ki
    w = axes[2]
    kf2 = (ei - energy) / E_FROM_K2
    pw = p[0] * w[0] + p[1] * w[1] + p[2] * w[2]
    ww = float(w @ w)
    excess = p[0] * p[0] + p[1] * p[1] + p[2] * p[2] - kf2  # |p|^2 - k_f^2
    disc = pw * pw - ww * excess
    valid = (energy < ei) & (disc >= 0.0)
    # forward branch: the smaller root l = (pw - sqrt(disc)) / ww, which gives the larger
    # k_f,z (c* points along +z); written as excess / (pw + sqrt(disc)) where pw > 0 to
    # avoid cancellation when Q_z is small (untilted: (k_i - k_f,z) / |c*|).
    root = np.sqrt(np.where(valid, disc, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        l_rlu = np.where(pw > 0, excess / (pw + root), (pw - root) / ww)
    l_rlu = np.where(valid, l_rlu, np.nan)
    kf = np.stack([p[i] - l_rlu * w[i] for i in range(3)], axis=-1)
    valid &= kf[..., 2] >= 0.0
    l_rlu = np.where(valid, l_rlu, np.nan)
    kf[~valid] = np.nan
    return l_rlu, kf, valid


def final_wavevector(
    h: np.ndarray,
    k: np.ndarray,
    energy: np.ndarray,
    ei: np.ndarray,
    lattice: Lattice,
    psi: float = 0.0,
    tilt: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Final wave vector k_f (forward branch) for in-plane (h, k) at energy transfer E.

    h, k: r.l.u.; energy: energy transfer (meV); ei: incident energy (meV, > 0). All
    broadcast to a common shape S. psi, tilt: crystal orientation (see
    :func:`crystal_axes`). Returns ``(kf, valid)``: kf of shape S + (3,) in 1/A (lab frame,
    NaN where invalid) and valid, bool of shape S, False where the point cannot be reached
    (E >= Ei, or Q_perp > |k_f|, or k_f would point backwards).
    """
    h, k, energy, ei = _broadcast(h, k, energy, ei)
    _, kf, valid = _solve(h, k, energy, ei, crystal_axes(lattice, psi, tilt))
    return kf, valid


def kinematic_l(
    h: np.ndarray,
    k: np.ndarray,
    energy: np.ndarray,
    ei: np.ndarray,
    lattice: Lattice,
    psi: float = 0.0,
    tilt: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """L (r.l.u.) fixed by kinematics for (h, k, E) with c along the incident beam.

    Without tilt: Q_z = k_i - k_f,z with k_f,z = sqrt(k_f^2 - Q_perp^2) (forward branch,
    2 theta < 90 degrees), L = Q_z / |c*|; with tilt the same condition |k_i - Q| = k_f is
    solved for L exactly. Inputs as :func:`final_wavevector`. Returns ``(l, valid)`` of the
    broadcast shape; l is NaN where valid is False (E >= Ei or Q_perp > |k_f|).
    """
    h, k, energy, ei = _broadcast(h, k, energy, ei)
    l_rlu, _, valid = _solve(h, k, energy, ei, crystal_axes(lattice, psi, tilt))
    return l_rlu, valid


def detector_angles(
    h: np.ndarray,
    k: np.ndarray,
    energy: np.ndarray,
    ei: np.ndarray,
    lattice: Lattice,
    psi: float = 0.0,
    tilt: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Scattering angle 2 theta and azimuth phi (degrees) of k_f for (h, k, E).

    2 theta is the angle between k_f and the beam (0-90 on the forward branch); phi is the
    azimuth of k_f about the beam, from +x towards +y, in (-180, 180]. Inputs as
    :func:`final_wavevector`; both outputs have the broadcast shape, NaN where invalid.
    """
    kf, _ = final_wavevector(h, k, energy, ei, lattice, psi, tilt)
    perp = np.hypot(kf[..., 0], kf[..., 1])
    two_theta = np.degrees(np.arctan2(perp, kf[..., 2]))
    phi = np.degrees(np.arctan2(kf[..., 1], kf[..., 0]))
    return two_theta, phi
