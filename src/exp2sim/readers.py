"""Reading spectra from files: NumPy .npy arrays, folders of them, HDF5 files with a NeXus
NXdata group (exp2sim datasets included) and Mantid MDHistoWorkspace files (SaveMD).

Every reader returns float32 arrays with NaN where a pixel has no data and raises
ValueError with a one-line message for anything it cannot use (missing, empty, corrupt,
truncated, non-numeric, infinite values).

`read_spectra(path)` gives the array only; `read_spectra_file(path)` gives a `SpectraFile`
with the axes (bin centres), their units and the errors where the file has them, and
`check_compatible` compares a file with what a model was trained on.

Mantid MDHistoWorkspace files, as SaveMD (version 2) writes a binned workspace:

    /MDHistoWorkspace             NXentry
      /data                       NXdata
        D0, D1, ..., D(m-1)       (n_d + 1,) float64 bin boundaries of each dimension,
                                  attributes long_name (e.g. "[H,0,0]", "DeltaE"), units,
                                  frame (the dataset names are Mantid's dimension ids)
        signal                    float64, attribute axes = "D(m-1):...:D1:D0"
        errors_squared            float64, same shape (variance of the signal)
        num_events                float64, same shape (events that fell in each bin)
        mask                      int8, same shape, non-zero = masked

The arrays are stored with the dimension order reversed: SaveMD2 writes size[m - 1 - d] =
number of bins of dimension d, and lists the dimension ids slowest-first in the signal's
`axes` attribute, so signal[i_{m-1}, ..., i_1, i_0] (Mantid keeps D0 fastest in memory).
Verified three ways: Mantid's SaveMD2.cpp source; the reference 1D cut
(`1Dcut_sym_0p00T_K.nxs`: signal shape (88, 1, 1, 1), axes "D3:D2:D1:D0", D3 = DeltaE with
89 boundaries, D0..D2 with 2); and tests/test_readers.py, which writes a 3 x 5 file in this
layout. We map the array axes to dimensions through the `axes` attribute (checking every
dimension's boundaries against its array length) and return the signal in dimension order
(D0, D1, ...), the order of Mantid's own `getSignalArray()`. Dimensions with a single bin
(integration ranges of a cut or slice) are dropped from the spectrum and reported in
`SpectraFile.integrated`.

Masked bins (NaN): the mask array (non-zero), bins whose signal is already NaN (MDNorm's
0/0 where nothing was measured) and bins with zero events. A bin no event fell into carries
no measurement Mantid could normalise (its NumEventsNormalization gives 0/0 there); the file
cannot tell a measured zero count from an unmeasured bin, and we take the unmeasured
reading, which is what coverage gaps produce. The reference cut has no masked, NaN or empty
bins (every bin has at least 8 events), so none of these rules changes its values.

Normalisation: the signal is returned as stored, never divided by the number of events.
Mantid's NumEventsNormalization is a display option meant for raw BinMD counts; files from
MDNorm (as the reference cut) are already normalised cross-sections: signal = counts / N,
variance = counts / N^2, so (signal / error)^2 = counts; in the reference cut it equals the
number of events within 1.2 % in the 8 bins with over 1,000 events (less in weak bins, where
a background was subtracted: some signals are negative). Dividing by the events again would
leave ~1 / N, the inverse of the normalisation.
Energy-transfer dimensions (units or name "DeltaE", Mantid's unit id, in meV) are named
"energy" with units "meV", as in exp2sim's own datasets; other dimensions keep their Mantid
names (long_name) and units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs", ".nx5")
MANTID_HISTO = "MDHistoWorkspace"
MANTID_EVENTS = "MDEventWorkspace"
AXIS_TOLERANCE = 0.1  # bins: axes agree when bin centres differ by at most this


@dataclass
class SpectraFile:
    """Spectra read from a file.

    signal: float32 (n, *S) stack or one spectrum S, NaN where masked.
    axes: axis name -> (S_i,) bin centres, in the order of the spectrum's dimensions; None
        when the file has none (.npy) or only pixel-index axes (exp2sim mosaic datasets).
    units: axis (and integrated dimension) name -> unit string; None without axes.
    errors: float32 standard deviations, the signal's shape, NaN where masked; or None.
    source: "npy", "npy-folder", "exp2sim", "nexus" or "mantid-mdhisto".
    stacked: True if signal is (n, *S), False if it is one spectrum S, None if the file
        cannot say (a bare .npy array: the model's dimensionality decides).
    integrated: Mantid dimensions with one bin (not part of S): name -> (low, high) bin
        boundaries in their units; None otherwise.
    """

    signal: np.ndarray
    axes: dict[str, np.ndarray] | None = None
    units: dict[str, str] | None = None
    errors: np.ndarray | None = None
    source: str = "npy"
    stacked: bool | None = None
    integrated: dict[str, tuple[float, float]] | None = None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _require_numeric(array: np.ndarray, source: str) -> None:
    if array.dtype.kind not in "fiu" or array.dtype.kind == "b":
        raise ValueError(f"{source}: expected a numeric array, got dtype {array.dtype}")


def _checked(array: np.ndarray, source: str) -> np.ndarray:
    _require_numeric(array, source)
    if array.size == 0:
        raise ValueError(f"{source}: the array is empty")
    array = np.asarray(array, dtype=np.float32)
    if np.isinf(array).any():
        raise ValueError(f"{source}: contains infinite values (use NaN for masked pixels)")
    if np.isnan(array).all():
        raise ValueError(f"{source}: every pixel is NaN (masked)")
    return array


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({_one_line(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected one array, found an archive of several")
    return _checked(array, str(path))


def _text(value: object) -> str:
    """An HDF5 string attribute (bytes, str or a one-element array) as str."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _names(value: object) -> list[str]:
    """A NeXus `axes` attribute as a list of names: an array of strings, or one string
    with names separated by colons (the older style Mantid writes)."""
    if isinstance(value, np.ndarray) and value.size > 1:
        return [_text(v) for v in value.reshape(-1)]
    return [name.strip() for name in _text(value).split(":")]


def _centres(values: np.ndarray, n: int, where: str) -> np.ndarray:
    """Bin centres (n,) from n centres or n + 1 boundaries."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == n + 1:
        return (values[1:] + values[:-1]) / 2
    if len(values) == n:
        return values
    raise ValueError(f"{where}: {len(values)} values for an axis of {n} bins")


def find_nxdata(f: h5py.File, path: Path) -> h5py.Group:
    """An HDF5 file's default NXdata group (following NeXus `default` attributes), else the
    first group with a `signal` attribute."""
    group = f
    while "default" in group.attrs and str(group.attrs["default"]) in group:
        group = group[str(group.attrs["default"])]
    if isinstance(group, h5py.Group) and "signal" in group.attrs:
        return group
    found: list[h5py.Group] = []
    f.visititems(
        lambda _, obj: (
            found.append(obj) if isinstance(obj, h5py.Group) and "signal" in obj.attrs else None
        )
    )
    if not found:
        raise ValueError(f"{path}: no NeXus NXdata group with a signal")
    return found[0]


def nxdata_signal(f: h5py.File, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The signal of an HDF5 file's NXdata group and its optional `mask` (True = no data)."""
    group = find_nxdata(f, path)
    signal = group[str(group.attrs["signal"])][()]
    mask = group["mask"][()].astype(bool) if "mask" in group else None
    return signal, mask


def _is_stacked(group: h5py.Group, signal: np.ndarray, mask: np.ndarray | None) -> bool | None:
    """Whether an NXdata signal is a stack (n, *S): its mask has one dimension less (exp2sim
    datasets), or its `axes` attribute names every dimension but a leading '.'."""
    if mask is not None and mask.ndim in (signal.ndim - 1, signal.ndim):
        return mask.ndim == signal.ndim - 1
    if "axes" not in group.attrs:
        return None
    names = _names(group.attrs["axes"])
    if len(names) != signal.ndim or signal.ndim == 1:
        return None
    named = [n != "." for n in names]
    if all(named):
        return False
    return True if not named[0] and all(named[1:]) else None


def _nxdata_axes(
    group: h5py.Group, shape: tuple[int, ...], where: str
) -> tuple[dict[str, np.ndarray] | None, dict[str, str] | None]:
    """Axes (name -> bin centres) and units of the last len(shape) dimensions of an NXdata
    signal; None when all of them are pixel-index axes ('.' or no `axes` attribute)."""
    if "axes" not in group.attrs:
        return None, None
    names = _names(group.attrs["axes"])
    signal_ndim = group[_text(group.attrs["signal"])].ndim
    if len(names) != signal_ndim:
        raise ValueError(
            f"{where}: the NXdata axes attribute names {len(names)} axes for a "
            f"{signal_ndim}-dimensional signal"
        )
    names = names[len(names) - len(shape) :]
    if all(name == "." for name in names):
        return None, None
    axes: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    for i, (name, n) in enumerate(zip(names, shape, strict=True)):
        if name == ".":
            axes[f"index{i}"] = np.arange(n, dtype=np.float64)
            units[f"index{i}"] = "pixel"
            continue
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise ValueError(f"{where}: the NXdata axis {name!r} has no dataset")
        axes[name] = _centres(group[name][()], n, f"{where}: axis {name!r}")
        units[name] = _text(group[name].attrs.get("units", ""))
    return axes, units


def _read_nxdata(f: h5py.File, path: Path, with_axes: bool) -> SpectraFile:
    group = find_nxdata(f, path)
    raw, mask = nxdata_signal(f, path)
    _require_numeric(raw, str(path))
    signal = np.array(raw, dtype=np.float32)
    if mask is not None:
        signal[np.broadcast_to(mask, signal.shape)] = np.nan
    signal = _checked(signal, str(path))
    program = f["entry/process"].attrs.get("program", "") if "entry/process" in f else ""
    result = SpectraFile(signal, source="exp2sim" if _text(program) == "exp2sim" else "nexus")
    if not with_axes:
        return result
    result.stacked = _is_stacked(group, raw, mask)
    shape = signal.shape[1:] if result.stacked else signal.shape
    result.axes, result.units = _nxdata_axes(group, shape, str(path))
    if "errors" in group and group["errors"].shape == signal.shape:
        errors = np.array(group["errors"][()], dtype=np.float32)
        result.errors = np.where(np.isnan(signal), np.float32(np.nan), errors)
    return result


def _mantid_dimension(dataset: h5py.Dataset) -> tuple[str, str]:
    """Name and units of a Mantid dimension; energy transfer becomes ("energy", "meV")."""
    name = _text(dataset.attrs.get("long_name", dataset.name.rsplit("/", 1)[-1]))
    units = _text(dataset.attrs.get("units", ""))
    if "deltae" in (name.lower(), units.lower()):
        return "energy", "meV"
    return name, units


def _mantid_array(data: h5py.Group, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A per-bin array of a Mantid file in dimension order (D0, D1, ...)."""
    array = data[name][()]
    if array.shape != shape:
        raise ValueError(f"{where}: {name} has shape {array.shape}, the signal {shape}")
    return array.T  # stored slowest-first (D(m-1), ..., D0): reverse to D0, ..., D(m-1)


def _read_mantid(f: h5py.File, path: Path) -> SpectraFile:
    """A Mantid MDHistoWorkspace (SaveMD): see the module docstring for layout and choices."""
    where = str(path)
    if "data/signal" not in f[MANTID_HISTO]:
        raise ValueError(f"{where}: Mantid MDHistoWorkspace file without data/signal")
    data = f[MANTID_HISTO]["data"]
    stored = data["signal"]
    ids = _names(stored.attrs["axes"]) if "axes" in stored.attrs else []
    if len(ids) != stored.ndim or any(i not in data for i in ids):
        raise ValueError(
            f"{where}: the Mantid signal's axes attribute does not name its {stored.ndim} "
            "dimension datasets"
        )
    shape = stored.shape
    _require_numeric(stored, where)
    signal = _mantid_array(data, "signal", shape, where).astype(np.float32)
    dims = ids[::-1]  # dimension order D0, D1, ...: the array axes after reversal
    masked = np.isnan(signal)
    if "mask" in data:
        masked |= _mantid_array(data, "mask", shape, where) != 0
    if "num_events" in data:
        masked |= _mantid_array(data, "num_events", shape, where) == 0
    signal[masked] = np.nan
    errors = None
    if "errors_squared" in data:
        variance = _mantid_array(data, "errors_squared", shape, where)
        errors = np.sqrt(np.clip(variance, 0, None)).astype(np.float32)
        errors[masked] = np.nan
    axes: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    integrated: dict[str, tuple[float, float]] = {}
    for dim, n in zip(dims, signal.shape, strict=True):
        name, unit = _mantid_dimension(data[dim])
        if name in axes or name in integrated:
            name = f"{name} ({dim})"
        bounds = np.asarray(data[dim][()], dtype=np.float64).reshape(-1)
        if len(bounds) != n + 1:
            raise ValueError(
                f"{where}: dimension {dim} has {len(bounds)} bin boundaries for {n} bins"
            )
        units[name] = unit
        if n == 1:
            integrated[name] = (float(bounds[0]), float(bounds[1]))
        else:
            axes[name] = (bounds[1:] + bounds[:-1]) / 2
    if not axes:
        raise ValueError(f"{where}: every dimension of the Mantid workspace has a single bin")
    spectrum = tuple(n for n in signal.shape if n > 1)
    return SpectraFile(
        signal=_checked(signal.reshape(spectrum), where),
        axes=axes,
        units=units,
        errors=None if errors is None else errors.reshape(spectrum),
        source="mantid-mdhisto",
        stacked=False,
        integrated=integrated or None,
    )


def _read_hdf5(path: Path, with_axes: bool) -> SpectraFile:
    try:
        with h5py.File(path, "r") as f:
            if MANTID_HISTO in f:
                return _read_mantid(f, path)
            if MANTID_EVENTS in f:
                raise ValueError(
                    f"{path}: a Mantid MDEventWorkspace (events, not bins): bin it with BinMD "
                    "and save the MDHistoWorkspace with SaveMD"
                )
            return _read_nxdata(f, path, with_axes)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({_one_line(exc)})") from None
    except KeyError as exc:
        raise ValueError(f"{path}: incomplete file (missing {_one_line(exc)})") from None


def _read(path: str | Path, with_axes: bool) -> SpectraFile:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise ValueError(f"{path}: folder holds no .npy files")
        arrays = [_read_npy(p) for p in files]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"{path}: the .npy files differ in shape: {sorted(shapes)}")
        return SpectraFile(np.stack(arrays), source="npy-folder", stacked=True)
    if path.suffix == ".npy":
        return SpectraFile(_read_npy(path), source="npy")
    if path.suffix in HDF5_SUFFIXES:
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: the file is empty")
        return _read_hdf5(path, with_axes)
    raise ValueError(f"{path}: unknown file type (expected .npy, .h5/.nxs or a folder)")


def read_spectra_file(path: str | Path) -> SpectraFile:
    """Spectra with their axes, units and errors: a .npy file (no axes); a folder of .npy
    files stacked to (n, *S); an HDF5 file's NXdata signal with its mask as NaN and the axes
    its `axes` attribute names (exp2sim datasets: (n, *S), bin centres in meV / r.l.u.,
    mosaics without axes); or a Mantid MDHistoWorkspace file (see the module docstring)."""
    return _read(path, with_axes=True)


def read_spectra(path: str | Path) -> np.ndarray:
    """Spectra in a file or folder as an array: a .npy file as stored; an HDF5 file's NXdata
    signal (an exp2sim dataset gives (n, *S)), with its mask applied as NaN; a Mantid
    MDHistoWorkspace file's signal S (masked and empty bins NaN); a folder of .npy files
    (sorted by name, all the same shape) stacked to (n, *S)."""
    return _read(path, with_axes=False).signal


def _spectrum_shape(file: SpectraFile, ndim: int) -> tuple[int, ...]:
    """The shape S of the file's spectra, reading an ambiguous array as (n, *S) or S."""
    shape = file.signal.shape
    if file.stacked is True or (file.stacked is None and len(shape) == ndim + 1):
        return shape[1:]
    return shape


def _bin_width(centres: np.ndarray) -> float:
    if len(centres) > 1:
        return float(np.median(np.abs(np.diff(centres))))
    return 1e-6 * max(1.0, float(np.abs(centres).max()))


def _check_axis(name: str, got: np.ndarray, want: np.ndarray, what: str, any_size: bool) -> None:
    """One axis against the model's: bin centres within a tenth of a bin, or, for a model
    of any size, the same bin width within a tenth of a bin."""
    width = _bin_width(want)
    if not any_size:
        if len(got) != len(want):
            raise ValueError(f"{what}: axis {name!r} has {len(got)} bins, the model's {len(want)}")
        worst = float(np.max(np.abs(got - want)))
        if worst > AXIS_TOLERANCE * width:
            raise ValueError(
                f"{what}: axis {name!r} bin centres [{got[0]:.6g} .. {got[-1]:.6g}] differ from "
                f"the model's [{want[0]:.6g} .. {want[-1]:.6g}] by up to {worst:.3g} "
                f"(more than a tenth of a bin, {width:.3g})"
            )
        return
    got_width = _bin_width(got)
    if abs(got_width - width) > AXIS_TOLERANCE * width:
        raise ValueError(
            f"{what}: axis {name!r} bin width {got_width:.6g} differs from the model's "
            f"{width:.6g} by more than a tenth of a bin"
        )


def check_compatible(
    file: SpectraFile,
    shape: tuple[int, ...] | None,
    axes: dict[str, np.ndarray] | None,
    what: str,
    *,
    ndim: int | None = None,
) -> None:
    """Raise a one-line ValueError (naming `what` and both sides) unless the file's spectra
    fit a model trained on spectra of `shape` with `axes` (name -> bin centres).

    shape: the training spectrum shape S; None for a model that takes any size (the GAN),
        when only the dimensionality counts: len(axes), else `ndim`.
    axes: checked when both the model and the file have them: the same names in the same
        order; bin centres within a tenth of a bin, or, with shape None, the same bin width
        within a tenth of a bin (the extent may differ; the GAN's kernels are in bins).
        Files without axes (.npy) and models without axes (pixel-index mosaics) are checked
        on shape only.
    """
    want_ndim = len(shape) if shape is not None else len(axes) if axes else ndim
    if want_ndim is None:
        return
    if ndim is not None and ndim != want_ndim:
        raise ValueError(f"{what}: ndim={ndim} contradicts the model's {want_ndim}D shape/axes")
    got = _spectrum_shape(file, want_ndim)
    model = f"the model's {shape}" if shape is not None else f"the model's {want_ndim}D spectra"
    if len(got) != want_ndim:
        raise ValueError(
            f"{what}: {len(got)}D spectra of shape {got} do not match {model} "
            f"(the model takes {want_ndim}D spectra)"
        )
    if shape is not None and tuple(got) != tuple(shape):
        raise ValueError(f"{what}: spectrum shape {tuple(got)} does not match {model}")
    if not axes or not file.axes:
        return
    if list(file.axes) != list(axes):
        raise ValueError(f"{what}: axes {list(file.axes)} do not match the model's {list(axes)}")
    for name, want in axes.items():
        want = np.asarray(want, dtype=np.float64).reshape(-1)
        got = np.asarray(file.axes[name], dtype=np.float64)
        _check_axis(name, got, want, what, any_size=shape is None)
