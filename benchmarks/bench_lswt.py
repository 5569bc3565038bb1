"""LSWT throughput for PCSMO (Goodenough, 16 Mn) against the practical limit and SpinW's port.

Prints, for one thread and for all threads, in the same run:
  * exp2sim: Q points per second with energies and S_perp intensities (form factor on),
    for the untwinned crystal and with both twins;
  * the bare batched eigendecomposition of random 32 x 32 Hermitian complex128 matrices
    (torch.linalg.eigh), the cost of a general LSWT solver with nothing else;
  * pySpinW (Rust core) on the same Q points, if it is importable here or if
    PYSPINW_PYTHON names an interpreter that has it (see benchmarks/pyspinw_peer.py).
Ratios, not absolute times, are the result: this machine is noisy.

Usage: python benchmarks/bench_lswt.py [--n 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exp2sim.spinwave import SpinWaveTheory, load_model

HERE = Path(__file__).resolve().parent


def best_rate(fn, n_items: int, repeats: int) -> float:
    """Best items per second over `repeats` timed calls (after one warm-up call)."""
    fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_items / best


def pyspinw_seconds_per_q(
    q: np.ndarray, threads: int, repeats: int
) -> tuple[float, np.ndarray] | None:
    """pySpinW seconds per Q and its energies, run in a child with RAYON_NUM_THREADS set."""
    python = os.environ.get("PYSPINW_PYTHON")
    if python is None and importlib.util.find_spec("pyspinw") is not None:
        python = sys.executable
    if python is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        q_file, out_file = Path(tmp) / "q.npy", Path(tmp) / "out.npz"
        np.save(q_file, q)
        params = "-11.39,1.5,-1.35,1.5,0.88,0.074"
        cmd = [
            python,
            str(HERE / "pyspinw_peer.py"),
            "--worker",
            str(q_file),
            str(out_file),
            str(repeats),
            params,
        ]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        subprocess.run(cmd, env=env, check=True)
        with np.load(out_file) as out:
            return float(out["s_per_q"]), out["energies"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="number of Q points")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model = load_model("goodenough")
    swt = SpinWaveTheory(model.system)
    rng = np.random.default_rng(0)
    # random (h, k, l): no two points share (h, k), so no caching across L can help
    q = rng.uniform(-1.0, 1.0, (args.n, 3))
    mats = torch.randn(
        args.n, 32, 32, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)
    )
    mats = mats + mats.mH
    cores = os.cpu_count() or 1
    print(
        f"PCSMO Goodenough, 16 sites, {args.n} random Q, solver: "
        f"{'reduced' if swt.reduced else 'general'}, torch {torch.__version__}, {cores} cores"
    )
    print(
        f"{'threads':>7} {'exp2sim Q/s':>12} {'+twins Q/s':>11} {'eigh32 /s':>10} "
        f"{'vs eigh':>8} {'pySpinW Q/s':>12} {'vs pySpinW':>10}"
    )
    ours_e = None
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        ours = best_rate(
            lambda: swt.calculate(q, model.best_fit, twins=False, return_sab=False),
            args.n,
            args.repeats,
        )
        twins = best_rate(
            lambda: swt.calculate(q, model.best_fit, return_sab=False), args.n, args.repeats
        )
        eig = best_rate(lambda: torch.linalg.eigh(mats), args.n, args.repeats)
        peer = pyspinw_seconds_per_q(q, threads, args.repeats)
        if peer is not None:
            peer_rate = 1.0 / peer[0]
            peer_txt, ratio_txt = f"{peer_rate:12.0f}", f"{ours / peer_rate:9.1f}x"
            if ours_e is None:
                res = swt.calculate(q, model.best_fit, twins=False, return_sab=False)
                ours_e = res.energies[0, 0]
                diff = np.nanmax(np.abs(ours_e - peer[1]))
                print(f"        (max |E_exp2sim - E_pySpinW| = {diff:.2e} meV)")
        else:
            peer_txt, ratio_txt = f"{'n/a':>12}", f"{'n/a':>10}"
        print(
            f"{threads:7d} {ours:12.0f} {twins:11.0f} {eig:10.0f} {ours / eig:7.0%} "
            f"{peer_txt} {ratio_txt}"
        )
    if ours_e is None:
        print(
            "pySpinW not available: set PYSPINW_PYTHON to an interpreter with pyspinw==1.1.0b2 "
            "(DESIGN.md: ~0.36 ms/Q on one core, ~2.8k Q/s)"
        )


if __name__ == "__main__":
    main()
