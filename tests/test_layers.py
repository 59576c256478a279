"""attnkit.models.layers: every backward against central finite differences, float64.

Each check takes a random scalar ``L = <y, c>`` of a piece's output, its
analytic gradient from the backward, and compares the directional derivative
along a random direction with ``(L(x + h u) - L(x - h u)) / 2h``. Inputs are
fresh random draws with padding, never zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnkit.models import layers

H = 1e-6
RTOL = 1e-6


def directional_check(f, grad, x, rng, *, mask=None):
    """FD of the scalar ``f`` along a random direction (zero outside ``mask``) vs ``grad``."""
    u = rng.standard_normal(x.shape)
    if mask is not None:
        u = u * mask
    fd = (f(x + H * u) - f(x - H * u)) / (2 * H)
    analytic = float(np.sum(grad * u))
    assert abs(fd - analytic) <= RTOL * max(1.0, abs(analytic)), (fd, analytic)


def test_linear(rng):
    x = rng.standard_normal((5, 7))
    w, b = rng.standard_normal((7, 3)), rng.standard_normal(3)
    c = rng.standard_normal((5, 3))
    y, cache = layers.linear_forward(x, w, b)
    np.testing.assert_allclose(y, x @ w + b)
    directional_check(lambda x: np.sum(layers.linear_forward(x, w, b)[0] * c),
                      layers.linear_backward(c, cache), x, rng)


@pytest.mark.parametrize("eps", [1e-12, 1e-6])
def test_layer_norm(rng, eps):
    x = rng.standard_normal((4, 6, 16)) * 3 + 1
    gamma, beta = rng.standard_normal(16), rng.standard_normal(16)
    c = rng.standard_normal(x.shape)
    y, cache = layers.layer_norm_forward(x, gamma, beta, eps)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    directional_check(lambda x: np.sum(layers.layer_norm_forward(x, gamma, beta, eps)[0] * c),
                      layers.layer_norm_backward(c, cache), x, rng)


def test_gelu_is_exact_erf_and_its_gradient(rng):
    from scipy.special import erf

    x = rng.standard_normal((3, 50)) * 3
    y, cache = layers.gelu_forward(x)
    np.testing.assert_allclose(y, 0.5 * x * (1 + erf(x / np.sqrt(2))), rtol=1e-14, atol=1e-15)
    c = rng.standard_normal(x.shape)
    directional_check(lambda x: np.sum(layers.gelu_forward(x)[0] * c),
                      layers.gelu_backward(c, cache), x, rng)
    y32, _ = layers.gelu_forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    # the fused bias: gelu(x + b), its gradient with respect to x
    b = rng.standard_normal(x.shape[-1])
    yb, cache_b = layers.gelu_forward(x, b)
    np.testing.assert_allclose(yb, layers.gelu_forward(x + b)[0], rtol=1e-14, atol=1e-15)
    directional_check(lambda x: np.sum(layers.gelu_forward(x, b)[0] * c),
                      layers.gelu_backward(c, cache_b), x, rng)
    assert layers.gelu_forward(x, keep=False)[1] is None


def test_linear_rows_beyond_one_block(rng):
    """The row-block kernel: more rows than one block, a transposed weight, no bias."""
    x = rng.standard_normal((300, 7))
    w = rng.standard_normal((5, 7))
    y, _ = layers.linear_forward(x, w.T)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-13, atol=1e-13)
    y32, _ = layers.linear_forward(x.astype(np.float32), w.T.astype(np.float32), np.ones(5))
    np.testing.assert_allclose(y32, x @ w.T + 1, rtol=1e-5, atol=1e-5)


def test_residual_and_embeddings(rng):
    x, branch = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    y, cache = layers.residual_forward(x, branch)
    np.testing.assert_array_equal(y, x + branch)
    dy = rng.standard_normal(y.shape)
    dx, db = layers.residual_backward(dy, cache)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_array_equal(db, dy)
    pos, tok = rng.standard_normal((3, 4)), rng.standard_normal(4)
    e, cache = layers.embeddings_forward(x, pos, tok)
    np.testing.assert_allclose(e, x + pos + tok)
    c = rng.standard_normal(e.shape)
    directional_check(lambda x: np.sum(layers.embeddings_forward(x, pos, tok)[0] * c),
                      layers.embeddings_backward(c, cache), x, rng)


def _attention_case(rng, batch=3, heads=2, n=7, d=5, dv=4):
    q = rng.standard_normal((batch, heads, n, d))
    k = rng.standard_normal((batch, heads, n, d))
    v = rng.standard_normal((batch, heads, n, dv))
    lengths = np.array([n, 4, 1][:batch])
    return q, k, v, lengths


def test_attention_forward_matches_numpy(rng):
    q, k, v, lengths = _attention_case(rng)
    out, cache = layers.attention_forward(q, k, v, lengths)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    valid = layers.valid_mask(lengths, q.shape[2])
    s = np.where(valid[:, None, None, :], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(cache[0], p, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out, p @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("wrt", ["q", "k", "v"])
def test_attention_backward(rng, wrt):
    q, k, v, lengths = _attention_case(rng)
    valid = layers.valid_mask(lengths, q.shape[2])
    c = rng.standard_normal(v.shape[:3] + (v.shape[3],)) * valid[:, None, :, None]
    args = {"q": q, "k": k, "v": v}
    _, cache = layers.attention_forward(q, k, v, lengths)
    grads = dict(zip("qkv", layers.attention_backward(c, cache)[:3]))

    def loss(x):
        a = dict(args, **{wrt: x})
        return np.sum(layers.attention_forward(a["q"], a["k"], a["v"], lengths)[0] * c)

    mask = np.broadcast_to(valid[:, None, :, None], args[wrt].shape)
    directional_check(loss, grads[wrt], args[wrt], rng, mask=mask)


def test_attention_probability_gradient_is_zero_at_padding(rng):
    q, k, v, lengths = _attention_case(rng)
    _, cache = layers.attention_forward(q, k, v, lengths)
    dout = rng.standard_normal(q.shape[:3] + (v.shape[3],))  # nonzero everywhere, padding too
    dq, dk, dv, dp = layers.attention_backward(dout, cache)
    valid = layers.valid_mask(lengths, q.shape[2])
    outside = ~(valid[:, None, :, None] & valid[:, None, None, :])
    assert np.all(dp[np.broadcast_to(outside, dp.shape)] == 0.0)
    # dp is dO V^T inside: the gradient with respect to the probabilities themselves
    inside = dout @ np.swapaxes(v, -1, -2)
    np.testing.assert_allclose(np.where(outside, 0.0, inside), dp, rtol=1e-13, atol=1e-13)
    # padded keys get no key/value gradient: their probabilities are 0
    pad_key = ~valid[:, None, :, None]
    assert np.all(np.broadcast_to(pad_key, dk.shape) <= (dk == 0))
    assert np.all(np.broadcast_to(pad_key, dv.shape) <= (dv == 0))


def test_attention_float32_stays_float32(rng):
    q, k, v, lengths = (a.astype(np.float32) if a.dtype.kind == "f" else a
                        for a in _attention_case(rng))
    out, cache = layers.attention_forward(q, k, v, lengths)
    grads = layers.attention_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


def test_mean_pool(rng):
    x = rng.standard_normal((3, 6, 4))
    lengths = np.array([6, 2, 1])
    y, cache = layers.mean_pool_forward(x, lengths)
    np.testing.assert_allclose(y, np.stack([x[b, :n].mean(0) for b, n in enumerate(lengths)]))
    c = rng.standard_normal(y.shape)
    g = layers.mean_pool_backward(c, cache)
    assert np.all(g[1, 2:] == 0) and np.all(g[2, 1:] == 0)
    directional_check(lambda x: np.sum(layers.mean_pool_forward(x, lengths)[0] * c), g, x, rng)


def test_l2_normalize(rng):
    x = rng.standard_normal((4, 9))
    y, cache = layers.l2_normalize_forward(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, rtol=1e-14)
    c = rng.standard_normal(y.shape)
    g = layers.l2_normalize_backward(c, cache)
    directional_check(lambda x: np.sum(layers.l2_normalize_forward(x)[0] * c), g, x, rng)
    # the gradient of a normalised vector along itself is zero
    along = layers.l2_normalize_backward(y, cache)
    np.testing.assert_allclose(along, 0.0, atol=1e-14)


def test_gelu_float32_erf_is_within_a_few_ulps(rng):
    from scipy.special import erf

    x = np.concatenate([np.linspace(-9, 9, 20001), rng.standard_normal(1000) * 3])
    y, (pre, cdf) = layers.gelu_forward(x.astype(np.float32))
    exact_cdf = 0.5 * (1 + erf(x.astype(np.float32).astype(np.float64) / np.sqrt(2)))
    assert y.dtype == np.float32 and cdf.dtype == np.float32
    assert np.abs(cdf - exact_cdf).max() < 3e-7
    np.testing.assert_allclose(y, pre.astype(np.float64) * exact_cdf, rtol=0, atol=3e-6)
