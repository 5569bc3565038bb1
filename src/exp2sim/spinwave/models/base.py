"""A named spin-wave model: a parameterised spin system with parameter ranges and a sampler."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from exp2sim.spinwave.system import SpinSystem


@dataclass(frozen=True)
class SpinModel:
    """A family of spin systems indexed by a parameter vector.

    system: the spin system, whose couplings are scaled by the named parameters.
    best_fit: default parameter values (same order as system.parameters), meV.
    ranges: (n_params, 2) lower and upper bounds for training sets (None: not given).
    """

    name: str
    system: SpinSystem
    best_fit: tuple[float, ...]
    ranges: tuple[tuple[float, float], ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.system.parameters)
        if len(self.best_fit) != n:
            raise ValueError(
                f"model {self.name!r}: {n} parameters but {len(self.best_fit)} defaults"
            )
        if self.ranges is not None:
            r = np.asarray(self.ranges, dtype=float)
            if r.shape != (n, 2) or np.any(r[:, 0] > r[:, 1]):
                raise ValueError(f"model {self.name!r}: ranges must be {n} (low, high) pairs")

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return self.system.parameters

    def around_best_fit(self, spread: float) -> SpinModel:
        """The same model with each range shrunk to `spread` (0 < spread <= 1) of its width,
        centred on the best fit, shifted inward where it would cross a bound of the original
        range (so every narrowed range has the same fraction of its width)."""
        if not 0 < spread <= 1:
            raise ValueError(f"spread must be in (0, 1], got {spread}")
        if spread == 1:
            return self
        if self.ranges is None:
            raise ValueError(f"model {self.name!r} defines no parameter ranges to narrow")
        r = np.asarray(self.ranges, dtype=float)
        half = spread * (r[:, 1] - r[:, 0]) / 2
        centre = np.clip(np.asarray(self.best_fit, dtype=float), r[:, 0] + half, r[:, 1] - half)
        ranges = tuple((float(c - h), float(c + h)) for c, h in zip(centre, half, strict=True))
        return dataclasses.replace(self, ranges=ranges)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """n parameter vectors drawn uniformly from the ranges, shape (n, n_params)."""
        if self.ranges is None:
            raise ValueError(f"model {self.name!r} defines no parameter ranges to sample from")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        r = np.asarray(self.ranges, dtype=float)
        return r[:, 0] + (r[:, 1] - r[:, 0]) * gen.random((n, len(r)))

    def parse_params(self, text: str | None) -> np.ndarray:
        """Comma-separated values in the model's order (None: best fit) -> (n_params,)."""
        if text is None or text.strip() == "":
            return np.asarray(self.best_fit, dtype=float)
        try:
            values = np.array([float(v) for v in text.split(",")], dtype=float)
        except ValueError:
            raise ValueError(f"--params must be comma-separated numbers, got {text!r}") from None
        names = self.parameter_names
        if len(values) != len(names):
            raise ValueError(
                f"model {self.name!r} takes {len(names)} parameters ({', '.join(names)}), "
                f"got {len(values)}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("--params contains NaN or Inf")
        return values
