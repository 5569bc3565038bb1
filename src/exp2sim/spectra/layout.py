"""Layouts of spectra as sets of (h, k, E) bins at given incident energies.

A layout maps every pixel of an array to one bin: centre (h, k) in r.l.u. of the
conventional cell, half-widths in h and k, an energy-transfer range [e_lo, e_hi] (meV) and
the incident energy of the setting it was measured with. L is not an axis: with c along the
incident beam it follows from kinematics for every (h, k, E).

The mosaic of the PCSMO data (DESIGN.md section 2): 240 x 400 pixels, 6 row blocks (one per
setting, top to bottom Ei = 25 ... 140 meV) x 10 column blocks (energy slices
[0.10 + 0.06 n, 0.16 + 0.06 n] Ei, left to right); inside each 40 x 40 tile the row index
runs over h and the column index over k, both from -1 to 1 in 40 bins of width 2/39.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exp2sim.instrument.spectrometer import PCSMO_SETTINGS, Setting


@dataclass(frozen=True)
class Bins:
    """Per-pixel bins, every array of the layout's shape.

    h, k: bin centres (r.l.u.); dh, dk: half-widths (r.l.u.); e_lo, e_hi: energy-transfer
    range (meV); ei: incident energy (meV); setting: index into `settings`.
    """

    h: np.ndarray
    k: np.ndarray
    dh: np.ndarray
    dk: np.ndarray
    e_lo: np.ndarray
    e_hi: np.ndarray
    ei: np.ndarray
    setting: np.ndarray
    settings: tuple[Setting, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.h.shape

    @property
    def e(self) -> np.ndarray:
        """Bin-centre energy transfer (meV)."""
        return (self.e_lo + self.e_hi) / 2


@dataclass(frozen=True)
class MosaicLayout:
    """The 2D mosaic: settings x energy slices of constant-energy (h, k) maps."""

    settings: tuple[Setting, ...] = PCSMO_SETTINGS
    n_slices: int = 10
    slice_start: float = 0.10  # fraction of Ei
    slice_width: float = 0.06  # fraction of Ei
    n_q: int = 40
    q_min: float = -1.0
    q_max: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.settings) * self.n_q, self.n_slices * self.n_q)

    @property
    def background_block(self) -> tuple[int, int]:
        """One constant-energy (h, k) tile: the bins of one background level
        (`spectra.background`)."""
        return (self.n_q, self.n_q)

    @property
    def q_centres(self) -> np.ndarray:
        """(n_q,) bin centres along h and k (r.l.u.)."""
        return np.linspace(self.q_min, self.q_max, self.n_q)

    def bins(self) -> Bins:
        """Every pixel's bin, arrays of shape (rows, columns)."""
        n_set, n_sl, n = len(self.settings), self.n_slices, self.n_q
        q = self.q_centres
        half = (self.q_max - self.q_min) / (n - 1) / 2
        row_setting = np.repeat(np.arange(n_set), n)  # (rows,)
        col_slice = np.repeat(np.arange(n_sl), n)  # (cols,)
        h = np.tile(q, n_set)[:, None] * np.ones(n_sl * n)
        k = np.ones(n_set * n)[:, None] * np.tile(q, n_sl)[None, :]
        ei_values = np.array([s.ei for s in self.settings])
        ei = ei_values[row_setting][:, None] * np.ones(n_sl * n)
        frac_lo = self.slice_start + self.slice_width * col_slice
        e_lo = ei * frac_lo[None, :]
        e_hi = ei * (frac_lo + self.slice_width)[None, :]
        setting = row_setting[:, None] * np.ones(n_sl * n, dtype=int)
        full = np.full(self.shape, half)
        return Bins(h, k, full, full.copy(), e_lo, e_hi, ei, setting, self.settings)


@dataclass(frozen=True)
class VolumeLayout:
    """An (h, k, E) volume measured at one setting: n_h x n_k x n_e bins.

    h and k bins are centred on `n_h` (`n_k`) equally spaced points from q_min to q_max;
    energy bins are equally spaced from e_min to e_max (fractions of Ei).
    """

    setting: Setting = PCSMO_SETTINGS[-1]
    n_h: int = 60
    n_k: int = 60
    n_e: int = 60
    q_min: float = -1.0
    q_max: float = 1.0
    e_min: float = 0.1
    e_max: float = 0.7

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_h, self.n_k, self.n_e)

    @property
    def background_block(self) -> tuple[int, int, int]:
        """One energy slice: the bins of one background level (`spectra.background`)."""
        return (self.n_h, self.n_k, 1)

    def bins(self) -> Bins:
        h = np.linspace(self.q_min, self.q_max, self.n_h)
        k = np.linspace(self.q_min, self.q_max, self.n_k)
        edges = self.setting.ei * np.linspace(self.e_min, self.e_max, self.n_e + 1)
        hh, kk, ee = np.meshgrid(h, k, np.arange(self.n_e), indexing="ij")
        dh = np.full(self.shape, (self.q_max - self.q_min) / max(self.n_h - 1, 1) / 2)
        dk = np.full(self.shape, (self.q_max - self.q_min) / max(self.n_k - 1, 1) / 2)
        ei = np.full(self.shape, self.setting.ei)
        zero = np.zeros(self.shape, dtype=int)
        return Bins(hh, kk, dh, dk, edges[ee], edges[ee + 1], ei, zero, (self.setting,))


@dataclass(frozen=True)
class CutLayout:
    """A 1D energy cut at one (h, k) with half-widths dh, dk, in n_e bins from e_min to e_max
    (fractions of Ei)."""

    setting: Setting = PCSMO_SETTINGS[-1]
    h: float = 0.5
    k: float = 0.0
    dh: float = 0.05
    dk: float = 0.05
    n_e: int = 100
    e_min: float = 0.05
    e_max: float = 0.8

    @property
    def shape(self) -> tuple[int]:
        return (self.n_e,)

    @property
    def background_block(self) -> tuple[int]:
        """The whole cut: one background level (`spectra.background`); at one (h, k) the
        spin waves and the background cannot be told apart energy by energy."""
        return (self.n_e,)

    def bins(self) -> Bins:
        edges = self.setting.ei * np.linspace(self.e_min, self.e_max, self.n_e + 1)
        full = np.ones(self.n_e)
        return Bins(
            self.h * full,
            self.k * full,
            self.dh * full,
            self.dk * full,
            edges[:-1],
            edges[1:],
            self.setting.ei * full,
            np.zeros(self.n_e, dtype=int),
            (self.setting,),
        )
