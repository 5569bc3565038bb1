"""Sinkhorn distances between inputs and random subsets of the training set (geomloss).

For each input feature vector y and each of R repeats, `points` training feature vectors
x_1..x_P are drawn at random (without replacement) and the entropic optimal-transport cost
between the uniform measures on {x_i} and {y} is computed with geomloss's Sinkhorn solver,
ground cost C(x, y) = |x - y|^2 / 2 (geomloss's p = 2 convention). Over the R repeats this
gives the distribution of distances of the paper's applicability measure (20 points, 1,000
repeats).

Units: features are divided by the training features' RMS spread
s = sqrt(mean_i |x_i - mean(x)|^2) first (`block_scales`: each block of the feature vector
by its own spread, times sqrt(number of blocks), so that every block weighs the same), so
distances are dimensionless and comparable between runs: an input drawn from the training
distribution scores about 1 on average (E |x - y|^2 / 2 = s^2 for independent x, y), one
at k spreads from the training mean about (1 + k^2) / 2.

With a one-point input every transport plan sends all the mass to that point, so the
entropic cost is exact: OT(x, y) = (1 / P) sum_i |x_i - y|^2 / 2, the squared 2-Wasserstein
distance over two, whatever the blur. The debiased Sinkhorn divergence would subtract half
the subset's entropic self-transport cost, a term that only reflects the blur, so the
default is the raw (`debias=False`) cost; `debias=True` gives geomloss's divergence.

Batching: all repeats of all inputs go to geomloss as (B, P, D) vs (B, 1, D) tensors,
B up to `chunk` at a time. Every input uses the same R subsets (drawn from `seed`), so an
input's distances do not depend on which other inputs are assessed with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from geomloss import SamplesLoss

DEFAULT_BLUR = 0.05  # entropic blur in units of the training RMS spread (epsilon = blur^2)
_KEY_BUDGET = 2**22  # random keys drawn at once when choosing subsets


def rms_spread(train: np.ndarray) -> float:
    """RMS distance of the feature vectors (N, D) from their mean, sqrt(mean_i |x_i - m|^2),
    in feature units."""
    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2 or len(train) < 2:
        raise ValueError(f"need at least 2 training feature vectors (N, D), got {train.shape}")
    spread = float(np.sqrt(np.mean(np.sum((train - train.mean(0)) ** 2, axis=1))))
    if not spread > 0:
        raise ValueError("the training feature vectors are all identical: no spread to scale by")
    return spread


def block_scales(train: np.ndarray, blocks: tuple[int, ...] | None = None) -> np.ndarray:
    """Per-feature divisors (D,) for training features (N, D) made of consecutive blocks of
    the given lengths (None: one block): each block's RMS spread times sqrt(len(blocks)),
    so that in-distribution distances are about 1 and every block contributes equally."""
    train = np.asarray(train, dtype=np.float64)
    blocks = tuple(blocks) if blocks else (train.shape[-1],)
    if train.ndim != 2 or sum(blocks) != train.shape[1] or min(blocks) < 1:
        raise ValueError(f"feature blocks {blocks} do not split features of shape {train.shape}")
    edges = np.cumsum((0, *blocks))
    spreads = [rms_spread(train[:, a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return np.repeat(np.array(spreads) * np.sqrt(len(blocks)), blocks)


def subset_indices(n_train: int, points: int, repeats: int, seed: int) -> np.ndarray:
    """(repeats, points) int64 indices into the training set: each row a uniformly random
    subset of `points` distinct examples, drawn from `seed`."""
    if not 1 <= points <= n_train:
        raise ValueError(f"points must be between 1 and the {n_train} training examples")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    rng = np.random.default_rng(seed)
    rows = max(1, _KEY_BUDGET // n_train)
    out = []
    for start in range(0, repeats, rows):
        keys = rng.random((min(rows, repeats - start), n_train))
        out.append(np.argpartition(keys, points - 1, axis=1)[:, :points])
    return np.concatenate(out).astype(np.int64)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch on `n` CPU threads inside the block (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sinkhorn_batch(
    x: torch.Tensor, y: torch.Tensor, blur: float, diameter: float, debias: bool = False
) -> torch.Tensor:
    """Sinkhorn costs (B,) between uniform point clouds x (B, N, D) and y (B, M, D), cost
    |x - y|^2 / 2, epsilon = blur^2, annealed from `diameter` (an upper bound of the
    distances; fixed so that every chunk runs the same schedule)."""
    loss = SamplesLoss(
        "sinkhorn",
        p=2,
        blur=blur,
        diameter=max(float(diameter), blur),
        debias=debias,
        backend="tensorized",
    )
    return loss(x, y)


def sinkhorn_distances(
    train: np.ndarray,
    inputs: np.ndarray,
    points: int = 20,
    repeats: int = 1000,
    seed: int = 0,
    *,
    scale: float | np.ndarray | None = None,
    blur: float = DEFAULT_BLUR,
    debias: bool = False,
    chunk: int = 1000,
    threads: int | None = 1,
) -> np.ndarray:
    """Distances (n, R) float32 of each input feature vector (n, D) to R random subsets of
    `points` training feature vectors (N, D), dimensionless (see the module docstring).

    scale: divide features by this number or per-feature array (D,) (feature units);
    default the RMS spread of `train` (see `block_scales`).
    blur: entropic blur in scaled units. chunk: most (input, repeat) pairs per geomloss call.
    threads: torch CPU threads for the solver (None: torch's setting). The batches are many
    tiny matrices: more threads buy little, and on shared cores their synchronisation made
    the solver ~20 times slower (benchmarks/bench_applicability.py), hence one by default.
    """
    train = np.asarray(train, dtype=np.float32)
    inputs = np.asarray(inputs, dtype=np.float32)
    if train.ndim != 2 or inputs.ndim != 2 or train.shape[1] != inputs.shape[1]:
        raise ValueError(
            f"expected training features (N, D) and inputs (n, D) of the same D, got "
            f"{train.shape} and {inputs.shape}"
        )
    if not (np.isfinite(train).all() and np.isfinite(inputs).all()):
        raise ValueError("feature vectors must be finite")
    if blur <= 0 or chunk < 1:
        raise ValueError("blur and chunk must be positive")
    scale = np.asarray(rms_spread(train) if scale is None else scale, dtype=np.float64)
    if scale.shape not in ((), train.shape[1:]):
        raise ValueError(f"scale must be a number or an array of {train.shape[1]} values")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("feature scales must be positive and finite")
    idx = torch.from_numpy(subset_indices(len(train), points, repeats, seed))
    # centred on the training mean (distances do not change) in float64 before going to
    # float32: features far from the origin compared with their spread would otherwise
    # lose their differences to round-off in the solver
    centre = train.astype(np.float64).mean(0)
    train = ((train - centre) / scale).astype(np.float32)
    inputs = ((inputs - centre) / scale).astype(np.float32)
    # the bounding-box diagonal of all points, geomloss's own estimate, once for all chunks
    low = np.minimum(train.min(0), inputs.min(0))
    diameter = float(np.linalg.norm(np.maximum(train.max(0), inputs.max(0)) - low))
    pairs = len(inputs) * repeats
    out = torch.empty(pairs)
    with torch.inference_mode(), torch_threads(threads):
        x_all, y_all = torch.from_numpy(train), torch.from_numpy(inputs)
        for start in range(0, pairs, chunk):
            k = torch.arange(start, min(start + chunk, pairs))
            x = x_all[idx[k % repeats]]  # (B, points, D)
            y = y_all[k // repeats][:, None]  # (B, 1, D)
            out[start : start + len(k)] = sinkhorn_batch(x, y, blur, diameter, debias)
    return out.view(len(inputs), repeats).numpy()
