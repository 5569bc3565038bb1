"""TOML model files: the examples, the coupling conventions and every error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exp2sim.spinwave.lswt import SpinWaveTheory
from exp2sim.spinwave.modelfile import ModelFileError, dm_matrix, load_model_file
from exp2sim.spinwave.models import load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"

# A valid two-site model that the error tests break one piece at a time.
BASE = """\
name = "test"

[lattice]
a = 3.0
b = 8.0
c = 8.0
supercell = [2, 1, 1]

[[parameters]]
name = "J"
value = 1.0
range = [0.0, 2.0]

[[parameters]]
name = "D"
value = 0.1

[[sites]]
name = "A"
position = [0.0, 0.0, 0.0]
spin = 1.0
direction = [0.0, 1.0, 0.0]

[[sites]]
name = "B"
position = [0.5, 0.0, 0.0]
spin = 1.0
direction = [0.0, -1.0, 0.0]

[[couplings]]
shell = 1
J = "J"

[[anisotropies]]
axis = [0.0, 0.0, 1.0]
value = "D"
"""


def write(tmp_path: Path, text: str, name: str = "model.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def energies(model, q: np.ndarray, params=None) -> np.ndarray:
    p = model.best_fit if params is None else params
    res = SpinWaveTheory(model.system).calculate(q, p, twins=False, return_sab=False)
    return res.energies[0, 0]


def h_line(n: int = 41) -> np.ndarray:
    h = np.linspace(-0.5, 0.5, n)
    return np.stack([h, 0.3 * np.ones_like(h), 0.7 * np.ones_like(h)], axis=1)


# ---------------------------------------------------------------------------- examples
def test_fm_chain_closed_form():
    model = load_model_file(EXAMPLES / "fm_chain.toml")
    assert model.parameter_names == ("J",)
    q = h_line(40)  # h = -0.5 ... 0.5, avoiding h = 0 exactly (see the next test)
    for j in (-1.0, -0.4):
        e = energies(model, q, [j])
        expected = 2 * 1.0 * abs(j) * (1 - np.cos(2 * np.pi * q[:, 0]))
        np.testing.assert_allclose(e[:, 0], expected, atol=1e-6)


def test_fm_chain_goldstone_mode_at_zone_centre():
    model = load_model_file(EXAMPLES / "fm_chain.toml")
    e = energies(model, np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), [-1.0])
    np.testing.assert_allclose(e[:, 0], [0.0, 0.0], atol=1e-6)


def test_afm_chain_closed_form():
    model = load_model_file(EXAMPLES / "afm_chain.toml")
    assert model.system.supercell == (2, 1, 1)
    assert model.system.lattice.a == pytest.approx(6.0)
    q = h_line()
    e = energies(model, q, [1.3])
    expected = 2 * 1.3 * 1.0 * np.abs(np.sin(2 * np.pi * q[:, 0]))
    np.testing.assert_allclose(e, np.stack([expected, expected], 1), atol=1e-5)


def test_square_afm_closed_form():
    model = load_model_file(EXAMPLES / "square_afm.toml")
    assert model.parameter_names == ("J1", "J2", "D")
    rng = np.random.default_rng(1)
    q = rng.uniform(-1, 1, (30, 3))
    j1, j2, d, s = 1.0, 0.15, 0.07, 2.5
    e = energies(model, q, [j1, j2, d])
    kx, ky = 2 * np.pi * q[:, 0], 2 * np.pi * q[:, 1]

    def omega(kx, ky):
        a = 4 * j1 - 4 * j2 * (1 - np.cos(kx) * np.cos(ky)) + 2 * d
        b = 2 * j1 * (np.cos(kx) + np.cos(ky))
        return s * np.sqrt(a**2 - b**2)

    # the 2 x 2 cell folds the Neel zone: modes at k and k + (1/2, 0), each twice
    expected = np.sort(
        np.stack([omega(kx, ky), omega(kx, ky), omega(kx + np.pi, ky), omega(kx + np.pi, ky)], 1),
        axis=1,
    )
    np.testing.assert_allclose(e, expected, atol=1e-6)


def test_pcsmo_file_matches_builtin_goodenough():
    from_file = load_model_file(EXAMPLES / "pcsmo_goodenough.toml")
    builtin = load_model("goodenough")
    assert from_file.parameter_names == builtin.parameter_names
    np.testing.assert_allclose(from_file.best_fit, builtin.best_fit)
    np.testing.assert_allclose(from_file.ranges, builtin.ranges)
    q = np.random.default_rng(2).uniform(-1.5, 1.5, (25, 3))
    params = builtin.sample(3, rng=3)
    ra = SpinWaveTheory(from_file.system).calculate(q, params)
    rb = SpinWaveTheory(builtin.system).calculate(q, params)
    np.testing.assert_allclose(ra.energies, rb.energies, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(ra.sperp, rb.sperp, atol=1e-9, equal_nan=True)


def test_load_model_through_registry():
    model = load_model(str(EXAMPLES / "afm_chain.toml"))
    assert model.name == "afm-chain"
    assert load_model(EXAMPLES / "fm_chain.toml").name == "fm-chain"


# ---------------------------------------------------------------------------- conventions
def test_dm_matrix_is_cross_product():
    rng = np.random.default_rng(4)
    for _ in range(20):
        d, si, sj = rng.normal(size=(3, 3))
        assert si @ dm_matrix(d) @ sj == pytest.approx(d @ np.cross(si, sj))
    np.testing.assert_allclose(dm_matrix([1.0, 2.0, 3.0]), -dm_matrix([1.0, 2.0, 3.0]).T)


def test_coupling_matrix_j_and_dm_combinations(tmp_path):
    text = BASE.replace(
        '[[couplings]]\nshell = 1\nJ = "J"\n',
        """[[couplings]]
