"""Linear spin-wave theory (LSWT), batched over wave vectors and parameter sets, on PyTorch.

Method (Toth & Lake, J. Phys.: Condens. Matter 27, 166002 (2015); Colpa, Physica A 93, 327
(1978)). Each spin i gets a local frame (e1, e2, n_i) with n_i along its ordered moment and
u_i = e1 + i e2. Holstein-Primakoff to quadratic order gives

    H2 = sum_k a_k^+ A(k) a_k + 1/2 (a_k^+ B(k) a_-k^+ + h.c.),
    h(k) = [[A(k), B(k)], [B(k)^+, A(-k)^T]],

whose paraunitary diagonalisation gives the magnon energies. The Fourier phases use the
lattice translation between the cells of two spins only ("cell gauge"), so h(k) depends on k
only through the bond translations: for a single layer it is independent of L. The atomic
positions enter only the neutron structure factor.

Two solvers:
* general (any structure): Colpa - Cholesky h = K^+ K, eigh of K g K^+ (2N x 2N).
* reduced (automatic when every real-space coefficient is real, e.g. collinear magnets with
  symmetric exchange, single-ion anisotropy and a field along the moments): then
  h = [[A, B], [B, A]] with A, B Hermitian and omega^2 are the eigenvalues of
  (A - B)(A + B), found from the N x N Hermitian problem L^+ (A - B) L, A + B = L L^+.
  This is about eight times less work than the general 2N x 2N problem.

Energies are in meV; wave vectors in r.l.u.; S^ab is per LSWT cell (SpinW's normalisation).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from exp2sim.spinwave.formfactor import form_factor
from exp2sim.spinwave.system import SpinSystem

MU_B = 0.0578838180  # Bohr magneton, meV / T


class UnstableParametersError(ValueError):
    """The Hamiltonian is not positive definite: the assumed ground state is unstable."""


def local_frames(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Complex transverse vectors u = e1 + i e2 (N, 3) and moment directions n (N, 3).

    e1 is built from a reference axis shared by parallel and antiparallel moments, so that
    for collinear structures u of a reversed spin is the complex conjugate of u (which makes
    the Hamiltonian coefficients real and enables the reduced solver).
    """
    n = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    ref = np.tile([0.0, 0.0, 1.0], (len(n), 1))
    near_z = np.abs(n[:, 2]) > 0.9
    ref[near_z] = [1.0, 0.0, 0.0]
    e1 = ref - np.sum(ref * n, axis=1, keepdims=True) * n
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(n, e1)
    return e1 + 1j * e2, n


@dataclass
class SpinWaveResult:
    """LSWT result for P parameter sets, T twins, Q wave vectors and N modes.

    q: (Q, 3) wave vectors as given (conventional r.l.u.); energies: (P, T, Q, N) positive
    mode energies sorted ascending (meV, NaN where unstable); sab: (P, T, Q, N, 3, 3) complex
    spin-spin correlations in the laboratory frame, per LSWT cell, form factor included if
    requested; sperp: (P, T, Q, N) neutron intensity S_perp; twin_weights: (T,) volume
    fractions summing to 1; stable: (P,) False where any Q was unstable.
    """

    q: np.ndarray
    energies: np.ndarray
    sab: np.ndarray | None
    sperp: np.ndarray
    twin_weights: np.ndarray
    stable: np.ndarray


