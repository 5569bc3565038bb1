"""Detector coverage of a direct-geometry spectrometer, a MAPS preset, and bin masks.

A detector bank is modelled as windows of parallel position-sensitive tubes (as MAPS is
built). A window is described in its own frame: the laboratory frame (z along the beam,
x horizontal, y up) turned by ``yaw`` degrees about y. Its tubes are either vertical
(along y, stacked in the horizontal angle atan2(x, z)) or horizontal (along x, stacked in
the vertical angle atan2(y, z)). A direction is on the window if its stacking angle lies in
one of the window's ``stack`` intervals (degrees) and its elevation out of the stacking
plane (atan of the position along the tube over the tube's distance) lies in ``along``
(degrees). Everything is tested on tangents, without trigonometric functions.

The MAPS preset follows the tube layout of Mantid's MAPS instrument definition
(``instrument/MAPS_Definition.xml`` in mantidproject/mantid, data of T. G. Perring):
25.4 mm tubes 6.0 m from the sample, 0.2626 degrees apart, 256 pixels each:

- A1/A2: 1.076 m vertical tubes left (+x) and right (-x) of the beam, horizontal angles
  3.00-11.14 and 11.67-19.81 degrees (tube centres; one tube missing in between);
- B1/B2: 1.076 m horizontal tubes above and below, vertical angles 6.15-12.72, 13.24-19.81;
- D1-D4: the corners, 1.437 m horizontal tubes in windows turned by +-12.655 degrees about
  the vertical and offset 41.2 mm outwards, vertical angles 6.15-12.19 and 12.72-18.76;
- E1/E2: 0.446 m horizontal tubes just above and below the beam, vertical angles
  3.00-4.84, which with A1/A2 leave the direct-beam hole of about +-3 degrees;
- C1-C4: the high-angle bank, 1.076 m vertical tubes on the -x side, horizontal angles
  21.12-29.79, 31.10-39.76, 41.08-49.74 and 51.06-59.72 degrees.

Refined against the mask of the PCSMO experiment (``nanmask.mat``): tubes count as their
centre lines (reduction bins each detector at its centre, and bins here are wider than
the tube spacing), 57.5 mm at each tube end carry no data, and only the 7 E tubes nearest
the beam do. Gaps then follow from the layout: A tube ends (+-4.6 degrees vertical) to B/D
(6.15), B tube ends (+-4.6 horizontal) to D (6.8), E ends (+-1.6 degrees) to A (3.0), the
missing tubes at 11.4 (A) and 13.0 degrees (B, D), and about 1.3 degrees between C windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from exp2sim.instrument.kinematics import final_wavevector
from exp2sim.spectra.layout import Bins
from exp2sim.spinwave.lattice import Lattice

__all__ = [
    "DetectorCoverage",
    "MAPS_COVERAGE",
    "PCSMO_PSI",
    "PCSMO_TILT",
    "TubeWindow",
    "bin_mask",
    "direction_from_angles",
    "maps_coverage",
]


def direction_from_angles(two_theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3) along k_f for scattering angle and azimuth (degrees)."""
    two_theta, phi = np.broadcast_arrays(
        np.radians(np.asarray(two_theta, dtype=float)), np.radians(np.asarray(phi, dtype=float))
    )
    sin = np.sin(two_theta)
    return np.stack([sin * np.cos(phi), sin * np.sin(phi), np.cos(two_theta)], axis=-1)


@dataclass(frozen=True)
class TubeWindow:
    """A window of parallel tubes.

    name: label; tubes: "vertical" (along y, stacked in horizontal angle) or "horizontal"
    (along x, stacked in vertical angle); stack: sorted disjoint intervals (lo, hi) of the
    stacking angle covered (degrees, signed: towards +x or +y positive); along: (lo, hi),
    the elevation out of the stacking plane covered along the tubes (degrees); yaw:
    rotation of the window's frame about +y (degrees, from +z towards +x).
    """

    name: str
    tubes: Literal["vertical", "horizontal"]
    stack: tuple[tuple[float, float], ...]
    along: tuple[float, float]
    yaw: float = 0.0

    def __post_init__(self) -> None:
        if self.tubes not in ("vertical", "horizontal"):
            raise ValueError(f"tubes must be 'vertical' or 'horizontal', got {self.tubes!r}")
        edges = np.asarray(self.stack, dtype=float).ravel()
        if edges.size == 0 or edges.size % 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"{self.name}: stack must be sorted disjoint (lo, hi) intervals")
        if np.any(np.abs(edges) >= 90) or not -90 < self.along[0] < self.along[1] < 90:
            raise ValueError(f"{self.name}: angles must lie in (-90, 90), along lo < hi")

    def padded(self, pad: float) -> TubeWindow:
        """This window with every stacking interval and the along range widened by pad
        degrees at each end (intervals that come to overlap are merged)."""
        merged: list[list[float]] = []
        for lo, hi in self.stack:
            if merged and lo - pad <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi + pad)
            else:
                merged.append([lo - pad, hi + pad])
        along = (self.along[0] - pad, self.along[1] + pad)
        return TubeWindow(self.name, self.tubes, tuple(map(tuple, merged)), along, self.yaw)

    def covers_direction(self, d: np.ndarray) -> np.ndarray:
        """Bool (...): whether directions d (..., 3), lab frame, any length, hit this
        window; NaN directions do not."""
        t_stack, t_along, forward = _tangents(np.asarray(d, dtype=float), self.yaw, self.tubes)
        return self._test(t_stack, t_along, forward)

    def _test(self, t_stack: np.ndarray, t_along: np.ndarray, forward: np.ndarray) -> np.ndarray:
        edges = np.tan(np.radians(np.asarray(self.stack, dtype=float).ravel()))
        lo, hi = np.tan(np.radians(self.along))
        inside = np.searchsorted(edges, t_stack, side="right") % 2 == 1
        return inside & forward & (t_along >= lo) & (t_along <= hi)


