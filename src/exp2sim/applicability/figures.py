"""The applicability figure: a ridgeline of distance distributions over the verdict zones
(like Fig. 5b of the paper)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.ndimage import gaussian_filter1d  # noqa: E402

from exp2sim.fileio import atomic_path  # noqa: E402

ZONES = (
    ("trustworthy", "#2ca02c"),
    ("expert opinion", "#ff9f1c"),
    ("untrustworthy", "#d62728"),
)
_BINS = 600


def _density(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Smoothed histogram density of `values` on the bins `edges` (a Gaussian kernel of
    Scott's bandwidth, at least one bin), scaled to a peak of 1."""
    counts, _ = np.histogram(values, edges)
    width = edges[1] - edges[0]
    bandwidth = 1.06 * values.std() * len(values) ** -0.2 if len(values) > 1 else 0.0
    smooth = gaussian_filter1d(counts.astype(float), max(bandwidth / width, 1.0), mode="constant")
    return smooth / smooth.max() if smooth.max() > 0 else smooth


def ridgeline(
    distributions: dict[str, np.ndarray],
    thresholds: tuple[float, float],
    path: str | Path,
    title: str = "Applicability: distance to the training set",
) -> Path:
    """One density row per named data set (all its inputs' repeats pooled; any shape of
    distances), over the trustworthy / expert opinion / untrustworthy zones bounded by
    `thresholds` (t1, t2). The distance axis is logarithmic when the values span more
    than a factor of 30. Written as PNG to `path`, atomically; returns the path."""
    if not distributions:
        raise ValueError("nothing to plot: no distributions given")
    t1, t2 = (float(t) for t in thresholds)
    if not 0 < t1 < t2:
        raise ValueError(f"thresholds must satisfy 0 < t1 < t2, got {thresholds}")
    rows = {}
    for name, values in distributions.items():
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise ValueError(f"no finite distances for {name!r}")
        rows[name] = v
    everything = np.concatenate([*rows.values(), [t1, t2]])
    low, high = everything.min(), everything.max()
    log = low > 0 and high / low > 30
    transform = np.log10 if log else (lambda x: x)
    lo, hi = transform(low), transform(high)
    pad = 0.08 * (hi - lo) if hi > lo else 0.5
    edges = np.linspace(lo - pad, hi + pad, _BINS + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    x = 10**centres if log else centres

    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.75 * len(rows)))
    bounds = [10 ** edges[0] if log else edges[0], t1, t2, 10 ** edges[-1] if log else edges[-1]]
    for (label, colour), a, b in zip(ZONES, bounds[:-1], bounds[1:], strict=True):
        ax.axvspan(a, b, color=colour, alpha=0.12, lw=0)
        ax.text(
            np.sqrt(a * b) if log else 0.5 * (a + b),
            len(rows) + 0.3,
            label,
            ha="center",
            va="top",
            fontsize=8,
            color=colour,
        )
    for t in (t1, t2):
        ax.axvline(t, color="0.3", lw=0.8, ls="--")
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(rows)))
    for i, v in enumerate(rows.values()):
        base = len(rows) - 1 - i  # first data set on top
        y = base + 0.85 * _density(transform(v), edges)
        ax.fill_between(x, base, y, color=colours[i], alpha=0.75, lw=0)
        ax.plot(x, y, color="k", lw=0.6)
        ax.plot([v.mean()] * 2, [base, base + 0.3], color="k", lw=1.5)  # mean marker
    ax.set_yticks(np.arange(len(rows))[::-1], list(rows))
    ax.set_ylim(-0.1, len(rows) + 0.35)  # room for the zone names above the top row
    ax.set_xlim(bounds[0], bounds[-1])
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(
        "Sinkhorn distance to random training subsets (dimensionless; ~1 in-distribution)"
    )
    ax.set_title(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
