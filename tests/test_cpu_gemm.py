"""The CPU kernels' float32 micro-kernels and row operations, against NumPy."""

import numpy as np
import pytest
from numba import njit

from attnkit.kernels.cpu import gemm
from attnkit.kernels.cpu.rowops import exp_shifted, row_max
from attnkit.kernels.cpu.vector_ir import EXP_FLOOR


@njit(cache=False)
def _scores(qs, k, block_k, zk, k0, k1):
    kp = gemm.pack_keys(k, block_k)
    s = np.full((qs.shape[0], k1 - k0), 7.0, dtype=qs.dtype)
    gemm.score_tile(qs, k, kp, zk, k0, k1, block_k, s, None)
    return s


@njit(cache=False)
def _scores_in_spans(qs, k, block_k, zk, k0, k1, spans):
    kp = gemm.pack_keys(k, block_k)
    s = np.full((qs.shape[0], k1 - k0), 7.0, dtype=qs.dtype)
    gemm.score_tile(qs, k, kp, zk, k0, k1, block_k, s, spans)
    return s


@njit(cache=False)
def _accumulate(prob, v, zk, k0, acc, alphas):
    scratch = np.empty(prob.shape[0] * v.shape[2], dtype=prob.dtype)
    gemm.accumulate_tile(prob, v, zk, k0, acc, alphas, scratch, None)


@njit(cache=False)
def _accumulate_in_spans(prob, v, zk, k0, acc, alphas, spans):
    scratch = np.empty(prob.shape[0] * v.shape[2], dtype=prob.dtype)
    gemm.accumulate_tile(prob, v, zk, k0, acc, alphas, scratch, spans)


@njit(cache=False)
def _score_exp(qs, k, block_k, zk, k0, k1, shift):
    kp = gemm.pack_keys(k, block_k)
    rows = qs.shape[0]
    p = np.full((rows, k1 - k0), 7.0, dtype=qs.dtype)
    red = np.empty(32 * rows, dtype=qs.dtype)
    tmax = np.empty(rows, dtype=qs.dtype)
    tsum = np.empty(rows, dtype=qs.dtype)
    gemm.score_exp_tile(qs, k, kp, zk, k0, k1, block_k, shift, p, red, tmax, tsum)
    return p, tmax, tsum


@njit(cache=False)
def _exp(src, shift, dst):
    return exp_shifted(src, shift, dst)


@njit(cache=False)
def _max(row):
    return row_max(row)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,d,block_k", [(1, 1, 64), (7, 16, 256), (13, 80, 100), (6, 64, 256)])
def test_score_tile_matches_numpy(rng, dtype, rows, d, block_k):
    k = rng.standard_normal((2, 3 * block_k - 5, d)).astype(dtype)
    qs = rng.standard_normal((rows, d)).astype(dtype)
    for t in range(3):  # full tiles and the ragged last one
        k0, k1 = t * block_k, min((t + 1) * block_k, k.shape[1])
        got = _scores(qs, k, block_k, 1, k0, k1)
        want = qs.astype(np.float64) @ k[1, k0:k1].T.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(d))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,d,block_k", [(1, 1, 64), (7, 16, 256), (13, 80, 100), (64, 64, 256)])
