"""User-defined spin-wave models described in TOML files (format: docs/model-files.md).

    model = load_model_file("examples/models/afm_chain.toml")

Every problem with a file raises ModelFileError, a ValueError whose message is one line that
names the file and the place in it, e.g. ``model.toml: sites[2].spin must be a positive
number``. Entries of arrays of tables ([[sites]], [[couplings]], ...) are counted from 1, as
are the site indices a file uses.
"""

from __future__ import annotations

import difflib
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from exp2sim.spinwave.bonds import find_bonds
from exp2sim.spinwave.formfactor import j0_coefficients
from exp2sim.spinwave.lattice import Lattice
from exp2sim.spinwave.models.base import SpinModel
from exp2sim.spinwave.system import Anisotropy, Coupling, Site, SpinSystem, Twin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TOP_KEYS = (
    "name",
    "description",
    "lattice",
    "parameters",
    "sites",
    "couplings",
    "anisotropies",
    "field",
    "twins",
)
LATTICE_KEYS = ("a", "b", "c", "alpha", "beta", "gamma", "supercell")
PARAMETER_KEYS = ("name", "value", "range")
SITE_KEYS = ("name", "position", "spin", "direction", "ion", "g")
COUPLING_KEYS = ("sites", "offset", "shell", "between", "J", "matrix", "dm", "dm_scale")
ANISOTROPY_KEYS = ("sites", "matrix", "axis", "value", "scale")
TWIN_KEYS = ("rotation", "weight")


class ModelFileError(ValueError):
    """A model file cannot be read or describes an invalid model (one-line message)."""


def dm_matrix(d: np.ndarray) -> np.ndarray:
    """The exchange matrix M with S_i^T M S_j = D . (S_i x S_j) (M_ab = eps_kab D_k)."""
    dx, dy, dz = np.asarray(d, dtype=float)
    return np.array([[0.0, dz, -dy], [-dz, 0.0, dx], [dy, -dx, 0.0]])


def load_model_file(path: str | Path) -> SpinModel:
    """Read a TOML model file and build its SpinModel. Raises ModelFileError."""
    return _Reader(Path(path)).model()


