"""Pr(Ca,Sr)2Mn2O7 (PCSMO) in the CE-type order: the Goodenough and Dimer models.

As the data of Johnstone et al. (PRL 109, 237202 (2012)) and Anker et al. (2023) were made:
one bilayer in a 2a x 2b x c supercell of the a = 5.408, b = 5.4599, c = 19.266 A cell, Mn
at z = +-0.1, 16 Mn with S = 7/4, moments along +-b. Wave vectors are given in r.l.u. of the
small (a, b, c) cell. The lower layer is the image (x, y + 1/2, -z) of the upper one.

Bond shells (A): 1: 3.8424 in-plane Mn3-Mn4; 2: 3.8532 across the bilayer; 3: 5.408 along a;
8: 7.685 in-plane diagonal. Assignments follow DESIGN.md section 3.
"""

from __future__ import annotations

import numpy as np

from exp2sim.spinwave.bonds import Bond, find_bonds
from exp2sim.spinwave.lattice import Lattice
from exp2sim.spinwave.models.base import SpinModel
from exp2sim.spinwave.system import Anisotropy, Coupling, Site, SpinSystem, Twin

CELL = Lattice(5.408, 5.4599, 19.266)
SPIN = 7 / 4
# (name, ion, x, y, up) in the upper layer (z = +0.1), fractional coordinates of the supercell
_UPPER = [
    ("Mn4", "Mn4+", 0.0, 0.0, True),
    ("Mn4", "Mn4+", 0.5, 0.5, True),
    ("Mn4", "Mn4+", 0.0, 0.5, False),
    ("Mn4", "Mn4+", 0.5, 0.0, False),
    ("Mn3", "Mn3+", 0.25, 0.75, True),
    ("Mn3", "Mn3+", 0.75, 0.75, True),
    ("Mn3", "Mn3+", 0.25, 0.25, False),
    ("Mn3", "Mn3+", 0.75, 0.25, False),
]
# The second twin: a and b exchanged (180 degree rotation about [1 1 0]).
TWINS = (
    Twin(np.eye(3), 0.5),
    Twin(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]), 0.5),
)

GOODENOUGH_PARAMS = ("JF1", "JA", "JF2", "JF3", "Jperp", "D")
GOODENOUGH_BEST = (-11.39, 1.5, -1.35, 1.5, 0.88, 0.074)
GOODENOUGH_RANGES = ((-20, 0), (0, 3), (-3, 3), (-3, 3), (0, 3), (0, 0.2))

DIMER_PARAMS = ("JFW", "JA1", "JA2", "JFS", "Jperp", "D")
DIMER_BEST = (-8.43, 1.52, 1.52, -14.2, 0.92, 0.073)
DIMER_RANGES = ((-20, 0), (-3, 3), (-3, 3), (-20, 0), (0, 3), (0, 0.2))


def pcsmo_sites() -> tuple[Site, ...]:
    """The 16 Mn sites: 8 in the upper layer, then their images (x, y + 1/2, -z)."""
    sites = []
    for z, shift in ((0.1, 0.0), (-0.1, 0.5)):
        for kind, ion, x, y, up in _UPPER:
            label = f"{kind}-{'up' if up else 'dn'}"
            sites.append(
                Site(label, (x, (y + shift) % 1.0, z), SPIN, (0.0, 1.0 if up else -1.0, 0.0), ion)
            )
    return tuple(sites)


