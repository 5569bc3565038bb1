"""Built-in spin-wave models and loading a model by name or from a TOML file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from exp2sim.spinwave.models.base import SpinModel
from exp2sim.spinwave.models.pcsmo import dimer, goodenough
from exp2sim.spinwave.models.rb2mnf4 import rb2mnf4

BUILTIN: dict[str, Callable[[], SpinModel]] = {
    "goodenough": goodenough,
    "dimer": dimer,
    "rb2mnf4": rb2mnf4,
}


def load_model(name_or_path: str | Path) -> SpinModel:
    """A built-in model by name (goodenough, dimer, rb2mnf4) or a model described in TOML."""
    text = str(name_or_path)
    if text.lower() in BUILTIN:
        return BUILTIN[text.lower()]()
    path = Path(text)
    if path.suffix.lower() == ".toml" or path.exists():
        from exp2sim.spinwave.modelfile import load_model_file

        return load_model_file(path)
    choices = ", ".join(BUILTIN)
    raise ValueError(f"unknown model {text!r}: choose one of {choices} or a .toml model file")


__all__ = ["BUILTIN", "SpinModel", "load_model", "goodenough", "dimer", "rb2mnf4"]
