"""attnkit.variants: multi-head, additive (Bahdanau), Luong and linear attention.

Each variant is checked against a naive float64 NumPy reference written out in
this file (explicit per-head / per-pair loops), on fresh random inputs from the
``rng`` fixture, with ragged sizes, n = 1 and m = 1. multi_head_attention is
also checked against golden values from torch.nn.MultiheadAttention
(tests/fixtures/mha_torch.npz, made by tests/fixtures/make_mha_fixture.py; torch
is not needed here).

Compilation budget: no score_mod is used (each one re-jits the attention
kernels), so every ak.attention call hits the disk-cached kernels.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import attnkit as ak
import reference

F16, F32, F64 = np.float16, np.float32, np.float64
TOL = {F64: dict(rtol=1e-10, atol=1e-10), F32: dict(rtol=2e-5, atol=2e-5)}
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mha_torch.npz"


def randn(rng, *shape, scale=1.0, dtype=F64):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# ------------------------------------------------------------- references
def ref_softmax(scores, allowed):
    """Row softmax over allowed entries: masked entries 0, fully masked rows 0."""
    s = np.where(allowed, scores, -np.inf)
    top = s.max(axis=-1, keepdims=True, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(allowed, np.exp(s - top), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def key_allowed(n, m, *, causal=False, mask=None, kv_len=None):
    ok = np.ones((n, m), dtype=bool)
    if causal:
        ok &= np.arange(m)[None, :] <= np.arange(n)[:, None]
    if mask is not None:
        ok &= mask.dense(n, m)
    if kv_len is not None:
        ok &= (np.arange(m) < kv_len)[None, :]
    return ok


def ref_mha(x, ctx, p, n_heads, n_kv_heads, *, causal=False, lengths=None, ctx_lengths=None):
    """Multi-head attention for x (B, n, e) over ctx (B, m, e_ctx), head by head.

    ``ctx=None`` is self-attention: the keys come from x and ``lengths`` pads them too.
    """
    self_attention = ctx is None
    x = np.asarray(x, F64)
    ctx = x if self_attention else np.asarray(ctx, F64)
    p = {key: None if val is None else np.asarray(val, F64) for key, val in p.items()}
    dh = p["w_q"].shape[1] // n_heads
    dv = p["w_v"].shape[1] // n_kv_heads
    group = n_heads // n_kv_heads
    batch, n = x.shape[:2]
    m = ctx.shape[1]
    out = np.zeros((batch, n, p["w_o"].shape[1]))
    weights = np.zeros((batch, n_heads, n, m))
    for b in range(batch):
        q_len = n if lengths is None else lengths[b]
        if self_attention:
            kv_len = q_len
        else:
            kv_len = m if ctx_lengths is None else ctx_lengths[b]
        heads = []
        for h in range(n_heads):
            g = h // group
            cq = slice(h * dh, (h + 1) * dh)
            ck, cv = slice(g * dh, (g + 1) * dh), slice(g * dv, (g + 1) * dv)
            qh = x[b] @ p["w_q"][:, cq] + (0 if p["b_q"] is None else p["b_q"][cq])
            kh = ctx[b] @ p["w_k"][:, ck] + (0 if p["b_k"] is None else p["b_k"][ck])
            vh = ctx[b] @ p["w_v"][:, cv] + (0 if p["b_v"] is None else p["b_v"][cv])
            allowed = key_allowed(n, m, causal=causal, kv_len=kv_len)
            allowed[q_len:] = False
            w = ref_softmax(qh @ kh.T / math.sqrt(dh), allowed)
            weights[b, h] = w
            heads.append(w @ vh)
        out[b] = np.concatenate(heads, axis=-1) @ p["w_o"] + (0 if p["b_o"] is None else p["b_o"])
        out[b, q_len:] = 0.0
    return out, weights


def ref_additive_scores(query, keys, w_q, w_k, v_a):
    """score[i, j] = v_a . tanh(q_i @ w_q + k_j @ w_k) for one (n, dq) x (m, dk) problem."""
    n, m = query.shape[0], keys.shape[0]
    s = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            s[i, j] = v_a @ np.tanh(query[i] @ w_q + keys[j] @ w_k)
    return s


def ref_pairwise(query, keys, values, score_fn, *, mask=None, kv_lengths=None):
    """Context and weights for (B, n, dq) queries given a per-problem score function."""
    query, keys, values = (np.asarray(a, F64) for a in (query, keys, values))
    batch, n = query.shape[:2]
    m = keys.shape[1]
    ctx = np.zeros((batch, n, values.shape[-1]))
    weights = np.zeros((batch, n, m))
    for b in range(batch):
        kv_len = None if kv_lengths is None else kv_lengths[b]
        w = ref_softmax(score_fn(query[b], keys[b]), key_allowed(n, m, mask=mask, kv_len=kv_len))
        weights[b] = w
        ctx[b] = w @ values[b]
    return ctx, weights


def ref_phi(x, name):
    x = np.asarray(x, F64)
    if name == "elu1":
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
    if name == "relu":
        return np.maximum(x, 0.0)
    return softplus2(x)


def softplus2(x):
    """A user feature map with more features than inputs: [softplus(x), softplus(-x)]."""
    return np.concatenate([np.logaddexp(0.0, x), np.logaddexp(0.0, -x)], axis=-1)


def ref_linear(q, k, v, feature, *, causal=False, eps=1e-6):
    """Quadratic form of linear attention: A = phi(q) phi(k)^T, out = A v / (A 1 + eps)."""
    fq, fk = ref_phi(q, feature), ref_phi(k, feature)
    a = fq @ np.swapaxes(fk, -1, -2)
    if causal:
        a = a * np.tri(a.shape[-2], a.shape[-1])
    w = a / (a.sum(-1, keepdims=True) + eps)
    return w @ np.asarray(v, F64), w


# ----------------------------------------------------- multi-head attention
def mha_params(rng, e, e_ctx, n_heads, n_kv_heads, d_head, d_v, e_out, *, bias=True, dtype=F64):
    p = {
        "w_q": randn(rng, e, n_heads * d_head, scale=e ** -0.5, dtype=dtype),
        "w_k": randn(rng, e_ctx, n_kv_heads * d_head, scale=e_ctx ** -0.5, dtype=dtype),
        "w_v": randn(rng, e_ctx, n_kv_heads * d_v, scale=e_ctx ** -0.5, dtype=dtype),
        "w_o": randn(rng, n_heads * d_v, e_out, scale=(n_heads * d_v) ** -0.5, dtype=dtype),
    }
    for name, size in (("b_q", n_heads * d_head), ("b_k", n_kv_heads * d_head),
                       ("b_v", n_kv_heads * d_v), ("b_o", e_out)):
        p[name] = randn(rng, size, scale=0.5, dtype=dtype) if bias else None
    return p


def call_mha(x, p, n_heads, **kw):
    return ak.multi_head_attention(
        x, p["w_q"], p["w_k"], p["w_v"], p["w_o"], n_heads,
        b_q=p["b_q"], b_k=p["b_k"], b_v=p["b_v"], b_o=p["b_o"], **kw,
    )


@pytest.fixture(scope="module")
def torch_golden():
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def golden_params(g, prefix, dtype):
    return {name: g[f"{prefix}_{name}"].astype(dtype)
            for name in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")}


def test_torch_fixture_is_small_and_complete(torch_golden):
    assert FIXTURE.stat().st_size < 100_000
    g = torch_golden
    assert g["x"].shape == (2, 5, 16) and g["context"].shape == (2, 7, 10)
    assert g["self_w_q"].shape == (16, 16) and g["cross_w_k"].shape == (10, 16)
    # Biases are random, not torch's zero initialisation, so the bias path is tested.
    assert np.abs(g["self_b_q"]).min() > 0 and np.abs(g["cross_b_o"]).min() > 0
    for case in ("self", "causal", "padded", "cross"):
        assert_allclose(g[f"{case}_weights"].sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("case", ["self", "causal", "padded", "cross"])
def test_mha_matches_torch(torch_golden, case, dtype):
    g = torch_golden
    heads = int(g["n_heads"])
    x = g["x"].astype(dtype)
    prefix = "cross" if case == "cross" else "self"
    p = golden_params(g, prefix, dtype)
    kw = {
        "self": {}, "causal": dict(causal=True), "cross": dict(context=g["context"].astype(dtype)),
        "padded": dict(q_lengths=g["lengths"]),
    }[case]
    out, weights = call_mha(x, p, heads, return_weights=True, **kw)
    assert out.dtype == dtype and weights.dtype == dtype
    want_out, want_w = g[f"{case}_out"], g[f"{case}_weights"]
    assert out.shape == want_out.shape and weights.shape == want_w.shape
    tol = dict(rtol=1e-10, atol=1e-10) if dtype is F64 else dict(rtol=1e-5, atol=1e-5)
    if case == "padded":
        # torch masks only the keys; attnkit also zeroes the padded query rows.
        for b, length in enumerate(g["lengths"]):
            assert_allclose(out[b, :length], want_out[b, :length], **tol)
            assert_allclose(weights[b, :, :length], want_w[b, :, :length], **tol)
            assert (out[b, length:] == 0).all() and (weights[b, :, length:] == 0).all()
            assert (weights[b, :, :, length:] == 0).all()
    else:
        assert_allclose(out, want_out, **tol)
        assert_allclose(weights, want_w, **tol)
    if case == "causal":
        assert (weights[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0).all()


@pytest.mark.parametrize(
    "n, m, heads, kv_heads, cross",
    [(1, 1, 4, 4, True), (1, 9, 2, 2, True), (11, 1, 3, 3, True), (37, 37, 6, 6, False),
     (29, 41, 6, 3, True), (23, 23, 6, 2, False), (17, 13, 4, 1, True)],
)
def test_mha_matches_reference(rng, n, m, heads, kv_heads, cross):
    batch, e = 2, int(rng.integers(5, 20))
    e_ctx = int(rng.integers(3, 12)) if cross else e
    d_head, d_v, e_out = (int(s) for s in rng.integers(2, 9, size=3))
    p = mha_params(rng, e, e_ctx, heads, kv_heads, d_head, d_v, e_out, bias=bool(n % 2))
    x = randn(rng, batch, n, e)
    ctx = randn(rng, batch, m, e_ctx) if cross else x
    kw = dict(context=ctx) if cross else {}
    causal = not cross
    out, weights = call_mha(x, p, heads, n_kv_heads=kv_heads, causal=causal,
                            return_weights=True, **kw)
    want, want_w = ref_mha(x, ctx if cross else None, p, heads, kv_heads, causal=causal)
    assert out.shape == (batch, n, e_out) and weights.shape == (batch, heads, n, m)
    assert_allclose(out, want, **TOL[F64])
    assert_allclose(weights, want_w, **TOL[F64])
    assert_allclose(weights.sum(-1), 1.0, rtol=1e-12)


def test_mha_lengths_and_gqa_weights(rng):
    batch, n, m, e, e_ctx, heads, kv_heads = 3, 19, 26, 12, 7, 6, 2
    p = mha_params(rng, e, e_ctx, heads, kv_heads, 4, 5, 9)
    x, ctx = randn(rng, batch, n, e), randn(rng, batch, m, e_ctx)
    lengths = rng.integers(1, n + 1, size=batch)
    lengths[0] = n
    ctx_lengths = rng.integers(1, m + 1, size=batch)
    out, w = call_mha(x, p, heads, n_kv_heads=kv_heads, context=ctx, q_lengths=lengths,
                      kv_lengths=ctx_lengths, return_weights=True)
    want, want_w = ref_mha(x, ctx, p, heads, kv_heads, lengths=lengths, ctx_lengths=ctx_lengths)
    assert_allclose(out, want, **TOL[F64])
    assert_allclose(w, want_w, **TOL[F64])
    for b in range(batch):
        assert (out[b, lengths[b]:] == 0).all()
        assert (w[b, :, :, ctx_lengths[b]:] == 0).all()
        assert_allclose(w[b, :, :lengths[b]].sum(-1), 1.0, rtol=1e-12)
    # Query heads of one group share their kv head: same keys, different queries.
    assert not np.allclose(w[:, 0], w[:, 1])


def test_mha_self_attention_lengths_pad_keys_too(rng):
    batch, n, e, heads = 2, 15, 8, 2
    p = mha_params(rng, e, e, heads, heads, 4, 4, e)
    x = randn(rng, batch, n, e)
    lengths = np.array([n, int(rng.integers(1, n))])
    out, w = call_mha(x, p, heads, q_lengths=lengths, causal=True, return_weights=True)
    want, want_w = ref_mha(x, None, p, heads, heads, causal=True, lengths=lengths)
    assert_allclose(out, want, **TOL[F64])
    assert_allclose(w, want_w, **TOL[F64])
    assert (w[1, :, :, lengths[1]:] == 0).all()


def test_mha_self_attention_kv_lengths_alone_pad_only_the_keys(rng):
    batch, n, e, heads = 2, 13, 8, 2
    p = mha_params(rng, e, e, heads, heads, 4, 4, e)
    x = randn(rng, batch, n, e)
    lengths = np.array([n, int(rng.integers(1, n))])
    out, w = call_mha(x, p, heads, kv_lengths=lengths, return_weights=True)
    both, w_both = call_mha(x, p, heads, q_lengths=lengths, return_weights=True)
    want, want_w = ref_mha(x, None, p, heads, heads, lengths=lengths)
    for b, length in enumerate(lengths):
        # the valid queries see the same keys either way
        assert_allclose(out[b, :length], want[b, :length], **TOL[F64])
        assert_allclose(w[b, :, :length], want_w[b, :, :length], **TOL[F64])
        assert_array_equal(both[b, length:], 0.0)
        # without q_lengths the padded queries still attend, to the valid keys only
        assert (w[b, :, :, length:] == 0).all()
        assert_allclose(w[b].sum(-1), 1.0, rtol=1e-12)
    assert_allclose(both, want, **TOL[F64])
    assert_allclose(w_both, want_w, **TOL[F64])


def test_mha_stats_and_both_flags(rng):
    batch, n, m, e, heads = 2, 21, 33, 10, 2
    p = mha_params(rng, e, 6, heads, heads, 3, 4, 5)
    x, ctx = randn(rng, batch, n, e), randn(rng, batch, m, 6)
    out, w, st = call_mha(x, p, heads, context=ctx, return_weights=True, return_stats=True)
    out2, st2 = call_mha(x, p, heads, context=ctx, return_stats=True)
    assert_array_equal(out, out2)
    want = reference.stats(ref_mha(x, ctx, p, heads, heads)[1])
    for name in ("entropy", "received", "max", "distance"):
        assert st[name].shape == want[name].shape
        assert_allclose(st[name], want[name], rtol=1e-9, atol=1e-9)
        assert_allclose(st2[name], want[name], rtol=1e-9, atol=1e-9)
    assert_array_equal(st["argmax"], w.argmax(-1))


def test_mha_unbatched_shared_context_float32(rng):
    n, m, e, heads = 9, 14, 8, 4
    p = mha_params(rng, e, e, heads, heads, 2, 3, 6, dtype=F32)
    x, ctx = randn(rng, n, e, dtype=F32), randn(rng, m, e, dtype=F32)
    out = call_mha(x, p, heads, context=ctx)
    assert out.shape == (n, 6) and out.dtype == F32
    want, _ = ref_mha(x[None], ctx[None], p, heads, heads)
    assert_allclose(out, want[0], **TOL[F32])
    # A context shared by a batch of inputs broadcasts.
    xb = randn(rng, 3, n, e, dtype=F32)
    outb = call_mha(xb, p, heads, context=ctx)
    wantb, _ = ref_mha(xb, np.broadcast_to(ctx, (3, m, e)), p, heads, heads)
    assert_allclose(outb, wantb, **TOL[F32])


def test_mha_float16_computes_in_float32(rng):
    n, e, heads = 12, 8, 2
    p = mha_params(rng, e, e, heads, heads, 4, 4, e, dtype=F16)
    x = randn(rng, 2, n, e, dtype=F16)
    out = call_mha(x, p, heads, causal=True)
    assert out.dtype == F32
    want, _ = ref_mha(x, None, p, heads, heads, causal=True)  # the float16 values, exactly
    assert_allclose(out, want, **TOL[F32])


def test_mha_mask_passes_through(rng):
    n, e, heads = 16, 8, 2
    p = mha_params(rng, e, e, heads, heads, 4, 4, e)
    x = randn(rng, n, e)
    window = ak.masks.local(3)
    w = call_mha(x, p, heads, mask=window, return_weights=True)[1]
    assert_array_equal(w > 0, np.broadcast_to(window.dense(n, n), w.shape))


# ------------------------------------------------------- additive attention
ADDITIVE_SIZES = [(1, 1), (1, 9), (7, 1), (13, 29), (40, 17)]


@pytest.mark.parametrize("n, m", ADDITIVE_SIZES)
def test_additive_matches_reference(rng, n, m):
    batch, dq, dk, dv, hidden = 2, 6, 5, 7, int(rng.integers(3, 12))
    query, keys = randn(rng, batch, n, dq), randn(rng, batch, m, dk)
    values = randn(rng, batch, m, dv)
    w_q, w_k, v_a = randn(rng, dq, hidden), randn(rng, dk, hidden), randn(rng, hidden)
    kv_lengths = np.array([m, int(rng.integers(1, m + 1))])
    ctx, w = ak.additive_attention(query, keys, values, w_q, w_k, v_a, kv_lengths=kv_lengths,
                                   return_weights=True)
    want_ctx, want_w = ref_pairwise(
        query, keys, values, lambda q, k: ref_additive_scores(q, k, w_q, w_k, v_a),
        kv_lengths=kv_lengths)
    assert ctx.shape == (batch, n, dv) and w.shape == (batch, n, m)  # decoder steps x source
    assert_allclose(ctx, want_ctx, **TOL[F64])
    assert_allclose(w, want_w, **TOL[F64])
    assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    assert (w[1, :, kv_lengths[1]:] == 0).all()


def test_additive_mask_fully_masked_rows_and_float32(rng):
    batch, n, m, d, hidden = 3, 12, 10, 4, 8
    query, keys = randn(rng, batch, n, d, dtype=F32), randn(rng, batch, m, d, dtype=F32)
    w_q, w_k, v_a = (randn(rng, *s, dtype=F32) for s in ((d, hidden), (d, hidden), (hidden,)))
    mask = ak.masks.causal(offset=-2)  # queries 0 and 1 see no key at all
    kv_lengths = np.array([m, 5, 0])  # the last source sentence is empty
    ctx, w = ak.additive_attention(query, keys, keys, w_q, w_k, v_a, mask=mask,
                                   kv_lengths=kv_lengths, return_weights=True)
    assert ctx.dtype == F32 and w.dtype == F32
    want_ctx, want_w = ref_pairwise(
        query, keys, keys, lambda q, k: ref_additive_scores(q, k, w_q, w_k, v_a),
        mask=mask, kv_lengths=kv_lengths)
    assert_allclose(ctx, want_ctx, **TOL[F32])
    assert_allclose(w, want_w, **TOL[F32])
    assert not np.isnan(w).any() and not np.isnan(ctx).any()
    assert (w[:, :2] == 0).all() and (ctx[:, :2] == 0).all()
    assert (w[2] == 0).all() and (ctx[2] == 0).all()
    allowed = mask.dense(n, m) & (np.arange(m) < 5)
    assert (w[1][~allowed] == 0).all()
    assert_allclose(w[0, 2:].sum(-1), 1.0, rtol=1e-6)


def test_additive_broadcasts_shared_query_weights(rng):
    # One set of decoder states against a batch of source sentences.
    n, m, d, hidden = 5, 8, 3, 6
    query, keys = randn(rng, n, d), randn(rng, 4, m, d)
    w_q, w_k, v_a = randn(rng, d, hidden), randn(rng, d, hidden), randn(rng, hidden)
    ctx, w = ak.additive_attention(query, keys, keys, w_q, w_k, v_a, return_weights=True)
    assert ctx.shape == (4, n, d) and w.shape == (4, n, m)
    for b in range(4):
        c1, w1 = ak.additive_attention(query, keys[b], keys[b], w_q, w_k, v_a,
                                       return_weights=True)
        assert_allclose(w[b], w1, rtol=1e-13, atol=1e-15)
        assert_allclose(ctx[b], c1, rtol=1e-13, atol=1e-15)


def test_additive_and_luong_return_the_output_alone_by_default(rng):
    n, m, d, dv, hidden = 5, 7, 4, 3, 6
    q, k, v = randn(rng, 2, n, d), randn(rng, 2, m, d), randn(rng, 2, m, dv)
    w_q, w_k, v_a = randn(rng, d, hidden), randn(rng, d, hidden), randn(rng, hidden)
    out = ak.additive_attention(q, k, v, w_q, w_k, v_a, kv_lengths=[m, 4])
    out2, w = ak.additive_attention(q, k, v, w_q, w_k, v_a, kv_lengths=[m, 4],
                                    return_weights=True)
    assert isinstance(out, np.ndarray) and out.shape == (2, n, dv) and w.shape == (2, n, m)
    assert_array_equal(out, out2)
    for score, kw in (("dot", {}), ("general", dict(w=randn(rng, d, d))),
                      ("concat", dict(w_c=randn(rng, 2 * d, hidden), v_a=v_a))):
        out = ak.luong_attention(q, k, v, score=score, kv_lengths=[m, 4], **kw)
        out2, w = ak.luong_attention(q, k, v, score=score, kv_lengths=[m, 4],
                                     return_weights=True, **kw)
        assert isinstance(out, np.ndarray) and out.shape == (2, n, dv) and w.shape == (2, n, m)
        assert_array_equal(out, out2)


def test_luong_dot_weights_only_when_asked(rng):
    # "dot" and "general" stream the output (ak.attention): the weights budget binds
    # only when the weights are asked for. The additive kernel forms them either way.
    q, k = randn(rng, 3, 40, 4), randn(rng, 3, 50, 4)
    w_q, w_k, v_a = randn(rng, 4, 5), randn(rng, 4, 5), randn(rng, 5)
    with ak.set_options(weights_max_bytes=3 * 40 * 50 * 8 - 1):
        out = ak.luong_attention(q, k, k)
        with pytest.raises(ak.WeightsTooLargeError, match=r"attention_weights: the attention "
                           r"weights need"):
            ak.luong_attention(q, k, k, return_weights=True)
        with pytest.raises(ak.WeightsTooLargeError, match=r"additive_attention: the attention "
                           r"weights need"):
            ak.additive_attention(q, k, k, w_q, w_k, v_a)
    assert_allclose(out, ref_pairwise(q, k, k, lambda a, b: a @ b.T)[0], **TOL[F64])


# ---------------------------------------------------------- Luong attention
@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("n, m", [(1, 1), (1, 12), (9, 1), (31, 22)])
def test_luong_matches_reference(rng, score, n, m):
    batch, dq, dv = 2, 6, 5
    dk = dq if score == "dot" else 4
    query, keys = randn(rng, batch, n, dq), randn(rng, batch, m, dk)
    values = randn(rng, batch, m, dv)
    kv_lengths = np.array([int(rng.integers(1, m + 1)), m])
    kw, fn = {}, None
    if score == "dot":
        fn = lambda q, k: q @ k.T  # noqa: E731
    elif score == "general":
        kw["w"] = w_a = randn(rng, dq, dk)
        fn = lambda q, k: q @ w_a @ k.T  # noqa: E731
    else:
        hidden = 7
        kw["w_c"] = w_c = randn(rng, dq + dk, hidden)
        kw["v_a"] = v_a = randn(rng, hidden)

        def fn(q, k):
            s = np.empty((q.shape[0], k.shape[0]))
            for i in range(q.shape[0]):
                for j in range(k.shape[0]):
                    s[i, j] = v_a @ np.tanh(np.concatenate([q[i], k[j]]) @ w_c)
            return s
    ctx, w = ak.luong_attention(query, keys, values, score=score, kv_lengths=kv_lengths,
                                return_weights=True, **kw)
    want_ctx, want_w = ref_pairwise(query, keys, values, fn, kv_lengths=kv_lengths)
    assert ctx.shape == (batch, n, dv) and w.shape == (batch, n, m)
    assert_allclose(ctx, want_ctx, **TOL[F64])
    assert_allclose(w, want_w, **TOL[F64])
    assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    assert (w[0, :, kv_lengths[0]:] == 0).all()


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
def test_luong_mask_float32(rng, score):
    n, m, d = 14, 11, 8
    query, keys = randn(rng, n, d, dtype=F32), randn(rng, m, d, dtype=F32)
    kw = {"dot": {}, "general": dict(w=randn(rng, d, d, scale=0.3, dtype=F32)),
          "concat": dict(w_c=randn(rng, 2 * d, 5, dtype=F32), v_a=randn(rng, 5, dtype=F32))}[score]
    mask = ak.masks.causal(offset=-3) | ak.masks.global_tokens([0])
    ctx, w = ak.luong_attention(query, keys, keys, score=score, mask=mask, return_weights=True,
                                **kw)
    assert ctx.dtype == F32 and w.dtype == F32
    allowed = mask.dense(n, m)
    assert (w[~allowed] == 0).all()
    assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert_allclose(ctx, w.astype(F64) @ keys.astype(F64), rtol=1e-5, atol=1e-5)
    if score == "dot":
        want = ref_softmax(query.astype(F64) @ keys.astype(F64).T, allowed)
        assert_allclose(w, want, **TOL[F32])


# --------------------------------------------------------- linear attention
@pytest.mark.parametrize("feature", ["elu1", "relu", "softplus2"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n, m", [(1, 1), (1, 10), (8, 1), (33, 33), (27, 19)])
def test_linear_matches_reference(rng, feature, causal, n, m):
    shape = (2, 3)
    d, dv = 5, 4
    q, k, v = randn(rng, *shape, n, d), randn(rng, *shape, m, d), randn(rng, *shape, m, dv)
    fmap = softplus2 if feature == "softplus2" else feature
    out, w = ak.linear_attention(q, k, v, feature_map=fmap, causal=causal, return_weights=True)
    want, want_w = ref_linear(q, k, v, feature, causal=causal)
    assert out.shape == shape + (n, dv) and w.shape == shape + (n, m)
    assert_allclose(out, want, **TOL[F64])
    assert_allclose(w, want_w, **TOL[F64])
    assert_allclose(w @ v, out, **TOL[F64])  # the implied weights reproduce the output
    if causal:
        assert (w[..., np.triu_indices(n, 1, m)[0], np.triu_indices(n, 1, m)[1]] == 0).all()
    if feature != "relu":
        # Strictly positive features: with eps = 0 every row sums to exactly 1. (With the
        # default eps a row sums to den / (den + eps), which the reference check above covers.)
        _, w_exact = ak.linear_attention(q, k, v, feature_map=fmap, causal=causal, eps=0.0,
                                         return_weights=True)
        assert_allclose(w_exact.sum(-1), 1.0, rtol=1e-12)


def test_linear_causal_is_noncausal_over_each_prefix(rng):
    n, d, dv = 24, 6, 5
    q, k, v = randn(rng, 2, n, d), randn(rng, 2, n, d), randn(rng, 2, n, dv)
    out = ak.linear_attention(q, k, v, causal=True)
    for i in range(n):
        prefix = ak.linear_attention(q[:, i:i + 1], k[:, :i + 1], v[:, :i + 1])
        assert_allclose(out[:, i:i + 1], prefix, rtol=1e-10, atol=1e-12)


def test_linear_gqa_and_float32(rng):
    n, d, dv = 37, 8, 6
    q = randn(rng, 2, 4, n, d, dtype=F32)
    k, v = randn(rng, 2, 2, n, d, dtype=F32), randn(rng, 2, 2, n, dv, dtype=F32)
    for causal in (False, True):
        out, w = ak.linear_attention(q, k, v, causal=causal, return_weights=True)
        assert out.dtype == F32 and w.dtype == F32
        want, want_w = ref_linear(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1), "elu1",
                                  causal=causal)
        assert_allclose(out, want, **TOL[F32])
        assert_allclose(w, want_w, **TOL[F32])
        assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def test_linear_float16_and_relu_zero_rows(rng):
    n, d = 10, 4
    q = randn(rng, n, d, dtype=F16)
    q[3] = -np.abs(q[3]) - 0.5  # relu(q_3) = 0: no similarity with any key
    k, v = randn(rng, n, d, dtype=F16), randn(rng, n, 3, dtype=F16)
    for causal in (False, True):
        out, w = ak.linear_attention(q, k, v, feature_map="relu", causal=causal,
                                     return_weights=True)
        assert out.dtype == F32 and not np.isnan(out).any()
        assert (out[3] == 0).all() and (w[3] == 0).all()
        want, _ = ref_linear(q, k, v, "relu", causal=causal)
        assert_allclose(out, want, **TOL[F32])
    # eps = 0 with a zero denominator still gives 0, never NaN.
    out = ak.linear_attention(q, k, v, feature_map="relu", eps=0.0)
    assert (out[3] == 0).all() and np.isfinite(out).all()


@pytest.mark.parametrize("causal", [False, True])
def test_linear_kv_lengths_leave_padded_keys_out(rng, causal):
    n, m, d, dv = 9, 12, 5, 4
    q = randn(rng, 3, 4, n, d)  # (batch, heads): 4 query heads share 2 kv heads
    k, v = randn(rng, 3, 2, m, d), randn(rng, 3, 2, m, dv)
    lengths = np.array([m, int(rng.integers(1, m)), 0])
    out, w = ak.linear_attention(q, k, v, causal=causal, kv_lengths=lengths, return_weights=True)
    assert out.shape == (3, 4, n, dv) and w.shape == (3, 4, n, m)
    for b, length in enumerate(lengths):
        kb, vb = np.repeat(k[b], 2, axis=0)[:, :length], np.repeat(v[b], 2, axis=0)[:, :length]
        want, want_w = ref_linear(q[b], kb, vb, "elu1", causal=causal)
        assert_allclose(out[b], want, **TOL[F64])
        assert_allclose(w[b, ..., :length], want_w, **TOL[F64])
        assert (w[b, ..., length:] == 0).all()
    assert_array_equal(out[2], 0.0)  # no valid key: output 0, never NaN
    assert_array_equal(ak.linear_attention(q, k, v, causal=causal, kv_lengths=lengths), out)
    with pytest.raises(ValueError, match=r"kv_lengths: expected lengths in \[0, 12\]"):
        ak.linear_attention(q, k, v, kv_lengths=13)


def test_linear_weights_budget(rng):
    q, k, v = randn(rng, 3, 40, 4), randn(rng, 3, 50, 4), randn(rng, 3, 50, 2)
    with ak.set_options(weights_max_bytes=3 * 40 * 50 * 8 - 1):
        with pytest.raises(ak.WeightsTooLargeError, match=r"linear_attention: the attention "
                           r"weights need .* over the budget .* Fix: use return_weights=False"):
            ak.linear_attention(q, k, v, return_weights=True)
        out = ak.linear_attention(q, k, v)  # the output alone is fine
    assert_allclose(out, ref_linear(q, k, v, "elu1")[0], **TOL[F64])
    with ak.set_options(weights_max_bytes=3 * 40 * 50 * 8):
        assert ak.linear_attention(q, k, v, return_weights=True)[1].shape == (3, 40, 50)


# ------------------------------------------------------- shared conventions
def variant_calls(rng):
    """Each variant (and Luong's CPU-only "concat" score) as a call taking keyword options."""
    n, m, d, hidden, e = 4, 6, 5, 7, 12
    q, k = randn(rng, n, d), randn(rng, m, d)
    w_q, w_k, v_a = randn(rng, d, hidden), randn(rng, d, hidden), randn(rng, hidden)
    w_c = randn(rng, 2 * d, hidden)
    p = mha_params(rng, e, e, 3, 3, 4, 4, e)
    x = randn(rng, 2, 5, e)
    return {
        "multi_head_attention": lambda **kw: call_mha(x, p, 3, **kw),
        "additive_attention": lambda **kw: ak.additive_attention(q, k, k, w_q, w_k, v_a, **kw),
        "luong_attention": lambda **kw: ak.luong_attention(q, k, k, **kw),
        "luong_attention(score='concat')":
            lambda **kw: ak.luong_attention(q, k, k, score="concat", w_c=w_c, v_a=v_a, **kw),
        "linear_attention": lambda **kw: ak.linear_attention(q, k, k, **kw),
    }


def test_backend_cpu_and_auto_compute_the_same(rng):
    for name, call in variant_calls(rng).items():
        out = call()
        assert_array_equal(call(backend="cpu"), out, err_msg=name)
        assert_array_equal(call(backend="auto"), out, err_msg=name)
        out2, w = call(backend="cpu", return_weights=True)
        assert_array_equal(out2, out, err_msg=name)


@pytest.mark.parametrize("bad", ["gpu", "CPU", "", None])
def test_bad_backend_has_the_message_of_attention(rng, bad):
    q = randn(rng, 3, 4)
    with pytest.raises(ValueError) as want:
        ak.attention(q, q, q, backend=bad)
    for name, call in variant_calls(rng).items():
        with pytest.raises(ValueError, match=rf"backend: expected one of 'auto', 'cpu', 'cuda', "
                           rf"got {re.escape(repr(bad))}\. Fix: pick one of those") as info:
            call(backend=bad)
        assert str(info.value) == str(want.value), name


@pytest.mark.parametrize("name", ["additive_attention", "luong_attention(score='concat')",
                                  "linear_attention"])
def test_cuda_backend_without_a_cuda_implementation(rng, name):
    with pytest.raises(ak.BackendUnavailableError,
                       match=rf"backend='cuda': {re.escape(name)} has no CUDA implementation\. "
                             r"Fix: use backend='cpu'") as info:
        variant_calls(rng)[name](backend="cuda")
    fix_in(info)


def test_old_argument_names_are_type_errors(rng):
    e, n, d = 12, 5, 4
    p = mha_params(rng, e, e, 3, 3, 4, 4, e)
    x = randn(rng, 2, n, e)
    q, k = randn(rng, n, d), randn(rng, 6, d)
    w_q, w_k, v_a = randn(rng, d, 3), randn(rng, d, 3), randn(rng, 3)
    for call, old in [
        (lambda: call_mha(x, p, 3, lengths=[5, 3]), "lengths"),
        (lambda: call_mha(x, p, 3, context=x, context_lengths=[5, 3]), "context_lengths"),
        (lambda: ak.additive_attention(query=q, keys=k, values=k, w_q=w_q, w_k=w_k, v_a=v_a),
         "query"),
        (lambda: ak.luong_attention(q, keys=k, values=k), "keys"),
        (lambda: ak.linear_attention(q, k, k, lengths=3), "lengths"),
    ]:
        with pytest.raises(TypeError, match=rf"unexpected keyword argument '{old}'"):
            call()


# ------------------------------------------------------------------- errors
def fix_in(info):
    assert "Fix:" in str(info.value), str(info.value)


def test_linear_feature_map_with_negatives(rng):
    q, k, v = randn(rng, 6, 4), randn(rng, 7, 4), randn(rng, 7, 3)

    def tanh_map(x):
        return np.tanh(x)

    with pytest.raises(ValueError, match=r"feature_map: expected non-negative features .* got "
                       r"\d+ negative values .* from tanh_map\(q\)\. Fix: use a non-negative "
                       r"map") as info:
        ak.linear_attention(q, k, v, feature_map=tanh_map)
    fix_in(info)
    with pytest.raises(ValueError, match=r"feature_map: expected finite features"):
        ak.linear_attention(q, k, v, feature_map=lambda x: np.where(x > 0, np.inf, 1.0))
    with pytest.raises(ValueError, match=r"feature_map: expected shape \(6, r\) for q of shape "
                       r"\(6, 4\)"):
        ak.linear_attention(q, k, v, feature_map=lambda x: np.abs(x).sum(-1))
    with pytest.raises(ValueError, match=r"feature_map: expected 'elu1', 'relu' or a function"
                       r".* got 'softmax'"):
        ak.linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(ValueError, match=r"eps: expected a finite float >= 0, got -1e-06"):
        ak.linear_attention(q, k, v, eps=-1e-6)
    with pytest.raises(ValueError, match=r"k: expected shape last dim d = 4 to match q"):
        ak.linear_attention(q, k[:, :3], v)
    with pytest.raises(ValueError, match=r"v: expected shape 7 positions to match k"):
        ak.linear_attention(q, k, v[:5])


def test_mha_bad_parameters(rng):
    e = 12
    x = randn(rng, 2, 5, e)
    p = mha_params(rng, e, e, 3, 3, 4, 4, e)

    def mha(n_heads=3, **kw):
        w = {name: kw.pop(name, p[name]) for name in ("w_q", "w_k", "w_v", "w_o")}
        return ak.multi_head_attention(x, w["w_q"], w["w_k"], w["w_v"], w["w_o"], n_heads, **kw)

    cases = [
        (dict(n_heads=5), r"n_heads: expected a divisor of the query projection width "
                          r"w_q.shape\[1\] = 12, got 5"),
        (dict(n_heads=0), r"n_heads: expected a positive int, got 0"),
        (dict(n_kv_heads=2), r"n_kv_heads: expected a divisor of n_heads = 3"),
        (dict(w_q=p["w_q"][:10]), r"w_q: expected shape \(e, n_heads \* d_head\) with e = 12 "
                                  r"from x, got \(10, 12\)\. Fix: .*torch stores the transpose"),
        (dict(w_k=p["w_k"][:, :8]), r"w_k: expected shape \(e_ctx, n_kv_heads \* d_head\) = "
                                    r"\(12, 12\) .* got \(12, 8\)"),
        (dict(w_v=p["w_v"][:, :11]), r"w_v: expected shape \(e_ctx, n_kv_heads \* d_v\): a "
                                     r"width divisible by n_kv_heads = 3, got \(12, 11\)"),
        (dict(w_o=p["w_o"][:9]), r"w_o: expected shape \(n_heads \* d_v, e_out\) = \(12, e_out\)"),
        (dict(b_q=np.ones(11)), r"b_q: expected shape \(12,\), one bias per column of w_q, "
                                r"got \(11,\)"),
        (dict(context=randn(rng, 3, 6, e)), r"x, context: expected shape leading \(batch\) dims"),
        (dict(q_lengths=[9, 1]), r"q_lengths: expected lengths in \[0, 5\]"),
        (dict(kv_lengths=[9, 1]), r"kv_lengths: expected lengths in \[0, 5\]"),
        (dict(return_weights="yes"), r"return_weights: expected True or False, got 'yes'"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            mha(**kw)
        fix_in(info)
    with pytest.raises(TypeError, match=r"x: expected float16, bfloat16, float32 or float64, got "
                       r"int64\. Fix: cast it"):
        ak.multi_head_attention(np.ones((4, e), dtype=np.int64), p["w_q"], p["w_k"], p["w_v"],
                                p["w_o"], 3)
    bad = x.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"x: expected finite values, got 1 NaN/inf entries"):
        ak.multi_head_attention(bad, p["w_q"], p["w_k"], p["w_v"], p["w_o"], 3)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., sequence, e\) with at "
                       r"least 2 dims, got \(12,\)"):
        ak.multi_head_attention(x[0, 0], p["w_q"], p["w_k"], p["w_v"], p["w_o"], 3)


