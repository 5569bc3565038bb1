"""Metrics of the evaluation: paired fidelity of spectra (PSNR, SSIM over measured pixels),
classification accuracy, the certainty of the true model and its margin over the others,
the share of an accuracy gap a translation closes, ROC AUC of out-of-distribution
scores, and whether sets of inputs lie at distances in an expected order.

Fidelity metrics compare two spectra of the same shape S (1D, 2D or 3D, or a batch (n, *S)
taken as one array); a pixel counts only if it is finite in both (NaN = masked). For one
number per spectrum call them per spectrum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "gap_closed", "order_violations", "psnr", "roc_auc", "ssim"]

MOSAIC_SHAPE = (240, 400)
MOSAIC_TILE = (40, 40)


def _pair(test: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both arrays as float64 and the mask of pixels finite in both."""
    test = np.asarray(test, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if test.shape != reference.shape:
        raise ValueError(f"shapes differ: {test.shape} and {reference.shape}")
    valid = np.isfinite(test) & np.isfinite(reference)
    if not valid.any():
        raise ValueError("no pixel is measured in both spectra")
    return test, reference, valid


def _range(reference: np.ndarray, valid: np.ndarray, data_range: float | None) -> float:
    """data_range, or the reference's max - min over valid pixels."""
    if data_range is None:
        data_range = float(np.ptp(reference[valid]))
        if not data_range > 0:
            raise ValueError("the reference is constant: give data_range explicitly")
    elif not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be positive, got {data_range}")
    return float(data_range)


def psnr(test: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB): 10 log10(data_range^2 / MSE) over the pixels finite
    in both arrays (any equal shapes).

    data_range: the intensity span (same units as the spectra); default the reference's
    max - min over those pixels (ValueError if it is constant). Identical arrays give inf.
    """
    test, reference, valid = _pair(test, reference)
    span = _range(reference, valid, data_range)
    mse = float(np.mean((test[valid] - reference[valid]) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(span**2 / mse))


def ssim(
    test: np.ndarray,
    reference: np.ndarray,
    data_range: float | None = None,
    tile: tuple[int, ...] | str | None = "auto",
) -> float:
    """Mean structural similarity over the pixels finite in both spectra, in [-1, 1].

    scikit-image's `structural_similarity` (7-pixel uniform window, or the largest odd
    size that fits) with `full=True`; masked pixels are filled in both arrays with the
    reference's mean over valid pixels (the same value in both, so they add no difference),
    and the SSIM map is averaged over valid pixels only.
    tile: compute the map tile by tile (windows never straddle tiles) for arrays made of
    tiles of this shape; "auto": (40, 40) tiles for the 240 x 400 MAPS mosaic (whose tiles
    are unrelated (h, k) maps), the whole array otherwise; None: the whole array.
    data_range: as in `psnr`. Shapes: S with 1 to 3 axes (or any, if each axis >= 2 pixels).
    """
    from skimage.metrics import structural_similarity

    test, reference, valid = _pair(test, reference)
    span = _range(reference, valid, data_range)
    if isinstance(tile, str):
        if tile != "auto":
            raise ValueError(f"tile must be a shape, 'auto' or None, got {tile!r}")
        tile = MOSAIC_TILE if test.shape == MOSAIC_SHAPE else None
    tile = test.shape if tile is None else tuple(int(t) for t in tile)
    if len(tile) != test.ndim or any(t < 1 or s % t for s, t in zip(test.shape, tile, strict=True)):
        raise ValueError(f"tile {tile} does not divide the shape {test.shape}")
    win = min(7, min(tile) - (1 - min(tile) % 2))
    if win < 3:
        raise ValueError(f"SSIM needs at least 3 pixels along every axis of a tile, got {tile}")
    fill = float(np.mean(reference[valid]))
    a, b = np.where(valid, test, fill), np.where(valid, reference, fill)
    ssim_map = np.empty_like(a)
    for index in np.ndindex(*(s // t for s, t in zip(test.shape, tile, strict=True))):
        sl = tuple(slice(i * t, (i + 1) * t) for i, t in zip(index, tile, strict=True))
        _, ssim_map[sl] = structural_similarity(
            a[sl], b[sl], win_size=win, data_range=span, full=True
        )
    return float(np.mean(ssim_map[valid]))


def accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of correct predictions, in [0, 1].

    pred: (n,) class labels, or (n, C) class scores (the argmax is taken); truth: (n,)
    labels. ValueError for n = 0 or mismatched lengths.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.ndim == 2:
        pred = np.argmax(pred, axis=1)
    if pred.ndim != 1 or truth.ndim != 1 or len(pred) != len(truth):
        raise ValueError(
            f"need pred (n,) or (n, C) and truth (n,), got {pred.shape}, {truth.shape}"
        )
    if len(truth) == 0:
        raise ValueError("accuracy of no predictions")
    return float(np.mean(pred == truth))


def true_model_certainty(
    certainties: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's certainty (n,) for each spectrum's true model, and its margin (n,):
    that certainty minus the highest certainty of another model.

    certainties: (n, C), C >= 2, each in [0, 1] (DUQ's kernel values, which need not sum
    to 1); labels: (n,) true class indices. Every model's certainty can rise at once (a
    sparser spectrum is closer to every centroid); the margin rises only when the true
    model is told apart better.
    """
    certainties = np.asarray(certainties, dtype=float)
    rows = np.arange(len(labels))
    true = certainties[rows, labels]
    others = certainties.copy()
    others[rows, labels] = -np.inf
    return true, true - others.max(axis=1)


