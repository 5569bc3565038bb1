"""LSWT engine against closed forms, exact identities and an independent stability criterion.

Expected values come from analytic results (ferromagnetic chain, square-lattice Neel
antiferromagnet with J1, J2 and single-ion anisotropy, sum rules, Goldstone's theorem), from
exact identities (Bogoliubov normalisation, periodicity, twin rotation, L independence) or
from a classical Hessian written here independently of the engine -- never from the engine.

Conventions (SpinW's, as the engine): H = sum_bonds J S_i.S_j (J > 0 antiferromagnetic,
each bond once) + sum_i S_i^T A S_i + mu_B B^T g S_i. LSWT with spins along +-z and
A = diag(0, 0, -|D|) (easy axis along the moments) adds 2 S |D| to the diagonal term.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from exp2sim.spinwave import (
    Anisotropy,
    Coupling,
    Lattice,
    Site,
    SpinSystem,
    SpinWaveTheory,
    Twin,
    find_bonds,
    load_model,
)

MU_B = 5.7883818060e-2  # Bohr magneton, meV/T (CODATA 2018)


def group_sum(energies, weights, tol):
    """Sum weights (N, ...) over runs of ascending energies (N,) closer than tol."""
    out_e, out_w, start = [], [], 0
    for i in range(1, len(energies) + 1):
        if i == len(energies) or energies[i] - energies[i - 1] >= tol:
            out_e.append(np.mean(energies[start:i]))
            out_w.append(np.sum(weights[start:i], axis=0))
            start = i
    return np.array(out_e), np.array(out_w)


@pytest.fixture(scope="module")
def goodenough():
    model = load_model("goodenough")
    return model, SpinWaveTheory(model.system)


# ------------------------------------------------------------------ ferromagnetic chain


def fm_chain(spin, j, field=(0.0, 0.0, 0.0), g=2.0, direction=(0, 0, 1)):
    lat = Lattice(3.0, 7.0, 9.0)
    site = Site("Fe", (0.0, 0.0, 0.0), spin, direction, g=g)
    return SpinSystem(lat, [site], [Coupling(0, 0, (1, 0, 0), j)], field=field)


@pytest.mark.parametrize("spin", [0.5, 1.0, 2.5, 3.5])
def test_fm_chain_dispersion_and_intensity(spin):
    """omega = 2 S |J| (1 - cos 2 pi h); one mode with S^xx = S^yy = S/2, |S^xy| = S/2
    (imaginary), no longitudinal weight, independent of k and l."""
    j = -1.7
    rng = np.random.default_rng(1)
    q = np.column_stack([np.linspace(-1, 1, 41), rng.uniform(-2, 2, 41), rng.uniform(-2, 2, 41)])
    res = SpinWaveTheory(fm_chain(spin, j)).calculate(q, None, formfactor=False)
    assert res.stable[0]
    expected = 2 * spin * abs(j) * (1 - np.cos(2 * np.pi * q[:, 0]))
    np.testing.assert_allclose(res.energies[0, 0, :, 0], expected, rtol=0, atol=1e-9)
    sab = res.sab[0, 0, :, 0]
    np.testing.assert_allclose(sab[:, 0, 0].real, spin / 2, rtol=1e-12)
    np.testing.assert_allclose(sab[:, 1, 1].real, spin / 2, rtol=1e-12)
    np.testing.assert_allclose(np.abs(sab[:, 0, 1]), spin / 2, rtol=1e-12)
    np.testing.assert_allclose(sab[:, 0, 1].real, 0, atol=1e-12)
    np.testing.assert_allclose(sab[:, 2, :], 0, atol=1e-12)


def test_fm_chain_in_field_gap_and_sign():
    """H_Z = + mu_B g B.S: with S antiparallel to B the magnon gains g mu_B |B|; with S
    parallel to B the state is a maximum of the Zeeman energy, so the k = 0 magnon would be
    negative (-g mu_B B): the set must be reported unstable."""
    spin, j, g, b = 1.5, -0.8, 2.1, 3.0
    h = np.linspace(0, 1, 21)
    q = np.column_stack([h, 0 * h, 0 * h])
    anti = fm_chain(spin, j, field=(0, 0, b), g=g, direction=(0, 0, -1))
    res = SpinWaveTheory(anti).calculate(q, None, formfactor=False)
    expected = 2 * spin * abs(j) * (1 - np.cos(2 * np.pi * h)) + g * MU_B * b
    assert res.stable[0]
    np.testing.assert_allclose(res.energies[0, 0, :, 0], expected, rtol=0, atol=1e-9)
    para = fm_chain(spin, j, field=(0, 0, b), g=g, direction=(0, 0, 1))
    res = SpinWaveTheory(para).calculate(q, None, formfactor=False)
    assert not res.stable[0]
    assert np.isnan(res.energies[0, 0, 0, 0])


def test_fm_sum_rule_multisite():
    """Ferromagnet with U(1) symmetry about the moments (z): Y = 0 and X is unitary, so the
    transverse one-magnon weight summed over modes is Q independent:
    sum_n (S^xx + S^yy)_n = sum_i S_i per cell, split equally between xx and yy, S^zz = 0.
    (For one site: S/2 per component per mode.) Sites with different S, unequal FM bonds,
    an easy-axis anisotropy on one site and a field opposite to the spins keep the symmetry."""
    lat = Lattice(4.0, 5.0, 6.0, 90, 100, 90)
    spins = (0.5, 1.0, 2.5)
    pos = [(0.0, 0.0, 0.0), (0.4, 0.3, 0.1), (0.7, 0.6, 0.5)]
    sites = [Site(f"s{i}", pos[i], spins[i], (0, 0, 1), g=2.0) for i in range(3)]
    bonds = [
        Coupling(0, 1, (0, 0, 0), -1.0),
        Coupling(1, 2, (0, 0, 0), -0.7),
        Coupling(2, 0, (1, 0, 0), -0.4),
        Coupling(0, 0, (0, 1, 0), -0.3),
        Coupling(1, 2, (0, -1, 1), -0.2),
    ]
    anis = [Anisotropy(1, np.diag([0.0, 0.0, -0.3]))]
    system = SpinSystem(lat, sites, bonds, anis, field=(0.0, 0.0, -2.0))
    q = np.random.default_rng(2).uniform(-1.5, 1.5, (25, 3))
    res = SpinWaveTheory(system).calculate(q, None, formfactor=False)
    assert res.stable[0]
    sab = res.sab[0, 0]  # (Q, N, 3, 3)
    total = sum(spins)
    np.testing.assert_allclose(sab[..., 0, 0].real.sum(-1), total / 2, rtol=1e-9)
    np.testing.assert_allclose(sab[..., 1, 1].real.sum(-1), total / 2, rtol=1e-9)
    np.testing.assert_allclose(sab[..., 2, 2].real, 0, atol=1e-10)
    # and not trivially: the weight is spread over several modes at a generic Q
    assert np.all((sab[..., 0, 0].real > 1e-3).sum(-1) >= 2)


# ------------------------------------------------------------------ square-lattice Neel AFM


def neel_closed_form(h, k, spin, j1, j2, d):
    """omega and S (A - B) / omega, the transverse weight per spin summed over modes.

    A = 4SJ1 - 4SJ2 (1 - g2) + 2S|D|, B = 4SJ1 g1, g1 = (cos 2 pi h + cos 2 pi k)/2,
    g2 = cos 2 pi h cos 2 pi k; omega = sqrt(A^2 - B^2). With Holstein-Primakoff and the
    Bogoliubov factors u^2, v^2 = (A/omega +- 1)/2: S^xx = S^yy = (S/2)(A - B)/omega per spin."""
    c, s = np.cos(2 * np.pi * h), np.cos(2 * np.pi * k)
    g1, g2 = (c + s) / 2, c * s
    a = 4 * spin * j1 - 4 * spin * j2 * (1 - g2) + 2 * spin * abs(d)
    b = 4 * spin * j1 * g1
    omega = np.sqrt(a**2 - b**2)
    return omega, spin * (a - b) / omega


def neel_root2_cell(spin, j1, j2, d, a=4.0, c=12.0):
    """Neel order in the sqrt(2) x sqrt(2) cell (2 sites), built from scratch; moments +-z."""
    lat = Lattice(a * np.sqrt(2), a * np.sqrt(2), c)
    sites = [
        Site("up", (0.0, 0.0, 0.0), spin, (0, 0, 1)),
        Site("dn", (0.5, 0.5, 0.0), spin, (0, 0, -1)),
    ]
    bonds = find_bonds(lat, np.array([s.position for s in sites]), max_shell=2)
    assert sum(b.shell == 1 for b in bonds) == 4 and sum(b.shell == 2 for b in bonds) == 4
    couplings = [Coupling(b.site1, b.site2, b.offset, j1 if b.shell == 1 else j2) for b in bonds]
    anis = [Anisotropy(i, np.diag([0.0, 0.0, -abs(d)])) for i in range(2)]
    return SpinSystem(lat, sites, couplings, anis)


@pytest.mark.parametrize(
    "spin,j1,j2,d", [(2.5, 0.65, 0.0, 0.0), (1.0, 1.0, 0.2, 0.05), (1.5, 0.8, -0.15, 0.3)]
)
def test_square_neel_root2_cell(spin, j1, j2, d):
    """Both modes of the 2-site cell are omega(Q); their S^xx + S^yy sum to 2 S (A-B)/omega.
    Square-lattice Q (h, k) -> r.l.u. of the rotated sqrt(2) cell: (h + k, k - h, l)."""
    rng = np.random.default_rng(3)
    hk = rng.uniform(-1, 1, (30, 2))
    q_mag = np.column_stack([hk[:, 0] + hk[:, 1], hk[:, 1] - hk[:, 0], rng.uniform(-1, 1, 30)])
    res = SpinWaveTheory(neel_root2_cell(spin, j1, j2, d)).calculate(q_mag, None, formfactor=False)
    assert res.stable[0]
    omega, weight = neel_closed_form(hk[:, 0], hk[:, 1], spin, j1, j2, d)
    np.testing.assert_allclose(res.energies[0, 0], np.column_stack([omega, omega]), atol=1e-9)
    sab = res.sab[0, 0]
    trans = (sab[..., 0, 0] + sab[..., 1, 1]).real.sum(-1)
    np.testing.assert_allclose(trans, 2 * weight, rtol=1e-8)
    np.testing.assert_allclose(sab[..., 2, 2].real, 0, atol=1e-10)


@pytest.mark.parametrize("j1,j2", [(0.65, 0.0), (0.9, 0.15), (0.4, -0.2)])
def test_square_neel_builtin_rb2mnf4(j1, j2):
    """Built-in Rb2MnF4 (2x2x1 supercell, S = 5/2, D = 0): modes are omega(Q) twice and
    omega(Q + (1/2, 0)) twice (back-folded); the transverse weight of all modes, per
    4-spin cell, is 4 S (A - B)/omega(Q) (the folded ones carry none). Form factor off."""
    model = load_model("rb2mnf4")
    rng = np.random.default_rng(4)
    q = np.column_stack([rng.uniform(-1, 1, (30, 2)), rng.uniform(-3, 3, 30)])
    res = SpinWaveTheory(model.system).calculate(q, [j1, j2], formfactor=False)
    assert res.stable[0]
    w0, weight = neel_closed_form(q[:, 0], q[:, 1], 2.5, j1, j2, 0.0)
    w1, _ = neel_closed_form(q[:, 0] + 0.5, q[:, 1], 2.5, j1, j2, 0.0)
    expected = np.sort(np.column_stack([w0, w0, w1, w1]), axis=1)
    np.testing.assert_allclose(res.energies[0, 0], expected, atol=1e-9)
    sab = res.sab[0, 0]
    trans = (sab[..., 0, 0] + sab[..., 1, 1]).real.sum(-1)
    np.testing.assert_allclose(trans, 4 * weight, rtol=1e-8)


# ------------------------------------------------------------------ solvers and identities


def test_general_and_reduced_solvers_agree(goodenough):
    """PCSMO Goodenough (collinear: the reduced solver is eligible) at random Q for the best
    fit and two other stable parameter sets: energies and S_perp (summed over modes
    degenerate within 1e-4 meV) agree between the 2N x 2N Colpa solver and the N x N one."""
    model, auto = goodenough
    assert auto.reduced
    general = SpinWaveTheory(model.system, solver="general")
    reduced = SpinWaveTheory(model.system, solver="reduced")
    q = np.random.default_rng(5).uniform(-1.2, 1.2, (20, 3))
    params = np.array(
        [model.best_fit, [-15.0, 2.0, 0.5, -1.0, 1.2, 0.1], [-8, 1, -2, 2, 0.3, 0.15]]
    )
    rg = general.calculate(q, params)
    rr = reduced.calculate(q, params)
    assert rg.stable.all() and rr.stable.all()
    np.testing.assert_allclose(rr.energies, rg.energies, rtol=0, atol=1e-8)
    for p in range(3):
        for t in range(2):
            for iq in range(len(q)):
                e1, s1 = group_sum(rg.energies[p, t, iq], rg.sperp[p, t, iq], 1e-4)
                e2, s2 = group_sum(rr.energies[p, t, iq], rr.sperp[p, t, iq], 1e-4)
                np.testing.assert_allclose(e2, e1, atol=1e-8)
                np.testing.assert_allclose(s2, s1, rtol=1e-6, atol=1e-9 * s1.max())


def triangular_120(spin=1.5, j=1.0, easy_plane=0.2):
    """120-degree triangular antiferromagnet in a 3x3x1 supercell (non-collinear)."""
    lat = Lattice(3.0, 3.0, 4.0, gamma=120).supercell((3, 3, 1))
    sites = []
    for i in range(3):
        for k in range(3):
            phi = 2 * np.pi * (i + k) / 3
            sites.append(Site(f"s{i}{k}", (i / 3, k / 3, 0), spin, (-np.sin(phi), np.cos(phi), 0)))
    bonds = find_bonds(lat, np.array([s.position for s in sites]), max_shell=1)
    couplings = [Coupling(b.site1, b.site2, b.offset, j) for b in bonds]
    anis = [Anisotropy(i, np.diag([0.0, 0.0, easy_plane])) for i in range(9)]
    return SpinSystem(lat, sites, couplings, anis, supercell=(3, 3, 1))


@pytest.mark.parametrize(
    "case",
    ["goodenough-reduced", "goodenough-general", "triangular-reduced", "triangular-general"],
)
def test_bogoliubov_normalisation_and_eigen_equation(case, goodenough):
    """From solve(): X^H X - Y^H Y = 1 (paraunitarity), and each mode satisfies the bosonic
    eigen-equation g h(k) [X; Y]_n = omega_n [X; Y]_n with g = diag(1, -1), h from
    hamiltonian(). The coplanar 120-degree state has real coefficients too, so both solvers
    apply to it."""
    if case.startswith("triangular"):
        swt = SpinWaveTheory(triangular_120(), solver=case.split("-")[1])
        w = swt.parameter_weights(None)
    else:
        model, _ = goodenough
        swt = SpinWaveTheory(model.system, solver=case.split("-")[1])
        w = swt.parameter_weights(np.array([model.best_fit, [-15.0, 2.0, 0.5, -1.0, 1.2, 0.1]]))
    k = torch.tensor(np.random.default_rng(6).uniform(0.05, 0.95, (12, 3)), dtype=torch.float64)
    omega, x, y, bad = swt.solve(k, w)
    assert not bad.any()
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype)
    norm = x.mH @ x - y.mH @ y
    assert (norm - eye).abs().max().item() < 1e-9
    h = swt.hamiltonian(k, w)
    t = torch.cat([x, y], dim=-2)
    g = torch.cat([torch.ones(n), -torch.ones(n)]).to(h.dtype)
    residual = g[:, None] * (h @ t) - t * omega.unsqueeze(-2).to(h.dtype)
    assert residual.abs().max().item() < 1e-9 * h.abs().max().item()
    assert omega.min().item() > 1e-3  # away from Goldstone points, all modes are proper


def test_goldstone_modes():
    """Goldstone's theorem. Isotropic collinear AFM: two zero modes at the magnetic zone
    centre. Rb2MnF4 (D = 0): at Q = (1/2, 1/2, l) and (0, 0, l); PCSMO Goodenough with D = 0
    at Gamma: two zero modes; with the hard axis D > 0 only the in-plane rotation stays
    gapless: exactly one zero mode."""
    model = load_model("rb2mnf4")
    q = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.3], [1.5, -0.5, 1.0]])
    e = SpinWaveTheory(model.system).calculate(q, model.best_fit, formfactor=False).energies
    assert np.all(e[0, 0, :, :2] < 1e-3) and np.all(e[0, 0, :, 2:] > 1.0)
    good = load_model("goodenough")
    p_iso = np.array(good.best_fit)
    p_iso[-1] = 0.0
    res = SpinWaveTheory(good.system).calculate(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [p_iso, good.best_fit], formfactor=False, twins=False
    )
    e = res.energies[:, 0]
    assert np.all(e[0, :, :2] < 1e-3) and np.all(e[0, :, 2] > 1.0)
    assert np.all(e[1, :, 0] < 1e-3) and np.all(e[1, :, 1] > 1.0)


def test_periodicity_in_magnetic_reciprocal_lattice(goodenough):
    """omega(k + G) = omega(k) for G a reciprocal vector of the magnetic (2a x 2b x c) cell:
    in conventional r.l.u. G = (1/2, 0, 0), (0, 1/2, 0), (0, 0, 1) and combinations."""
    model, swt = goodenough
    q = np.random.default_rng(7).uniform(-1, 1, (20, 3))
    shifts = np.array([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1], [-1.5, 2.5, -3]])
    qs = np.concatenate([q] + [q + s for s in shifts])
    e = swt.calculate(qs, model.best_fit, twins=False, return_sab=False).energies[0, 0]
    e = e.reshape(len(shifts) + 1, len(q), -1)
    for i in range(1, len(shifts) + 1):
        np.testing.assert_allclose(e[i], e[0], rtol=0, atol=1e-9)
    # the shift is not trivially invisible: a non-reciprocal-lattice shift changes omega
    e_half = swt.calculate(q + [0.25, 0, 0], model.best_fit, twins=False, return_sab=False)
    assert np.abs(e_half.energies[0, 0] - e[0]).max() > 1.0


def test_l_independence_of_pcsmo_energies(goodenough):
    """One bilayer: no bond has a c component of its cell translation, so omega does not
    depend on L; the intensities do (the Mn sit at z = +-0.1)."""
    model, swt = goodenough
    hk = np.random.default_rng(8).uniform(-1, 1, (15, 2))
    ls = [0.0, 0.37, 1.5, -2.2, 4.0]
    q = np.concatenate([np.column_stack([hk, np.full(len(hk), el)]) for el in ls])
    res = swt.calculate(q, model.best_fit, twins=False)
    e = res.energies[0, 0].reshape(len(ls), len(hk), -1)
    for i in range(1, len(ls)):
        np.testing.assert_allclose(e[i], e[0], rtol=0, atol=1e-9)
    total = res.sperp[0, 0].sum(-1).reshape(len(ls), len(hk))
    assert np.abs(total[2] - total[0]).max() > 0.05 * total[0].max()


def test_twin_rotated_90_degrees(goodenough):
    """A twin rotated by R (90 degrees about z) seen at lab Q equals the untwinned crystal at
    crystal Q' = R^T Q, with S^ab_lab = R S^ab_crystal(Q') R^T and the same S_perp. For the
    orthorhombic cell Q_cart = 2 pi (h/a, k/b, l/c), so R^T Q_cart = 2 pi (k/b, -h/a, l/c),
    i.e. Q' = (k a/b, -h b/a, l) in r.l.u."""
    model, _ = goodenough
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    twinned = dataclasses.replace(model.system, twins=(Twin(np.eye(3), 0.3), Twin(rot, 0.7)))
    swt = SpinWaveTheory(twinned)
    q = np.random.default_rng(9).uniform(-1, 1, (20, 3))
    a, b = 5.408, 5.4599  # conventional cell of PCSMO
    q_crys = np.column_stack([q[:, 1] * a / b, -q[:, 0] * b / a, q[:, 2]])
    res = swt.calculate(q, model.best_fit)
    ref = swt.calculate(q_crys, model.best_fit, twins=False)
    np.testing.assert_allclose(res.twin_weights, [0.3, 0.7])
    np.testing.assert_allclose(res.energies[0, 1], ref.energies[0, 0], atol=1e-9)
    # the rotated twin really differs from the crystal at the same lab Q
    assert np.abs(res.energies[0, 1] - res.energies[0, 0]).max() > 1.0
    sab_lab = np.einsum("ab,qnbc,dc->qnad", rot, ref.sab[0, 0], rot)
    for iq in range(len(q)):
        e, s_twin = group_sum(res.energies[0, 1, iq], res.sab[0, 1, iq], 1e-4)
        _, s_expect = group_sum(ref.energies[0, 0, iq], sab_lab[iq], 1e-4)
        np.testing.assert_allclose(s_twin, s_expect, atol=1e-8 * np.abs(s_expect).max())
        _, p_twin = group_sum(res.energies[0, 1, iq], res.sperp[0, 1, iq], 1e-4)
        _, p_expect = group_sum(ref.energies[0, 0, iq], ref.sperp[0, 0, iq], 1e-4)
        np.testing.assert_allclose(p_twin, p_expect, rtol=1e-7, atol=1e-9 * p_expect.max())


