"""Spin-wave physics: crystals, magnetic systems, linear spin-wave theory, built-in models.

Reads like SpinW / Sunny: lattice -> spin system -> spin-wave theory -> intensities::

    from exp2sim.spinwave import SpinWaveTheory, load_model
    model = load_model("goodenough")
    swt = SpinWaveTheory(model.system)
    res = swt.calculate([[0.5, 0, 0]], model.best_fit)

This package knows nothing of instruments or networks.
"""

from exp2sim.spinwave.bonds import Bond, find_bonds
from exp2sim.spinwave.lattice import Lattice
from exp2sim.spinwave.lswt import SpinWaveResult, SpinWaveTheory, UnstableParametersError
from exp2sim.spinwave.models import BUILTIN, SpinModel, load_model
from exp2sim.spinwave.system import Anisotropy, Coupling, Site, SpinSystem, Twin

__all__ = [
    "Anisotropy",
    "BUILTIN",
    "Bond",
    "Coupling",
    "Lattice",
    "Site",
    "SpinModel",
    "SpinSystem",
    "SpinWaveResult",
    "SpinWaveTheory",
    "Twin",
    "UnstableParametersError",
    "find_bonds",
    "load_model",
]
