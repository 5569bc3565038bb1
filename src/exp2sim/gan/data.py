"""Training data for the GAN: two unpaired domains of spectra, normalised, split into
training and held-out sets, and served as random crops with random flips.

All randomness comes from one torch.Generator whose state is saved in checkpoints, so a
resumed run draws exactly the crops an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exp2sim.gan.normalisation import IntensityScale, LevelMatch
from exp2sim.readers import SpectraFile, read_spectra_file


def load_domain(path: str | Path) -> SpectraFile:
    """Spectra (n, *S) of one domain, with their axes when the file has them: an
    exp2sim/NeXus HDF5 dataset, a .npy stack (n, *S) or a folder of .npy files (one
    spectrum each)."""
    file = read_spectra_file(path)
    if file.signal.ndim < 2 or file.signal.ndim > 4:
        raise ValueError(
            f"{path}: expected a stack of 1D, 2D or 3D spectra (n, *S), got shape "
            f"{file.signal.shape}"
        )
    return file


@dataclass
class Domain:
    """One domain's spectra, normalised (NaN = masked): training (n, *S) and held-out;
    `level`: the median of the training spectra's own intensity levels (IntensityScale.fit
    of each spectrum alone, its q), the level `translate` brings new inputs to."""

    train: np.ndarray
    val: np.ndarray
    scale: IntensityScale
    level: float

    @classmethod
    def from_spectra(
        cls,
        spectra: np.ndarray,
        val_fraction: float,
        seed: int,
        scale: IntensityScale | None = None,
        percentile: float = 99.0,
        compression: float = 10.0,
        statistic: str = "percentile",
        level: float | None = None,
    ) -> Domain:
        """Hold out round(val_fraction * n) spectra (at least 1, if n > 1) chosen by `seed`;
        fit the intensity scale and the typical level on the training part unless given."""
        n = len(spectra)
        n_val = 0 if n == 1 else max(1, round(val_fraction * n))
        order = np.random.default_rng(seed).permutation(n)
        train, val = spectra[np.sort(order[n_val:])], spectra[np.sort(order[:n_val])]
        if n_val == 0:
            val = train
        if scale is None:
            scale = IntensityScale.fit(train, percentile, compression, statistic)
        if level is None:
            levels = LevelMatch(scale.q, statistic, percentile).levels(train)
            level = float(np.nanmedian(levels)) if np.isfinite(levels).any() else scale.q
        return cls(scale.transform(train), scale.transform(val), scale, level)


def crop_shape(crop: int, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """Crop sides: `crop` clipped to the smallest domain along each axis, rounded down to a
    multiple of 4 (the generator's total stride) when the axis allows it."""
    sides = []
    for sizes in zip(*shapes, strict=True):
        side = min(crop, *sizes)
        sides.append(side - side % 4 if side >= 4 else side)
    return tuple(sides)


class CropSampler:
    """Random crops (and flips) of a domain's training spectra as tensors (B, 1, *crop) with
    masked pixels set to 0, plus the masks (B, 1, *crop), True where masked."""

    def __init__(self, spectra: np.ndarray, crop: tuple[int, ...], flip_axes: tuple[int, ...]):
        self.spectra = torch.from_numpy(np.ascontiguousarray(spectra))
        self.crop = crop
        dim = spectra.ndim - 1
        self.flip_axes = sorted({a % dim for a in flip_axes})

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self.spectra.shape[1:]
        out = []
        for _ in range(batch):
            i = int(torch.randint(len(self.spectra), (1,), generator=generator))
            corner = [
                int(torch.randint(s - c + 1, (1,), generator=generator))
                for s, c in zip(shape, self.crop, strict=True)
            ]
            x = self.spectra[i][
                tuple(slice(o, o + c) for o, c in zip(corner, self.crop, strict=True))
            ]
            flips = [a for a in self.flip_axes if bool(torch.rand(1, generator=generator) < 0.5)]
            out.append(x.flip(flips) if flips else x)
        x = torch.stack(out)[:, None]
        mask = torch.isnan(x)
        return x.masked_fill(mask, 0.0), mask
