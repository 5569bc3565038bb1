"""Enumerate the bonds of a crystal and sort them into distance shells.

A bond joins site i in cell (0,0,0) to site j in cell `offset`; (i, j, d) and (j, i, -d) are
the same bond and only one of them is listed, so each bond is counted once, as in SpinW.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exp2sim.spinwave.lattice import Lattice

SHELL_TOLERANCE = 1e-3  # Angstrom: bonds closer in length than this share a shell


@dataclass(frozen=True)
class Bond:
    """One bond: sites (i, j), cell offset of j, length in Angstrom, shell number (1-based)."""

    site1: int
    site2: int
    offset: tuple[int, int, int]
    length: float
    shell: int


def find_bonds(lattice: Lattice, positions: np.ndarray, max_shell: int) -> list[Bond]:
    """All bonds of the first `max_shell` distance shells, sorted by length.

    positions: fractional coordinates of the sites, shape (n_sites, 3).
    """
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError("positions must have shape (n_sites, 3)")
    if max_shell < 1:
        raise ValueError("max_shell must be at least 1")
    vecs = lattice.vectors
    # Search enough neighbouring cells to contain max_shell distinct distances.
    reach = 1
    while True:
        bonds = _bonds_within(lattice, pos, reach)
        lengths = np.array([b[3] for b in bonds])
        shells = _shell_edges(lengths)
        # The shortest cell vector bounds the distance fully covered by `reach` cells.
        covered = reach * np.min(np.linalg.norm(vecs, axis=1)) * _min_sin(vecs)
        if len(shells) > max_shell and shells[max_shell] < covered:
            break
        if reach > 6:
            break
        reach += 1
    out = []
    for i, j, off, length in bonds:
        shell = int(np.searchsorted(shells, length - SHELL_TOLERANCE / 2))
        if shell <= max_shell:
            out.append(Bond(i, j, off, length, shell))
    return out


def _min_sin(vecs: np.ndarray) -> float:
    """Smallest ratio of a cell height to its edge, a safe bound for skewed cells."""
    vol = abs(np.linalg.det(vecs))
    areas = [np.linalg.norm(np.cross(vecs[(k + 1) % 3], vecs[(k + 2) % 3])) for k in range(3)]
    heights = [vol / areas[k] for k in range(3)]
    return min(h / np.linalg.norm(vecs[k]) for k, h in enumerate(heights))


def _bonds_within(lattice: Lattice, pos: np.ndarray, reach: int) -> list[tuple]:
    n = len(pos)
    r = np.arange(-reach, reach + 1)
    offs = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(len(offs)), indexing="ij")
    i, j, k = i.ravel(), j.ravel(), k.ravel()
    d = offs[k]
    # keep one of (i, j, d) / (j, i, -d): i < j, or i == j with d lexicographically positive
    d_positive = (d[:, 0] > 0) | (
        (d[:, 0] == 0) & ((d[:, 1] > 0) | ((d[:, 1] == 0) & (d[:, 2] > 0)))
    )
    keep = (i < j) | ((i == j) & d_positive)
    i, j, d = i[keep], j[keep], d[keep]
    lengths = np.linalg.norm(lattice.to_cartesian(pos[j] + d - pos[i]), axis=1)
    found = [
        (int(a), int(b), tuple(int(x) for x in off), float(length))
        for a, b, off, length in zip(i, j, d, lengths, strict=True)
    ]
    found.sort(key=lambda b: (round(b[3], 9), b[0], b[1], b[2]))
    return found


def _shell_edges(lengths: np.ndarray) -> np.ndarray:
    """Upper edges of the distance shells: shell s holds lengths <= edges[s-1] (+tol)."""
    if len(lengths) == 0:
        return np.zeros(0)
    breaks = np.nonzero(np.diff(lengths) > SHELL_TOLERANCE)[0]
    # edges[k] is the last length of shell k+1; prepend 0 so searchsorted gives 1-based shells
    return np.concatenate([[0.0], lengths[breaks], [lengths[-1]]])