# ------------------------------------------------------------------ instability


def classical_min_eigenvalues(system, params, k_lswt):
    """Smallest eigenvalue (P, K) of the classical Hessian of the energy around the assumed
    ordered state, written independently of the engine, in Fourier space.

    Each spin S_i (n_i sqrt(1 - |e|^2) + e) is tilted by e = c1 e1_i + c2 e2_i (e1, e2 _|_ n_i).
    To second order (linear terms vanish at a stationary state):
      bond i-j: J S_i S_j [e_i.e_j - (n_i.n_j)(|e_i|^2 + |e_j|^2)/2]
      site i:   S_i^2 [e_i^T A e_i - (n_i^T A n_i)|e_i|^2] - mu_B g S_i (B.n_i)|e_i|^2 / 2
    The state is a local minimum iff M(k) >= 0 at every k. Isotropic (scalar) exchange only.
    """
    names = system.parameters
    n = system.n_sites
    nvec = np.array([s.unit_direction for s in system.sites])
    spins = np.array([s.spin for s in system.sites])
    frames = []
    for v in nvec:
        ref = np.array([1.0, 0, 0]) if abs(v[0]) < 0.9 else np.array([0, 1.0, 0])
        e1 = ref - (ref @ v) * v
        e1 /= np.linalg.norm(e1)
        frames.append(np.stack([e1, np.cross(v, e1)]))
    frames = np.array(frames)  # (n, 2, 3)
    field = np.asarray(system.field, dtype=float)
    out = np.zeros((len(params), len(k_lswt)))
    for ip, p in enumerate(np.atleast_2d(params)):
        value = dict(zip(names, p, strict=True))
        m = np.zeros((len(k_lswt), 2 * n, 2 * n), dtype=complex)
        for c in system.couplings:
            assert np.allclose(c.matrix, c.matrix[0, 0] * np.eye(3))
            j = c.matrix[0, 0] * (value[c.parameter] if c.parameter else 1.0)
            i1, i2 = c.site1, c.site2
            ss = spins[i1] * spins[i2] * j
            block = ss / 2 * frames[i1] @ frames[i2].T  # (2, 2)
            phase = np.exp(2j * np.pi * k_lswt @ np.asarray(c.offset, dtype=float))
            m[:, 2 * i1 : 2 * i1 + 2, 2 * i2 : 2 * i2 + 2] += phase[:, None, None] * block
            m[:, 2 * i2 : 2 * i2 + 2, 2 * i1 : 2 * i1 + 2] += phase.conj()[:, None, None] * block.T
            diag = -ss * (nvec[i1] @ nvec[i2]) / 2
            for i in (i1, i2):
                m[:, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] += diag * np.eye(2)
        for a in system.anisotropies:
            mat = a.matrix * (value[a.parameter] if a.parameter else 1.0)
            mat = (mat + mat.T) / 2
            i = a.site
            local = frames[i] @ mat @ frames[i].T - (nvec[i] @ mat @ nvec[i]) * np.eye(2)
            m[:, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] += spins[i] ** 2 * local
        for i, site in enumerate(system.sites):
            zeeman = -MU_B * site.g * spins[i] * (field @ nvec[i]) / 2
            m[:, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] += zeeman * np.eye(2)
        out[ip] = np.linalg.eigvalsh(m)[:, 0]
    return out


