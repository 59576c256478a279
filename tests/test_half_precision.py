"""float16 / bfloat16 inputs: computed in float32, returned in the input's dtype."""

import ml_dtypes
import numpy as np
import pytest

import attnkit as ak
import reference as ref


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_half_inputs_match_float64_reference_at_half_resolution(half, rng):
    q, k, v = (rng.standard_normal((2, 3, s, 16)).astype(half) for s in (37, 70, 70))
    out, lse = ak.attention(q, k, v, causal=True, return_lse=True)
    assert out.dtype == np.dtype(half)
    assert lse.dtype == np.float32
    expected, expected_lse = ref.attention(q.astype(np.float64), k.astype(np.float64),
                                           v.astype(np.float64), causal=True)
    # The output is rounded to the half dtype once; the float32 math adds far less.
    eps = float(ml_dtypes.finfo(half).eps)
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=4 * eps, rtol=0)
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-5, atol=1e-5)


def test_mixed_half_and_float32_computes_and_returns_float32(rng):
    q = rng.standard_normal((9, 8)).astype(np.float16)
    k = rng.standard_normal((11, 8)).astype(np.float32)
    out = ak.attention(q, k, k)
    assert out.dtype == np.float32
    expected, _ = ref.attention(q.astype(np.float64), k, k)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_float16_near_range_limit_stays_finite(rng):
    q = (rng.uniform(-1, 1, (5, 16)) * 60000).astype(np.float16)  # |q| near float16 max
    k = (rng.uniform(-1, 1, (7, 16)) * 60000).astype(np.float16)
    v = rng.standard_normal((7, 4)).astype(np.float16)
    out, lse = ak.attention(q, k, v, return_lse=True)
    assert np.isfinite(out.astype(np.float32)).all() and np.isfinite(lse).all()
    expected, _ = ref.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=4e-3, rtol=0)
