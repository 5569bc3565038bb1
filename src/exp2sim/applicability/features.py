"""Feature vectors of spectra for the applicability measure, from the generator's encoder.

Each spectrum (n, *S) is brought to the training intensity level (`LevelMatch`, as
`translate` does), normalised with the source domain's intensity scale (masked pixels set
to 0, as the generator sees them when translating) and passed through the encoder. Five
blocks of numbers are taken from four depths of it:

- texture (four blocks): each channel's standard deviation over the whole spectrum at the
  stem convolution (`stem`, ngf channels, 7-pixel filters on the input itself; its
  natural logarithm, see below), the first and second downsampling convolutions (`down1`,
  2 ngf, full resolution; `down2`, 4 ngf, half) and the last residual block (4 ngf,
  quarter): which local structures occur and how strongly, wherever they are (the
  statistics style transfer compares). The three convolutions are taken before their
  instance norm, which would set every standard deviation to 1.
- layout: each channel's mean over a coarse grid of cells at the last residual block
  (`FeatureSettings.grid`, about 64 cells in the spectrum's aspect ratio: 6 x 10 for the
  240 x 400 MAPS mosaic, one cell per 40 x 40 tile): where in the spectrum the features
  appear (C * cells numbers).

Each block is reduced to D/5 numbers by a fixed Gaussian random projection (entries
N(0, 1/(D/5)), drawn from `FeatureSettings.seed`; a block no longer than D/5 is kept as it
is). By the Johnson-Lindenstrauss lemma such a projection keeps distances between feature
vectors within a few tens of per cent without being fitted to any data, so directions the
training set never explores (those of out-of-distribution inputs) survive it, which a PCA
fitted on the training set would not guarantee. sinkhorn.py scales each block by its own
training spread, so all five count equally.

Why these blocks. With the layout alone, where lines happen to sit dominates the spread of
the training set and hides inputs of another kind (noise, sharp unblurred lines, blank
spectra scored as in-distribution on a trained 1D test run). Until version 3 of the
calibration files the other block held each channel's mean and standard deviation at the
last residual block. The channel means say mostly how much of the spectrum is lit, so
spectra of other magnets with few, low-energy branches (Rb2MnF4, mostly empty on the MAPS
mosaic) scored 2-3 times farther than photographs, which light every pixel (demo23: Rb2MnF4
22.8, negative control 12.0, photographs 7.7, digits 10.5). The generator translates patch
by patch, so what decides whether it can be trusted is whether the input's local structures
are like those it was trained on: texture statistics at several depths put photographs and
digits farthest on the GANs of that time (demo25: artefacts 3.4, negative control 11.0,
Rb2MnF4 19.8, photographs 24.6, digits 31.2).

Why the stem, and its logarithm (version 4). Every layer after the stem sees the input
through an instance norm, which removes its contrast: only the stem sees how strongly each
7-pixel pattern occurs in the (level-matched) input. A kernel generator (`kernel` > 0)
needs its encoder only to choose blur widths, and without the stem its features put
photographs, which light every pixel, close to the training spectra (demo29: photographs
2.98, test spectra 0.99, one bright test spectrum 7.2; ROC AUC 0.981). The stem's
deviations are proportional to the input's contrast (the convolution is linear), so their
logarithm measures ratios (the deeper layers' deviations do not depend on the input's scale
at all): a spectrum twice as bright in places moves by log 2, a blank one far. Measured on
demo29's GAN and inputs (demo30): test spectra 0.98, photographs 23.9, digits 16.5, ROC AUC
0.999 / 1.000. With expected distances to the whole training bank, on eight GANs trained on
the demo data (four kernel generators, four plain ones, several seeds): AUC photographs
0.999 on all, digits 0.996-1.000 (version 3, on seven of them: 0.979-0.999 and
0.988-1.000). Without the logarithm the stem block did as well on six of seven, but not on
the seventh (0.993 / 0.988); taking the logarithm of every block instead let 3 of 10
single-line 1D spectra into "expert opinion" on one of the test runs. The price of the
stem: a background, which lights every pixel as a photograph does, moves a spectrum far
(demo30's GAN, 10 test spectra: background of 5-15 % of the 99th percentile alone 9.5,
noise, spurions or dead pixels alone 1.0, clean 1.0), so the artefact spectra score beyond
the negative control (demo30: 7.7 and 4.6; version 3: 1.3 and 5.4).

Volume views (`TrainConfig.fold_tiles`, gan/fold.py). A generator that sees each 2D mosaic
as a stack of volumes gives one feature vector per mosaic: each texture block is taken over
all of the mosaic's volumes together, and the layout block holds each volume's cells in
turn (`FeatureSettings.volumes`). In the texture statistics the positions of each volume
weigh its share of the mosaic's (normalised) intensity (version 5). The generator's
instance norm treats every volume alike, so a nearly empty one (an incident energy at
which Rb2MnF4's low-energy branches leave the window) has its faint remains blown up to the
contrast of a bright one, and an empty one adds a block of zero deviation; either pulled
the whole mosaic away from the training spectra, all of whose volumes are lit, although a
kernel generator's translation of a faint volume is faint whatever it does. Medians of
each set's distances on the demo's volume-view GAN (demo35, seed 0), equal weights /
intensity shares: training 0.74 / 0.74, test 0.79 / 0.78, unconvolved 1.53 / 1.82,
artefacts 5.21 / 5.12, negative control 4.65 / 5.87, Rb2MnF4 15.1 / 11.7, photographs
13.6 / 13.4, digits 13.1 / 14.9; ROC AUC of photographs and digits 1.000 either way. On
two more GANs (seed 1, and an unfinished run of seed 2) with shares: Rb2MnF4 15.5 / 12.9,
photographs 22.4 / 12.7, digits 20.2 / 12.0: below both on one, level with them on the
other. One Rb2MnF4 mosaic
(J1 = 0.05 meV) has almost nothing in the window and scores in the thousands, so that
set's mean says little.

Same code for 1D, 2D and 3D spectra; no autograd; batched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from exp2sim.gan.fold import TileFold
from exp2sim.gan.networks import ResnetGenerator, encoder_layer_names
from exp2sim.gan.normalisation import IntensityScale, LevelMatch

MAX_DIM = 512
_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


@dataclass(frozen=True)
class FeatureSettings:
    """How encoder outputs become feature vectors.

    grid: layout cells along each spatial axis of the encoder output.
    dim: the most numbers D per feature vector (at most 512; D/5 per block).
    seed: seed of the projection matrices.
    volumes: volumes per spectrum for a volume-view generator (gan/fold.py), else 1: the
      texture statistics are taken over all of a spectrum's volumes together, and the
      layout cells of its volumes follow one another.
    """

    grid: tuple[int, ...]
    dim: int = 256
    seed: int = 0
    volumes: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if not 1 <= len(self.grid) <= 3 or min(self.grid) < 1:
            raise ValueError(f"feature grid must have 1 to 3 positive sides, got {self.grid}")
        if not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"feature dimension must be between 1 and {MAX_DIM}, got {self.dim}")
        if self.volumes < 1:
            raise ValueError(f"volumes per spectrum must be at least 1, got {self.volumes}")

    @classmethod
    def for_shape(
        cls,
        shape: tuple[int, ...],
        cells: int = 64,
        dim: int = 256,
        seed: int = 0,
        fold: TileFold | None = None,
    ) -> FeatureSettings:
        """About `cells` pooling cells in the aspect ratio of spectra of `shape` (*S), at
        most one per encoder pixel (S / 4) along each axis; with a `fold`, about as many
        in all over the volumes each spectrum folds into."""
        shape = tuple(int(s) for s in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"invalid spectrum shape {shape}")
        volumes = 1
        if fold is not None:
            volumes, shape = fold.grid(shape)[0], fold.volume_shape(shape)
            cells = max(1, cells // volumes)
        factor = (cells / math.prod(shape)) ** (1 / len(shape))
        grid = tuple(max(1, min(round(s * factor), math.ceil(s / 4))) for s in shape)
        return cls(grid, dim, seed, volumes)

    def to_dict(self) -> dict:
        return asdict(self) | {"grid": list(self.grid)}

    @classmethod
    def from_dict(cls, values: dict) -> FeatureSettings:
        volumes = int(values.get("volumes", 1))  # calibrations before volume views: 1
        return cls(tuple(values["grid"]), int(values["dim"]), int(values["seed"]), volumes)


def random_projection(n_in: int, dim: int, seed: int) -> torch.Tensor | None:
    """The (n_in, dim) Gaussian projection with entries N(0, 1/dim), or None (identity)
    when n_in <= dim. Drawn on the CPU from `seed`: the same matrix on every machine."""
    if n_in <= dim:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_in, dim, generator=g) / math.sqrt(dim)


TEXTURE_FLOOR = 1e-6  # stem deviations below this (a blank input's) count as this: log finite


def texture_block(h: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Encoder output h (B * V, C, *S') of B spectra of V volumes each -> (B, C): each
    channel's standard deviation over all positions of a spectrum's volumes, the positions
    of volume v weighing weights[b, v] in all (weights (B, V), rows summing to 1; None:
    one volume per spectrum)."""
    if weights is None:
        return h.flatten(2).std(-1, unbiased=False)
    v = weights.shape[1]
    x = h.reshape(len(h) // v, v, h.shape[1], -1)  # (B, V, C, positions)
    w = weights.to(h)[..., None]  # (B, V, 1)
    means = x.mean(-1)  # (B, V, C)
    mean = (w * means).sum(1, keepdim=True)
    # the weighted variance: each volume's own variance plus its mean's offset
    variance = (w * (x.var(-1, unbiased=False) + (means - mean) ** 2)).sum(1)
    return variance.sqrt()


def volume_weights(z: np.ndarray, per: int) -> np.ndarray:
    """Each volume's share (n, per) of its spectrum's summed |normalised intensity|, for
    spectra folded into `per` volumes each, z (n * per, *S') (masked = 0); equal shares
    for a spectrum without intensity."""
    sums = np.abs(z.astype(np.float64)).reshape(len(z) // per, per, -1).sum(-1)
    total = sums.sum(1, keepdims=True)
    return np.where(total > 0, sums / np.where(total > 0, total, 1.0), 1.0 / per)


def layout_block(h: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Encoder output h (B, C, *S') -> (B, C * prod(grid)): each channel's cell means."""
    return _POOL[h.dim() - 2](h, grid).flatten(1)


class FeatureExtractor:
    """Feature vectors (n, D) of spectra from one generator's encoder: the texture blocks
    of `texture_layers`, then the layout block of the last one; `blocks` gives their
    lengths."""

    def __init__(
        self,
        generator: ResnetGenerator,
        scale: IntensityScale | None,
        settings: FeatureSettings,
        max_voxels: int = 2**20,
        match: LevelMatch | None = None,
        fold: TileFold | None = None,
    ) -> None:
        if len(settings.grid) != generator.dim:
            raise ValueError(
                f"feature grid {settings.grid} is {len(settings.grid)}D but the generator "
                f"works on {generator.dim}D spectra"
            )
        if fold is None and settings.volumes != 1:
            raise ValueError(f"{settings.volumes} volumes per spectrum need a fold")
        self.generator = generator.eval()
        self.scale, self.settings, self.max_voxels = scale, settings, max_voxels
        self.match = match  # each spectrum brought to the training level first (translate's)
        self.fold = fold  # a volume-view generator: 2D spectra folded into volumes
        self.dim = 2 if fold is not None else generator.dim
        last = encoder_layer_names(generator.n_blocks)[-1]
        self.texture_layers = ["stem", "down1", "down2", last]
        channels = generator.layer_channels(self.texture_layers)
        raw = (*channels, channels[-1] * math.prod(settings.grid) * settings.volumes)
        per_block = max(1, settings.dim // len(raw))
        # one projection per block, from seeds derived from the settings' seed
        self.projections = [
            random_projection(n, per_block, settings.seed * len(raw) + i) for i, n in enumerate(raw)
        ]
        self.blocks = tuple(
            n if p is None else per_block for n, p in zip(raw, self.projections, strict=True)
        )

    @property
    def n_features(self) -> int:
        """D, the length of each feature vector."""
        return sum(self.blocks)

    def __call__(self, spectra: np.ndarray) -> np.ndarray:
        """Spectra (n, *S) in the source domain's intensity units, or in any units with
        `match` (NaN = masked) -> features (n, D) float32."""
        spectra = self._checked(spectra)
        if self.scale is None:
            raise ValueError("this feature extractor has no intensity scale: pass normalised")
        if self.match is not None:
            factors = self.match.factors(spectra)
            spectra = spectra * factors.reshape(-1, *[1] * self.dim)  # float64: no overflow
        return self.normalised(self.scale.transform(spectra))

    def normalised(self, z: np.ndarray) -> np.ndarray:
        """Already normalised spectra (n, *S) (NaN = masked) -> features (n, D) float32."""
        z = self._checked(z)
        n, shape, per = len(z), z.shape[1:], self.settings.volumes  # per: inputs per spectrum
        if self.fold is not None:
            z = self.fold.fold(z)
        if len(z) != n * per:
            raise ValueError(
                f"spectra of shape {shape} fold into {len(z) // n} volumes each; the features "
                f"were set up for {per}"
            )
        z = np.nan_to_num(z, nan=0.0)  # masked pixels (and the fold's pads) as 0
        device = next(self.generator.parameters()).device
        batch = per * max(1, self.max_voxels // (per * math.prod(z.shape[1:])))
        out = []
        with torch.inference_mode():
            for start in range(0, len(z), batch):
                x = torch.from_numpy(np.ascontiguousarray(z[start : start + batch]))
                _, hs = self.generator(x[:, None].to(device), self.texture_layers, encode_only=True)
                weights = None  # one volume per spectrum: nothing to weigh
                if per > 1:
                    weights = torch.from_numpy(volume_weights(z[start : start + batch], per))
                # the stem's deviations scale with the input's contrast: their logarithm
                parts = [texture_block(hs[0].float(), weights).clamp_min(TEXTURE_FLOOR).log()]
                parts += [texture_block(h.float(), weights) for h in hs[1:]]
                cells = layout_block(hs[-1].float(), self.settings.grid)
                parts += [cells.reshape(-1, per * cells.shape[1])]
                rows = [
                    part.cpu() if projection is None else part.cpu() @ projection
                    for part, projection in zip(parts, self.projections, strict=True)
                ]
                out.append(torch.cat(rows, dim=1).numpy())
        return np.concatenate(out).astype(np.float32)

    def _checked(self, spectra: np.ndarray) -> np.ndarray:
        spectra = np.asarray(spectra, dtype=np.float32)
        if spectra.ndim != self.dim + 1 or len(spectra) == 0:
            raise ValueError(
                f"expected a stack (n, *S) of {self.dim}D spectra, got shape {spectra.shape}"
            )
        if np.isinf(spectra).any():
            raise ValueError("input contains infinite values (use NaN for masked pixels)")
        return spectra


def encoder_features(
    generator: ResnetGenerator,
    scale: IntensityScale | None,
    spectra: np.ndarray,
    settings: FeatureSettings | None = None,
) -> np.ndarray:
    """Feature vectors (n, D) float32 of spectra (n, *S) from `generator`'s encoder.

    Spectra are in the source domain's intensity units and normalised with `scale`, or
    already normalised when `scale` is None. `settings` default to
    `FeatureSettings.for_shape(S)`; pass the same settings for every set to be compared."""
    spectra = np.asarray(spectra, dtype=np.float32)
    if spectra.ndim != generator.dim + 1:
        raise ValueError(
            f"expected a stack (n, *S) of {generator.dim}D spectra, got shape {spectra.shape}"
        )
    if settings is None:
        settings = FeatureSettings.for_shape(spectra.shape[1:])
    extractor = FeatureExtractor(generator, scale, settings)
    return extractor(spectra) if scale is not None else extractor.normalised(spectra)
