"""Intensity normalisation for spectra, invertible and robust to hot pixels.

    z = asinh(x / s) / asinh(q / s),     x = s * sinh(z * asinh(q / s))

q is a high percentile (default 99th) of |x| over the unmasked, non-zero pixels of a domain's
training spectra and s = q / compression. So 0 stays 0 (the background sits in tanh's
linear range), intensities up to ~s are scaled linearly, larger ones logarithmically, and
the q-th percentile maps to 1. A few hot pixels cannot move a percentile, and because the
map is not clipped they stay finite (just above 1) and invert exactly; the generator's tanh
caps its own output at the image of its range. Negative intensities (background-subtracted
data) map symmetrically. Masked pixels (NaN) stay NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class IntensityScale:
    """The fitted normalisation of one domain: q (intensity units) and compression."""

    q: float
    compression: float = 10.0

    @property
    def s(self) -> float:
        return self.q / self.compression

    @classmethod
    def fit(
        cls, spectra: np.ndarray, percentile: float = 99.0, compression: float = 10.0
    ) -> IntensityScale:
        """Fit q from spectra of any shape (NaN = masked)."""
        values = np.abs(spectra[np.isfinite(spectra)])
        values = values[values > 0]
        if values.size == 0:
            raise ValueError("cannot normalise spectra that are all zero or masked")
        return cls(q=float(np.percentile(values, percentile)), compression=compression)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Intensities -> normalised values (float32)."""
        x = np.asarray(x, dtype=np.float64)
        return (np.arcsinh(x / self.s) / np.arcsinh(self.compression)).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Normalised values -> intensities (float32)."""
        z = np.asarray(z, dtype=np.float64)
        return (self.s * np.sinh(z * np.arcsinh(self.compression))).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)
