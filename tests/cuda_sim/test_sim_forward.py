"""CUDA forward kernel (attnkit.attention, backend="cuda") in the simulator vs the float64 reference."""

import ml_dtypes
import numpy as np
import pytest
from numba import cuda

import attnkit as ak
import reference as ref
from sim_helpers import ATOL, check_lse, cuda_attention, randn, tiling

MASKS = {
    "causal": lambda rng: ak.masks.causal(),
    "causal_offset": lambda rng: ak.masks.causal(-3),
    "local": lambda rng: ak.masks.local(4),
    "sliding": lambda rng: ak.masks.local(5) & ak.masks.causal(),
    "strided": lambda rng: ak.masks.strided(3),
    "global": lambda rng: ak.masks.global_tokens([0, 9]),
    "block_sparse": lambda rng: ak.masks.block_sparse(rng.random((6, 6)) < 0.5, 4),
    "random": lambda rng: ak.masks.random(0.4, block=4, seed=int(rng.integers(100))),
    "not_local_or_global": lambda rng: ~ak.masks.local(3) | ak.masks.global_tokens([2]),
    "sparse_transformer": lambda rng: ak.masks.local(3) | ak.masks.strided(3),
}


@pytest.mark.parametrize("name", ["2x4", "1x4", "2x8"])
def test_plain_matches_reference(rng, name):
    """Ragged sizes (not multiples of any tile), d not a multiple of 4, dv != d."""
    n, m = int(rng.integers(5, 20)), int(rng.integers(5, 20))
    q, k, v = randn(rng, 2, n, 7), randn(rng, 2, m, 7), randn(rng, 2, m, 5)
    with tiling(name):
        out, lse = cuda_attention(q, k, v, return_lse=True)
    expected, expected_lse = ref.attention(q, k, v)
    assert out.shape == (2, n, 5) and out.dtype == np.float32 and lse.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    check_lse(lse, expected_lse)


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_every_mask_with_ragged_lengths(rng, mask_name):
    mask = MASKS[mask_name](rng)
    n, m = 21, 18
    q, k, v = randn(rng, 2, n, 4), randn(rng, 2, m, 4), randn(rng, 2, m, 6)
    q_len, kv_len = np.array([n, 13]), np.array([11, m])
    with tiling("2x4"):
        out, lse = cuda_attention(q, k, v, mask=mask, q_lengths=q_len, kv_lengths=kv_len,
                                  return_lse=True)
    expected, expected_lse = ref.attention(q, k, v, mask=mask, q_lengths=q_len,
                                           kv_lengths=kv_len)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    check_lse(lse, expected_lse)


@pytest.mark.parametrize("name", ["2x4", "2x8"])
def test_causal_cross_attention(rng, name):
    q, k, v = randn(rng, 3, 9, 8), randn(rng, 3, 17, 8), randn(rng, 3, 17, 8)
    with tiling(name):
        out, lse = cuda_attention(q, k, v, causal=True, return_lse=True)
    expected, expected_lse = ref.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    check_lse(lse, expected_lse)


def test_lengths_zero_give_zero_output_and_minus_inf_lse(rng):
    q, k, v = randn(rng, 3, 6, 4), randn(rng, 3, 10, 4), randn(rng, 3, 10, 3)
    q_len, kv_len = np.array([0, 6, 4]), np.array([10, 0, 3])
    with tiling("2x4"):
        out, lse = cuda_attention(q, k, v, q_lengths=q_len, kv_lengths=kv_len, return_lse=True)
    expected, expected_lse = ref.attention(q, k, v, q_lengths=q_len, kv_lengths=kv_len)
    assert (out[0] == 0).all() and (out[1] == 0).all() and (out[2, 4:] == 0).all()
    assert np.isneginf(lse[0]).all() and np.isneginf(lse[1]).all()
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    check_lse(lse, expected_lse)


