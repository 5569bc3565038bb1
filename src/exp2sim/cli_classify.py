"""`exp2sim classify`: train a DUQ classifier on datasets, or name the model behind spectra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from exp2sim.cli_common import (
    SPECTRA_HELP,
    BackgroundOpt,
    console,
    err_console,
    note,
    progress_bar,
    user_errors,
    without_background,
)

NONE_KNOWN = "none of the known models"


def classify(
    input: Annotated[
        Path | None,
        typer.Argument(help=f"Spectra to classify (with --model): {SPECTRA_HELP}"),
    ] = None,
    train: Annotated[
        list[Path] | None,
        typer.Option("--train", help="exp2sim dataset (.h5) to train on; repeat for several."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Classifier directory to write (with --train).")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="A trained classifier directory.")] = None,
    deconvolve: Annotated[
        Path | None,
        typer.Option(help="GAN run directory: remove the resolution (Exp2Sim) before classifying."),
    ] = None,
    format: Annotated[str, typer.Option(help="text or json.")] = "text",
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights and data split.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    background: BackgroundOpt = None,
) -> None:
    """Train a DUQ classifier (--train DATA.h5 ... --out DIR) or classify spectra with one
    (--model DIR INPUT): a certainty in [0, 1] per known model; all low means none of them."""
    with user_errors():
        if (train is None) == (model is None):
            raise ValueError("give either --train DATA.h5 ... --out DIR or --model DIR INPUT")
        if train is not None:
            if out is None:
                raise ValueError("--train needs --out DIR for the classifier")
            if input is not None or deconvolve is not None or background is not None:
                raise ValueError(
                    "--train takes no INPUT, --deconvolve or --background (use --model)"
                )
            _train(train, out, epochs, seed, device)
        else:
            if input is None:
                raise ValueError("--model needs the INPUT spectra to classify")
            if out is not None or epochs is not None or seed is not None:
                raise ValueError("--out, --epochs and --seed belong to --train")
            if format not in ("text", "json"):
                raise ValueError(f"unknown --format {format!r}: use text or json")
            _classify(model, input, deconvolve, format, device, background)


def read_training_sets(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Spectra (n, *S) with each file's mask as NaN, labels (n,) and the class names (the
    sorted union of the files' model names) from exp2sim datasets."""
    from exp2sim.spectra.dataset import read_dataset

    datasets = [read_dataset(p) for p in paths]
    shapes = {d.shape for d in datasets}
    if len(shapes) > 1:
        listing = ", ".join(f"{p} {d.shape}" for p, d in zip(paths, datasets, strict=True))
        raise ValueError(f"training datasets differ in spectrum shape: {listing}")
    classes = sorted({name for d in datasets for name in d.models})
    spectra, labels = [], []
    for d in datasets:
        signal = np.array(d.signal, dtype=np.float32)
        signal[:, d.mask] = np.nan
        spectra.append(signal)
        names = np.asarray(d.models)[np.asarray(d.labels, dtype=int)]
        labels.append(np.array([classes.index(n) for n in names], dtype=np.int64))
    return np.concatenate(spectra), np.concatenate(labels), classes


def _training_axes(paths: list[Path]) -> dict[str, np.ndarray] | None:
    """The training files' axes (bin centres), checked to agree; None for pixel axes."""
    from exp2sim.readers import check_compatible, read_spectra_file

    files = [read_spectra_file(p) for p in paths]
    for path, f in zip(paths[1:], files[1:], strict=True):
        check_compatible(f, None, files[0].axes, f"training dataset {path}")
    return files[0].axes