def test_additive_and_luong_bad_parameters(rng):
    n, m, d, hidden = 4, 6, 5, 7
    query, keys = randn(rng, n, d), randn(rng, m, d)
    w_q, w_k, v_a = randn(rng, d, hidden), randn(rng, d, hidden), randn(rng, hidden)
    cases = [
        (lambda: ak.additive_attention(query, keys, keys, w_q.T, w_k, v_a),
         r"w_q: expected shape \(dq, hidden\) with dq = 5 from q, got \(7, 5\)"),
        (lambda: ak.additive_attention(query, keys, keys, w_q, w_k[:, :3], v_a),
         r"w_k: expected shape \(dk, hidden\) = \(5, 7\) .* got \(5, 3\)"),
        (lambda: ak.additive_attention(query, keys, keys, w_q, w_k, v_a[:4]),
         r"v_a: expected shape \(hidden,\) = \(7,\), got \(4,\)"),
        (lambda: ak.additive_attention(query, keys, keys[:3], w_q, w_k, v_a),
         r"v: expected shape 6 positions to match k"),
        (lambda: ak.additive_attention(query, keys, keys, w_q, w_k, v_a, kv_lengths=9),
         r"kv_lengths: expected lengths in \[0, 6\]"),
        (lambda: ak.luong_attention(query, keys, keys, score="bilinear"),
         r"score: expected one of 'dot', 'general', 'concat', got 'bilinear'"),
        (lambda: ak.luong_attention(query, keys, keys, score="general"),
         r"w: expected an array for score='general', got None"),
        (lambda: ak.luong_attention(query, keys, keys, w=w_q),
         r"w: expected None for score='dot' \(w is used only by score='general'\)"),
        (lambda: ak.luong_attention(query, keys, keys, score="concat", w_c=randn(rng, 2 * d, 3)),
         r"v_a: expected an array for score='concat', got None"),
        (lambda: ak.luong_attention(query, keys[:, :3], keys),
         r"k: expected shape last dim dk = dq = 5 for score='dot'"),
        (lambda: ak.luong_attention(query, keys, keys, score="general", w=randn(rng, d, 3)),
         r"w: expected shape \(dq, dk\) = \(5, 5\)"),
        (lambda: ak.luong_attention(query, keys, keys, score="concat", w_c=randn(rng, d, 3),
                                    v_a=randn(rng, 3)),
         r"w_c: expected shape \(dq \+ dk, hidden\) = \(10, hidden\)"),
        (lambda: ak.luong_attention(randn(rng, 2, 3, n, d), randn(rng, 4, 3, m, d),
                                    randn(rng, 4, 3, m, d)),
         r"q, k: expected shape leading \(batch/head\) dims that broadcast"),
        (lambda: ak.additive_attention(randn(rng, 3, n, d), randn(rng, 2, m, d),
                                       randn(rng, 2, m, d), w_q, w_k, v_a),
         r"k: expected shape a head count dividing q's 3 heads"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            fn()
        fix_in(info)
    dense = np.ones((n, m), bool)
    for fn in (lambda: ak.additive_attention(query, keys, keys, w_q, w_k, v_a, mask=dense),
               lambda: ak.luong_attention(query, keys, keys, mask=dense)):
        with pytest.raises(TypeError, match=r"mask: expected an attnkit mask, got ndarray") as info:
            fn()
        fix_in(info)
    with pytest.raises(TypeError, match=r"w_k: expected float16, bfloat16, float32 or float64, "
                       r"got int64"):
        ak.additive_attention(query, keys, keys, w_q, np.ones((d, hidden), np.int64), v_a)
