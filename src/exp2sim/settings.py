"""Configuration dataclasses from plain dictionaries (JSON, TOML), with a clear error for
misspelt names instead of a TypeError."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], what: str) -> T:
    """`cls(**values)` for a dataclass, refusing unknown names in one line naming `what`."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**values)
