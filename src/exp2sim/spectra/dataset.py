"""Dataset files: spectra, masks, parameters, labels, axes and provenance in one HDF5 file
following NeXus conventions.

Layout (n spectra of shape S):

    /entry                      NXentry   (default = "data")
      /data                     NXdata    (signal = "signal")
        signal      (n, *S) float32, NaN where masked
        mask        S bool, True where the instrument has no data
        parameters  (n, P) float64, attribute `names`
        label       (n,) int32, index into the entry's `models` attribute
        bin_h, bin_k, bin_energy_lo, bin_energy_hi, bin_incident_energy
                    S float64: every pixel's bin (r.l.u., meV)
        axis datasets for volumes and cuts (h, k, energy bin centres)
      /sample                   NXsample  model name, parameter names and ranges
      /instrument               NXinstrument  name, settings (Ei meV, chopper Hz)
      /process                  NXprocess program, version, date, configuration (JSON),
                                           seed, number of rejected (unstable) draws

Files are written to a temporary name and renamed, so a file under its final name is
always complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from exp2sim import __version__
from exp2sim.fileio import atomic_path
from exp2sim.spectra.layout import Bins


@dataclass
class Dataset:
    """A dataset in memory: signal (n, *S), mask S, parameters (n, P), labels (n,)."""

    signal: np.ndarray
    mask: np.ndarray
    parameters: np.ndarray
    labels: np.ndarray
    parameter_names: tuple[str, ...]
    models: tuple[str, ...]
    kind: str
    resolution: str
    config: dict
    n_rejected: int = 0

    @property
    def n(self) -> int:
        return len(self.signal)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.signal.shape[1:])


def write_dataset(
    path: str | Path,
    signal: np.ndarray,
    bins: Bins,
    mask: np.ndarray,
    parameters: np.ndarray,
    config: dict,
    model_info: dict,
    n_rejected: int,
    axes: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a complete dataset atomically. `config` is the generating job's configuration;
    model_info holds name, parameter_names and ranges; axes maps axis names to 1D bin
    centres in the order of the spectrum's dimensions (None: pixel index axes)."""
    signal = np.asarray(signal, dtype=np.float32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry.attrs["models"] = json.dumps([model_info["name"]])
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "signal"
        ds = data.create_dataset(
            "signal",
            data=signal,
            chunks=(1, *signal.shape[1:]),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
        ds.attrs["units"] = "S_perp per meV per magnetic cell (arbitrary scale)"
        ds.attrs["long_name"] = "intensity"
        data.create_dataset("mask", data=np.asarray(mask, dtype=bool))
        p = data.create_dataset("parameters", data=np.asarray(parameters, dtype=float))
        p.attrs["names"] = json.dumps(list(model_info["parameter_names"]))
        p.attrs["units"] = "meV"
        data.create_dataset("label", data=np.zeros(len(signal), dtype=np.int32))
        for name, values in (
            ("h", bins.h),
            ("k", bins.k),
            ("energy_lo", bins.e_lo),
            ("energy_hi", bins.e_hi),
            ("incident_energy", bins.ei),
        ):
            data.create_dataset(f"bin_{name}", data=values)
        names = ["."]
        if axes:
            for i, (name, values) in enumerate(axes.items()):
                a = data.create_dataset(name, data=np.asarray(values, dtype=float))
                a.attrs["units"] = "meV" if name == "energy" else "r.l.u."
                data.attrs[f"{name}_indices"] = i + 1
                names.append(name)
        else:
            names += ["."] * (signal.ndim - 1)
        data.attrs["axes"] = names
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample.attrs["model"] = model_info["name"]
        sample.attrs["parameter_names"] = json.dumps(list(model_info["parameter_names"]))
        sample.attrs["parameter_ranges"] = json.dumps(model_info.get("ranges"))
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        inst.attrs["name"] = config.get("instrument", "MAPS")
        inst.create_dataset(
            "settings", data=np.array([[s.ei, s.frequency] for s in bins.settings])
        ).attrs["columns"] = "incident energy (meV), Fermi chopper frequency (Hz)"
        proc = entry.create_group("process")
        proc.attrs["NX_class"] = "NXprocess"
        proc.attrs["program"] = "exp2sim"
        proc.attrs["version"] = __version__
        proc.attrs["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        proc.attrs["configuration"] = json.dumps(config, sort_keys=True)
        proc.attrs["seed"] = int(config.get("seed", 0))
        proc.attrs["n_rejected"] = int(n_rejected)


def read_dataset(path: str | Path) -> Dataset:
    """Read an exp2sim dataset; one-line ValueError for missing, empty or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    try:
        with h5py.File(path, "r") as f:
            if "entry/data/signal" not in f:
                raise ValueError(f"{path}: not an exp2sim dataset (no entry/data/signal)")
            data = f["entry/data"]
            config = json.loads(f["entry/process"].attrs["configuration"])
            return Dataset(
                signal=data["signal"][()],
                mask=data["mask"][()],
                parameters=data["parameters"][()],
                labels=data["label"][()],
                parameter_names=tuple(json.loads(data["parameters"].attrs["names"])),
                models=tuple(json.loads(f["entry"].attrs["models"])),
                kind=str(config.get("kind")),
                resolution=str(config.get("resolution")),
                config=config,
                n_rejected=int(f["entry/process"].attrs.get("n_rejected", 0)),
            )
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    except KeyError as exc:
        raise ValueError(f"{path}: incomplete exp2sim dataset (missing {exc})") from None
