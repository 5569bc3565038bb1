"""The evaluation's Markdown summary (every number also in metrics.json)."""

from __future__ import annotations

from pathlib import Path

from exp2sim.evaluation.config import EvaluationConfig
from exp2sim.fileio import write_text_atomic

# Rows a run may lack (where they exist, their shares of a gap may be n/a, null in
# metrics.json: whether to write them is read from the accuracy tables' rows)
BINS_ROW = "bins' extent only (exact, no instrument)"  # a reference, not a method
REFINED = "GAN-deconvolved, refined"  # the GAN's deconvolution, then RL with its kernels
ARTEFACTS_SUBTRACTED = "artefacts, background subtracted"  # the artefacts after --background


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f} %"


def _interval(lo_hi: list, share: float | None) -> str:
    """The bootstrap interval of a share of a gap closed; none where the share itself is
    undefined (no gap in the means, though some resamples have one)."""
    lo, hi = lo_hi
    if share is None or share != share or lo is None or lo != lo:
        return ""
    return f"[{_pct(lo)} to {_pct(hi)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _accuracy_table(m: dict, trained_on: str) -> list[str]:
    """Accuracy, mean certainty of the true model and mean margin over the other models,
    per test set, of one classifier."""
    accuracy = m[f"accuracy_classifier_{trained_on}"]
    certainty = m[f"certainty_classifier_{trained_on}"]["mean"]
    margin = m[f"margin_classifier_{trained_on}"]["mean"]
    rows = [[k, _pct(v), f"{certainty[k]:.3f}", f"{margin[k]:.3f}"] for k, v in accuracy.items()]
    return _table(["test data", "accuracy", "certainty of the true model", "margin"], rows)


def _gap_line(what: str, c: dict) -> str:
    """The share of a gap (certainty, margin) the GAN closes, then each other method's."""
    gan, *others = list(c["gap_closed"])
    rest = "; ".join(f"{k}: {_pct(c['gap_closed'][k])}" for k in others)
    share = c["gap_closed"][gan]
    interval = _interval(c["gap_closed_interval"], share)
    return f"{what} gap closed by the GAN: **{_pct(share)}** {interval} ({rest})."


def _range(values: list) -> str:
    """The range of the shares in `values` (one per classifier), saying how many are
    undefined (that classifier had no gap)."""
    defined = [v for v in values if v is not None and v == v]
    if not defined:
        return "n/a"
    lo, hi = min(defined), max(defined)
    text = _pct(lo) if lo == hi else f"{_pct(lo)} to {_pct(hi)}"
    missing = len(values) - len(defined)
    return text + (f" ({missing} of {len(values)} with no gap)" if missing else "")


def _per_classifier_lines(cfg: EvaluationConfig, m: dict, direction: str) -> list[str]:
    """With several classifiers per direction: what the tables average, and the range of
    each one's own share of the gap closed."""
    k = m.get("classifier_seeds", 1)
    if k == 1:
        return []
    per = m["per_classifier"][direction]["gap_closed"]
    methods = list(per["accuracy"])
    shares = "; ".join(
        f"{method}: " + ", ".join(f"{measure} {_range(per[measure][method])}" for measure in per)
        for method in methods[:2]
    )
    return [
        f"Averaged over {k} classifiers (seeds {cfg.seed} to {cfg.seed + k - 1}): a "
        "spectrum's accuracy is the share of them that name its model (the table of what "
        "a classifier calls known is the first one's). Each classifier's own share of the "
        f"gap closed, {shares}.",
        "",
    ]


def _l_convention(cfg: EvaluationConfig) -> str:
    """The report's word on where the simulated intensities were taken in L."""
    if cfg.fixed_l is None:
        return " Intensities at each pixel's kinematic L, as a measurement has them."
    return (
        f" Intensities at L = {cfg.fixed_l:g} (`fixed_l`; at L = 0 as in the original "
        "pipeline that made the paper's data), not at each pixel's kinematic L."
    )


