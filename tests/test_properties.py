"""Hypothesis properties of the attention functions.

Hypothesis draws the problem (shapes, dtype, a seed for the array values, masks);
the arrays themselves come from ``np.random.default_rng(seed)`` so they are
never zeros and shrink well. Shapes stay small (n, m <= 40, d <= 16).
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import attnkit as ak
import reference

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}


@st.composite
def problems(draw, *, max_len=40):
    """(q, k, v, dtype) with random batch dims, GQA heads and sizes."""
    seed = draw(st.integers(0, 2**63 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    n = draw(st.integers(1, max_len))
    m = draw(st.integers(1, max_len))
    d = draw(st.integers(1, 16))
    dv = draw(st.integers(1, 16))
    kv_batch = batch
    if batch and draw(st.booleans()):  # grouped-query: fewer kv heads
        heads = batch[-1] * draw(st.integers(1, 3))
        batch = batch[:-1] + (heads,)
    rng = np.random.default_rng(seed)
    # |scores| stay far below float32's exp range (the kernels flush exp(x < -87) to 0)
    scale = draw(st.floats(0.05, 1.5)) * (1 if draw(st.booleans()) else -1)
    q = rng.standard_normal(batch + (n, d)).astype(dtype)
    k = rng.standard_normal(kv_batch + (m, d)).astype(dtype)
    v = rng.standard_normal(kv_batch + (m, dv)).astype(dtype)
    return q, k, v, dtype, scale, rng


@st.composite
def masks(draw, n, m):
    """Random mask expressions over every mask kind."""
    def leaf():
        kind = draw(st.sampled_from(["causal", "local", "strided", "global", "block", "full"]))
        if kind == "causal":
            return ak.masks.causal(draw(st.integers(-n, m)))
        if kind == "local":
            return ak.masks.local(draw(st.integers(1, 20)))
        if kind == "strided":
            return ak.masks.strided(draw(st.integers(1, 6)))
        if kind == "global":
            return ak.masks.global_tokens(draw(st.lists(st.integers(0, max(n, m) - 1), min_size=1, max_size=3)))
        if kind == "block":
            block = draw(st.integers(1, 8))
            rows, cols = -(-n // block), -(-m // block)
            bits = draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
            return ak.masks.block_sparse(np.array(bits).reshape(rows, cols), block)
        return ak.masks.full()

    def expr(depth):
        if depth == 0 or draw(st.booleans()):
            return leaf()
        op = draw(st.sampled_from(["&", "|", "~"]))
        if op == "~":
            return ~expr(depth - 1)
        a, b = expr(depth - 1), expr(depth - 1)
        return a & b if op == "&" else a | b

    return expr(3)


@SETTINGS
@given(problems())
def test_query_permutation_equivariance(problem):
    q, k, v, dtype, scale, rng = problem
    perm = rng.permutation(q.shape[-2])
    out, lse = ak.attention(q, k, v, scale=scale, return_lse=True)
    pout, plse = ak.attention(q[..., perm, :], k, v, scale=scale, return_lse=True)
    assert_allclose(pout, out[..., perm, :], **TOL[dtype])
    assert_allclose(plse, lse[..., perm], **TOL[dtype])
    st_ = ak.attention_stats(q, k, scale=scale, stats=("entropy", "max"))
    pst = ak.attention_stats(q[..., perm, :], k, scale=scale, stats=("entropy", "max"))
    assert_allclose(pst["entropy"], st_["entropy"][..., perm], **TOL[dtype])
    assert_allclose(pst["max"], st_["max"][..., perm], **TOL[dtype])


@SETTINGS
@given(problems())
def test_key_value_permutation_invariance(problem):
    q, k, v, dtype, scale, rng = problem
    perm = rng.permutation(k.shape[-2])
    out, lse = ak.attention(q, k, v, scale=scale, return_lse=True)
    pout, plse = ak.attention(q, k[..., perm, :], v[..., perm, :], scale=scale, return_lse=True)
    assert_allclose(pout, out, **TOL[dtype])
    assert_allclose(plse, lse, **TOL[dtype])
    # the weights and the attention each key receives move with the keys
    w = ak.attention_weights(q, k, scale=scale)
    pw = ak.attention_weights(q, k[..., perm, :], scale=scale)
    assert_allclose(pw, w[..., perm], **TOL[dtype])
    rec = ak.attention_stats(q, k, scale=scale, stats="received")["received"]
    prec = ak.attention_stats(q, k[..., perm, :], scale=scale, stats="received")["received"]
    assert_allclose(prec, rec[..., perm], **TOL[dtype])


@SETTINGS
@given(problems(), st.data())
def test_weights_rows_sum_to_one(problem, data):
    q, k, v, dtype, scale, rng = problem
    n, m = q.shape[-2], k.shape[-2]
    mask = data.draw(masks(n, m))
    causal = data.draw(st.booleans())
    w = ak.attention_weights(q, k, scale=scale, mask=mask, causal=causal)
    allowed = reference.allowed(w.shape[:-2], n, m, mask=mask, causal=causal)
    assert (w[~allowed] == 0).all()
    assert (w >= 0).all() and not np.isnan(w).any()
    sums = w.sum(-1, dtype=np.float64)
    has_key = allowed.any(-1)
    assert_allclose(sums[has_key], 1.0, rtol=0, atol=TOL[dtype]["atol"])
    assert (sums[~has_key] == 0).all()
    # and they are the weights of the output
    out = ak.attention(q, k, v, scale=scale, mask=mask, causal=causal)
    _, _, vv, _ = reference.expand_heads(q, k, v)
    assert_allclose(out, w.astype(np.float64) @ vv, **TOL[dtype])


@SETTINGS
@given(problems(), st.data())
def test_stats_agree_with_weights(problem, data):
    q, k, v, dtype, scale, rng = problem
    n, m = q.shape[-2], k.shape[-2]
    mask = data.draw(masks(n, m))
    topk = data.draw(st.integers(0, 4))
    kw = dict(scale=scale, mask=mask)
    p = ak.attention_weights(q, k, **kw).astype(np.float64)
    stats = ak.attention_stats(q, k, topk=topk, **kw)
    want = reference.stats(p, topk)
    tol = TOL[dtype]
    for name in ("entropy", "received", "max", "distance"):
        assert_allclose(stats[name], want[name], **tol, err_msg=name)
    masked = want["max"] == 0
    assert (stats["argmax"][masked] == -1).all()
    picked = np.take_along_axis(p, np.maximum(stats["argmax"], 0)[..., None], -1)[..., 0]
    assert_allclose(picked[~masked], want["max"][~masked], **tol)
    if topk:
        assert_allclose(stats["topk_value"], want["topk_value"], **tol)
        present = want["topk_value"] > 0
        assert (stats["topk_index"][~present] == -1).all()
        picked = np.take_along_axis(p, np.maximum(stats["topk_index"], 0), -1)
        assert_allclose(picked[present], stats["topk_value"][present], **tol)


@SETTINGS
@given(problems(), st.data())
def test_random_masks_and_lengths_match_reference(problem, data):
    q, k, v, dtype, scale, rng = problem
    n, m = q.shape[-2], k.shape[-2]
    mask = data.draw(masks(n, m))
    batch = reference.expand_heads(q, k)[3]
    prefix = batch[: data.draw(st.integers(0, len(batch)))]
    q_lengths = rng.integers(0, n + 1, size=prefix) if data.draw(st.booleans()) else None
    kv_lengths = rng.integers(0, m + 1, size=prefix) if data.draw(st.booleans()) else None
    kw = dict(scale=scale, mask=mask, q_lengths=q_lengths, kv_lengths=kv_lengths)
    out, lse = ak.attention(q, k, v, return_lse=True, **kw)
    want, want_lse = reference.attention(q, k, v, **kw)
    assert_allclose(out, want, **TOL[dtype])
    assert_array_equal(np.isfinite(lse), np.isfinite(want_lse))
    fin = np.isfinite(want_lse)
    assert_allclose(lse[fin], want_lse[fin], **TOL[dtype])
    assert (out[~fin] == 0).all()


@SETTINGS
@given(problems())
def test_batch_elements_are_independent(problem):
    """Attention of a batch equals attention of each element alone."""
    q, k, v, dtype, scale, rng = problem
    assume(q.ndim >= 3 and k.ndim >= 3 and q.shape[0] == k.shape[0])
    out = ak.attention(q, k, v, scale=scale, causal=True)
    i = int(rng.integers(q.shape[0]))
    assert_allclose(ak.attention(q[i], k[i], v[i], scale=scale, causal=True), out[i], **TOL[dtype])