def test_fully_masked_rows_are_zero_not_nan(rng):
    # causal(offset=-3): the first 3 queries see no key at all.
    q, k, v = randn(rng, 7, 4), randn(rng, 7, 4), randn(rng, 7, 4)
    with tiling("2x4"):
        out, lse = cuda_attention(q, k, v, mask=ak.masks.causal(-3), return_lse=True)
    assert not np.isnan(out).any()
    assert (out[:3] == 0).all() and np.isneginf(lse[:3]).all() and np.isfinite(lse[3:]).all()


def test_grouped_query_heads_and_broadcast_batch(rng):
    q = randn(rng, 2, 4, 9, 8)  # (B, Hq, n, d)
    k, v = randn(rng, 1, 2, 11, 8), randn(rng, 1, 2, 11, 5)  # 2 kv heads, batch broadcast
    with tiling("2x4"):
        out = cuda_attention(q, k, v, causal=True, kv_lengths=np.array([11, 6]))
    expected, _ = ref.attention(q, k, v, causal=True, kv_lengths=np.array([11, 6]))
    assert out.shape == (2, 4, 9, 5)
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)


def _python_score_mod(score, b, h, q_idx, kv_idx):
    return score + 0.25 * h - 0.1 * abs(q_idx - kv_idx)


SCORE_MODS = {
    "alibi": lambda: ak.positional.alibi(ak.positional.alibi_slopes(2)),
    "soft_cap": lambda: ak.positional.soft_cap(0.7),
    "relative_bias": lambda: ak.positional.relative_bias(
        np.random.default_rng(3).standard_normal((2, 7))),
    "python": lambda: _python_score_mod,
}


@pytest.mark.parametrize("mod_name", list(SCORE_MODS))
def test_score_mod(rng, mod_name):
    mod = SCORE_MODS[mod_name]()
    q, k, v = randn(rng, 2, 2, 8, 4) * 2, randn(rng, 2, 2, 10, 4), randn(rng, 2, 2, 10, 4)
    with tiling("2x4"):
        out, lse = cuda_attention(q, k, v, score_mod=mod, causal=True, return_lse=True)
    expected, expected_lse = ref.attention(q, k, v, score_mod=mod, causal=True)
    np.testing.assert_allclose(out, expected, atol=4 * ATOL, rtol=0)
    check_lse(lse, expected_lse)


def test_scale(rng):
    q, k, v = randn(rng, 6, 5), randn(rng, 9, 5), randn(rng, 9, 5)
    with tiling("1x4"):
        out = cuda_attention(q, k, v, scale=1.7)
    np.testing.assert_allclose(out, ref.attention(q, k, v, scale=1.7)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (1, 9, 16), (9, 1, 3)])
def test_single_query_or_key(rng, n, m, d):
    q, k, v = randn(rng, 2, n, d), randn(rng, 2, m, d), randn(rng, 2, m, d)
    with tiling("2x4"):
        out, lse = cuda_attention(q, k, v, return_lse=True)
    expected, expected_lse = ref.attention(q, k, v)
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    check_lse(lse, expected_lse)


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_half_inputs_compute_in_float32(rng, half):
    q, k, v = (rng.standard_normal((2, s, 8)).astype(half) for s in (11, 14, 14))
    with tiling("2x4"):
        out, lse = cuda_attention(q, k, v, causal=True, return_lse=True)
    assert out.dtype == np.dtype(half) and lse.dtype == np.float32
    expected, expected_lse = ref.attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True)
    eps = float(ml_dtypes.finfo(half).eps)
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=4 * eps, rtol=0)
    check_lse(lse, expected_lse)


def test_float64_accumulates_in_float64(rng):
    q, k, v = (rng.standard_normal((2, s, 6)) for s in (10, 13, 13))
    with tiling("2x4"):
        out, lse = cuda_attention(q, k, v, mask=ak.masks.local(4), return_lse=True)
    expected, expected_lse = ref.attention(q, k, v, mask=ak.masks.local(4))
    assert out.dtype == np.float64 and lse.dtype == np.float64
    np.testing.assert_allclose(out, expected, atol=1e-13, rtol=0)
    np.testing.assert_allclose(lse, expected_lse, atol=1e-13, rtol=0)


