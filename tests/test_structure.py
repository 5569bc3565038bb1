"""Lattices, bonds, form factors, system validation and model parameters."""

import numpy as np
import pytest

from exp2sim.spinwave import Coupling, Lattice, Site, SpinSystem, Twin, find_bonds, load_model
from exp2sim.spinwave.formfactor import form_factor, j0_coefficients
from exp2sim.spinwave.models.pcsmo import CELL, pcsmo_sites


def test_reciprocal_lattice_is_dual_to_the_cell():
    lat = Lattice(3.0, 4.0, 5.0, 80.0, 95.0, 110.0)
    np.testing.assert_allclose(lat.vectors @ lat.reciprocal.T, 2 * np.pi * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(lat.vectors, axis=1), [3, 4, 5])
    hexagonal = Lattice(3.0, 3.0, 8.0, gamma=120.0)
    np.testing.assert_allclose(hexagonal.volume, 3 * 3 * 8 * np.sin(np.radians(120)))
    np.testing.assert_allclose(
        np.linalg.norm(hexagonal.q_cartesian([1, 0, 0])), 4 * np.pi / (3 * np.sqrt(3))
    )


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, 1, 1, 90, 90, 180), (1, np.nan, 1)])
def test_bad_lattices_are_refused(bad):
    with pytest.raises(ValueError):
        Lattice(*bad)


def test_pcsmo_bond_shells_match_the_design_brief():
    """DESIGN.md: 3.8424 A (32 bonds), 3.8532 (8), 5.408 (16), ..., 7.685 (32)."""
    bonds = find_bonds(CELL.supercell((2, 2, 1)), [s.position for s in pcsmo_sites()], max_shell=8)
    by_shell = {}
    for b in bonds:
        by_shell.setdefault(b.shell, []).append(b.length)
    expected = {1: (3.8424, 32), 2: (3.8532, 8), 3: (5.408, 16), 8: (7.685, 32)}
    for shell, (length, count) in expected.items():
        assert len(by_shell[shell]) == count
        np.testing.assert_allclose(by_shell[shell], length, atol=1e-3)
    keys = {(b.site1, b.site2, b.offset) for b in bonds}
    reverse = {(b.site2, b.site1, tuple(-x for x in b.offset)) for b in bonds}
    assert len(keys) == len(bonds) and not (keys & reverse - {k for k in keys if k[0] == k[1]})


def test_bonds_of_a_simple_cubic_lattice():
    bonds = find_bonds(Lattice(2.0, 2.0, 2.0), [[0, 0, 0]], max_shell=3)
    counts = [sum(b.shell == s for b in bonds) for s in (1, 2, 3)]
    assert counts == [3, 6, 4]  # 6, 12, 8 neighbours, each bond counted once
    np.testing.assert_allclose(
        sorted({round(b.length, 6) for b in bonds}), [2, 2 * 2**0.5, 2 * 3**0.5], rtol=1e-6
    )


def test_form_factor_is_one_at_zero_and_decays():
    q = np.linspace(0, 8, 50)
    for ion in ("Mn3+", "Mn4+", "Mn2+", "Cu2+"):
        f = form_factor(ion, q)
        assert abs(f[0] - 1) < 2e-3
        assert np.all(np.diff(f[:30]) < 0)
    np.testing.assert_array_equal(form_factor(None, q), 1.0)
    assert j0_coefficients("Mn3+") != j0_coefficients("Mn4+")
    for bad in ("Xx3+", "Mn9+", "manganese"):
        with pytest.raises(ValueError):
            j0_coefficients(bad)


def _site(**kw):
    args = dict(name="A", position=(0, 0, 0), spin=1.0, direction=(0, 0, 1))
    args.update(kw)
    return Site(**args)


def test_spin_system_validation():
    lat = Lattice(3, 3, 3)
    with pytest.raises(ValueError, match="direction"):
        _site(direction=(0, 0, 0))
    with pytest.raises(ValueError, match="spin"):
        _site(spin=-1)
    with pytest.raises(ValueError, match="3x3"):
        Coupling(0, 0, (1, 0, 0), np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        Coupling(0, 0, (1, 0, 0), np.nan)
    with pytest.raises(ValueError, match="different spins"):
        Coupling(0, 0, (0, 0, 0), 1.0)
    with pytest.raises(ValueError, match="site"):
        SpinSystem(lat, (_site(),), (Coupling(0, 1, (0, 0, 0), 1.0),))
    with pytest.raises(ValueError, match="unknown parameter"):
        SpinSystem(lat, (_site(),), (Coupling(0, 0, (1, 0, 0), 1.0, "J"),))
    with pytest.raises(ValueError, match="orthogonal"):
        Twin(np.ones((3, 3)), 1.0)


def test_model_sampling_and_parameter_parsing():
    model = load_model("goodenough")
    a, b = model.sample(500, 7), model.sample(500, 7)
    np.testing.assert_array_equal(a, b)
    lo, hi = np.array(model.ranges).T
    assert np.all((a >= lo) & (a <= hi))
    # uniform: every parameter's sample mean near the middle of its range
    assert np.all(np.abs(a.mean(0) - (lo + hi) / 2) < 0.1 * (hi - lo))
    np.testing.assert_array_equal(model.parse_params(None), model.best_fit)
    np.testing.assert_array_equal(model.parse_params("1,2,3,4,5,6"), [1, 2, 3, 4, 5, 6])
    for bad in ("1,2", "a,b,c,d,e,f", "1,2,3,4,5,nan"):
        with pytest.raises(ValueError):
            model.parse_params(bad)
    with pytest.raises(ValueError, match="unknown model"):
        load_model("nosuchmodel")


@pytest.mark.parametrize("name", ["goodenough", "dimer"])
def test_ranges_around_the_best_fit(name):
    model = load_model(name)
    assert model.around_best_fit(1.0) is model
    narrow = model.around_best_fit(0.5)
    lo, hi = np.array(model.ranges).T
    nlo, nhi = np.array(narrow.ranges).T
    best = np.array(model.best_fit)
    np.testing.assert_allclose(nhi - nlo, 0.5 * (hi - lo))  # half of every range
    assert np.all((nlo >= lo - 1e-12) & (nhi <= hi + 1e-12))  # inside the training ranges
    assert np.all((best >= nlo) & (best <= nhi))  # around the best fit
    inside = (best - (hi - lo) / 4 >= lo) & (best + (hi - lo) / 4 <= hi)
    np.testing.assert_allclose(((nlo + nhi) / 2)[inside], best[inside])  # centred on it
    draws = narrow.sample(200, 0)
    assert np.all((draws >= nlo) & (draws <= nhi))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="spread"):
            model.around_best_fit(bad)
