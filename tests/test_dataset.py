"""Dataset generation: NeXus layout, determinism, interruption (also kill -9) and resume."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from exp2sim.cli import app
from exp2sim.spectra.dataset import read_dataset
from exp2sim.spectra.generate import Job, SimulationConfig, compute_chunk
from exp2sim.spinwave import SpinWaveTheory, load_model

CUT = dict(model="goodenough", kind="cut", resolution="none", seed=3, chunk=2)


def test_file_layout_parameters_and_resume(tmp_path):
    config = SimulationConfig(n=6, **CUT)
    full = Job(config, tmp_path / "full.h5")
    summary = full.run(workers=1)
    assert summary["computed"] == 6
    data = read_dataset(tmp_path / "full.h5")
    assert data.signal.shape == (6, 100) and data.mask.shape == (100,)
    assert np.isnan(data.signal[:, data.mask]).all()
    assert np.isfinite(data.signal[:, ~data.mask]).all()
    model = load_model("goodenough")
    lo, hi = np.array(model.ranges).T
    assert np.all((data.parameters >= lo) & (data.parameters <= hi))
    assert SpinWaveTheory(model.system).check_stability(data.parameters).all()
    with h5py.File(tmp_path / "full.h5") as f:
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry/data"].attrs["NX_class"] == "NXdata"
        assert f["entry/data"].attrs["signal"] == "signal"
        assert list(f["entry/data"].attrs["axes"]) == [".", "energy"]
        assert json.loads(f["entry/process"].attrs["configuration"])["seed"] == 3
    assert not (tmp_path / "full.h5.parts").exists()

    # an interrupted job: one chunk finished before the stop
    part = Job(config, tmp_path / "part.h5")
    params = part.prepare()
    np.testing.assert_array_equal(params, data.parameters)
    part.save_chunk(2, compute_chunk(part.calculator_json, params[2:4]))
    summary = part.run(workers=1)
    assert summary["computed"] == 4  # the finished chunk is not computed again
    np.testing.assert_array_equal(read_dataset(tmp_path / "part.h5").signal, data.signal)


def test_jobs_run_together_give_what_they_give_alone(tmp_path):
    from exp2sim.spectra.generate import run_jobs

    configs = [SimulationConfig(n=5, **CUT), SimulationConfig(n=3, **dict(CUT, seed=8))]
    alone = []
    for i, config in enumerate(configs):
        Job(config, tmp_path / f"alone{i}.h5").run(workers=1)
        alone.append(read_dataset(tmp_path / f"alone{i}.h5").signal)
    jobs = [Job(c, tmp_path / f"together{i}.h5") for i, c in enumerate(configs)]
    params = jobs[0].prepare()  # the first job was interrupted after one chunk
    jobs[0].save_chunk(2, compute_chunk(jobs[0].calculator_json, params[2:4]))
    calls = []
    summaries = run_jobs(jobs, workers=2, progress=[lambda d, t: calls.append((0, d, t)), None])
    assert [s["computed"] for s in summaries] == [3, 3]
    assert calls[0] == (0, 2, 5) and calls[-1] == (0, 5, 5)
    for i, expected in enumerate(alone):
        np.testing.assert_array_equal(read_dataset(tmp_path / f"together{i}.h5").signal, expected)
        assert not (tmp_path / f"together{i}.h5.parts").exists()


def test_unfinished_work_from_another_job_is_refused(tmp_path):
    Job(SimulationConfig(n=4, **CUT), tmp_path / "d.h5").prepare()
    other = dict(CUT, seed=4)
    with pytest.raises(ValueError, match="different job"):
        Job(SimulationConfig(n=4, **other), tmp_path / "d.h5").prepare()


def test_unreadable_chunks_are_computed_again(tmp_path):
    job = Job(SimulationConfig(n=4, **CUT), tmp_path / "d.h5")
    job.prepare()
    (job.parts / "chunk-0000000.npz").write_bytes(b"not a numpy file")
    assert job.done() == set()
    assert not (job.parts / "chunk-0000000.npz").exists()


def test_fixed_l_is_its_own_job_and_shown_by_info(tmp_path):
    """`--fixed-l` changes the intensities (not the mask), so a kinematic job's unfinished
    work is not resumed under it, and `info` says where the intensities were taken."""
    Job(SimulationConfig(n=2, **CUT), tmp_path / "d.h5").prepare()
    with pytest.raises(ValueError, match="different job"):
        Job(SimulationConfig(n=2, fixed_l=0.0, **CUT), tmp_path / "d.h5").prepare()
    runner = CliRunner()
    args = ["simulate", "--kind", "cut", "--n", "2", "--seed", "3", "--workers", "1"]
    res = runner.invoke(app, [*args, "--fixed-l", "0", "--out", str(tmp_path / "l0.h5")])
    assert res.exit_code == 0, res.output
    Job(SimulationConfig(n=2, **CUT), tmp_path / "kin.h5").run(workers=1)
    at_zero, kinematic = (read_dataset(tmp_path / f).signal for f in ("l0.h5", "kin.h5"))
    assert np.array_equal(np.isnan(at_zero), np.isnan(kinematic))
    assert not np.allclose(at_zero, kinematic, equal_nan=True)
    res = runner.invoke(app, ["info", str(tmp_path / "l0.h5")])
    assert res.exit_code == 0 and "L = 0 (--fixed-l)" in res.stdout
    res = runner.invoke(app, [*args, "--fixed-l", "nan", "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "--fixed-l must be a finite L" in res.stderr


def _simulate(out: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "exp2sim.cli",
        "simulate",
        "--out",
        str(out),
        "--kind",
        "cut",
        "--resolution",
        "gaussian",
        "--n-mc",
        "4",
        "--n",
        "10",
        "--chunk",
        "1",
        "--workers",
        "1",
        "--seed",
        "9",
        *extra,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def test_kill_9_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "killed.h5"
    proc = _simulate(out, [])
    parts = Path(str(out) + ".parts")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("chunk-*.npz"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: client, scheduler, worker
    proc.wait()
    done_before = len(list(parts.glob("chunk-*.npz")))
    assert 3 <= done_before < 10 and not out.exists()
    resumed = _simulate(out, [])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    assert f"{10 - done_before} computed now" in err.decode()
    clean = tmp_path / "clean.h5"
    ref = _simulate(clean, [])
    ref.communicate(timeout=300)
    np.testing.assert_array_equal(read_dataset(out).signal, read_dataset(clean).signal)


def test_read_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"certainly not HDF5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    for path, message in (
        (empty, "empty"),
        (junk, "not a readable"),
        (foreign, "not an exp2sim"),
        (tmp_path / "missing.h5", "no such file"),
    ):
        with pytest.raises(ValueError, match=message):
            read_dataset(path)
        res = CliRunner().invoke(app, ["info", str(path)])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_spectrum_info_and_show_commands(tmp_path):
    runner = CliRunner()
    npy = tmp_path / "cut.npy"
    res = runner.invoke(app, ["spectrum", "goodenough", "--kind", "cut", "--out", str(npy)])
    assert res.exit_code == 0, res.output
    cut = np.load(npy)
    assert cut.shape == (100,) and np.nanmax(cut) > 0
    h5 = tmp_path / "one.h5"
    res = runner.invoke(
        app,
        [
            "spectrum",
            "dimer",
            "--kind",
            "volume",
            "--out",
            str(h5),
            "--plot",
            str(tmp_path / "v.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    data = read_dataset(h5)
    assert data.signal.shape == (1, 60, 60, 60)
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["info", str(h5)])
    assert res.exit_code == 0 and "dimer" in res.stdout and "60 x 60 x 60" in res.stdout
    res = runner.invoke(app, ["show", str(h5), "--out", str(tmp_path / "s.png")])
    assert res.exit_code == 0 and (tmp_path / "s.png").stat().st_size > 5000
    res = runner.invoke(app, ["show", str(h5), "--index", "3", "--out", str(tmp_path / "t.png")])
    assert res.exit_code == 2 and "--index" in res.stderr
    res = runner.invoke(app, ["spectrum", "goodenough", "--out", str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and ".npy or .h5" in res.stderr
    res = runner.invoke(
        app,
        ["spectrum", "goodenough", "--params", "15,1.5,-1.35,1.5,0.88,0.074", "--out", str(npy)],
    )
    assert res.exit_code == 2 and "unstable" in res.stderr


# A Dimer draw that the coarse 6 x 6 zone mesh calls stable but that is unstable at some
# (h, k) of the mosaic: before the fix, it reached a worker and failed the whole job.
MARGINAL_DIMER = [
    -4.172425275789367,
    1.4408182259069964,
    -1.0108373662539603,
    -16.590908845184135,
    0.7827749744231256,
    0.11859323381834197,
]


def test_draws_are_stable_where_the_calculator_solves():
    from exp2sim.spectra.factory import make_calculator
    from exp2sim.spectra.generate import draw_parameters

    model = load_model("dimer")
    p = np.array([MARGINAL_DIMER, model.best_fit])
    swt = SpinWaveTheory(model.system)
    assert swt.check_stability(p).all()  # the coarse mesh misses it
    calc = make_calculator(SimulationConfig(model="dimer"))
    assert calc.stable(p).tolist() == [False, True]
    with pytest.raises(ValueError, match="unstable"):
        calc(p[0])
    # stable_at agrees with the full calculation on random draws, stable or not
    draws = model.sample(24, np.random.default_rng(2))
    q = np.column_stack([calc._hk, np.zeros(len(calc._hk))])
    assert np.array_equal(swt.stable_at(q, draws), swt.layer_modes(q, draws).stable)
    # every accepted draw of a job can be computed by its calculator
    params, rejected = draw_parameters(SimulationConfig(model="dimer", n=12, seed=1))
    assert len(params) == 12 and rejected > 0 and calc.stable(params).all()


def test_stability_checks_run_on_the_dask_workers_and_draw_the_same_parameters():
    from dask.distributed import get_task_stream

    from exp2sim.spectra.generate import DaskClient, draw_parameters, stable_on

    config = SimulationConfig(model="dimer", n=12, seed=1)
    here, rejected_here = draw_parameters(config)
    best = load_model("dimer").best_fit
    with DaskClient(workers=2) as dask, get_task_stream(dask.get()) as tasks:
        there, rejected_there = draw_parameters(config, dask.get())
        flags = stable_on(dask.get(), config.calculator_json(), np.array([MARGINAL_DIMER, best]))
    np.testing.assert_array_equal(there, here)
    assert rejected_there == rejected_here > 0
    assert flags.tolist() == [False, True]
    checks = [t for t in tasks.data if t["key"].startswith("check_stable")]
    assert len({t["worker"] for t in checks}) == 2  # both workers checked parameter sets


def test_spread_draws_near_the_best_fit_and_is_part_of_the_job(tmp_path):
    config = SimulationConfig(n=4, spread=0.2, **CUT)
    assert "spread" not in SimulationConfig(n=4, **CUT).job_key()  # old jobs keep their key
    assert config.job_key()["spread"] == 0.2
    with pytest.raises(ValueError, match="spread"):
        SimulationConfig(n=4, spread=0.0, **CUT)
    Job(config, tmp_path / "near.h5").run(workers=1)
    data = read_dataset(tmp_path / "near.h5")
    lo, hi = np.array(load_model("goodenough").around_best_fit(0.2).ranges).T
    assert np.all((data.parameters >= lo) & (data.parameters <= hi))
    with h5py.File(tmp_path / "near.h5") as f:  # provenance: the ranges actually drawn from
        ranges = json.loads(f["entry/sample"].attrs["parameter_ranges"])
    np.testing.assert_allclose(ranges, np.column_stack([lo, hi]))
    Job(config, tmp_path / "unfinished.h5").prepare()
    with pytest.raises(ValueError, match="different job"):  # resumed with another spread
        Job(SimulationConfig(n=4, spread=0.3, **CUT), tmp_path / "unfinished.h5").prepare()


def test_job_with_given_parameters_pairs_spectra(tmp_path):
    model = load_model("goodenough")
    params = np.array([model.best_fit, model.best_fit]) * np.array([[1.0], [1.05]])
    config = SimulationConfig(model="goodenough", n=2, kind="cut", seed=9, chunk=1)
    Job(config, tmp_path / "a.h5", parameters=params).run(workers=1)
    ds = read_dataset(tmp_path / "a.h5")
    assert np.array_equal(ds.parameters, params)
    with pytest.raises(ValueError, match="expected 3 parameter sets"):
        Job(SimulationConfig(n=3), tmp_path / "b.h5", parameters=params)
    with pytest.raises(ValueError, match="unstable"):
        Job(SimulationConfig(model="dimer", n=1), tmp_path / "c.h5",
            parameters=np.array([MARGINAL_DIMER])).prepare()  # fmt: skip


def test_jobs_that_differ_only_in_draws_share_one_calculator():
    """n, seed, chunk and spread only decide which parameters are drawn: jobs differing in
    them reuse a process's calculator (a Monte Carlo one takes seconds to build), while
    anything that changes the spectra gives another."""
    base = SimulationConfig(model="dimer", n=10, resolution="montecarlo", n_mc=4)
    other_draws = dataclasses.replace(base, n=3, seed=7, chunk=2, spread=0.5)
    assert other_draws.calculator_json() == base.calculator_json()
    for change in ({"n_mc": 9}, {"resolution": "none"}, {"model": "goodenough"}):
        assert dataclasses.replace(base, **change).calculator_json() != base.calculator_json()
