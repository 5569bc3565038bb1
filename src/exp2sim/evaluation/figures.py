"""Figures of the evaluation report (matplotlib, Agg, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from exp2sim.fileio import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def translations(path: Path, panels: dict[str, np.ndarray], title: str = "") -> None:
    """Spectra side by side with one colour scale (the first panel's 99.5th percentile).
    2D panels are shown as images (masked pixels grey), 3D panels as their middle energy
    slice and an (h, E) cut, 1D panels as curves."""
    first = next(iter(panels.values()))
    finite = first[np.isfinite(first)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    if first.ndim == 1:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for name, x in panels.items():
            ax.plot(x, label=name)
        ax.set_xlabel("energy bin")
        ax.set_ylabel("intensity (arb. units)")
        ax.legend()
    else:
        rows = 1 if first.ndim == 2 else 2
        fig, axes = plt.subplots(
            rows,
            len(panels),
            figsize=(3.4 * len(panels) + 1, 2.6 * rows + 0.6),
            squeeze=False,
            layout="constrained",
        )
        cmap = plt.get_cmap("viridis").copy()
        cmap.set_bad("0.85")
        for j, (name, x) in enumerate(panels.items()):
            views = [x] if x.ndim == 2 else [x[:, :, x.shape[2] // 2], x[:, x.shape[1] // 2, :]]
            labels = [("k bin", "h bin")] if x.ndim == 2 else [("k", "h"), ("energy", "h")]
            for i, (view, (xl, yl)) in enumerate(zip(views, labels, strict=True)):
                ax = axes[i, j]
                im = ax.imshow(view, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
                ax.set_xlabel(xl if x.ndim == 3 else "energy slice (40 px each)")
                if j == 0:
                    ax.set_ylabel(yl if x.ndim == 3 else "incident energy (40 px each)")
                if i == 0:
                    ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=axes, shrink=0.8, label="intensity (arb. units)")
    if title:
        fig.suptitle(title)
    _save(fig, path)