def in_plane_grid(n):
    """n x n grid covering the magnetic Brillouin zone of PCSMO (conventional r.l.u.)."""
    g = np.arange(n) / (2 * n)
    hh, kk = np.meshgrid(g, g)
    return np.column_stack([hh.ravel(), kk.ravel(), np.zeros(n * n)])


def test_ferromagnetic_bonds_made_antiferromagnetic_are_unstable(goodenough):
    """JF1 = +15 (the parallel zig-zag bonds made strongly AFM): the CE state is no longer a
    minimum. stable must be False, energies NaN exactly at the Q points where the
    independent classical Hessian has a negative eigenvalue, finite elsewhere."""
    model, swt = goodenough
    p = np.array(model.best_fit)
    p[0] = 15.0
    q = in_plane_grid(4)
    res = swt.calculate(q, p, twins=False)
    assert not res.stable[0]
    lam = classical_min_eigenvalues(model.system, p[None], q * 2)[0]  # LSWT k = 2 * Q
    scale = 15 * (7 / 4) ** 2
    assert np.all((lam < -1e-3 * scale) | (lam > -1e-9 * scale))  # no borderline points
    bad_q = np.isnan(res.energies[0, 0]).all(-1)
    assert bad_q.any()
    assert bad_q.tolist() == (lam < 0).tolist()
    assert np.isfinite(res.energies[0, 0][~bad_q]).all()
    # ... and the best fit is stable there, with the classical Hessian >= 0
    best = swt.calculate(q, model.best_fit, twins=False, return_sab=False)
    assert best.stable[0]
    lam = classical_min_eigenvalues(model.system, np.array([model.best_fit]), q * 2)
    assert lam.min() > -1e-9 * scale


