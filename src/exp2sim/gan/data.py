"""Training data for the GAN: two unpaired domains of spectra, normalised, split into
training and held-out sets, and served as random crops with random flips.

All randomness comes from one torch.Generator whose state is saved in checkpoints, so a
resumed run draws exactly the crops an uninterrupted one would.
"""

from __future__ import annotations

import itertools
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


def shifted_copies(
    spectrum: np.ndarray,
    shifts: tuple[tuple[int, ...], ...],
    window: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """The kernel generators' shifted taps of one spectrum (*S), NaN where masked:
    (n_shifts, *W) float32 for the pixels p of `window` (slices with explicit bounds; None:
    the whole spectrum), copy j holding at p the value at p + shifts[j], which may lie
    outside the window; NaN where it lies outside the spectrum."""
    spectrum = np.asarray(spectrum, dtype=np.float32)
    shape = spectrum.shape
    window = window or tuple(slice(0, n) for n in shape)
    out = np.full((len(shifts), *(w.stop - w.start for w in window)), np.nan, dtype=np.float32)
    for j, shift in enumerate(shifts):
        # the partners p + o of the window's pixels that lie inside the spectrum
        lo = [max(w.start + o, 0) for w, o in zip(window, shift, strict=True)]
        hi = [min(w.stop + o, n) for w, o, n in zip(window, shift, shape, strict=True)]
        if any(a >= b for a, b in zip(lo, hi, strict=True)):
            continue  # every pixel's partner lies outside
        src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        dst = tuple(
            slice(a - o - w.start, b - o - w.start)
            for a, b, o, w in zip(lo, hi, shift, window, strict=True)
        )
        out[(j, *dst)] = spectrum[src]
    return out


def _flip_permutations(
    shifts: tuple[tuple[int, ...], ...], flip_axes: list[int]
) -> dict[tuple[int, ...], list[int]]:
    """For every set of flipped axes, the order of the shifted copies after the flip: a flip
    along an axis turns the copy shifted by o into the one shifted by -o along it, so the
    shifts must come in such pairs."""
    out = {}
    for n in range(len(flip_axes) + 1):
        for flipped in itertools.combinations(flip_axes, n):
            mirrored = [tuple(-o if a in flipped else o for a, o in enumerate(s)) for s in shifts]
            if set(mirrored) != set(shifts):
                raise ValueError(
                    f"kernel_shifts {list(shifts)} are not symmetric under flips of axis "
                    f"{list(flipped)}: add the mirrored offsets or drop the axis from flip_axes"
                )
            out[flipped] = [shifts.index(m) for m in mirrored]
    return out


class CropSampler:
    """Random crops (and flips) of a domain's training spectra as tensors (B, 1, *crop) with
    masked pixels set to 0, plus the masks (B, 1, *crop), True where masked.

    With kernel `shifts` the crops are (B, 1 + n_shifts, *crop): the spectrum, then its
    shifted taps (`shifted_copies`, taken from the whole spectrum; NaN where missing)."""

    def __init__(
        self,
        spectra: np.ndarray,
        crop: tuple[int, ...],
        flip_axes: tuple[int, ...],
        shifts: tuple[tuple[int, ...], ...] = (),
    ):
        self.spectra = torch.from_numpy(np.ascontiguousarray(spectra))
        self.crop = crop
        dim = spectra.ndim - 1
        self.flip_axes = sorted({a % dim for a in flip_axes})
        self.shifts = tuple(tuple(s) for s in shifts)
        if self.shifts:
            self.permutations = _flip_permutations(self.shifts, self.flip_axes)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self.spectra.shape[1:]
        out = []
        for _ in range(batch):
            i = int(torch.randint(len(self.spectra), (1,), generator=generator))
            corner = [
                int(torch.randint(s - c + 1, (1,), generator=generator))
                for s, c in zip(shape, self.crop, strict=True)
            ]
            window = tuple(slice(o, o + c) for o, c in zip(corner, self.crop, strict=True))
            x = self.spectra[i][window][None]
            if self.shifts:  # partners beyond the crop included
                taps = shifted_copies(self.spectra[i].numpy(), self.shifts, window)
                x = torch.cat([x, torch.from_numpy(taps)])
            flips = [a for a in self.flip_axes if bool(torch.rand(1, generator=generator) < 0.5)]
            if flips:
                x = x.flip([1 + a for a in flips])
                if self.shifts:
                    order = self.permutations[tuple(flips)]
                    x = torch.cat([x[:1], x[1:][order]])
            out.append(x)
        x = torch.stack(out)
        mask = torch.isnan(x[:, :1])
        return torch.cat([x[:, :1].masked_fill(mask, 0.0), x[:, 1:]], 1), mask
