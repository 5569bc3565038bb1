"""The `exp2sim` command line."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from exp2sim import __version__
from exp2sim.cli_common import console, err_console, progress_bar, resumable, user_errors

if TYPE_CHECKING:  # the physics imports torch: load it only when a command needs it
    from exp2sim.spinwave.lswt import SpinWaveResult
    from exp2sim.spinwave.models.base import SpinModel

app = typer.Typer(
    name="exp2sim",
    help="Simulate inelastic neutron scattering spectra and match them to experiments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


# Options shared by several commands.
ModelArg = Annotated[str, typer.Argument(help="Built-in model name or a .toml model file.")]
ParamsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated parameters in the model's order.")
]
KindOpt = Annotated[str, typer.Option(help="mosaic, volume or cut.")]
ResolutionOpt = Annotated[
    str,
    typer.Option(help="none, bins (each bin's extent, no instrument), gaussian or montecarlo."),
]
EiOpt = Annotated[float, typer.Option(help="Incident energy (meV) of volumes and cuts.")]
FrequencyOpt = Annotated[float, typer.Option(help="Fermi chopper frequency (Hz).")]
NmcOpt = Annotated[int, typer.Option(help="Integration points per bin (convolved spectra).")]
FixedLOpt = Annotated[
    float | None,
    typer.Option(
        help="Take intensities at this L (r.l.u.) instead of the kinematic L; 0 follows the "
        "original pipeline whose mosaics the paper used."
    ),
]


def _vector(text: str, what: str) -> np.ndarray:
    try:
        v = np.array([float(x) for x in text.split(",")], dtype=float)
    except ValueError:
        raise ValueError(f"{what} must be three comma-separated numbers, got {text!r}") from None
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{what} must be three finite comma-separated numbers, got {text!r}")
    return v


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """exp2sim command line."""
    if version:
        console.print(__version__)
        raise typer.Exit()


@app.command()
def models() -> None:
    """List the built-in spin-wave models with their parameters."""
    from exp2sim.spinwave import BUILTIN

    table = Table(title="Built-in models (parameters in meV)")
    for col in ("model", "parameters", "best fit", "training ranges", "description"):
        table.add_column(col)
    for name, make in BUILTIN.items():
        m = make()
        ranges = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in m.ranges) if m.ranges else "-"
        table.add_row(
            name,
            ", ".join(m.parameter_names),
            ", ".join(f"{v:g}" for v in m.best_fit),
            ranges,
            m.description,
        )
    console.print(table)


@app.command()
def dispersion(
    model: ModelArg,
    params: ParamsOpt = None,
    start: Annotated[
        str, typer.Option("--from", help="Start of the Q path h,k,l (r.l.u.).")
    ] = "0,0,0",
    end: Annotated[str, typer.Option("--to", help="End of the Q path h,k,l (r.l.u.).")] = "1,0,0",
    points: Annotated[int, typer.Option(help="Number of Q points on the path.")] = 101,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the dispersion.")] = None,
    formfactor: Annotated[bool, typer.Option(help="Apply the magnetic form factor.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Spin-wave energies and neutron intensities along a straight Q path.

    Q is in r.l.u. of the model's conventional cell (for PCSMO the a = 5.408, b = 5.4599 A
    cell of the data). Energies in meV; intensities are S_perp per magnetic cell with the
    form factor, one set per crystal twin.
    """
    with user_errors():
        from exp2sim.spinwave import SpinWaveTheory, UnstableParametersError, load_model

        if fmt not in ("table", "csv", "json"):
            raise ValueError(f"--format must be table, csv or json, got {fmt!r}")
        if not 1 <= points <= 1_000_000:
            raise ValueError("--points must be between 1 and 1000000")
        if plot is not None and plot.suffix.lower() != ".png":
            raise ValueError(f"--plot needs a .png file name, got {str(plot)!r}")
        spin_model = load_model(model)
        values = spin_model.parse_params(params)
        q0, q1 = _vector(start, "--from"), _vector(end, "--to")
        q = q0 + np.linspace(0.0, 1.0, points)[:, None] * (q1 - q0)
        swt = SpinWaveTheory(spin_model.system, device=device)
        res = swt.calculate(q, values, formfactor=formfactor, return_sab=False)
        if not res.stable[0] or not swt.check_stability(values)[0]:
            raise UnstableParametersError(
                f"parameters {', '.join(f'{v:g}' for v in values)} make model "
                f"{spin_model.name!r} unstable: h(k) is not positive definite (the assumed "
                "magnetic order is not the ground state)"
            )
        if plot is not None:
            from exp2sim.spinwave.plotting import plot_dispersion

            plot_dispersion(
                res, q0, q1, plot, title=f"{spin_model.name}: {_param_text(spin_model, values)}"
            )
        if fmt == "json":
            sys.stdout.write(json.dumps(_as_json(spin_model, values, res)) + "\n")
        elif fmt == "csv":
            sys.stdout.write(_as_csv(res))
        else:
            _print_table(spin_model, values, res)
        if plot is not None:
            err_console.print(f"wrote {plot}")


