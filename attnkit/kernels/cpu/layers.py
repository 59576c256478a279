"""Loops of the built-in models' layers (:mod:`attnkit.models.layers`), parallel over rows.

* GELU with its bias add, and its derivative, over the rows of a 2-d array;
* LayerNorm forward (keeping ``xhat`` and ``1/std``) and backward;
* softmax attention's value product and backward, one (sample, head) slice
  per task, on the slice's valid block only: everything at a padded query or
  key is exactly 0 by construction.

Matrix products run BLAS (``np.dot``) on one row block or one (sample,
head) slice per task inside a ``prange``; call them under
:func:`.threads.single_threaded_blas`: the model's threads are then Numba's
alone. Multi-threaded OpenBLAS between parallel Numba regions makes the two
pools fight for the cores (OpenBLAS workers spin for a while after each call):
seen on 2 cores, MiniLM's forward pass 3x slower at 32 x 128 tokens and 12x
at 1 x 32. NumPy's
stacked ``@`` would instead call multi-threaded BLAS once per small slice,
and each call's thread hand-off collapses when another process loads the
cores (seen: 8 ms -> 3.7 s for one layer's product on 2 busy cores).

No validation here: :mod:`attnkit.models.layers` checks and allocates.
"""

import math

import numpy as np
from numba import njit, prange

#: Rows of a linear layer's input per task: large enough for BLAS to run at full speed.
ROW_BLOCK = 128
#: Fewest tasks a linear layer is split into while its rows allow blocks of ROW_QUANTUM rows:
#: 257 tokens (a ViT image) in 128-row blocks made 3 tasks, one thread idle a third of the
#: time; 6 blocks of 48 rows ran 1.3-1.4x faster on 2 cores (no change from 1000 rows up).
MIN_ROW_TASKS = 8
ROW_QUANTUM = 16


