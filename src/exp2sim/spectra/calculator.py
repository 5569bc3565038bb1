"""Spectra of a spin-wave model on a layout of (h, k, E) bins: unconvolved and convolved.

Unconvolved: the model at each bin's (h, k) centre, every mode whose energy lies in the
bin's energy range counted with its S_perp at the kinematic L of that energy, divided by the
bin width (intensity per meV, averaged over the bin).

Convolved: the same bin average taken over the bin's extent and the instrument resolution
(Tobyfit's integral, evaluated by quadrature; see `ConvolvedSpectra`).

Both use the layered structure of the spin system: energies and eigenvectors depend on the
in-plane wave vector only, and L enters through a few analytic phases (LayerModes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from exp2sim.instrument.kinematics import kinematic_l
from exp2sim.spectra.layout import Bins
from exp2sim.spinwave.lattice import Lattice
from exp2sim.spinwave.lswt import LayerModes, SpinWaveTheory
from exp2sim.spinwave.models.base import SpinModel


@dataclass(frozen=True)
class Kinematics:
    """Where each wave vector sits in the laboratory: the conventional lattice, the
    crystal's rotation psi (degrees) about the beam (c along the incident beam) and small
    tilts of c away from the beam (degrees about x and y; see instrument.kinematics).

    fixed_l: None (physics): intensities at the L that kinematics fixes for each (h, k, E).
    A number: at that L instead (r.l.u.; which points are reachable still follows from
    kinematics), the convention of the original pipeline whose mosaics the paper used: at
    L = 0 ours correlate with its best-fit mosaics 0.875 and 0.871 against 0.701 and 0.683
    at the kinematic L (Goodenough, Dimer; Monte Carlo; tests/test_spectra.py). With one
    bilayer only the intensities depend on L (structure factor, form factor,
    polarisation), not the energies."""

    lattice: Lattice
    psi: float = 0.0
    tilt: tuple[float, float] = (0.0, 0.0)
    fixed_l: float | None = None

    def sperp(
        self,
        modes: LayerModes,
        amplitudes: np.ndarray,
        twin: int,
        h: np.ndarray,
        k: np.ndarray,
        energy: np.ndarray,
        ei: np.ndarray,
    ) -> np.ndarray:
        """S_perp (M,) of M modes seen at (h, k) and energy transfer `energy` (meV) with
        incident energy `ei`, from their group amplitudes (M, G, 3): L follows from
        kinematics (or is `fixed_l`); kinematically unreachable points give 0."""
        l_rlu, valid = kinematic_l(h, k, energy, ei, self.lattice, self.psi, self.tilt)
        l_rlu = np.where(valid, l_rlu if self.fixed_l is None else self.fixed_l, 0.0)
        hkl = np.stack(np.broadcast_arrays(h, k, l_rlu), axis=-1)
        q = hkl @ self.lattice.reciprocal  # Cartesian, crystal frame
        q_abs = np.linalg.norm(q, axis=-1)
        q_hat = q / np.where(q_abs > 0, q_abs, 1.0)[:, None]
        value = modes.sperp(amplitudes[:, None], twin, l_rlu, q_abs, q_hat)[:, 0]
        return np.where(valid, value, 0.0)


def conventional_lattice(model: SpinModel) -> Lattice:
    """The cell in whose r.l.u. a model's wave vectors are given."""
    lat = model.system.lattice
    na, nb, nc = model.system.supercell
    return Lattice(lat.a / na, lat.b / nb, lat.c / nc, lat.alpha, lat.beta, lat.gamma)


