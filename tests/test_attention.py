"""ak.attention / attention_weights / attention_stats against the float64 reference.

Every test draws fresh random inputs from the ``rng`` fixture (its seed is
printed on failure). Sizes deliberately straddle the CPU kernel tiles
(128 queries x 256 keys): n, m in {1, 65, 257, 300, ...}.

Compilation budget: every distinct score_mod object re-jits the parallel
kernels (~20 s), so this module uses exactly three: ``ALIBI`` (shared with
test_positional through the factory's cache), ``user_mod`` (a plain Python
function, called once) and ``njit_mod`` (a Numba function).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from numba import njit
from numpy.testing import assert_allclose, assert_array_equal

import attnkit as ak
import reference

F16, F32, F64 = np.float16, np.float32, np.float64

# Tolerances against the float64 reference, by input dtype.
TOL = {
    F64: dict(rtol=1e-12, atol=1e-12),
    F32: dict(rtol=1e-5, atol=1e-5),
    F16: dict(rtol=2e-3, atol=2e-3),  # the output is rounded to float16
}
# lse, weights and statistics are float32 (or float64) even for float16 inputs.
TOL_WIDE = {F64: TOL[F64], F32: TOL[F32], F16: TOL[F32]}

HEADS = 4
ALIBI = ak.positional.alibi(ak.positional.alibi_slopes(HEADS))


def user_mod(score, b, h, q_idx, kv_idx):
    """A plain Python score_mod (attnkit jits it)."""
    return score + 0.25 * h - 0.5 * b + 0.01 * (kv_idx - q_idx)


@njit
def njit_mod(score, b, h, q_idx, kv_idx):
    """A user score_mod that is already a Numba function."""
    bonus = 0.75 if (q_idx + kv_idx) % 3 == 0 else -0.25
    return score * (1.0 + 0.5 * h) + bonus


# ------------------------------------------------------------------ helpers
def randn(rng, shape, dtype=F64):
    return rng.standard_normal(shape).astype(dtype)


def make_qkv(rng, q_batch, n, m, d, dv=None, kv_batch=None, dtype=F64):
    kv_batch = q_batch if kv_batch is None else kv_batch
    dv = d if dv is None else dv
    q = randn(rng, q_batch + (n, d), dtype)
    k = randn(rng, kv_batch + (m, d), dtype)
    v = randn(rng, kv_batch + (m, dv), dtype)
    return q, k, v


def check_attention(q, k, v, *, dtype=None, **kw):
    """Run ak.attention with return_lse and compare out and lse with the reference."""
    dtype = q.dtype.type if dtype is None else dtype
    out, lse = ak.attention(q, k, v, return_lse=True, **kw)
    want, want_lse = reference.attention(q, k, v, **kw)
    assert out.shape == want.shape
    assert lse.shape == want_lse.shape
    assert out.dtype == (np.dtype(F64) if dtype is F64 else np.dtype(dtype))
    assert lse.dtype == (np.dtype(F64) if dtype is F64 else np.dtype(F32))
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert_allclose(out.astype(F64), want, **TOL[dtype])
    finite = np.isfinite(want_lse)
    assert_array_equal(np.isfinite(lse), finite)
    assert (lse[~finite] == -np.inf).all()
    assert_allclose(lse[finite], want_lse[finite], **TOL_WIDE[dtype])
    return out, lse


def check_weights(q, k, *, dtype=None, **kw):
    dtype = q.dtype.type if dtype is None else dtype
    w = ak.attention_weights(q, k, **kw)
    want, _ = reference.weights(q, k, **kw)
    assert w.shape == want.shape
    assert w.dtype == (np.dtype(F64) if dtype is F64 else np.dtype(F32))
    assert_allclose(w, want, **TOL_WIDE[dtype])
    # entries the reference rules out are exactly zero, not merely small
    assert (w[want == 0] == 0).all()
    return w, want


def check_stats(st, p, *, topk=0, dtype=F64):
    """Compare an attention_stats dict with reference.stats of dense probabilities p."""
    want = reference.stats(p, topk)
    tol = TOL_WIDE[dtype]
    for name in ("entropy", "received", "max", "distance"):
        if name in st:
            assert st[name].dtype == np.float64
            assert st[name].shape == want[name].shape
            assert_allclose(st[name], want[name], **tol, err_msg=name)
    masked = want["max"] == 0  # rows with no allowed key
    if "argmax" in st:
        am = st["argmax"]
        assert np.issubdtype(am.dtype, np.integer)
        assert (am[masked] == -1).all()
        assert (am[~masked] >= 0).all()
        # the chosen key carries the largest probability (robust to float32 near-ties)
        picked = np.take_along_axis(p, np.maximum(am, 0)[..., None], -1)[..., 0]
        assert_allclose(picked[~masked], want["max"][~masked], **tol)
        if dtype is F64:
            assert_array_equal(am, want["argmax"])
    if topk:
        ti, tv = st["topk_index"], st["topk_value"]
        assert ti.shape == tv.shape == p.shape[:-1] + (topk,)
        assert_allclose(tv, want["topk_value"], **tol)
        present = want["topk_value"] > 0
        assert (ti[~present] == -1).all() and (tv[~present] == 0).all()
        picked = np.take_along_axis(p, np.maximum(ti, 0), -1)
        assert_allclose(picked[present], tv[present], **tol)
        if dtype is F64:
            assert_array_equal(ti, want["topk_index"])


# ----------------------------------------------------------- sizes and dims
SIZES = [(1, 1), (1, 300), (65, 1), (65, 257), (257, 65), (64, 256), (300, 300), (129, 513)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("n,m", SIZES)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_sizes_match_reference(rng, n, m, causal, dtype):
    q, k, v = make_qkv(rng, (2, 3), n, m, 16, dv=24, dtype=dtype)
    check_attention(q, k, v, causal=causal)


@pytest.mark.parametrize("d", [1, 16, 64, 80, 128])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_head_dims_match_reference(rng, d, dtype):
    q, k, v = make_qkv(rng, (2,), 65, 257, d, dtype=dtype)
    check_attention(q, k, v, causal=True)


def test_large_head_dim_weights_and_stats(rng):
    q, k, _ = make_qkv(rng, (2,), 70, 300, 128, dtype=F32)
    _, p = check_weights(q, k)
    check_stats(ak.attention_stats(q, k, topk=3), p, topk=3, dtype=F32)


def test_unbatched_2d_inputs(rng):
    q, k, v = make_qkv(rng, (), 33, 47, 8, dv=5)
    out, _ = check_attention(q, k, v)
    assert out.shape == (33, 5)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_scale(rng, dtype):
    q, k, v = make_qkv(rng, (3,), 70, 260, 16, dtype=dtype)
    scale = float(rng.uniform(0.5, 2.0) * rng.choice([-1, 1]))  # far from the default 0.25
    out, _ = check_attention(q, k, v, scale=scale)
    default = ak.attention(q, k, v)
    assert not np.allclose(out, default)  # the scale is actually used
    assert_allclose(default, ak.attention(q, k, v, scale=1 / math.sqrt(16)), rtol=0, atol=0)


def test_scale_zero_averages_values(rng):
    q, k, v = make_qkv(rng, (2, 2), 40, 300, 8)
    out = ak.attention(q, k, v, scale=0.0)
    assert_allclose(out, np.broadcast_to(v.mean(-2, keepdims=True), out.shape), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- causal
@pytest.mark.parametrize("n,m", [(70, 300), (300, 70), (1, 257), (257, 1)])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_causal_cross_attention(rng, n, m, dtype):
    q, k, v = make_qkv(rng, (2, 2), n, m, 16, dv=7, dtype=dtype)
    out, _ = check_attention(q, k, v, causal=True)
    # top-left aligned: the first query sees exactly key 0
    assert_allclose(out[..., 0, :], v[..., 0, :], **TOL[dtype])


def test_causal_flag_is_the_causal_mask(rng):
    q, k, v = make_qkv(rng, (2, 3), 100, 300, 16)
    assert_array_equal(ak.attention(q, k, v, causal=True),
                       ak.attention(q, k, v, mask=ak.masks.causal()))
    window = ak.masks.local(int(rng.integers(2, 80)))
    assert_array_equal(ak.attention(q, k, v, causal=True, mask=window),
                       ak.attention(q, k, v, mask=window & ak.masks.causal()))


# ----------------------------------------------------------------- lengths
def _lengths(rng, shape, limit):
    """Random lengths including the edge cases 0 and the full length."""
    lens = rng.integers(0, limit + 1, size=shape)
    flat = lens.reshape(-1)
    if flat.size >= 2:
        flat[0], flat[-1] = 0, limit
    return lens


@pytest.mark.parametrize("form", ["batch", "batch_head", "scalar", "list", "column", "size1"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_lengths_match_reference(rng, form, dtype):
    B, H, n, m = 3, 2, 130, 300
    q, k, v = make_qkv(rng, (B, H), n, m, 16, dtype=dtype)
    ql, kl = {
        "batch": lambda: (_lengths(rng, (B,), n), _lengths(rng, (B,), m)),
        "batch_head": lambda: (_lengths(rng, (B, H), n), _lengths(rng, (B, H), m)),
        "scalar": lambda: (int(rng.integers(1, n)), int(rng.integers(1, m))),
        "list": lambda: (_lengths(rng, (B,), n).tolist(), _lengths(rng, (B,), m).tolist()),
        "column": lambda: (_lengths(rng, (B, 1), n), _lengths(rng, (B, 1), m)),
        "size1": lambda: (rng.integers(1, n, size=(1,)), rng.integers(1, m, size=(1, H))),
    }[form]()
    out, lse = check_attention(q, k, v, q_lengths=ql, kv_lengths=kl, causal=True)
    qlen = np.broadcast_to(np.reshape(ql, np.shape(ql) + (1,) * (2 - np.ndim(ql))), (B, H))
    pad = np.arange(n) >= qlen[..., None]
    assert (out[pad] == 0).all() and (lse[pad] == -np.inf).all()


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_lengths_weights_and_stats(rng, dtype):
    B, H, n, m = 3, 2, 130, 300
    q, k, _ = make_qkv(rng, (B, H), n, m, 16, dtype=dtype)
    ql = _lengths(rng, (B,), n)
    kl = np.array([int(rng.integers(1, m)), int(rng.integers(1, 256)), m])  # ends inside a key tile
    w, p = check_weights(q, k, q_lengths=ql, kv_lengths=kl)
    st = ak.attention_stats(q, k, q_lengths=ql, kv_lengths=kl, topk=3)
    for b in range(B):
        assert (w[b, :, :, kl[b]:] == 0).all() and (w[b, :, ql[b]:] == 0).all()
        # padded keys receive nothing, padded queries give nothing
        assert (st["received"][b, :, kl[b]:] == 0).all(), st["received"][b, :, kl[b]:]
        assert (st["argmax"][b, :, ql[b]:] == -1).all()
    check_stats(st, p, topk=3, dtype=dtype)


def test_lengths_are_left_aligned_prefix(rng):
    """(B,) lengths for (B, H, n, d) inputs index the batch, not the heads."""
    B, H, n, m = 2, 5, 20, 30
    q, k, v = make_qkv(rng, (B, H), n, m, 4)
    kl = np.array([int(rng.integers(1, m)), m])
    out = ak.attention(q, k, v, kv_lengths=kl)
    for b in range(B):
        want = ak.attention(q[b], k[b, :, : kl[b]], v[b, :, : kl[b]])
        assert_allclose(out[b], want, rtol=1e-12, atol=1e-12)


def test_padding_contents_are_ignored(rng):
    B, H, n, m = 2, 2, 100, 300
    q, k, v = make_qkv(rng, (B, H), n, m, 16)
    ql, kl = rng.integers(1, n, size=B), rng.integers(1, m, size=B)
    out = ak.attention(q, k, v, q_lengths=ql, kv_lengths=kl)
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    for b in range(B):
        q2[b, :, ql[b]:] = randn(rng, q2[b, :, ql[b]:].shape)
        k2[b, :, kl[b]:] = randn(rng, k2[b, :, kl[b]:].shape)
        v2[b, :, kl[b]:] = randn(rng, v2[b, :, kl[b]:].shape)
    assert_array_equal(out, ak.attention(q2, k2, v2, q_lengths=ql, kv_lengths=kl))


# ------------------------------------------------- grouped-query attention
@pytest.mark.parametrize("hq,hkv", [(8, 2), (6, 3), (4, 1), (3, 3)])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_grouped_query_attention(rng, hq, hkv, dtype):
    n, m = 70, 260
    q, k, v = make_qkv(rng, (2, hq), n, m, 16, kv_batch=(2, hkv), dtype=dtype)
    ql = rng.integers(0, n + 1, size=2)
    out, _ = check_attention(q, k, v, causal=True, q_lengths=ql)
    # query head h uses kv head h // (hq // hkv): same as repeating the kv heads
    g = hq // hkv
    expanded = ak.attention(q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1),
                            causal=True, q_lengths=ql)
    assert_array_equal(out, expanded)


def test_grouped_query_without_batch_dim(rng):
    q, k, v = make_qkv(rng, (6,), 40, 90, 8, kv_batch=(2,))
    check_attention(q, k, v, mask=ak.masks.local(int(rng.integers(1, 30))))
    _, p = check_weights(q, k)
    check_stats(ak.attention_stats(q, k, topk=2), p, topk=2)


# ------------------------------------------------------------ broadcasting
@pytest.mark.parametrize(
    "q_batch,kv_batch,batch",
    [
        ((3, 1), (1, 4), (3, 4)),
        ((), (2, 3), (2, 3)),
        ((2, 3), (), (2, 3)),
        ((5, 1, 2), (3, 1), (5, 3, 2)),
        ((1, 4), (2, 1), (2, 4)),
    ],
)
def test_broadcast_leading_dims(rng, q_batch, kv_batch, batch):
    n, m, d = 70, 40, 8
    q, k, v = make_qkv(rng, q_batch, n, m, d, kv_batch=kv_batch)
    out, lse = check_attention(q, k, v, causal=True)
    assert out.shape == batch + (n, d) and lse.shape == batch + (n,)
    explicit = ak.attention(np.broadcast_to(q, batch + (n, d)),
                            np.broadcast_to(k, batch + (m, d)),
                            np.broadcast_to(v, batch + (m, d)), causal=True)
    assert_array_equal(out, explicit)


# ------------------------------------------------------------------- masks
def _idx(rng, limit, most=4):
    return rng.choice(limit, size=int(rng.integers(1, min(most, limit) + 1)), replace=False)


def _layout(rng, n, m, block):
    return rng.random((-(-n // block), -(-m // block))) < 0.5


MASKS = {
    "full": lambda n, m, r: ak.masks.full(),
    "causal": lambda n, m, r: ak.masks.causal(),
    "causal_offset": lambda n, m, r: ak.masks.causal(int(r.integers(-n // 2, m))),
    "causal_kv_cache": lambda n, m, r: ak.masks.causal(m - n),
    "local": lambda n, m, r: ak.masks.local(int(r.integers(2, 100))),
    "local_diagonal": lambda n, m, r: ak.masks.local(1),
    "strided": lambda n, m, r: ak.masks.strided(int(r.integers(2, 10))),
    "strided_1": lambda n, m, r: ak.masks.strided(1),
    "global_tokens": lambda n, m, r: ak.masks.global_tokens(_idx(r, max(n, m))),
    "block_sparse": lambda n, m, r: (lambda b: ak.masks.block_sparse(_layout(r, n, m, b), b))(
        int(r.choice([16, 37, 64]))),
    "sliding_window": lambda n, m, r: ak.masks.local(int(r.integers(2, 100))) & ak.masks.causal(),
    "longformer": lambda n, m, r: ak.masks.local(int(r.integers(2, 50)))
    | ak.masks.global_tokens(_idx(r, min(n, m))),
    "sparse_transformer": lambda n, m, r: (lambda s: ak.masks.local(s) | ak.masks.strided(s))(
        int(r.integers(2, 20))),
    "band": lambda n, m, r: ak.masks.full() & ak.masks.causal(int(r.integers(-20, 20)))
    & ak.masks.local(int(r.integers(1, 150))) & ak.masks.local(int(r.integers(1, 150))),
    "band_kv_cache_window": lambda n, m, r: ak.masks.causal(m - n) & ak.masks.local(
        int(r.integers(1, max(2, abs(m - n) + 40)))),
    "not_causal": lambda n, m, r: ~ak.masks.causal(),
    "not_local_and_causal": lambda n, m, r: ~ak.masks.local(int(r.integers(2, 40)))
    & ak.masks.causal(),
    "double_negation": lambda n, m, r: ~~ak.masks.causal(int(r.integers(-5, 5))),
    "nested": lambda n, m, r: (
        (ak.masks.local(int(r.integers(20, 120))) & ~ak.masks.strided(int(r.integers(2, 5))))
        | ak.masks.global_tokens(_idx(r, min(n, m)))
    ) & ~(ak.masks.block_sparse(_layout(r, n, m, 32), 32) & ak.masks.causal(int(r.integers(-9, 9)))),
}
MASK_SIZES = [(130, 300), (300, 70), (1, 257), (65, 1)]


@pytest.mark.parametrize("n,m", MASK_SIZES)
@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_masks_match_reference(rng, name, n, m, dtype):
    mask = MASKS[name](n, m, rng)
    q, k, v = make_qkv(rng, (2,), n, m, 16, dv=5, dtype=dtype)
    check_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_masks_weights_and_stats_match_reference(rng, name):
    n, m = 130, 300
    mask = MASKS[name](n, m, rng)
    q, k, _ = make_qkv(rng, (2,), n, m, 16)
    w, p = check_weights(q, k, mask=mask)
    allowed = reference.allowed((2,), n, m, mask=mask)
    assert (w[~allowed] == 0).all()
    check_stats(ak.attention_stats(q, k, mask=mask, topk=3), p, topk=3)


def test_mask_with_causal_and_lengths(rng):
    n, m = 200, 300
    q, k, v = make_qkv(rng, (2, 2), n, m, 16)
    mask = ak.masks.local(int(rng.integers(5, 90))) | ak.masks.global_tokens(_idx(rng, n))
    kw = dict(mask=mask, causal=True, q_lengths=rng.integers(0, n + 1, size=2),
              kv_lengths=rng.integers(0, m + 1, size=(2, 2)))
    check_attention(q, k, v, **kw)
    _, p = check_weights(q, k, **kw)
    check_stats(ak.attention_stats(q, k, topk=4, **kw), p, topk=4)


# --------------------------------------------------------------- score_mod
def test_alibi_attention(rng):
    n, m = 70, 260
    q, k, v = make_qkv(rng, (2, HEADS), n, m, 16, kv_batch=(2, 2))
    check_attention(q, k, v, causal=True, score_mod=ALIBI,
                    kv_lengths=rng.integers(1, m + 1, size=2))


def test_alibi_attention_float32(rng):
    n, m = 70, 260
    q, k, v = make_qkv(rng, (HEADS,), n, m, 16, dtype=F32)
    check_attention(q, k, v, score_mod=ALIBI, mask=ak.masks.local(int(rng.integers(5, 100))))


def test_alibi_weights_and_stats(rng):
    n, m = 70, 260
    q, k, _ = make_qkv(rng, (2, HEADS), n, m, 16)
    kw = dict(score_mod=ALIBI, mask=ak.masks.causal(int(rng.integers(-10, 10))),
              q_lengths=rng.integers(1, n + 1, size=2))
    _, p = check_weights(q, k, **kw)
    check_stats(ak.attention_stats(q, k, topk=3, **kw), p, topk=3)


def test_user_python_score_mod(rng):
    # (2, 3, 4) batch: b runs over the 6 flattened leading problems, h over 4 heads;
    # grouped-query k/v with 2 heads.
    n, m = 40, 270
    q, k, v = make_qkv(rng, (2, 3, 4), n, m, 8, kv_batch=(2, 3, 2))
    check_attention(q, k, v, score_mod=user_mod, mask=ak.masks.strided(3) | ak.masks.causal())


def test_user_njit_score_mod(rng):
    n, m = 66, 258
    q, k, v = make_qkv(rng, (2, 3), n, m, 8)
    check_attention(q, k, v, score_mod=njit_mod, causal=True,
                    q_lengths=rng.integers(1, n + 1, size=2))


# --------------------------------------------------------------- return_lse
@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=["f16", "f32", "f64"])
def test_return_lse(rng, dtype):
    n, m = 65, 257
    q, k, v = make_qkv(rng, (2,), n, m, 16, dtype=dtype)
    plain = ak.attention(q, k, v)
    assert isinstance(plain, np.ndarray)
    out, lse = ak.attention(q, k, v, return_lse=True)
    assert_array_equal(out, plain)
    assert lse.dtype == (np.float64 if dtype is F64 else np.float32)
    s, _ = reference.scores(q, k)
    assert_allclose(lse, np.log(np.exp(s).sum(-1)), **TOL_WIDE[dtype])


# ------------------------------------------- online softmax: rising maxima
@pytest.mark.parametrize("jump", [0.5, 12.0, 150.0], ids=["keep-shift", "rescale", "redo"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_rising_row_maxima_match_reference(rng, jump, dtype):
    """Each key tile scores ``jump`` higher than the one before it.

    float32 tiles after a row's first exponentiate against its previous
    maximum: a rise below 8 keeps that shift, a larger one rescales the row,
    and one past 80 redoes the tile unfused. Every path must give the exact
    softmax, with lse, at any magnitude.
    """
    n, m, d = 70, 3 * 256 + 40, 16
    q = np.zeros((2, n, d))
    q[..., 0] = 1.0
    q[..., 1:] = 0.1 * randn(rng, (2, n, d - 1))
    k = randn(rng, (2, m, d))
    k[..., 0] = jump * np.sqrt(d) * (np.arange(m) // 256)  # one score level per key tile
    v = randn(rng, (2, m, d))
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    out, lse = ak.attention(q, k, v, return_lse=True, backend="cpu")
    want, want_lse = reference.attention(q.astype(F64), k.astype(F64), v.astype(F64))
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    # Scores reach 3 * jump: their own rounding (3 * jump * eps) bounds the accuracy.
    tol = TOL[dtype]["atol"] + 3 * jump * np.finfo(dtype).eps
    assert_allclose(out, want, rtol=tol, atol=tol)
    assert_allclose(lse, want_lse, rtol=tol, atol=tol)


# ------------------------------------------------------ layouts and dtypes
def test_non_contiguous_inputs(rng):
    n, m, d = 70, 130, 16
    q = randn(rng, (2, n, 3, d)).transpose(0, 2, 1, 3)  # transposed view
    k = randn(rng, (2, 3, d, 2 * m)).swapaxes(-1, -2)[:, :, ::2]  # strided, transposed
    v = np.asfortranarray(randn(rng, (2, 3, m, 7)))
    v = v[:, :, ::-1]  # negative strides
    assert not any(x.flags.c_contiguous for x in (q, k, v))
    out, lse = check_attention(q, k, v, causal=True)
    c_out, c_lse = ak.attention(*map(np.ascontiguousarray, (q, k, v)), causal=True,
                                return_lse=True)
    assert_array_equal(out, c_out)
    assert_array_equal(lse, c_lse)
    assert_array_equal(ak.attention_weights(q, k), ak.attention_weights(*map(np.ascontiguousarray, (q, k))))


def test_float16_inputs(rng):
    n, m = 130, 300
    q, k, v = make_qkv(rng, (2, 2), n, m, 16, dtype=F16)
    mask = ak.masks.local(int(rng.integers(5, 100)))
    out, lse = check_attention(q, k, v, mask=mask, causal=True)
    assert out.dtype == F16 and lse.dtype == F32
    w, p = check_weights(q, k, mask=mask, causal=True)
    check_stats(ak.attention_stats(q, k, mask=mask, causal=True, topk=2), p, topk=2, dtype=F16)


def test_mixed_dtypes_promote(rng):
    q, k, v = make_qkv(rng, (2,), 30, 40, 8)
    assert ak.attention(q.astype(F32), k, v).dtype == F64
    out = ak.attention(q.astype(F16), k.astype(F32), v.astype(F32))
    assert out.dtype == F32
    check_attention(q.astype(F32), k, v.astype(F16), dtype=F64)


def test_array_likes(rng):
    q, k, v = make_qkv(rng, (), 9, 11, 4)
    assert_allclose(ak.attention(q.tolist(), k.tolist(), v.tolist()), reference.attention(q, k, v)[0],
                    rtol=1e-12, atol=1e-12)


# -------------------------------------------------------- attention_weights
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_weights_rows_sum_to_one_and_match_values(rng, dtype):
    n, m = 130, 300
    q, k, v = make_qkv(rng, (2, 4), n, m, 16, kv_batch=(2, 2), dtype=dtype)
    kw = dict(causal=True, q_lengths=rng.integers(0, n + 1, size=2),
              kv_lengths=rng.integers(0, m + 1, size=2))
    w, p = check_weights(q, k, **kw)
    sums = w.sum(-1, dtype=F64)
    valid = p.sum(-1) > 0
    assert_allclose(sums[valid], 1.0, rtol=0, atol=1e-12 if dtype is F64 else 1e-5)
    assert (w[~valid] == 0).all()
    allowed = reference.allowed((2, 4), n, m, **kw)
    assert (w[~allowed] == 0).all()
    assert (w[allowed & valid[..., None]] > 0).all()
    # weights @ v is the attention output
    vv = np.repeat(v, 2, axis=1).astype(F64)
    assert_allclose(w.astype(F64) @ vv, ak.attention(q, k, v, **kw), **TOL[dtype])


def test_weights_memory_guard(rng):
    n, m = int(rng.integers(5, 60)), int(rng.integers(5, 60))
    q, k, _ = make_qkv(rng, (2, 3), n, m, 8, dtype=F32)
    need = 2 * 3 * n * m * 4
    assert ak.attention_weights(q, k, max_bytes=need).shape == (2, 3, n, m)
    with pytest.raises(ak.WeightsTooLargeError, match="attention_stats") as info:
        ak.attention_weights(q, k, max_bytes=need - 1)
    assert isinstance(info.value, MemoryError) and isinstance(info.value, ak.AttnkitError)
    with ak.set_options(weights_max_bytes=need - 1):
        assert ak.get_options()["weights_max_bytes"] == need - 1
        with pytest.raises(ak.WeightsTooLargeError, match=r"attention_stats.*weights_max_bytes"):
            ak.attention_weights(q, k)
        # an explicit max_bytes overrides the option
        assert ak.attention_weights(q, k, max_bytes=need).shape == (2, 3, n, m)
    assert ak.get_options()["weights_max_bytes"] >= need
    assert ak.attention_weights(q, k).shape == (2, 3, n, m)


# --------------------------------------------------------- attention_stats
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,m", [(1, 1), (65, 257), (300, 130), (2, 3)])
def test_stats_match_reference(rng, dtype, n, m):
    q, k, _ = make_qkv(rng, (2, 3), n, m, 16, dtype=dtype)
    topk = int(rng.integers(1, 6))  # may exceed m: padded with -1 / 0
    kw = dict(causal=bool(rng.integers(2)), kv_lengths=rng.integers(1, m + 1, size=2))
    st = ak.attention_stats(q, k, topk=topk, **kw)
    assert set(st) == {"entropy", "received", "max", "argmax", "distance",
                       "topk_index", "topk_value"}
    p, _ = reference.weights(q, k, **kw)
    check_stats(st, p, topk=topk, dtype=dtype)
    assert st["entropy"].shape == (2, 3, n) and st["received"].shape == (2, 3, m)
    # every valid query hands out exactly 1
    assert_allclose(st["received"].sum(-1), n, rtol=1e-5 if dtype is F32 else 1e-12)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_stats_ties_go_to_the_first_key(rng, dtype):
    """Equal largest probabilities, inside one key tile and across tiles
    (block 64): argmax and top-k keep the earlier key first; a NaN query
    with check_finite=False gives NaN entropy, not a silent 0."""
    m = 200
    k = -np.abs(rng.standard_normal((1, m, 4))).astype(dtype)  # scores <= 0 for q >= 0
    k[0, [150, 10, 130]] = 2.0                                  # three equal maxima
    q = np.ones((1, 2, 4), dtype=dtype)
    q[0, 1] = 0.0                                               # uniform row
    st = ak.attention_stats(q, k, topk=4)
    assert st["argmax"].tolist() == [[10, 0]]
    assert st["topk_index"][0, 0, :3].tolist() == [10, 130, 150]
    assert st["topk_index"][0, 1].tolist() == [0, 1, 2, 3]
    assert st["topk_value"][0, 0, 0] == st["topk_value"][0, 0, 2] == st["max"][0, 0]
    assert_allclose(st["entropy"][0, 1], np.log(m), rtol=1e-6)
    q[0, 0, 1] = np.nan
    bad = ak.attention_stats(q, k, check_finite=False)
    assert np.isnan(bad["entropy"][0, 0]) and not np.isnan(bad["entropy"][0, 1])


def test_stats_default_has_no_topk(rng):
    q, k, _ = make_qkv(rng, (2,), 20, 30, 8)
    st = ak.attention_stats(q, k)
    assert set(st) == {"entropy", "received", "max", "argmax", "distance"}
    check_stats(st, reference.weights(q, k)[0])


@pytest.mark.parametrize(
    "stats,topk,keys",
    [
        (("received",), 0, {"received"}),
        ("entropy", 0, {"entropy"}),
        (("entropy",), 0, {"entropy"}),
        (("max",), 0, {"max", "argmax"}),
        (("distance", "received"), 0, {"distance", "received"}),
        ((), 2, {"topk_index", "topk_value"}),
        ((), 0, set()),
    ],
)
def test_stats_subsets(rng, stats, topk, keys):
    n, m = 70, 260
    q, k, _ = make_qkv(rng, (2,), n, m, 16)
    st = ak.attention_stats(q, k, causal=True, stats=stats, topk=topk)
    assert set(st) == keys
    check_stats(st, reference.weights(q, k, causal=True)[0], topk=topk)


# -------------------------------------------------------- fully masked rows
MASKED_CASES = {
    "not_full": lambda n, m, r: dict(mask=~ak.masks.full()),
    "kv_lengths_0": lambda n, m, r: dict(kv_lengths=0),
    "some_kv_lengths_0": lambda n, m, r: dict(kv_lengths=np.array([0, int(r.integers(1, m + 1))])),
    "q_lengths": lambda n, m, r: dict(q_lengths=r.integers(0, n, size=2)),
    "causal_negative_offset": lambda n, m, r: dict(mask=ak.masks.causal(-int(r.integers(1, n)))),
    "global_and_not_global": lambda n, m, r: dict(
        mask=(lambda g: g & ~g)(ak.masks.global_tokens(_idx(r, n)))),
    "block_rows_empty": lambda n, m, r: dict(
        mask=ak.masks.block_sparse(np.arange(-(-n // 32))[:, None] % 2 == np.zeros((1, -(-m // 32))), 32)),
}


@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("case", sorted(MASKED_CASES))
def test_fully_masked_rows(rng, case, dtype):
    n, m, topk = 130, 300, 3
    q, k, v = make_qkv(rng, (2, 2), n, m, 16, dtype=dtype)
    kw = MASKED_CASES[case](n, m, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, lse = ak.attention(q, k, v, return_lse=True, **kw)
        w = ak.attention_weights(q, k, **kw)
        st = ak.attention_stats(q, k, topk=topk, **kw)
    p, want_lse = reference.weights(q, k, **kw)
    empty = ~np.isfinite(want_lse)
    assert empty.any()  # the case does produce fully masked rows
    for arr in (out, lse, w, *st.values()):
        assert not np.isnan(arr).any()
    assert (out[empty] == 0).all()
    assert (lse[empty] == -np.inf).all()
    assert (w[empty] == 0).all()
    assert (st["entropy"][empty] == 0).all()
    assert (st["max"][empty] == 0).all()
    assert (st["argmax"][empty] == -1).all()
    assert (st["distance"][empty] == 0).all()
    assert (st["topk_index"][empty] == -1).all() and (st["topk_value"][empty] == 0).all()
    # the other rows are still right
    check_attention(q, k, v, **kw)
    check_stats(st, p, topk=topk, dtype=dtype)


# ------------------------------------------------------------- determinism
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_bit_identical_runs(rng, dtype):
    n, m = 150, 520
    q, k, v = make_qkv(rng, (2, 4), n, m, 32, kv_batch=(2, 2), dtype=dtype)
    kw = dict(mask=ak.masks.local(int(rng.integers(50, 300))) | ak.masks.global_tokens([0]),
              causal=True, kv_lengths=rng.integers(m // 2, m + 1, size=2))
    runs = [
        (ak.attention(q, k, v, return_lse=True, **kw), ak.attention_weights(q, k, **kw),
         ak.attention_stats(q, k, topk=4, **kw))
        for _ in range(2)
    ]
    (o1, l1), w1, s1 = runs[0]
    (o2, l2), w2, s2 = runs[1]
    assert o1.tobytes() == o2.tobytes() and l1.tobytes() == l2.tobytes()
    assert w1.tobytes() == w2.tobytes()
    assert s1.keys() == s2.keys()
    for name in s1:
        assert s1[name].tobytes() == s2[name].tobytes(), name
