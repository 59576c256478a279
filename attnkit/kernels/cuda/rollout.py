"""Attention rollout on the GPU: one fused kernel per layer for a batch of samples.

For sample ``s`` with ``L`` valid tokens and layers ``l >= start_layer``::

    x_l[i, k] = (1 - r) * fuse_h A[s, l, h, i, k] + r * (i == k)      (i, k < L)
    Ã_l      = x_l with each row divided by its own sum (a zero row stays 0)
    R        = Ã_start, then R = Ã_l @ R for each later layer

(the formula of :func:`attnkit.rollout`). Each launch computes
``R_new = Ã_l @ R_old`` for every sample at once, fusing the head reduction,
the residual and the row normalisation into the product: a block owning rows
``[i0, i0 + bm)`` walks all of ``k`` anyway, so it sums the rows of ``x_l``
as it loads them and divides its results at the end
(``Ã_l @ R = (x_l @ R) / rowsum``). Nothing of shape (layer, n, n) is ever
stored; two (S, n, n) float64 buffers alternate. The first layer multiplies
by an implicit identity.

Arithmetic is float64, as on the CPU; inputs may be float16/32/64, on the
host or the device. Entries outside a sample's valid block are NaN.

Rows of the rollout computed from per-layer queries and keys
(:func:`attnkit.rollout_rows`) use :class:`attnkit.kernels.cuda.api.RowStream`
instead: they stream each layer's attention through the attention kernels.
No validation happens here (see :mod:`attnkit.rollout`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numba import cuda, types

from . import runtime as rt

U = types.uint64
ALIGNED = not rt.SIMULATOR


@dataclass(frozen=True)
class GemmTiling:
    """``ty x tx`` threads, each owning ``rm x rn`` outputs; k walked ``bk`` at a time."""

    ty: int
    tx: int
    rm: int
    rn: int
    bk: int

    def __post_init__(self):
        nt = self.ty * self.tx
        if nt % self.bk or (self.ty * self.rm * self.bk) % nt or (self.bk * self.tx * self.rn) % nt:
            raise ValueError(f"inconsistent rollout tiling {self}")


GPU_TILING = GemmTiling(16, 16, 4, 4, 16)
SIMULATOR_TILING = GemmTiling(2, 2, 2, 2, 4)
_tiling = rt.Override()


def use_tiling(tiling: GemmTiling):
    """Run the rollout kernel with ``tiling`` (tests, tuning)."""
    return _tiling.use(tiling)


@functools.lru_cache(maxsize=16)
def layer_kernel(t: GemmTiling, fusion: int):
    """``R_new = rownorm(r I + (1 - r) fuse_h A[:, layer]) @ R_old`` for every sample.

    Signature: ``(attn, layer, first, lengths, residual, r_old, r_new)``;
    ``attn`` (S, L, H, n, n), ``r_old``/``r_new`` (S, n, n) float64; ``first``
    (0/1) multiplies by the identity instead of ``r_old``. Grid:
    ``S * ceil(n / bm) * ceil(n / bn)`` blocks of ``(tx, ty)`` threads.
    Returns ``(kernel, shared bytes)``.
    """
    TY, TX, RM, RN, BK = t.ty, t.tx, t.rm, t.rn, t.bk
    NT = TY * TX
    BM, BN = TY * RM, TX * RN
    XP, RP = BK + 1, BN + 1
    X_AT, R_AT = 0, BM * XP
    RED_AT = R_AT + BK * RP
    X_LOADS, R_LOADS = BM * BK // NT, BK * BN // NT
    MEAN, MAX = fusion == 0, fusion == 1
    f64 = types.float64
    nbytes = (RED_AT + BM * BK) * 8
    nan = np.float64(np.nan)

    def kernel(attn, layer, first, lengths, residual, r_old, r_new):
        if ALIGNED:
            sm = cuda.shared.array(0, f64, alignment=16)
        else:
            sm = cuda.shared.array(0, f64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        n = attn.shape[3]
        heads = attn.shape[2]
        nbm = (n + BM - 1) // BM
        nbn = (n + BN - 1) // BN
        bid = cuda.blockIdx.x
        s = bid // (nbm * nbn)
        rest = bid - s * (nbm * nbn)
        i0 = (rest // nbn) * BM
        j0 = (rest - (rest // nbn) * nbn) * BN
        length = lengths[s]
        keep = 1.0 - residual

        acc = cuda.local.array((RM, RN), f64)
        rowsum = cuda.local.array(X_LOADS, f64)
        a = cuda.local.array(RM, f64)
        b = cuda.local.array(RN, f64)
        for u in range(RM):
            for w in range(RN):
                acc[u, w] = 0.0
        for it in range(X_LOADS):
            rowsum[it] = 0.0

        if i0 < length and j0 < length:
            for k0 in range(0, length, BK):
                for it in range(X_LOADS):
                    idx = tid + it * NT
                    r = idx // BK
                    c = idx - r * BK
                    i = i0 + r
                    k = k0 + c
                    val = 0.0
                    if i < length and k < length:
                        fused = f64(attn[s, layer, 0, i, k])
                        for h in range(1, heads):
                            x = f64(attn[s, layer, h, i, k])
                            if MEAN:
                                fused += x
                            elif MAX:
                                fused = max(fused, x)
                            else:
                                fused = min(fused, x)
                        if MEAN:
                            fused /= heads
                        val = keep * fused
                        if i == k:
                            val += residual
                    sm[U(X_AT + r * XP + c)] = val
                    rowsum[it] += val  # row r of this thread is the same for every k0
                for it in range(R_LOADS):
                    idx = tid + it * NT
                    c = idx // BN
                    jj = idx - c * BN
                    k = k0 + c
                    j = j0 + jj
                    val = 0.0
                    if k < length and j < length:
                        if first:
                            val = 1.0 if k == j else 0.0
                        else:
                            val = r_old[s, k, j]
                    sm[U(R_AT + c * RP + jj)] = val
                cuda.syncthreads()  # A: tiles loaded
                for c in range(BK):
                    for u in range(RM):
                        a[u] = sm[U(X_AT + (ty + TY * u) * XP + c)]
                    for w in range(RN):
                        b[w] = sm[U(R_AT + c * RP + tx + TX * w)]
                    for u in range(RM):
                        for w in range(RN):
                            acc[u, w] += a[u] * b[w]
                cuda.syncthreads()  # D: tiles consumed

        for it in range(X_LOADS):
            idx = tid + it * NT
            r = idx // BK
            sm[U(RED_AT + r * BK + (idx - r * BK))] = rowsum[it]
        cuda.syncthreads()  # E: partial row sums written
        for u in range(RM):
            r = ty + TY * u
            i = i0 + r
            total = 0.0
            for c in range(BK):
                total += sm[U(RED_AT + r * BK + c)]
            for w in range(RN):
                j = j0 + tx + TX * w
                if i < n and j < n:
                    if i < length and j < length:
                        out = 0.0
                        if total > 0.0:
                            out = acc[u, w] / total
                        r_new[s, i, j] = out
                    else:
                        r_new[s, i, j] = nan

    return cuda.jit(kernel), nbytes


def rollout(data, lengths, fusion: int, residual: float, start: int):
    """Rollout of a batch of stored attention tensors on the GPU (no validation).

    Parameters
    ----------
    data : device array (sample, layer, head, n, n), float16/32/64, any strides
    lengths : int64 array (sample,) on the host
    fusion : int
        0 (mean), 1 (max) or 2 (min) over heads (:func:`attnkit.rollout.fusion_code`).
    residual : float in [0, 1]
    start : int
        First layer of the product, in [0, layer).

    Returns
    -------
    device array (sample, query, key) float64; NaN outside each sample's valid block.
    """
    s, n_layers, _, n, _ = (int(x) for x in data.shape)
    t = _tiling.value or (SIMULATOR_TILING if rt.SIMULATOR else GPU_TILING)
    kern, nbytes = layer_kernel(t, fusion)
    buffers = [rt.empty((s, n, n), np.float64), rt.empty((s, n, n), np.float64)]
    d_lens = rt.to_device(np.ascontiguousarray(lengths, dtype=np.int64))
    blocks = s * -(-n // (t.ty * t.rm)) * -(-n // (t.tx * t.rn))
    current = 0
    for layer in range(start, n_layers):
        src, dst = buffers[current], buffers[1 - current]
        rt.launch(kern, blocks, (t.tx, t.ty), nbytes, data, np.int64(layer),
                  np.int64(layer == start), d_lens, np.float64(residual), src, dst)
        current = 1 - current
    return buffers[current]
