"""The configuration of one GAN training run: one dataclass, saved as JSON beside the
checkpoints and embedded in every checkpoint file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from exp2sim.gan.fold import TileFold
from exp2sim.settings import from_dict, read_toml


@dataclass
class TrainConfig:
    """Everything that defines an Exp2SimGAN run. Domain A is experiment-like (convolved),
    domain B simulation (unconvolved); G_A translates A -> B (Exp2Sim), G_B B -> A (Sim2Exp).
    """

    # networks
    ngf: int = 32  # generator width (channels after the stem)
    n_blocks: int = 6  # residual blocks at 1/4 resolution
    ndf: int = 32  # discriminator width
    d_layers: int = 3  # strided discriminator stages
    # not in the paper: 0, the generators draw their output (tanh), as in the paper; k > 0
    # (odd), they predict per-pixel k^dim-tap kernels and output a local blur (Sim2Exp) or
    # unsharp mask (Exp2Sim) of the input (networks.ResnetGenerator)
    kernel: int = 0
    # not in the paper, kernel generators only: extra kernel taps, each the input at a fixed
    # pixel offset (one offset per spatial axis), for resolution that mixes distant parts of
    # a spectrum, e.g. the neighbouring energy slices of the PCSMO mosaic, 40 columns away:
    # ((0, -40), (0, 40)). The values come from the whole spectrum, not only the crop.
    kernel_shifts: tuple[tuple[int, ...], ...] = ()
    # width of the generators' last convolution, which makes the output (drawn generators)
    # or the kernels' weights (kernel generators) at full resolution: 7 in the paper (an
    # odd number; 3 makes that layer 343 / 27 = 12.7x cheaper in 3D, see the demo preset)
    head: int = 7
    # not in the paper: () or the (height, width) of the equal tiles a 2D spectrum is made
    # of; each row of tiles is then trained on and translated as one volume (tiles, height,
    # width) by 3D networks, with `fold_pad` masked slices at both ends (gan/fold.py), so
    # that the neighbouring tiles of a row (the PCSMO mosaic's energy slices) are neighbours
    fold_tiles: tuple[int, ...] = ()
    fold_pad: int = 3
    # not in the paper: the Exp2Sim generator's translations are clipped at zero intensity,
    # as a simulated S(Q, w) never is negative (the training losses see them unclipped, see
    # ResnetGenerator.translation). Its unsharp mask overshoots below zero: on demo34's test
    # set 47 % of the deconvolved pixels were negative, and the unconvolved classifier called
    # 97 % of those spectra none of its models (clipped: 6 %).
    # Off by itself when domain B's files hold negative values (`clips`).
    nonnegative_simulation: bool = True
    nce_layers: tuple[str, ...] = ("down1", "down2", "block1", "block5")
    nce_patches: int = 256  # locations sampled per layer and image
    nce_units: int = 256  # projection head width
    nce_temperature: float = 0.07
    # loss weights, GAN : NCE : identity : auxiliary = 1 : 4 : 2 : 1 as in the paper
    lambda_gan: float = 1.0
    lambda_nce: float = 4.0
    lambda_idt: float = 2.0
    lambda_aux: float = 1.0
    # not in the paper: resolution moves intensity only locally, so a translation should keep
    # the intensity smoothed by a Gaussian of `intensity_sigma` pixels (see DCLGAN)
    lambda_intensity: float = 0.0
    intensity_sigma: float = 4.0
    # not in the paper: evaluate, select and translate with an exponential moving average
    # of the generators' weights, w_avg <- ema_decay * w_avg + (1 - ema_decay) * w after
    # every update (0: off, the latest weights; 0.995 averages over about 200 iterations)
    ema_decay: float = 0.0
    # optimisation: Adam, constant lr for `epochs`, then linear decay to 0 over `epochs_decay`
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epochs: int = 10
    epochs_decay: int = 10
    batch_size: int = 1
    iterations_per_epoch: int = 0  # 0: max(n_A, n_B) // batch_size
    # data
    crop: int = 64  # side of the random training crops (clipped to the data, multiple of 4)
    flip_axes: tuple[int, ...] = (-1,)  # spatial axes flipped at random (-1: the last)
    intensity_scale: str = "percentile"  # percentile or mean, see normalisation.py
    percentile: float = 99.0  # for intensity_scale = percentile
    compression: float = 10.0
    val_fraction: float = 0.1  # spectra held out of each domain for model selection
    # bookkeeping
    fid_every: int = 1  # epochs between Frechet-distance evaluations
    figure_every: int = 1  # epochs between loss-curve / sample figures
    checkpoint_every: int = 500  # iterations between mid-epoch checkpoints
    precision: str = "fp32"  # fp32 or bf16 (autocast for the network passes)
    device: str = "auto"  # auto, cpu or cuda
    seed: int = 0
    extra: dict = field(default_factory=dict)  # free-form notes, kept with the run

    ARCHITECTURE = (
        "ngf", "n_blocks", "ndf", "d_layers", "kernel", "kernel_shifts", "nce_layers", "nce_units",
        "fold_tiles", "fold_pad", "head",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.nce_layers = tuple(self.nce_layers)
        self.flip_axes = tuple(self.flip_axes)
        self.kernel_shifts = tuple(tuple(int(o) for o in s) for s in self.kernel_shifts)
        self.fold_tiles = tuple(int(t) for t in self.fold_tiles)
        self.folding()  # a clear error for impossible tiles
        if self.intensity_scale not in ("percentile", "mean"):
            raise ValueError(
                f"intensity_scale must be percentile or mean, not {self.intensity_scale!r}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {self.precision!r}")
        for name in (
            "ngf", "n_blocks", "ndf", "d_layers", "nce_patches", "batch_size", "intensity_sigma"
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        from exp2sim.gan.networks import encoder_layer_names

        unknown = set(self.nce_layers) - set(encoder_layer_names(self.n_blocks))
        if unknown or not self.nce_layers:
            raise ValueError(
                f"nce_layers {sorted(unknown) or '[]'} not among the generator's encoder "
                f"layers {encoder_layer_names(self.n_blocks)}"
            )
        if self.crop < self.min_crop():
            raise ValueError(f"crop must be at least {self.min_crop()} pixels")
        if self.kernel < 0 or (self.kernel and self.kernel % 2 == 0):
            raise ValueError(f"kernel must be 0 or an odd number of taps, got {self.kernel}")
        if self.head < 1 or self.head % 2 == 0:
            raise ValueError(f"head must be an odd number of pixels, got {self.head}")
        if self.kernel_shifts and not self.kernel:
            raise ValueError("kernel_shifts need a kernel generator (kernel > 0)")
        if len({len(s) for s in self.kernel_shifts}) > 1 or any(
            not any(s) for s in self.kernel_shifts
        ):
            raise ValueError(
                f"kernel_shifts {self.kernel_shifts}: give one non-zero offset per spatial axis"
            )
        if self.fold_tiles and any(len(s) != 3 for s in self.kernel_shifts):
            raise ValueError(
                "kernel_shifts of a run with fold_tiles are offsets in the volumes: give three "
                "per shift (slice, row, column)"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must lie between 0 and 1")

    def clips(self, b_nonnegative: bool = True) -> bool:
        """Whether the Exp2Sim translations are clipped at zero intensity: asked for
        (`nonnegative_simulation`) and domain B, the simulation, has no negative values
        (background-subtracted data, say, may have)."""
        return self.nonnegative_simulation and b_nonnegative

    def folding(self) -> TileFold | None:
        """The fold of 2D spectra into volumes, or None (spectra as they are)."""
        return TileFold(self.fold_tiles, self.fold_pad) if self.fold_tiles else None

    def min_crop(self) -> int:
        """Smallest crop side the discriminator can judge: its strided stages and two
        4-wide convolutions must leave at least 2 patches for instance norm."""
        return max(16, 3 * 2**self.d_layers)

    def architecture(self) -> dict:
        """The fields that fix the networks' weights and their meaning."""
        return {k: _lists(v) for k, v in self.to_dict().items() if k in self.ARCHITECTURE}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return from_dict(cls, values, "training option(s)")

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _lists(value: object) -> object:
    """Tuples (nested) as lists, as they come back from JSON."""
    return [_lists(v) for v in value] if isinstance(value, tuple | list) else value


