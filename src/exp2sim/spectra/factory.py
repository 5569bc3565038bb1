"""Build layouts, masks and spectrum calculators from a SimulationConfig."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from exp2sim.instrument.detectors import MAPS_COVERAGE, PCSMO_PSI, PCSMO_TILT, bin_mask
from exp2sim.instrument.resolution import MAPS_RESOLUTION
from exp2sim.instrument.spectrometer import MAPS, PCSMO_SETTINGS, Setting
from exp2sim.spectra.calculator import ConvolvedSpectra, UnconvolvedSpectra, conventional_lattice
from exp2sim.spectra.generate import SimulationConfig
from exp2sim.spectra.layout import Bins, CutLayout, MosaicLayout, VolumeLayout
from exp2sim.spinwave import load_model


def make_layout(config: SimulationConfig) -> MosaicLayout | VolumeLayout | CutLayout:
    """The layout of a config's kind (mosaic: the PCSMO experiment's six settings)."""
    if config.kind == "mosaic":
        return MosaicLayout(PCSMO_SETTINGS)
    setting = Setting(config.ei, config.frequency)
    MAPS.check(setting)
    if config.kind == "volume":
        return VolumeLayout(setting, *config.shape)
    return CutLayout(setting)


def orientation(config: SimulationConfig) -> tuple[float, tuple[float, float]]:
    """Crystal rotation psi and tilt (degrees): the PCSMO experiment's for the mosaic
    (fitted to its detector mask), a perfectly aligned crystal otherwise."""
    if config.kind == "mosaic":
        return PCSMO_PSI, PCSMO_TILT
    return 0.0, (0.0, 0.0)


def make_bins_and_mask(
    config: SimulationConfig,
) -> tuple[Bins, np.ndarray, dict[str, np.ndarray] | None]:
    """Bins, instrument mask (True = no data) and NeXus axes of a config's spectra."""
    layout = make_layout(config)
    bins = layout.bins()
    model = load_model(config.model)
    psi, tilt = orientation(config)
    mask = bin_mask(bins, conventional_lattice(model), MAPS_COVERAGE, psi=psi, tilt=tilt)
    axes = None
    if isinstance(layout, VolumeLayout):
        axes = {"h": bins.h[:, 0, 0], "k": bins.k[0, :, 0], "energy": bins.e[0, 0, :]}
    elif isinstance(layout, CutLayout):
        axes = {"energy": bins.e}
    return bins, mask, axes


def model_info(config: SimulationConfig) -> dict:
    """Name, parameter names and the ranges parameters are drawn from (narrowed by spread)."""
    model = load_model(config.model).around_best_fit(config.spread)
    return {
        "name": model.name,
        "parameter_names": list(model.parameter_names),
        "ranges": [list(r) for r in model.ranges] if model.ranges else None,
    }


def make_calculator(config: SimulationConfig) -> Callable[[np.ndarray], np.ndarray]:
    """A function parameters -> spectrum for the config (deterministic)."""
    model = load_model(config.model)
    bins, mask, _ = make_bins_and_mask(config)
    psi, tilt = orientation(config)
    if config.resolution == "none":
        return UnconvolvedSpectra(model, bins, mask, psi=psi, tilt=tilt, fixed_l=config.fixed_l)
    return ConvolvedSpectra(
        model,
        bins,
        MAPS_RESOLUTION,
        mask,
        method=config.resolution,
        n_mc=config.n_mc,
        psi=psi,
        tilt=tilt,
        fixed_l=config.fixed_l,
    )
