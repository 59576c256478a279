"""Shared fixtures for the attnkit test suite.

* ``tests/`` is put on ``sys.path`` so test modules can ``import reference``
  (the float64 NumPy reference the kernels are checked against) and
  ``cli_checks`` (assertions on click results).
* ``@pytest.mark.needs_zarr`` skips a test (or one parameter, via
  ``pytest.param(..., marks=...)``) when zarr, an optional extra, is not installed.
* ``rng`` is a ``np.random.default_rng`` seeded from a fresh random seed per
  test. The seed is printed, and attached to the report of a failing test, so
  a failure can be replayed with ``ATTNKIT_TEST_SEED=<seed> pytest ...``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from seeds import SEED_ENV as _SEED_ENV, fresh_seed  # noqa: E402  (tests/ is on sys.path now)

# On a machine with a GPU, backend="auto" would send every host-array test to the CUDA
# kernels; keep them on the CPU (the CUDA tests ask for backend="cuda" or pass device arrays).
os.environ.setdefault("ATTNKIT_AUTO_BACKEND", "cpu")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs_zarr: writes or reads a zarr store; skipped without zarr (an extra)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_zarr") and importlib.util.find_spec("zarr") is None:
        pytest.skip("needs zarr: pip install 'attnkit[zarr]'")


@pytest.fixture
def seed(request) -> int:
    value = fresh_seed()
    request.node._attnkit_seed = value
    print(f"random seed: {value} (replay with {_SEED_ENV}={value})")
    return value


@pytest.fixture
def rng(seed) -> np.random.Generator:
    """A generator seeded freshly for every test (seed shown on failure)."""
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    value = getattr(item, "_attnkit_seed", None)
    if value is not None and report.failed:
        report.sections.append(
            ("attnkit random seed", f"{value}  (replay with {_SEED_ENV}={value})")
        )


@pytest.fixture(autouse=True)
def _close_pyplot_figures():
    """Close the figures a test opened through pyplot (plots use it once it is imported)."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
