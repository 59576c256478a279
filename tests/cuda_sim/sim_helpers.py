"""Shared helpers for the simulator tests (imported by the test modules)."""

from __future__ import annotations

import contextlib

import numpy as np

import attnkit as ak
from attnkit.kernels.cuda import api
from attnkit.kernels.cuda.tiling import Tiling

#: Tilings exercised in the simulator: the default small one, one thread row
#: with one query per block, and 8-wide thread rows (other padding/reduction paths).
TILINGS = {
    "2x4": Tiling(2, 4, 2, 2),
    "1x4": Tiling(1, 4, 1, 1),
    "2x8": Tiling(2, 8, 2, 1),
}

# float32 kernels against the float64 reference.
ATOL = 2e-6
LSE_TOL = 2e-5


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@contextlib.contextmanager
def tiling(name):
    with api.use_tiling(TILINGS[name]):
        yield


def cuda_attention(*args, **kw):
    return ak.attention(*args, backend="cuda", **kw)


def check_lse(lse, expected, tol=LSE_TOL):
    """Same -inf pattern (fully masked rows), close finite values, no NaN."""
    lse = np.asarray(lse, dtype=np.float64)
    assert not np.isnan(lse).any()
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(lse[finite], expected[finite], rtol=tol, atol=tol)
