"""exp2sim: analyse inelastic neutron scattering experiments with models trained on simulations."""

__version__ = "0.1.0"