class UnconvolvedSpectra:
    """Unconvolved spectra of one model on one layout (many parameter sets).

    Example:
        calc = UnconvolvedSpectra(load_model("goodenough"), MosaicLayout().bins())
        image = calc(params)            # (240, 400), NaN where `mask` is True
    """

    def __init__(
        self,
        model: SpinModel,
        bins: Bins,
        mask: np.ndarray | None = None,
        psi: float = 0.0,
        device: str | None = None,
        tilt: tuple[float, float] = (0.0, 0.0),
        fixed_l: float | None = None,
    ) -> None:
        self.model = model
        self.bins = bins
        self.mask = np.zeros(bins.shape, dtype=bool) if mask is None else np.asarray(mask)
        if self.mask.shape != bins.shape:
            raise ValueError(f"mask shape {self.mask.shape} differs from layout {bins.shape}")
        self.kin = Kinematics(conventional_lattice(model), psi, tuple(tilt), fixed_l)
        self.swt = SpinWaveTheory(model.system, device=device)
        hk = np.stack([bins.h.ravel(), bins.k.ravel()], axis=1)
        self._hk, self._pixel_q = np.unique(np.round(hk, 9), axis=0, return_inverse=True)
        self._pixel_q = self._pixel_q.ravel()

    def stable(self, params: np.ndarray) -> np.ndarray:
        """(P,) True for parameter sets (P, n_params) this calculator can compute: h(k)
        positive definite at every distinct (h, k) of its bins."""
        q = np.column_stack([self._hk, np.zeros(len(self._hk))])
        return self.swt.stable_at(q, np.atleast_2d(params))

    def modes(self, params: np.ndarray) -> LayerModes:
        """Modes at the distinct (h, k) bin centres for one parameter set."""
        q = np.column_stack([self._hk, np.zeros(len(self._hk))])
        return self.swt.layer_modes(q, np.asarray(params, dtype=float)[None, :])

    def __call__(self, params: np.ndarray) -> np.ndarray:
        """The spectrum for one parameter set, layout shape, NaN where masked.

        Raises UnstableParametersError-like ValueError for unstable parameter sets.
        """
        lm = self.modes(params)
        if not lm.stable[0]:
            raise ValueError("unstable parameter set: h(k) is not positive definite")
        b = self.bins
        h, k = b.h.ravel(), b.k.ravel()
        e_lo, e_hi, ei = b.e_lo.ravel(), b.e_hi.ravel(), b.ei.ravel()
        out = np.zeros(h.size)
        for t, weight in enumerate(lm.twin_weights):
            energy = lm.energies[0, t][self._pixel_q]  # (pixels, N)
            inside = (energy >= e_lo[:, None]) & (energy < e_hi[:, None])
            pix, mode = np.nonzero(inside)
            amps = lm.amplitudes[0, t][self._pixel_q[pix], mode]  # (hits, G, 3)
            s = self.kin.sperp(lm, amps, t, h[pix], k[pix], energy[pix, mode], ei[pix])
            np.add.at(out, pix, weight * s)
        out /= e_hi - e_lo
        image = out.reshape(b.shape)
        image[self.mask] = np.nan
        return image


