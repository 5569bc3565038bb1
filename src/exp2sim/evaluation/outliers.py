"""Inputs the GAN was not trained on, for the applicability measure.

Far from the training data: handwritten digits (scikit-learn's bundled set) and natural
photographs (scikit-image's bundled images). Closer: spectra with experimental artefacts,
a negative control whose row blocks come from other magnets, Rb2MnF4. Every image is
resized to the spectrum shape, scaled so that its 99th percentile matches the reference
spectra's, and masked like them, so neither size, intensity scale nor mask gives it away.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from exp2sim.spectra.noise import add_counting_noise, bright_level

# natural photographs bundled with scikit-image (no download needed)
PHOTOGRAPHS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "hubble_deep_field",
    "immunohistochemistry",
    "grass",
    "gravel",
    "brick",
    "clock",
    "retina",
    "cell",
)


def _like_spectra(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Images (n, *S) in [0, 1] -> intensities with the reference spectra's 99th
    percentile and NaN where the reference (n_ref, *S) is masked in every spectrum."""
    q = bright_level(reference)
    mask = np.isnan(reference).all(axis=0)
    out = (images * q).astype(np.float32)
    out[:, mask] = np.nan
    return out


def _resize(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from skimage.transform import resize

    image = resize(image.astype(float), shape, order=1, anti_aliasing=True, mode="reflect")
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo) if hi > lo else np.zeros(shape)


def digits(n: int, reference: np.ndarray, seed: int = 0) -> np.ndarray:
    """n handwritten digits (8 x 8, scikit-learn) resized to the spectra's shape (n, *S);
    1D/3D shapes take a row / a stack of the digit."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    images = load_digits().images
    pick = rng.choice(len(images), size=n, replace=n > len(images))
    return _like_spectra(np.stack([_fit(images[i], reference) for i in pick]), reference)


def photographs(n: int, reference: np.ndarray, seed: int = 0) -> np.ndarray:
    """n grey-scale photographs (scikit-image), random crops beyond the 15 bundled, resized
    to the spectra's shape (n, *S)."""
    import skimage.data
    from skimage.color import rgb2gray

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = getattr(skimage.data, PHOTOGRAPHS[i % len(PHOTOGRAPHS)])()
        if image.ndim == 3:
            image = rgb2gray(image[..., :3])
        if i >= len(PHOTOGRAPHS):  # a random crop of at least half of each side
            h, w = image.shape
            ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            image = image[y : y + ch, x : x + cw]
        out.append(_fit(image, reference))
    return _like_spectra(np.stack(out), reference)


def _fit(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """A 2D image resized to one spectrum's shape (a middle row for 1D, stacked for 3D)."""
    shape = reference.shape[1:]
    if len(shape) == 1:
        return _resize(image, (image.shape[0], shape[0]))[image.shape[0] // 2]
    if len(shape) == 2:
        return _resize(image, shape)
    return np.repeat(_resize(image, shape[:2])[..., None], shape[2], axis=2)


ARTEFACTS = ("background", "noise", "spurions", "dead pixels")


def with_artefacts(
    spectra: np.ndarray, seed: int = 0, kinds: tuple[str, ...] = ARTEFACTS
) -> np.ndarray:
    """Copies of spectra (n, *S) with the artefacts of a real measurement, all at once:
    a flat plus sloped background of 5-15 % of the 99th percentile, counting noise (Poisson
    with ~20 counts at the 99th percentile), 3-6 spurions (bright Gaussian spots, 2-4 px
    wide, at 1-3x the 99th percentile) and dead pixels (1 % of pixels and one dead detector
    line, NaN). `kinds`: a subset of ARTEFACTS, to see what each does alone (the random
    draws then differ from the full set's)."""
    unknown = set(kinds) - set(ARTEFACTS)
    if unknown:
        raise ValueError(f"unknown artefacts {sorted(unknown)}: choose from {ARTEFACTS}")
    rng = np.random.default_rng(seed)
    out = np.array(spectra, dtype=np.float64)
    shape = out.shape[1:]
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    for x in out:
        q = bright_level(x)
        if "background" in kinds:
            x += q * (rng.uniform(0.05, 0.15) + rng.uniform(-0.05, 0.05) * grids[0])
        if "noise" in kinds:
            add_counting_noise(x, 20.0 / q, rng)
        if "spurions" in kinds:
            spots = np.zeros(shape)
            for _ in range(rng.integers(3, 7)):
                spots[tuple(rng.integers(0, s) for s in shape)] = 1.0
            sigma = rng.uniform(1.0, 2.0)
            spots = ndimage.gaussian_filter(spots, sigma) * (2 * np.pi * sigma**2) ** (
                len(shape) / 2
            )
            x += spots * q * rng.uniform(1.0, 3.0)
        if "dead pixels" in kinds:
            x[rng.random(shape) < 0.01] = np.nan
            x[..., rng.integers(0, shape[-1])] = np.nan
    return out.astype(np.float32)


def negative_control(sources: list[np.ndarray], n: int, blocks: int, seed: int = 0) -> np.ndarray:
    """n mosaics (n, H, W) whose `blocks` row blocks (one per incident energy) come from
    different magnets: block r of output i is block r of a random spectrum of source
    (r + i) mod len(sources), so neighbouring blocks never share a source. sources: list of
    (n_s, H, W) convolved mosaics of other models."""
    rng = np.random.default_rng(seed)
    height = sources[0].shape[1]
    if height % blocks:
        raise ValueError(f"{height} rows do not split into {blocks} blocks")
    size = height // blocks
    out = np.empty((n, *sources[0].shape[1:]), dtype=np.float32)
    for i in range(n):
        for r in range(blocks):
            source = sources[(r + i) % len(sources)]
            rows = slice(r * size, (r + 1) * size)
            out[i, rows] = source[rng.integers(len(source)), rows]
    return out