def test_score_exp_tile_matches_numpy(rng, dtype, rows, d, block_k):
    """Fused scores + exp: p = exp(s - shift), the row maxima of s and the row sums of p."""
    k = rng.standard_normal((2, 3 * block_k - 5, d)).astype(dtype)
    qs = (rng.standard_normal((rows, d)) / np.sqrt(d)).astype(dtype)
    for t in range(3):  # full tiles and the ragged last one (padded keys must not count)
        k0, k1 = t * block_k, min((t + 1) * block_k, k.shape[1])
        s = qs.astype(np.float64) @ k[1, k0:k1].T.astype(np.float64)
        # Shifts below and above the row maxima, as the online softmax produces them.
        shift = (s.max(axis=1) + rng.uniform(-8, 3, rows)).astype(dtype)
        p, tmax, tsum = _score_exp(qs, k, block_k, 1, k0, k1, shift)
        want = np.exp(s - shift.astype(np.float64)[:, None])
        np.testing.assert_allclose(p, want, rtol=2e-6, atol=0)
        np.testing.assert_allclose(tmax, s.max(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tsum, want.sum(axis=1), rtol=2e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,bk,dv", [(1, 1, 1), (5, 37, 16), (13, 256, 80), (6, 64, 130)])
def test_accumulate_tile_matches_numpy(rng, dtype, rows, bk, dv):
    v = rng.standard_normal((2, bk + 9, dv)).astype(dtype)
    prob = rng.random((rows, bk)).astype(dtype)
    acc = rng.standard_normal((rows + 2, dv)).astype(dtype)  # rows past `rows` stay
    alphas = rng.random(rows).astype(dtype)
    want = acc.astype(np.float64).copy()
    want[:rows] = alphas[:, None] * want[:rows] + prob.astype(np.float64) @ v[1, 4:4 + bk]
    _accumulate(prob, v, 1, 4, acc, alphas)
    np.testing.assert_allclose(acc, want, rtol=1e-5, atol=1e-5 * np.sqrt(bk))


def _random_spans(rng, rows, cols):
    panels = -(-cols // gemm.NR)
    lo = rng.integers(0, panels + 1, -(-rows // gemm.MR))
    hi = np.minimum(lo + rng.integers(0, panels + 1, lo.size), panels)
    return np.stack([lo, hi], axis=1).astype(np.int64)


@pytest.mark.parametrize("rows,bk", [(1, 1), (13, 200), (40, 256)])
def test_tile_products_skip_outside_spans(rng, rows, bk):
    """float32 products compute only the key panels of each row block's span (masked tiles)."""
    d, dv, nr, mr = 16, 80, gemm.NR, gemm.MR
    k = rng.standard_normal((1, bk, d)).astype(np.float32)
    qs = rng.standard_normal((rows, d)).astype(np.float32)
    spans = _random_spans(rng, rows, bk)
    got = _scores_in_spans(qs, k, 256, 0, 0, bk, spans)
    want = qs.astype(np.float64) @ k[0].T.astype(np.float64)
    inside = np.zeros((rows, bk), dtype=bool)
    for b, (lo, hi) in enumerate(spans):
        inside[b * mr: b * mr + mr, lo * nr: hi * nr] = True
    np.testing.assert_allclose(got[inside], want[inside], rtol=1e-5, atol=1e-5)
    assert (got[~inside] == 7.0).all()  # skipped, left for the mask to overwrite

    # Probabilities are 0 outside the spans, so skipping them changes nothing.
    v = rng.standard_normal((1, bk, dv)).astype(np.float32)
    prob = np.where(inside, rng.random((rows, bk)), 0.0).astype(np.float32)
    acc = rng.standard_normal((rows, dv)).astype(np.float32)
    alphas = rng.random(rows).astype(np.float32)
    want_acc = alphas[:, None] * acc.astype(np.float64) + prob.astype(np.float64) @ v[0]
    _accumulate_in_spans(prob, v, 0, 0, acc, alphas, spans)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-5, atol=1e-5 * np.sqrt(bk))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 100, 256, 300])
def test_exp_shifted_float32(rng, n):
    src = (rng.standard_normal(n) * 20).astype(np.float32)
    if n > 2:
        src[0], src[1] = -np.inf, -200.0
    shift = float(src.max()) if n else 0.0
    dst = np.full(n + 3, 5.0, dtype=np.float32)
    total = _exp(src, shift, dst[:n])
    x = (src - np.float32(shift)).astype(np.float64)
    want = np.where(x < EXP_FLOOR, 0.0, np.exp(x))
    np.testing.assert_allclose(dst[:n], want, rtol=3e-7, atol=0)
    assert np.all(dst[n:] == 5.0)  # nothing written past the row
    assert total == pytest.approx(want.sum(), rel=1e-6, abs=1e-30)
    if n > 2:
        assert dst[0] == 0.0 and dst[1] == 0.0
        src[2] = np.nan
        _exp(src, shift, dst[:n])
        assert np.isnan(dst[2]) and not np.isnan(dst[3:n]).any()


@pytest.mark.parametrize("n", [1, 16, 31, 33, 64, 257])
def test_row_max_float32(rng, n):
    row = rng.standard_normal(n).astype(np.float32)
    assert _max(row) == row.max()
    assert _max(row[::2]) == row[::2].max()  # strided rows take the plain loop
    row[:] = -np.inf
    assert _max(row) == -np.inf
    row[n - 1] = 2.0
    assert _max(row) == 2.0
    row[n // 2] = np.nan
    assert np.isnan(_max(row))
    assert _max(np.empty(0, dtype=np.float32)) == -np.inf
