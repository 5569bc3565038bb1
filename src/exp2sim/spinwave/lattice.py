"""Crystal lattices: real-space cell vectors and reciprocal vectors.

Conventions (the same as SpinW's): the a axis lies along Cartesian x, b in the xy plane,
and c completes a right-handed set. Wave vectors are given in reciprocal lattice units
(r.l.u.) and converted to Cartesian inverse Angstrom, including the factor 2 pi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lattice:
    """A unit cell with lengths in Angstrom and angles in degrees."""

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0

    def __post_init__(self) -> None:
        lengths = np.array([self.a, self.b, self.c], dtype=float)
        angles = np.array([self.alpha, self.beta, self.gamma], dtype=float)
        if not np.all(np.isfinite(lengths)) or np.any(lengths <= 0):
            raise ValueError(f"lattice lengths must be positive, got {lengths.tolist()}")
        if not np.all(np.isfinite(angles)) or np.any(angles <= 0) or np.any(angles >= 180):
            raise ValueError(f"lattice angles must lie in (0, 180) degrees, got {angles.tolist()}")
        if not np.isfinite(self.volume) or self.volume <= 1e-9:
            raise ValueError("lattice angles do not form a valid cell")

    @property
    def vectors(self) -> np.ndarray:
        """Cell vectors as rows, shape (3, 3), Angstrom."""
        al, be, ga = np.radians([self.alpha, self.beta, self.gamma])
        ax = np.array([self.a, 0.0, 0.0])
        bx = self.b * np.array([np.cos(ga), np.sin(ga), 0.0])
        cx = np.cos(be)
        cy = (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
        cz = np.sqrt(max(1.0 - cx**2 - cy**2, 0.0))
        return np.stack([ax, bx, self.c * np.array([cx, cy, cz])])

    @property
    def volume(self) -> float:
        """Cell volume in cubic Angstrom."""
        return float(abs(np.linalg.det(self.vectors)))

    @property
    def reciprocal(self) -> np.ndarray:
        """Reciprocal vectors as rows, shape (3, 3), inverse Angstrom (2 pi included)."""
        return 2.0 * np.pi * np.linalg.inv(self.vectors).T

    def to_cartesian(self, fractional: np.ndarray) -> np.ndarray:
        """Fractional coordinates (..., 3) to Cartesian positions (..., 3) in Angstrom."""
        return np.asarray(fractional, dtype=float) @ self.vectors

    def q_cartesian(self, q_rlu: np.ndarray) -> np.ndarray:
        """Wave vectors (..., 3) in r.l.u. to Cartesian (..., 3) in inverse Angstrom."""
        return np.asarray(q_rlu, dtype=float) @ self.reciprocal

    def supercell(self, multiples: tuple[int, int, int]) -> Lattice:
        """The lattice of an (n_a, n_b, n_c) supercell with the same angles."""
        na, nb, nc = multiples
        return Lattice(self.a * na, self.b * nb, self.c * nc, self.alpha, self.beta, self.gamma)
