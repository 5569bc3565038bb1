"""A tiled 2D spectrum seen as a stack of volumes, for a GAN that works in 3D.

A mosaic made of equal tiles, each row of tiles one scan (for the PCSMO mosaic of
DESIGN.md: 6 incident energies x 10 constant-energy (h, k) slices of 40 x 40 pixels), is
one 2D image to a 2D generator: the slice at the next energy lies a tile's width away, far
outside a small convolution's reach, although resolution mixes neighbouring energies. The
fold stacks each row's tiles along a new first axis, in order, so that row becomes a volume
(tiles, tile height, tile width) in which neighbouring tiles are neighbouring slices, and a
3D generator reaches them with a 3-tap kernel. `pad` masked (NaN) slices are added at both
ends of every volume so that convolutions near the first and last tile see masked pixels,
as at any other edge of the data, not reflections of the tiles themselves.

    fold = TileFold((40, 40), pad=3)
    volumes = fold.fold(mosaics)             # (n, 240, 400) -> (n * 6, 16, 40, 40)
    mosaics = fold.unfold(volumes, (240, 400))

What a volume-view generator did on the demo's data is in docs/measurements.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileFold:
    """Rows of (tile[0] x tile[1]) tiles of a 2D spectrum as volumes.

    tile: tile height and width in pixels.
    pad: masked slices added before the first and after the last tile of each row.
    """

    tile: tuple[int, int]
    pad: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", tuple(int(t) for t in self.tile))
        if len(self.tile) != 2 or min(self.tile) < 1:
            raise ValueError(f"fold_tiles must be two positive tile sides, got {self.tile}")
        if self.pad < 0:
            raise ValueError(f"fold_pad must be at least 0, got {self.pad}")

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(rows, tiles per row) of a 2D spectrum of `shape`; a clear error when the shape is
        not a whole number of tiles."""
        if len(shape) != 2:
            raise ValueError(
                f"the model folds 2D spectra into volumes; got spectra of shape {tuple(shape)}"
            )
        (h, w), (th, tw) = shape, self.tile
        if h % th or w % tw:
            raise ValueError(
                f"spectra of shape {tuple(shape)} are not a whole number of the model's "
                f"{th} x {tw} tiles"
            )
        return h // th, w // tw

    def volume_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The shape (tiles + 2 pad, tile height, tile width) of each volume."""
        return self.grid(shape)[1] + 2 * self.pad, *self.tile

    def fold(self, spectra: np.ndarray) -> np.ndarray:
        """Spectra (n, H, W) -> volumes (n * rows, tiles + 2 pad, th, tw), row-major: the
        volumes of spectrum i are i * rows ... (i + 1) * rows - 1. NaN in the pads."""
        spectra = np.asarray(spectra)
        rows, cols = self.grid(spectra.shape[1:])
        th, tw = self.tile
        v = spectra.reshape(len(spectra), rows, th, cols, tw).transpose(0, 1, 3, 2, 4)
        v = v.reshape(-1, cols, th, tw)
        if self.pad:
            fill = np.nan if np.issubdtype(v.dtype, np.floating) else 0
            v = np.pad(v, ((0, 0), (self.pad, self.pad), (0, 0), (0, 0)), constant_values=fill)
        return np.ascontiguousarray(v)

    def unfold(self, volumes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Volumes (n * rows, tiles + 2 pad, th, tw) -> spectra (n, *shape); the inverse of
        `fold`, pads dropped."""
        volumes = np.asarray(volumes)
        rows, cols = self.grid(tuple(shape))
        th, tw = self.tile
        if volumes.shape[1:] != self.volume_shape(tuple(shape)) or len(volumes) % rows:
            raise ValueError(
                f"volumes of shape {volumes.shape} do not unfold into spectra of shape "
                f"{tuple(shape)}"
            )
        v = volumes[:, self.pad : self.pad + cols].reshape(-1, rows, cols, th, tw)
        return np.ascontiguousarray(v.transpose(0, 1, 3, 2, 4).reshape(-1, *shape))
