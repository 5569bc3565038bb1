"""Exp2SimGAN: unpaired translation between simulated and experiment-like spectra."""

from exp2sim.gan.config import PRESETS, TrainConfig, load_preset

__all__ = ["PRESETS", "TrainConfig", "load_preset"]
