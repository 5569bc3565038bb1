"""`exp2sim train` and `exp2sim translate`: the GAN on the command line."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from exp2sim.cli_common import (
    SPECTRA_HELP,
    BackgroundOpt,
    err_console,
    progress_bar,
    user_errors,
    without_background,
)

DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]


def _init_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _leave_distributed() -> None:
    """End a torchrun process after a finished run, skipping the interpreter's shutdown.

    Gloo's worker threads release their last tensors a moment after a collective returns,
    and releasing a tensor needs the GIL. If that moment falls inside the interpreter's
    shutdown, the thread is killed while unwinding and the process aborts ("terminate
    called without an active exception"; 2 of 30 two-process runs before this, with every
    result already written). The barrier lets every rank's workers finish; os._exit then
    ends the process without a shutdown for a late release to race with.
    """
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train(
    domain_a: Annotated[
        Path | None,
        typer.Argument(help="Experiment-like spectra: exp2sim .h5, .npy stack or .npy folder."),
    ] = None,
    domain_b: Annotated[Path | None, typer.Argument(help="Simulated spectra, same forms.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory to create.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    preset: Annotated[str, typer.Option(help="small, paper or a .toml file.")] = "small",
    epochs: Annotated[int | None, typer.Option(help="Epochs at constant learning rate.")] = None,
    epochs_decay: Annotated[
        int | None, typer.Option(help="Epochs of linear learning-rate decay.")
    ] = None,
    crop: Annotated[int | None, typer.Option(help="Side of the training crops (pixels).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights and crops.")] = None,
    device: DeviceOpt = "auto",
    max_iterations: Annotated[
        int | None, typer.Option(help="Stop after this many iterations (a checkpoint is kept).")
    ] = None,
) -> None:
    """Train Exp2SimGAN on two unpaired sets of spectra (A experiment-like, B simulated).

    Resume an interrupted run (Ctrl-C, kill -9) with `exp2sim train --resume RUN_DIR`.
    Several processes or GPUs: `torchrun --nproc_per_node N -m exp2sim train ...`.
    """

    with user_errors():
        from exp2sim.gan.config import load_preset
        from exp2sim.gan.train import Trainer

        distributed = _init_distributed()
        if resume is not None:
            if domain_a or domain_b or out:
                raise ValueError("--resume takes the run directory only (no data, no --out)")
            trainer = Trainer.resume(
                resume, epochs=epochs, device=None if device == "auto" else device
            )
        else:
            if domain_a is None or domain_b is None or out is None:
                raise ValueError("give DOMAIN_A DOMAIN_B and --out RUN_DIR (or --resume RUN_DIR)")
            config = load_preset(preset)
            changes = {
                "epochs": epochs,
                "epochs_decay": epochs_decay,
                "crop": crop,
                "seed": seed,
                "device": device,
            }
            config = config.replace(**{k: v for k, v in changes.items() if v is not None})
            trainer = Trainer.new(config, domain_a, domain_b, out)
        run_dir = trainer.out
        per_epoch = trainer.iterations_per_epoch
        total = trainer.total_epochs * per_epoch
        show = trainer.rank == 0
        if show:
            n_a, n_b = len(trainer.data.a.train), len(trainer.data.b.train)
            data = trainer.data
            what = (
                f"{data.dim}D spectra"
                if data.spectrum_dim == data.dim
                else f"volumes folded from {data.spectrum_dim}D spectra"
            )
            err_console.print(
                f"{run_dir}: {what}, {n_a} + {n_b} for training, crops "
                f"{trainer.data.crop}, device {trainer.device}, {trainer.world} process(es); "
                f"epoch {trainer.epoch + 1} of {trainer.total_epochs}"
            )
        stop = {"now": False}

        def on_sigint(signum: int, frame: object) -> None:
            stop["now"] = True

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            with progress_bar("training", "status", show) as bar:
                done = trainer.epoch * per_epoch + trainer.iteration
                task = bar.add_task("train", total=total, completed=done, status="")

                def progress(s: dict) -> None:
                    losses = " ".join(f"{k} {v:.3f}" for k, v in s["losses"].items())
                    bar.update(task, advance=1, status=f"epoch {s['epoch'] + 1} {losses}")

                summary = trainer.fit(progress, max_iterations, should_stop=lambda: stop["now"])
        finally:
            signal.signal(signal.SIGINT, previous)
        if stop["now"]:
            if show:
                err_console.print(f"interrupted: checkpoint kept; resume with --resume {run_dir}")
            raise typer.Exit(code=130)
        if show:
            best = summary["best"]
            if best:
                err_console.print(
                    f"best epoch {best['epoch']}: Frechet distance {best['fid']:.4g} "
                    f"(exp2sim {best['fid_exp2sim']:.4g}, sim2exp {best['fid_sim2exp']:.4g})"
                )
            err_console.print(
                f"{run_dir}: {summary['epochs_done']} of {summary['total_epochs']} epochs done"
            )
    if distributed:
        _leave_distributed()


def translate(
    input: Annotated[Path, typer.Argument(help=f"Spectra: {SPECTRA_HELP}")],
    run: Annotated[Path, typer.Option(help="Training run directory.")],
    out: Annotated[Path, typer.Option(help="Output .npy, or .h5 for an .h5 input.")],
    direction: Annotated[str, typer.Option(help="exp2sim (remove resolution) or sim2exp.")] = (
        "exp2sim"
    ),
    checkpoint: Annotated[str, typer.Option(help="best or latest.")] = "best",
    device: DeviceOpt = "auto",
    max_voxels: Annotated[
        int, typer.Option(help="Larger spectra are translated in overlapping tiles of this size.")
    ] = 2**21,
    match_intensity: Annotated[
        bool,
        typer.Option(
            help="Scale each spectrum to the training data's intensity level before "
            "translating and back after, so the result keeps the input's units (counts, "
            "per monitor, ...); --no-match-intensity translates the values as given."
        ),
    ] = True,
    refine: Annotated[
        int,
        typer.Option(
            help="exp2sim only: this many Richardson-Lucy iterations after the translation, "
            "with the resolution kernels the run's Sim2Exp generator learned (kernel runs; "
            "5 is the demo's; 0: none)."
        ),
    ] = 0,
    background: BackgroundOpt = None,
) -> None:
    """Translate spectra with one generator of a trained run; shape and mask are kept."""
    with user_errors():
        from exp2sim.fileio import write_npy_atomic
        from exp2sim.gan.translate import Translator
        from exp2sim.readers import HDF5_SUFFIXES, check_compatible, read_spectra_file

        if refine < 0 or (refine and direction != "exp2sim"):
            raise ValueError(f"--refine {refine}: give 0, or a positive count with exp2sim")
        to_hdf5 = out.suffix in HDF5_SUFFIXES
        if not (out.suffix == ".npy" or (to_hdf5 and input.suffix in HDF5_SUFFIXES)):
            raise ValueError(f"{out}: write .npy, or .h5 when the input is an HDF5 file")
        translator = Translator.from_run(
            run,
            direction,
            checkpoint,
            device,
            max_voxels=max_voxels,
            match_intensity=match_intensity,
        )
        file = read_spectra_file(input)
        if to_hdf5 and file.source == "mantid-mdhisto":
            raise ValueError(f"{out}: write .npy for a Mantid input (its layout is not NXdata)")
        check_compatible(file, None, translator.axes, str(input), ndim=translator.dim)
        signal = without_background(file.signal, background, translator.dim)
        result = translator(signal)
        if refine:
            from exp2sim.gan.refine import LearnedBlur

            blur = LearnedBlur.from_run(
                run, checkpoint, device, max_voxels=max_voxels, match_intensity=match_intensity
            )
            result = blur.deconvolve(signal, result, refine).astype(result.dtype)
        if to_hdf5:
            _write_translated_h5(input, out, result, run, direction)
        else:
            write_npy_atomic(out, result)
        err_console.print(f"wrote {out}: {result.shape} ({direction})")


def _write_translated_h5(
    source: Path, out: Path, result: np.ndarray, run: Path, direction: str
) -> None:
    """Copy an HDF5 dataset and replace its signal by the translation."""
    import shutil

    import h5py

    from exp2sim.fileio import atomic_path
    from exp2sim.readers import find_nxdata

    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            group = find_nxdata(f, source)  # the NXdata the reader used
            name = str(group.attrs["signal"])
            del group[name]
            group.create_dataset(name, data=result.astype(np.float32), compression="gzip")
            group.attrs["translated_by"] = f"exp2sim translate --run {run} --direction {direction}"