def gap_closed(truth_acc: float, before_acc: float, after_acc: float) -> float:
    """Share of the accuracy gap a translation closes: (after - before) / (truth - before).

    truth_acc: accuracy on the classifier's own domain; before_acc: on the other domain,
    untranslated; after_acc: on the translated data. 1 = as good as the truth, 0 = no gain,
    negative = worse than before, > 1 = better than the truth. NaN when truth <= before
    (no gap to close: the classifier does no worse on the other domain).
    """
    truth_acc, before_acc, after_acc = float(truth_acc), float(before_acc), float(after_acc)
    if truth_acc <= before_acc:
        return float("nan")
    return (after_acc - before_acc) / (truth_acc - before_acc)


def gap_closed_interval(
    truth_ok: np.ndarray,
    before_ok: np.ndarray,
    after_ok: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """16th and 84th percentiles (a one-sigma interval) of `gap_closed` over bootstrap
    resamples of the test spectra. truth_ok, before_ok, after_ok: (n,) booleans, whether
    each test spectrum was classified correctly in each setting (paired: the same spectra),
    or any per-spectrum score whose mean is compared, such as a classifier's certainty.
    Resamples with no gap (truth <= before) are left out; (nan, nan) if all are."""
    ok = [np.asarray(x, dtype=float).ravel() for x in (truth_ok, before_ok, after_ok)]
    n = len(ok[0])
    if n == 0 or any(len(x) != n for x in ok):
        raise ValueError("gap_closed_interval needs three equally long, non-empty arrays")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    truth, before, after = (x[idx].mean(axis=1) for x in ok)
    gap = truth - before
    keep = gap > 0
    if not keep.any():
        return float("nan"), float("nan")
    closed = (after[keep] - before[keep]) / gap[keep]
    lo, hi = np.percentile(closed, [16, 84])
    return float(lo), float(hi)


def roc_auc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve separating out-of-distribution from in-distribution
    examples by a score (higher = more out-of-distribution), in [0, 1]: the probability
    that a random out example scores above a random in example (ties count 1/2).
    1 = perfect separation, 0.5 = chance, 0 = reversed.

    in_scores: (n_in,), out_scores: (n_out,) (flattened); both non-empty and finite.
    """
    from sklearn.metrics import roc_auc_score

    a = np.asarray(in_scores, dtype=float).ravel()
    b = np.asarray(out_scores, dtype=float).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("roc_auc needs at least one in- and one out-of-distribution score")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("roc_auc scores must be finite")
    labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    return float(roc_auc_score(labels, np.concatenate([a, b])))


def order_violations(
    scores: dict[str, float], tiers: list[list[str]] | tuple[tuple[str, ...], ...]
) -> list[tuple[str, str]]:
    """Pairs of sets out of an expected order of scores (e.g. median distances).

    scores: one number per set name. tiers: set names from the lowest expected scores to
    the highest; sets within a tier are not ordered among themselves (the paper's
    "train ~ test"). Every set of a tier should score below every set of each later tier.
    Returns (a, b) for each a of an earlier tier whose score is not below that of b of a
    later one, in the tiers' order; [] when the order holds. Names missing from `scores`
    are left out.
    """
    present = [[name for name in tier if name in scores] for tier in tiers]
    return [
        (a, b)
        for i, lower in enumerate(present)
        for higher in present[i + 1 :]
        for a in lower
        for b in higher
        if not scores[a] < scores[b]
    ]
