"""Reading spectra from files: NumPy .npy arrays, folders of them, and HDF5 files with a
NeXus NXdata group (exp2sim datasets included).

Every reader returns float32 arrays with NaN where a pixel has no data and raises
ValueError with a one-line message for anything it cannot use (missing, empty, corrupt,
non-numeric, infinite values).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs", ".nx5")


def _checked(array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype.kind not in "fiu" or array.dtype.kind == "b":
        raise ValueError(f"{source}: expected a numeric array, got dtype {array.dtype}")
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
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected one array, found an archive of several")
    return _checked(array, str(path))


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


def read_spectra(path: str | Path) -> np.ndarray:
    """Spectra in a file or folder as an array: a .npy file as stored; an HDF5 file's NXdata
    signal (an exp2sim dataset gives (n, *S)), with its mask applied as NaN; a folder of
    .npy files (sorted by name, all the same shape) stacked to (n, *S)."""
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
        return np.stack(arrays)
    if path.suffix == ".npy":
        return _read_npy(path)
    if path.suffix in HDF5_SUFFIXES:
        try:
            with h5py.File(path, "r") as f:
                signal, mask = nxdata_signal(f, path)
        except OSError as exc:
            raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
        signal = np.array(signal, dtype=np.float32)
        if mask is not None:
            signal[np.broadcast_to(mask, signal.shape)] = np.nan
        return _checked(signal, str(path))
    raise ValueError(f"{path}: unknown file type (expected .npy, .h5/.nxs or a folder)")