@dataclass
class LayerModes:
    """Modes of a layered system at in-plane wave vectors; intensities at any L follow.

    q: (Q, 3) in-plane wave vectors (conventional r.l.u., l = 0); energies: (P, T, Q, N)
    meV; amplitudes: (P, T, Q, N, G, 3) one-magnon amplitudes of each site group in the
    laboratory frame, without form factor and without the phase e^{2 pi i L z}; group_z (G,):
    fractional z of each group in the LSWT cell; group_ion (G,): form-factor ion; l_sign (T,):
    +-1, the sign L takes in each twin's crystal frame; l_scale: LSWT-cell l per
    conventional l; twin_weights (T,); stable (P,).
    """

    q: np.ndarray
    energies: np.ndarray
    amplitudes: np.ndarray
    group_z: np.ndarray
    group_ion: tuple[str | None, ...]
    l_sign: np.ndarray
    l_scale: float
    twin_weights: np.ndarray
    stable: np.ndarray
    gradients: np.ndarray | None = None  # (P, T, Q, N, 2) d energy / d (h, k), if asked

    def sperp(
        self,
        amplitudes: np.ndarray,
        twin: int,
        l_rlu: np.ndarray,
        q_abs: np.ndarray,
        q_hat: np.ndarray,
    ) -> np.ndarray:
        """S_perp per mode from group amplitudes (..., N, G, 3) of one twin at conventional
        l (...), |Q| (...) in inverse Angstrom and unit Q (..., 3) in the laboratory frame.
        Returns (..., N)."""
        phase = np.exp(
            2j
            * np.pi
            * (self.l_sign[twin] * self.l_scale)
            * np.asarray(l_rlu)[..., None]
            * self.group_z
        )  # (..., G)
        ff = np.stack([form_factor(ion, q_abs) for ion in self.group_ion], axis=-1)
        m = np.einsum("...nga,...g->...na", amplitudes, phase * ff)
        along = np.einsum("...na,...a->...n", m, q_hat)
        return (np.abs(m) ** 2).sum(-1) - np.abs(along) ** 2


