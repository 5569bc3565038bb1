"""Readers: Mantid MDHistoWorkspace files (the real reference cut and synthetic files in
Mantid's layout), exp2sim / NeXus NXdata files with axes, broken files, and
check_compatible."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from exp2sim.readers import SpectraFile, check_compatible, read_spectra, read_spectra_file
from exp2sim.spectra.dataset import write_dataset
from exp2sim.spectra.layout import CutLayout, MosaicLayout, VolumeLayout

MANTID_CUT = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "reference"
    / "mantid"
    / "1Dcut_sym_0p00T_K.nxs"
)


def write_mdhisto(
    path: Path,
    dims: list[tuple[str, str, np.ndarray]],
    signal: np.ndarray,
    mask: np.ndarray | None = None,
    events: np.ndarray | None = None,
    axes_attr: str | None = "auto",
) -> None:
    """A file in SaveMD2's layout: dims = (long_name, units, boundaries) for D0, D1, ...;
    `signal` etc. given in dimension order (D0, D1, ...) and stored reversed, as Mantid
    does."""
    with h5py.File(path, "w") as f:
        entry = f.create_group("MDHistoWorkspace")
        entry.attrs["NX_class"] = np.bytes_(b"NXentry")
        entry.attrs["SaveMDVersion"] = np.int32(2)
        data = entry.create_group("data")
        data.attrs["NX_class"] = np.bytes_(b"NXdata")
        for d, (name, units, bounds) in enumerate(dims):
            ds = data.create_dataset(f"D{d}", data=np.asarray(bounds, dtype=np.float64))
            ds.attrs["units"] = np.bytes_(units.encode())
            ds.attrs["long_name"] = np.bytes_(name.encode())
            ds.attrs["frame"] = np.bytes_(b"General Frame")
        stored = data.create_dataset("signal", data=np.asarray(signal, dtype=np.float64).T)
        stored.attrs["signal"] = np.int32(1)
        if axes_attr == "auto":
            axes_attr = ":".join(f"D{d}" for d in reversed(range(len(dims))))
        if axes_attr is not None:
            stored.attrs["axes"] = np.bytes_(axes_attr.encode())
        data["errors_squared"] = (np.abs(np.asarray(signal, dtype=np.float64)) * 4).T
        ones = np.ones(signal.shape)
        data["num_events"] = (ones if events is None else events).astype(np.float64).T
        data["mask"] = (np.zeros(signal.shape) if mask is None else mask).astype(np.int8).T


def one_line_error(path: Path) -> str:
    with pytest.raises(ValueError) as info:
        read_spectra_file(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# ---------------------------------------------------------------- the real Mantid file


@pytest.mark.skipif(not MANTID_CUT.is_file(), reason=f"reference Mantid file absent: {MANTID_CUT}")
def test_real_mantid_cut_matches_the_hdf5_datasets():
    spectra = read_spectra_file(MANTID_CUT)
    with h5py.File(MANTID_CUT, "r") as f:
        data = f["MDHistoWorkspace/data"]
        raw = data["signal"][()]
        variance = data["errors_squared"][()].reshape(-1)
        events = data["num_events"][()].reshape(-1)
        mask = data["mask"][()].reshape(-1)
        energy_bounds = data["D3"][()]
        q_bounds = [data[f"D{d}"][()] for d in range(3)]
    assert raw.shape == (88, 1, 1, 1)
    assert spectra.source == "mantid-mdhisto" and spectra.stacked is False
    assert spectra.signal.shape == (88,) and spectra.signal.dtype == np.float32
    assert list(spectra.axes) == ["energy"] and spectra.units["energy"] == "meV"
    energy = spectra.axes["energy"]
    np.testing.assert_allclose(energy, (energy_bounds[1:] + energy_bounds[:-1]) / 2)
    np.testing.assert_allclose(np.diff(energy), 0.008, atol=1e-6)  # uniform bins
    assert -0.2 < energy[0] < 0 < energy[-1] < 1.0  # a cold-neutron cut around the elastic line
    masked = (mask != 0) | (events == 0)
    np.testing.assert_array_equal(np.isnan(spectra.signal), masked)
    keep = ~masked
    np.testing.assert_array_equal(spectra.signal[keep], raw.reshape(-1)[keep].astype(np.float32))
    np.testing.assert_allclose(spectra.errors[keep], np.sqrt(variance[keep]), rtol=1e-6)
    # the elastic peak sits at zero energy transfer
    assert abs(energy[np.nanargmax(spectra.signal)]) < 0.02
    # the stored signal is already normalised: (signal / error)^2 = events in the strong bins
    # (counts / N over counts / N^2), so it is not divided by the number of events again
    strong = keep & (events > 1000)
    assert strong.sum() >= 5
    ratio = (spectra.signal[strong] / spectra.errors[strong]) ** 2 / events[strong]
    np.testing.assert_allclose(ratio, 1.0, rtol=0.02)
    assert list(spectra.integrated) == ["[H,0,0]", "[-0.5K,K,0]", "[0,0,L]"]
    for (lo, hi), bounds in zip(spectra.integrated.values(), q_bounds, strict=True):
        assert (lo, hi) == (bounds[0], bounds[1])
    assert spectra.units["[H,0,0]"] == "r.l.u."
    np.testing.assert_array_equal(read_spectra(MANTID_CUT), spectra.signal)


# ---------------------------------------------------------------- synthetic Mantid files


def test_mantid_2d_axis_order_mask_and_empty_bins(tmp_path):
    h_bounds = np.linspace(-0.3, 0.3, 4)  # 3 bins along D0
    e_bounds = np.linspace(0.0, 10.0, 6)  # 5 bins along D1
    i, j = np.meshgrid(np.arange(3), np.arange(5), indexing="ij")
    values = 10.0 * i + j + 1  # value[i_D0, j_D1]
    mask = np.zeros((3, 5), bool)
    mask[1, 2] = True
    events = np.full((3, 5), 7.0)
    events[2, 4] = 0
    path = tmp_path / "slice.nxs"
    write_mdhisto(
        path,
        [("[H,0,0]", "r.l.u.", h_bounds), ("DeltaE", "DeltaE", e_bounds)],
        values,
        mask,
        events,
    )
    with h5py.File(path, "r") as f:
        assert f["MDHistoWorkspace/data/signal"].shape == (5, 3)  # Mantid's reversed storage
    spectra = read_spectra_file(path)
    assert spectra.signal.shape == (3, 5)
    assert list(spectra.axes) == ["[H,0,0]", "energy"]
    assert spectra.units == {"[H,0,0]": "r.l.u.", "energy": "meV"}
    np.testing.assert_allclose(spectra.axes["[H,0,0]"], [-0.2, 0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(spectra.axes["energy"], [1, 3, 5, 7, 9])
    expected = values.astype(np.float32)
    expected[1, 2] = expected[2, 4] = np.nan
    np.testing.assert_array_equal(spectra.signal, expected)
    np.testing.assert_allclose(spectra.errors, 2 * np.sqrt(expected), rtol=1e-6)
    assert spectra.integrated is None
    np.testing.assert_array_equal(read_spectra(path), expected)


def test_mantid_single_bin_dimensions_are_integrated(tmp_path):
    dims = [
        ("[H,0,0]", "r.l.u.", [-0.1, 0.1]),
        ("[0,K,0]", "r.l.u.", np.linspace(0, 1, 4)),
        ("[0,0,L]", "r.l.u.", [-2.0, 2.0]),
        ("DeltaE", "DeltaE", np.linspace(0, 5, 6)),
    ]
    values = np.arange(15.0).reshape(1, 3, 1, 5) + 1
    path = tmp_path / "4d.nxs"
    write_mdhisto(path, dims, values)
    spectra = read_spectra_file(path)
    np.testing.assert_array_equal(spectra.signal, values.reshape(3, 5))
    assert list(spectra.axes) == ["[0,K,0]", "energy"]
    assert spectra.integrated == {"[H,0,0]": (-0.1, 0.1), "[0,0,L]": (-2.0, 2.0)}


def test_broken_mantid_files_give_one_line_errors(tmp_path):
    dims = [("A", "u", np.arange(4.0)), ("B", "v", np.arange(6.0))]
    values = np.ones((3, 5))
    write_mdhisto(tmp_path / "noaxes.nxs", dims, values, axes_attr=None)
    assert "axes attribute" in one_line_error(tmp_path / "noaxes.nxs")
    bad = [("A", "u", np.arange(4.0)), ("B", "v", np.arange(5.0))]  # 5 boundaries, 5 bins
    write_mdhisto(tmp_path / "bounds.nxs", bad, values)
    assert "D1 has 5 bin boundaries for 5 bins" in one_line_error(tmp_path / "bounds.nxs")
    single = [("A", "u", [0.0, 1.0]), ("B", "v", [0.0, 1.0])]
    write_mdhisto(tmp_path / "point.nxs", single, np.ones((1, 1)))
    assert "single bin" in one_line_error(tmp_path / "point.nxs")
    write_mdhisto(tmp_path / "empty.nxs", dims, values, events=np.zeros((3, 5)))
    assert "NaN" in one_line_error(tmp_path / "empty.nxs")
    with h5py.File(tmp_path / "events.nxs", "w") as f:
        f.create_group("MDEventWorkspace")
    assert "BinMD" in one_line_error(tmp_path / "events.nxs")


# ---------------------------------------------------------------- exp2sim / NeXus files


def _write(path: Path, layout, signal: np.ndarray, mask: np.ndarray, axes) -> None:
    write_dataset(
        path,
        signal,
        layout.bins(),
        mask,
        np.zeros((len(signal), 1)),
        {"seed": 0},
        {"name": "test", "parameter_names": ["J"]},
        0,
        axes=axes,
    )


def test_exp2sim_datasets_give_their_axes(tmp_path):
    layout = VolumeLayout(n_h=3, n_k=4, n_e=5)
    bins = layout.bins()
    axes = {"h": bins.h[:, 0, 0], "k": bins.k[0, :, 0], "energy": bins.e[0, 0, :]}
    rng = np.random.default_rng(0)
    signal = rng.random((2, 3, 4, 5)).astype(np.float32)
    mask = np.zeros((3, 4, 5), bool)
    mask[0, 1, 2] = True
    _write(tmp_path / "volume.h5", layout, signal, mask, axes)
    spectra = read_spectra_file(tmp_path / "volume.h5")
    assert spectra.source == "exp2sim" and spectra.stacked is True
    assert list(spectra.axes) == ["h", "k", "energy"]
    for name, values in axes.items():
        np.testing.assert_allclose(spectra.axes[name], values)
    assert spectra.units == {"h": "r.l.u.", "k": "r.l.u.", "energy": "meV"}
    assert np.isnan(spectra.signal[:, 0, 1, 2]).all() and np.isnan(spectra.signal).sum() == 2
    np.testing.assert_array_equal(spectra.signal[:, ~mask], signal[:, ~mask])
    np.testing.assert_array_equal(read_spectra(tmp_path / "volume.h5"), spectra.signal)
    check_compatible(spectra, (3, 4, 5), axes, "volume.h5")

    cut = CutLayout(n_e=6)
    _write(
        tmp_path / "cut.h5",
        cut,
        signal[:, 0, 0, :].repeat(2, 1)[:, :6],
        np.zeros(6, bool),
        {"energy": cut.bins().e},
    )
    spectra = read_spectra_file(tmp_path / "cut.h5")
    assert spectra.signal.shape == (2, 6) and list(spectra.axes) == ["energy"]
    np.testing.assert_allclose(spectra.axes["energy"], cut.bins().e)

    mosaic = MosaicLayout(n_slices=2, n_q=4)
    mosaic_signal = np.ones((1, *mosaic.shape), np.float32)
    _write(tmp_path / "mosaic.h5", mosaic, mosaic_signal, np.zeros(mosaic.shape, bool), None)
    spectra = read_spectra_file(tmp_path / "mosaic.h5")
    assert spectra.axes is None and spectra.stacked is True and spectra.signal.shape == (1, 24, 8)


def test_foreign_nxdata_with_bin_boundaries_and_errors(tmp_path):
    path = tmp_path / "map.nxs"
    with h5py.File(path, "w") as f:
        g = f.create_group("entry/data")
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "counts"
        g.attrs["axes"] = ["q", "energy"]
        g["counts"] = np.arange(12.0).reshape(3, 4)
        g["errors"] = np.full((3, 4), 0.5)
        g["q"] = np.array([0.0, 1.0, 2.0, 3.0])  # boundaries of 3 bins
        g["q"].attrs["units"] = "1/angstrom"
        g["energy"] = np.array([1.0, 2.0, 3.0, 4.0])  # centres of 4 bins
    spectra = read_spectra_file(path)
    assert spectra.source == "nexus" and spectra.stacked is False
    np.testing.assert_allclose(spectra.axes["q"], [0.5, 1.5, 2.5])
    np.testing.assert_allclose(spectra.axes["energy"], [1, 2, 3, 4])
    assert spectra.units == {"q": "1/angstrom", "energy": ""}
    np.testing.assert_allclose(spectra.errors, 0.5)
    with h5py.File(path, "a") as f:
        del f["entry/data/q"]
        f["entry/data/q"] = np.arange(7.0)  # fits neither 3 centres nor 4 boundaries
    assert "axis 'q'" in one_line_error(path)
    assert read_spectra(path).shape == (3, 4)  # the array-only reader ignores axes


def test_npy_files_and_folders(tmp_path):
    spectra = np.random.default_rng(2).random((3, 4, 6)).astype(np.float32)
    np.save(tmp_path / "stack.npy", spectra)
    one = read_spectra_file(tmp_path / "stack.npy")
    assert one.source == "npy" and one.stacked is None and one.axes is None
    np.testing.assert_array_equal(one.signal, spectra)
    for i, s in enumerate(spectra):
        np.save(tmp_path / f"s{i}.npy", s)
    (tmp_path / "stack.npy").unlink()
    folder = read_spectra_file(tmp_path)
    assert folder.source == "npy-folder" and folder.stacked is True
    np.testing.assert_array_equal(folder.signal, spectra)
    np.testing.assert_array_equal(read_spectra(tmp_path), spectra)


# ---------------------------------------------------------------- broken files


def test_corrupt_empty_and_truncated_files_give_one_line_errors(tmp_path):
    (tmp_path / "empty.nxs").write_bytes(b"")
    assert "empty" in one_line_error(tmp_path / "empty.nxs")
    (tmp_path / "junk.h5").write_bytes(b"certainly not HDF5" * 20)
    assert "not a readable HDF5" in one_line_error(tmp_path / "junk.h5")
    dims = [("A", "u", np.arange(41.0)), ("DeltaE", "DeltaE", np.arange(51.0))]
    write_mdhisto(tmp_path / "whole.nxs", dims, np.random.default_rng(1).random((40, 50)))
    whole = (tmp_path / "whole.nxs").read_bytes()
    (tmp_path / "cut.nxs").write_bytes(whole[: len(whole) // 2])
    assert "truncated" in one_line_error(tmp_path / "cut.nxs")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    assert "not a readable" in one_line_error(tmp_path / "bad.npy")
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    assert "numeric" in one_line_error(tmp_path / "text.npy")
    with h5py.File(tmp_path / "nodata.h5", "w") as f:
        f["x"] = 1
    assert "no NeXus NXdata" in one_line_error(tmp_path / "nodata.h5")
    assert "no such file" in one_line_error(tmp_path / "missing.nxs")
    (tmp_path / "x.txt").write_text("1 2 3")
    assert "unknown file type" in one_line_error(tmp_path / "x.txt")


# ---------------------------------------------------------------- check_compatible


def _mismatch(file: SpectraFile, shape, axes, **kw) -> str:
    with pytest.raises(ValueError) as info:
        check_compatible(file, shape, axes, "input.nxs", **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith("input.nxs: ")
    return message


def test_check_compatible_shapes():
    one = SpectraFile(np.zeros((3, 5), np.float32), stacked=False)
    check_compatible(one, (3, 5), None, "input.nxs")
    check_compatible(one, None, None, "input.nxs", ndim=2)  # any size, right dimensionality
    message = _mismatch(one, (3, 6), None)
    assert "(3, 5)" in message and "(3, 6)" in message
    message = _mismatch(one, None, None, ndim=3)
    assert "2D" in message and "3D" in message
    message = _mismatch(one, (240, 400, 60), None)
    assert "(3, 5)" in message and "(240, 400, 60)" in message
    stack = SpectraFile(np.zeros((4, 3, 5), np.float32), stacked=True)
    check_compatible(stack, (3, 5), None, "input.nxs")
    assert "(3, 5)" in _mismatch(stack, (5,), None)  # a stack of 2D spectra is not 1D
    bare = SpectraFile(np.zeros((4, 3, 5), np.float32))  # a .npy: (n, *S) or S
    check_compatible(bare, (3, 5), None, "input.nxs")
    check_compatible(bare, (4, 3, 5), None, "input.nxs")
    assert "(4, 3, 5)" in _mismatch(bare, (7,), None)


def test_check_compatible_axes():
    energy = np.linspace(1.0, 20.0, 20)  # bin width 1
    h = np.linspace(-1, 1, 5)  # bin width 0.5
    data = SpectraFile(
        np.zeros((5, 20), np.float32), axes={"h": h, "energy": energy + 0.05}, stacked=False
    )
    check_compatible(data, (5, 20), {"h": h, "energy": energy}, "input.nxs")
    message = _mismatch(data, (5, 20), {"h": h, "energy": energy + 0.2})
    assert "'energy'" in message and "tenth of a bin" in message
    assert "[1.05 .. 20.05]" in message and "[1.2 .. 20.2]" in message  # both ranges
    message = _mismatch(data, (5, 20), {"k": h, "energy": energy})
    assert "['h', 'energy']" in message and "['k', 'energy']" in message
    message = _mismatch(data, (5, 20), {"energy": energy, "h": h})
    assert "['energy', 'h']" in message
    # a model of any size: the bin widths must agree, the extent may differ
    check_compatible(data, None, {"h": h, "energy": np.arange(100.0, 140.0)}, "input.nxs")
    check_compatible(data, None, {"h": h, "energy": energy + 50}, "input.nxs")
    message = _mismatch(data, None, {"h": h, "energy": np.arange(0.0, 40.0, 2.0)})
    assert "bin width 1 differs from the model's 2" in message
    message = _mismatch(data, (5, 20), {"h": h, "energy": energy[:10]})
    assert "20 bins, the model's 10" in message
    # without axes on either side, only the shape is checked
    check_compatible(SpectraFile(data.signal, stacked=False), (5, 20), {"h": h, "energy": h}, "x")
    assert "(5, 20)" in _mismatch(SpectraFile(data.signal), (4, 20), {"h": h, "energy": energy})


@pytest.mark.skipif(not MANTID_CUT.is_file(), reason=f"reference Mantid file absent: {MANTID_CUT}")
def test_check_compatible_mantid_cut_against_a_cut_model():
    spectra = read_spectra_file(MANTID_CUT)
    energy = spectra.axes["energy"]
    check_compatible(spectra, (88,), {"energy": energy + 0.0005}, "cut.nxs")
    check_compatible(spectra, None, {"energy": np.arange(0.0, 1.0, 0.008)}, "cut.nxs")
    with pytest.raises(ValueError, match=r"\(88,\).*\(100,\)"):
        check_compatible(spectra, (100,), None, "cut.nxs")
    with pytest.raises(ValueError, match="bin width"):
        check_compatible(spectra, None, {"energy": np.linspace(0, 100, 100)}, "cut.nxs")
