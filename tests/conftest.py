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