def _tangents(d: np.ndarray, yaw: float, tubes: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tangents of the stacking angle and of the along-tube elevation of directions d
    (..., 3) in a window frame turned by yaw about y, and whether d points forwards there."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    if yaw:
        c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
        x, z = c * x - s * z, s * x + c * z
    num, other = (x, y) if tubes == "vertical" else (y, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        forward = z > 0  # False for NaN
        t_stack = np.where(forward, num / z, 0.0)
        t_along = np.where(forward, other / np.hypot(num, z), 0.0)
    return t_stack, t_along, forward


@dataclass(frozen=True)
class DetectorCoverage:
    """Detector coverage as a set of tube windows.

    name: label; windows: the TubeWindows; pad: widening (degrees) of every window's
    stacking intervals and along range at each end (negative narrows; 0 = as given).
    """

    name: str
    windows: tuple[TubeWindow, ...]
    pad: float = 0.0
    _effective: tuple[TubeWindow, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError("a detector coverage needs at least one window")
        if not np.isfinite(self.pad):
            raise ValueError(f"pad must be finite, got {self.pad}")
        effective = tuple(w.padded(self.pad) if self.pad else w for w in self.windows)
        object.__setattr__(self, "_effective", effective)

    def covers_direction(self, d: np.ndarray) -> np.ndarray:
        """Bool (...): whether directions d (..., 3), lab frame, any length, hit a detector.
        NaN directions are not covered."""
        d = np.asarray(d, dtype=float)
        if d.ndim == 0 or d.shape[-1] != 3:
            raise ValueError(f"directions must have shape (..., 3), got {d.shape}")
        out = np.zeros(d.shape[:-1], dtype=bool)
        cache: dict[tuple[float, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for w in self._effective:
            key = (w.yaw, w.tubes)
            if key not in cache:
                cache[key] = _tangents(d, w.yaw, w.tubes)
            out |= w._test(*cache[key])
        return out

    def covers(self, two_theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Bool array of the broadcast shape: whether the direction at scattering angle
        two_theta and azimuth phi (degrees; phi from +x towards +y) hits a detector."""
        try:
            d = direction_from_angles(two_theta, phi)
        except ValueError as err:
            raise ValueError(
                f"two_theta {np.shape(two_theta)} and phi {np.shape(phi)} do not broadcast"
            ) from err
        return self.covers_direction(d)


def maps_coverage(
    end_trim: float = 0.0575, tube_radius: float = 0.0, e_tubes: int = 7, pad: float = 0.0
) -> DetectorCoverage:
    """MAPS coverage from the tube layout of Mantid's MAPS_Definition.xml.

    end_trim: length (m) lost at each end of every tube (end pixels masked in reduction);
    tube_radius: half-width (m) credited to each tube across its axis (0: tube centre lines,
    as binning each detector at its centre does, which is exact when bins are wider than
    the 0.26 degree tube spacing); e_tubes: number of E-window tubes used, counted from the
    beam (the definition has 8); pad: DetectorCoverage.pad (degrees).
    """
    if not 1 <= e_tubes <= 8:
        raise ValueError(f"e_tubes must be 1-8, got {e_tubes}")
    dist = 6.0
    r = float(np.degrees(np.arctan(tube_radius / dist)))
    dt = 0.2626  # tube spacing (degrees)

    def span(first: float, n_tubes: int) -> tuple[float, float]:
        return (first - r, first + (n_tubes - 1) * dt + r)

    def neg(iv):
        return tuple(sorted((-hi, -lo) for lo, hi in iv))

    def elev(x: float) -> float:
        return float(np.degrees(np.arctan(x / dist)))

    half = 0.5359 - end_trim  # outermost pixel centres of 1.076 m tubes: +-0.5359 m
    along = (-elev(half), elev(half))
    a = (span(3.0, 32), span(11.6658, 32))
    b = (span(6.1512, 26), span(13.2414, 26))
    c = tuple(span(first, 34) for first in (21.1194, 31.0982, 41.0770, 51.0558))
    d = (span(6.1512, 24), span(12.7162, 24))
    e = (span(3.0, e_tubes),)
    d_half, d_off = 0.7157 - end_trim, 0.0412  # D tubes: 1.437 m, offset outwards (m)
    d_along = (elev(d_off - d_half), elev(d_off + d_half))
    d_along_neg = (-d_along[1], -d_along[0])
    e_half = 0.2221 - end_trim  # E tubes: 0.446 m
    e_along = (-elev(e_half), elev(e_half))
    windows = (
        TubeWindow("A1", "vertical", a, along),
        TubeWindow("A2", "vertical", neg(a), along),
        TubeWindow("B1", "horizontal", b, along),
        TubeWindow("B2", "horizontal", neg(b), along),
        TubeWindow("C", "vertical", neg(c), along),
        TubeWindow("D1", "horizontal", d, d_along, yaw=12.655),
        TubeWindow("D2", "horizontal", d, d_along_neg, yaw=-12.655),
        TubeWindow("D3", "horizontal", neg(d), d_along_neg, yaw=-12.655),
        TubeWindow("D4", "horizontal", neg(d), d_along, yaw=12.655),
        TubeWindow("E1", "horizontal", e, e_along),
        TubeWindow("E2", "horizontal", neg(e), e_along),
    )
    return DetectorCoverage("MAPS", windows, pad=pad)


MAPS_COVERAGE = maps_coverage()

# Orientation of the PCSMO crystal in the experiment, fitted to its mask (nanmask.mat) with
# MAPS_COVERAGE and the MosaicLayout bins: a* 0.2 degrees from +x, the c axis tilted by
# -1.35 degrees about x and 0.34 degrees about y. The tilt about x changes sign if the
# tiles' k axis runs the other way (the mask cannot tell), and a* and b* cannot be told
# apart (a and b differ by 1 %).
PCSMO_PSI = 0.2
PCSMO_TILT = (-1.35, 0.34)


def bin_mask(
    bins: Bins,
    lattice: Lattice,
    coverage: DetectorCoverage = MAPS_COVERAGE,
    psi: float = 0.0,
    tilt: tuple[float, float] = (0.0, 0.0),
    n_sub: tuple[int, int, int] = (3, 3, 2),
    chunk: int = 8192,
) -> np.ndarray:
    """Mask of bins without data (True = no data), shape ``bins.shape``.

    A bin has data if at least one of its n_h x n_k x n_E sub-samples, an even grid over
    [h - dh, h + dh] x [k - dk, k + dk] x [e_lo, e_hi] that includes the bin's edges and
    corners, is kinematically reachable at the bin's Ei and its k_f hits a detector of
    ``coverage``. Coverage regions and gaps here are wider than a bin, so the corners
    (n_sub = (2, 2, 2)) already decide almost every bin; the default (3, 3, 2) adds the
    edge midpoints and the centre. psi, tilt: crystal orientation (degrees, see
    :func:`exp2sim.instrument.kinematics.crystal_axes`); for the PCSMO data use
    ``PCSMO_PSI`` and ``PCSMO_TILT``. Work is done in chunks of ``chunk`` bins.
    """
    n_sub = tuple(int(n) for n in n_sub)
    if len(n_sub) != 3 or min(n_sub) < 1:
        raise ValueError(f"n_sub must be three positive integers, got {n_sub}")
    arrays = [bins.h, bins.k, bins.dh, bins.dk, bins.e_lo, bins.e_hi, bins.ei]
    shape = bins.shape
    if any(np.shape(a) != shape for a in arrays):
        raise ValueError(f"bin arrays differ in shape: {[np.shape(a) for a in arrays]}")
    h, k, dh, dk, e_lo, e_hi, ei = (np.asarray(a, dtype=float).ravel() for a in arrays)

    def offsets(n: int) -> np.ndarray:
        return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)

    uh, uk = offsets(n_sub[0]), offsets(n_sub[1])
    ue = (offsets(n_sub[2]) + 1) / 2  # in [0, 1]
    sub = np.stack(np.meshgrid(uh, uk, ue, indexing="ij"), axis=-1).reshape(-1, 3)

    has_data = np.zeros(h.size, dtype=bool)
    for start in range(0, h.size, chunk):
        s = slice(start, start + chunk)
        hs = h[s, None] + dh[s, None] * sub[None, :, 0]
        ks = k[s, None] + dk[s, None] * sub[None, :, 1]
        es = e_lo[s, None] + (e_hi[s, None] - e_lo[s, None]) * sub[None, :, 2]
        kf, valid = final_wavevector(hs, ks, es, ei[s, None], lattice, psi, tilt)
        has_data[s] = np.any(valid & coverage.covers_direction(kf), axis=1)
    return ~has_data.reshape(shape)