def row_block(rows: int) -> int:
    """Rows per task of :func:`linear` for ``rows`` input rows: balanced blocks of at most
    ROW_BLOCK rows, at least MIN_ROW_TASKS of them when the rows allow blocks of ROW_QUANTUM.
    It depends on ``rows`` only, never on the thread count.

    Examples
    --------
    >>> row_block(257), row_block(4096), row_block(10)
    (48, 128, 16)
    """
    tasks = max(-(-rows // ROW_BLOCK), min(MIN_ROW_TASKS, -(-rows // ROW_QUANTUM)))
    size = -(-rows // max(tasks, 1))
    return min(ROW_BLOCK, -(-size // ROW_QUANTUM) * ROW_QUANTUM)
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@njit(parallel=True, cache=True)
def linear(x, w, bias, out, block):
    """``out = x @ w (+ bias)`` for 2-d ``x``, one block of ``block`` rows per task
    (:func:`row_block`).

    ``w`` may be a transposed view (F-contiguous); an empty ``bias`` adds
    nothing. Each block is one BLAS product of the same shape whatever the
    number of threads, so results do not depend on it.
    """
    rows = x.shape[0]
    blocks = (rows + block - 1) // block
    for t in prange(blocks):
        start = t * block
        stop = min(rows, start + block)
        part = out[start:stop]
        np.dot(x[start:stop], w, part)
        if bias.size:
            for i in range(stop - start):
                for j in range(part.shape[1]):
                    part[i, j] += bias[j]


# erf in float32 as a rational function of x on [-4, 4] (odd degree-13 numerator, even
# degree-8 denominator; erf is +-1 in float32 beyond): no libm call, so the loop
# vectorises. Max abs error 4.5e-7 against erf in float64 (a few float32 ulps).
_ERF_P = tuple(np.float32(c) for c in (
    -1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04,
    -5.69250639462346e-05, -2.10102402082508e-06, 2.77068142495902e-08,
    -2.72614225801306e-10))
_ERF_Q = tuple(np.float32(c) for c in (
    -1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
    -2.13374055278905e-04, -1.45660718464996e-05))
_F32_4 = np.float32(4.0)
_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F32_SQRT_HALF = np.float32(_SQRT_HALF)


@njit(inline="always", cache=True)
def _erf_f32(x):
    x = min(max(x, -_F32_4), _F32_4)
    x2 = x * x
    p = _ERF_P[6]
    p = x2 * p + _ERF_P[5]
    p = x2 * p + _ERF_P[4]
    p = x2 * p + _ERF_P[3]
    p = x2 * p + _ERF_P[2]
    p = x2 * p + _ERF_P[1]
    p = x2 * p + _ERF_P[0]
    q = _ERF_Q[4]
    q = x2 * q + _ERF_Q[3]
    q = x2 * q + _ERF_Q[2]
    q = x2 * q + _ERF_Q[1]
    q = x2 * q + _ERF_Q[0]
    return x * p / q


@njit(parallel=True, cache=True)
def bias_gelu_f32(x, bias, pre, cdf, out):
    """:func:`bias_gelu` for float32, with the vectorisable erf; ``cdf`` is always written."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            v = x[i, j] + bias[j]
            phi = _F32_HALF * (_F32_ONE + _erf_f32(v * _F32_SQRT_HALF))
            pre[i, j] = v
            cdf[i, j] = phi
            out[i, j] = v * phi


@njit(parallel=True, cache=True)
def bias_gelu(x, bias, pre, cdf, out):
    """``pre = x + bias``, ``out = gelu(pre) = pre * Phi(pre)``; ``cdf = Phi(pre)`` unless empty.

    ``pre`` and ``cdf`` are what the backward needs (``cdf`` spares it the erf).
    """
    rows, cols = x.shape
    keep = cdf.size > 0
    for i in prange(rows):
        for j in range(cols):
            v = x[i, j] + bias[j]
            phi = 0.5 * (1.0 + math.erf(v * _SQRT_HALF))
            pre[i, j] = v
            out[i, j] = v * phi
            if keep:
                cdf[i, j] = phi


@njit(parallel=True, cache=True)
def gelu_grad(dy, x, cdf, out):
    """``out = dy * (Phi(x) + x phi(x))``, with ``Phi(x)`` from the forward."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            v = x[i, j]
            out[i, j] = dy[i, j] * (cdf[i, j] + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v))


@njit(parallel=True, cache=True)
def layer_norm(x, gamma, beta, eps, y, xhat, rstd):
    """Row-wise LayerNorm of 2-d ``x``; writes ``y``, ``xhat`` and ``rstd`` (rows,)."""
    rows, cols = x.shape
    for i in prange(rows):
        mean = 0.0
        for j in range(cols):
            mean += x[i, j]
        mean /= cols
        var = 0.0
        for j in range(cols):
            c = x[i, j] - mean
            var += c * c
        r = 1.0 / math.sqrt(var / cols + eps)
        rstd[i] = r
        for j in range(cols):
            xh = (x[i, j] - mean) * r
            xhat[i, j] = xh
            y[i, j] = xh * gamma[j] + beta[j]


@njit(parallel=True, cache=True)
def layer_norm_grad(dy, xhat, rstd, gamma, dx):
    """``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * gamma``, per row."""
    rows, cols = dy.shape
    for i in prange(rows):
        mg = 0.0
        mgx = 0.0
        for j in range(cols):
            g = dy[i, j] * gamma[j]
            mg += g
            mgx += g * xhat[i, j]
        mg /= cols
        mgx /= cols
        for j in range(cols):
            dx[i, j] = rstd[i] * (dy[i, j] * gamma[j] - mg - xhat[i, j] * mgx)


@njit(parallel=True, cache=True)
def attention_values(p, v, lengths, out):
    """``out[b, h] = p[b, h, :, :L] @ v[b, h, :L]`` (L the sample's length), every query row."""
    batch, heads = p.shape[0], p.shape[1]
    for t in prange(batch * heads):
        b = t // heads
        h = t % heads
        length = lengths[b]
        pb = np.ascontiguousarray(p[b, h, :, :length])
        vb = np.ascontiguousarray(v[b, h, :length])
        out[b, h] = np.dot(pb, vb)


@njit(parallel=True, cache=True)
def attention_grad(p, q, k, v, dout, lengths, scale, dq, dk, dv, dp):
    """Softmax attention's backward on each slice's valid block; the rest of the outputs is 0.

    ``dp = dout v^T``, ``dv = p^T dout``, ``ds = p * (dp - rowsum(dp * p))``,
    ``dq = scale ds k``, ``dk = scale ds^T q``. The outputs may be strided
    views (e.g. one layer of a (batch, layer, head, n, n) array).
    """
    batch, heads = p.shape[0], p.shape[1]
    for t in prange(batch * heads):
        b = t // heads
        h = t % heads
        length = lengths[b]
        pb = np.ascontiguousarray(p[b, h, :length, :length])
        gb = np.ascontiguousarray(dout[b, h, :length])
        dpb = np.dot(gb, np.ascontiguousarray(v[b, h, :length]).T)  # .T is F-order: BLAS
        dsb = np.empty_like(pb)
        for i in range(length):
            row = 0.0
            for j in range(length):
                row += dpb[i, j] * pb[i, j]
            for j in range(length):
                dsb[i, j] = pb[i, j] * (dpb[i, j] - row)
        dp[b, h] = 0.0
        dp[b, h, :length, :length] = dpb
        dq[b, h] = 0.0
        dk[b, h] = 0.0
        dv[b, h] = 0.0
        dq[b, h, :length] = np.dot(dsb, np.ascontiguousarray(k[b, h, :length])) * scale
        dk[b, h, :length] = np.dot(dsb.T, np.ascontiguousarray(q[b, h, :length])) * scale
        dv[b, h, :length] = np.dot(pb.T, gb)


# ----------------------------------------------------------------------------- vision
# Loops of the SaliencyViT (:mod:`attnkit.models.saliency_vit`): its image
# preprocessing (OpenCV's INTER_AREA resize, bit for bit) and the scatter of its
# transposed convolutions.

@njit(parallel=True, cache=True)
def area_resize_u8(src, xsrc, xdst, xalpha, ysrc, yalpha, ystart, out):
    """Area-weighted downscaling of a uint8 (H, W, C) image, as OpenCV's ``resizeArea``.

    ``(xsrc[k], xdst[k], xalpha[k])`` adds source column ``xsrc[k]`` with weight
    ``xalpha[k]`` into output column ``xdst[k]``; the entries ``ystart[dy]`` to
    ``ystart[dy + 1]`` of ``(ysrc, yalpha)`` do the same for the rows of output
    row ``dy``. Sums run in float32 in OpenCV's order (each source row over x,
    then over the rows), then round half to even and saturate, so the result is
    OpenCV's to the bit.
    """
    dh, dw, cn = out.shape
    for dy in prange(dh):
        buf = np.empty((dw, cn), np.float32)
        acc = np.zeros((dw, cn), np.float32)
        for j in range(ystart[dy], ystart[dy + 1]):
            row = src[ysrc[j]]
            beta = yalpha[j]
            buf[:] = 0.0
            for k in range(xsrc.size):
                d = xdst[k]
                s = xsrc[k]
                a = xalpha[k]
                for c in range(cn):
                    buf[d, c] = buf[d, c] + np.float32(row[s, c]) * a
            if j == ystart[dy]:
                for d in range(dw):
                    for c in range(cn):
                        acc[d, c] = beta * buf[d, c]
            else:
                for d in range(dw):
                    for c in range(cn):
                        acc[d, c] = acc[d, c] + beta * buf[d, c]
        for d in range(dw):
            for c in range(cn):
                v = np.rint(acc[d, c])
                out[dy, d, c] = np.uint8(min(max(v, 0.0), 255.0))


@njit(parallel=True, cache=True)
def area_fast_u8(src, sy, sx, out):
    """Block means over ``sy`` x ``sx`` source pixels (OpenCV's ``resizeAreaFast`` for uint8).

    2 x 2 blocks round half up (``(sum + 2) >> 2``, OpenCV's special case); other
    block sizes multiply the integer sum by ``float32(1 / area)`` and round half
    to even.
    """
    dh, dw, cn = out.shape
    area = sy * sx
    scale = np.float32(1.0) / np.float32(area)
    for dy in prange(dh):
        for dx in range(dw):
            for c in range(cn):
                total = 0
                for i in range(sy):
                    for j in range(sx):
                        total += np.int64(src[dy * sy + i, dx * sx + j, c])
                if sy == 2 and sx == 2:
                    v = (total + 2) >> 2
                else:
                    v = np.int64(np.rint(np.float32(total) * scale))
                out[dy, dx, c] = np.uint8(min(max(v, 0), 255))


@njit(parallel=True, cache=True)
def area_upscale_u8(src, xofs, xalpha, yofs, ybeta, simd_end, out):
    """OpenCV's INTER_AREA upscaling of a uint8 image: bilinear in 11-bit fixed point.

    ``xofs[dx]`` is the left source column of output column ``dx`` and
    ``xalpha[dx]`` its two int weights (summing to 2048); ``yofs``/``ybeta``
    likewise for rows (the row below is clamped to the image). The horizontal
    pass is exact in integers; the vertical one rounds as OpenCV's SIMD loop
    (``((s0 >> 4) * b0 >> 16) + ((s1 >> 4) * b1 >> 16)``, then ``(x + 2) >> 2``)
    for the first ``simd_end`` values of a row (x * channels + c) and as its
    scalar tail (``(s0 * b0 + s1 * b1 + 2**21) >> 22``) for the rest.
    """
    dh, dw, cn = out.shape
    h, w = src.shape[0], src.shape[1]
    for dy in prange(dh):
        r0 = min(max(yofs[dy], 0), h - 1)
        r1 = min(max(yofs[dy] + 1, 0), h - 1)
        b0 = np.int64(ybeta[dy, 0])
        b1 = np.int64(ybeta[dy, 1])
        for dx in range(dw):
            sx = xofs[dx]
            a0 = np.int64(xalpha[dx, 0])
            a1 = np.int64(xalpha[dx, 1])
            sx1 = min(sx + 1, w - 1)
            for c in range(cn):
                s0 = np.int64(src[r0, sx, c]) * a0 + np.int64(src[r0, sx1, c]) * a1
                s1 = np.int64(src[r1, sx, c]) * a0 + np.int64(src[r1, sx1, c]) * a1
                if dx * cn + c < simd_end:
                    v = (((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16)
                    v = (v + 2) >> 2
                else:
                    v = (s0 * b0 + s1 * b1 + (1 << 21)) >> 22
                out[dy, dx, c] = np.uint8(min(max(v, 0), 255))


@njit(parallel=True, cache=True)
def col2im_k4s2p1(cols, bias, out):
    """The scatter of a 4x4, stride-2, padding-1 transposed convolution, as a gather.

    ``cols`` (N, h, w, 4, 4, C) holds each input pixel's products with every
    kernel tap; ``out`` (N, 2h, 2w, C) gets, per output pixel, the sum of its
    four taps (rows ``2i + ky - 1 = oy``, columns likewise) plus ``bias``.
    """
    n, h, w = cols.shape[0], cols.shape[1], cols.shape[2]
    ch = cols.shape[5]
    for t in prange(n * 2 * h):
        b = t // (2 * h)
        oy = t % (2 * h)
        # taps (i, ky) with 2 i + ky - 1 == oy: ky has the parity of oy + 1
        ky0 = (oy + 1) % 2
        for ox in range(2 * w):
            kx0 = (ox + 1) % 2
            for c in range(ch):
                out[b, oy, ox, c] = bias[c]
            for ky in range(ky0, 4, 2):
                i2 = oy + 1 - ky
                if i2 < 0 or i2 >= 2 * h:
                    continue
                i = i2 // 2
                for kx in range(kx0, 4, 2):
                    j2 = ox + 1 - kx
                    if j2 < 0 or j2 >= 2 * w:
                        continue
                    j = j2 // 2
                    for c in range(ch):
                        out[b, oy, ox, c] += cols[b, i, j, ky, kx, c]
