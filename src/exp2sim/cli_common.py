"""What every command of the command line shares: the consoles and the error policy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)

# what classify, translate and applicability read (exp2sim.readers)
SPECTRA_HELP = (
    ".npy (one spectrum or a stack), a folder of .npy files, or HDF5 (.h5, .nxs): exp2sim "
    "dataset, NeXus NXdata or Mantid MDHistoWorkspace."
)

BackgroundOpt = Annotated[
    str | None,
    typer.Option(
        "--background",
        help="Subtract a background estimated from each spectrum first: one value per block "
        "of bins (a low quantile), e.g. 40x40 for the MAPS mosaic's constant-energy tiles, "
        "60x60x1 for a volume's energy slices, 100 for a whole cut of 100 bins; what falls "
        "below 0 is set to 0. Default: none.",
        metavar="BLOCK",
    ),
]


# a background above this share of the 99th-percentile intensity gets a note: simulated
# spectra sit at 0-0.3 %, the demo's spectra with artefacts at 3.6-12 %
BACKGROUND_NOTE = 0.02


def without_background(spectra: np.ndarray, block: str | None, spectrum_ndim: int) -> np.ndarray:
    """`spectra` (*S or (n, *S); S has `spectrum_ndim` axes) less the background of
    `--background BLOCK` (exp2sim.spectra.background). Without a block they are returned
    as they are, with a note on stderr where they seem to sit on a background."""
    from exp2sim.spectra.background import background_level, parse_block, subtract_background

    single = spectra.ndim == spectrum_ndim
    if block is None:
        if np.isfinite(spectra).any() and not np.isinf(spectra).any():
            levels = background_level(spectra[None] if single else spectra)
            high = levels[levels > BACKGROUND_NOTE]
            if len(high):
                note(
                    f"note: {len(high)} of {len(levels)} spectra sit on a background (their "
                    f"lowest bins at {high.min():.0%} to {high.max():.0%} of their "
                    "99th-percentile intensity; simulations have none): --background BLOCK "
                    "subtracts it"
                )
        return spectra
    result = subtract_background(spectra[None] if single else spectra, parse_block(block))
    return result[0] if single else result


def note(message: str) -> None:
    """One informational line on stderr, printed as it is (no markup, no highlighting)."""
    err_console.print(message, highlight=False, markup=False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input ends the command with one line on stderr and exit status 2."""
    try:
        yield
    except (ValueError, OSError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


@contextlib.contextmanager
def resumable(out: Path) -> Iterator[None]:
    """Ctrl-C ends a long job with one line saying that its work is kept (exit status 130,
    the shell's for SIGINT)."""
    try:
        yield
    except KeyboardInterrupt:
        note(f"interrupted: finished work is kept in {out}; run the same command to resume")
        raise typer.Exit(code=130) from None


def progress_bar(label: str, field: str, show: bool = True) -> Progress:
    """A progress bar on stderr: label, bar, done/total, a free text `field`, elapsed, ETA."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{{task.fields[{field}]}}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=err_console, transient=False, disable=not show)
