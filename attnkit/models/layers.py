"""Forward/backward pairs for the pieces of the built-in transformers.

Every piece is a pair: ``y, cache = <piece>_forward(x, ...)`` computes the
output and keeps only what the backward needs, and ``<piece>_backward(dy,
cache)`` returns the gradient of a scalar with respect to the piece's inputs
given ``dy``, its gradient with respect to ``y``. Weights are constants here:
no weight gradients are computed (attribution needs input gradients only),
so a linear layer's cache is its weight matrix, not its input.

Everything runs in the dtype of its input (float32 or float64). Arrays are
NumPy; attention runs through attnkit's own kernels
(:func:`attnkit.attention_weights`) and its backward is computed from the
stored probabilities.

Examples
--------
>>> import numpy as np
>>> from attnkit.models import layers
>>> x = np.array([[1.0, 2.0, 4.0]])
>>> y, cache = layers.layer_norm_forward(x, np.ones(3), np.zeros(3), 1e-12)
>>> dx = layers.layer_norm_backward(np.array([[1.0, 0.0, 0.0]]), cache)
>>> abs(float(dx.sum())) < 1e-12  # LayerNorm is invariant to a shift of its input
True
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "embeddings_forward", "embeddings_backward",
    "linear_forward", "linear_backward",
    "layer_norm_forward", "layer_norm_backward",
    "gelu_forward", "gelu_backward",
    "residual_forward", "residual_backward",
    "attention_forward", "attention_backward",
    "mean_pool_forward", "mean_pool_backward",
    "l2_normalize_forward", "l2_normalize_backward",
    "valid_mask",
]


def valid_mask(lengths, n: int) -> np.ndarray:
    """Boolean (batch, n): True at positions ``< lengths[b]``."""
    return np.arange(n)[None, :] < np.asarray(lengths)[:, None]


def _rows(x):
    """``x`` as a C-contiguous 2-d (rows, last axis) array."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


# ----------------------------------------------------------------------------- embeddings
def embeddings_forward(word_embeds, position=None, token_type=None):
    """Sum of word, position and token-type embeddings (BERT's input, before its LayerNorm).

    Parameters
    ----------
    word_embeds : ndarray (batch, n, hidden)
        Word embeddings of the tokens (Hugging Face's ``inputs_embeds``).
    position : ndarray (n, hidden), optional
        Position embeddings of positions ``0..n-1``; None leaves them out.
    token_type : ndarray (hidden,), optional
        The token-type embedding added to every token.

    Returns
    -------
    x : ndarray (batch, n, hidden)
    cache : None
        The sum is linear in ``word_embeds``: its backward needs nothing.
    """
    x = word_embeds
    if position is not None:
        x = x + position
    if token_type is not None:
        x = x + token_type
    return x, None


def embeddings_backward(dx, cache=None):
    """Gradient with respect to the word embeddings: ``dx`` itself."""
    return dx


# ----------------------------------------------------------------------------- linear
def _matmul(x, w, b=None):
    """``x @ w (+ b)`` over the last axis, through the row-parallel kernel."""
    from ..kernels.cpu import layers as kernels
    from ..kernels.cpu.threads import single_threaded_blas

    rows = _rows(x)
    w = np.asarray(w, rows.dtype)
    out = np.empty((rows.shape[0], w.shape[1]), rows.dtype)
    bias = np.zeros(0, rows.dtype) if b is None else np.asarray(b, rows.dtype)
    with single_threaded_blas():
        kernels.linear(rows, w, bias, out)
    return out.reshape(x.shape[:-1] + (w.shape[1],))


def linear_forward(x, w, b=None):
    """``x @ w + b`` over the last axis (``w`` is (in, out); no ``b``: no bias); cache: ``w``."""
    return _matmul(x, w, b), w


def linear_backward(dy, w):
    """Input gradient ``dy @ w.T`` of :func:`linear_forward`."""
    return _matmul(dy, w.T)


