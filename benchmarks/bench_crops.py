"""Cost of the GAN's crop sampling with kernel shifts (exp2sim.gan.data.CropSampler).

What is measured, in one run, on random 240 x 400 spectra (the MAPS mosaic; the values do
not matter): the time per sampled crop (48 x 48, random flips along the last axis) without
shifts, and with the mosaic's shifts ((0, -40), (0, 40)), whose taps are read from the whole
spectrum for each crop (`shifted_copies` with the crop as window); the best of `--trials`
timed runs of `--batches` batches of 2, after one warm-up batch; and the ratio of the two.
A training step of the demo's GAN takes about 70 ms on 2 cores, so either is negligible.

Usage:
    python benchmarks/bench_crops.py [--batches 200] [--trials 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from exp2sim.gan.data import CropSampler


def per_sample_ms(shifts: tuple[tuple[int, ...], ...], batches: int, trials: int) -> float:
    spectra = np.random.default_rng(0).random((80, 240, 400)).astype(np.float32)
    sampler = CropSampler(spectra, (48, 48), (-1,), shifts)
    generator = torch.Generator().manual_seed(0)
    sampler.sample(2, generator)
    best = np.inf
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(batches):
            sampler.sample(2, generator)
        best = min(best, (time.perf_counter() - start) / (2 * batches) * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    plain = per_sample_ms((), args.batches, args.trials)
    shifted = per_sample_ms(((0, -40), (0, 40)), args.batches, args.trials)
    print(f"crop sample, no shifts:       {plain:.4f} ms")
    print(f"crop sample, shifts +-40 px:  {shifted:.4f} ms")
    print(f"ratio shifted / plain:        {shifted / plain:.2f}")


if __name__ == "__main__":
    main()
