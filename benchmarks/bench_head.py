"""What the width of the generators' last convolution (`TrainConfig.head`) costs in the demo.

The demo's GAN (the `demo` evaluation preset: volume view of the 240 x 400 mosaic, 3-tap
kernel generators, ngf 16) with the paper's 7-wide head, the baseline, and with a 3-wide
one, each built and timed in turn (alternating, `--rounds` times, since these machines are
noisy) on synthetic mosaics of sharp lines (domain B) and their Gaussian blur (domain A):

1. seconds per training step: median of `--steps` steps after 3 warm-up steps;
2. seconds for one held-out Frechet evaluation (`Trainer.evaluate`: every held-out volume
   of both domains translated, as at the demo's epochs 5 and 10).

Prints each case's medians over the rounds and the ratio baseline / case (> 1: faster than
the 7-wide head). The networks train from their initial weights; timings do not depend on
what they learn.

Usage: python benchmarks/bench_head.py [--steps 20] [--rounds 2] [--heads 7,3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exp2sim.evaluation.config import load_config
from exp2sim.evaluation.pipeline import gan_config
from exp2sim.gan.synthetic import blur, sharp_spectra
from exp2sim.gan.train import Trainer


def time_case(head: int, data: Path, steps: int) -> dict[str, float]:
    """Median training-step seconds and one evaluation's seconds for one head width."""
    demo = load_config("demo")
    config = gan_config(demo, demo.gan).replace(head=head)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer.new(config, data / "a.npy", data / "b.npy", Path(tmp) / "run")
        for _ in range(3):
            trainer.step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.step()
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.evaluate()
        return {"step": statistics.median(times), "evaluate": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--heads", default="7,3", help="comma-separated; the first is the baseline")
    args = ap.parse_args()
    heads = [int(h) for h in args.heads.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        # the demo's mosaic shape: 6 rows of 10 tiles of 40 x 40 pixels
        np.save(data / "b.npy", sharp_spectra(40, (240, 400), seed=1, width=1.0, lines=40))
        np.save(data / "a.npy", blur(sharp_spectra(40, (240, 400), seed=2, lines=40), 1.5))
        results: dict[int, list[dict[str, float]]] = {h: [] for h in heads}
        for r in range(args.rounds):
            for head in heads:
                results[head].append(time_case(head, data, args.steps))
                print(f"round {r + 1}, head {head}: {results[head][-1]}", flush=True)
    base = {k: statistics.median(x[k] for x in results[heads[0]]) for k in ("step", "evaluate")}
    print("\n| head | training step (s) | evaluation (s) | speed-up step / evaluation |")
    print("|---|---|---|---|")
    for head in heads:
        med = {k: statistics.median(x[k] for x in results[head]) for k in ("step", "evaluate")}
        print(
            f"| {head} | {med['step']:.3f} | {med['evaluate']:.2f} | "
            f"{base['step'] / med['step']:.2f}x / {base['evaluate'] / med['evaluate']:.2f}x |"
        )


if __name__ == "__main__":
    main()