def _param_text(spin_model: SpinModel, values: np.ndarray) -> str:
    names = spin_model.parameter_names
    return ", ".join(f"{n}={v:g}" for n, v in zip(names, values, strict=True))


def _as_json(spin_model: SpinModel, values: np.ndarray, res: SpinWaveResult) -> dict:
    twins = []
    for t, weight in enumerate(res.twin_weights):
        twins.append(
            {
                "weight": float(weight),
                "energies": np.round(res.energies[0, t], 9).tolist(),
                "intensities": np.round(res.sperp[0, t], 12).tolist(),
            }
        )
    return {
        "model": spin_model.name,
        "parameters": dict(zip(spin_model.parameter_names, map(float, values), strict=True)),
        "units": {"q": "r.l.u.", "energies": "meV", "intensities": "S_perp per magnetic cell"},
        "q": res.q.tolist(),
        "twins": twins,
    }


def _as_csv(res: SpinWaveResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["twin", "weight", "h", "k", "l", "mode", "energy_meV", "intensity"])
    for t, weight in enumerate(res.twin_weights):
        for iq, hkl in enumerate(res.q):
            for n in range(res.energies.shape[-1]):
                writer.writerow(
                    [
                        t + 1,
                        f"{weight:g}",
                        *(f"{v:.6g}" for v in hkl),
                        n + 1,
                        f"{res.energies[0, t, iq, n]:.6f}",
                        f"{res.sperp[0, t, iq, n]:.6g}",
                    ]
                )
    return buf.getvalue()


def _print_table(spin_model: SpinModel, values: np.ndarray, res: SpinWaveResult) -> None:
    n_modes = res.energies.shape[-1]
    # a table with many modes must not be squeezed into 80 columns when piped to a file
    out = Console(width=max(console.width, 9 * (n_modes + 3)))
    for t, weight in enumerate(res.twin_weights):
        table = Table(
            title=f"{spin_model.name} ({_param_text(spin_model, values)}), twin {t + 1} "
            f"(weight {weight:g}): mode energies in meV",
            caption="use --format csv or json for intensities",
        )
        for col in ("h", "k", "l"):
            table.add_column(col, justify="right")
        for n in range(n_modes):
            table.add_column(f"E{n + 1}", justify="right")
        for iq, qv in enumerate(res.q):
            energies = res.energies[0, t, iq]
            table.add_row(*(f"{x:.4g}" for x in qv), *(f"{e:.3f}" for e in energies))
        out.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("exp2sim-demo"),
    config: Annotated[
        str, typer.Option(help="Evaluation config: demo (default), paper or a .toml file.")
    ] = "demo",
) -> None:
    """The main job: the paper's evaluation end to end on a small default (about 10 minutes
    on a 2-core CPU).

    Checks the PCSMO spin waves against SpinW, simulates MAPS mosaics of the Goodenough and
    Dimer models, trains Exp2SimGAN and two DUQ classifiers, compares them with classical
    baselines, measures applicability, and writes OUT/report.md, OUT/metrics.json, figures
    and the trained models. Run it again to reuse finished stages.
    """
    with user_errors(), resumable(out):
        from exp2sim.demo import run_demo

        run_demo(out, err_console, config)


