"""The command line: outputs, the SpinW reference through JSON, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from exp2sim.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_dispersion_json_reproduces_spinw(reference):
    """The issue's acceptance check: SpinW's PCSMO system-test path, energies to 1e-3 meV."""
    ref = np.load(reference / "spinw" / "pcsmo_spinw_reference.npz")
    q = ref["hkl_input_rlu_small_cell"].T
    res = run(
        "dispersion",
        "goodenough",
        "--from",
        "0,0,0",
        "--to",
        "1.98,0,0",
        "--points",
        "50",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    np.testing.assert_allclose(out["q"], q, atol=1e-12)
    assert [t["weight"] for t in out["twins"]] == [0.5, 0.5]
    for t, twin in enumerate(out["twins"]):
        spinw = np.sort(ref[f"omega_twin{t + 1}"], axis=0)[16:].T  # positive half, ascending
        energies = np.array(twin["energies"])
        assert energies.shape == (50, 16)
        assert np.all(np.diff(energies, axis=1) >= 0)
        np.testing.assert_allclose(energies, spinw, atol=1e-3)
        assert np.array(twin["intensities"]).shape == (50, 16)
    assert out["parameters"] == {
        "JF1": -11.39,
        "JA": 1.5,
        "JF2": -1.35,
        "JF3": 1.5,
        "Jperp": 0.88,
        "D": 0.074,
    }


def test_csv_table_and_plot(tmp_path):
    res = run("dispersion", "rb2mnf4", "--params", "0.65,0.05", "--points", "5", "--format", "csv")
    assert res.exit_code == 0, res.output
    rows = res.stdout.strip().splitlines()
    assert rows[0] == "twin,weight,h,k,l,mode,energy_meV,intensity"
    assert len(rows) == 1 + 5 * 4  # one twin, 5 Q, 4 modes of the 2x2 magnetic cell
    # closed form at the zone boundary (0.5, 0, 0): w = 4 S sqrt((J1 - J2 (1 - g2))^2 - 0)
    e = [float(r.split(",")[6]) for r in rows[1:] if r.split(",")[2] == "0.5"]
    j1, j2, s = 0.65, 0.05, 2.5
    a = 4 * s * j1 - 4 * s * j2 * (1 - (-1.0))
    assert max(e) == pytest.approx(a, abs=1e-5)
    png = tmp_path / "fig.png"
    res = run("dispersion", "dimer", "--points", "11", "--plot", str(png))
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "E16" in res.stdout  # the table lists all 16 modes


def test_toml_model_through_the_cli():
    res = run(
        "dispersion",
        "examples/models/afm_chain.toml",
        "--params",
        "1.5",
        "--to",
        "0.25,0,0",
        "--points",
        "2",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.output
    e = np.array(json.loads(res.stdout)["twins"][0]["energies"])
    np.testing.assert_allclose(e[1], 2 * 1.5 * 1.0, atol=1e-6)  # 2JS |sin(pi/2)|


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dispersion", "nosuch"], "unknown model"),
        (["dispersion", "goodenough", "--params", "1,2"], "takes 6 parameters"),
        (["dispersion", "goodenough", "--params", "1,2,3,4,5,nan"], "NaN"),
        (["dispersion", "goodenough", "--params", "15,1.5,-1.35,1.5,0.88,0.074"], "unstable"),
        (["dispersion", "goodenough", "--format", "xml"], "--format"),
        (["dispersion", "goodenough", "--from", "0,0"], "--from"),
        (["dispersion", "goodenough", "--points", "0"], "--points"),
        (["dispersion", "goodenough", "--plot", "fig.jpg"], ".png"),
        (["dispersion", "missing.toml"], "missing.toml"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, message):
    res = run(*args)
    assert res.exit_code == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_malformed_toml_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[lattice\na = 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exp2sim.cli", "dispersion", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "bad.toml" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_spin_waves_write_figures_and_agree_with_spinw(tmp_path):
    """The demo's first part (the whole demo runs in tests/test_evaluation.py)."""
    from rich.console import Console

    from exp2sim.demo import spin_waves

    spin_waves(tmp_path / "demo", Console(quiet=True))
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["goodenough_gamma_max_deviation_from_spinw_meV"] < 0.06
    for name in ("goodenough", "dimer"):
        for path in ("h00", "hh0"):
            assert (tmp_path / "demo" / f"{name}_{path}.png").stat().st_size > 10_000


def test_demo_with_a_bad_config_fails_before_any_work(tmp_path):
    res = run("demo", "--out", str(tmp_path / "demo"), "--config", "nonsense")
    assert res.exit_code == 2
    assert "unknown evaluation config" in res.output
    assert not (tmp_path / "demo").exists()


def test_evaluate_refuses_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("n_tset = 3\n")
    res = run("evaluate", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert res.exit_code == 2
    assert "unknown evaluation settings: n_tset" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["classify", "translate", "applicability"])
def test_help_names_every_format_the_readers_take(command):
    """The three commands that read measured spectra share one reader (exp2sim.readers);
    their help must say so (translate's named only .npy and exp2sim .h5 before)."""
    result = run(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for fmt in ("NeXus NXdata", "Mantid MDHistoWorkspace", "folder of .npy"):
        assert fmt in text, fmt