def _classify(sites: tuple[Site, ...], lattice: Lattice) -> dict[str, list[Bond]]:
    """Sort the bonds of shells 1, 2, 3 and 8 into the kinds both models are built from."""
    pos = np.array([s.position for s in sites])
    up = np.array([s.unit_direction[1] > 0 for s in sites])
    mn3 = np.array([s.name.startswith("Mn3") for s in sites])
    kinds: dict[str, list[Bond]] = {k: [] for k in ("par", "anti", "perp", "mn3mn3", "jf2")}
    for b in find_bonds(lattice, pos, max_shell=8):
        i, j = b.site1, b.site2
        if b.shell == 1:
            kinds["par" if up[i] == up[j] else "anti"].append(b)
        elif b.shell == 2:
            kinds["perp"].append(b)
        elif b.shell == 3 and mn3[i] and mn3[j]:
            kinds["mn3mn3"].append(b)
        elif b.shell == 8 and not mn3[i] and not mn3[j] and up[i] == up[j]:
            # Mn4-Mn4 across a bridging Mn3 of the same zig-zag chain: the bond's midpoint is
            # a Mn3 site whose moment is parallel to both ends.
            mid = (pos[i] + pos[j] + np.asarray(b.offset)) / 2
            delta = (pos - mid + 0.5) % 1.0 - 0.5
            hit = np.nonzero(np.all(np.abs(delta) < 1e-6, axis=1))[0]
            if len(hit) == 1 and mn3[hit[0]] and up[hit[0]] == up[i]:
                kinds["jf2"].append(b)
    return kinds


def _mn3_side(b: Bond, sites: tuple[Site, ...]) -> float:
    """Sign of the x displacement from the Mn3 end of a shell-1 bond to its Mn4 end."""
    pos = np.array([s.position for s in sites])
    dx = pos[b.site2, 0] + b.offset[0] - pos[b.site1, 0]
    return float(np.sign(dx if sites[b.site1].name.startswith("Mn3") else -dx))


def _system(
    assign: list[tuple[Bond, str]], sites: tuple[Site, ...], params: tuple[str, ...]
) -> SpinSystem:
    lattice = CELL.supercell((2, 2, 1))
    couplings = tuple(Coupling(b.site1, b.site2, b.offset, 1.0, name) for b, name in assign)
    d = np.diag([0.0, 0.0, 1.0])
    anis = tuple(Anisotropy(i, d, "D") for i in range(len(sites)))
    return SpinSystem(
        lattice, sites, couplings, anis, parameters=params, twins=TWINS, supercell=(2, 2, 1)
    )


def goodenough() -> SpinModel:
    """CE Goodenough model [JF1, JA, JF2, JF3, Jperp, D] (meV)."""
    sites = pcsmo_sites()
    k = _classify(sites, CELL.supercell((2, 2, 1)))
    assign = (
        [(b, "JF1") for b in k["par"]]
        + [(b, "JA") for b in k["anti"]]
        + [(b, "JF2") for b in k["jf2"]]
        + [(b, "JF3") for b in k["mn3mn3"]]
        + [(b, "Jperp") for b in k["perp"]]
    )
    return SpinModel(
        "goodenough",
        _system(assign, sites, GOODENOUGH_PARAMS),
        GOODENOUGH_BEST,
        GOODENOUGH_RANGES,
        "PCSMO CE-type Goodenough model (Johnstone et al. 2012), 16 Mn, S = 7/4",
    )


def dimer() -> SpinModel:
    """Dimer (Zener-polaron-like) model [JFW, JA1, JA2, JFS, Jperp, D] (meV).

    Along each zig-zag chain strong (JFS) and weak (JFW) ferromagnetic Mn3-Mn4 bonds
    alternate: each Mn3 is strongly bound to the chain Mn4 on its +a side. JA1 is the
    antiparallel shell-1 bond of each Mn3 on its +a side, JA2 the one on its -a side.
    """
    sites = pcsmo_sites()
    k = _classify(sites, CELL.supercell((2, 2, 1)))
    assign = (
        [(b, "JFS" if _mn3_side(b, sites) > 0 else "JFW") for b in k["par"]]
        + [(b, "JA1" if _mn3_side(b, sites) > 0 else "JA2") for b in k["anti"]]
        + [(b, "Jperp") for b in k["perp"]]
    )
    return SpinModel(
        "dimer",
        _system(assign, sites, DIMER_PARAMS),
        DIMER_BEST,
        DIMER_RANGES,
        "PCSMO dimer model (Johnstone et al. 2012), 16 Mn, S = 7/4",
    )
