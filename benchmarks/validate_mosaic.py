"""Compare exp2sim's PCSMO mosaics with the original pipeline's (../shared reference data).

Writes a figure (ours unconvolved, ours convolved, original) per model and prints the
correlation over pixels unmasked in both, overall and per Ei block, and the agreement of our
detector mask with the real experiment's. Each of ours twice: with intensities at the
kinematic L (the default) and at L = 0 (`--fixed-l 0`), which the original pipeline's
mosaics follow (README, "L, and the paper's data").

Usage: python benchmarks/validate_mosaic.py [--out validation] [--resolution gaussian]
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.io

from exp2sim.spectra.factory import make_bins_and_mask, make_calculator
from exp2sim.spectra.generate import SimulationConfig
from exp2sim.spectra.plotting import plot_spectrum
from exp2sim.spinwave import load_model

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("validation"))
    ap.add_argument("--resolution", default="gaussian")
    ap.add_argument("--n-mc", type=int, default=16)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    real = scipy.io.loadmat(REFERENCE / "maps_resolution" / "nanmask.mat")["nan_mask"]
    real = np.flipud(real).astype(bool)  # stored with the Ei = 140 meV block first
    for name in ("goodenough", "dimer"):
        ref = np.load(REFERENCE / "pcsmo_sim" / f"simulated_fitpars_{name}.npy")[0]
        params = np.asarray(load_model(name).best_fit)
        _, mask, _ = make_bins_and_mask(SimulationConfig(model=name))
        print(f"{name}: our mask agrees with the experiment's on {np.mean(mask == real):.2%}")
        ok = ~mask & ~real
        for resolution, fixed_l in itertools.product(("none", args.resolution), (None, 0.0)):
            config = SimulationConfig(
                model=name, resolution=resolution, n_mc=args.n_mc, fixed_l=fixed_l
            )
            image = make_calculator(config)(params)
            blocks = [
                np.corrcoef(
                    image[40 * b : 40 * b + 40][ok[40 * b : 40 * b + 40]],
                    ref[40 * b : 40 * b + 40][ok[40 * b : 40 * b + 40]],
                )[0, 1]
                for b in range(6)
            ]
            at = "kinematic L" if fixed_l is None else f"L = {fixed_l:g}"
            print(
                f"  {resolution:10s} {at:11s} correlation "
                f"{np.corrcoef(image[ok], ref[ok])[0, 1]:.3f}; "
                f"per Ei block {', '.join(f'{c:.2f}' for c in blocks)}"
            )
            plot_spectrum(
                image,
                "mosaic",
                asdict(config),
                args.out / f"{name}_{resolution}{'' if fixed_l is None else '_l0'}.png",
                title=f"exp2sim {name}, resolution {resolution}, intensities at {at}",
            )
        shown = np.where(real, np.nan, ref)
        plot_spectrum(
            shown,
            "mosaic",
            asdict(SimulationConfig(model=name)),
            args.out / f"{name}_original.png",
            title=f"original pipeline, {name}",
        )
    print(f"figures in {args.out}/")


if __name__ == "__main__":
    main()
