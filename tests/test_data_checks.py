"""Experimental data into `translate`, `classify` and `applicability`: a real Mantid file is
read, and data whose shape or axes differ from what a model was trained on are refused with
one line (exit 2) by every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from exp2sim.spectra.generate import Job, SimulationConfig

MANTID = Path(__file__).resolve().parents[2] / "shared/data/reference/mantid/1Dcut_sym_0p00T_K.nxs"
TINY_GAN = {
    "ngf": 4,
    "n_blocks": 2,
    "ndf": 4,
    "d_layers": 2,
    "nce_layers": ["down1", "down2", "block1", "block2"],
    "nce_patches": 8,
    "nce_units": 8,
    "crop": 32,
    "epochs": 1,
    "epochs_decay": 0,
    "iterations_per_epoch": 2,
}


def exp2sim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exp2sim", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def cuts(tmp_path_factory) -> dict[str, Path]:
    """Energy cuts (1D, with an energy axis) of both models, a GAN run and a classifier
    trained on them, and a copy of one file with its energy axis shifted."""
    d = tmp_path_factory.mktemp("cuts")
    files = {}
    for model in ("goodenough", "dimer"):
        config = SimulationConfig(model=model, n=6, kind="cut", seed=3, chunk=6)
        Job(config, d / f"{model}.h5").run(workers=1)
        files[model] = d / f"{model}.h5"
    shifted = d / "shifted.h5"
    shifted.write_bytes(files["goodenough"].read_bytes())
    with h5py.File(shifted, "r+") as f:
        f["entry/data/energy"][...] += 7.0  # same bins, another energy range
    files["shifted"] = shifted
    toml = d / "gan.toml"
    toml.write_text("\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in TINY_GAN.items()))
    res = exp2sim("train", str(files["goodenough"]), str(files["dimer"]), "--out", str(d / "run"),
                  "--preset", str(toml))  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = exp2sim("classify", "--train", str(files["goodenough"]), "--train",
                  str(files["dimer"]), "--out", str(d / "cls"), "--epochs", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    files["run"], files["cls"] = d / "run", d / "cls"
    return files


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    for w in words:
        assert w in res.stderr, res.stderr


def test_files_with_the_training_axes_are_accepted(cuts, tmp_path):
    res = exp2sim("classify", "--model", str(cuts["cls"]), str(cuts["dimer"]), "--format", "json")
    assert res.returncode == 0, res.stderr
    res = exp2sim("translate", str(cuts["dimer"]), "--run", str(cuts["run"]),
                  "--out", str(tmp_path / "t.npy"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "t.npy").shape[0] == 6


def test_classifier_refuses_other_axes(cuts):
    res = exp2sim("classify", "--model", str(cuts["cls"]), str(cuts["shifted"]))
    _one_line_error(res, "energy")


@pytest.mark.skipif(not MANTID.exists(), reason=f"reference file {MANTID} is absent")
def test_mantid_cut_is_read_and_refused_for_its_other_binning(cuts, tmp_path):
    # the real Mantid cut has 88 bins of 0.008 meV: not what the models were trained on
    res = exp2sim("classify", "--model", str(cuts["cls"]), str(MANTID))
    _one_line_error(res, str(MANTID))
    for cmd in (
        ["translate", str(MANTID), "--run", str(cuts["run"]), "--out", str(tmp_path / "m.npy")],
        ["applicability", "--run", str(cuts["run"]), str(MANTID)],
    ):
        _one_line_error(exp2sim(*cmd), "bin")
    # a model trained on no axes (a .npy stack) takes the Mantid cut: it is read, masked
    # and translated with its shape
    from exp2sim.readers import read_spectra

    cut = read_spectra(MANTID)
    stack = np.stack([np.roll(cut, k) for k in range(4)])
    np.save(tmp_path / "a.npy", stack)
    toml = tmp_path / "gan.toml"
    toml.write_text("\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in TINY_GAN.items()))
    res = exp2sim("train", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"),
                  "--out", str(tmp_path / "run"), "--preset", str(toml))  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = exp2sim("translate", str(MANTID), "--run", str(tmp_path / "run"),
                  "--out", str(tmp_path / "m.npy"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = np.load(tmp_path / "m.npy")
    assert out.shape == cut.shape == (88,)
    assert np.array_equal(np.isnan(out), np.isnan(cut))
