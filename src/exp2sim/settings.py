"""Configuration dataclasses from plain dictionaries (JSON, TOML), with a clear error for
misspelt names instead of a TypeError."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], what: str) -> T:
    """`cls(**values)` for a dataclass, refusing unknown names in one line naming `what`."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**values)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dictionary; one-line ValueError if missing, unreadable or invalid."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError:
        raise ValueError(f"{path}: cannot read the configuration file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