class ModeGrid:
    """Modes of one parameter set tabulated on a regular in-plane (h, k) grid.

    A point takes the modes of its nearest node: their amplitudes, and their energies
    extrapolated linearly with the node's slopes (the node is at most half a spacing away).
    The grid spacing divides the
    period of h(k) (the reciprocal cell of the LSWT supercell), so only one period is
    diagonalised; amplitudes at every node carry their exact structure-factor phases.
    Nodes are crystal wave vectors, the same for every twin; `to_crystal` maps laboratory
    (h, k) to a twin's crystal (h, k).
    """

    def __init__(
        self,
        swt: SpinWaveTheory,
        params: np.ndarray,
        h_range: tuple[float, float],
        k_range: tuple[float, float],
        nodes_per_period: int = 40,
    ) -> None:
        self.origin, self.step, self.n, q = self.nodes(swt, h_range, k_range, nodes_per_period)
        lm = swt.layer_modes(
            q, np.asarray(params, dtype=float)[None, :], crystal_frame=True, gradients=True
        )
        if not lm.stable[0]:
            raise ValueError("unstable parameter set: h(k) is not positive definite")
        self.modes = lm
        t, n_modes = lm.energies.shape[1], lm.energies.shape[-1]
        self.energies = lm.energies[0].reshape(t, *self.n, n_modes)
        # amplitudes scale as 1 / sqrt(energy) near Goldstone modes: tabulate the regular
        # sqrt(energy) * amplitude and divide by the interpolated energy on lookup
        root = np.sqrt(np.maximum(lm.energies[0], 0.0))[..., None, None]
        # the product is rounded to complex64 as it is written: no complex128 table between
        table = np.empty(lm.amplitudes.shape[1:], dtype=np.complex64)
        np.multiply(lm.amplitudes[0], root, out=table, casting="same_kind")
        self.amplitudes = table.reshape(t, *self.n, n_modes, *lm.amplitudes.shape[-2:])
        # exact slopes of every mode along crystal h and k at every node (Hellmann-Feynman)
        self.slopes = np.moveaxis(lm.gradients[0], -1, 1).reshape(t, 2, *self.n, n_modes)
        recip = swt.system.lattice.reciprocal * np.asarray(swt.system.supercell)[:, None]
        inv = np.linalg.inv(recip)
        # in-plane laboratory (h, k) -> crystal (h, k) of each twin: (T, 2, 2)
        self._to_crystal = np.stack([(recip @ t.rotation @ inv)[:2, :2] for t in swt.system.twins])

    @staticmethod
    def nodes(
        swt: SpinWaveTheory,
        h_range: tuple[float, float],
        k_range: tuple[float, float],
        nodes_per_period: int = 40,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Grid origin (2,), spacing (2,), node counts (2,) and the nodes as crystal
        wave vectors (Q, 3), conventional r.l.u. (l = 0)."""
        sc = swt.system.supercell
        step = np.array([1.0 / sc[0], 1.0 / sc[1]]) / nodes_per_period
        lo = np.floor(np.array([h_range[0], k_range[0]]) / step) * step
        hi = np.ceil(np.array([h_range[1], k_range[1]]) / step) * step
        n = np.round((hi - lo) / step).astype(int) + 1
        hh, kk = np.meshgrid(
            lo[0] + step[0] * np.arange(n[0]), lo[1] + step[1] * np.arange(n[1]), indexing="ij"
        )
        return lo, step, n, np.column_stack([hh.ravel(), kk.ravel(), np.zeros(hh.size)])

    def to_crystal(self, twin: int, h: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, ...]:
        """A twin's crystal (h, k) of laboratory (h, k) (arrays of any shape)."""
        m = self._to_crystal[twin]
        return h * m[0, 0] + k * m[1, 0], h * m[0, 1] + k * m[1, 1]

    def locate(self, h: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cell indices (i, j) and fractions (fh, fk) of points; raises if off the grid."""
        x = (np.asarray(h) - self.origin[0]) / self.step[0]
        y = (np.asarray(k) - self.origin[1]) / self.step[1]
        i, j = np.floor(x).astype(int), np.floor(y).astype(int)
        if i.min() < 0 or j.min() < 0 or i.max() >= self.n[0] - 1 or j.max() >= self.n[1] - 1:
            raise ValueError("wave vector outside the tabulated grid")
        return i, j, x - i, y - j

    def energies_and_gradient(
        self, twin: int, cell: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Energies (..., N) at located points, extrapolated linearly from the nearest node,
        and their derivatives along laboratory h and k (meV per r.l.u.).

        Each mode keeps the identity it has at the node, so that its energy, its slope and
        its amplitude (from the same node) belong together even where bands cross."""
        i, j, fh, fk = cell
        ni, nj = self.nearest(cell)
        e = self.energies[twin][ni, nj]
        d_hc, d_kc = self.slopes[twin, 0][ni, nj], self.slopes[twin, 1][ni, nj]
        dx = ((i + fh) - ni) * self.step[0]
        dy = ((j + fk) - nj) * self.step[1]
        energy = e + d_hc * dx[..., None] + d_kc * dy[..., None]
        m = self._to_crystal[twin]  # crystal (h, k) = lab h * m[0] + lab k * m[1]
        return energy, d_hc * m[0, 0] + d_kc * m[0, 1], d_hc * m[1, 0] + d_kc * m[1, 1]

    def nearest(self, cell: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the node nearest to located points."""
        i, j, fh, fk = cell
        return i + (fh >= 0.5), j + (fk >= 0.5)


class ConvolvedSpectra:
    """Resolution-convolved spectra of one model on one layout.

    A bin's value is the average, over the bin's (h, k, E) extent and the instrument
    resolution, of S_perp summed over the modes seen in the bin, per meV. Deviations of the
    true from the nominal (h, k, l, E) are linear in the instrument's random variables
    (Tobyfit). For each point and mode the energy at which the mode is seen,
    y = E_n(h, k) - dE, is linearised in the deviations and in the position inside the
    bin, so that the probability that y falls in the bin is a closed form (second
    differences of the twice-integrated normal distribution function, see
    `_window_probability`).

    method "gaussian": every variable enters through the resolution covariance.
    method "montecarlo": the moderator and Fermi-chopper times, whose asymmetric
    distributions shape the energy line, keep their true distributions, tabulated from a
    Monte Carlo sample of the instrument model (200,000 draws per setting); the other
    (uniform) variables enter through their covariance.
    method "bins": no instrument at all, only the bin's extent: what the unconvolved
    spectrum would be if it were averaged over each bin's (h, k) box instead of taken at
    the box's centre (`resolution` is not used). At the PCSMO mosaic's bin size (0.05
    r.l.u.) this alone makes much of the difference between unconvolved and convolved
    spectra (docs/measurements.md).
    All three integrate deterministically over n_mc sub-boxes of each bin (quadrature points:
    the nearest square number), which converges far faster than random points would.
    Mode energies come from a fine table (ModeGrid) with exact slopes; S_perp is taken at
    each sub-box centre and its table node, with l from kinematics at the energy where the
    mode is seen.
    """

    def __init__(
        self,
        model: SpinModel,
        bins: Bins,
        resolution: object,
        mask: np.ndarray | None = None,
        method: str = "montecarlo",
        n_mc: int = 16,
        psi: float = 0.0,
        chunk: int = 2048,
        tilt: tuple[float, float] = (0.0, 0.0),
        fixed_l: float | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if n_mc < 1:
            raise ValueError("n_mc must be at least 1")
        self.model, self.bins, self.resolution = model, bins, resolution
        self.method, self.n_mc, self.chunk = method, int(n_mc), int(chunk)
        self.mask = np.zeros(bins.shape, dtype=bool) if mask is None else np.asarray(mask)
        self.kin = Kinematics(conventional_lattice(model), psi, tuple(tilt), fixed_l)
        self.swt = SpinWaveTheory(model.system)
        self.pixels = np.nonzero(~self.mask.ravel())[0]
        flat = {
            name: getattr(bins, name).ravel()[self.pixels]
            for name in ("h", "k", "dh", "dk", "e_lo", "e_hi", "ei", "setting")
        }
        self.flat = flat
        # per setting: bins, covariance of the Gaussian part, time Jacobian, pulse table
        self._groups = []
        margins = np.zeros((len(self.pixels), 2))
        for s_index, setting in enumerate(bins.settings):
            sel = np.nonzero(flat["setting"] == s_index)[0]
            if len(sel) == 0:
                continue
            args = (
                setting,
                flat["h"][sel],
                flat["k"][sel],
                (flat["e_lo"][sel] + flat["e_hi"][sel]) / 2,
                self.kin.lattice,
                psi,
            )
            if method == "bins":
                cov = np.zeros((len(sel), 4, 4))
            else:
                cov = resolution.covariance(*args)
            margins[sel] = 5 * np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1))
            if method in ("gaussian", "bins"):
                self._groups.append((sel, cov, None, None))
            else:
                jac = resolution.jacobian(*args)  # (n, 4, V)
                names = list(resolution.variables())
                sampled = [i for i, nm in enumerate(names) if nm in SAMPLED_VARIABLES]
                rest = [i for i in range(len(names)) if i not in sampled]
                var = resolution.variable_covariance(setting)
                cov_rest = (
                    jac[:, :, rest] @ var[np.ix_(rest, rest)] @ jac[:, :, rest].transpose(0, 2, 1)
                )
                spread = np.sqrt(np.diag(var))[sampled]
                table = _pulse_table(resolution, setting, tuple(sampled))
                self._groups.append((sel, cov_rest, jac[:, :, sampled] * spread, table))
        # twins see the laboratory (h, k) swapped or rotated: tabulate a square around 0
        reach = max(
            float(np.max(np.abs(flat["h"]) + flat["dh"] + margins[:, 0])),
            float(np.max(np.abs(flat["k"]) + flat["dk"] + margins[:, 1])),
        )
        self.h_range = self.k_range = (-1.02 * reach, 1.02 * reach)

    def stable(self, params: np.ndarray) -> np.ndarray:
        """(P,) True for parameter sets (P, n_params) this calculator can compute: h(k)
        positive definite at every node of its mode grid."""
        q = ModeGrid.nodes(self.swt, self.h_range, self.k_range)[3]
        return self.swt.stable_at(q, np.atleast_2d(params), crystal_frame=True)

    def __call__(self, params: np.ndarray) -> np.ndarray:
        """The convolved spectrum for one parameter set (layout shape, NaN where masked)."""
        grid = ModeGrid(self.swt, params, self.h_range, self.k_range)
        side = max(1, int(round(np.sqrt(self.n_mc))))
        total = np.zeros(len(self.pixels))
        for sel, cov, pulse, table in self._groups:
            for a in range(0, len(sel), self.chunk):
                part = sel[a : a + self.chunk]
                h, k, half_h, half_k = self._points(part, side)
                extra = None if pulse is None else (pulse[a : a + self.chunk], table)
                total[part] = self._accumulate(
                    grid, part, h, k, half_h, half_k, cov[a : a + self.chunk], extra
                )
        out = np.full(self.mask.size, np.nan)
        f = self.flat
        out[self.pixels] = total / (f["e_hi"] - f["e_lo"])
        return out.reshape(self.bins.shape)

    def _pulse_probability(
        self,
        y: np.ndarray,
        grad_h: np.ndarray,
        grad_k: np.ndarray,
        width: np.ndarray,
        a_h: np.ndarray,
        a_k: np.ndarray,
        e_lo: np.ndarray,
        e_hi: np.ndarray,
        pulse: tuple,
    ) -> np.ndarray:
        """P(mode seen in the bin) with the moderator and chopper times at their true
        distributions.

        A mode is seen at the nominal energy E where E + dE = E_n(Q + dQ), i.e. at
        y + grad E . dQ - dE: the times move it by D = sum_t (grad E . dQ_t - dE_t) x_t, a
        weighted sum of the two standardised times (the sign matters: the moderator's late
        tail gives a tail towards lower seen energies); the rest of the resolution and the
        position inside the sub-box add a Gaussian of the same variance. The distribution
        function of the sum depends on two angles only (direction of the time weights, share
        of the Gaussian) and is tabulated from the instrument's Monte Carlo sample."""
        jt, table = pulse
        w = (
            grad_h[..., None] * jt[:, None, None, 0, :]
            + grad_k[..., None] * jt[:, None, None, 1, :]
        ) - jt[:, None, None, 3, :]  # (n, s, N, 2): seen-energy shift per standardised time
        scale = np.hypot(w[..., 0], w[..., 1])
        gauss = np.sqrt(width**2 + (a_h**2 + a_k**2) / 3)  # uniform boxes by their variance
        total = np.maximum(np.hypot(scale, gauss), 1e-9)
        centre = (e_lo + e_hi) / 2
        near_bin = np.abs(y - centre) < (e_hi - e_lo) / 2 + table.support * total
        prob = np.zeros_like(y)
        if near_bin.any():
            shape = y.shape
            sel = [np.broadcast_to(v, shape)[near_bin] for v in (y, e_lo, e_hi, total)]
            yy, lo, hi, tot = sel
            theta = np.arctan2(w[..., 1][near_bin], w[..., 0][near_bin])
            phi = np.arctan2(gauss[near_bin], scale[near_bin])
            prob[near_bin] = table.window(theta, phi, (lo - yy) / tot, (hi - yy) / tot)
        return np.clip(prob, 0.0, 1.0)

    def _points(self, pix: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
        """Nominal (h, k) (n, side^2) at the centres of side x side sub-boxes of each bin,
        and the sub-box half-widths (n, 1, 1)."""
        f = self.flat
        sub = np.arange(side * side)
        frac_h = (2 * (sub % side) + 1) / side - 1  # sub-box centres in units of dh
        frac_k = (2 * (sub // side) + 1) / side - 1
        h = f["h"][pix, None] + frac_h[None, :] * f["dh"][pix, None]
        k = f["k"][pix, None] + frac_k[None, :] * f["dk"][pix, None]
        return h, k, f["dh"][pix, None, None] / side, f["dk"][pix, None, None] / side

    def _accumulate(
        self,
        grid: ModeGrid,
        pix: np.ndarray,
        h_nom: np.ndarray,
        k_nom: np.ndarray,
        half_h: np.ndarray,
        half_k: np.ndarray,
        cov: np.ndarray,
        pulse: tuple | None = None,
    ) -> np.ndarray:
        """Average over points of sum_n S_perp x P(mode n seen in the bin), for bins pix.

        h_nom, k_nom: (n, s) points at sub-box centres; half_h, half_k: sub-box
        half-widths; cov: (n, 4, 4) covariance of the deviations treated as Gaussian.
        pulse (Monte Carlo route): (J_t (n, 4, 2) Jacobian of the two time variables in
        units of their standard deviations, their PulseTable).
        """
        f = self.flat
        n, s = h_nom.shape
        e_lo, e_hi = f["e_lo"][pix, None, None], f["e_hi"][pix, None, None]
        centre, half = (e_lo + e_hi) / 2, (e_hi - e_lo) / 2
        value = np.zeros(n)
        for t, weight in enumerate(grid.modes.twin_weights):
            cell = grid.locate(*grid.to_crystal(t, h_nom, k_nom))
            energy, grad_h, grad_k = grid.energies_and_gradient(t, cell)  # (n, s, N)
            a_h, a_k = np.abs(grad_h) * half_h, np.abs(grad_k) * half_k
            # variance of the seen energy from the Gaussian deviations: g^T C g with
            # g = (dE/dh, dE/dk, 0, -1)
            c = cov[:, None, None]
            var = (
                grad_h**2 * c[..., 0, 0]
                + grad_k**2 * c[..., 1, 1]
                + c[..., 3, 3]
                + 2 * grad_h * grad_k * c[..., 0, 1]
                - 2 * grad_h * c[..., 0, 3]
                - 2 * grad_k * c[..., 1, 3]
            )
            width = np.sqrt(np.maximum(var, 0.0))
            if pulse is None:
                near_bin = np.abs(energy - centre) < half + a_h + a_k + GAUSSIAN_REACH * width
                args = [
                    np.broadcast_to(v, energy.shape)[near_bin] for v in (energy, width, a_h, a_k)
                ]
                lo_hi = [np.broadcast_to(v, energy.shape)[near_bin] for v in (e_lo, e_hi)]
                prob = np.zeros_like(energy)
                prob[near_bin] = _window_probability(*args, *lo_hi)
            else:
                prob = self._pulse_probability(
                    energy, grad_h, grad_k, width, a_h, a_k, e_lo, e_hi, pulse
                )
            p, smp, mode = np.nonzero(prob > NEGLIGIBLE)
            e_seen = np.clip(energy[p, smp, mode], e_lo[p, 0, 0], e_hi[p, 0, 0])  # > 0
            near = grid.nearest(tuple(c[p, smp] for c in cell))
            amps = grid.amplitudes[t][near[0], near[1], mode]
            val = self.kin.sperp(
                grid.modes, amps, t, h_nom[p, smp], k_nom[p, smp], e_seen, f["ei"][pix][p]
            )
            # undo the sqrt(E) scaling of the amplitudes with the mode's energy at the point;
            # near a Goldstone mode that can fall far below the bin in which the mode is seen
            # (steep slope), so it is bounded by half the seen energy
            val = val / np.maximum(energy[p, smp, mode], 0.5 * e_seen)
            np.add.at(value, p, weight * val * prob[p, smp, mode])
        return value / s


def _normal_g(t: np.ndarray) -> np.ndarray:
    """G(t) = integral of the standard normal distribution function Phi up to t."""
    return t * ndtr(t) + _pdf(t)


def _normal_h(t: np.ndarray) -> np.ndarray:
    """H(t) = integral of G up to t."""
    return 0.5 * ((t * t + 1) * ndtr(t) + t * _pdf(t))


def _pdf(t: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)


def _below(c: np.ndarray, a1: np.ndarray, a2: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(b X + a1 U1 + a2 U2 < c) for X ~ N(0, 1), U1, U2 ~ U(-1, 1), b > 0, a1 >= a2 >= 0.

    Integrating Phi over U1 and U2 gives second differences of H (first of G if a2 ~ 0).
    """
    two = a2 > 1e-3 * b
    one = a1 > 1e-3 * b
    safe1, safe2 = np.where(one, a1, 1.0), np.where(two, a2, 1.0)
    h = _normal_h
    both = (
        h((c + a1 + a2) / b) - h((c + a1 - a2) / b) - h((c - a1 + a2) / b) + h((c - a1 - a2) / b)
    ) * (b * b / (4 * safe1 * safe2))
    single = (_normal_g((c + a1) / b) - _normal_g((c - a1) / b)) * (b / (2 * safe1))
    return np.where(two, both, np.where(one, single, ndtr(c / b)))


METHODS = ("montecarlo", "gaussian", "bins")
SAMPLED_VARIABLES = ("moderator_time", "chopper_time")
# a (point, mode) pair seen in a bin with a smaller probability adds nothing to the bin
NEGLIGIBLE = 1e-6
# Gaussian route: beyond this many widths (plus the sub-box) from a bin a mode is seen in it
# with a probability of at most Phi(-5.5) = 2e-8 < NEGLIGIBLE, so it is not evaluated
GAUSSIAN_REACH = 5.5
_PULSE_CACHE: dict = {}


def _pulse_table(resolution: object, setting: object, sampled: tuple[int, ...]) -> PulseTable:
    """The PulseTable of the given (time) variables, standardised, from 200,000 draws of the
    resolution model; one per model, setting and process (building one takes ~1 s)."""
    key = (repr(resolution), setting, sampled)
    if key not in _PULSE_CACHE:
        draws = resolution.sample_variables(setting, 200_000, np.random.default_rng(7))
        spread = np.sqrt(np.diag(resolution.variable_covariance(setting)))
        _PULSE_CACHE[key] = PulseTable((draws / spread)[:, list(sampled)])
    return _PULSE_CACHE[key]


class PulseTable:
    """Distribution function of cos(phi) (cos(theta) X1 + sin(theta) X2) + sin(phi) N, for
    two standardised instrument variables X1, X2 (given as samples) and a standard normal N,
    on a grid of theta in [0, pi], phi in [0, pi / 2] and t (standard units).

    theta outside [0, pi] uses the reflection of the variables (the sum changes sign)."""

    reach = 12.0  # |t| beyond which F is 0 or 1

    def __init__(
        self, samples: np.ndarray, n_theta: int = 73, n_phi: int = 25, n_t: int = 1201
    ) -> None:
        self.theta = np.linspace(0.0, np.pi, n_theta)
        self.phi = np.linspace(0.0, np.pi / 2, n_phi)
        self.t = np.linspace(-self.reach, self.reach, n_t)
        dt = self.t[1] - self.t[0]
        edges = np.concatenate([self.t - dt / 2, [self.t[-1] + dt / 2]])
        freq = np.fft.rfftfreq(2 * n_t, dt)
        table = np.empty((n_theta, n_phi, n_t))
        for i, th in enumerate(self.theta):
            z = np.sort(np.cos(th) * samples[:, 0] + np.sin(th) * samples[:, 1])
            for j, ph in enumerate(self.phi):
                # distribution of cos(phi) Z on the grid (its density by differences),
                # convolved with N(0, sin(phi)^2) by FFT
                c = np.cos(ph)
                if c > 1e-9:
                    cdf_z = np.searchsorted(z, edges / c, side="right") / len(z)
                else:
                    cdf_z = (edges >= 0).astype(float)
                dens = np.diff(cdf_z)
                spec = np.fft.rfft(dens, 2 * n_t)
                spec *= np.exp(-2 * (np.pi * freq * np.sin(ph)) ** 2)
                conv = np.fft.irfft(spec, 2 * n_t)[:n_t]
                cdf = np.cumsum(np.clip(conv, 0.0, None))
                table[i, j] = cdf / cdf[-1]
        self.table = table
        # |t| beyond which F is within NEGLIGIBLE / 10 of 0 or 1 in every row: a mode seen
        # that far outside a bin would be dropped anyway
        tiny = NEGLIGIBLE / 10
        first = int(np.argmax((table > tiny).any(axis=(0, 1))))
        last = n_t - 1 - int(np.argmax((table < 1 - tiny)[..., ::-1].any(axis=(0, 1))))
        self.support = max(-self.t[max(first - 1, 0)], self.t[min(last + 1, n_t - 1)])

    def window(
        self, theta: np.ndarray, phi: np.ndarray, t_lo: np.ndarray, t_hi: np.ndarray
    ) -> np.ndarray:
        """F(t_hi) - F(t_lo) for arrays of theta in (-pi, pi], phi in [0, pi/2] and
        t_lo <= t_hi (standard units), all of the same shape."""
        flip = theta < 0  # F(t) = 1 - F_reflected(-t): the window reflects
        theta = np.where(flip, theta + np.pi, theta)
        a, b = np.where(flip, -t_hi, t_lo), np.where(flip, -t_lo, t_hi)
        i = np.rint(theta / np.pi * (len(self.theta) - 1)).astype(int)
        j = np.rint(phi / (np.pi / 2) * (len(self.phi) - 1)).astype(int)
        start = (i * len(self.phi) + j) * len(self.t)  # each row's start in the raveled table
        return self._interpolate(start, b) - self._interpolate(start, a)

    def _interpolate(self, start: np.ndarray, t: np.ndarray) -> np.ndarray:
        """F(t) on the table rows beginning at `start` of the raveled table."""
        flat = self.table.ravel()
        x = (np.clip(t, -self.reach, self.reach) + self.reach) / (self.t[1] - self.t[0])
        k = np.minimum(x.astype(int), len(self.t) - 2)
        f = x - k
        at = start + k
        value = (1 - f) * flat[at] + f * flat[at + 1]
        return np.where(t <= -self.reach, 0.0, np.where(t >= self.reach, 1.0, value))


def _window_probability(
    y0: np.ndarray,
    width: np.ndarray,
    a_h: np.ndarray,
    a_k: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """P(lo <= y0 + width X + a_h U1 + a_k U2 < hi), X ~ N(0, 1), U1, U2 ~ U(-1, 1): the
    energy at which a mode is seen, linear in the Gaussian resolution and in the position
    inside the box (half-widths a_h, a_k in meV)."""
    a1, a2 = np.maximum(a_h, a_k), np.minimum(a_h, a_k)
    # a vanishing width means the resolution does not matter: keep a tiny one for the formulas
    b = np.maximum(np.abs(width), 1e-6 * np.maximum(a1, 1.0))
    return np.clip(_below(hi - y0, a1, a2, b) - _below(lo - y0, a1, a2, b), 0.0, 1.0)