def test_mixed_half_and_float32(rng):
    q = randn(rng, 7, 4).astype(np.float16)
    k = randn(rng, 9, 4)
    with tiling("2x4"):
        out = cuda_attention(q, k, k)
    assert out.dtype == np.float32
    expected, _ = ref.attention(q.astype(np.float64), k, k)
    np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)


def test_matches_cpu_backend(rng):
    q, k, v = randn(rng, 2, 2, 13, 8), randn(rng, 2, 1, 15, 8), randn(rng, 2, 1, 15, 8)
    kw = dict(mask=ak.masks.local(6) | ak.masks.global_tokens([0]), q_lengths=np.array([13, 9]),
              return_lse=True)
    with tiling("2x8"):
        out, lse = cuda_attention(q, k, v, **kw)
    cpu_out, cpu_lse = ak.attention(q, k, v, backend="cpu", **kw)
    np.testing.assert_allclose(out, cpu_out, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(cpu_lse))
    finite = np.isfinite(cpu_lse)
    np.testing.assert_allclose(lse[finite], cpu_lse[finite], rtol=1e-5)


def test_nan_input_poisons_its_rows_like_the_cpu(rng):
    q, k, v = randn(rng, 6, 4), randn(rng, 8, 4), randn(rng, 8, 4)
    k[5, 1] = np.nan
    with tiling("2x4"):
        out = cuda_attention(q, k, v, causal=True, check_finite=False)
    cpu = ak.attention(q, k, v, causal=True, check_finite=False, backend="cpu")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(cpu))
    assert np.isnan(out[5:]).all() and not np.isnan(out[:5]).any()


# ------------------------------------------------------------ device arrays
def test_device_arrays_stay_on_device(rng):
    q, k, v = randn(rng, 2, 9, 8), randn(rng, 2, 12, 8), randn(rng, 2, 12, 8)
    dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
    with tiling("2x4"):
        out, lse = ak.attention(dq, dk, dv, causal=True, return_lse=True)  # auto -> cuda
    assert hasattr(out, "copy_to_host") and hasattr(lse, "copy_to_host")
    assert not isinstance(out, np.ndarray) and not isinstance(lse, np.ndarray)
    expected, expected_lse = ref.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out.copy_to_host(), expected, atol=ATOL, rtol=0)
    check_lse(lse.copy_to_host(), expected_lse)


def test_strided_device_view_needs_no_copy(rng):
    """A (B, n, H, d) buffer transposed to (B, H, n, d), the layout of Hugging Face models."""
    base = randn(rng, 2, 10, 3, 8)  # (B, n, H, d)
    kbase = randn(rng, 2, 12, 3, 8)
    dq = cuda.to_device(base).transpose((0, 2, 1, 3))
    dk = cuda.to_device(kbase).transpose((0, 2, 1, 3))
    assert not dq.is_c_contiguous()
    with tiling("2x4"):
        out = ak.attention(dq, dk, dk, backend="cuda")
    q, k = base.transpose(0, 2, 1, 3), kbase.transpose(0, 2, 1, 3)
    np.testing.assert_allclose(out.copy_to_host(), ref.attention(q, k, k)[0], atol=ATOL, rtol=0)


def test_device_inputs_are_checked_for_nan_on_the_device(rng):
    k = randn(rng, 9, 4)
    k[3, 2] = np.inf
    with tiling("2x4"), pytest.raises(ValueError, match=r"k: expected finite values, got 1 NaN/inf"):
        ak.attention(cuda.to_device(randn(rng, 5, 4)), cuda.to_device(k), cuda.to_device(k))
