"""Vectorisable row operations for the CPU kernels.

The pip builds of llvmlite have no SVML, so ``np.exp`` in a Numba loop is a
scalar libm call (~10 ns each), which dominated the attention kernels. For
float32 rows :func:`exp_shifted` uses a polynomial exp that LLVM vectorises:
``exp(x) = 2**k * p(r)`` with ``k = round(x / ln 2)``, ``r = x - k ln 2``
(Cody-Waite split of ln 2) and a degree-6 Taylor polynomial on
``|r| <= ln(2) / 2``; relative error <= 2e-7, about one float32 ulp.
Arguments below -87 (including -inf) give exactly 0: ``exp(-87) ~ 1.6e-38``
is below float32's normal range and never matters next to a row maximum of 1.
NaN gives NaN, so NaN inputs (``check_finite=False``) propagate.
float64 rows keep ``np.exp``: float64 is chosen for accuracy, not speed.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

# Only flags that keep inf semantics: -inf marks masked scores.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(1.428606765330187e-06)
_FLOOR = np.float32(-87.0)
_NAN_BITS = np.int32(0x7FC00000)


def exp_shifted(src, shift, dst, scratch):  # pragma: no cover - replaced by the overload
    """``dst[j] = exp(src[j] - shift)`` for 1-d rows; returns ``sum(dst)`` (float64).

    ``dst`` must not overlap ``src``: LLVM only vectorises the loop when it can
    rule out aliasing (in place ran 4x slower). ``scratch`` is an int32 buffer
    at least as long as the row.
    """
    raise NotImplementedError


@overload(exp_shifted, jit_options={"fastmath": FAST, "nogil": True})
def _exp_shifted(src, shift, dst, scratch):
    if src.dtype == types.float32:

        def fast(src, shift, dst, scratch):
            n = src.shape[0]
            sh = np.float32(shift)
            for j in range(n):
                x = src[j] - sh
                xc = x if x > _FLOOR else _FLOOR
                kf = np.floor(xc * _LOG2E + np.float32(0.5))
                r = xc - kf * _LN2_HI - kf * _LN2_LO
                p = np.float32(1.0 / 720.0)
                p = p * r + np.float32(1.0 / 120.0)
                p = p * r + np.float32(1.0 / 24.0)
                p = p * r + np.float32(1.0 / 6.0)
                p = p * r + np.float32(0.5)
                p = p * r + np.float32(1.0)
                p = p * r + np.float32(1.0)
                dst[j] = p
                # 2**k as float32 bits; 0.0 below the floor; NaN for NaN.
                bits = (np.int32(kf) + np.int32(127)) << 23
                scratch[j] = bits if x >= _FLOOR else (np.int32(0) if x < _FLOOR else _NAN_BITS)
            scale = scratch[:n].view(np.float32)
            total = 0.0
            for j in range(n):
                e = dst[j] * scale[j]
                dst[j] = e
                total += e
            return total

        return fast

    def exact(src, shift, dst, scratch):
        total = 0.0
        for j in range(src.shape[0]):
            e = np.exp(src[j] - shift)
            dst[j] = e
            total += e
        return total

    return exact


_LANES = 16


@njit(cache=True, nogil=True, fastmath=FAST)
def row_max(row):
    """Largest entry of a 1-d row: -inf for an all -inf row, NaN if any entry is NaN.

    LLVM does not vectorise a plain max reduction here; 16 independent lanes
    reduced at the end run about twice as fast.
    """
    lanes = np.full(_LANES, -np.inf, dtype=row.dtype)
    n = row.shape[0]
    whole = n - n % _LANES
    for j in range(0, whole, _LANES):
        for t in range(_LANES):
            x = row[j + t]
            # NaN wins: (x != x) is true only for NaN.
            lanes[t] = x if (x > lanes[t] or x != x) else lanes[t]
    best = -np.inf
    for t in range(_LANES):
        best = lanes[t] if (lanes[t] > best or lanes[t] != lanes[t]) else best
    for j in range(whole, n):
        best = row[j] if (row[j] > best or row[j] != row[j]) else best
    return best


@njit(cache=True, nogil=True, fastmath=FAST)
def scale_add_row(dst, factor, src):
    """``dst = dst * factor + src`` in place."""
    for j in range(dst.shape[0]):
        dst[j] = dst[j] * factor + src[j]


@njit(cache=True, nogil=True, fastmath=FAST)
def add_row(dst, src):
    """``dst += src`` in place."""
    for j in range(dst.shape[0]):
        dst[j] += src[j]