# ----------------------------------------------------------------------------- LayerNorm
def layer_norm_forward(x, gamma, beta, eps: float):
    """LayerNorm over the last axis (``eps`` inside the square root, as BERT and DINOv2).

    Returns ``y`` and the cache ``(xhat, rstd, gamma)``: the normalised input,
    ``1 / sqrt(var + eps)`` per row (rows of the flattened input), and the scale.
    """
    from ..kernels.cpu import layers as kernels

    rows = _rows(x)
    y, xhat = np.empty_like(rows), np.empty_like(rows)
    rstd = np.empty(rows.shape[0], rows.dtype)
    kernels.layer_norm(rows, np.asarray(gamma, rows.dtype), np.asarray(beta, rows.dtype),
                       float(eps), y, xhat, rstd)
    return y.reshape(x.shape), (xhat.reshape(x.shape), rstd, np.asarray(gamma, rows.dtype))


def layer_norm_backward(dy, cache):
    """Input gradient of :func:`layer_norm_forward`.

    With ``g = dy * gamma``: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``.
    """
    from ..kernels.cpu import layers as kernels

    xhat, rstd, gamma = cache
    xh = _rows(xhat)
    dx = np.empty_like(xh)
    kernels.layer_norm_grad(_rows(np.asarray(dy, xh.dtype)), xh, rstd, gamma, dx)
    return dx.reshape(xhat.shape)


# ----------------------------------------------------------------------------- GELU
def gelu_forward(x, bias=None, *, keep=True):
    """Exact GELU ``x * Phi(x)`` of ``x + bias`` (erf form, as BERT and DINOv2).

    The bias add is fused into the same parallel pass (a linear layer's bias
    before its activation). float64 uses libm's erf; float32 a rational
    approximation of erf within 4.5e-7 (a few float32 ulps) that vectorises. The cache is ``(x + bias, Phi(x + bias))``, or
    None with ``keep=False`` (inference: no backward).
    """
    from ..kernels.cpu import layers as kernels

    rows = _rows(x)
    bias = np.zeros(rows.shape[1], rows.dtype) if bias is None else np.asarray(bias, rows.dtype)
    pre, out = np.empty_like(rows), np.empty_like(rows)
    if rows.dtype == np.float32:  # a rational erf accurate to a few float32 ulps
        cdf = np.empty_like(rows)
        kernels.bias_gelu_f32(rows, bias, pre, cdf, out)
    else:
        cdf = np.empty_like(rows) if keep else np.empty((0, 0), rows.dtype)
        kernels.bias_gelu(rows, bias, pre, cdf, out)
    return out.reshape(x.shape), (pre.reshape(x.shape), cdf.reshape(x.shape)) if keep else None


def gelu_backward(dy, cache):
    """Input gradient of :func:`gelu_forward`: ``dy * (Phi(x) + x phi(x))``."""
    from ..kernels.cpu import layers as kernels

    pre, cdf = cache
    x = _rows(pre)
    out = np.empty_like(x)
    kernels.gelu_grad(_rows(np.asarray(dy, x.dtype)), x, _rows(cdf), out)
    return out.reshape(pre.shape)


# ----------------------------------------------------------------------------- residual
def residual_forward(x, branch):
    """``x + branch``; cache: None."""
    return x + branch, None


def residual_backward(dy, cache=None):
    """Both inputs of a residual sum get ``dy``: returns ``(dx, dbranch)``."""
    return dy, dy


# ----------------------------------------------------------------------------- attention
def attention_forward(q, k, v, lengths, *, scale=None, weights_out=None):
    """Softmax attention over the valid keys, with the probabilities kept.

    Parameters
    ----------
    q, k : ndarray (batch, head, n, d)
    v : ndarray (batch, head, n, dv)
    lengths : ndarray (batch,) int
        Valid tokens per sequence; keys at or past it get probability 0.
    scale : float, optional
        Score scale; default ``1 / sqrt(d)``.
    weights_out : ndarray (batch, head, n, n), optional
        Where to keep the probabilities (e.g. one layer of a preallocated
        (batch, layer, head, n, n) array); default a new array.

    Returns
    -------
    out : ndarray (batch, head, n, dv)
        ``P @ v`` with ``P`` from :func:`attnkit.attention_weights`.
    cache : tuple
        ``(p, q, k, v, lengths, scale)``; ``p`` (batch, head, n, n) is the
        attention (``cache[0]``).
    """
    from ..attention import attention_weights
    from ..kernels.cpu import layers as kernels
    from ..kernels.cpu.threads import single_threaded_blas

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    lengths = np.asarray(lengths, dtype=np.int64)
    p = attention_weights(q, k, scale=scale, kv_lengths=lengths, check_finite=False)
    if weights_out is not None:
        weights_out[...] = p
        p = weights_out
    out = np.empty(p.shape[:3] + (v.shape[-1],), dtype=np.result_type(p, v))
    with single_threaded_blas():
        kernels.attention_values(p, np.asarray(v, out.dtype), lengths, out)
    return out, (p, q, k, v, lengths, scale)


