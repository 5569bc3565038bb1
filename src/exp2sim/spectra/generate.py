"""Generate datasets of spectra on Dask distributed, interruptible and resumable.

The job is split into chunks of consecutive spectra. Parameters are drawn up front from the
seed (uniform in the model's training ranges, unstable sets rejected and counted), and the
spectra are deterministic functions of them, so every chunk's result is fixed before any
work starts.
Each finished chunk is written atomically to `OUT.parts/chunk-NNNNN.npz`; when all are done
they are assembled into OUT (atomically) and the parts are removed. Killing the job at any
moment loses at most the chunks in flight; running the same command again computes only
the missing chunks, and the result equals an uninterrupted run with the same seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from exp2sim.allocator import restore_adaptive_thresholds
from exp2sim.fileio import atomic_path, write_text_atomic

KINDS = ("mosaic", "volume", "cut")
RESOLUTIONS = ("none", "bins", "gaussian", "montecarlo")


@dataclass(frozen=True)
class SimulationConfig:
    """One dataset-generation job (saved with its output).

    model: built-in name or TOML path; n: number of spectra; kind: mosaic, volume or cut;
    resolution: none, bins (averaged over each bin's extent, no instrument), gaussian or
    montecarlo; seed: seeds the parameter draws; n_mc: integration points per bin of all
    but unconvolved spectra (the nearest square number is used);
    ei, frequency: incident energy (meV) and Fermi chopper frequency (Hz) of a volume or
    cut; chunk: spectra per task; shape: (n_h, n_k, n_e) bins of a volume (() = 60^3);
    spread: draw each parameter from this fraction of its training range, centred on the
    model's best fit (1 = the full ranges; see `SpinModel.around_best_fit`);
    fixed_l: None (intensities at the kinematic L of each bin) or an L (r.l.u.) at which to
    take them, 0 for the original pipeline's convention (spectra.calculator.Kinematics).
    """

    model: str = "goodenough"
    n: int = 100
    kind: str = "mosaic"
    resolution: str = "none"
    seed: int = 0
    n_mc: int = 16
    ei: float = 140.0
    frequency: float = 400.0
    chunk: int = 4
    instrument: str = "MAPS"
    shape: tuple[int, ...] = ()
    spread: float = 1.0
    fixed_l: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.shape and (self.kind != "volume" or len(self.shape) != 3 or min(self.shape) < 2):
            raise ValueError(f"shape {self.shape} needs --kind volume and three sizes >= 2")
        if self.n < 1:
            raise ValueError("--n must be at least 1")
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.resolution not in RESOLUTIONS:
            raise ValueError(
                f"--resolution must be one of {', '.join(RESOLUTIONS)}, got {self.resolution!r}"
            )
        if self.n_mc < 1 or self.chunk < 1:
            raise ValueError("--n-mc and --chunk must be at least 1")
        if not 0 < self.spread <= 1:
            raise ValueError(f"--spread must be in (0, 1], got {self.spread}")
        if self.fixed_l is not None:
            object.__setattr__(self, "fixed_l", float(self.fixed_l))
            if not np.isfinite(self.fixed_l):
                raise ValueError(f"--fixed-l must be a finite L (r.l.u.), got {self.fixed_l}")
        if self.instrument != "MAPS":
            raise ValueError(f"unknown instrument {self.instrument!r}: only MAPS is available")

    def to_json(self) -> str:
        """The whole config as canonical JSON."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def calculator_json(self) -> str:
        """Canonical JSON of the fields a spectrum calculator depends on: the key of a
        process's calculator cache, so that jobs differing only in the number of spectra,
        the seed, the chunk size or the spread share one calculator (building a Monte Carlo
        calculator takes seconds)."""
        return dataclasses.replace(self, n=1, seed=0, chunk=1, spread=1.0).to_json()

    def job_key(self) -> dict:
        """Everything that determines the result (not how it is scheduled)."""
        d = dataclasses.asdict(self)
        d.pop("chunk")
        # defaults of fields added later are left out: keys of older jobs stay valid
        if not d["shape"]:
            d.pop("shape")
        if d["spread"] == 1.0:
            d.pop("spread")
        if d["fixed_l"] is None:
            d.pop("fixed_l")
        return d


# --------------------------------------------------------------------------- spectra
@lru_cache(maxsize=4)
def _calculator(config_json: str) -> Callable[[np.ndarray], np.ndarray]:
    """Build (once per process) the function computing a spectrum from parameters."""
    from exp2sim.spectra.factory import make_calculator

    return make_calculator(SimulationConfig(**json.loads(config_json)))


def _worker_setup() -> None:
    """A Dask worker computes on one thread (one worker per core)."""
    restore_adaptive_thresholds()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def compute_chunk(calculator_json: str, params: np.ndarray) -> np.ndarray:
    """Spectra for the rows of params, (m, *shape) float32; `calculator_json` is
    `SimulationConfig.calculator_json()`."""
    _worker_setup()
    calc = _calculator(calculator_json)
    return np.stack([calc(p) for p in params]).astype(np.float32)


def check_stable(calculator_json: str, params: np.ndarray) -> np.ndarray:
    """(P,) True for the parameter sets (P, n_params) the calculator can compute."""
    _worker_setup()
    return _calculator(calculator_json).stable(params)


def stable_on(client, calculator_json: str, params: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """`check_stable` for the rows of params: in this process when `client` is None, else
    split over the Dask client's workers. The exact check solves the spin-wave problem at
    every wave vector a spectrum needs, about the cost of an unconvolved spectrum per set,
    so done here it would leave every worker but one idle while parameters are drawn."""
    params = np.atleast_2d(params)
    if client is None or len(params) < 2:
        return _calculator(calculator_json).stable(params)
    pieces = min(len(params), 2 * max(1, len(client.scheduler_info()["workers"])))
    parts = np.array_split(params, pieces)
    futures = client.map(check_stable, [calculator_json] * pieces, parts, pure=False)
    return np.concatenate(client.gather(futures))


def draw_parameters(config: SimulationConfig, client=None) -> tuple[np.ndarray, int]:  # noqa: ANN001
    """n stable parameter sets drawn uniformly from the model's ranges (narrowed by
    config.spread), and the number of unstable draws rejected on the way. Deterministic in
    the seed, wherever the checks run (`client`: a Dask client, or None for this process)."""
    from exp2sim.spinwave import SpinWaveTheory, load_model

    model = load_model(config.model).around_best_fit(config.spread)
    if model.ranges is None:
        raise ValueError(f"model {model.name!r} has no parameter ranges to draw from")
    swt = SpinWaveTheory(model.system)
    calculator_json = config.calculator_json()
    rng = np.random.default_rng(config.seed)
    candidates, stable = [], []
    while (found := sum(int(s.sum()) for s in stable)) < config.n:
        block = model.sample(max(64, config.n), rng)
        candidates.append(block)
        # a coarse Brillouin-zone mesh first (cheap), then exactly the wave vectors the
        # spectrum calculator will solve at, so no accepted set fails later in a worker;
        # the exact check runs in order, on only as many candidates as are still needed
        coarse = np.flatnonzero(swt.check_stability(block))
        ok = np.zeros(len(block), dtype=bool)
        start = 0
        while start < len(coarse) and found + int(ok.sum()) < config.n:
            need = config.n - found - int(ok.sum())
            part = coarse[start : start + max(8, need + need // 4 + 2)]
            ok[part] = stable_on(client, calculator_json, block[part])
            start += len(part)
        stable.append(ok)
        if sum(len(c) for c in candidates) > 1000 * config.n:
            raise ValueError(f"model {model.name!r}: almost every draw is unstable")
    ok = np.concatenate(stable)
    last = int(np.nonzero(ok)[0][config.n - 1])  # the n-th stable draw
    params = np.concatenate(candidates)[: last + 1][ok[: last + 1]]
    return params, int((~ok[: last + 1]).sum())


def local_cluster(workers: int | None = None):  # noqa: ANN201 - a dask LocalCluster
    """A Dask cluster on this machine: `workers` single-threaded processes (default: one
    per core), dashboard on any free port (several jobs may run at once)."""
    from dask.distributed import LocalCluster

    # The worker processes inherit an ignored SIGINT: Ctrl-C in a terminal signals the whole
    # process group, and this process, not each worker with a traceback, ends the job.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        return LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            # Only critical log lines from Dask: after Ctrl-C a worker whose scheduler has
            # just gone logged a heartbeat failure with a traceback (seen once in CI under
            # load). Task errors still reach this process as exceptions.
            silence_logs=logging.CRITICAL,
        )
    finally:
        if main and previous is not None:  # None: a handler not installed from Python
            signal.signal(signal.SIGINT, previous)


class DaskClient:
    """A Dask client started on first use: connected to `scheduler` (an address), or to a
    local cluster of `workers` processes started here. A context manager; closes what it
    started."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None) -> None:
        self.workers, self.scheduler = workers, scheduler
        self._client = self._cluster = None

    def get(self):  # noqa: ANN201 - a dask.distributed Client
        if self._client is None:
            from dask.distributed import Client

            if self.scheduler:
                self._client = Client(self.scheduler)
            else:
                self._cluster = local_cluster(self.workers)
                self._client = Client(self._cluster)
        return self._client

    def __enter__(self) -> DaskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None


# --------------------------------------------------------------------------- job
class Job:
    """One dataset-generation job writing `out` (resumable)."""

    def __init__(
        self,
        config: SimulationConfig,
        out: str | Path,
        overwrite: bool = False,
        parameters: np.ndarray | None = None,
    ):
        """`parameters` (n, n_params): compute these sets instead of drawing them from the
        seed (e.g. the same sets with and without resolution, for paired test data); they
        must be stable for this configuration's calculator."""
        self.config = config
        self.parameters = None
        if parameters is not None:
            self.parameters = np.asarray(parameters, dtype=float)
            if self.parameters.ndim != 2 or len(self.parameters) != config.n:
                raise ValueError(
                    f"expected {config.n} parameter sets, got shape {self.parameters.shape}"
                )
        self.out = Path(out)
        if self.out.suffix.lower() not in (".h5", ".hdf5", ".nxs"):
            raise ValueError(f"--out must be an .h5 file, got {str(self.out)!r}")
        self.parts = self.out.with_name(self.out.name + ".parts")
        if overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.out.unlink(missing_ok=True)
        self.calculator_json = config.calculator_json()

    @property
    def chunks(self) -> list[tuple[int, int]]:
        c, n = self.config.chunk, self.config.n
        return [(i, min(i + c, n)) for i in range(0, n, c)]

    def _chunk_path(self, start: int) -> Path:
        return self.parts / f"chunk-{start:07d}.npz"

    def prepare(self, dask: DaskClient | None = None) -> np.ndarray:
        """Create or check the parts folder; return the parameters of all spectra. New
        parameters are checked for stability on `dask`'s workers (here if None)."""
        job = self.config.job_key()
        if self.parameters is not None:
            job["parameters"] = self.parameters.tolist()
        key = json.dumps(job, sort_keys=True)
        if self.out.exists() and not self.parts.exists():
            raise ValueError(
                f"{self.out} exists: choose another --out or pass --overwrite to replace it"
            )
        self.parts.mkdir(parents=True, exist_ok=True)
        config_file = self.parts / "job.json"
        if config_file.exists():
            saved = json.loads(config_file.read_text())
            if json.dumps(saved["job"], sort_keys=True) != key:
                raise ValueError(
                    f"{self.parts} belongs to a different job (other model, n, kind, "
                    "resolution, seed, n_mc, ei or spread): use the same options or --overwrite"
                )
            with np.load(self.parts / "parameters.npz", allow_pickle=False) as f:
                return f["parameters"]
        client = dask.get() if dask is not None else None
        if self.parameters is None:
            params, rejected = draw_parameters(self.config, client)
        else:
            params, rejected = self.parameters, 0
            if not stable_on(client, self.calculator_json, params).all():
                raise ValueError("some of the given parameter sets are unstable")
        with atomic_path(self.parts / "parameters.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, parameters=params, rejected=rejected)
        write_text_atomic(config_file, json.dumps({"job": json.loads(key)}, indent=1))
        return params

    def done(self) -> set[int]:
        """Starts of the chunks already on disk (complete by construction)."""
        found = set()
        for start, stop in self.chunks:
            path = self._chunk_path(start)
            if path.exists():
                try:
                    with np.load(path, allow_pickle=False) as f:
                        if f["signal"].shape[0] == stop - start:
                            found.add(start)
                            continue
                except (OSError, ValueError, KeyError):
                    pass
                path.unlink()  # unreadable: computed again
        return found

    def save_chunk(self, start: int, signal: np.ndarray) -> None:
        with atomic_path(self._chunk_path(start)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, signal=signal)

    def run(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict:
        """Compute the missing chunks on Dask and assemble the file. Returns a summary."""
        return run_jobs([self], workers, scheduler, [progress])[0]

    def assemble(self, params: np.ndarray) -> None:
        """Write OUT from the parts and remove them."""
        from exp2sim.spectra.factory import make_bins_and_mask, model_info

        with np.load(self.parts / "parameters.npz", allow_pickle=False) as f:
            rejected = int(f["rejected"])
        chunks = []
        for start, _ in self.chunks:
            with np.load(self._chunk_path(start), allow_pickle=False) as f:
                chunks.append(f["signal"])
        bins, mask, axes = make_bins_and_mask(self.config)
        from exp2sim.spectra.dataset import write_dataset

        write_dataset(
            self.out,
            np.concatenate(chunks),
            bins,
            mask,
            params,
            dataclasses.asdict(self.config),
            model_info(self.config),
            rejected,
            axes,
        )
        shutil.rmtree(self.parts)


def run_jobs(
    jobs: list[Job],
    workers: int | None = None,
    scheduler: str | None = None,
    progress: list[Callable[[int, int], None] | None] | None = None,
) -> list[dict]:
    """Run several jobs on one Dask cluster at once; returns each job's summary.

    Every job is prepared first (parameters drawn, checked on the workers), then the
    missing chunks of all of them are submitted together, and each file is assembled as
    soon as its last chunk is in. So no worker waits for one job's last few chunks while
    another job has work, and the next job's parameter draws do not wait for the last
    job's file. The spectra are those of running the jobs one by one. `progress`: one
    callback (done, total) per job, or None.
    """
    from dask.distributed import as_completed

    progress = progress or [None] * len(jobs)
    summaries: list[dict] = [{} for _ in jobs]
    with DaskClient(workers, scheduler) as dask:
        params = [job.prepare(dask) for job in jobs]
        t0 = time.perf_counter()
        remaining, finished = [], []
        futures = {}
        for i, job in enumerate(jobs):
            done = job.done()  # reads every chunk file: once per job, not per chunk
            todo = [c for c in job.chunks if c[0] not in done]
            computed = sum(b - a for a, b in todo)
            summaries[i] = {"n": job.config.n, "computed": computed, "seconds": 0.0}
            finished.append(job.config.n - computed)
            remaining.append(len(todo))
            if progress[i]:
                progress[i](finished[i], job.config.n)
            for a, b in todo:
                fut = dask.get().submit(
                    compute_chunk, job.calculator_json, params[i][a:b], pure=False
                )
                futures[fut] = (i, a)
        for i, job in enumerate(jobs):
            if not remaining[i]:
                job.assemble(params[i])
        for fut in as_completed(futures):
            i, start = futures[fut]
            spectra = fut.result()
            jobs[i].save_chunk(start, spectra)
            finished[i] += len(spectra)
            remaining[i] -= 1
            if progress[i]:
                progress[i](finished[i], jobs[i].config.n)
            if not remaining[i]:
                summaries[i]["seconds"] = time.perf_counter() - t0
                jobs[i].assemble(params[i])
    return summaries
