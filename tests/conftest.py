"""Shared test helpers: where the read-only reference data live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from packaging.version import Version

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a pytest whose node ids break `--dist loadgroup` (below). Under pytest-xdist
    each worker gets its share of the cores for torch's threads, so that two workers on two
    cores do not run four threads."""
    grouped = config.getoption("dist", "no") == "loadgroup" and config.getoption("numprocesses", 0)
    if grouped and Version(pytest.__version__) >= Version("9.2.dev0"):
        # pytest-xdist 3.8 marks a test's group by renaming its node id, which pytest 9.2's
        # structured ids ignore (pytest-xdist issue 1386): the groups below would silently
        # do nothing, and both workers would train or wait for each GAN learning run
        raise pytest.UsageError(
            f"pytest {pytest.__version__} breaks pytest-xdist's test groups: "
            "install the test extra (pip install -e '.[test]', pytest < 9.2)"
        )
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for `--dist loadgroup` (pyproject.toml): a file's tests run in one worker, so
    that its module-scoped fixtures are built once, except the GAN learning runs, whose
    variants (a minute or more each) go to workers of their own."""
    for item in items:
        group = item.path.stem
        params = getattr(item, "callspec", None)
        if params is not None and "blur_run" in params.params:
            group += "-" + str(params.params["blur_run"])
        item.add_marker(pytest.mark.xdist_group(group))


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
