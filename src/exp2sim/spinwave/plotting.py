"""Figures of spin-wave results (matplotlib, written atomically as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from exp2sim.fileio import atomic_path  # noqa: E402
from exp2sim.spinwave.lineshape import broaden  # noqa: E402
from exp2sim.spinwave.lswt import SpinWaveResult  # noqa: E402


def plot_dispersion(
    res: SpinWaveResult, q0: np.ndarray, q1: np.ndarray, path: str | Path, title: str = ""
) -> None:
    """Two panels along a straight path q0 -> q1 (r.l.u.): modes coloured by twin-averaged
    intensity, and the spectrum broadened with a Gaussian of 2 % of the top energy."""
    x = np.linspace(0.0, 1.0, len(res.q))
    e = res.energies[0]  # (T, Q, N)
    w = res.sperp[0] * res.twin_weights[:, None, None]
    e_max = float(np.nanmax(e)) * 1.08 if np.isfinite(np.nanmax(e)) else 1.0
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    xs = np.broadcast_to(x[None, :, None], e.shape)
    good = np.isfinite(e) & (w > 0)
    floor = max(np.nanmax(w) * 1e-4, 1e-12) if good.any() else 1e-12
    order = np.argsort(w[good])  # bright modes drawn last, on top
    sc = ax1.scatter(
        xs[good][order],
        e[good][order],
        c=np.clip(w[good][order], floor, None),
        s=6,
        cmap="viridis",
        norm=LogNorm(),
    )
    fig.colorbar(sc, ax=ax1, label="S_perp (per magnetic cell)")
    edges = np.linspace(0.0, e_max, 301)
    spec = sum(broaden(e[t], w[t], edges, 0.02 * e_max) for t in range(len(e)))
    x_edges = np.concatenate([[0.0], (x[1:] + x[:-1]) / 2, [1.0]]) if len(x) > 1 else [0, 1]
    mesh = ax2.pcolormesh(x_edges, edges, np.clip(spec.T, floor / e_max, None), norm=LogNorm())
    fig.colorbar(mesh, ax=ax2, label="S(Q, E) (1/meV)")
    for ax in (ax1, ax2):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, e_max)
        ax.set_xticks([0, 1], [_label(q0), _label(q1)])
        ax.set_xlabel("Q (r.l.u.)")
        ax.set_ylabel("Energy (meV)")
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _label(q: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in q) + ")"