def render(cfg: EvaluationConfig, m: dict) -> str:
    """The report as Markdown text."""
    out = [
        f"# exp2sim evaluation: `{cfg.name}` configuration",
        "",
        f"Classes: {', '.join(m['classes'])}. Test set: {m['n_test']} spectra (240 x 400 "
        f"MAPS mosaics), each simulated without and with Monte Carlo resolution "
        f"({cfg.n_mc} integration point(s) per bin). Training: {cfg.n_train} unconvolved and "
        f"{cfg.n_train_convolved} convolved spectra per model (unpaired). Parameters: "
        + (
            "uniform over each model's full training ranges."
            if cfg.spread == 1
            else f"uniform over {cfg.spread:.0%} of each training range, centred on the "
            "model's best fit (`spread`; the paper used the full ranges)."
        )
        + _l_convention(cfg),
        "",
        "## Classification accuracy",
        "",
        "Classifier trained on **unconvolved** spectra (deconvolution direction):",
        "",
    ]
    out += _accuracy_table(m, "unconvolved")
    out += [
        "",
        f"Gap closed by the GAN: **{_pct(m['gap_closed_deconvolution'])}** "
        f"{_interval(m['gap_closed_deconvolution_interval'], m['gap_closed_deconvolution'])} "
        f"(Richardson-Lucy: {_pct(m['gap_closed_deconvolution_richardson_lucy'])}"
        + (
            ""
            if REFINED not in m["accuracy_classifier_unconvolved"]
            else f"; the GAN's deconvolution refined by {cfg.refine_iterations} iterations of "
            "Richardson-Lucy with the resolution kernels its Sim2Exp generator learned: "
            f"{_pct(m['gap_closed_deconvolution_refined'])}"
        )
        + ").",
        "",
        _gap_line("Certainty", m["certainty_classifier_unconvolved"]),
        "",
        _gap_line("Margin", m["margin_classifier_unconvolved"]),
        "",
        *_per_classifier_lines(cfg, m, "deconvolution"),
        "Classifier trained on **convolved** spectra (convolution direction):",
        "",
    ]
    out += _accuracy_table(m, "convolved")
    out += [
        "",
        f"Gap closed by the GAN: **{_pct(m['gap_closed_convolution'])}** "
        f"{_interval(m['gap_closed_convolution_interval'], m['gap_closed_convolution'])} "
        f"(Gaussian blur: {_pct(m['gap_closed_convolution_gaussian_blur'])}).",
        "",
        _gap_line("Certainty", m["certainty_classifier_convolved"]),
        "",
        _gap_line("Margin", m["margin_classifier_convolved"]),
        "",
        *_per_classifier_lines(cfg, m, "convolution"),
    ]
    if BINS_ROW in m["accuracy_classifier_convolved"]:
        out += [
            "Reference, not a method: the test spectra averaged over each bin's (h, k) "
            "extent with no instrument at all (exact, from the spin-wave model) close "
            f"{_pct(m['gap_closed_convolution_bins'])} of this gap. The unconvolved spectra "
            "are taken at each bin's centre: a steep mode lights a bin only where its centre "
            "falls in the energy slice; averaging over the bin fills those gaps. Compare "
            "this row with the Gaussian blur's.",
            "",
        ]
    out += [
        "Gap closed = (accuracy after - accuracy before) / (truth - before); undefined "
        "(n/a) when the classifier does no worse on the other domain. In brackets: the "
        "16-84 % range over bootstrap resamples of the test set. Each accuracy has a "
        f"binomial standard error of up to {_pct(m['accuracy_standard_error'])}: a gap "
        "smaller than a few of those is noise, and so is the share of it closed. "
        "Certainty: the classifier's certainty (0-1) for each test spectrum's true model, "
        "averaged over the test set; it measures a gap even where few spectra change class, "
        "and its gap closed is defined the same way. It can rise for every model at once: "
        "the margin (the true model's certainty minus the highest other model's, averaged, "
        "-1 to 1) rises only when the true model is told apart better. These intervals "
        "cover the test set's sampling only, not the classifiers' training: trained with "
        "another seed (or on another CPU, through round-off) a classifier can move every "
        "share closed by more than its interval (`benchmarks/classifier_seeds.py` trains "
        "them again with other seeds and scores the same spectra).",
        "",
        "## Paired fidelity (unmasked pixels, mean over the test set)",
        "",
        "Deconvolution, against the true unconvolved spectra:",
        "",
    ]
    for key in ("fidelity_deconvolution", "fidelity_convolution"):
        rows = [[k, f"{v['psnr']:.2f}", f"{v['ssim']:.3f}"] for k, v in m[key].items()]
        out += _table(["method", "PSNR (dB)", "SSIM"], rows)
        if key == "fidelity_deconvolution":
            out += ["", "Convolution, against the Monte Carlo-convolved spectra:", ""]
    lo, hi = m["applicability_thresholds"]
    out += [
        "",
        "## Applicability (Exp2Sim encoder, Sinkhorn distance to 20 random training "
        f"examples, {cfg.applicability_repeats} repeats)",
        "",
        f"Zones calibrated on held-out training data: trustworthy <= {lo:.3g} < expert "
        f"opinion <= {hi:.3g} < untrustworthy.",
        "",
    ]
    rows = []
    for name, s in m["applicability"].items():
        v = s["verdicts"]
        auc = m["auc"].get(name)
        rows.append(
            [
                name,
                f"{s['mean']:.3g} +- {s['std']:.2g}",
                f"{s['median']:.3g}",
                f"{v['trustworthy']} / {v['expert opinion']} / {v['untrustworthy']}",
                "-" if auc is None else f"{auc:.3f}",
            ]
        )
    out += _table(
        [
            "inputs",
            "mean distance",
            "median",
            "trustworthy / expert / untrustworthy",
            "ROC AUC vs test",
        ],
        rows,
    )
    out += [
        "",
        "Each input's distance is the mean of its distribution over the repeats; the columns "
        "give the mean (+- standard deviation) and the median of those over the set. One "
        "input far out (an Rb2MnF4 mosaic with almost nothing in the instrument's window) "
        "can dominate a set's mean; the median says where the set's typical input lies.",
    ]
    if ARTEFACTS_SUBTRACTED in m["applicability"]:
        out += [
            "",
            "Artefacts: the first test spectra (convolved) with counting noise, a background "
            "of 5-15 % of their 99th-percentile intensity, spurions and dead pixels; then the "
            "same after `--background` (a background estimated per constant-energy tile and "
            "subtracted, negative values set to 0), as `classify`, `translate` and "
            "`applicability` do for a measurement.",
        ]
    out += _order(m)
    known = m["known_fraction"]
    out += [
        "",
        "## Does a classifier know what it does not know?",
        "",
        "Share of each set that a classifier assigns to one of the known models (some "
        "certainty at or above its threshold, the residual the spectrum leaves off the "
        "training spectra's principal directions within its limit, and the novelty distance "
        "within its limit where one is set; see `DUQClassifier.known`); it calls the rest "
        '"none of the known models". For the out-of-distribution sets this should be near '
        "0 %; where it is not, trust the applicability verdicts above rather than the "
        "classifier. A translation should be known to the classifier of its target domain: "
        "the deconvolved spectra to the unconvolved classifier, the convolved ones to the "
        "convolved classifier.",
        "",
    ]
    out += _table(
        ["inputs", "classifier (unconvolved)", "classifier (convolved)"],
        [[k, _pct(v), _pct(known["convolved"][k])] for k, v in known["unconvolved"].items()],
    )
    out += [
        "",
        "## Figures",
        "",
        "![deconvolution](figures/deconvolution.png)",
        "",
        "![convolution](figures/convolution.png)",
        "",
        "![applicability](figures/applicability.png)",
        "",
    ]
    if "volume" in m:
        v = m["volume"]
        out += [
            f"## 3D example: {v['model']}, (h, k, E) volumes of {' x '.join(map(str, v['shape']))}"
            f" bins at Ei = {v['ei']:g} meV",
            "",
        ]
        rows = [[f"deconvolution: {k}", f"{x:.2f}"] for k, x in v["psnr_deconvolution"].items()]
        rows += [[f"convolution: {k}", f"{x:.2f}"] for k, x in v["psnr_convolution"].items()]
        out += _table(["test volumes vs truth", "PSNR (dB)"], rows)
        out += ["", "![3D](figures/volume.png)", ""]
    secs = m.get("seconds", {})
    out += ["## Time (s, wall clock)", ""]
    out += _table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in secs.items()])
    out += [
        "",
        "Models kept for reuse: `gan/` (`exp2sim translate --run`), "
        "`classifier-unconvolved/` and `classifier-convolved/` (`exp2sim classify --model`).",
        "",
    ]
    return "\n".join(out)


def write_report(out: Path, cfg: EvaluationConfig, metrics: dict) -> None:
    write_text_atomic(out / "report.md", render(cfg, metrics))


def _order(m: dict) -> list[str]:
    """Whether the sets' distances follow the target's order, by median and by mean (runs
    written before the check have none: no lines)."""
    order = m.get("applicability_order")
    if order is None:
        return []
    tiers = " < ".join(" ~ ".join(tier) for tier in order["tiers"])
    return [
        "",
        "Expected order of the distances (after the paper's Fig. 5b; the artefacts are "
        f"exp2sim's): {tiers}.",
        *(f"- By {by}: {order_verdict(m, by)}." for by in ("median", "mean")),
    ]


def order_verdict(m: dict, by: str) -> str:
    """ "the order holds", or the pairs of sets out of the target's order by `by` (median or
    mean distance), with their values; from metrics.json's `applicability_order`."""
    pairs = m["applicability_order"][f"violations_{by}"]
    if not pairs:
        return "the order holds"
    values = {k: s[by] for k, s in m["applicability"].items()}
    broken = "; ".join(f"{a} ({values[a]:.3g}) not below {b} ({values[b]:.3g})" for a, b in pairs)
    return f"{len(pairs)} pair(s) out of order: {broken}"
