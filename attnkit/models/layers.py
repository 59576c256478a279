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
        kernels.linear(rows, w, bias, out, kernels.row_block(rows.shape[0]))
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


# ============================================================================= vision pieces
# The SaliencyViT's (attnkit.models.saliency_vit) extra pieces. Feature maps are
# channels last, (batch, height, width, channel): a convolution is then one
# matrix product over the last axis. Weights keep PyTorch's layouts.

# ----------------------------------------------------------------------------- patch embedding
def patch_embed_forward(x, w, b, patch: int):
    """A ``patch`` x ``patch`` convolution with stride ``patch`` (a ViT's patch embedding).

    Parameters
    ----------
    x : ndarray (batch, channel, H, W)
        Images, channels first (H and W multiples of ``patch``).
    w : ndarray (hidden, channel, patch, patch)
        PyTorch's ``Conv2d`` weight.
    b : ndarray (hidden,)

    Returns
    -------
    y : ndarray (batch, rows * cols, hidden)
        One row per patch, row-major over the (rows, cols) = (H, W) / patch grid.
    cache : tuple
        ``(w2, x.shape)`` with ``w2`` the (channel * patch * patch, hidden) matrix.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.standard_normal((1, 3, 4, 6)), rng.standard_normal((5, 3, 2, 2))
    >>> y, _ = patch_embed_forward(x, w, np.zeros(5), 2)
    >>> y.shape  # a 2 x 3 grid of 2 x 2 patches
    (1, 6, 5)
    >>> bool(np.allclose(y[0, 4], np.einsum("chw,ochw->o", x[0, :, 2:4, 2:4], w)))  # patch (1, 1)
    True
    """
    batch, ch, height, width = x.shape
    rows, cols = height // patch, width // patch
    patches = np.ascontiguousarray(
        x.reshape(batch, ch, rows, patch, cols, patch).transpose(0, 2, 4, 1, 3, 5)
    ).reshape(batch * rows * cols, ch * patch * patch)
    w2 = np.ascontiguousarray(np.asarray(w, x.dtype).reshape(w.shape[0], -1).T)
    y = _matmul(patches, w2, b)
    return y.reshape(batch, rows * cols, w.shape[0]), (w2, x.shape)


