"""Shared test helpers: where the read-only reference data live."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    """../shared/data/reference (never copied into the repository)."""
    assert REFERENCE.is_dir(), f"reference data missing at {REFERENCE}"
    return REFERENCE


# The smallest GAN that trains in every dimension: for tests of commands and files.
TINY_GAN = {
    "ngf": 4,
    "n_blocks": 2,
    "ndf": 4,
    "d_layers": 2,
    "nce_patches": 16,
    "nce_units": 8,
    "crop": 16,
    "nce_layers": ("down1", "down2", "block1", "block2"),
}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run faster on one torch thread when the two cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
