"""Rb2MnF4: a square-lattice Heisenberg antiferromagnet (out-of-distribution test material).

One MnF2 layer of the I4/mmm cell (a = 4.215 A, c = 13.77 A); the layers are magnetically
decoupled, so a single layer is modelled. Neel order with moments along c, S = 5/2, in a
2 x 2 x 1 magnetic supercell. Parameters [J1, J2] (meV): nearest and next-nearest neighbours.
"""

from __future__ import annotations

from exp2sim.spinwave.bonds import find_bonds
from exp2sim.spinwave.lattice import Lattice
from exp2sim.spinwave.models.base import SpinModel
from exp2sim.spinwave.system import Coupling, Site, SpinSystem

CELL = Lattice(4.215, 4.215, 13.77)
PARAMS = ("J1", "J2")
BEST_FIT = (0.65, 0.0)
RANGES = ((0.0, 1.0), (-0.2, 0.2))


def rb2mnf4() -> SpinModel:
    """Square-lattice Neel antiferromagnet Rb2MnF4 [J1, J2] (meV)."""
    lattice = CELL.supercell((2, 2, 1))
    sites = tuple(
        Site(f"Mn{i}", (x, y, 0.0), 2.5, (0.0, 0.0, 1.0 if (i in (0, 3)) else -1.0), "Mn2+")
        for i, (x, y) in enumerate([(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)])
    )
    pos = [s.position for s in sites]
    bonds = find_bonds(lattice, pos, max_shell=2)
    couplings = tuple(
        Coupling(b.site1, b.site2, b.offset, 1.0, "J1" if b.shell == 1 else "J2") for b in bonds
    )
    system = SpinSystem(lattice, sites, couplings, parameters=PARAMS, supercell=(2, 2, 1))
    return SpinModel(
        "rb2mnf4", system, BEST_FIT, RANGES, "Rb2MnF4 square-lattice antiferromagnet, S = 5/2"
    )