def _train(paths: list[Path], out: Path, epochs: int | None, seed: int | None, device: str) -> None:
    import dataclasses

    from exp2sim.classifier import ClassifierConfig, DUQClassifier

    spectra, labels, classes = read_training_sets(paths)
    changes = {"epochs": epochs, "seed": seed, "device": device}
    config = dataclasses.replace(
        ClassifierConfig(), **{k: v for k, v in changes.items() if v is not None}
    )
    counts = ", ".join(f"{c} {int((labels == i).sum())}" for i, c in enumerate(classes))
    err_console.print(
        f"training on {len(spectra)} spectra of shape {spectra.shape[1:]} ({counts}), "
        f"at least {config.epochs} epochs and {config.min_steps} steps"
    )
    clf = DUQClassifier(config)
    clf.axes = _training_axes(paths)
    with progress_bar("training", "status") as bar:
        task = bar.add_task("train", total=config.epochs, status="")

        def progress(entry: dict[str, Any]) -> None:
            val = entry["val_accuracy"]
            status = f"loss {entry['loss']:.3f} accuracy {entry['train_accuracy']:.2f}"
            if val is not None:
                status += f" held-out {val:.2f}"
            bar.update(task, advance=1, total=entry["epochs"], status=status)

        clf.fit(spectra, labels, classes, progress)
    clf.save(out)
    acc = clf.validation_accuracy
    n_val = clf.history[-1]["n_val"]
    if acc is None:
        console.print("held-out accuracy: no spectra held out (too few per class)")
    else:
        console.print(f"held-out accuracy: {acc:.3f} ({n_val} spectra)")
    err_console.print(f"wrote {out}: classes {', '.join(classes)}")


def _classify(
    model: Path,
    input: Path,
    deconvolve: Path | None,
    fmt: str,
    device: str,
    background: str | None = None,
) -> None:
    from exp2sim.classifier import DUQClassifier
    from exp2sim.readers import check_compatible, read_spectra_file

    clf = DUQClassifier.load(model, device=device)
    file = read_spectra_file(input)
    check_compatible(file, clf.input_shape, clf.axes, str(input))
    spectra = without_background(file.signal, background, len(clf.input_shape))
    single = spectra.shape == clf.input_shape
    trust = None
    if deconvolve is not None:
        from exp2sim.gan.translate import Translator

        trust = _gan_applicability(deconvolve, spectra[None] if single else spectra, device)
        spectra = Translator.from_run(deconvolve, "exp2sim", device=device)(spectra)
    results = clf.results(spectra)
    if trust is not None:
        for r, t in zip(results, trust, strict=True):
            r["applicability"] = t
    if fmt == "json":
        typer.echo(json.dumps(results[0] if single else results, indent=2))
        return
    title = f"{input}: certainty per model (threshold {clf.config.threshold:g}"
    # the distances that decide "known" beside the certainties, with their limits
    checks = clf.limits
    for key, limit in checks.items():
        title += f"; {key} limit {limit:.3g}"
    table = Table(title=title + ")")
    table.add_column("#", justify="right")
    for c in clf.classes:
        table.add_column(c, justify="right")
    for key in checks:
        table.add_column(key, justify="right")
    table.add_column("prediction", no_wrap=True)
    if trust is not None:
        table.add_column("GAN applicability (distance)")
    for i, r in enumerate(results):
        verdict = r["prediction"] if r["known"] else NONE_KNOWN
        row = [str(i), *(f"{r['certainties'][c]:.3f}" for c in clf.classes)]
        row += [f"{r[key]:.3g}" for key in checks]
        row.append(verdict)
        if trust is not None:
            row.append(f"{r['applicability']['verdict']} ({r['applicability']['distance']:.3g})")
        table.add_row(*row)
    console.print(table)


def _gan_applicability(run: Path, spectra: np.ndarray, device: str) -> list[dict[str, Any]] | None:
    """Whether the GAN that deconvolves can be trusted on each input (n, *S): the verdict
    and mean distance of `exp2sim applicability --run RUN` (default settings; the zones are
    calibrated on the run's first use and saved with it). The classifier's own certainty is
    a weak test of novelty (README), so the deconvolving run's verdict is shown beside it.
    None, with a note, where the run cannot be calibrated (a single training spectrum)."""
    from exp2sim.applicability import ApplicabilityDomain

    try:
        domain = ApplicabilityDomain.for_run(run, "exp2sim", device=device, log=note)
    except ValueError as exc:  # e.g. a run with a single training spectrum (no spread)
        note(f"note: no applicability verdict for {run}: {exc}")
        return None
    result = domain.assess_spectra(spectra)
    return [
        {"verdict": v, "distance": float(d)}
        for v, d in zip(result.verdicts, result.means, strict=True)
    ]