# ---------------------------------------------------------------------------- helpers
def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)

    # ------------------------------------------------------------------ errors
    def fail(self, where: str, message: str) -> ModelFileError:
        """'file: where message'; a message starting with ':' reads 'file: where: message'."""
        if not where:
            text = message.lstrip(": ")
        elif message.startswith(":"):
            text = f"{where}{message}"
        else:
            text = f"{where} {message}"
        return ModelFileError(_one_line(f"{self.label}: {text}"))

    def check_keys(self, table: Any, where: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(
                    where,
                    f": unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}",
                )
        return table

    def table_list(self, data: dict, key: str, allowed: tuple[str, ...]) -> list[dict]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"must be an array of tables, written [[{key}]]")
        return [self.check_keys(v, f"{key}[{n}]", allowed) for n, v in enumerate(value, 1)]

    # ------------------------------------------------------------------ values
    def number(self, value: Any, where: str, *, positive: bool = False) -> float:
        kind = "a positive number" if positive else "a finite number"
        if not _is_number(value) or not math.isfinite(value) or (positive and value <= 0):
            raise self.fail(where, f"must be {kind}, got {value!r}")
        return float(value)

    def vector(self, value: Any, where: str, *, nonzero: bool = False) -> np.ndarray:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(_is_number(x) and math.isfinite(x) for x in value)
        ):
            raise self.fail(where, f"must be a list of 3 finite numbers, got {value!r}")
        arr = np.array(value, dtype=float)
        if nonzero and np.linalg.norm(arr) < 1e-12:
            raise self.fail(where, "must not be the zero vector")
        return arr

    def integers(self, value: Any, where: str, *, positive: bool = False) -> tuple[int, ...]:
        ok = isinstance(value, list) and len(value) == 3
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
        if not ok or (positive and min(value) < 1):
            kind = "positive integers" if positive else "integers"
            raise self.fail(where, f"must be a list of 3 {kind}, got {value!r}")
        return tuple(int(x) for x in value)

    def matrix(self, value: Any, where: str) -> np.ndarray:
        rows_ok = isinstance(value, list) and len(value) == 3
        rows_ok = rows_ok and all(isinstance(r, list) and len(r) == 3 for r in value)
        if not rows_ok or not all(_is_number(x) and math.isfinite(x) for r in value for x in r):
            raise self.fail(where, f"must be a 3x3 list of finite numbers, got {value!r}")
        return np.array(value, dtype=float)

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def factor(self, value: Any, where: str) -> tuple[float, str | None]:
        """A number (factor, None) or a parameter name (1.0, name)."""
        if isinstance(value, str):
            if value not in self.params:
                known = ", ".join(self.params) or "none defined"
                raise self.fail(where, f"names unknown parameter {value!r} (parameters: {known})")
            self.used.add(value)
            return 1.0, value
        if _is_number(value) and math.isfinite(value):
            return float(value), None
        raise self.fail(where, f"must be a number or a parameter name, got {value!r}")

    def site_index(self, ref: Any, where: str) -> int:
        """A 1-based index or a unique site name -> 0-based index."""
        n = len(self.sites)
        if isinstance(ref, int) and not isinstance(ref, bool):
            if not 1 <= ref <= n:
                raise self.fail(where, f"site index {ref} is out of range 1..{n}")
            return ref - 1
        if isinstance(ref, str):
            hits = [i for i, s in enumerate(self.sites) if s.name == ref]
            if not hits:
                raise self.fail(where, f"names unknown site {ref!r} ({self.site_names()})")
            if len(hits) > 1:
                which = ", ".join(str(i + 1) for i in hits)
                raise self.fail(
                    where, f"site name {ref!r} is ambiguous (sites {which}): use an index"
                )
            return hits[0]
        raise self.fail(where, f"must be a 1-based site index or a site name, got {ref!r}")

    def site_names(self) -> str:
        names = list(dict.fromkeys(s.name for s in self.sites))
        return "site names: " + ", ".join(names)

    # ------------------------------------------------------------------ sections
    def read(self) -> dict:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise self.fail("", f": cannot read file: {exc.strerror or exc}") from None
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise self.fail("", f": not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise self.fail("", f": invalid TOML: {exc}") from None

    def model(self) -> SpinModel:
        data = self.check_keys(self.read(), "", TOP_KEYS)
        name = self.string(data.get("name", self.path.stem), "name")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", "must be a string")
        conventional, supercell = self.read_lattice(data)
        self.read_parameters(data)
        self.read_sites(data)
        lattice = conventional.supercell(supercell)
        couplings = self.read_couplings(data, lattice)
        anisotropies = self.read_anisotropies(data)
        field = tuple(self.vector(data.get("field", [0.0, 0.0, 0.0]), "field"))
        twins = self.read_twins(data)
        for name_unused in self.params:
            if name_unused not in self.used:
                warnings.warn(
                    f"{self.label}: parameter {name_unused!r} is used by no coupling or anisotropy",
                    stacklevel=3,
                )
        try:
            system = SpinSystem(
                lattice,
                tuple(self.sites),
                tuple(couplings),
                tuple(anisotropies),
                parameters=tuple(self.params),
                field=field,
                twins=twins,
                supercell=supercell,
            )
            return SpinModel(name, system, self.values, self.ranges, description)
        except ValueError as exc:  # should not happen: everything was checked above
            raise self.fail("", f": {exc}") from None

    def read_lattice(self, data: dict) -> tuple[Lattice, tuple[int, int, int]]:
        if "lattice" not in data:
            raise self.fail("", ": missing [lattice] table (a, b, c in Angstrom)")
        lat = self.check_keys(data["lattice"], "lattice", LATTICE_KEYS)
        for key in ("a", "b", "c"):
            if key not in lat:
                raise self.fail("lattice", f"needs {key!r} (Angstrom)")
        lengths = [self.number(lat[k], f"lattice.{k}", positive=True) for k in ("a", "b", "c")]
        angles = []
        for key in ("alpha", "beta", "gamma"):
            angle = self.number(lat.get(key, 90.0), f"lattice.{key}")
            if not 0 < angle < 180:
                raise self.fail(
                    f"lattice.{key}", f"must lie between 0 and 180 degrees, got {angle}"
                )
            angles.append(angle)
        supercell = self.integers(
            lat.get("supercell", [1, 1, 1]), "lattice.supercell", positive=True
        )
        try:
            return Lattice(*lengths, *angles), supercell
        except ValueError as exc:
            raise self.fail("lattice", f": {exc}") from None

    def read_parameters(self, data: dict) -> None:
        self.params: list[str] = []
        self.used: set[str] = set()
        values, ranges = [], []
        for n, p in enumerate(self.table_list(data, "parameters", PARAMETER_KEYS), 1):
            where = f"parameters[{n}]"
            for key in ("name", "value"):
                if key not in p:
                    raise self.fail(where, f"needs {key!r}")
            name = self.string(p["name"], f"{where}.name")
            if name in self.params:
                raise self.fail(f"{where}.name", f"{name!r} is already used by another parameter")
            value = self.number(p["value"], f"{where}.value")
            rng = None
            if "range" in p:
                r = p["range"]
                if not (isinstance(r, list) and len(r) == 2) or not all(
                    _is_number(x) and math.isfinite(x) for x in r
                ):
                    raise self.fail(f"{where}.range", f"must be [low, high], got {r!r}")
                low, high = float(r[0]), float(r[1])
                if low > high:
                    raise self.fail(f"{where}.range", f"has low {low} > high {high}")
                if not low <= value <= high:
                    raise self.fail(
                        f"{where}.value",
                        f"{value} of {name!r} lies outside its range [{low}, {high}]",
                    )
                rng = (low, high)
            self.params.append(name)
            values.append(value)
            ranges.append(rng)
        self.values = tuple(values)
        # Parameters without a range are held at their value when training sets are sampled.
        if any(r is not None for r in ranges):
            self.ranges: tuple | None = tuple(
                r if r is not None else (v, v) for r, v in zip(ranges, values, strict=True)
            )
        else:
            self.ranges = None

    def read_sites(self, data: dict) -> None:
        self.sites: list[Site] = []
        entries = self.table_list(data, "sites", SITE_KEYS)
        if not entries:
            raise self.fail("", ": no magnetic sites: add at least one [[sites]] table")
        for n, s in enumerate(entries, 1):
            where = f"sites[{n}]"
            for key in ("position", "spin", "direction"):
                if key not in s:
                    raise self.fail(where, f"needs {key!r}")
            name = self.string(s.get("name", f"site{n}"), f"{where}.name")
            position = self.vector(s["position"], f"{where}.position")
            spin = self.number(s["spin"], f"{where}.spin", positive=True)
            direction = self.vector(s["direction"], f"{where}.direction", nonzero=True)
            ion = s.get("ion")
            if ion is not None:
                ion = self.string(ion, f"{where}.ion")
                try:
                    j0_coefficients(ion)
                except ValueError as exc:
                    raise self.fail(f"{where}.ion", f": {exc}") from None
            g = self.number(s.get("g", 2.0), f"{where}.g", positive=True)
            self.sites.append(Site(name, tuple(position), spin, tuple(direction), ion, g))

    def exchange_terms(self, c: dict, where: str) -> list[tuple[np.ndarray, str | None]]:
        """The (matrix, parameter) terms one coupling entry puts on each of its bonds."""
        if not any(k in c for k in ("J", "matrix", "dm")):
            raise self.fail(where, "needs 'J', 'matrix' or 'dm'")
        terms: list[tuple[np.ndarray, str | None]] = []
        if "J" in c or "matrix" in c:
            base = self.matrix(c["matrix"], f"{where}.matrix") if "matrix" in c else np.eye(3)
            scale, par = self.factor(c.get("J", 1.0), f"{where}.J")
            terms.append((scale * base, par))
        if "dm" in c:
            d = dm_matrix(self.vector(c["dm"], f"{where}.dm"))
            scale, par = self.factor(c.get("dm_scale", 1.0), f"{where}.dm_scale")
            terms.append((scale * d, par))
        elif "dm_scale" in c:
            raise self.fail(f"{where}.dm_scale", "is given without 'dm'")
        if len(terms) == 2 and terms[0][1] == terms[1][1]:
            terms = [(terms[0][0] + terms[1][0], terms[0][1])]
        return terms

    def read_couplings(self, data: dict, lattice: Lattice) -> list[Coupling]:
        entries = self.table_list(data, "couplings", COUPLING_KEYS)
        positions = np.array([s.position for s in self.sites])
        names = {s.name for s in self.sites}
        selections: list[tuple[str, list[tuple[int, int, tuple[int, int, int]]], list]] = []
        shells: dict[int, list] = {}
        for n, c in enumerate(entries, 1):
            where = f"couplings[{n}]"
            if ("sites" in c) == ("shell" in c):
                raise self.fail(where, "needs either 'sites' (one bond) or 'shell' (a shell)")
            if "sites" in c:
                if "between" in c:
                    raise self.fail(f"{where}.between", "only applies to 'shell' couplings")
                ref = c["sites"]
                if not isinstance(ref, list) or len(ref) != 2:
                    raise self.fail(f"{where}.sites", f"must list 2 sites, got {ref!r}")
                i = self.site_index(ref[0], f"{where}.sites")
                j = self.site_index(ref[1], f"{where}.sites")
                offset = self.integers(c.get("offset", [0, 0, 0]), f"{where}.offset")
                if i == j and offset == (0, 0, 0):
                    raise self.fail(
                        where, "joins a site to itself (use an anisotropy, or a non-zero offset)"
                    )
                bonds = [(i, j, offset)]
            else:
                if "offset" in c:
                    raise self.fail(f"{where}.offset", "only applies to 'sites' couplings")
                shell = c["shell"]
                if not isinstance(shell, int) or isinstance(shell, bool) or not 1 <= shell <= 100:
                    raise self.fail(
                        f"{where}.shell", f"must be an integer from 1 to 100, got {shell!r}"
                    )
                if shell not in shells:
                    found = find_bonds(lattice, positions, max_shell=shell)
                    shells[shell] = [b for b in found if b.shell == shell]
                bonds = [(b.site1, b.site2, b.offset) for b in shells[shell]]
                text = f"shell {shell}"
                if "between" in c:
                    pair = c["between"]
                    if not (isinstance(pair, list) and len(pair) == 2) or not all(
                        isinstance(x, str) for x in pair
                    ):
                        raise self.fail(f"{where}.between", f"must be 2 site names, got {pair!r}")
                    for x in pair:
                        if x not in names:
                            raise self.fail(
                                f"{where}.between",
                                f"names unknown site {x!r} ({self.site_names()})",
                            )
                    want = sorted(pair)
                    bonds = [
                        b
                        for b in bonds
                        if sorted((self.sites[b[0]].name, self.sites[b[1]].name)) == want
                    ]
                    text += f" between {pair[0]} and {pair[1]}"
                if not bonds:
                    raise self.fail(where, f": {text} matches no bond")
            selections.append((where, bonds, self.exchange_terms(c, where)))

        couplings: list[Coupling] = []
        owner: dict[tuple, str] = {}
        for where, bonds, terms in selections:
            for i, j, off in bonds:
                key = min((i, j, off), (j, i, tuple(-x for x in off)))
                if key in owner:
                    raise self.fail(
                        where,
                        f": bond {i + 1}-{j + 1} offset {list(off)} is already assigned by "
                        f"{owner[key]}; give each bond once (combine J, matrix and dm in one "
                        "entry, or narrow a shell with 'between' or explicit bonds)",
                    )
                owner[key] = where
                for mat, par in terms:
                    couplings.append(Coupling(i, j, off, mat, par))
        return couplings

    def read_anisotropies(self, data: dict) -> list[Anisotropy]:
        out: list[Anisotropy] = []
        for n, a in enumerate(self.table_list(data, "anisotropies", ANISOTROPY_KEYS), 1):
            where = f"anisotropies[{n}]"
            if ("matrix" in a) == ("axis" in a):
                raise self.fail(where, "needs either 'matrix' or 'axis' with 'value'")
            if "axis" in a:
                if "value" not in a:
                    raise self.fail(where, "'axis' needs a 'value' (meV)")
                axis = self.vector(a["axis"], f"{where}.axis", nonzero=True)
                axis = axis / np.linalg.norm(axis)
                mat = np.outer(axis, axis)
                v_scale, v_par = self.factor(a["value"], f"{where}.value")
            else:
                if "value" in a:
                    raise self.fail(f"{where}.value", "only applies with 'axis' (use 'scale')")
                mat = self.matrix(a["matrix"], f"{where}.matrix")
                v_scale, v_par = 1.0, None
            s_scale, s_par = self.factor(a.get("scale", 1.0), f"{where}.scale")
            if v_par is not None and s_par is not None:
                raise self.fail(where, "may use only one parameter (in 'value' or 'scale')")
            par = v_par or s_par
            mat = v_scale * s_scale * mat
            if "sites" in a:
                refs = a["sites"]
                if not isinstance(refs, list) or not refs:
                    raise self.fail(f"{where}.sites", f"must be a non-empty list, got {refs!r}")
                chosen: list[int] = []
                for ref in refs:
                    if isinstance(ref, str):  # a name selects every site of that name
                        hits = [i for i, s in enumerate(self.sites) if s.name == ref]
                        if not hits:
                            raise self.fail(
                                f"{where}.sites",
                                f"names unknown site {ref!r} ({self.site_names()})",
                            )
                    else:
                        hits = [self.site_index(ref, f"{where}.sites")]
                    for i in hits:
                        if i in chosen:
                            raise self.fail(f"{where}.sites", f"selects site {i + 1} twice")
                        chosen.append(i)
            else:
                chosen = list(range(len(self.sites)))
            out.extend(Anisotropy(i, mat, par) for i in chosen)
        return out

    def read_twins(self, data: dict) -> tuple[Twin, ...]:
        entries = self.table_list(data, "twins", TWIN_KEYS)
        if not entries:
            return (Twin(np.eye(3), 1.0),)
        twins = []
        for n, t in enumerate(entries, 1):
            where = f"twins[{n}]"
            if "rotation" not in t:
                raise self.fail(where, "needs 'rotation' (Cartesian 3x3)")
            rot = self.matrix(t["rotation"], f"{where}.rotation")
            if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6):
                raise self.fail(f"{where}.rotation", "must be an orthogonal matrix")
            weight = self.number(t.get("weight", 1.0), f"{where}.weight")
            if weight < 0:
                raise self.fail(f"{where}.weight", f"must not be negative, got {weight}")
            twins.append(Twin(rot, weight))
        if sum(t.weight for t in twins) <= 0:
            raise self.fail("twins", "weights must not all be zero")
        return tuple(twins)
