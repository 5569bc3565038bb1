"""`exp2sim evaluate`: the paper's evaluation, end to end, into one report directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exp2sim.cli_common import console, err_console, resumable, user_errors


def evaluate(
    config: Annotated[
        str, typer.Option(help="demo (CPU, minutes), paper (GPU scale) or a .toml file.")
    ] = "demo",
    out: Annotated[Path, typer.Option(help="Report directory (reused when run again).")] = Path(
        "exp2sim-report"
    ),
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    """Simulate (or reuse) datasets, train the GAN and two classifiers, and write a report
    (report.md, metrics.json, figures/, and the trained models) to OUT.

    Interrupted? Run the same command again: finished stages are reused, dataset
    generation and GAN training resume.
    """
    with user_errors(), resumable(out):
        from exp2sim.evaluation.config import load_config
        from exp2sim.evaluation.pipeline import run_evaluation

        cfg = load_config(config)
        if device is not None:
            cfg.device = device
        metrics = run_evaluation(cfg, out, err_console)
    print_summary(metrics, out)


def print_summary(m: dict, out: Path) -> None:
    """The headline numbers on the terminal."""
    from rich.table import Table

    from exp2sim.evaluation.report import order_verdict

    def pct(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{100 * x:.1f} %"

    table = Table(title="Accuracy on the test set")
    table.add_column("classifier trained on")
    table.add_column("test data")
    table.add_column("accuracy", justify="right")
    for key, label in (
        ("accuracy_classifier_unconvolved", "unconvolved"),
        ("accuracy_classifier_convolved", "convolved"),
    ):
        for name, value in m[key].items():
            table.add_row(label, name, pct(value))
    console.print(table)
    console.print(
        f"Gap closed by the GAN: deconvolution {pct(m['gap_closed_deconvolution'])}, "
        f"convolution {pct(m['gap_closed_convolution'])}. Applicability ROC AUC: digits "
        f"{m['auc_digits']:.3f}, photographs {m['auc_photos']:.3f}."
    )
    for what, key in (("certainty of the true model", "certainty"), ("margin", "margin")):
        closed = [
            m[f"{key}_classifier_{k}"]["gap_closed"][gan]
            for k, gan in (("unconvolved", "GAN-deconvolved"), ("convolved", "GAN-convolved"))
        ]
        console.print(
            f"Gap in the {what} closed by the GAN: deconvolution {pct(closed[0])}, "
            f"convolution {pct(closed[1])}."
        )
    if "applicability_order" in m:
        verdict = order_verdict(m, "median")
        console.print(f"Expected order of the applicability distances (medians): {verdict}.")
    console.print(f"Report: {out / 'report.md'} (numbers in {out / 'metrics.json'}).")
