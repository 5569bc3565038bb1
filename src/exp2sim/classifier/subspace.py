"""How far a spectrum lies from the training spectra in input space: the residual after
their first principal components.

A classifier's own features can collapse: different inputs map onto the same features, so a
distance measured there cannot see them apart (on the demo's mosaics one classifier's
feature distance called 80-100 % of handwritten digits known, another's rejected 40 % of
its own test set; docs/measurements.md). The normalised input itself cannot collapse. The
training spectra span few directions of it (dispersion curves of two models); a spectrum
of another kind leaves a large part of itself outside them.

Shapes: P = pixels the training spectra measure (flattened), k = components kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# a fit on more spectra than this uses a random subset of them (memory: one (n, P) copy)
MAX_FIT_SPECTRA = 1000


@dataclass
class Subspace:
    """The training inputs' mean (P,) and first k principal directions (k, P), orthonormal
    rows; `limit`: the largest residual (see `residuals`) still called known."""

    mean: np.ndarray
    components: np.ndarray
    limit: float = float("inf")

    @classmethod
    def fit(cls, x: np.ndarray, components: int, seed: int = 0) -> Subspace:
        """Principal directions of inputs x (n, P): at most n - 1 directions, from at most
        MAX_FIT_SPECTRA spectra (a random subset, drawn with `seed`, beyond that).

        With n far below P the directions come from the eigenvectors of the centred
        inputs' n x n Gram matrix (the "snapshot" method): exact, and on the demo's
        mosaics (n = 65-180, P up to 96,000) the limit (21 fits, their residuals) took 5.1
        and 1.3 s instead of scikit-learn's randomized PCA's 13.2 and 6.9 s."""
        if len(x) > MAX_FIT_SPECTRA:
            rng = np.random.default_rng(seed)
            x = x[np.sort(rng.choice(len(x), MAX_FIT_SPECTRA, replace=False))]
        mean = x.mean(0, dtype=np.float64)
        centred = x - mean
        eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)
        order = np.argsort(eigenvalues)[::-1][: max(1, min(components, len(x) - 1))]
        # directions along which the inputs do not vary carry nothing to project on
        order = order[eigenvalues[order] > 1e-12 * max(eigenvalues.max(), 1e-300)]
        directions = (vectors[:, order].T @ centred) / np.sqrt(eigenvalues[order])[:, None]
        return cls(mean, directions)

    def residuals(self, x: np.ndarray, measured: np.ndarray, batch: int = 256) -> np.ndarray:
        """RMS residual (n,) of inputs x (n, P) over their measured pixels (measured (n, P),
        1 or True = measured) after a least-squares fit by the mean and components on those
        pixels, so that pixels a spectrum lacks (dead detectors, masks) neither count nor
        bias the fit. 0 for a spectrum without measured pixels."""
        k = len(self.components)
        out = np.zeros(len(x))
        for start in range(0, len(x), batch):
            m = measured[start : start + batch].astype(bool)
            d = np.where(m, x[start : start + batch] - self.mean, 0.0)
            # normal equations of the fit on measured pixels: with orthonormal components
            # V, V_m V_m^T = 1 - V_u V_u^T over the few unmeasured pixels u
            coef = d @ self.components.T  # (b, k)
            for i in np.flatnonzero(~m.all(1)):
                v = self.components[:, ~m[i]]
                gram = np.eye(k) - v @ v.T
                coef[i] = np.linalg.lstsq(gram, coef[i], rcond=None)[0]
            r = (d - coef @ self.components) * m
            count = m.sum(1)
            out[start : start + batch] = np.sqrt((r**2).sum(1) / np.maximum(count, 1))
        return out


def fold_labels(
    groups: np.ndarray, folds: int, repeats: int, rng: np.random.Generator
) -> np.ndarray:
    """Fold labels (repeats, n) for n rows in `groups` (n,) (e.g. the spectrum each row
    comes from): each draw puts the distinct groups, in a random order, into `folds` folds
    in turn, so that rows of one group always share a fold."""
    distinct, of_row = np.unique(groups, return_inverse=True)
    return np.stack([(rng.permutation(len(distinct)) % folds)[of_row] for _ in range(repeats)])


def calibrated(
    x: np.ndarray, measured: np.ndarray, folds: np.ndarray, components: int, quantile: float
) -> Subspace:
    """A Subspace of inputs x (n, P) (measured (n, P) as in `residuals`; x 0 where not
    measured) whose limit is the `quantile` of the residuals measured out of fit: for each
    row of `folds` (R, n) (integer fold labels) and each fold in it, the fold's inputs
    against the directions of all others. With R rows every input is measured R times.

    Why several folds: fitted on fewer spectra, directions miss more of an unseen spectrum
    than the final fit on all of them will; fitted on half of the demo's 72 convolved
    training spectra the limit ranged over 0.144-0.216 with the training split, where ten
    folds twice gave 0.152-0.194 and still called 96-100 % of the test spectra known (a
    scratch trial with other draws; docs/measurements.md)."""
    out_of_fit = [
        Subspace.fit(x[labels != f], components).residuals(x[labels == f], measured[labels == f])
        for labels in folds
        for f in np.unique(labels)
    ]
    subspace = Subspace.fit(x, components)
    subspace.limit = float(np.quantile(np.concatenate(out_of_fit), quantile))
    return subspace
