"""Deconvolution with the resolution the GAN learned: Richardson-Lucy with Sim2Exp's kernels.

A kernel generator (networks.py) translates by blurring its input with per-pixel kernels it
predicts. For a given spectrum those kernels make Sim2Exp a *linear* forward model, a
resolution function learned from unpaired data, which Richardson-Lucy can invert:

    blur = LearnedBlur.from_run("run/")
    start = Translator.from_run("run/", "exp2sim")(measured)   # the GAN's deconvolution
    refined = blur.deconvolve(measured, start, iterations=5)

The kernels are those Sim2Exp predicts for `start` (they barely depend on it: with the
convolved input, the GAN's deconvolution or Richardson-Lucy's as the estimate, the
refined spectra of the demo's 80 test spectra agreed to 0.01 dB). Then, from u = start,

    u <- u H^T(m y / H u) / H^T(m),

Richardson-Lucy's multiplicative update for the measured pixels (m = 1, else 0) with the
learned blur H. On the demo's test spectra (demo40, 80 paired spectra; GAN seeds 0 / 1 / 2)
five iterations from the GAN's deconvolution gave PSNR 31.35 / 31.32 / 31.34 dB against the
true spectra, where the GAN alone gave 30.81 / 31.03 / 30.90 and Richardson-Lucy with the
instrument's Gaussian widths 31.17; the classifier's certainty fell back from the GAN's
(certainty gap closed 14 / 11 / 12 % against 34 / 37 / 31 %; Richardson-Lucy's -7 %).
docs/measurements.md has the trials.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from exp2sim.gan.networks import ResnetGenerator, local_blur
from exp2sim.gan.translate import Translator


def unsupported(generator: ResnetGenerator) -> str | None:
    """Why `generator` cannot serve as a learned blur, or None if it can."""
    if not generator.kernel:
        return (
            "refining needs a run whose generators predict kernels (kernel > 0); "
            "this run's draw their output"
        )
    if generator.shifts or generator.sharpen:
        return (
            "refining needs a run's Sim2Exp generator (a blur, not Exp2Sim's unsharp "
            "mask) without kernel shifts"
        )
    return None


class LearnedBlur:
    """The Sim2Exp generator of a run as a linear blur, and Richardson-Lucy with it.

    Needs a kernel generator (`kernel` > 0) without kernel shifts; spectra are taken whole
    (a folded mosaic: its volumes in one stack), up to the translator's `max_voxels`.
    """

    def __init__(self, sim2exp: Translator) -> None:
        reason = unsupported(sim2exp.generator)
        if reason:
            raise ValueError(reason)
        self.translator = sim2exp

    @classmethod
    def from_run(
        cls, run: str | Path, checkpoint: str = "best", device: str = "auto", **kwargs: object
    ) -> LearnedBlur:
        """The learned blur of a run directory's Sim2Exp generator (`kwargs`: those of
        `Translator.from_run`, such as `max_voxels` and `match_intensity`)."""
        return cls(Translator.from_run(run, "sim2exp", checkpoint, device, **kwargs))

    def _volumes(self, spectrum: np.ndarray) -> np.ndarray:
        """(*S) -> the generator's inputs (V, *S_v): the folded volumes or the spectrum."""
        t = self.translator
        v = spectrum[None] if t.fold is None else t.fold.fold(spectrum[None])
        if v[0].size > t.max_voxels:
            raise ValueError(
                f"spectra of shape {spectrum.shape} are too large to refine in one pass "
                f"(max_voxels {t.max_voxels})"
            )
        return v

    def _unvolume(self, volumes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """`_volumes`' inverse: (V, *S_v) -> (*S)."""
        t = self.translator
        return volumes[0] if t.fold is None else t.fold.unfold(volumes, shape)[0]

    @torch.no_grad()
    def weights(self, spectrum: np.ndarray) -> torch.Tensor:
        """Sim2Exp's kernels for one spectrum (*S, NaN where masked), normalised and folded
        as the translator would: (V, k^dim, *S_v) float64 on the translator's device,
        summing to 1 over the taps."""
        t = self.translator
        z = self._volumes(t.normalise(spectrum)[0])
        x = torch.from_numpy(np.nan_to_num(z, nan=0.0)).to(t.device)[:, None]
        step = max(1, t.max_voxels // math.prod(z.shape[1:]))
        parts = [t.generator.kernel_weights(x[i : i + step]) for i in range(0, len(x), step)]
        return torch.cat(parts).double()

    def blur(self, spectrum: np.ndarray, weights: torch.Tensor) -> np.ndarray:
        """The learned blur of one spectrum (*S, intensities, NaN = masked = 0) with given
        `weights`: (*S), NaN where the input is. With `weights(spectrum)` this is Sim2Exp's
        translation of the spectrum, to float round-off."""
        u = self._tensor(spectrum).nan_to_num()  # masked = 0
        out = self._apply(u, weights).cpu().numpy()
        return np.where(np.isnan(spectrum), np.nan, self._unvolume(out, spectrum.shape))

    def deconvolve(
        self, measured: np.ndarray, start: np.ndarray, iterations: int = 5
    ) -> np.ndarray:
        """Richardson-Lucy with the kernels Sim2Exp predicts for `start`, from `start`.

        measured, start: one spectrum (*S) or a stack (n, *S) of the run's spectrum shape,
        same units, NaN where masked (start is only read where `measured` is finite). Data
        with negative values (background-subtracted) are shifted by their minimum, which a
        blur whose weights sum to 1 leaves in place, and shifted back. Returns an array of
        `measured`'s shape, NaN where it is."""
        if int(iterations) < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        measured = np.asarray(measured, dtype=np.float64)
        start = np.asarray(start, dtype=np.float64)
        if measured.shape != start.shape:
            raise ValueError(f"measured {measured.shape} and start {start.shape} differ in shape")
        dim = self.translator.dim
        if measured.ndim == dim:
            return self.deconvolve(measured[None], start[None], iterations)[0]
        if measured.ndim != dim + 1:
            raise ValueError(f"the model refines {dim}D spectra; got shape {measured.shape}")
        if np.isinf(measured).any() or np.isinf(start).any():
            raise ValueError("input contains infinite values (use NaN for masked pixels)")
        out = np.full_like(measured, np.nan)
        for i, (y, s) in enumerate(zip(measured, start, strict=True)):
            if np.isfinite(y).any():
                out[i] = self._deconvolve_one(
                    y, np.where(np.isnan(s), np.nanmean(y), s), iterations
                )
        return out

    def _deconvolve_one(self, y: np.ndarray, start: np.ndarray, iterations: int) -> np.ndarray:
        measured = np.isfinite(y)
        w = self.weights(np.where(measured, start, np.nan))
        offset = min(0.0, float(y[measured].min()), float(start[measured].min()))
        data = self._tensor(y - offset)
        m = torch.isfinite(data).double()
        data = torch.nan_to_num(data)
        tiny = 1e-12 * max(float(data.max()), 1e-300)
        # start - offset >= 0 where measured; the fold's pads (NaN) and masked voxels are 0
        u = self._tensor(start - offset).nan_to_num().clamp_min(tiny) * m
        norm = self._transpose(m, w).clamp_min(tiny)
        for _ in range(int(iterations)):
            ratio = m * data / self._apply(u, w).clamp_min(tiny)
            u = u * self._transpose(ratio, w) / norm * m
        out = self._unvolume(u.cpu().numpy(), y.shape) + offset
        return np.where(np.isfinite(y), out, np.nan)

    def _tensor(self, spectrum: np.ndarray) -> torch.Tensor:
        """(*S) -> its volumes (V, *S_v) float64 on the device, NaN kept."""
        v = self._volumes(np.asarray(spectrum, dtype=np.float64))
        return torch.from_numpy(np.ascontiguousarray(v)).to(self.translator.device)

    def _apply(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """H u for volumes u (V, *S_v) without NaN (masked = 0)."""
        return local_blur(u[:, None], w, self.translator.generator.kernel)[:, 0]

    def _transpose(self, r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """H^T r: the gradient of <H u, r> with respect to u (H is linear)."""
        with torch.enable_grad():
            u = torch.zeros_like(r, requires_grad=True)
            (g,) = torch.autograd.grad((self._apply(u, w) * r).sum(), u)
        return g
