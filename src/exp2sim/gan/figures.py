"""Figures written during training: loss curves and sample translations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from exp2sim.fileio import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from exp2sim.gan.train import Trainer

LOSSES = ("D", "G", "gan", "nce", "idt", "aux", "intensity")


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_losses(history: list[dict], path: Path) -> None:
    """Per-epoch mean losses, and the Frechet distances where evaluated."""
    fig, (ax, ax_fid) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    for name in LOSSES:
        ax.plot(epochs, [h.get(name, np.nan) for h in history], marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="mean loss", yscale="log", title="losses")
    ax.legend(fontsize=8)
    for name in ("fid_exp2sim", "fid_sim2exp"):
        pts = [(h["epoch"], h[name]) for h in history if name in h]
        if pts:
            ax_fid.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax_fid.set(xlabel="epoch", ylabel="Frechet distance", title="held-out Frechet distance")
    if ax_fid.lines:  # none before the first evaluation (fid_every > 1)
        ax_fid.legend(fontsize=8)
    _save(fig, path)


def _show(ax: plt.Axes, spectrum: np.ndarray, title: str, vmax: float) -> None:
    if spectrum.ndim == 3:  # middle slice of a volume
        spectrum = spectrum[spectrum.shape[0] // 2]
    if spectrum.ndim == 1:
        ax.plot(spectrum)
        ax.set_ylim(-0.05, vmax)
    else:
        ax.imshow(
            np.ma.masked_invalid(spectrum),
            origin="lower",
            aspect="auto",
            vmin=0,
            vmax=vmax,
            cmap="viridis",
            interpolation="nearest",
        )
    ax.set_title(title, fontsize=9)


def plot_samples(trainer: Trainer, path: Path) -> None:
    """First held-out spectrum of each domain next to its translation (normalised units)."""
    rows = []
    for direction, label in (("a2b", "Exp2Sim (A to B)"), ("b2a", "Sim2Exp (B to A)")):
        # the first alone: translating all held-out volumes took 8.7 s of the demo's GAN
        src, out = trainer.translate_val(direction, count=1)
        rows.append((src[0], out[0], label))
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), squeeze=False)
    for (src, out, label), (ax_in, ax_out) in zip(rows, axes, strict=True):
        vmax = float(np.nanpercentile(np.concatenate([src.ravel(), out.ravel()]), 99.5)) or 1.0
        _show(ax_in, src, f"{label}: input", vmax)
        _show(ax_out, out, f"{label}: output", vmax)
    fig.suptitle(f"epoch {trainer.epoch}")
    _save(fig, path)
