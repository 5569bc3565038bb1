"""Figures of spectra with labelled axes (matplotlib, PNG written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from exp2sim.fileio import atomic_path  # noqa: E402


def plot_spectrum(
    spectrum: np.ndarray, kind: str, config: dict, path: str | Path, title: str = ""
) -> None:
    """Mosaic: the 6 x 10 tiles labelled by Ei and energy slice; volume: three (h, k)
    slices at low, middle and high energy; cut: intensity against energy."""
    from exp2sim.spectra.factory import make_layout
    from exp2sim.spectra.generate import SimulationConfig

    layout = make_layout(SimulationConfig(**config))
    bins = layout.bins()
    data = np.ma.masked_invalid(spectrum)
    finite = spectrum[np.isfinite(spectrum)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    if kind == "mosaic":
        fig, ax = plt.subplots(figsize=(13, 8.5), constrained_layout=True)
        im = ax.imshow(data, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        n = layout.n_q
        rows, cols = spectrum.shape
        for r in range(n, rows, n):
            ax.axhline(r - 0.5, color="w", lw=0.5)
        for c in range(n, cols, n):
            ax.axvline(c - 0.5, color="w", lw=0.5)
        ax.set_yticks(np.arange(n / 2, rows, n), [f"Ei = {s.ei:g} meV" for s in layout.settings])
        fr = layout.slice_start + layout.slice_width * np.arange(layout.n_slices)
        ax.set_xticks(
            np.arange(n / 2, cols, n),
            [f"{a:.2f}-{a + layout.slice_width:.2f} Ei" for a in fr],
            rotation=30,
        )
        ax.set_xlabel("energy-transfer slice (tiles: k left to right, -1 to 1 r.l.u.)")
        ax.set_ylabel("incident energy (tiles: h top to bottom, -1 to 1 r.l.u.)")
        fig.colorbar(im, ax=ax, label="intensity (S_perp per meV)", shrink=0.7)
    elif kind == "volume":
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.5), constrained_layout=True)
        for ax, ie in zip(axes, (0, spectrum.shape[2] // 2, spectrum.shape[2] - 1), strict=True):
            im = ax.imshow(
                data[:, :, ie].T,
                origin="lower",
                cmap="viridis",
                vmin=0,
                vmax=vmax,
                extent=(bins.h.min(), bins.h.max(), bins.k.min(), bins.k.max()),
            )
            ax.set_title(f"E = {bins.e[0, 0, ie]:.1f} meV")
            ax.set_xlabel("h (r.l.u.)")
            ax.set_ylabel("k (r.l.u.)")
        fig.colorbar(im, ax=axes, label="intensity (S_perp per meV)")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        ax.plot(bins.e, spectrum, drawstyle="steps-mid")
        ax.set_xlabel("energy transfer (meV)")
        ax.set_ylabel("intensity (S_perp per meV)")
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