def patch_embed_backward(dy, cache):
    """Input gradient of :func:`patch_embed_forward`: (batch, channel, H, W)."""
    w2, shape = cache
    batch, ch, height, width = shape
    patch = int(round((w2.shape[0] // ch) ** 0.5))
    rows, cols = height // patch, width // patch
    dp = _matmul(dy.reshape(-1, dy.shape[-1]), w2.T)
    return np.ascontiguousarray(
        dp.reshape(batch, rows, cols, ch, patch, patch).transpose(0, 3, 1, 4, 2, 5)
    ).reshape(shape)


# ----------------------------------------------------------------------------- layer scale
def layer_scale_forward(x, gamma):
    """``x * gamma`` over the last axis (DINOv2's LayerScale); cache: ``gamma``."""
    gamma = np.asarray(gamma, x.dtype)
    return x * gamma, gamma


def layer_scale_backward(dy, gamma):
    """Input gradient of :func:`layer_scale_forward`: ``dy * gamma``."""
    return dy * gamma


# ----------------------------------------------------------------------------- transposed conv
def conv_transpose2d_forward(x, w, b=None):
    """PyTorch's ``ConvTranspose2d(kernel_size=4, stride=2, padding=1)``, channels last.

    Each input pixel's products with the 16 kernel taps come from one matrix
    product, ``x @ w`` with ``w`` as (in, 4 * 4 * out); every output pixel then
    sums its four taps (:func:`attnkit.kernels.cpu.layers.col2im_k4s2p1`).

    Parameters
    ----------
    x : ndarray (batch, h, w, in)
    w : ndarray (in, out, 4, 4)
        PyTorch's (and ONNX's) ``ConvTranspose`` weight layout.
    b : ndarray (out,), optional

    Returns
    -------
    y : ndarray (batch, 2h, 2w, out)
    cache : tuple
        ``(w2, x.shape)``, ``w2`` the (in, 4 * 4 * out) matrix.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 2, 2, 1)); x[0, 0, 0, 0] = 1.0  # one pixel on
    >>> w = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> y, _ = conv_transpose2d_forward(x, w)
    >>> y[0, :, :, 0]  # the kernel, placed at (2 * 0 - 1, 2 * 0 - 1) and cut by the padding
    array([[ 5.,  6.,  7.,  0.],
           [ 9., 10., 11.,  0.],
           [13., 14., 15.,  0.],
           [ 0.,  0.,  0.,  0.]])
    """
    from ..kernels.cpu import layers as kernels

    batch, h, wd, cin = x.shape
    w = np.asarray(w, x.dtype)
    if w.shape[0] != cin or w.shape[2:] != (4, 4):
        raise ValueError(f"w: expected shape ({cin}, out, 4, 4), got {w.shape}. "
                         f"Fix: pass the ConvTranspose2d weight of a layer with {cin} inputs")
    cout = w.shape[1]
    w2 = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(cin, 16 * cout))
    cols = _matmul(x.reshape(-1, cin), w2).reshape(batch, h, wd, 4, 4, cout)
    y = np.empty((batch, 2 * h, 2 * wd, cout), x.dtype)
    bias = np.zeros(cout, x.dtype) if b is None else np.asarray(b, x.dtype)
    kernels.col2im_k4s2p1(cols, bias, y)
    return y, (w2, x.shape)


def conv_transpose2d_backward(dy, cache):
    """Input gradient of :func:`conv_transpose2d_forward`: (batch, h, w, in).

    Gathers, for each input pixel, the 16 output pixels it fed (a stride-2
    convolution of ``dy`` padded by one), then one product with ``w2.T``.
    """
    w2, shape = cache
    batch, h, wd, cin = shape
    cout = w2.shape[1] // 16
    pad = np.zeros((batch, 2 * h + 2, 2 * wd + 2, cout), dy.dtype)
    pad[:, 1:-1, 1:-1] = dy
    cols = np.empty((batch, h, wd, 4, 4, cout), dy.dtype)
    for ky in range(4):
        for kx in range(4):  # input (i, j) fed output (2i + ky - 1, 2j + kx - 1)
            cols[:, :, :, ky, kx] = pad[:, ky: ky + 2 * h: 2, kx: kx + 2 * wd: 2]
    return _matmul(cols.reshape(batch * h * wd, 16 * cout), w2.T).reshape(shape)


# ----------------------------------------------------------------------------- BatchNorm, ReLU
def batch_norm_forward(x, gamma, beta, mean, var, eps: float):
    """BatchNorm with running statistics (inference) over the last (channel) axis.

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, computed as one scale and
    shift per channel; cache: the scale.
    """
    dt = x.dtype
    scale = (np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps))
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    scale, shift = scale.astype(dt), shift.astype(dt)
    return x * scale + shift, scale


def batch_norm_backward(dy, scale):
    """Input gradient of :func:`batch_norm_forward`: ``dy * scale``."""
    return dy * scale


def relu_forward(x):
    """``max(x, 0)``; cache: the mask ``x > 0``."""
    mask = x > 0
    return np.where(mask, x, x.dtype.type(0)), mask


def relu_backward(dy, mask):
    """Input gradient of :func:`relu_forward`: ``dy`` where the input was positive, else 0."""
    return np.where(mask, dy, dy.dtype.type(0))


# ----------------------------------------------------------------------------- 1x1 convolution
def conv1x1_forward(x, w, b=None):
    """A 1x1 convolution, channels last: ``x @ w[:, :, 0, 0].T + b``; cache: the (in, out) matrix.

    ``w`` is PyTorch's (out, in, 1, 1) ``Conv2d`` weight.
    """
    w2 = np.ascontiguousarray(np.asarray(w, x.dtype).reshape(w.shape[0], w.shape[1]).T)
    return _matmul(x, w2, b), w2


def conv1x1_backward(dy, w2):
    """Input gradient of :func:`conv1x1_forward`."""
    return _matmul(dy, w2.T)


# ----------------------------------------------------------------------------- resizing
def interpolation_matrix(n_in: int, n_out: int, mode: str = "linear", *, cubic_a: float = -0.75):
    """The (n_out, n_in) matrix of a 1-d resize with half-pixel centres, no antialiasing.

    Output sample ``i`` reads the input at ``x = (i + 0.5) * n_in / n_out - 0.5``
    (PyTorch's ``align_corners=False``, ONNX's ``half_pixel``). ``mode="linear"``
    clamps ``x`` into ``[0, n_in - 1]`` (bilinear); ``mode="cubic"`` uses Keys'
    kernel with ``a = cubic_a`` (PyTorch's bicubic: -0.75) on the four nearest
    inputs, indices clamped to the edge. A 2-d resize of ``img`` (..., h, w) is
    ``R_h @ img @ R_w.T``. Built in float64.

    Examples
    --------
    >>> interpolation_matrix(2, 4).round(3)
    array([[1.  , 0.  ],
           [0.75, 0.25],
           [0.25, 0.75],
           [0.  , 1.  ]])
    >>> bool(np.allclose(interpolation_matrix(37, 16, "cubic").sum(axis=1), 1.0))
    True
    """
    if mode not in ("linear", "cubic"):
        raise ValueError(f"mode: expected 'linear' or 'cubic', got {mode!r}. Fix: pass one of those")
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        x = (i + 0.5) * scale - 0.5
        if mode == "linear":
            x = min(max(x, 0.0), n_in - 1.0)
            x0 = int(math.floor(x))
            t = x - x0
            m[i, x0] += 1.0 - t
            m[i, min(x0 + 1, n_in - 1)] += t
        else:
            x0 = int(math.floor(x))
            t = x - x0
            a = cubic_a
            weights = (((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                       ((a + 2) * t - (a + 3)) * t * t + 1,
                       ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                       ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a)
            for k, wk in enumerate(weights):
                m[i, min(max(x0 - 1 + k, 0), n_in - 1)] += wk
    return m


def resize_forward(x, rows, cols):
    """Resize the last two axes: ``rows @ x @ cols.T`` (matrices of :func:`interpolation_matrix`).

    ``x`` (..., h, w) -> (..., H, W) for ``rows`` (H, h) and ``cols`` (W, w); the
    matrices are cast to ``x``'s dtype. Cache: ``(rows, cols)``.
    """
    from ..kernels.cpu.threads import single_threaded_blas

    rows = np.asarray(rows, x.dtype)
    cols = np.asarray(cols, x.dtype)
    lead = x.shape[:-2]
    flat = np.ascontiguousarray(x).reshape(-1, *x.shape[-2:])
    out = np.empty((flat.shape[0], rows.shape[0], cols.shape[0]), x.dtype)
    cols_t = np.ascontiguousarray(cols.T)
    with single_threaded_blas():  # small products: BLAS threads only add hand-offs
        for i in range(flat.shape[0]):
            np.dot(np.dot(rows, flat[i]), cols_t, out=out[i])
    return out.reshape(*lead, rows.shape[0], cols.shape[0]), (rows, cols)


def resize_backward(dy, cache):
    """Input gradient of :func:`resize_forward`: ``rows.T @ dy @ cols``."""
    rows, cols = cache
    return resize_forward(dy, rows.T, cols.T)[0]


# ----------------------------------------------------------------------------- sigmoid
def sigmoid_forward(x):
    """The logistic function ``1 / (1 + exp(-x))``, overflow-free; cache: the output."""
    e = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
    return y, y


def sigmoid_backward(dy, y):
    """Input gradient of :func:`sigmoid_forward`: ``dy * y * (1 - y)``."""
    return dy * y * (1 - y)


__all__ += [
    "patch_embed_forward", "patch_embed_backward",
    "layer_scale_forward", "layer_scale_backward",
    "conv_transpose2d_forward", "conv_transpose2d_backward",
    "batch_norm_forward", "batch_norm_backward",
    "relu_forward", "relu_backward",
    "conv1x1_forward", "conv1x1_backward",
    "interpolation_matrix", "resize_forward", "resize_backward",
    "sigmoid_forward", "sigmoid_backward",
]
