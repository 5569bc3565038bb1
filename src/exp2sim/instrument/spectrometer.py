"""Direct-geometry time-of-flight chopper spectrometers, with a MAPS (ISIS) preset.

Geometry as published with PyChop: moderator -> Fermi chopper 10.143 m, chopper -> sample
1.899 m, sample -> detector 6.0 m; "S" slit package: 2.899 mm slits, 1.3 m curvature, rotor
radius 49 mm; 50-600 Hz.

Laboratory frame used throughout exp2sim.instrument: z along the incident beam, x
horizontal, y vertical (up). For a single crystal mounted with c along the beam, a* lies
along x and b* in the xy plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# E = HBAR2_2M * k^2: neutron energy (meV) from wave number (inverse Angstrom)
E_FROM_K2 = 2.0721247
# v = V_FROM_SQRT_E * sqrt(E): neutron speed (m/s) from energy (meV)
V_FROM_SQRT_E = 437.3933


def wavenumber(energy: np.ndarray) -> np.ndarray:
    """Neutron wave number (inverse Angstrom) for energy (meV)."""
    return np.sqrt(np.asarray(energy, dtype=float) / E_FROM_K2)


def speed(energy: np.ndarray) -> np.ndarray:
    """Neutron speed (m/s) for energy (meV)."""
    return V_FROM_SQRT_E * np.sqrt(np.asarray(energy, dtype=float))


@dataclass(frozen=True)
class FermiChopper:
    """A Fermi chopper slit package: slit width, rotor radius, slit curvature (metres)."""

    name: str
    slit_width: float
    radius: float
    curvature: float


@dataclass(frozen=True)
class Setting:
    """One instrument setting: incident energy (meV) and Fermi chopper frequency (Hz)."""

    ei: float
    frequency: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.ei) and self.ei > 0):
            raise ValueError(f"incident energy must be positive, got {self.ei}")
        if not (np.isfinite(self.frequency) and self.frequency > 0):
            raise ValueError(f"chopper frequency must be positive, got {self.frequency}")


@dataclass(frozen=True)
class Spectrometer:
    """Flight paths (m) and Fermi chopper of a direct-geometry spectrometer."""

    name: str
    moderator_chopper: float
    chopper_sample: float
    sample_detector: float
    chopper: FermiChopper
    frequency_range: tuple[float, float]

    def check(self, setting: Setting) -> None:
        """Raise ValueError if the chopper frequency is outside the instrument's range."""
        lo, hi = self.frequency_range
        if not lo <= setting.frequency <= hi:
            raise ValueError(
                f"{self.name} chopper runs at {lo:g}-{hi:g} Hz, got {setting.frequency:g} Hz"
            )


MAPS = Spectrometer(
    name="MAPS",
    moderator_chopper=10.143,
    chopper_sample=1.899,
    sample_detector=6.0,
    chopper=FermiChopper("S", slit_width=2.899e-3, radius=49e-3, curvature=1.3),
    frequency_range=(50.0, 600.0),
)

# The PCSMO experiment (DESIGN.md section 2): top to bottom of the 240 x 400 mosaic.
PCSMO_SETTINGS = (
    Setting(25.0, 300.0),
    Setting(35.0, 200.0),
    Setting(50.0, 200.0),
    Setting(70.0, 250.0),
    Setting(100.0, 300.0),
    Setting(140.0, 400.0),
)
