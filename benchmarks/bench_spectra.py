"""CPU-seconds per 240 x 400 PCSMO mosaic (unconvolved and convolved) and per 3D volume,
the convergence of the convolution with the number of points per bin, and the scaling of
dataset generation and of parameter draws with Dask workers.

Printed next to the paper's pipeline: ~8 CPU-minutes per unconvolved and ~720 CPU-minutes
per convolved mosaic. CPU-seconds (process time) of one thread are the measure: Dask's
workers run single-threaded, and with two BLAS threads a mosaic costs about 1.7x the CPU time
(their spinning) for about the same wall time (Monte Carlo mosaic, 16 points: 19.3-20.6
against 11.4-12.0 CPU-s, 10.8-12.0 against 11.4-12.0 s wall). The
convergence criterion is the relative L2 change of the image when the points per bin are
doubled (target < 2 %).

Usage: python benchmarks/bench_spectra.py [--skip-scaling | --scaling-only]
       [--mc 4,8,16,32] [--gauss 4,9,16,36]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from exp2sim.spectra.dataset import read_dataset
from exp2sim.spectra.factory import make_bins_and_mask, make_calculator
from exp2sim.spectra.generate import (
    DaskClient,
    Job,
    SimulationConfig,
    draw_parameters,
    run_jobs,
)
from exp2sim.spinwave import load_model

PAPER_UNCONVOLVED_S = 8 * 60
PAPER_CONVOLVED_S = 720 * 60


def cpu_seconds(fn) -> tuple[float, float, object]:
    """(CPU seconds, wall seconds, result) of one call on one thread (BLAS and torch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            c0, w0 = time.process_time(), time.perf_counter()
            out = fn()
            return time.process_time() - c0, time.perf_counter() - w0, out
    finally:
        torch.set_num_threads(threads)


def convergence(kind: str, method: str, points: list[int], params: np.ndarray) -> list[tuple]:
    """CPU seconds per spectrum and relative change to the next point count."""
    rows, previous = [], None
    for n in points:
        calc = make_calculator(SimulationConfig(kind=kind, resolution=method, n_mc=n))
        calc(params)  # warm-up: tables and caches
        cpu, wall, image = cpu_seconds(lambda calc=calc: calc(params))
        change = None
        if previous is not None:
            ok = np.isfinite(image)
            change = np.linalg.norm(image[ok] - previous[ok]) / np.linalg.norm(image[ok])
        rows.append((n, cpu, wall, change))
        previous = image
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gauss", default="4,9,16,36")
    ap.add_argument("--mc", default="4,8,16,32")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--scaling-only", action="store_true", help="only the Dask measurements")
    args = ap.parse_args()
    if not args.scaling_only:
        per_spectrum(args)
    if not args.skip_scaling:
        scaling()


def per_spectrum(args: argparse.Namespace) -> None:
    """CPU-seconds per mosaic and volume, and the convergence with points per bin."""
    model = load_model("goodenough")
    params = np.asarray(model.best_fit)

    calc = make_calculator(SimulationConfig(kind="mosaic", resolution="none"))
    calc(params)
    cpu, wall, _ = cpu_seconds(lambda: calc(params))
    print(
        f"unconvolved mosaic: {cpu:.2f} CPU-s ({wall:.2f} s wall); paper ~{PAPER_UNCONVOLVED_S}"
        f" CPU-s: {PAPER_UNCONVOLVED_S / cpu:.0f}x faster"
    )
    vol = make_calculator(SimulationConfig(kind="volume", resolution="none"))
    vol(params)
    cpu, wall, _ = cpu_seconds(lambda: vol(params))
    print(f"unconvolved 60^3 volume at Ei = 140 meV: {cpu:.2f} CPU-s ({wall:.2f} s wall)")

    for method, points in (("gaussian", args.gauss), ("montecarlo", args.mc)):
        pts = [int(p) for p in points.split(",")]
        print(f"\nconvolved mosaic, {method}: points per bin, CPU-s, wall-s, change vs previous")
        rows = convergence("mosaic", method, pts, params)
        for n, cpu, wall, change in rows:
            ch = "" if change is None else f"{100 * change:6.2f} %"
            ratio = PAPER_CONVOLVED_S / cpu
            print(f"  {n:4d} {cpu:8.2f} {wall:8.2f}  {ch}   paper/ours = {ratio:.0f}x")
        # converged: the first point count whose image changes < 2 % at the next count
        done = [a for a, b in zip(rows, rows[1:], strict=False) if b[3] < 0.02]
        if done:
            n, cpu = done[0][:2]
            print(
                f"  converged at {n} points: {cpu:.2f} CPU-s (target <= 20), "
                f"{PAPER_CONVOLVED_S / cpu:.0f}x the paper's 720 CPU-minutes"
            )
        else:
            print("  not converged within these point counts")
    bins, mask, _ = make_bins_and_mask(SimulationConfig(kind="volume"))
    vconv = make_calculator(SimulationConfig(kind="volume", resolution="gaussian", n_mc=16))
    vconv(params)
    cpu, wall, _ = cpu_seconds(lambda: vconv(params))
    print(
        f"\nconvolved (gaussian, 16 points) 60^3 volume: {cpu:.2f} CPU-s ({wall:.2f} s wall), "
        f"{(~mask).sum()} unmasked voxels"
    )


def scaling() -> None:
    """Dataset generation and parameter draws on 1 and 2 Dask workers."""
    print("\ndataset generation, 8 unconvolved + Gaussian-convolved mosaics (n_mc = 4):")
    rates = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            config = SimulationConfig(
                n=8, kind="mosaic", resolution="gaussian", n_mc=4, chunk=1, seed=2
            )
            job = Job(config, Path(tmp) / "d.h5")
            job.prepare()  # parameter draws are not part of the rate
            t0 = time.perf_counter()
            job.run(workers=workers)
            rates[workers] = 8 / (time.perf_counter() - t0)
        print(f"  {workers} worker(s): {rates[workers]:.3f} spectra/s (Dask start-up included)")
    print(f"  speed-up with 2 workers: {rates[2] / rates[1]:.2f}x (target >= 1.7x)")

    # Drawing parameters checks each candidate's stability at every wave vector a spectrum
    # needs (about an unconvolved spectrum's cost); done in the main process it idled every
    # worker but one (a 16-core node simulated the demo no faster than 2 cores).
    print("\nparameter draws, 40 unconvolved mosaics (spread 0.5), stability checks:")
    config = SimulationConfig(kind="mosaic", resolution="none", n=40, spread=0.5, seed=2)
    draw_parameters(replace(config, n=1))  # builds this process's calculator
    t0 = time.perf_counter()
    here = draw_parameters(config)[0]
    local = time.perf_counter() - t0
    with DaskClient(workers=2) as dask:
        draw_parameters(replace(config, n=1), dask.get())  # workers build their calculators
        t0 = time.perf_counter()
        there = draw_parameters(config, dask.get())[0]
        spread = time.perf_counter() - t0
    same = "same" if np.array_equal(here, there) else "DIFFERENT"
    print(f"  in this process ({torch.get_num_threads()} torch threads): {local:.2f} s")
    print(f"  on 2 Dask workers: {spread:.2f} s ({local / spread:.2f}x; {same} parameters)")
    evaluation_datasets()


def evaluation_datasets(repeats: int = 2) -> None:
    """The evaluation's dataset jobs (demo settings, a fifth of the spectra) on one
    2-worker cluster: one job after another (`Job.run`) against all at once (`run_jobs`)."""
    from exp2sim.evaluation.config import load_config
    from exp2sim.evaluation.data import _sim_config

    cfg = load_config("demo")
    configs = [
        _sim_config(cfg, model, resolution, n, seed)
        for model in cfg.models
        for resolution, n, seed in (("none", 20, 1), ("montecarlo", 8, 2), ("montecarlo", 8, 3))
    ]
    print(f"\nevaluation datasets, {len(configs)} jobs (2 models x 20 + 8 + 8 mosaics), 2 workers:")
    times: dict[str, list[float]] = {"one by one": [], "at once": []}
    signals = {}
    with DaskClient(workers=2) as dask:
        address = dask.get().scheduler.address
        for _ in range(repeats):
            for how in times:
                with tempfile.TemporaryDirectory() as tmp:
                    jobs = [Job(c, Path(tmp) / f"{i}.h5") for i, c in enumerate(configs)]
                    t0 = time.perf_counter()
                    if how == "at once":
                        run_jobs(jobs, scheduler=address)
                    else:
                        for job in jobs:
                            job.run(scheduler=address)
                    times[how].append(time.perf_counter() - t0)
                    signals[how] = read_dataset(jobs[-1].out).signal
    for how, ts in times.items():
        print(f"  {how}: {', '.join(f'{t:.1f}' for t in ts)} s")
    same = np.array_equal(*signals.values(), equal_nan=True)
    ratio = min(times["one by one"]) / min(times["at once"])
    print(f"  best of each: {ratio:.2f}x ({'same' if same else 'DIFFERENT'} spectra)")


if __name__ == "__main__":
    main()
