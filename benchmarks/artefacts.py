"""What a measurement's artefacts do to a finished evaluation's models, and what
subtracting the background (`--background`) gives back.

Reads an evaluation's output folder (`exp2sim demo --out DIR`: config.json, data/, gan/,
classifier-unconvolved/, classifier-convolved/) and puts the artefacts of
`evaluation.outliers.with_artefacts` on all of its convolved test spectra (the report uses
the first `n_outliers`), once all together, once each alone. For each set, and for the full
set after `spectra.background.subtract_background` (per constant-energy tile, at each of
`--quantiles`), it prints:
- accuracy of the classifier trained on convolved spectra, on the set as it is;
- accuracy of the classifier trained on unconvolved spectra, on the set as it is and on
  the GAN's deconvolution of it (Exp2Sim);
- the median over the set of the applicability distance (the report's, Exp2Sim encoder)
  and how many spectra land in each zone.

About 25 s per row on 2 cores at the demo's settings (80 mosaics).

Usage: python benchmarks/artefacts.py DIR [--quantiles 0.02,0.05,0.1] [--keep-negative]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from exp2sim.applicability import ApplicabilityDomain
from exp2sim.classifier import DUQClassifier
from exp2sim.evaluation import outliers
from exp2sim.evaluation.config import EvaluationConfig
from exp2sim.evaluation.data import build_datasets, layout
from exp2sim.gan.translate import Translator
from exp2sim.spectra.background import subtract_background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--quantiles", default="0.05")
    parser.add_argument(
        "--keep-negative", action="store_true", help="no floor at 0 after the subtraction"
    )
    args = parser.parse_args()
    cfg = EvaluationConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    data = build_datasets(cfg, args.run / "data")
    test, labels = data["test_convolved"].signal, data["test_convolved"].labels
    block = layout(cfg).background_block
    domain = ApplicabilityDomain.for_run(
        args.run / "gan",
        "exp2sim",
        points=cfg.applicability_points,
        repeats=cfg.applicability_repeats,
        seed=cfg.seed,
        device=cfg.device,
    )
    exp2sim = Translator.from_run(args.run / "gan", "exp2sim", device=cfg.device)
    unconvolved = DUQClassifier.load(args.run / "classifier-unconvolved", device=cfg.device)
    convolved = DUQClassifier.load(args.run / "classifier-convolved", device=cfg.device)
    seed = 10 * cfg.seed + 5  # the report's artefacts' seed

    def row(name: str, spectra: np.ndarray) -> None:
        t0 = time.perf_counter()
        spectra = spectra.astype(np.float32)
        result = domain.assess_spectra(
            spectra,
            repeats=cfg.applicability_repeats,
            points=cfg.applicability_points,
            seed=cfg.seed,
        )
        zones = [
            int(np.sum(np.asarray(result.verdicts) == v))
            for v in ("trustworthy", "expert opinion", "untrustworthy")
        ]
        scores = [
            np.mean(convolved.predict(spectra) == labels),
            np.mean(unconvolved.predict(spectra) == labels),
            np.mean(unconvolved.predict(exp2sim(spectra)) == labels),
        ]
        cells = " | ".join(f"{100 * s:5.1f} %" for s in scores)
        print(
            f"| {name} | {cells} | {np.median(result.means):.2f} | "
            f"{'/'.join(map(str, zones))} |  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    print(f"{args.run}: {len(test)} convolved test spectra, background blocks {block}")
    print(
        "| set | convolved classifier | unconvolved classifier | unconvolved classifier on "
        "GAN-deconvolved | median distance | trustworthy/expert/untrustworthy |"
    )
    print("|---|---|---|---|---|---|")
    row("no artefacts", test)
    every = outliers.with_artefacts(test, seed)
    row("all artefacts", every)
    floor = None if args.keep_negative else 0.0
    quantiles = [float(q) for q in args.quantiles.split(",")]
    for quantile in quantiles:
        subtracted = subtract_background(every, block, quantile=quantile, floor=floor)
        row(f"all, background subtracted (quantile {quantile:g})", subtracted)
    # what the subtraction does where there is no background (the first quantile)
    clean = subtract_background(test, block, quantile=quantiles[0], floor=floor)
    row(f"none, 'subtracted' (quantile {quantiles[0]:g})", clean)
    for kind in outliers.ARTEFACTS:
        row(f"{kind} alone", outliers.with_artefacts(test, seed, kinds=(kind,)))


if __name__ == "__main__":
    main()
