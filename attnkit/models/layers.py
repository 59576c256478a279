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

import functools
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
def linear_forward(x, w, b):
    """``x @ w + b`` over the last axis (``w`` is (in, out)); cache: ``w``."""
    return x @ w + b, w


def linear_backward(dy, w):
    """Input gradient ``dy @ w.T`` of :func:`linear_forward`."""
    return dy @ w.T


# ----------------------------------------------------------------------------- LayerNorm
def layer_norm_forward(x, gamma, beta, eps: float):
    """LayerNorm over the last axis (``eps`` inside the square root, as BERT and DINOv2).

    Returns ``y`` and the cache ``(xhat, rstd, gamma)``: the normalised input,
    ``1 / sqrt(var + eps)`` per row, and the scale.
    """
    centred = x - x.mean(-1, keepdims=True)
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + np.asarray(eps, dtype=x.dtype))
    xhat = centred * rstd
    return xhat * gamma + beta, (xhat, rstd, gamma)


def layer_norm_backward(dy, cache):
    """Input gradient of :func:`layer_norm_forward`.

    With ``g = dy * gamma``: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``.
    """
    xhat, rstd, gamma = cache
    g = dy * gamma
    return rstd * (g - g.mean(-1, keepdims=True) - xhat * np.mean(g * xhat, axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- GELU
@functools.lru_cache(maxsize=None)
def _gelu_ufuncs():
    import numba

    # The exact erf form (BERT's "gelu", DINOv2's), not the tanh approximation.
    @numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
    def gelu(x):
        return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))

    # d/dx [x Phi(x)] = Phi(x) + x phi(x)
    @numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
    def gelu_grad(x):
        return (0.5 * (1.0 + math.erf(x * 0.7071067811865476))
                + x * 0.3989422804014327 * math.exp(-0.5 * x * x))

    return gelu, gelu_grad


def gelu_forward(x):
    """Exact GELU ``x * Phi(x)``; cache: ``x``."""
    return _gelu_ufuncs()[0](x), x


def gelu_backward(dy, x):
    """Input gradient of :func:`gelu_forward`: ``dy * (Phi(x) + x phi(x))``."""
    return dy * _gelu_ufuncs()[1](x)


# ----------------------------------------------------------------------------- residual
def residual_forward(x, branch):
    """``x + branch``; cache: None."""
    return x + branch, None


def residual_backward(dy, cache=None):
    """Both inputs of a residual sum get ``dy``: returns ``(dx, dbranch)``."""
    return dy, dy


# ----------------------------------------------------------------------------- attention
def attention_forward(q, k, v, lengths, *, scale=None):
    """Softmax attention over the valid keys, with the probabilities kept.

    Parameters
    ----------
    q, k : ndarray (batch, head, n, d)
    v : ndarray (batch, head, n, dv)
    lengths : ndarray (batch,) int
        Valid tokens per sequence; keys at or past it get probability 0.
    scale : float, optional
        Score scale; default ``1 / sqrt(d)``.

    Returns
    -------
    out : ndarray (batch, head, n, dv)
        ``P @ v`` with ``P`` from :func:`attnkit.attention_weights`.
    cache : tuple
        ``(p, q, k, v, lengths, scale)``; ``p`` (batch, head, n, n) is the
        attention (``cache[0]``).
    """
    from ..attention import attention_weights

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    p = attention_weights(q, k, scale=scale, kv_lengths=lengths, check_finite=False)
    return p @ v, (p, q, k, v, np.asarray(lengths), scale)


def attention_backward(dout, cache):
    """Gradients of :func:`attention_forward` from the stored probabilities.

    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dP * P))``,
    ``dQ = scale dS K``, ``dK = scale dS^T Q``. Entries of ``dP`` at padded
    keys and padded queries are exactly 0 (those probabilities are not free:
    the mask fixes them).

    Returns
    -------
    dq, dk, dv : ndarray
        Same shapes as ``q``, ``k``, ``v``.
    dp : ndarray (batch, head, n, n)
        Gradient with respect to the attention probabilities.
    """
    p, q, k, v, lengths, scale = cache
    n = p.shape[-1]
    valid = valid_mask(lengths, n)  # (batch, n)
    dp = dout @ np.swapaxes(v, -1, -2)
    dp *= (valid[:, None, :, None] & valid[:, None, None, :])
    dv = np.swapaxes(p, -1, -2) @ dout
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    dq = (ds @ k) * scale
    dk = (np.swapaxes(ds, -1, -2) @ q) * scale
    return dq.astype(q.dtype, copy=False), dk.astype(k.dtype, copy=False), dv, dp


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