# DESIGN.md section 3: "about 1 in 6 Goodenough and 1 in 2 Dimer draws from the ranges
# below are unstable". Measured with this engine (flag over an in-plane Q grid, confirmed
# draw by draw by the classical Hessian): Goodenough 0.116 +- 0.007 (2000 draws, 12 x 12
# grid) and 0.128 +- 0.006 (3000 draws, 8 x 8); Dimer 0.613 +- 0.011 and 0.588 +- 0.009. So
# the DESIGN figures are rough (Goodenough nearer 1 in 8, Dimer nearer 3 in 5), so the
# fraction is not asserted; the check is the draw-by-draw agreement with the independent
# classical criterion, over a sample that contains both stable and unstable draws.
@pytest.mark.parametrize("name,design", [("goodenough", 1 / 6), ("dimer", 1 / 2)])
def test_unstable_fraction_of_uniform_draws(name, design):
    model = load_model(name)
    swt = SpinWaveTheory(model.system)
    n = 300
    params = model.sample(n, 2024)
    q = in_plane_grid(4)
    res = swt.calculate(q, params, formfactor=False, twins=False, return_sab=False)
    # the engine's flag agrees draw by draw with the independent classical criterion
    lam = classical_min_eigenvalues(model.system, params, q * 2).min(1)
    scale = np.abs(params[:, :5]).max(1) * (7 / 4) ** 2
    clear = (lam < -1e-4 * scale) | (lam > -1e-9 * scale)
    assert clear.mean() > 0.97  # almost no borderline draws
    np.testing.assert_array_equal(res.stable[clear], lam[clear] > -1e-9 * scale[clear])
    assert 0.03 < 1 - res.stable.mean() < 0.97, (name, design)
