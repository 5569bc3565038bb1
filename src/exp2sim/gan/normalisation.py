"""Intensity normalisation for spectra, invertible and robust to hot pixels.

    z = asinh(x / s) / asinh(q / s),     x = s * sinh(z * asinh(q / s))

q is a domain's intensity level, fitted on its training spectra in one of two ways:

- "percentile": a high percentile (default 99th) of |x| over the unmasked, non-zero pixels;
- "mean": 20 times the mean of |x| over the unmasked pixels, with values above their 99.9th
  percentile clipped to it. Resolution moves intensity but conserves it, so a convolved
  and an unconvolved set of the same spectra get the same q and the identity in normalised
  units is the identity in intensity. Their 99th percentiles differ (sharp peaks are
  brighter: 3.46 against 1.93 for the demo's unconvolved and convolved GAN domains, whose
  mean-based q are 3.57 and 3.62), which a generator would have to learn to undo.

s = q / compression. So 0 stays 0 (the background sits in tanh's linear range),
intensities up to ~s are scaled linearly, larger ones logarithmically, and q maps to 1. A
few hot pixels cannot move either statistic, and because the map is not clipped they stay
finite (just above 1) and invert exactly; the generator's tanh caps its own output at the
image of its range. Negative intensities (background-subtracted data) map symmetrically.
Masked pixels (NaN) stay NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MEAN_MULTIPLE = 20.0  # q in units of the mean intensity, for statistic="mean"


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
        cls,
        spectra: np.ndarray,
        percentile: float = 99.0,
        compression: float = 10.0,
        statistic: str = "percentile",
    ) -> IntensityScale:
        """Fit q from spectra of any shape (NaN = masked) by `statistic` ("percentile" or
        "mean", see the module's docstring)."""
        values = np.abs(spectra[np.isfinite(spectra)])
        if not (values > 0).any():
            raise ValueError("cannot normalise spectra that are all zero or masked")
        if statistic == "percentile":
            q = np.percentile(values[values > 0], percentile)
        elif statistic == "mean":
            q = MEAN_MULTIPLE * np.minimum(values, np.percentile(values, 99.9)).mean()
        else:
            raise ValueError(f"unknown intensity statistic {statistic!r}: percentile or mean")
        return cls(q=float(q), compression=compression)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Intensities -> normalised values (float32)."""
        x = np.asarray(x, dtype=np.float64)
        return (np.arcsinh(x / self.s) / np.arcsinh(self.compression)).astype(np.float32)

    @property
    def gain(self) -> float:
        """asinh(compression): intensities are s * sinh(gain * z)."""
        return float(np.arcsinh(self.compression))

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Normalised values -> intensities (float32)."""
        z = np.asarray(z, dtype=np.float64)
        return (self.s * np.sinh(z * self.gain)).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LevelMatch:
    """Bring spectra in any units to a domain's intensity level: each spectrum is multiplied
    by q / (its own q, by the statistic the domain's scale was fitted with), q being the
    median of the training spectra's own q (`Domain.level`; one spectrum's 99th percentile
    is higher than a whole set's, so the set's q would make inputs brighter than typical).

    A generator does not know an input's absolute scale (instance norm removes it), so
    matching lets spectra in counts, per monitor or per vanadium be translated and judged
    like the training spectra, and makes the result scale with the input."""

    q: float
    statistic: str = "percentile"
    percentile: float = 99.0

    def levels(self, spectra: np.ndarray) -> np.ndarray:
        """Each spectrum's own q (n,) for spectra (n, *S) (NaN = masked); NaN for a
        spectrum without a non-zero value."""
        out = np.full(len(spectra), np.nan)
        for i, s in enumerate(spectra):
            if np.any(np.nan_to_num(s) != 0):
                out[i] = IntensityScale.fit(s, self.percentile, statistic=self.statistic).q
        return out

    def factors(self, spectra: np.ndarray) -> np.ndarray:
        """Factors q / (own q) (n,) for spectra (n, *S); 1 for a spectrum without a
        non-zero value, and for one so faint that the factor would exceed float32's range
        (seen: an Rb2MnF4 mosaic almost empty in MAPS's window, whose 99.9th percentile
        and so its clipped mean were subnormal numbers, 8e-39)."""
        with np.errstate(divide="ignore", over="ignore"):
            factors = self.q / self.levels(spectra)
        usable = np.isfinite(factors) & (factors < np.finfo(np.float32).max)
        return np.where(usable, factors, 1.0)

    def to_dict(self) -> dict:
        return asdict(self)
