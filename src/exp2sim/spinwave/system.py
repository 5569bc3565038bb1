"""Description of a magnetic system: sites, spins, couplings, anisotropies, field and twins.

The Hamiltonian follows SpinW's convention (energies in meV, each bond counted once, J > 0
antiferromagnetic):

    H = sum_bonds S_i^T J_ij S_j + sum_i S_i^T A_i S_i + mu_B sum_i B^T g_i S_i

Every coupling and anisotropy matrix may be multiplied by a named model parameter, so one
compiled system serves a whole family of parameter sets (the Hamiltonian is linear in them).
Positions are fractional coordinates of the magnetic (LSWT) cell; spin directions and
matrices are Cartesian (a along x, b in the xy plane).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from exp2sim.spinwave.lattice import Lattice


def _as_matrix(value: float | np.ndarray, what: str) -> np.ndarray:
    """A scalar J becomes J * identity; a 3x3 array is taken as it is."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = float(arr) * np.eye(3)
    if arr.shape != (3, 3):
        raise ValueError(f"{what} must be a number or a 3x3 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or Inf")
    return arr


@dataclass(frozen=True)
class Site:
    """A magnetic site of the LSWT cell.

    position: fractional coordinates (3,); spin: spin length S; direction: Cartesian (3,)
    ordered-moment direction (normalised internally); ion: magnetic form factor name such as
    "Mn3+" (None for no form factor); g: Lande g factor (for the Zeeman term).
    """

    name: str
    position: tuple[float, float, float]
    spin: float
    direction: tuple[float, float, float]
    ion: str | None = None
    g: float = 2.0

    def __post_init__(self) -> None:
        pos = np.asarray(self.position, dtype=float)
        d = np.asarray(self.direction, dtype=float)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            raise ValueError(f"site {self.name!r}: position must be 3 finite numbers")
        if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) < 1e-12:
            raise ValueError(f"site {self.name!r}: direction must be a non-zero 3-vector")
        if not np.isfinite(self.spin) or self.spin <= 0:
            raise ValueError(f"site {self.name!r}: spin length must be positive")

    @property
    def unit_direction(self) -> np.ndarray:
        d = np.asarray(self.direction, dtype=float)
        return d / np.linalg.norm(d)


@dataclass(frozen=True)
class Coupling:
    """Exchange bond from site1 in cell (0,0,0) to site2 in cell `offset`.

    matrix: 3x3 exchange matrix in meV (a scalar J means J * identity; the antisymmetric part
    is the Dzyaloshinskii-Moriya interaction). If `parameter` names a model parameter, the
    matrix is multiplied by that parameter's value.
    """

    site1: int
    site2: int
    offset: tuple[int, int, int]
    matrix: np.ndarray
    parameter: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", _as_matrix(self.matrix, "exchange"))
        off = np.asarray(self.offset)
        if off.shape != (3,) or not np.all(off == np.round(off)):
            raise ValueError(f"bond offset must be 3 integers, got {self.offset}")
        object.__setattr__(self, "offset", tuple(int(x) for x in off))
        if self.site1 == self.site2 and self.offset == (0, 0, 0):
            raise ValueError("a bond must join two different spins (use an anisotropy instead)")


@dataclass(frozen=True)
class Anisotropy:
    """Single-ion anisotropy S^T A S on one site (meV), optionally scaled by a parameter."""

    site: int
    matrix: np.ndarray
    parameter: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", _as_matrix(self.matrix, "anisotropy"))


@dataclass(frozen=True)
class Twin:
    """A crystal domain rotated by `rotation` (Cartesian 3x3) with volume fraction `weight`."""

    rotation: np.ndarray
    weight: float

    def __post_init__(self) -> None:
        rot = np.asarray(self.rotation, dtype=float)
        if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
            raise ValueError("twin rotation must be a finite 3x3 matrix")
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6):
            raise ValueError("twin rotation must be orthogonal")
        if not (self.weight >= 0):
            raise ValueError("twin weight must be non-negative")
        object.__setattr__(self, "rotation", rot)


@dataclass(frozen=True)
class SpinSystem:
    """A magnetic structure with its spin Hamiltonian.

    lattice: the magnetic (LSWT) cell. supercell: how many conventional cells it spans along
    a, b, c; wave vectors are given by users in r.l.u. of the conventional cell
    (h_lswt = supercell * h). parameters: names of the model parameters, in order.
    field: applied magnetic field, Cartesian (3,), Tesla.
    """

    lattice: Lattice
    sites: tuple[Site, ...]
    couplings: tuple[Coupling, ...] = ()
    anisotropies: tuple[Anisotropy, ...] = ()
    parameters: tuple[str, ...] = ()
    field: tuple[float, float, float] = (0.0, 0.0, 0.0)
    twins: tuple[Twin, ...] = dataclasses.field(default_factory=lambda: (Twin(np.eye(3), 1.0),))
    supercell: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        object.__setattr__(self, "couplings", tuple(self.couplings))
        object.__setattr__(self, "anisotropies", tuple(self.anisotropies))
        object.__setattr__(self, "parameters", tuple(self.parameters))
        object.__setattr__(self, "twins", tuple(self.twins))
        n = len(self.sites)
        if n == 0:
            raise ValueError("a spin system needs at least one magnetic site")
        if len(set(self.parameters)) != len(self.parameters):
            raise ValueError("parameter names must be unique")
        for c in self.couplings:
            if not (0 <= c.site1 < n and 0 <= c.site2 < n):
                raise ValueError(f"bond refers to site {max(c.site1, c.site2)} of {n}")
            if c.parameter is not None and c.parameter not in self.parameters:
                raise ValueError(f"bond uses unknown parameter {c.parameter!r}")
        for a in self.anisotropies:
            if not 0 <= a.site < n:
                raise ValueError(f"anisotropy refers to site {a.site} of {n}")
            if a.parameter is not None and a.parameter not in self.parameters:
                raise ValueError(f"anisotropy uses unknown parameter {a.parameter!r}")
        if len(self.twins) == 0:
            raise ValueError("at least one twin (the crystal itself) is needed")
        if sum(t.weight for t in self.twins) <= 0:
            raise ValueError("twin weights must not all be zero")
        f = np.asarray(self.field, dtype=float)
        if f.shape != (3,) or not np.all(np.isfinite(f)):
            raise ValueError("field must be 3 finite numbers (Tesla)")
        sc = tuple(int(x) for x in self.supercell)
        if len(sc) != 3 or min(sc) < 1:
            raise ValueError("supercell multiples must be three positive integers")
        object.__setattr__(self, "supercell", sc)

    @property
    def n_sites(self) -> int:
        return len(self.sites)