PRESETS: dict[str, dict] = {
    # A few minutes per epoch on a 2-core CPU for a few hundred 2D spectra.
    "small": {},
    # The paper's configuration (GPU-sized): 11.4 M-parameter generators, 256 crops, 200 + 200
    # epochs. fp32 by default, as in the paper. On CPUs with bf16 units, `precision = "bf16"`
    # trains 1.8-2.35x faster than the straightforward fp32 step (AMX Xeon, AVX-512 EPYC;
    # fp32 1.28-1.68x) and learns the tests' blur task as well; an H100 at batch 1 was no
    # faster with it (benchmarks/bench_gan.py, README).
    "paper": {
        "ngf": 64,
        "n_blocks": 9,
        "ndf": 64,
        "crop": 256,
        "epochs": 200,
        "epochs_decay": 200,
    },
}


def load_preset(name_or_file: str) -> TrainConfig:
    """A preset by name, or a TOML file of TrainConfig fields (optionally with
    `preset = "paper"` to start from a preset)."""
    if name_or_file in PRESETS:
        return TrainConfig.from_dict(PRESETS[name_or_file])
    path = Path(name_or_file)
    if path.suffix != ".toml":
        raise ValueError(f"unknown preset {name_or_file!r}: use small, paper or a .toml file")
    values = read_toml(path)
    base = PRESETS.get(values.pop("preset", "small"))
    if base is None:
        raise ValueError(f"{path}: unknown preset; use small or paper")
    return TrainConfig.from_dict({**base, **values})
