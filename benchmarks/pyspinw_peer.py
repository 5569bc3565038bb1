"""Optional speed peer: the PCSMO "Goodenough" model in pySpinW (Rust core).

pySpinW (PyPI ``pyspinw``, the Python port of SpinW) is NOT a dependency of
exp2sim.  It lives in its own virtualenv, e.g.::

    python3 -m venv /work/pyspinw-venv
    /work/pyspinw-venv/bin/pip install pyspinw==1.1.0b2 numpy scipy
    /work/pyspinw-venv/bin/python benchmarks/pyspinw_peer.py

The model follows DESIGN.md section 3 and the SpinW system test: a
2a x 2b x c supercell (10.816, 10.9198, 19.266 A) holding 16 Mn sites
(S = 7/4, spins along +-b), the upper layer at z = 0.1 and its images
(x, y+1/2, -z) below, with couplings

* JF1   shell-1 (3.8424 A) Mn3-Mn4 bonds between parallel spins,
* JA    shell-1 bonds between antiparallel spins,
* Jperp shell-2 (3.8532 A) bonds across the bilayer,
* JF3   shell-3 (5.408 A) Mn3-Mn3 bonds with equal labels,
* JF2   shell-8 (7.685 A) Mn4-Mn4 bonds bridged by a Mn3 of the same spin,
* D     single-ion anisotropy diag(0, 0, D) on every site.

Q is taken in small-cell r.l.u. (a = 5.408, b = 5.4599); the supercell
r.l.u. passed to pySpinW are (2h, 2k, l).

Threading: the Rust core parallelises with rayon, whose global pool size is
read once per process from ``RAYON_NUM_THREADS``.  Timings for a given
thread count therefore run in a fresh child process with that variable set.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

#: Best-fit Goodenough parameters (JF1, JA, JF2, JF3, Jperp, D) in meV.
GOODENOUGH_PARAMS: tuple[float, ...] = (-11.39, 1.5, -1.35, 1.5, 0.88, 0.074)

SMALL_CELL = (5.408, 5.4599, 19.266)
SUPERCELL = (2 * SMALL_CELL[0], 2 * SMALL_CELL[1], SMALL_CELL[2])
SPIN = 7.0 / 4.0

#: Upper-layer atoms: (label, ion, spin sign, fractional position).
_UPPER_ATOMS: tuple[tuple[str, str, int, tuple[float, float, float]], ...] = (
    ("Mn4-up", "Mn4", +1, (0.00, 0.00, 0.1)),
    ("Mn4-up", "Mn4", +1, (0.50, 0.50, 0.1)),
    ("Mn4-dn", "Mn4", -1, (0.00, 0.50, 0.1)),
    ("Mn4-dn", "Mn4", -1, (0.50, 0.00, 0.1)),
    ("Mn3-up", "Mn3", +1, (0.25, 0.75, 0.1)),
    ("Mn3-up", "Mn3", +1, (0.75, 0.75, 0.1)),
    ("Mn3-dn", "Mn3", -1, (0.25, 0.25, 0.1)),
    ("Mn3-dn", "Mn3", -1, (0.75, 0.25, 0.1)),
)

# Bond lengths (Angstrom) of the shells used by the model.
_D_SHELL1 = 0.5 * float(np.hypot(*SMALL_CELL[:2]))  # 3.8424, in-plane Mn3-Mn4
_D_SHELL2 = 0.2 * SMALL_CELL[2]  # 3.8532, across the bilayer
_D_SHELL3 = SMALL_CELL[0]  # 5.408, Mn3-Mn3 along a
_D_SHELL8 = float(np.hypot(*SMALL_CELL[:2]))  # 7.685, Mn4-Mn4 diagonal
_TOL = 1e-3


def available() -> bool:
    """Return True if pySpinW can be imported in this interpreter."""
    return importlib.util.find_spec("pyspinw") is not None


def _site_table() -> list[tuple[str, str, int, np.ndarray]]:
    """All 16 sites: the listed atoms and their (x, y+1/2, -z) images."""
    table = []
    for label, ion, sign, pos in _UPPER_ATOMS:
        table.append((label, ion, sign, np.array(pos)))
    for label, ion, sign, (x, y, z) in _UPPER_ATOMS:
        image = np.mod(np.array([x, y + 0.5, -z]), 1.0)
        table.append((label, ion, sign, image))
    return table


def build_goodenough(params: tuple[float, ...] = GOODENOUGH_PARAMS) -> Any:
    """Build the 16-site PCSMO Goodenough Hamiltonian as a ``pyspinw.Hamiltonian``.

    :param params: (JF1, JA, JF2, JF3, Jperp, D) in meV, SpinW sign
        convention (H = sum over bonds of J S_i.S_j, J < 0 ferromagnetic).
    :returns: the pySpinW Hamiltonian (one twin only).
    """
    import pyspinw as sw

    jf1, ja, jf2, jf3, jperp, d_aniso = params
    cell = sw.UnitCell(*SUPERCELL)
    table = _site_table()
    positions = np.array([row[3] for row in table])
    spins = np.array([[0.0, row[2] * SPIN, 0.0] for row in table])
    names = [f"{row[0]}_{i:02d}" for i, row in enumerate(table)]
    structure = sw.generate_structure(cell, positions=positions, spins=spins, names=names)

    sites = structure.sites
    info = {
        site.unique_id: (ion, sign, pos)
        for site, (_, ion, sign, pos) in zip(sites, table, strict=True)
    }

    # Every bond up to the longest shell, each listed once; the Hamiltonian
    # adds the reversed bond itself.
    candidates = sw.generate_exchanges(structure, max_distance=_D_SHELL8 + 0.01, j=1.0)

    exchanges = []
    for bond in candidates:
        j = _bond_coupling(bond, cell, info, jf1, ja, jf2, jf3, jperp)
        if j is not None:
            exchanges.append(
                sw.HeisenbergExchange(
                    bond.site_1, bond.site_2, j=j, cell_offset=bond.cell_offset, name=bond.name
                )
            )

    anisotropies = sw.matrix_anisotropies(structure, np.diag([0.0, 0.0, d_aniso]))
    return sw.Hamiltonian(structure, exchanges, anisotropies)


def _bond_coupling(
    bond: Any,
    cell: Any,
    info: dict[int, tuple[str, int, np.ndarray]],
    jf1: float,
    ja: float,
    jf2: float,
    jf3: float,
    jperp: float,
) -> float | None:
    """Exchange constant of one candidate bond, or None if the model omits it."""
    ion1, sign1, pos1 = info[bond.site_1.unique_id]
    ion2, sign2, pos2 = info[bond.site_2.unique_id]
    length = float(np.linalg.norm(bond.vector(cell)))

    if abs(length - _D_SHELL1) < _TOL:
        return jf1 if sign1 == sign2 else ja
    if abs(length - _D_SHELL2) < _TOL:
        return jperp
    if abs(length - _D_SHELL3) < _TOL:
        return jf3 if (ion1 == ion2 == "Mn3" and sign1 == sign2) else None
    if abs(length - _D_SHELL8) < _TOL and ion1 == ion2 == "Mn4" and sign1 == sign2:
        # Mn3 bridging site at the bond midpoint must carry the same spin.
        end = pos2 + bond.cell_offset.vector
        mid = np.mod(0.5 * (pos1 + end), 1.0)
        for ion, sign, pos in info.values():
            if ion == "Mn3" and np.allclose(np.mod(pos - mid + 0.5, 1.0), 0.5, atol=1e-6):
                return jf2 if sign == sign1 else None
    return None


def energies(hamiltonian: Any, q_small_rlu: np.ndarray, use_rust: bool = True) -> np.ndarray:
    """Sorted positive spin-wave energies (n_q, 16) at small-cell r.l.u. Q points."""
    e, _ = _energies_and_intensities(hamiltonian, q_small_rlu, use_rust)
    return e


def _energies_and_intensities(
    hamiltonian: Any, q_small_rlu: np.ndarray, use_rust: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Run pySpinW's energies+intensities on raw Q points (no Path object).

    ``Hamiltonian.energies_and_intensities`` wants a ``Path``; its internal
    ``_energies_and_intensities`` takes an (n, 3) array in r.l.u. of the
    model cell, which is what a benchmark wants.
    """
    q_super = np.asarray(q_small_rlu, dtype=float) * np.array([2.0, 2.0, 1.0])
    e, intensity = hamiltonian._energies_and_intensities(q_super, use_rust=use_rust)
    e = np.sort(np.real(np.asarray(e)), axis=1)
    n_modes = e.shape[1] // 2
    return e[:, n_modes:], np.asarray(intensity)


