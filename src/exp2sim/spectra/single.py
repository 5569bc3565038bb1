"""`exp2sim spectrum`: one spectrum on demand, written as .npy or .h5."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from exp2sim.fileio import write_npy_atomic
from exp2sim.spectra.generate import SimulationConfig


def write_single_spectrum(
    config: SimulationConfig, params_text: str | None, out: Path, plot: Path | None = None
) -> np.ndarray:
    """Compute one spectrum for the given parameters (default: best fit) and write it."""
    from exp2sim.spectra.dataset import write_dataset
    from exp2sim.spectra.factory import make_bins_and_mask, make_calculator, model_info
    from exp2sim.spinwave import SpinWaveTheory, load_model

    suffix = out.suffix.lower()
    if suffix not in (".npy", ".h5", ".hdf5", ".nxs"):
        raise ValueError(f"--out must end in .npy or .h5, got {str(out)!r}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise ValueError(f"--plot needs a .png file name, got {str(plot)!r}")
    model = load_model(config.model)
    params = model.parse_params(params_text)
    if not SpinWaveTheory(model.system).check_stability(params)[0]:
        raise ValueError(
            f"parameters {', '.join(f'{v:g}' for v in params)} make model {model.name!r} "
            "unstable: h(k) is not positive definite"
        )
    spectrum = make_calculator(config)(params).astype(np.float32)
    if suffix == ".npy":
        write_npy_atomic(out, spectrum)
    else:
        bins, mask, axes = make_bins_and_mask(config)
        write_dataset(
            out,
            spectrum[None],
            bins,
            mask,
            params[None],
            dataclasses.asdict(config),
            model_info(config),
            0,
            axes,
        )
    if plot is not None:
        from exp2sim.spectra.plotting import plot_spectrum

        title = ", ".join(f"{n}={v:g}" for n, v in zip(model.parameter_names, params, strict=True))
        plot_spectrum(
            spectrum,
            config.kind,
            dataclasses.asdict(config),
            plot,
            title=f"{model.name} ({config.resolution}): {title}",
        )
    return spectrum
