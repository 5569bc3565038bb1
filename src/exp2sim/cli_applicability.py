"""`exp2sim applicability`: can a trained generator be trusted on these spectra?"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from exp2sim.cli_common import (
    SPECTRA_HELP,
    BackgroundOpt,
    console,
    err_console,
    note,
    user_errors,
    without_background,
)


def applicability(
    inputs: Annotated[
        list[Path],
        typer.Argument(help=f"Spectra: {SPECTRA_HELP}"),
    ],
    run: Annotated[Path, typer.Option(help="Training run directory.")],
    direction: Annotated[
        str, typer.Option(help="exp2sim (its input: experiment-like) or sim2exp.")
    ] = "exp2sim",
    repeats: Annotated[int, typer.Option(help="Random training subsets per input.")] = 1000,
    points: Annotated[int, typer.Option(help="Training examples per subset.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the subsets.")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    plot: Annotated[
        Path | None,
        typer.Option(help="Write a ridgeline PNG: a row per input file, and the held-out set."),
    ] = None,
    background: BackgroundOpt = None,
) -> None:
    """Distance of each spectrum to the run's training set in the generator's feature space
    (Sinkhorn, `--repeats` random subsets of `--points` training examples), and a verdict:
    trustworthy, expert opinion or untrustworthy.

    The zones are calibrated on the run's held-out spectra (20 points, 1,000 repeats) the
    first time, saved as RUN_DIR/applicability-DIRECTION.safetensors, and recalibrated when
    the generator's weights change.
    """
    with user_errors():
        from exp2sim.applicability import ApplicabilityDomain, ridgeline

        if fmt not in ("text", "json"):
            raise ValueError(f"--format must be text or json, got {fmt!r}")
        if plot is not None and plot.suffix.lower() != ".png":
            raise ValueError(f"--plot needs a .png file name, got {str(plot)!r}")
        if repeats < 1 or points < 1:
            raise ValueError("--repeats and --points must be at least 1")
        dim, axes = _run_dim(run, direction)
        # bad input fails fast, before the calibration
        sets = {str(p): without_background(_read(p, dim, axes), background, dim) for p in inputs}
        # zones calibrated once per run with the defaults: verdicts use each input's mean
        # distance, whose expectation depends on neither repeats, seed nor points
        domain = ApplicabilityDomain.for_run(run, direction, log=note)
        if points > len(domain.bank):
            note(f"note: the run has {len(domain.bank)} training spectra: subsets of all of them")
            points = len(domain.bank)
        shape = tuple(domain.calibration.get("shape") or ())
        for name, spectra in sets.items():
            if shape and spectra.shape[1:] != shape:
                note(
                    f"note: {name} holds spectra of shape {spectra.shape[1:]}, the run was "
                    f"trained on {shape}"
                )
        rows, distributions = [], {}
        for name, spectra in sets.items():
            result = domain.assess_spectra(spectra, repeats=repeats, points=points, seed=seed)
            distributions[name] = result.distances
            for i, stats in enumerate(result.summary()):
                rows.append({"input": name, "index": i if len(spectra) > 1 else None} | stats)
        t1, t2 = domain.thresholds
        if fmt == "json":
            report = {
                "run": str(run),
                "direction": direction,
                "points": points,
                "repeats": repeats,
                "seed": seed,
                "thresholds": {"trustworthy": t1, "untrustworthy": t2},
                "inputs": rows,
            }
            sys.stdout.write(json.dumps(report) + "\n")
        else:
            _print_table(rows, t1, t2, direction)
        if plot is not None:
            reference = {"held-out (calibration)": domain.heldout_distances}
            ridgeline(reference | distributions, domain.thresholds, plot)
            err_console.print(f"wrote {plot}")


def _run_dim(run: Path, direction: str) -> tuple[int, dict | None]:
    """The dimension of the run's spectra and the axes of the direction's source domain."""
    from exp2sim.gan.checkpoint import read_info
    from exp2sim.gan.train import CHECKPOINT

    if not (run / CHECKPOINT).exists():
        raise ValueError(f"{run}: not a training run (no {CHECKPOINT})")
    data = read_info(run / CHECKPOINT)["data"]
    axes = data.get("axes_a" if direction == "exp2sim" else "axes_b")
    # runs from before volume views (fold_tiles) kept only the networks' dimension
    return int(data.get("spectrum_dim", data["dim"])), axes


def _read(path: Path, dim: int, axes: dict | None = None) -> np.ndarray:
    """A file's spectra as a stack (n, *S) of `dim`-dimensional spectra, whose axes (when
    both the file and the run have them) match the run's."""
    from exp2sim.readers import check_compatible, read_spectra_file

    file = read_spectra_file(path)
    if axes is not None:
        check_compatible(file, None, axes, str(path), ndim=dim)
    spectra = file.signal
    if spectra.ndim == dim and file.stacked is not True:
        spectra = spectra[None]
    if spectra.ndim != dim + 1:
        what = "stack of spectra" if file.stacked else "array"
        raise ValueError(
            f"{path}: the run works on {dim}D spectra, but this {what} has shape "
            f"{file.signal.shape}"
        )
    return spectra


_STYLE = {"trustworthy": "green", "expert opinion": "yellow", "untrustworthy": "red"}


def _print_table(rows: list[dict], t1: float, t2: float, direction: str) -> None:
    from rich.table import Table

    table = Table(
        title=f"Applicability ({direction} generator): Sinkhorn distance to the training set",
        caption=f"trustworthy: mean <= {t1:.3g}; untrustworthy: mean > {t2:.3g} "
        "(~1 for in-distribution spectra)",
    )
    table.add_column("input")
    for col in ("mean", "std", "5 %", "50 %", "95 %"):
        table.add_column(col, justify="right")
    table.add_column("verdict", no_wrap=True)
    for r in rows:
        name = r["input"] if r["index"] is None else f"{r['input']}[{r['index']}]"
        style = _STYLE[r["verdict"]]
        table.add_row(
            name,
            *(f"{r[k]:.4g}" for k in ("mean", "std", "q05", "q50", "q95")),
            f"[{style}]{r['verdict']}[/]",
        )
    console.print(table)
