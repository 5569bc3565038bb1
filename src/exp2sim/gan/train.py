"""Training an Exp2SimGAN: data, optimisers, the loop, checkpoints, model selection.

A run directory holds:

    config.json              the TrainConfig and the data facts (dimension, shapes, scales)
    checkpoint.safetensors   latest full state: all networks, both Adam states, RNG states,
                             epoch and iteration, history; enough to resume exactly
    best.safetensors         generators of the epoch with the lowest Frechet distance
    history.json             per-epoch mean losses and Frechet distances
    figures/                 losses.png and sample translations per epoch

The learning-rate schedule is a function of the epoch (constant, then linear decay to 0), so
saving the epoch saves the scheduler. Multi-process runs (torchrun) average gradients
over the ranks; rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from exp2sim.allocator import keep_freed_memory
from exp2sim.fileio import write_text_atomic
from exp2sim.gan.checkpoint import load_state, read_info, save_state
from exp2sim.gan.config import TrainConfig
from exp2sim.gan.data import CropSampler, Domain, crop_shape, load_domain
from exp2sim.gan.fid import spectra_distance
from exp2sim.gan.model import DCLGAN, run_generator, run_generator_stack
from exp2sim.gan.normalisation import IntensityScale

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"


def pick_device(name: str) -> torch.device:
    """auto: CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch sees no CUDA GPU")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """lr during `epoch` (0-based): constant, then linear decay over epochs_decay."""
    if epoch < config.epochs:
        return config.lr
    return config.lr * max(0.0, 1.0 - (epoch - config.epochs + 1) / (config.epochs_decay + 1))


@dataclass
class RunData:
    """Both domains and the facts about them saved with the run."""

    a: Domain
    b: Domain
    dim: int  # of the networks' inputs: the spectra's, or 3 for volumes folded from 2D
    spectrum_dim: int  # of the spectra in the files
    crop: tuple[int, ...]
    axes_a: dict[str, np.ndarray] | None = None  # bin centres, when the files have axes
    axes_b: dict[str, np.ndarray] | None = None
    b_nonnegative: bool = True  # no negative value in domain B's files (TrainConfig.clips)

    def info(self) -> dict:
        info = {
            "dim": self.dim,
            "spectrum_dim": self.spectrum_dim,
            "crop": list(self.crop),
            "shape_a": list(self.a.train.shape[1:]),
            "shape_b": list(self.b.train.shape[1:]),
            "scale_a": self.a.scale.to_dict(),
            "scale_b": self.b.scale.to_dict(),
            "level_a": self.a.level,
            "level_b": self.b.level,
            "b_nonnegative": self.b_nonnegative,
        }
        for key, axes in (("axes_a", self.axes_a), ("axes_b", self.axes_b)):
            if axes is not None:  # inputs to translate are checked against them
                info[key] = {k: np.asarray(v).tolist() for k, v in axes.items()}
        return info


def prepare_data(
    config: TrainConfig,
    path_a: str | Path,
    path_b: str | Path,
    saved: dict | None = None,
    unfolded: bool = False,
) -> RunData:
    """Load, split and normalise both domains (with the saved scales when resuming).

    With `config.fold_tiles` the spectra are split and normalised as they are, then each
    folded into volumes (gan/fold.py), which the networks train on; `unfolded`: keep the
    split spectra as they are (the applicability measure works per spectrum)."""
    file_a, file_b = load_domain(path_a), load_domain(path_b)
    spectra_a, spectra_b = file_a.signal, file_b.signal
    if spectra_a.ndim != spectra_b.ndim:
        raise ValueError(
            f"domain A holds {spectra_a.ndim - 1}D spectra but domain B "
            f"{spectra_b.ndim - 1}D spectra"
        )
    kw = {
        "percentile": config.percentile,
        "compression": config.compression,
        "statistic": config.intensity_scale,
    }
    saved = saved or {}

    def domain(spectra: np.ndarray, side: str, seed: int) -> Domain:
        scale = IntensityScale(**saved[f"scale_{side}"]) if f"scale_{side}" in saved else None
        # runs started before the typical levels were kept have none saved: fit them
        level = saved.get(f"level_{side}")
        return Domain.from_spectra(spectra, config.val_fraction, seed, scale, level=level, **kw)

    a, b = domain(spectra_a, "a", config.seed), domain(spectra_b, "b", config.seed + 1)
    spectrum_dim = dim = spectra_a.ndim - 1
    fold = config.folding()
    if fold is not None and not unfolded:
        a, b = (
            dataclasses.replace(d, train=fold.fold(d.train), val=fold.fold(d.val)) for d in (a, b)
        )
        dim = 3
    crop = crop_shape(config.crop, a.train.shape[1:], b.train.shape[1:])
    if min(crop) < config.min_crop():
        raise ValueError(
            f"spectra of shape {a.train.shape[1:]} / {b.train.shape[1:]} give crops {crop}, "
            f"too small for a {config.d_layers}-layer discriminator (needs "
            f"{config.min_crop()} pixels per axis): lower d_layers or use larger spectra"
        )
    b_nonnegative = bool(np.nanmin(spectra_b) >= 0)
    return RunData(a, b, dim, spectrum_dim, crop, file_a.axes, file_b.axes, b_nonnegative)


class Trainer:
    """Trains one run directory. `Trainer.new(config, A, B, out)` starts a run,
    `Trainer.resume(out)` continues one; then `fit()`."""

    def __init__(self, config: TrainConfig, data: RunData, out: Path, sources: dict) -> None:
        self.config, self.data, self.out, self.sources = config, data, Path(out), sources
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.device = pick_device(config.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # reuse pages instead of faulting in new ones every step
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = DCLGAN(config, data.dim, data.b_nonnegative).to(self.device)
        self.model.set_scales(data.a.scale, data.b.scale)
        self.opt_g, self.opt_d = self.model.optimisers()
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        self.samplers = (
            CropSampler(data.a.train, data.crop, config.flip_axes, config.kernel_shifts),
            CropSampler(data.b.train, data.crop, config.flip_axes, config.kernel_shifts),
        )
        self.epoch, self.iteration = 0, 0
        self.history: list[dict] = []
        self.running: dict[str, float] = {}
        self.best: dict | None = None
        # the generators' averaged weights (config.ema_decay > 0), keyed like the model's;
        # `_live` holds views of the weights, which the optimiser and load_state_dict update
        # in place, so each step averages without rebuilding the state dict
        self.ema: dict[str, torch.Tensor] | None = None
        if config.ema_decay > 0:
            self._live = self._generator_state()
            self.ema = {k: v.clone() for k, v in self._live.items()}

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def new(
        cls, config: TrainConfig, path_a: str | Path, path_b: str | Path, out: str | Path
    ) -> Trainer:
        out = Path(out)
        if (out / CHECKPOINT).exists():
            raise ValueError(f"{out} already holds a run: resume it with --resume {out}")
        data = prepare_data(config, path_a, path_b)
        sources = {"domain_a": str(Path(path_a).resolve()), "domain_b": str(Path(path_b).resolve())}
        trainer = cls(config, data, out, sources)
        if trainer.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "config.json", json.dumps(trainer.run_info(), indent=2))
        return trainer

    @classmethod
    def resume(
        cls, out: str | Path, epochs: int | None = None, device: str | None = None
    ) -> Trainer:
        """Continue the run in `out` from its latest checkpoint (optionally with a new total
        of constant-lr epochs or another device)."""
        out = Path(out)
        if not (out / CHECKPOINT).exists():
            raise ValueError(f"{out}: no checkpoint to resume from")
        info = read_info(out / CHECKPOINT)
        config = TrainConfig.from_dict(info["config"])
        changes = {k: v for k, v in {"epochs": epochs, "device": device}.items() if v is not None}
        config = config.replace(**changes)
        data = prepare_data(
            config, info["sources"]["domain_a"], info["sources"]["domain_b"], info["data"]
        )
        now = data.info()  # (runs started before the typical levels were kept lack them)
        if {k: now.get(k) for k in info["data"]} != info["data"]:
            raise ValueError(f"{out}: the training data have changed since the run started")
        trainer = cls(config, data, out, info["sources"])
        trainer.load_checkpoint(out / CHECKPOINT)
        return trainer

    def run_info(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "data": self.data.info(),
            "sources": self.sources,
            "world_size": self.world,
        }

    # ---- averaged generators -------------------------------------------------------------
    def _generator_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if k.startswith("G_")}

    def _update_ema(self) -> None:
        with torch.no_grad():
            for name, avg in self.ema.items():
                avg.lerp_(self._live[name], 1.0 - self.config.ema_decay)

    @contextlib.contextmanager
    def averaged_generators(self) -> Iterator[None]:
        """Inside the block the model's generators hold the averaged weights (when
        `ema_decay` > 0); the latest weights are put back after it."""
        if self.ema is None:
            yield
            return
        latest = {k: v.clone() for k, v in self._generator_state().items()}
        self.model.load_state_dict(self.ema, strict=False)
        try:
            yield
        finally:
            self.model.load_state_dict(latest, strict=False)

    # ---- checkpoints ------------------------------------------------------------------
    def _rng_states(self) -> list[torch.Tensor]:
        state = self.generator.get_state()
        if self.world == 1:
            return [state]
        states = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(states, state)
        return states

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly from here (rank 0 writes it)."""
        rng = self._rng_states()
        if self.rank != 0:
            return
        state = {
            "model": self.model.state_dict(),
            "optim_g": self.opt_g.state_dict(),
            "optim_d": self.opt_d.state_dict(),
            "rng": {"sampler": rng, "torch": torch.get_rng_state()},
        }
        if self.ema is not None:
            state["ema"] = self.ema
        info = self.run_info() | {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "running": self.running,
            "history": self.history,
            "best": self.best,
        }
        save_state(self.out / CHECKPOINT, state, info)

    def load_checkpoint(self, path: Path) -> None:
        state, info = load_state(path, device="cpu")
        check_architecture(info, self.config, path)
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["optim_g"])
        self.opt_d.load_state_dict(state["optim_d"])
        if self.ema is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        samplers = state["rng"]["sampler"]
        if len(samplers) != self.world:
            raise ValueError(
                f"{path}: saved with {len(samplers)} processes, resumed with {self.world}"
            )
        self.generator.set_state(samplers[self.rank])
        torch.set_rng_state(state["rng"]["torch"])
        self.epoch, self.iteration = info["epoch"], info["iteration"]
        self.running, self.history, self.best = info["running"], info["history"], info["best"]

    def save_best(self, epoch: int, score: dict) -> None:
        """The generators of the best epoch so far (their averaged weights with ema_decay)."""
        state = {"model": self.ema if self.ema is not None else self._generator_state()}
        save_state(self.out / BEST, state, self.run_info() | {"epoch": epoch, "fid": score})

    # ---- training ---------------------------------------------------------------------
    @property
    def iterations_per_epoch(self) -> int:
        c = self.config
        if c.iterations_per_epoch > 0:
            return c.iterations_per_epoch
        n = max(len(self.data.a.train), len(self.data.b.train))
        return max(1, n // (c.batch_size * self.world))

    @property
    def total_epochs(self) -> int:
        return self.config.epochs + self.config.epochs_decay

    def step(self) -> dict[str, float]:
        """One training iteration on fresh random crops."""
        c = self.config
        a, ma = self.samplers[0].sample(c.batch_size, self.generator)
        b, mb = self.samplers[1].sample(c.batch_size, self.generator)
        to = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        losses = self.model.train_step(
            to(a), to(ma), to(b), to(mb), self.opt_g, self.opt_d, self.generator
        )
        if self.ema is not None:
            self._update_ema()
        return losses

    def fit(
        self,
        progress: Callable[[dict], None] | None = None,
        max_iterations: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict:
        """Train to the last epoch. Stop early, leaving a checkpoint, after `max_iterations`
        more iterations or when `should_stop()` turns true (checked between iterations, so
        a Ctrl-C never leaves a half-made step). `progress` is called after each iteration
        with a status dict. Returns a summary: epochs done, best epoch and its scores."""
        c, done = self.config, 0
        per_epoch = self.iterations_per_epoch
        while self.epoch < self.total_epochs:
            lr = learning_rate(c, self.epoch)
            for opt in (self.opt_g, self.opt_d):
                for group in opt.param_groups:
                    group["lr"] = lr
            while self.iteration < per_epoch:
                stop = should_stop is not None and should_stop()
                if stop or (max_iterations is not None and done >= max_iterations):
                    self.save_checkpoint()
                    return self.summary()
                t0 = time.perf_counter()
                losses = self.step()
                self.iteration += 1
                done += 1
                for k, v in losses.items():
                    self.running[k] = self.running.get(k, 0.0) + v
                if progress:
                    progress(
                        {
                            "epoch": self.epoch,
                            "iteration": self.iteration,
                            "per_epoch": per_epoch,
                            "losses": losses,
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                if self.iteration % c.checkpoint_every == 0 and self.iteration < per_epoch:
                    self.save_checkpoint()
            self.end_epoch(per_epoch)
        return self.summary()

    def end_epoch(self, per_epoch: int) -> None:
        c = self.config
        record = {"epoch": self.epoch + 1, "lr": learning_rate(c, self.epoch)}
        record |= {k: v / per_epoch for k, v in self.running.items()}
        last = self.epoch + 1 == self.total_epochs
        if (self.epoch + 1) % c.fid_every == 0 or last:
            with self.averaged_generators():
                score = self.evaluate()
            record |= score
            if self.rank == 0 and (self.best is None or score["fid"] < self.best["fid"]):
                self.best = {"epoch": self.epoch + 1, **score}
                self.save_best(self.epoch + 1, score)
        self.history.append(record)
        self.epoch += 1
        self.iteration = 0
        self.running = {}
        self.save_checkpoint()
        if self.rank == 0:
            write_text_atomic(self.out / "history.json", json.dumps(self.history, indent=2))
            if self.epoch % c.figure_every == 0 or last:
                from exp2sim.gan.figures import plot_losses, plot_samples

                plot_losses(self.history, self.out / "figures" / "losses.png")
                with self.averaged_generators():
                    plot_samples(self, self.out / "figures" / f"samples_epoch{self.epoch:04d}.png")

    def translate_val(
        self, direction: str, count: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Held-out spectra of the source domain (the first `count`; None: all) and their
        translations (normalised)."""
        gen, src = (
            (self.model.G_A, self.data.a.val)
            if direction == "a2b"
            else (self.model.G_B, self.data.b.val)
        )
        src = src[:count]
        precision = self.config.precision
        if gen.shifts or not self.config.fold_tiles:  # one by one; folds' volumes batched
            out = np.array([run_generator(gen, s, self.device, precision) for s in src])
        else:
            out = run_generator_stack(gen, src, self.device, precision)
        return src, np.where(np.isnan(src), np.nan, out)

    def evaluate(self) -> dict[str, float]:
        """Frechet distances (spectral features) of the held-out translations to the other
        domain's held-out spectra; `fid` is their sum, the model-selection score."""
        side = max(self.data.crop)
        fold = self.config.folding()
        pad = 0 if fold is None else fold.pad

        def data(x: np.ndarray) -> np.ndarray:  # volumes without the fold's masked ends
            return x[:, pad : x.shape[1] - pad] if pad else x

        _, fake_b = self.translate_val("a2b")
        _, fake_a = self.translate_val("b2a")
        fid_b = spectra_distance(data(fake_b), data(self.data.b.val), side)
        fid_a = spectra_distance(data(fake_a), data(self.data.a.val), side)
        return {"fid": fid_a + fid_b, "fid_exp2sim": fid_b, "fid_sim2exp": fid_a}

    def summary(self) -> dict:
        return {
            "epochs_done": self.epoch,
            "total_epochs": self.total_epochs,
            "best": self.best,
            "history": self.history,
        }


def check_architecture(info: dict, config: TrainConfig, path: Path) -> None:
    """A clear error when a checkpoint was made for other networks."""
    saved = TrainConfig.from_dict(info["config"]).architecture()
    wanted = config.architecture()
    diff = [f"{k}={saved[k]} (expected {wanted[k]})" for k in saved if saved[k] != wanted[k]]
    if diff:
        raise ValueError(f"{path}: checkpoint from another configuration: {', '.join(diff)}")
