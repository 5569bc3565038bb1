"""The evaluation's datasets: simulated with `exp2sim.spectra` (resumable Dask jobs) and
kept under REPORT/data/, so a second run reuses them.

Per model: unconvolved training spectra, convolved training spectra (another seed: the
GAN's two domains are unpaired), and test spectra simulated twice, with and without
resolution, from the same parameter sets (paired, for fidelity metrics).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from exp2sim.evaluation.config import EvaluationConfig
from exp2sim.spectra.dataset import read_dataset
from exp2sim.spectra.factory import make_layout
from exp2sim.spectra.generate import (
    DaskClient,
    Job,
    SimulationConfig,
    draw_parameters,
    run_jobs,
    stable_on,
)
from exp2sim.spectra.layout import MosaicLayout

Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass
class Labelled:
    """Spectra (n, *S) float32 with NaN where masked and integer labels (n,) into
    `classes`."""

    signal: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.signal)


def _sim_config(
    cfg: EvaluationConfig, model: str, resolution: str, n: int, seed: int, **fields: object
) -> SimulationConfig:
    """One of the evaluation's simulations: a mosaic with the evaluation's points per bin,
    spread and L convention; `fields` override any SimulationConfig field (the
    out-of-distribution magnets' full ranges, the 3D example's volume)."""
    settings = dict(kind="mosaic", n_mc=cfg.n_mc, spread=cfg.spread, fixed_l=cfg.fixed_l)
    return SimulationConfig(
        model=str(model), n=n, resolution=resolution, seed=seed, **(settings | fields)
    )


def layout(cfg: EvaluationConfig) -> MosaicLayout:
    """The layout of the evaluation's spectra (the PCSMO experiment's MAPS mosaic)."""
    return make_layout(_sim_config(cfg, cfg.models[0], "none", 1, cfg.seed))


def simulate(
    config: SimulationConfig,
    out: Path,
    scheduler: Callable[[], str] | None = None,
    parameters: np.ndarray | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The spectra (n, *S) of a dataset file, simulated first unless it is complete.
    `scheduler` returns a Dask scheduler address (a cluster started only when needed)."""
    return simulate_all([(config, out, parameters)], scheduler, progress)[0]


def simulate_all(
    jobs: list[tuple[SimulationConfig, Path, np.ndarray | None]],
    scheduler: Callable[[], str] | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """`simulate` for several (config, file, parameters or None) at once: the unfinished
    ones run together on one cluster (`exp2sim.spectra.generate.run_jobs`)."""
    todo = [
        Job(config, out, parameters=parameters)
        for config, out, parameters in jobs
        if not out.exists() or out.with_name(out.name + ".parts").exists()
    ]
    if todo:
        run_jobs(
            todo,
            scheduler=scheduler() if scheduler else None,
            progress=[partial(progress, job.out.stem) if progress else None for job in todo],
        )
    return [_read_simulated(config, out) for config, out, _ in jobs]


def _read_simulated(config: SimulationConfig, out: Path) -> np.ndarray:
    """A finished dataset's spectra (n, *S), NaN where masked, after checking that it was
    simulated with `config`."""
    ds = read_dataset(out)
    want = json.loads(json.dumps(config.job_key()))
    have = {k: ds.config.get(k) for k in want}
    if have != want:
        changed = ", ".join(sorted(k for k in want if have[k] != want[k]))
        raise ValueError(f"{out} was simulated with other settings ({changed}): remove it")
    signal = np.array(ds.signal, dtype=np.float32)
    signal[:, ds.mask] = np.nan
    return signal


def paired_parameters(config: SimulationConfig, client=None) -> np.ndarray:  # noqa: ANN001
    """config.n parameter sets (drawn from config.seed, so reproducible) that both the
    config's convolved calculator and its unconvolved twin can compute: for test spectra
    simulated both ways from the same parameters. `client`: a Dask client to run the
    stability checks on (None: this process)."""
    params, _ = draw_parameters(replace(config, n=config.n + max(4, config.n // 5)), client)
    unconvolved = replace(config, resolution="none").calculator_json()
    params = params[stable_on(client, unconvolved, params)]
    if len(params) < config.n:
        raise ValueError(
            f"model {config.model}: too few parameter sets stable with and without resolution"
        )
    return params[: config.n]


def cached_paired_parameters(
    path: Path, config: SimulationConfig, scheduler: Callable[[], str] | None = None
) -> np.ndarray:
    """`paired_parameters`, drawn once (stability checked on the Dask workers of
    `scheduler()`, or here without one) and kept in `path` (.npy) for reruns."""
    from exp2sim.fileio import write_npy_atomic

    if path.exists():
        return np.load(path, allow_pickle=False)
    if scheduler is None:
        params = paired_parameters(config)
    else:
        with DaskClient(scheduler=scheduler()) as dask:
            params = paired_parameters(config, dask.get())
    write_npy_atomic(path, params)
    return params


def _stack(parts: list[np.ndarray], classes: tuple[str, ...]) -> Labelled:
    """One Labelled set from each class's spectra, in the order of `classes`."""
    labels = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return Labelled(np.concatenate(parts), labels, classes)


def build_datasets(
    cfg: EvaluationConfig,
    folder: Path,
    scheduler: Callable[[], str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Labelled]:
    """Simulate (or reuse) the four datasets: train, train_convolved, test,
    test_convolved (the last two paired row by row), and test_bins (paired too) if
    cfg.reference_bins; every model's jobs at once."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {"train": 10 * cfg.seed + 1, "train_convolved": 10 * cfg.seed + 2}
    test_seed = 10 * cfg.seed + 3
    splits = (
        ("train", "none", cfg.n_train, seeds["train"]),
        ("train_convolved", "montecarlo", cfg.n_train_convolved, seeds["train_convolved"]),
        ("test", "none", cfg.n_test, test_seed),
        ("test_convolved", "montecarlo", cfg.n_test, test_seed),
    )
    if cfg.reference_bins:
        splits += (("test_bins", "bins", cfg.n_test, test_seed),)
    jobs = []
    for model in cfg.models:
        stem = Path(model).stem
        test_config = _sim_config(cfg, model, "montecarlo", cfg.n_test, test_seed)
        test_params = cached_paired_parameters(
            folder / f"{stem}_test_parameters.npy", test_config, scheduler
        )
        for split, resolution, n, seed in splits:
            params = test_params if split.startswith("test") else None
            config = _sim_config(cfg, model, resolution, n, seed)
            jobs.append((config, folder / f"{stem}_{split}.h5", params))
    signals = iter(simulate_all(jobs, scheduler, progress))
    out: dict[str, list] = {split: [] for split, *_ in splits}
    for _model in cfg.models:
        for split, *_ in splits:
            out[split].append(next(signals))
    return {split: _stack(parts, cfg.models) for split, parts in out.items()}
