"""How far could the deconvolution of a finished evaluation go, and what holds it back?

Reads an evaluation's output folder (`exp2sim demo --out DIR`: its data/, gan/ and
classifier-unconvolved/), splits the paired test spectra into halves (even rows to fit, odd
rows to score) and scores deconvolutions of the second half's Monte Carlo-convolved spectra
by PSNR against the true unconvolved spectra and by the shares of the certainty gap and of
the margin gap closed (the run's classifier trained on unconvolved spectra; the report's
measures: the certainty of the true model, and its margin over the other models):

- the report's three methods: the GAN's Exp2Sim translation, the same refined by five
  Richardson-Lucy iterations with the kernels of the GAN's Sim2Exp (gan/refine.py), and
  Richardson-Lucy with the instrument's widths;
- oracles fitted on the first half's true pairs, which no method has (the limits of a
  model class, not methods): the best linear deconvolution, one 3 x 3 x 3 filter per energy
  slice of each incident energy (volume view), and a small 3D CNN;
- the same CNN trained instead on pseudo-pairs (F(x), x) made from the unconvolved
  *training* spectra x by a forward model F: the Gaussian blur with the instrument's widths,
  the GAN's Sim2Exp generator (both usable without pairs), and the best linear forward
  filter (fitted like the linear deconvolution: an oracle). Each forward model's own PSNR
  against the Monte Carlo-convolved test spectra is printed beside it, and that of the
  best linear forward filters with one filter for the whole mosaic, one per incident
  energy and one per slice.

First, whether the Monte Carlo noise of the convolved spectra (the config's points per bin)
matters: the first model's first `--noise-spectra` convolved test spectra against the same
spectra at `--noise-points` points per bin.

The CNN: five 3 x 3 x 3 convolutions with ReLU (`--channels` wide) and a residual output, on
asinh-compressed intensities relative to each input's maximum, with the mask as a second
channel; L2 over measured voxels; Adam, `--iterations` steps of 8 crops (10 x 24 x 24).
Same seed, same numbers (CPU). Takes about 25 minutes on 2 cores at the defaults (each
CNN about 5; `--cnn` picks which are trained: true pairs, or pseudo-pairs of blur,
sim2exp or linear; `--cnn ""` none, about 2.5 minutes).

Usage: python benchmarks/deconvolution_headroom.py DIR [--iterations 2800] [--seed 0]
       [--cnn true,blur,sim2exp,linear]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exp2sim.classifier import DUQClassifier
from exp2sim.evaluation import baselines, metrics
from exp2sim.evaluation.config import EvaluationConfig
from exp2sim.evaluation.data import _sim_config, build_datasets
from exp2sim.gan.data import shifted_copies
from exp2sim.gan.fold import TileFold
from exp2sim.gan.refine import LearnedBlur
from exp2sim.gan.translate import Translator
from exp2sim.spectra.factory import make_calculator
from exp2sim.spectra.generate import SimulationConfig

FOLD = TileFold((40, 40))  # the PCSMO mosaic's tiles: one volume per incident energy
SHAPE = (240, 400)
COMPRESS = 10.0  # asinh(COMPRESS * I / max I): the CNN's input and output scale
NEIGHBOURS = tuple(itertools.product((-1, 0, 1), repeat=3))  # a 3 x 3 x 3 filter's taps
CNNS = ("true", "blur", "sim2exp", "linear")  # what each CNN learns from (see above)


def shifted(volumes: np.ndarray) -> np.ndarray:
    """(n, E, h, k) volumes -> their 27 neighbours (n, E, h, k, 27), 0 where masked or
    beyond the edges (the kernel generators' shifted taps, `shifted_copies`)."""
    taps = np.stack([shifted_copies(v, NEIGHBOURS) for v in volumes])  # (n, 27, E, h, k)
    return np.nan_to_num(np.moveaxis(taps, 1, -1))


def fit_linear(
    inputs: np.ndarray, targets: np.ndarray, per: str = "slice"
) -> Callable[[np.ndarray], np.ndarray]:
    """Least-squares 3 x 3 x 3 filters from mosaics `inputs` to `targets` (n, 240, 400), each
    pair scaled by its input's maximum: one filter per energy slice of each incident energy
    (`per` = "slice"), per incident energy ("energy") or one for the whole mosaic ("mosaic").
    Returns the filter as a function of mosaics (m, 240, 400), clipped at zero."""
    rows = FOLD.grid(SHAPE)[0]
    scale = np.nanmax(inputs, axis=(1, 2))[:, None, None]
    x = shifted(FOLD.fold(inputs / scale))
    x = x.reshape(-1, rows, *x.shape[1:])  # (n, incident energy, E, h, k, 27)
    y = FOLD.fold(targets / scale).reshape(x.shape[:-1])
    ok = np.isfinite(y) & np.isfinite(FOLD.fold(inputs).reshape(x.shape[:-1]))
    slices = x.shape[2]
    groups = {
        "slice": list(itertools.product(range(rows), range(slices))),
        "energy": [(r, slice(None)) for r in range(rows)],
        "mosaic": [(slice(None), slice(None))],
    }[per]
    w = np.zeros((rows, slices, x.shape[-1]))  # weights per (incident energy, slice)
    for r, e in groups:
        m = ok[:, r, e]
        w[r, e] = np.linalg.lstsq(
            x[:, r, e][m].astype(float), y[:, r, e][m].astype(float), rcond=None
        )[0]

    def apply(mosaics: np.ndarray) -> np.ndarray:
        v = shifted(FOLD.fold(mosaics))
        out = np.einsum("nrehkt,ret->nrehk", v.reshape(-1, rows, *v.shape[1:]), w)
        out = FOLD.unfold(out.reshape(v.shape[:-1]), SHAPE)
        return np.where(np.isfinite(mosaics), np.clip(out, 0, None), np.nan)

    return apply


class CNN(nn.Module):
    """Residual 3D CNN on (B, 2, E, h, k): compressed intensity and mask."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(2, channels, 3, padding=1), nn.ReLU()]
        for _ in range(4):
            layers += [nn.Conv3d(channels, channels, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv3d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return z + self.net(torch.cat([z, mask], dim=1))


def compress(mosaics: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mosaics -> (compressed volumes with 0 where masked, mask) as float32 (n, E, h, k)."""
    v = FOLD.fold(np.arcsinh(COMPRESS * mosaics / scale[:, None, None]))
    mask = ~np.isfinite(v)
    return np.nan_to_num(v).astype(np.float32), mask.astype(np.float32)


def train_cnn(
    inputs: np.ndarray, targets: np.ndarray, args: argparse.Namespace
) -> Callable[[np.ndarray], np.ndarray]:
    """Train the CNN from mosaics `inputs` to `targets` (n, 240, 400); returns the
    deconvolution as a function of mosaics."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    scale = np.nanmax(inputs, axis=(1, 2))
    x, mask = compress(inputs, scale)
    y, _ = compress(targets, scale)
    net = CNN(args.channels)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    crop = 24
    for it in range(args.iterations):
        if it == args.iterations // 2:
            for group in opt.param_groups:
                group["lr"] = 3e-4
        i = rng.integers(0, len(x), 8)
        a, b = rng.integers(0, x.shape[2] - crop + 1, 2)
        window = (i, slice(None), slice(a, a + crop), slice(b, b + crop))
        m = torch.from_numpy(mask[window][:, None])
        out = net(torch.from_numpy(x[window][:, None]), m)
        measured = m == 0
        loss = ((out - torch.from_numpy(y[window][:, None]))[measured] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def apply(mosaics: np.ndarray) -> np.ndarray:
        s = np.nanmax(mosaics, axis=(1, 2))
        z, m = compress(mosaics, s)
        out = net(torch.from_numpy(z[:, None]), torch.from_numpy(m[:, None]))[:, 0].numpy()
        intensity = np.sinh(np.clip(FOLD.unfold(out, SHAPE), 0, None)) / COMPRESS
        return np.where(np.isfinite(mosaics), intensity * s[:, None, None], np.nan)

    return apply


def mean_psnr(x: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([metrics.psnr(a, b) for a, b in zip(x, truth, strict=True)]))


def monte_carlo_noise(
    cfg: EvaluationConfig, run: Path, convolved: np.ndarray, count: int, points: int
) -> list[float]:
    """PSNRs of the first model's first `count` convolved test spectra (as stored) against
    the same parameters convolved with `points` points per bin."""
    model = cfg.models[0]
    params = np.load(run / "data" / f"{Path(model).stem}_test_parameters.npy")[:count]
    config = _sim_config(cfg, model, "montecarlo", cfg.n_test, 0)  # n, seed: not used here
    precise = make_calculator(replace(config, n_mc=points))
    return [metrics.psnr(convolved[i], precise(p)) for i, p in enumerate(params)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path, help="an evaluation's output folder")
    ap.add_argument("--iterations", type=int, default=2800)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-spectra", type=int, default=4)
    ap.add_argument("--noise-points", type=int, default=32)
    ap.add_argument(
        "--cnn",
        default=",".join(CNNS),
        help=f"which CNNs to train, comma-separated from {', '.join(CNNS)} (empty: none)",
    )
    args = ap.parse_args()
    cnns = {c for c in args.cnn.split(",") if c}
    if cnns - set(CNNS):
        ap.error(f"unknown --cnn {', '.join(sorted(cnns - set(CNNS)))}; choose from {CNNS}")
    t0 = time.perf_counter()
    cfg = EvaluationConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    data = build_datasets(cfg, args.run / "data")
    truth, convolved = data["test"].signal, data["test_convolved"].signal
    labels = data["test"].labels
    fit, score = np.arange(len(truth)) % 2 == 0, np.arange(len(truth)) % 2 == 1
    noise = monte_carlo_noise(cfg, args.run, convolved, args.noise_spectra, args.noise_points)
    print(
        f"Monte Carlo noise: {cfg.n_mc} against {args.noise_points} points per bin, PSNR "
        + ", ".join(f"{x:.1f}" for x in noise)
        + " dB",
        flush=True,
    )
    train = data["train"].signal  # unconvolved, unpaired: the pseudo-pairs' truth
    blur = baselines.ResolutionBlur.for_config(SimulationConfig(kind="mosaic"))
    sim2exp = Translator.from_run(args.run / "gan", "sim2exp")

    classifier = DUQClassifier.load(args.run / "classifier-unconvolved")

    def certainty(x: np.ndarray) -> np.ndarray:
        """Mean certainty of each scored spectrum's true model, and mean margin (2,)."""
        scores = metrics.true_model_certainty(classifier.certainties(x), labels[score])
        return np.array([s.mean() for s in scores])

    top, bottom = certainty(truth[score]), certainty(convolved[score])
    gan_deconvolved = Translator.from_run(args.run / "gan", "exp2sim")(convolved[score])
    target = truth[score]
    results: list[tuple[str, np.ndarray, str]] = [
        ("convolved input", convolved[score], ""),
        ("GAN (Exp2Sim)", gan_deconvolved, ""),
        (
            "GAN, refined (RL with Sim2Exp's kernels, 5 it.)",
            LearnedBlur(sim2exp).deconvolve(convolved[score], gan_deconvolved, 5),
            "",
        ),
        (
            "Richardson-Lucy",
            baselines.richardson_lucy_deconvolve(convolved[score], blur, cfg.rl_iterations),
            "",
        ),
        ("oracle: linear, per slice", fit_linear(convolved[fit], truth[fit])(convolved[score]), ""),
    ]
    print(f"data and baselines: {time.perf_counter() - t0:.0f} s", flush=True)
    fidelity: dict[str, float] = {}  # forward model -> PSNR of its convolution of the truth

    def forward_psnr(name: str, forward: Callable[[np.ndarray], np.ndarray]) -> float:
        if name not in fidelity:
            fidelity[name] = mean_psnr(forward(truth[score]), convolved[score])
        return fidelity[name]

    linear_forward = {
        per: fit_linear(truth[fit], convolved[fit], per) for per in ("mosaic", "energy", "slice")
    }
    for per, forward in linear_forward.items():
        own = forward_psnr(f"oracle linear per {per}", forward)
        print(f"oracle linear forward filter, one per {per}: {own:.2f} dB", flush=True)
    if "true" in cnns:
        t = time.perf_counter()
        cnn = train_cnn(convolved[fit], truth[fit], args)
        results.append(("oracle: CNN on true pairs", cnn(convolved[score]), ""))
        print(f"CNN on true pairs: {time.perf_counter() - t:.0f} s", flush=True)
    forwards = {
        "blur": ("Gaussian blur", lambda x: baselines.gaussian_convolve(x, blur)),
        "sim2exp": ("GAN (Sim2Exp)", sim2exp),
        "linear": ("oracle linear per slice", linear_forward["slice"]),
    }
    for key, (name, forward) in forwards.items():
        own = forward_psnr(name, forward)
        print(f"forward model {name}: {own:.2f} dB", flush=True)
        if key not in cnns:
            continue
        t = time.perf_counter()
        cnn = train_cnn(forward(train), train, args)
        note = f"forward model {own:.2f} dB"
        results.append((f"CNN on pseudo-pairs: {name}", cnn(convolved[score]), note))
        print(f"CNN on {name} pseudo-pairs: {time.perf_counter() - t:.0f} s", flush=True)

    print(
        f"\n{score.sum()} scored spectra (odd rows); on the truth: true model's certainty "
        f"{top[0]:.3f}, margin {top[1]:.3f}"
    )
    print(
        f"{'deconvolution':46s} {'PSNR dB':>8s} {'certainty':>9s} {'gap closed':>10s} "
        f"{'margin':>7s} {'gap closed':>10s}"
    )
    for name, x, note in results:
        c = certainty(x)
        gap = 100 * (c - bottom) / (top - bottom)  # top == bottom: inf or nan, printed
        print(
            f"{name:46s} {mean_psnr(x, target):8.2f} {c[0]:9.3f} {gap[0]:9.1f} % "
            f"{c[1]:7.3f} {gap[1]:9.1f} %  {note}"
        )
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
