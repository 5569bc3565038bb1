"""How much of a finished evaluation's gap-closed numbers is its classifiers' seed?

The report's accuracy tables come from one DUQ classifier per direction (seed = the run's
seed). This script reads an evaluation's output folder (`exp2sim demo --out DIR`: its
config.json, data/ and gan/), translates the test set once as the report does (the GAN in
both directions, Richardson-Lucy, the Gaussian blur, the refined deconvolution), then trains
the two classifiers again with each of `--seeds` (every other setting as in the run) and
scores the same spectra with each: accuracy, the certainty of the true model and its margin
over the other model (`metrics.true_model_certainty`), and the share of each gap closed;
and which share of each set, the run's out-of-distribution sets included (artefacts,
Rb2MnF4, negative control, photographs, digits: read from its data/), each classifier
calls one of the known models (`DUQClassifier.known`, the report's last table).

Printed: one row per seed and direction, and one of the shares called known; then per
direction the mean over seeds of each set's scores, the gap closed computed from those
means, per method the range of the per-seed gaps closed and on how many seeds it beats the
baseline, and the mean (range) of the shares called known. With the run's own seed
among `--seeds` its row reproduces the report's table (a check of this script).

Each classifier takes as long as in the run (about 75-90 s on 2 cores at the demo's
settings), so 5 seeds take about 15 minutes.

Usage: python benchmarks/classifier_seeds.py DIR [--seeds 0,1,2,3,4] [--set KEY=VALUE ...]

`--set` changes one of the classifier's settings (ClassifierConfig) for every seed, e.g.
`--set penalty_batch=4`; VALUE is read as JSON where it can be (numbers, lists), else as text.

`--directions convolved` (or unconvolved) trains only that direction's classifiers, for
half the time; `--set noise_copies=2` with it is the trial of docs/measurements.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from exp2sim.classifier import ClassifierConfig, DUQClassifier
from exp2sim.evaluation import metrics
from exp2sim.evaluation.config import DIRECTIONS, EvaluationConfig
from exp2sim.evaluation.data import build_datasets
from exp2sim.evaluation.pipeline import (
    outlier_spectra,
    per_classifier,
    score_sets,
    scored_sets,
    translate_test_set,
)

MEASURES = ("accuracy", "certainty", "margin")


def pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.0f} %"


def _setting(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--directions", default="unconvolved,convolved")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    changes = dict(_setting(item) for item in args.set)

    cfg = EvaluationConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    data = build_datasets(cfg, args.run / "data")
    test, test_conv = data["test"], data["test_convolved"]
    t0 = time.perf_counter()
    t = translate_test_set(cfg, args.run / "gan", test.signal, test_conv.signal)
    if changes:
        print(f"classifier settings changed: {changes}")
    print(f"run {args.run} (seed {cfg.seed}); translations {time.perf_counter() - t0:.0f} s")
    # per direction: the training set and the sets the report scores, in its order
    sets = scored_sets(test.signal, test_conv.signal, t)
    outliers = outlier_spectra(cfg, data, args.run / "data", None, None)  # simulated by the run
    directions = args.directions.split(",")
    if not set(directions) <= set(DIRECTIONS):
        raise SystemExit(f"--directions: choose from {', '.join(DIRECTIONS)}")
    split = {"unconvolved": "train", "convolved": "train_convolved"}
    training = {d: data[split[d]] for d in directions}
    known: dict[str, list[dict[str, float]]] = {d: [] for d in training}
    auc: dict[str, list[dict[str, float]]] = {d: [] for d in training}
    runs: dict[str, list] = {d: [] for d in training}  # score_sets' per seed
    for seed in seeds:
        for direction, train in training.items():
            t0 = time.perf_counter()
            config = ClassifierConfig.from_dict(
                {**cfg.classifier_config(direction, seed), **changes}
            )
            clf = DUQClassifier(config).fit(train.signal, train.labels, list(train.classes))
            one = score_sets([clf], sets[direction], test.labels)
            runs[direction].append(one)
            # per set, from one pass each: the share called known, and (threshold-free) how
            # well each distance that decides "known" (the input's residual, the features'
            # novelty distance) alone tells the set from the classifier's own test set
            # (truth, the first), as ROC AUC
            answers = {k: clf.results(v) for k, v in {**sets[direction], **outliers}.items()}
            known[direction].append(
                {k: float(np.mean([r["known"] for r in rs])) for k, rs in answers.items()}
            )
            auc[direction].append({})
            for key in clf.limits:
                distance = {k: np.array([r[key] for r in rs]) for k, rs in answers.items()}
                truth, *others = distance
                auc[direction][-1].update(
                    {(key, k): metrics.roc_auc(distance[truth], distance[k]) for k in others}
                )
            own = per_classifier(one, tuple(sets[direction])[2:])
            row = "; ".join(
                f"{k} {own['mean']['accuracy'][k][0]:.1%} / "
                f"{own['mean']['certainty'][k][0]:.3f} / {own['mean']['margin'][k][0]:.3f}"
                for k in sets[direction]
            )
            gan = " / ".join(
                pct(own["gap_closed"][m][list(sets[direction])[2]][0]) for m in MEASURES
            )
            print(
                f"seed {seed}, classifier on {direction} ({time.perf_counter() - t0:.0f} s): "
                f"{row}; GAN's gap closed {gan}",
                flush=True,
            )
            print(
                "  called known: "
                + "; ".join(f"{k} {v:.0%}" for k, v in known[direction][-1].items()),
                flush=True,
            )
            print(
                "  ROC AUC against the own test set: "
                + "; ".join(f"{k} by {key} {v:.3f}" for (key, k), v in auc[direction][-1].items()),
                flush=True,
            )

    per = {  # per direction, score_sets' output with every seed's classifier: {set: (K, n)}
        direction: [
            {name: np.concatenate([one[i][name] for one in ones]) for name in ones[0][i]}
            for i in range(len(MEASURES))
        ]
        for direction, ones in runs.items()
    }
    for direction in training:
        names, methods = list(sets[direction]), tuple(sets[direction])[2:]
        seeded = per_classifier(per[direction], methods)
        # the mean over seeds of each set's scores, and the gap closed computed from those
        means = [{k: v.mean(0, keepdims=True) for k, v in p.items()} for p in per[direction]]
        of_means = per_classifier(means, methods)["gap_closed"]
        print(f"\nClassifier trained on {direction}, mean over {len(seeds)} seeds {seeds}:")
        print("| set | " + " | ".join(MEASURES) + " |\n|---|---|---|---|")
        for n in names:
            v = [np.asarray(seeded["mean"][m][n]) for m in MEASURES]
            cells = [f"{v[0].mean():.1%} +- {v[0].std():.1%}"]
            cells += [f"{x.mean():.3f} +- {x.std():.3f}" for x in v[1:]]
            print(f"| {n} | " + " | ".join(cells) + " |")
        for method in methods:
            shares = [np.asarray(seeded["gap_closed"][m][method], dtype=float) for m in MEASURES]
            ranges = " / ".join(
                f"{pct(np.nanmin(x))} to {pct(np.nanmax(x))}" if np.isfinite(x).any() else "n/a"
                for x in shares
            )
            print(
                f"{method}: gap closed (of the means, accuracy / certainty / margin) "
                + " / ".join(pct(of_means[m][method][0]) for m in MEASURES)
                + f"; per seed {ranges}"
            )
        shares = {k: [one[k] for one in known[direction]] for k in known[direction][0]}
        print(
            "called known, mean (min-max) over seeds: "
            + "; ".join(
                f"{k} {np.mean(v):.0%} ({min(v):.0%}-{max(v):.0%})" for k, v in shares.items()
            )
        )
        if auc[direction] and auc[direction][0]:
            aucs = {k: [one[k] for one in auc[direction]] for k in auc[direction][0]}
            print(
                "ROC AUC against the own test set, mean (min-max) over seeds: "
                + "; ".join(
                    f"{k} by {key} {np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})"
                    for (key, k), v in aucs.items()
                )
            )
        baseline = names[3]
        for m in MEASURES:
            gan, base = (np.asarray(seeded["mean"][m][k]) for k in (names[2], baseline))
            print(
                f"GAN above {baseline} by {m}: {int((gan > base).sum())} of {len(seeds)} "
                f"seeds ({int((gan == base).sum())} tied)"
            )


if __name__ == "__main__":
    main()