sites = [1, 2]
J = 2.0
matrix = [[1, 0, 0], [0, 2, 0], [0, 0, 3]]
dm = [0.0, 0.0, 0.5]

[[couplings]]
sites = ["B", "A"]
offset = [1, 0, 0]
J = "J"
matrix = [[1, 0, 0], [0, 1, 0], [0, 0, 0.5]]
dm = [0.1, 0.0, 0.0]
dm_scale = "D"
""",
    )
    model = load_model_file(write(tmp_path, text))
    cs = model.system.couplings
    # 1: number J times the matrix, DM added, folded into one constant coupling
    assert cs[0].parameter is None and (cs[0].site1, cs[0].site2, cs[0].offset) == (0, 1, (0, 0, 0))
    np.testing.assert_allclose(cs[0].matrix, 2.0 * np.diag([1, 2, 3]) + dm_matrix([0, 0, 0.5]))
    # 2: matrix scaled by parameter J and DM scaled by parameter D: two terms on one bond
    assert [c.parameter for c in cs[1:]] == ["J", "D"]
    assert (cs[1].site1, cs[1].site2, cs[1].offset) == (1, 0, (1, 0, 0))
    np.testing.assert_allclose(cs[1].matrix, np.diag([1, 1, 0.5]))
    np.testing.assert_allclose(cs[2].matrix, dm_matrix([0.1, 0, 0]))
    assert model.system.anisotropies[0].parameter == "D"
    np.testing.assert_allclose(model.system.anisotropies[0].matrix, np.diag([0, 0, 1.0]))


def test_number_coupling_has_no_parameter(tmp_path):
    text = BASE.replace('J = "J"', "J = 0.7").replace('value = "D"', "value = -0.2")
    with pytest.warns(UserWarning, match="parameter '[JD]' is used by no coupling") as record:
        model = load_model_file(write(tmp_path, text))
    assert len(record) == 2
    assert {c.parameter for c in model.system.couplings} == {None}
    np.testing.assert_allclose(model.system.couplings[0].matrix, 0.7 * np.eye(3))
    np.testing.assert_allclose(model.system.anisotropies[0].matrix, np.diag([0, 0, -0.2]))


def test_parameter_round_trip_and_defaults(tmp_path):
    model = load_model_file(write(tmp_path, BASE))
    assert model.name == "test" and model.description == ""
    assert model.parameter_names == ("J", "D")
    assert model.best_fit == (1.0, 0.1)
    # a parameter without a range is held at its value when sampling
    assert model.ranges == ((0.0, 2.0), (0.1, 0.1))
    np.testing.assert_allclose(model.parse_params(None), [1.0, 0.1])
    assert np.all(model.sample(5, rng=0)[:, 1] == 0.1)
    # defaults: name from the file stem, one identity twin, no field, g = 2, no ion
    minimal = BASE.replace('name = "test"\n', "").replace("range = [0.0, 2.0]\n", "")
    model = load_model_file(write(tmp_path, minimal, "my_chain.toml"))
    assert model.name == "my_chain" and model.ranges is None
    assert len(model.system.twins) == 1 and model.system.field == (0.0, 0.0, 0.0)
    assert model.system.sites[0].g == 2.0 and model.system.sites[0].ion is None


def test_shell_between_and_explicit_bonds(tmp_path):
    text = BASE.replace(
        '[[couplings]]\nshell = 1\nJ = "J"\n',
        '[[couplings]]\nshell = 2\nbetween = ["A", "A"]\nJ = 0.2\n'
        '[[couplings]]\nsites = [1, 2]\noffset = [-1, 0, 0]\nJ = "J"\n',
    )
    model = load_model_file(write(tmp_path, text))
    bonds = [(c.site1, c.site2, c.offset) for c in model.system.couplings]
    assert bonds[-1] == (0, 1, (-1, 0, 0))
    assert all(c.site1 == c.site2 == 0 for c in model.system.couplings[:-1])
    assert len(bonds) == 2  # shell 2 (6 A along a) between A and A: one bond per cell


# ---------------------------------------------------------------------------- errors
COUPLINGS = '[[couplings]]\nshell = 1\nJ = "J"\n'
ERRORS = {
    "missing file": (None, "cannot read file"),
    "bad toml": (BASE.replace("a = 3.0", "a = = 3.0"), "invalid TOML"),
    "top-level typo": ("feild = [0, 0, 1]\n" + BASE, "model.toml: unknown key 'feild'"),
    "site typo": (BASE.replace("position = [0.5", "postion = [0.5"), "sites[2]: unknown key"),
    "lattice typo": (BASE.replace("b = 8.0", "bb = 8.0"), "lattice: unknown key 'bb'"),
    "missing lattice length": (BASE.replace("b = 8.0\n", ""), "lattice needs 'b'"),
    "negative length": (BASE.replace("a = 3.0", "a = -3.0"), "lattice.a must be a positive"),
    "nan length": (BASE.replace("a = 3.0", "a = nan"), "lattice.a must be a positive"),
    "bad angle": (BASE.replace("c = 8.0", "c = 8.0\ngamma = 190"), "lattice.gamma must lie"),
    "bad supercell": (BASE.replace("[2, 1, 1]", "[2, 0, 1]"), "lattice.supercell must be"),
    "float supercell": (BASE.replace("[2, 1, 1]", "[2.0, 1, 1]"), "lattice.supercell must be"),
    "sites not array": (
        BASE.replace('[[sites]]\nname = "A"', '[sites]\nname = "A"', 1).split("[[sites]]")[0],
        "sites must be an array of tables",
    ),
    "no sites": (BASE.split("[[sites]]")[0], "no magnetic sites"),
    "negative spin": (BASE.replace("spin = 1.0", "spin = -1.0", 1), "sites[1].spin must be a pos"),
    "string spin": (BASE.replace("spin = 1.0", 'spin = "1"', 1), "sites[1].spin must be a pos"),
    "bool spin": (BASE.replace("spin = 1.0", "spin = true", 1), "sites[1].spin must be a pos"),
    "nan position": (
        BASE.replace("[0.5, 0.0, 0.0]", "[0.5, nan, 0.0]"),
        "sites[2].position must be a list of 3 finite",
    ),
    "short position": (BASE.replace("[0.5, 0.0, 0.0]", "[0.5, 0.0]"), "sites[2].position"),
    "zero direction": (
        BASE.replace("[0.0, -1.0, 0.0]", "[0.0, 0.0, 0.0]"),
        "sites[2].direction must not be the zero",
    ),
    "missing spin": (BASE.replace("spin = 1.0\n", "", 1), "sites[1] needs 'spin'"),
    "bad ion": (BASE.replace('name = "A"', 'name = "A"\nion = "Xx9+"'), "sites[1].ion"),
    "bad g": (BASE.replace('name = "A"', 'name = "A"\ng = 0'), "sites[1].g must be a positive"),
    "param typo": (BASE.replace("value = 1.0", "valeu = 1.0"), "parameters[1]: unknown key"),
    "duplicate parameter": (
        BASE.replace('name = "D"', 'name = "J"'),
        "parameters[2].name 'J' is already used",
    ),
    "range low > high": (BASE.replace("[0.0, 2.0]", "[2.0, 0.0]"), "range has low 2.0 > high"),
    "value outside range": (
        BASE.replace("[0.0, 2.0]", "[1.5, 2.0]"),
        "parameters[1].value 1.0 of 'J' lies outside its range [1.5, 2.0]",
    ),
    "bad range shape": (BASE.replace("[0.0, 2.0]", "[0.0]"), "parameters[1].range must be"),
    "nan value": (BASE.replace("value = 1.0", "value = nan"), "parameters[1].value must be a"),
    "unknown parameter": (BASE.replace('J = "J"', 'J = "J2"'), "unknown parameter 'J2'"),
    "coupling typo": (BASE.replace('J = "J"', 'J = "J"\nofset = [0, 0, 0]'), "couplings[1]: "),
    "coupling no value": (BASE.replace('J = "J"\n', ""), "couplings[1] needs 'J', 'matrix' or"),
    "coupling shell and sites": (
        BASE.replace("shell = 1", "shell = 1\nsites = [1, 2]"),
        "couplings[1] needs either 'sites'",
    ),
    "bad shell": (BASE.replace("shell = 1", "shell = 0"), "couplings[1].shell must be an integer"),
    "float shell": (BASE.replace("shell = 1", "shell = 1.5"), "couplings[1].shell must be"),
    "empty shell selection": (
        BASE.replace("shell = 1", 'shell = 1\nbetween = ["A", "A"]'),
        "couplings[1]: shell 1 between A and A matches no bond",
    ),
    "between unknown name": (
        BASE.replace("shell = 1", 'shell = 1\nbetween = ["A", "C"]'),
        "couplings[1].between names unknown site 'C'",
    ),
    "site index out of range": (
        BASE.replace(COUPLINGS, '[[couplings]]\nsites = [1, 3]\nJ = "J"\n'),
        "couplings[1].sites site index 3 is out of range 1..2",
    ),
    "unknown site name": (
        BASE.replace(COUPLINGS, '[[couplings]]\nsites = ["A", "Q"]\nJ = "J"\n'),
        "couplings[1].sites names unknown site 'Q'",
    ),
    "ambiguous site name": (
        BASE.replace('name = "B"', 'name = "A"').replace(
            COUPLINGS, '[[couplings]]\nsites = ["A", 2]\nJ = "J"\n'
        ),
        "site name 'A' is ambiguous (sites 1, 2)",
    ),
    "self bond": (
        BASE.replace(COUPLINGS, '[[couplings]]\nsites = [1, 1]\nJ = "J"\n'),
        "couplings[1] joins a site to itself",
    ),
    "bad offset": (
        BASE.replace(COUPLINGS, "[[couplings]]\nsites = [1, 2]\noffset = [0.5, 0, 0]\nJ = 1\n"),
        "couplings[1].offset must be a list of 3 integers",
    ),
    "bad matrix": (
        BASE.replace('J = "J"', "matrix = [[1, 0], [0, 1]]"),
        "couplings[1].matrix must be a 3x3",
    ),
    "duplicate bond": (
        BASE.replace(
            COUPLINGS, COUPLINGS + "[[couplings]]\nsites = [2, 1]\noffset = [1, 0, 0]\nJ = 1\n"
        ),
        "couplings[2]: bond 2-1 offset [1, 0, 0] is already assigned by couplings[1]",
    ),
    "anisotropy both": (
        BASE.replace('value = "D"', 'value = "D"\nmatrix = [[1,0,0],[0,1,0],[0,0,1]]'),
        "anisotropies[1] needs either 'matrix' or 'axis'",
    ),
    "anisotropy two parameters": (
        BASE.replace('value = "D"', 'value = "D"\nscale = "J"'),
        "anisotropies[1] may use only one parameter",
    ),
    "anisotropy unknown site": (
        BASE.replace('value = "D"', 'value = "D"\nsites = ["Z"]'),
        "anisotropies[1].sites names unknown site 'Z'",
    ),
    "anisotropy site twice": (
        BASE.replace('value = "D"', 'value = "D"\nsites = ["A", 1]'),
        "anisotropies[1].sites selects site 1 twice",
    ),
    "bad field": (BASE.replace('name = "test"', "field = [0, 0]"), "field must be a list of 3"),
    "twin not orthogonal": (
        BASE + "[[twins]]\nrotation = [[2, 0, 0], [0, 1, 0], [0, 0, 1]]\n",
        "twins[1].rotation must be an orthogonal",
    ),
    "negative twin weight": (
        BASE + "[[twins]]\nrotation = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\nweight = -1\n",
        "twins[1].weight must not be negative",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_name_the_file(tmp_path, case):
    text, fragment = ERRORS[case]
    path = tmp_path / "model.toml" if text is None else write(tmp_path, text)
    with pytest.raises(ModelFileError) as info:
        load_model_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert fragment in message
    assert isinstance(info.value, ValueError)


def test_unknown_key_lists_allowed_keys(tmp_path):
    text = BASE.replace("position = [0.5", "postion = [0.5")
    with pytest.raises(ModelFileError, match="did you mean 'position'.*allowed keys: name, "):
        load_model_file(write(tmp_path, text))


def test_registry_reports_file_errors(tmp_path):
    with pytest.raises(ModelFileError, match="missing.toml: cannot read file"):
        load_model(str(tmp_path / "missing.toml"))