@app.command()
def spectrum(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Output file: .npy (float array) or .h5.")],
    params: ParamsOpt = None,
    kind: KindOpt = "mosaic",
    resolution: ResolutionOpt = "none",
    ei: EiOpt = 140.0,
    frequency: FrequencyOpt = 400.0,
    n_mc: NmcOpt = 16,
    fixed_l: FixedLOpt = None,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of the spectrum.")] = None,
) -> None:
    """One spectrum on demand, in the layout of the real MAPS data (NaN where masked)."""
    with user_errors():
        from exp2sim.spectra.generate import SimulationConfig
        from exp2sim.spectra.single import write_single_spectrum

        config = SimulationConfig(
            model=model,
            n=1,
            kind=kind,
            resolution=resolution,
            n_mc=n_mc,
            ei=ei,
            frequency=frequency,
            fixed_l=fixed_l,
        )
        write_single_spectrum(config, params, out, plot)
        err_console.print(f"wrote {out}" + (f" and {plot}" if plot else ""))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output HDF5 file.")],
    model: Annotated[str, typer.Option(help="Built-in model name or a .toml model file.")] = (
        "goodenough"
    ),
    n: Annotated[int, typer.Option(help="Number of spectra.")] = 100,
    kind: KindOpt = "mosaic",
    resolution: ResolutionOpt = "none",
    seed: Annotated[int, typer.Option(help="Seed of the parameter draws.")] = 0,
    n_mc: NmcOpt = 16,
    ei: EiOpt = 140.0,
    frequency: FrequencyOpt = 400.0,
    chunk: Annotated[int, typer.Option(help="Spectra per task.")] = 4,
    spread: Annotated[
        float,
        typer.Option(
            help="Draw from this fraction of each training range, centred on the best fit."
        ),
    ] = 1.0,
    fixed_l: FixedLOpt = None,
    workers: Annotated[int | None, typer.Option(help="Local Dask workers (default: cores).")] = (
        None
    ),
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a running Dask scheduler (e.g. on SLURM).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT and unfinished work.")] = False,
) -> None:
    """Generate a dataset of spectra with parameters drawn from the model's training ranges.

    Interrupt it at any moment (Ctrl-C, kill -9): the same command resumes without losing or
    repeating finished spectra, and gives the same file as an uninterrupted run.
    """
    with user_errors():
        from exp2sim.spectra.generate import Job, SimulationConfig

        if workers is not None and workers < 1:
            raise ValueError("--workers must be at least 1")
        config = SimulationConfig(
            model=model,
            n=n,
            kind=kind,
            resolution=resolution,
            seed=seed,
            n_mc=n_mc,
            ei=ei,
            frequency=frequency,
            chunk=chunk,
            spread=spread,
            fixed_l=fixed_l,
        )
        job = Job(config, out, overwrite=overwrite)
        with progress_bar("simulating", "rate") as bar:
            task = bar.add_task("simulate", total=n, rate="")
            start: list[tuple[float, int]] = []  # (time, spectra done) at the first report

            def update(done: int, total: int) -> None:
                now = time.perf_counter()
                if not start:
                    start.append((now, done))
                t0, done0 = start[0]
                rate = f"{(done - done0) / (now - t0):.2f} spectra/s" if done > done0 else ""
                bar.update(task, completed=done, rate=rate)

            try:
                summary = job.run(workers=workers, scheduler=scheduler, progress=update)
            except KeyboardInterrupt:
                done = len(job.done()) if job.parts.exists() else 0
                err_console.print(
                    f"interrupted: {done} finished chunks kept in {job.parts}; run the same "
                    "command to resume"
                )
                raise typer.Exit(code=130) from None
        err_console.print(
            f"wrote {out}: {summary['n']} spectra ({summary['computed']} computed now in "
            f"{summary['seconds']:.1f} s)"
        )


@app.command()
def info(path: Annotated[Path, typer.Argument(help="An exp2sim dataset (.h5).")]) -> None:
    """Summarise a dataset."""
    with user_errors():
        from exp2sim.spectra.dataset import read_dataset

        d = read_dataset(path)
        table = Table(title=f"{path}")
        table.add_column("field")
        table.add_column("value")
        c = d.config
        table.add_row("model", ", ".join(d.models))
        table.add_row("spectra", f"{d.n} of shape {' x '.join(map(str, d.shape))}")
        table.add_row("kind / resolution", f"{d.kind} / {d.resolution}")
        table.add_row("masked pixels", f"{d.mask.mean():.1%}")
        finite = d.signal[:, ~d.mask]
        table.add_row(
            "intensity",
            f"min {np.nanmin(finite):.3g}, median {np.nanmedian(finite):.3g}, "
            f"max {np.nanmax(finite):.3g}",
        )
        for i, name in enumerate(d.parameter_names):
            p = d.parameters[:, i]
            table.add_row(
                f"parameter {name}", f"{p.min():.4g} .. {p.max():.4g} (mean {p.mean():.4g})"
            )
        table.add_row("seed / n_mc", f"{c.get('seed')} / {c.get('n_mc')}")
        if c.get("fixed_l") is not None:
            table.add_row("intensities at", f"L = {c['fixed_l']:g} (--fixed-l), not kinematic")
        table.add_row("rejected unstable draws", str(d.n_rejected))
        console.print(table)


@app.command()
def show(
    path: Annotated[Path, typer.Argument(help="An exp2sim dataset (.h5).")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    index: Annotated[int, typer.Option(help="Which spectrum (0-based).")] = 0,
) -> None:
    """Plot one spectrum of a dataset with labelled axes."""
    with user_errors():
        from exp2sim.spectra.dataset import read_dataset
        from exp2sim.spectra.plotting import plot_spectrum

        if out.suffix.lower() != ".png":
            raise ValueError(f"--out needs a .png file name, got {str(out)!r}")
        d = read_dataset(path)
        if not 0 <= index < d.n:
            raise ValueError(f"--index must be between 0 and {d.n - 1}, got {index}")
        title = ", ".join(
            f"{n}={v:.3g}" for n, v in zip(d.parameter_names, d.parameters[index], strict=True)
        )
        plot_spectrum(d.signal[index], d.kind, d.config, out, title=f"{d.models[0]}: {title}")
        err_console.print(f"wrote {out}")


if __name__ == "__main__":
    app()


# The GAN's commands live in their own module; registering them here keeps one `app`.
from exp2sim.cli_gan import train, translate  # noqa: E402

app.command()(train)
app.command()(translate)

from exp2sim.cli_evaluate import evaluate  # noqa: E402

app.command()(evaluate)

from exp2sim.cli_classify import classify  # noqa: E402

app.command()(classify)

from exp2sim.cli_applicability import applicability  # noqa: E402

app.command()(applicability)
