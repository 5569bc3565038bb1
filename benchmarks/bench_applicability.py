"""Speed of the applicability measure's Sinkhorn distances (exp2sim.applicability.sinkhorn).

What is measured, in one run, for feature vectors of dimension D (default 256, the size
`FeatureSettings` projects to):

1. `sinkhorn_distances` for one input: 1,000 repeats of 20 random training points vs the
   input, all repeats in one batched geomloss call (subset drawing and scaling included):
   the best and the median of `--trials` timed calls after one warm-up call.
2. The same 1,000 repeats as a Python loop of one geomloss call per repeat, as the paper's
   code did (one (20, D) vs (1, D) call each, same solver settings): the loop over
   `--loop` repeats is timed and scaled to 1,000.
3. The ratio of 2 to 1 (median times).
4. The batched call with torch's default thread count instead of one thread (on shared
   cores this is where the time went; see `sinkhorn_distances(threads=...)`).
5. Several inputs at once (`--inputs`, default 10): time per input.

The training features are Gaussian (N = 2,000); the timings do not depend on the values.

Usage:
    python benchmarks/bench_applicability.py
    python benchmarks/bench_applicability.py --dim 64 --dim 256 --dim 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from exp2sim.applicability.sinkhorn import (
    DEFAULT_BLUR,
    rms_spread,
    sinkhorn_batch,
    sinkhorn_distances,
    subset_indices,
    torch_threads,
)

POINTS, REPEATS = 20, 1000


def timed(fn, trials: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def python_loop(train: np.ndarray, y: np.ndarray, repeats: int) -> None:
    """One geomloss call per repeat (the unbatched way), same scale, blur and diameter."""
    scale = rms_spread(train)
    idx = subset_indices(len(train), POINTS, repeats, seed=0)
    x_all = torch.from_numpy(train) / scale
    y_t = torch.from_numpy(y) / scale
    both = torch.cat([x_all, y_t])
    diameter = float((both.max(0).values - both.min(0).values).norm())
    with torch.inference_mode(), torch_threads(1):
        for r in range(repeats):
            sinkhorn_batch(x_all[idx[r]][None], y_t[None], DEFAULT_BLUR, diameter)


def bench(dim: int, trials: int, loop: int, n_inputs: int) -> dict:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2000, dim)).astype(np.float32)
    inputs = rng.normal(size=(n_inputs, dim)).astype(np.float32)
    one = inputs[:1]
    batched = timed(lambda: sinkhorn_distances(train, one, POINTS, REPEATS), trials)
    loop_times = timed(lambda: python_loop(train, one, loop), max(1, trials // 3))
    loop_1000 = [t * REPEATS / loop for t in loop_times]

    threaded = timed(lambda: sinkhorn_distances(train, one, POINTS, REPEATS, threads=None), trials)
    many = timed(lambda: sinkhorn_distances(train, inputs, POINTS, REPEATS), max(1, trials // 2))
    return {
        "dim": dim,
        "batched_1000_best_s": min(batched),
        "batched_1000_median_s": statistics.median(batched),
        "loop_1000_median_s": statistics.median(loop_1000),
        "speedup_vs_loop": statistics.median(loop_1000) / statistics.median(batched),
        "batched_1000_default_threads_median_s": statistics.median(threaded),
        "torch_threads": torch.get_num_threads(),
        "inputs": n_inputs,
        "per_input_median_s": statistics.median(many) / n_inputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, action="append", help="feature dimension(s)")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--loop", type=int, default=200, help="repeats timed in the loop")
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = [bench(d, args.trials, args.loop, args.inputs) for d in args.dim or [256]]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    for r in results:
        print(
            f"D={r['dim']}: 1,000 repeats of {POINTS} vs 1 point: batched "
            f"{r['batched_1000_median_s'] * 1e3:.1f} ms median "
            f"(best {r['batched_1000_best_s'] * 1e3:.1f} ms; with {r['torch_threads']} torch "
            f"threads {r['batched_1000_default_threads_median_s'] * 1e3:.1f} ms); "
            f"Python loop {r['loop_1000_median_s'] * 1e3:.0f} ms; speed-up "
            f"{r['speedup_vs_loop']:.0f}x; {r['inputs']} inputs at once: "
            f"{r['per_input_median_s'] * 1e3:.1f} ms per input"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