def _time_in_process(
    q_small_rlu: np.ndarray, repeats: int, params: tuple[float, ...]
) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` seconds per Q point in the current process."""
    hamiltonian = build_goodenough(params)
    _energies_and_intensities(hamiltonian, q_small_rlu[:2])  # warm-up
    best = np.inf
    e = np.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        e, _ = _energies_and_intensities(hamiltonian, q_small_rlu)
        best = min(best, time.perf_counter() - t0)
    return best / len(q_small_rlu), e


def _time_in_child(
    q_small_rlu: np.ndarray, repeats: int, threads: int, params: tuple[float, ...]
) -> tuple[float, np.ndarray]:
    """Time in a fresh interpreter with ``RAYON_NUM_THREADS=threads``."""
    with tempfile.TemporaryDirectory() as tmp:
        q_file = os.path.join(tmp, "q.npy")
        out_file = os.path.join(tmp, "out.npz")
        np.save(q_file, np.asarray(q_small_rlu, dtype=float))
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            q_file,
            out_file,
            str(repeats),
            ",".join(repr(float(p)) for p in params),
        ]
        subprocess.run(cmd, env=env, check=True)
        with np.load(out_file) as out:
            return float(out["s_per_q"]), out["energies"]


def time_goodenough(
    q_small_rlu: np.ndarray,
    repeats: int = 3,
    threads: int | None = None,
    params: tuple[float, ...] = GOODENOUGH_PARAMS,
) -> dict[str, Any]:
    """Time pySpinW (Rust core) energies+intensities for the Goodenough model.

    :param q_small_rlu: (n, 3) Q points in small-cell r.l.u.
    :param repeats: timed repeats; the best is kept.
    :param threads: thread count for the multi-threaded run (default: all cores).
    :returns: dict with ``s_per_q_1thread``, ``s_per_q_nthreads``, ``n_threads``
        (seconds per Q point, best of ``repeats``, model build excluded,
        Python-side setup inside pySpinW's call included) and ``energies``,
        the (n, 16) sorted positive modes from the one-thread run.
    """
    q = np.atleast_2d(np.asarray(q_small_rlu, dtype=float))
    n_threads = int(threads) if threads is not None else (os.cpu_count() or 1)
    s1, e1 = _time_in_child(q, repeats, 1, params)
    sn, en = _time_in_child(q, repeats, n_threads, params)
    if not np.allclose(e1, en, atol=1e-6):
        raise RuntimeError("pySpinW energies differ between thread counts")
    return {"s_per_q_1thread": s1, "s_per_q_nthreads": sn, "n_threads": n_threads, "energies": e1}


def _worker(argv: list[str]) -> None:
    """Child-process entry point: ``--worker q.npy out.npz repeats params``."""
    q_file, out_file, repeats, params = argv
    q = np.load(q_file)
    par = tuple(float(p) for p in params.split(","))
    s_per_q, e = _time_in_process(q, int(repeats), par)
    np.savez(out_file, s_per_q=s_per_q, energies=e)


def _compare_with_spinw(hamiltonian: Any) -> float | None:
    """Max |dE| of positive modes vs the SpinW reference (twin 1), if present."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(
            here, "..", "..", "shared", "data", "reference", "spinw", "pcsmo_spinw_reference.npz"
        ),
        "/work/shared/data/reference/spinw/pcsmo_spinw_reference.npz",
    ]
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
        return None
    with np.load(path) as ref:
        q = ref["hkl_input_rlu_small_cell"].T
        omega = np.sort(ref["omega_twin1"].T, axis=1)
    e_ref = omega[:, omega.shape[1] // 2 :]
    return float(np.max(np.abs(energies(hamiltonian, q) - e_ref)))


def main() -> None:
    """Print ms per Q for 2000 random in-plane Q and energies at two Q points."""
    if not available():
        print("pyspinw is not importable in this interpreter")
        return
    hamiltonian = build_goodenough()
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    for q in ([0.0, 0.0, 0.0], [0.5, 0.0, 0.0]):
        print(f"Q = {q} (small-cell r.l.u.): E+ =", energies(hamiltonian, np.array([q]))[0])
    dmax = _compare_with_spinw(hamiltonian)
    if dmax is not None:
        print(f"max |dE| vs SpinW reference (50 Q, positive modes): {dmax:.3e} meV")

    rng = np.random.default_rng(0)
    q = np.zeros((2000, 3))
    q[:, :2] = rng.uniform(-1.0, 1.0, size=(2000, 2))
    res = time_goodenough(q, repeats=3)
    print(
        f"pySpinW Rust core, 2000 Q: {1e3 * res['s_per_q_1thread']:.4f} ms/Q (1 thread), "
        f"{1e3 * res['s_per_q_nthreads']:.4f} ms/Q ({res['n_threads']} threads)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
    else:
        main()
