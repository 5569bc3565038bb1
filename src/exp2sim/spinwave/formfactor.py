"""Magnetic form factors in the dipole approximation, F(Q) = <j0>(Q).

Coefficients come from the standard tables (International Tables C, 4.4.5) as packaged by
`periodictable`: <j0>(s) = A exp(-a s^2) + B exp(-b s^2) + C exp(-c s^2) + D, s = Q / 4 pi.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import periodictable

_ION = re.compile(r"^([A-Z][a-z]?)(\d*)([+-]?)$")


@cache
def j0_coefficients(ion: str) -> tuple[float, ...]:
    """(A, a, B, b, C, c, D) of <j0> for an ion written like "Mn3+", "Mn4", "Fe2+"."""
    m = _ION.match(ion.strip())
    if m is None:
        raise ValueError(f"cannot read ion {ion!r}: write it like 'Mn3+'")
    symbol, charge, sign = m.groups()
    try:
        element = getattr(periodictable, symbol)
    except AttributeError:
        raise ValueError(f"unknown element in ion {ion!r}") from None
    q = int(charge) if charge else 0
    if sign == "-":
        q = -q
    table = getattr(element, "magnetic_ff", None) or {}
    if q not in table:
        known = ", ".join(f"{symbol}{c}+" for c in sorted(table)) or "none"
        raise ValueError(f"no magnetic form factor for {ion!r} (known: {known})")
    return tuple(float(x) for x in table[q].j0)


def form_factor(ion: str | None, q_abs: np.ndarray) -> np.ndarray:
    """<j0>(|Q|) for `ion` at |Q| (any shape, inverse Angstrom); ones if ion is None."""
    q_abs = np.asarray(q_abs, dtype=float)
    if ion is None:
        return np.ones_like(q_abs)
    a1, b1, a2, b2, a3, b3, c = j0_coefficients(ion)
    s2 = (q_abs / (4 * np.pi)) ** 2
    return a1 * np.exp(-b1 * s2) + a2 * np.exp(-b2 * s2) + a3 * np.exp(-b3 * s2) + c