class SpinWaveTheory:
    """Compiled LSWT for one spin system; evaluate it for many Q and parameter sets at once.

    Example:
        swt = SpinWaveTheory(system)
        res = swt.calculate(q_rlu, params=[[-11.39, 1.5, -1.35, 1.5, 0.88, 0.074]])
        res.energies[0, 0]   # (Q, N) energies of the first twin

    omega_tol: as SpinW, the largest negative eigenvalue of h (meV) still treated as
    round-off (a Goldstone mode) and removed by a small diagonal shift; anything more
    negative marks the parameter set unstable. chunk: wave vectors per batch (memory bound).
    """

    def __init__(
        self,
        system: SpinSystem,
        *,
        device: str | torch.device | None = None,
        omega_tol: float = 1e-5,
        chunk: int | None = None,
        solver: str = "auto",
    ) -> None:
        if solver not in ("auto", "general", "reduced"):
            raise ValueError("solver must be 'auto', 'general' or 'reduced'")
        self.system = system
        try:
            self.device = torch.device(device) if device is not None else torch.device("cpu")
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("a CUDA device was requested but torch sees no usable GPU")
        self.omega_tol = float(omega_tol)
        # Small batches stay in cache on a CPU; a GPU wants large ones.
        self.chunk = int(chunk) if chunk else (1024 if self.device.type == "cpu" else 65536)
        self._compile()
        if solver == "reduced" and not self.reducible:
            raise ValueError("the reduced solver needs real Hamiltonian coefficients")
        self.reduced = self.reducible if solver == "auto" else solver == "reduced"

    # ------------------------------------------------------------------ compilation
    def _compile(self) -> None:
        """Real-space coefficient tables, linear in (1, p_1, ..., p_P)."""
        s = self.system
        n = s.n_sites
        spins = np.array([site.spin for site in s.sites])
        u, nvec = local_frames(np.array([site.unit_direction for site in s.sites]))
        par_index = {name: k + 1 for k, name in enumerate(s.parameters)}  # 0 = constant

        translations = {(0, 0, 0): 0}
        for c in s.couplings:
            for d in (c.offset, tuple(-x for x in c.offset)):
                translations.setdefault(d, len(translations))
        n_par = len(s.parameters) + 1
        hop = np.zeros((n_par, len(translations), n, n), dtype=complex)
        pair = np.zeros_like(hop)

        def add_bond(i: int, j: int, d: tuple, jmat: np.ndarray, p: int) -> None:
            m, mm = translations[d], translations[tuple(-x for x in d)]
            root = np.sqrt(spins[i] * spins[j]) / 2
            t = root * (u[i] @ jmat @ u[j].conj())
            c = root * (u[i] @ jmat @ u[j])
            hop[p, m, i, j] += t
            hop[p, mm, j, i] += np.conj(t)
            pair[p, m, i, j] += c
            pair[p, mm, j, i] += c
            zz = nvec[i] @ jmat @ nvec[j]
            hop[p, 0, i, i] -= zz * spins[j]
            hop[p, 0, j, j] -= zz * spins[i]

        for c in s.couplings:
            add_bond(c.site1, c.site2, c.offset, c.matrix, par_index.get(c.parameter, 0))
        for a in s.anisotropies:
            sym = (a.matrix + a.matrix.T) / 2  # S^T A S sees only the symmetric part
            add_bond(a.site, a.site, (0, 0, 0), sym, par_index.get(a.parameter, 0))
        field = np.asarray(s.field, dtype=float)
        for i, site in enumerate(s.sites):
            hop[0, 0, i, i] -= MU_B * site.g * (field @ nvec[i])

        scale = max(np.abs(hop).max(), np.abs(pair).max(), 1e-300)
        self.reducible = bool(
            np.abs(hop.imag).max() <= 1e-12 * scale and np.abs(pair.imag).max() <= 1e-12 * scale
        )
        dev = self.device
        self._d = torch.tensor(np.array(list(translations)), dtype=torch.float64, device=dev)
        self._hop = torch.tensor(hop.reshape(n_par, len(translations), n * n), device=dev)
        self._pair = torch.tensor(pair.reshape(n_par, len(translations), n * n), device=dev)
        self._plus = self._hop + self._pair
        self._minus = self._hop - self._pair
        self._u = torch.tensor(u, device=dev)
        self._spins = torch.tensor(spins, dtype=torch.float64, device=dev)
        self._pos = torch.tensor(
            np.array([site.position for site in s.sites]), dtype=torch.float64, device=dev
        )
        self.n_modes = n

    # ------------------------------------------------------------------ parameters
    def parameter_weights(self, params: np.ndarray | None) -> torch.Tensor:
        """(P, 1 + n_params) weights of the coefficient tables for P parameter sets."""
        n_par = len(self.system.parameters)
        if params is None:
            if n_par:
                raise ValueError(f"this model needs {n_par} parameters: {self.system.parameters}")
            params = np.zeros((1, 0))
        p = np.atleast_2d(np.asarray(params, dtype=float))
        if p.ndim != 2 or p.shape[1] != n_par:
            raise ValueError(
                f"expected {n_par} parameter values ({', '.join(self.system.parameters)}), "
                f"got {p.shape[-1]}"
            )
        if not np.all(np.isfinite(p)):
            raise ValueError("parameters contain NaN or Inf")
        ones = np.ones((len(p), 1))
        return torch.tensor(np.hstack([ones, p]), dtype=torch.complex128, device=self.device)

    # ------------------------------------------------------------------ Hamiltonian
    def blocks(self, k: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A(k), B(k) and A(-k)^T for wave vectors k (Q, 3) in LSWT r.l.u.

        w: (P, 1 + n_params). Returns three (P, Q, N, N) complex tensors.
        """
        n = self.n_modes
        phase = torch.exp(2j * np.pi * (k @ self._d.T))  # (Q, M)
        hop = torch.einsum("pc,cmx->pmx", w, self._hop)  # (P, M, N*N)
        pair = torch.einsum("pc,cmx->pmx", w, self._pair)
        a = (phase @ hop).reshape(len(w), len(k), n, n)
        b = (phase @ pair).reshape(len(w), len(k), n, n)
        a_minus_t = (phase.conj() @ hop).reshape(len(w), len(k), n, n).transpose(-1, -2)
        return a, b, a_minus_t

    def velocities(
        self, k: torch.Tensor, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Group velocities d omega_n / dk (P, Q, N, 3), meV per LSWT r.l.u., from the
        Bogoliubov vectors (Hellmann-Feynman: psi_n^+ (dh/dk) psi_n with psi_n^+ g psi_n = 1),
        exact for each mode even where bands cross."""
        n = self.n_modes
        phase = torch.exp(2j * np.pi * (k @ self._d.T))  # (Q, M)
        hop = torch.einsum("pc,cmx->pmx", w, self._hop)
        pair = torch.einsum("pc,cmx->pmx", w, self._pair)
        shape = (len(w), len(k), n, n)
        out = []
        for alpha in range(3):
            factor = 2j * np.pi * self._d[:, alpha]  # (M,)
            if not torch.any(factor != 0):
                out.append(torch.zeros((len(w), len(k), n), dtype=torch.float64, device=k.device))
                continue
            da = ((phase * factor) @ hop).reshape(shape)
            db = ((phase * factor) @ pair).reshape(shape)
            da_mt = ((phase.conj() * -factor) @ hop).reshape(shape).transpose(-1, -2)
            term = (x.conj() * (da @ x + db @ y)).sum(-2) + (
                y.conj() * (db.conj().transpose(-1, -2) @ x + da_mt @ y)
            ).sum(-2)
            out.append(term.real)
        return torch.stack(out, dim=-1)

    def hamiltonian(self, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The bosonic matrix h(k), (P, Q, 2N, 2N), for k (Q, 3) in LSWT r.l.u."""
        a, b, a_mt = self.blocks(k, w)
        top = torch.cat([a, b], dim=-1)
        bottom = torch.cat([b.conj().transpose(-1, -2), a_mt], dim=-1)
        return torch.cat([top, bottom], dim=-2)

    def plus_minus(self, k: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A(k) + B(k) and A(k) - B(k), (P, Q, N, N), for the reduced solver."""
        n = self.n_modes
        phase = torch.exp(2j * np.pi * (k @ self._d.T))
        plus = torch.einsum("pc,cmx->pmx", w, self._plus)
        minus = torch.einsum("pc,cmx->pmx", w, self._minus)
        shape = (len(w), len(k), n, n)
        return (phase @ plus).reshape(shape), (phase @ minus).reshape(shape)

    # ------------------------------------------------------------------ solvers
    def _cholesky(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower Cholesky factor of Hermitian m (..., n, n), with SpinW's tolerance shift.

        Returns (L, bad) where bad marks matrices with an eigenvalue below -omega_tol.
        """
        chol, info = torch.linalg.cholesky_ex(m)
        bad = torch.zeros(m.shape[:-2], dtype=torch.bool, device=m.device)
        failed = info > 0
        if failed.any():
            sub = m[failed]
            lam_min = torch.linalg.eigvalsh(sub)[..., 0]
            scale = sub.diagonal(dim1=-2, dim2=-1).real.abs().amax(-1)
            # an exactly zero h (a lone ferromagnetic spin at k = 0) still needs a shift
            shift = torch.maximum(4 * np.sqrt(m.shape[-1]) * lam_min.abs(), 1e-12 * scale)
            shift = shift.clamp_min(1e-12)
            eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
            chol2, info2 = torch.linalg.cholesky_ex(sub + shift[:, None, None] * eye)
            chol[failed] = chol2
            bad[failed] = (lam_min < -self.omega_tol) | (info2 > 0)
        return chol, bad

    def solve(self, k: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Energies (P, Q, N) ascending, Bogoliubov vectors X, Y (P, Q, N, N) (column n =
        mode n, normalised X^+X - Y^+Y = 1) and an instability mask (P, Q)."""
        if self.reduced:
            return self._solve_reduced(k, w)
        return self._solve_general(k, w)

    def _solve_reduced(self, k: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        plus, minus = self.plus_minus(k, w)
        chol, bad = self._cholesky(plus)
        lh = chol.mH.resolve_conj().contiguous()
        w2, vec = torch.linalg.eigh(lh @ minus @ chol)  # omega^2 ascending
        scale = plus.diagonal(dim1=-2, dim2=-1).real.abs().amax(-1)
        bad = bad | (w2[..., 0] < -self.omega_tol * scale)
        omega = torch.sqrt(w2.clamp_min(0.0))
        # complex division is slow on CPU: multiply by real reciprocals instead
        root = torch.sqrt(omega.clamp_min(1e-12)).unsqueeze(-2)
        # u = sqrt(w) L^-+ v, v' = L v / sqrt(w); X = (u + v') / 2, Y = (u - v') / 2
        uu = torch.linalg.solve_triangular(lh, vec * (0.5 * root), upper=True)
        vv = chol @ (vec * (0.5 / root))
        omega = torch.where(bad.unsqueeze(-1), torch.nan, omega)
        return omega, uu + vv, uu - vv, bad

    def _solve_general(self, k: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.hamiltonian(k, w)
        n = self.n_modes
        chol, bad = self._cholesky(h)  # h = L L^+ = K^+ K with K = L^+
        kmat = chol.conj().transpose(-1, -2)
        g = torch.ones(2 * n, dtype=h.dtype, device=h.device)
        g[n:] = -1
        lam, vec = torch.linalg.eigh((kmat * g) @ chol)  # K g K^+, ascending
        omega = lam[..., n:]  # the N positive eigenvalues, ascending
        bad = bad | (lam[..., n] <= -self.omega_tol)
        t = torch.linalg.solve_triangular(kmat, vec[..., n:], upper=True)
        t = t * torch.sqrt(omega.clamp_min(1e-12)).unsqueeze(-2).to(t.dtype)
        omega = torch.where(bad.unsqueeze(-1), torch.nan, omega.clamp_min(0.0))
        return omega, t[..., :n, :], t[..., n:, :], bad

    def check_stability(self, params: np.ndarray | None, grid: int = 6) -> np.ndarray:
        """(P,) True where h(k) is positive definite at every point of a grid x grid x grid
        mesh of the magnetic Brillouin zone (axes no bond crosses are not sampled)."""
        w = self.parameter_weights(params)
        crossed = np.any(self._d.cpu().numpy() != 0, axis=0)
        axes = [np.arange(grid) / grid if c else np.zeros(1) for c in crossed]
        k = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        kt = torch.tensor(k, dtype=torch.float64, device=self.device)
        stable = torch.ones(len(w), dtype=torch.bool, device=self.device)
        step = max(1, self.chunk // len(w))
        for start in range(0, len(kt), step):
            stable &= ~self.solve(kt[start : start + step], w)[3].any(-1)
        return stable.cpu().numpy()

    def stable_at(
        self, q_rlu: np.ndarray, params: np.ndarray | None, crystal_frame: bool = False
    ) -> np.ndarray:
        """(P,) True where h(k) is positive definite at every wave vector q_rlu (Q, 3),
        conventional r.l.u., in every twin: the exact points a calculation will solve at
        (`crystal_frame` as in `layer_modes`). Cheaper than a calculation: no eigenvectors."""
        q, q_lab, inv_recip, twin_list, _ = self._frames(q_rlu, True)
        w = self.parameter_weights(params)
        stable = torch.ones(len(w), dtype=torch.bool, device=self.device)
        # in the crystal frame every twin solves at the same k: one is enough
        for twin in twin_list[:1] if crystal_frame else twin_list:
            q_crys = q_lab if crystal_frame else q_lab @ twin.rotation
            k = torch.tensor(q_crys @ inv_recip, dtype=torch.float64, device=self.device)
            kp, _ = self._unique_wavevectors(k)
            step = max(1, self.chunk // len(w))
            for start in range(0, len(kp), step):
                stable &= ~self.solve(kp[start : start + step], w)[3].any(-1)
        return stable.cpu().numpy()

    # ------------------------------------------------------------------ observables
    def _frames(self, q_rlu: np.ndarray, twins: bool) -> tuple:
        """Checked wave vectors (Q, 3), their Cartesian form (inverse Angstrom), the inverse
        reciprocal basis of the LSWT cell, the twins used and their normalised weights."""
        q = np.asarray(q_rlu, dtype=float)
        if q.ndim != 2 or q.shape[1] != 3:
            raise ValueError(f"Q must have shape (n, 3), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("Q contains NaN or Inf")
        s = self.system
        twin_list = s.twins if twins else s.twins[:1]
        weights = np.array([t.weight for t in twin_list], dtype=float)
        recip = s.lattice.reciprocal
        q_lab = q @ (recip * np.asarray(s.supercell, dtype=float)[:, None])
        return q, q_lab, np.linalg.inv(recip), twin_list, weights / weights.sum()

    def calculate(
        self,
        q_rlu: np.ndarray,
        params: np.ndarray | None = None,
        *,
        formfactor: bool = True,
        twins: bool = True,
        return_sab: bool = True,
    ) -> SpinWaveResult:
        """Energies and correlations at wave vectors q_rlu (Q, 3), conventional-cell r.l.u.

        params: (n_params,) or (P, n_params). twins=False uses the untwinned crystal only.
        """
        q, q_lab, inv_recip, twin_list, weights = self._frames(q_rlu, twins)
        w = self.parameter_weights(params)
        qhat = torch.tensor(_unit(q_lab), dtype=torch.complex128, device=self.device)
        energies, sab_all, sperp_all = [], [], []
        unstable = torch.zeros(len(w), dtype=torch.bool, device=self.device)
        for twin in twin_list:
            q_crys = q_lab @ twin.rotation  # R^T Q for each row
            k = torch.tensor(q_crys @ inv_recip, dtype=torch.float64, device=self.device)
            qc = torch.tensor(q_crys, dtype=torch.float64, device=self.device)
            e_t, amp, bad = self._observe(k, qc, w, formfactor)
            rot = torch.tensor(twin.rotation, dtype=torch.complex128, device=self.device)
            amp = amp @ rot.T  # amplitude vectors from the crystal to the laboratory frame
            along_q = torch.einsum("pqna,qa->pqn", amp, qhat)
            sperp = (amp.abs() ** 2).sum(-1) - along_q.abs() ** 2
            energies.append(e_t)
            sperp_all.append(sperp)
            if return_sab:
                sab_all.append(amp[..., :, None] * amp[..., None, :].conj())
            unstable |= bad.any(-1)
        return SpinWaveResult(
            q=q,
            energies=torch.stack(energies, 1).cpu().numpy(),
            sab=torch.stack(sab_all, 1).cpu().numpy() if return_sab else None,
            sperp=torch.stack(sperp_all, 1).cpu().numpy(),
            twin_weights=weights,
            stable=(~unstable).cpu().numpy(),
        )

    def layer_modes(
        self,
        q_rlu: np.ndarray,
        params: np.ndarray | None = None,
        *,
        twins: bool = True,
        crystal_frame: bool = False,
        gradients: bool = False,
    ) -> LayerModes:
        """Modes at in-plane wave vectors with the dependence on L left analytic.

        For layered systems (no bond along c) energies and eigenvectors do not depend on L;
        the intensity does, through e^{2 pi i L z_i} and the form factor. Sites are grouped
        by (z, ion) and the amplitudes of each group are returned, so that intensities at
        any L follow cheaply from `LayerModes.sperp`. q_rlu: (Q, 3) conventional r.l.u.
        (the l column is ignored). Every twin must keep c along +-c. With crystal_frame the
        same q are used in every twin's own crystal frame (for tables of modes indexed by
        crystal wave vector); amplitudes are always returned in the laboratory frame.
        """
        if np.any(self._d.cpu().numpy()[:, 2] != 0):
            raise ValueError("layer_modes needs a layered system: a bond crosses cells along c")
        q = np.array(q_rlu, dtype=float)
        if q.ndim == 2 and q.shape[1] == 3:
            q[:, 2] = 0.0
        q, q_lab, inv_recip, twin_list, weights = self._frames(q, twins)
        s = self.system
        recip = s.lattice.reciprocal
        if not np.allclose(recip[:2, 2], 0) or not np.allclose(recip[2, :2], 0):
            raise ValueError("layer_modes needs c* perpendicular to a* and b*")
        l_sign = []
        for t in twin_list:
            r = t.rotation
            if not (np.allclose(r[2, :2], 0) and np.allclose(r[:2, 2], 0)):
                raise ValueError("layer_modes needs twins that keep c along +-c")
            l_sign.append(float(np.sign(r[2, 2])))
        keys = sorted({(round(site.position[2], 9), site.ion or "") for site in s.sites})
        member = np.array(
            [[(round(st.position[2], 9), st.ion or "") == key for key in keys] for st in s.sites],
            dtype=float,
        )
        groups = torch.tensor(member, dtype=torch.float64, device=self.device)
        w = self.parameter_weights(params)
        conv_recip = recip * np.asarray(s.supercell, dtype=float)[:, None]

        def observe(rotation: np.ndarray) -> tuple[torch.Tensor, ...]:
            """Energies, group amplitudes (crystal frame), instability and in-plane
            gradients (or None) at q seen through `rotation`."""
            k = torch.tensor(
                (q_lab @ rotation) @ inv_recip, dtype=torch.float64, device=self.device
            )
            e_t, amp, bad, *vel = self._observe(
                k, torch.zeros_like(k), w, False, groups, velocities=gradients
            )
            grad = None
            if gradients:  # d omega / dq = (dk / dq) d omega / dk, k = q C R C^-1
                dk_dq = torch.tensor(conv_recip @ rotation @ inv_recip, device=self.device)
                grad = (vel[0] @ dk_dq.T)[..., :2]
            return e_t, amp, bad, grad

        # in the crystal frame every twin solves at the same k: solve once for all
        shared = observe(np.eye(3)) if crystal_frame else None
        energies, grads = [], []
        amps = None  # (T, P, Q, N, G, 3), written twin by twin: the table can be large
        unstable = torch.zeros(len(w), dtype=torch.bool, device=self.device)
        for index, twin in enumerate(twin_list):
            e_t, amp, bad, grad = shared if crystal_frame else observe(twin.rotation)
            if amps is None:
                amps = amp.new_empty((len(twin_list), *amp.shape))
            rot = torch.tensor(twin.rotation, dtype=torch.complex128, device=self.device)
            torch.matmul(amp, rot.T, out=amps[index])  # to the laboratory frame
            energies.append(e_t)
            grads.append(grad)
            unstable |= bad.any(-1)
        return LayerModes(
            q=q,
            energies=torch.stack(energies, 1).cpu().numpy(),
            amplitudes=amps.transpose(0, 1).cpu().numpy(),  # (P, T, ...)
            group_z=np.array([key[0] for key in keys]),
            group_ion=tuple(key[1] or None for key in keys),
            l_sign=np.array(l_sign),
            l_scale=float(s.supercell[2]),
            twin_weights=weights,
            stable=(~unstable).cpu().numpy(),
            gradients=torch.stack(grads, 1).cpu().numpy() if gradients else None,
        )

    def _observe(
        self,
        k: torch.Tensor,
        q_cart: torch.Tensor,
        w: torch.Tensor,
        formfactor: bool,
        groups: torch.Tensor | None = None,
        velocities: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Energies (P, Q, N), one-magnon amplitudes (P, Q, N, 3) in the crystal frame (or
        per site group, (P, Q, N, G, 3), if `groups` (N_sites, G) is given) and the
        instability mask (P, Q).

        Each distinct reduced wave vector is solved once. Work goes in chunks of `chunk`
        (P x Q) problems; on a CPU the chunks run on a thread pool, because batched small
        linear algebra in torch runs on one core per call.
        """
        kp, inverse = self._unique_wavevectors(k)
        ff = self._form_factors(q_cart) if formfactor else None
        order = torch.argsort(inverse, stable=True)  # wave vectors grouped by reduced k
        counts = torch.bincount(inverse, minlength=len(kp))
        ends = torch.cumsum(counts, 0).tolist()
        bounds = self._chunks(counts.tolist(), len(w))

        def work(u0: int, u1: int) -> tuple[torch.Tensor, ...]:
            omega, x, y, bad = self.solve(kp[u0:u1], w)
            idx = order[(ends[u0 - 1] if u0 else 0) : ends[u1 - 1]]
            local = inverse[idx] - u0
            # per wave vector: phase_i sqrt(S_i / 2) (u_i, conj(u_i)) [x F_i], (Qc, 2N, 3)
            phase = torch.exp(2j * np.pi * (k[idx] @ self._pos.T)) * torch.sqrt(self._spins / 2)
            if ff is not None:
                phase = phase * ff[idx]
            uu = torch.cat([self._u, self._u.conj()], dim=0)  # (2N, 3)
            weights = phase.repeat(1, 2)[..., None] * uu
            if groups is not None:  # separate columns for each site group
                member = groups.repeat(2, 1).to(weights.dtype)  # (2N, G)
                weights = (weights[:, :, None, :] * member[None, :, :, None]).flatten(2)
            xy_t = torch.cat([x, y], dim=-2).conj().transpose(-1, -2)  # (P, U, N, 2N)
            amp = _expand_runs(xy_t, weights, local, counts[u0:u1])  # (P, Qc, N, C)
            if groups is not None:
                amp = amp.unflatten(-1, (groups.shape[1], 3))
            vel = self.velocities(kp[u0:u1], w, x, y)[:, local] if velocities else None
            return idx, omega[:, local], amp, bad[:, local], vel

        threads = torch.get_num_threads() if self.device.type == "cpu" else 1
        if threads > 1 and len(bounds) > 1:
            # one intra-op thread per worker: the workers already fill the cores
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    parts = list(pool.map(lambda b: work(*b), bounds))
            finally:
                torch.set_num_threads(threads)
        else:
            parts = [work(*b) for b in bounds]
        n_p, n_q, n = len(w), len(k), self.n_modes
        energies = torch.empty((n_p, n_q, n), dtype=torch.float64, device=self.device)
        amp_shape = (n_p, n_q, n, 3) if groups is None else (n_p, n_q, n, groups.shape[1], 3)
        amps = torch.empty(amp_shape, dtype=torch.complex128, device=self.device)
        bad = torch.empty((n_p, n_q), dtype=torch.bool, device=self.device)
        for idx, e_part, a_part, b_part, _ in parts:
            energies[:, idx], amps[:, idx], bad[:, idx] = e_part, a_part, b_part
        if not velocities:
            return energies, amps, bad
        vel = torch.empty((n_p, n_q, n, 3), dtype=torch.float64, device=self.device)
        for idx, *_, v_part in parts:
            vel[:, idx] = v_part
        return energies, amps, bad, vel

    def _chunks(self, counts: list[int], n_params: int) -> list[tuple[int, int]]:
        """Ranges of distinct wave vectors holding about `chunk` (P x Q) problems each."""
        limit = max(1, self.chunk // n_params)
        bounds, start, load = [], 0, 0
        for u, c in enumerate(counts):
            load += c
            if u + 1 - start >= limit or load >= limit:
                bounds.append((start, u + 1))
                start, load = u + 1, 0
        if start < len(counts):
            bounds.append((start, len(counts)))
        return bounds

    def _unique_wavevectors(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h(k) is periodic in the reciprocal lattice of the LSWT cell and depends on k only
        through k . d for the bond translations d: fold k into one cell, drop the components
        no translation sees (e.g. L for a single layer) and solve each distinct remainder
        once. Returns (distinct reduced k, index into them)."""
        d = self._d.cpu().numpy()
        if np.abs(d).max() == 0:
            basis = np.zeros((0, 3))
        else:
            _, sv, vt = np.linalg.svd(d)
            basis = vt[: int(np.sum(sv > 1e-9 * sv[0]))]
        kk = k.cpu().numpy()
        kk = kk - np.round(kk)  # h(k) is periodic in the reciprocal lattice of the LSWT cell
        proj = (kk @ basis.T) @ basis
        _, first, inverse = np.unique(
            np.round(proj, 10), axis=0, return_index=True, return_inverse=True
        )
        return (
            torch.tensor(proj[first], dtype=torch.float64, device=self.device),
            torch.tensor(inverse.ravel(), device=self.device),
        )

    def _form_factors(self, q_cart: torch.Tensor) -> torch.Tensor:
        """<j0>(|Q|) per site, (Q, N)."""
        qa = torch.linalg.norm(q_cart, dim=-1).cpu().numpy()
        cols = [form_factor(site.ion, qa) for site in self.system.sites]
        return torch.tensor(np.stack(cols, axis=-1), dtype=torch.float64, device=self.device)


def _expand_runs(
    mat: torch.Tensor, weights: torch.Tensor, local: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """mat_u(q) @ weights_q for many wave vectors q sharing eigenvectors.

    mat: (P, U, N, M) per distinct reduced wave vector; weights: (Qc, M, C) per wave vector,
    grouped by distinct vector (local: its index u, non-decreasing; counts: (U,) run
    lengths). Returns (P, Qc, N, C). The runs are padded to equal length so that one
    batched product serves them all.
    """
    n_u, m = mat.shape[1], mat.shape[-1]
    n_q, c = weights.shape[0], weights.shape[-1]
    if n_q == n_u:  # every wave vector distinct
        return mat @ weights
    run = int(counts.max())
    if n_u * run > 4 * n_q + 1024:  # very uneven runs: gather instead of padding
        return mat[:, local] @ weights
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n_q, device=local.device) - starts[local]
    padded = torch.zeros((n_u, run, m, c), dtype=weights.dtype, device=weights.device)
    padded[local, slot] = weights
    out = mat @ padded.permute(0, 2, 1, 3).reshape(n_u, m, run * c)  # (P, U, N, run * C)
    out = out.unflatten(-1, (run, c)).transpose(2, 3)  # (P, U, run, N, C)
    return out[:, local, slot]  # (P, Qc, N, C)


def _unit(v: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3); zero vectors stay zero."""
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
