"""How much of a finished evaluation's gap-closed numbers is its classifiers' seed?

The report's accuracy tables come from one DUQ classifier per direction (seed = the run's
seed). This script reads an evaluation's output folder (`exp2sim demo --out DIR`: its
config.json, data/ and gan/), translates the test set once as the report does (the GAN in
both directions, Richardson-Lucy, the Gaussian blur, the refined deconvolution), then trains
the two classifiers again with each of `--seeds` (every other setting as in the run) and
scores the same spectra with each: accuracy, the certainty of the true model and its margin
over the other model (`metrics.true_model_certainty`), and the share of each gap closed.

Printed: one row per seed and direction, then per direction the mean over seeds of each
set's scores, the gap closed computed from those means, and per method the range of the
per-seed gaps closed and on how many seeds it beats the baseline. With the run's own seed
among `--seeds` its row reproduces the report's table (a check of this script).

Each classifier takes as long as in the run (about 75-90 s on 2 cores at the demo's
settings), so 5 seeds take about 15 minutes.

Usage: python benchmarks/classifier_seeds.py DIR [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from exp2sim.classifier import ClassifierConfig, DUQClassifier
from exp2sim.evaluation import baselines, metrics
from exp2sim.evaluation.config import EvaluationConfig
from exp2sim.evaluation.data import build_datasets
from exp2sim.evaluation.pipeline import refine
from exp2sim.gan.translate import Translator
from exp2sim.spectra.generate import SimulationConfig

MEASURES = ("accuracy", "certainty", "margin")


def translations(cfg: EvaluationConfig, run: Path, data: dict) -> dict[str, dict[str, np.ndarray]]:
    """Per direction, the sets the report scores, in its order: truth, untranslated input,
    the GAN, the baseline (and the refined deconvolution where the run has one)."""
    test, test_conv = data["test"].signal, data["test_convolved"].signal
    sim2exp = Translator.from_run(run / "gan", "sim2exp", device=cfg.device)
    deconvolved = Translator.from_run(run / "gan", "exp2sim", device=cfg.device)(test_conv)
    blur = baselines.ResolutionBlur.for_config(SimulationConfig(kind="mosaic"))
    deconvolution = {
        "truth": test,
        "convolved": test_conv,
        "GAN": deconvolved,
        "Richardson-Lucy": baselines.richardson_lucy_deconvolve(test_conv, blur, cfg.rl_iterations),
    }
    refined = refine(cfg, sim2exp, test_conv, deconvolved)
    if refined is not None:
        deconvolution["GAN refined"] = refined
    convolution = {
        "truth": test_conv,
        "unconvolved": test,
        "GAN": sim2exp(test),
        "Gaussian blur": baselines.gaussian_convolve(test, blur),
    }
    return {"unconvolved": deconvolution, "convolved": convolution}


def scores(clf: DUQClassifier, sets: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Per set: (accuracy, mean certainty of the true model, mean margin)."""
    out = {}
    for name, x in sets.items():
        k = clf.certainties(x)
        true, margin = metrics.true_model_certainty(k, labels)
        accuracy = float((k.argmax(1) == labels).mean())
        out[name] = (accuracy, float(true.mean()), float(margin.mean()))
    return out


def closed(s: dict[str, tuple[float, ...]], method: str, i: int) -> float:
    """Share of the gap (truth vs untranslated, the first two sets) that `method` closes by
    measure i; NaN where there is no gap."""
    truth, before = list(s.values())[:2]
    return metrics.gap_closed(truth[i], before[i], s[method][i])


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    cfg = EvaluationConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    data = build_datasets(cfg, args.run / "data")
    labels = data["test"].labels
    t0 = time.perf_counter()
    sets = translations(cfg, args.run, data)
    print(f"run {args.run} (seed {cfg.seed}); translations {time.perf_counter() - t0:.0f} s")
    training = {"unconvolved": data["train"], "convolved": data["train_convolved"]}
    results: dict[str, list[dict]] = {direction: [] for direction in sets}
    for seed in seeds:
        for direction, train in training.items():
            t0 = time.perf_counter()
            config = ClassifierConfig.from_dict(
                {**cfg.classifier, "seed": seed, "device": cfg.device}
            )
            clf = DUQClassifier(config).fit(train.signal, train.labels, list(train.classes))
            s = scores(clf, sets[direction], labels)
            results[direction].append(s)
            row = "; ".join(f"{k} {v[0]:.1%} / {v[1]:.3f} / {v[2]:.3f}" for k, v in s.items())
            gan = " / ".join(pct(closed(s, "GAN", i)) for i in range(3))
            print(
                f"seed {seed}, classifier on {direction} ({time.perf_counter() - t0:.0f} s): "
                f"{row}; GAN's gap closed {gan}",
                flush=True,
            )

    for direction, runs in results.items():
        names = list(runs[0])
        mean = {n: tuple(float(np.mean([r[n][i] for r in runs])) for i in range(3)) for n in names}
        print(f"\nClassifier trained on {direction}, mean over {len(runs)} seeds {seeds}:")
        print("| set | " + " | ".join(MEASURES) + " |\n|---|---|---|---|")
        for n in names:
            sd = [float(np.std([r[n][i] for r in runs])) for i in range(3)]
            cells = [f"{mean[n][0]:.1%} +- {sd[0]:.1%}"]
            cells += [f"{mean[n][i]:.3f} +- {sd[i]:.3f}" for i in (1, 2)]
            print(f"| {n} | " + " | ".join(cells) + " |")
        baseline = names[3]
        for method in names[2:]:
            of_means = " / ".join(pct(closed(mean, method, i)) for i in range(3))
            per_seed = [[closed(r, method, i) for r in runs] for i in range(3)]
            ranges = " / ".join(
                f"{pct(np.nanmin(v))} to {pct(np.nanmax(v))}" if np.isfinite(v).any() else "n/a"
                for v in map(np.asarray, per_seed)
            )
            print(
                f"{method}: gap closed (of the means, accuracy / certainty / margin) "
                f"{of_means}; per seed {ranges}"
            )
        for i, measure in enumerate(MEASURES):
            wins = sum(r["GAN"][i] > r[baseline][i] for r in runs)
            ties = sum(r["GAN"][i] == r[baseline][i] for r in runs)
            print(f"GAN above {baseline} by {measure}: {wins} of {len(runs)} seeds ({ties} tied)")


if __name__ == "__main__":
    main()