def attention_backward(dout, cache, *, out=None):
    """Gradients of :func:`attention_forward` from the stored probabilities.

    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dP * P))``,
    ``dQ = scale dS K``, ``dK = scale dS^T Q``, on each sequence's valid
    block. Entries of ``dP`` at padded keys and padded queries are exactly 0
    (those probabilities are not free: the mask fixes them), as are the
    gradients of padded positions.

    Parameters
    ----------
    dout : ndarray (batch, head, n, dv)
    cache : tuple
        From :func:`attention_forward`.
    out : tuple of 4 ndarrays, optional
        ``(dq, dk, dv, dp)`` to write into (views are fine, e.g. slices of one
        (batch, n, 3, head, d) buffer); default new arrays.

    Returns
    -------
    dq, dk, dv : ndarray
        Same shapes as ``q``, ``k``, ``v``.
    dp : ndarray (batch, head, n, n)
        Gradient with respect to the attention probabilities.
    """
    from ..kernels.cpu import layers as kernels
    from ..kernels.cpu.threads import single_threaded_blas

    p, q, k, v, lengths, scale = cache
    dtype = p.dtype
    if out is None:
        out = (np.empty(q.shape, dtype), np.empty(k.shape, dtype), np.empty(v.shape, dtype),
               np.empty(p.shape, dtype))
    with single_threaded_blas():
        kernels.attention_grad(p, np.asarray(q, dtype), np.asarray(k, dtype),
                               np.asarray(v, dtype), np.asarray(dout, dtype), lengths,
                               dtype.type(scale), *out)
    return out


# ----------------------------------------------------------------------------- pooling
def mean_pool_forward(x, lengths):
    """Mean over the valid positions: (batch, n, hidden) -> (batch, hidden); cache ``(lengths, n)``."""
    lengths = np.asarray(lengths)
    n = x.shape[1]
    valid = valid_mask(lengths, n).astype(x.dtype)
    pooled = np.einsum("bn,bnf->bf", valid, x) / lengths[:, None].astype(x.dtype)
    return pooled, (lengths, n)


def mean_pool_backward(dpooled, cache):
    """Input gradient of :func:`mean_pool_forward`: ``dpooled / length`` at valid positions, 0 elsewhere."""
    lengths, n = cache
    weight = valid_mask(lengths, n).astype(dpooled.dtype) / lengths[:, None].astype(dpooled.dtype)
    return weight[:, :, None] * dpooled[:, None, :]


# ----------------------------------------------------------------------------- L2 normalisation
def l2_normalize_forward(x, eps: float = 1e-12):
    """``x / max(|x|, eps)`` over the last axis; cache ``(y, norm, eps)``."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    y = x / np.maximum(norm, eps)
    return y, (y, norm, eps)


def l2_normalize_backward(dy, cache):
    """Input gradient of :func:`l2_normalize_forward`.

    ``dx = (dy - y (y . dy)) / |x|``: the component along ``y`` is removed
    (the gradient of a normalised vector along itself is zero). Where
    ``|x| < eps`` the forward is the linear map ``x / eps``.
    """
    y, norm, eps = cache
    small = norm < eps
    along = np.sum(y * dy, axis=-1, keepdims=True)
    return np.where(small, dy / eps, (dy - y * along) / np.maximum(norm, eps))
