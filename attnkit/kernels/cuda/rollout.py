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

:func:`rollout_rows` computes chosen rows of the rollout from per-layer
queries and keys instead, streaming each layer's attention through the
attention kernels, for lengths where n x n matrices cannot be stored.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
from numba import cuda, types

from . import runtime as rt

U = types.uint64
ALIGNED = not rt.SIMULATOR
FUSIONS = {"mean": 0, "max": 1, "min": 2}


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
_override: GemmTiling | None = None


@contextlib.contextmanager
def use_tiling(tiling: GemmTiling):
    """Run the rollout kernel with ``tiling`` (tests, tuning)."""
    global _override
    previous, _override = _override, tiling
    try:
        yield
    finally:
        _override = previous


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


def _check_usable() -> None:
    from ...attention import _cuda_status
    from ...errors import BackendUnavailableError

    usable, _, reason = _cuda_status()
    if not usable:
        raise BackendUnavailableError(
            f"backend='cuda': the CUDA rollout cannot run here: {reason}. Fix: use "
            "backend='cpu', or run on a machine with an NVIDIA GPU and the GPU extra.")


def rollout(attn, lengths, head_fusion: str = "mean", residual: float = 0.5,
            start_layer: int = 0):
    """Rollout of a batch of stored attention tensors on the GPU.

    Parameters
    ----------
    attn : array (sample, layer, head, n, n), float16/32/64
        Host array, or GPU array (numba device array or anything with
        ``__cuda_array_interface__``; read in place, any strides).
    lengths : array of int, shape (sample,)
        Valid tokens per sample (host array).
    head_fusion : {"mean", "max", "min"}
    residual : float in [0, 1]
    start_layer : int
        First layer of the product (negative counts from the end).

    Returns
    -------
    (sample, query, key) float64: a numba device array for GPU input, else a
    NumPy array. NaN outside each sample's valid block.
    """
    _check_usable()
    from ..._prepare import is_device_array

    if head_fusion not in FUSIONS:
        raise ValueError(f"head_fusion: expected 'mean', 'max' or 'min', got {head_fusion!r}. "
                         "Fix: pick one of those.")
    on_device = is_device_array(attn)
    data = rt.as_device(attn) if on_device else np.asarray(attn)
    if data.dtype.name not in ("float16", "float32", "float64"):
        raise TypeError(f"attn: expected float16, float32 or float64 weights, got {data.dtype}. "
                        "Fix: cast it, e.g. attn.astype(np.float32).")
    s, n_layers, _, n, _ = (int(x) for x in data.shape)
    start = int(start_layer) % n_layers if n_layers else 0
    lens = np.ascontiguousarray(np.broadcast_to(np.asarray(lengths, dtype=np.int64), (s,)))
    if not on_device:
        data = rt.to_device(np.ascontiguousarray(data))
    t = _override or (SIMULATOR_TILING if rt.SIMULATOR else GPU_TILING)
    kern, nbytes = layer_kernel(t, FUSIONS[head_fusion])
    buffers = [rt.empty((s, n, n), np.float64), rt.empty((s, n, n), np.float64)]
    d_lens = rt.to_device(lens)
    blocks = s * -(-n // (t.ty * t.rm)) * -(-n // (t.tx * t.rn))
    current = 0
    for layer in range(start, n_layers):
        src, dst = buffers[current], buffers[1 - current]
        rt.launch(kern, blocks, (t.tx, t.ty), nbytes, data, np.int64(layer),
                  np.int64(layer == start), d_lens, np.float64(residual), src, dst)
        current = 1 - current
    result = buffers[current]
    if n_layers == 0 or start >= n_layers:  # nothing multiplied: all NaN
        result = rt.to_device(np.full((s, n, n), np.nan))
    return result if on_device else result.copy_to_host()


# ------------------------------------------------------ rows from q and k
#: Most weight rows one streaming pass carries (more rows: several passes).
MAX_ROWS_PER_PASS = 8


@cuda.jit
def _combine(received, v_old, lse2, lengths, n_heads, residual, v_new):
    """v_new = (1 - r) mean_h received[s H + h] + r v_old, plus fully masked rows kept.

    A query row with no allowed key has ``x_l[i] = r e_i``, which the row
    normalisation turns into ``e_i`` (r > 0): its weight passes through whole.
    """
    s_, rows, n = v_new.shape
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    for idx in range(start, s_ * rows * n, step):
        j = idx % n
        u = (idx // n) % rows
        s = idx // (n * rows)
        if j >= lengths[s]:
            v_new[s, u, j] = 0.0
            continue
        total = 0.0
        for h in range(n_heads):
            total += received[s * n_heads + h, u, j]
        val = (1.0 - residual) * total / n_heads + residual * v_old[s, u, j]
        if residual > 0.0 and lse2[s * n_heads, j] == -np.inf:
            val += (1.0 - residual) * v_old[s, u, j]
        v_new[s, u, j] = val


def _rows_per_pass(d: int, *dtypes) -> int:
    """Most weight rows (<= MAX_ROWS_PER_PASS) whose received kernel fits shared memory."""
    from . import api
    from . import tiling as tl

    acc = "float64" if any(np.dtype(x) == np.float64 for x in dtypes) else "float32"
    limit = rt.max_shared_bytes()
    t = tl.choose(d, d, acc, limit, rt.SIMULATOR, api._override)
    dp, dvp = tl.padded_dims(t, d, d)
    rows = MAX_ROWS_PER_PASS
    while rows > 1 and tl.layout(t, dp, dvp, np.dtype(acc).itemsize, "received",
                                 rows=rows).nbytes > limit:
        rows -= 1
    return rows


def rollout_rows(q, k, rows, *, residual: float = 0.5, start_layer: int = 0, scale=None,
                 causal: bool = False, mask=None, score_mod=None, lengths=None,
                 check_finite: bool = True):
    """Rows of the attention rollout computed from per-layer queries and keys.

    The attention of every layer is recomputed tile by tile by the streaming
    kernels, never stored: memory is O(n) per row and head, so rollout works
    at lengths where the n x n weights of one layer do not fit. Head fusion is
    the mean (``max``/``min`` need every head's weight at once: use stored
    attention and :func:`rollout`). Equal to
    ``ak.rollout(weights, head_fusion="mean", ...)[..., rows, :]`` where
    ``weights`` stacks ``ak.attention_weights(q[l], k[l], ...)`` over layers.

    Parameters
    ----------
    q, k : arrays (layer, head, n, d) or (sample, layer, head, n, d)
        Per-layer queries and keys, on the host or the device; k may have
        fewer heads (grouped-query attention).
    rows : sequence of int
        Query positions whose rollout rows are wanted (the same for every sample).
    residual, start_layer
        As in :func:`attnkit.rollout`.
    scale, causal, mask, score_mod, check_finite
        How each layer's attention is computed (:func:`attnkit.attention`).
    lengths : int or array (sample,), optional
        Valid tokens per sample (queries and keys).

    Returns
    -------
    (sample, row, key) float64 (no sample axis for 4-d inputs): a numba device
    array for GPU inputs, else NumPy. NaN for rows past a sample's length and
    for keys past it.
    """
    from ..._prepare import is_device_array, prepare
    from ...errors import shape_error, value_error
    from . import api

    _check_usable()
    on_device = is_device_array(q) or is_device_array(k)
    q, k = (rt.as_device(x) if is_device_array(x) else np.asarray(x) for x in (q, k))
    if len(q.shape) not in (4, 5) or len(k.shape) != len(q.shape):
        raise shape_error("q, k", "(layer, head, n, d) or (sample, layer, head, n, d)",
                          (tuple(q.shape), tuple(k.shape)), "stack the layers on one axis")
    single = len(q.shape) == 4
    n_layers, n = int(q.shape[-4]), int(q.shape[-2])
    if int(k.shape[-4]) != n_layers or int(k.shape[-2]) != n:
        raise shape_error("k", f"{n_layers} layers and {n} positions like q", tuple(k.shape),
                          "rollout needs self-attention: keys at the query positions")
    idx = np.asarray(rows)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise value_error("rows", f"a 1-d array of positions in [0, {n})", repr(rows),
                          "pass e.g. rows=[0] for the first token")
    if not 0.0 <= float(residual) <= 1.0:
        raise value_error("residual", "a number in [0, 1]", repr(residual), "pass e.g. 0.5")
    if isinstance(start_layer, bool) or not -n_layers <= int(start_layer) < n_layers:
        raise value_error("start_layer", f"an int layer index in [0, {n_layers})",
                          repr(start_layer), "count layers from 0 (negative counts from the end)")
    start = int(start_layer) % n_layers
    n_samples = 1 if single else int(q.shape[0])
    lens = np.broadcast_to(np.asarray(n if lengths is None else lengths, dtype=np.int64),
                           (n_samples,)).copy()
    if lens.size and (lens.min() < 0 or lens.max() > n):
        raise value_error("lengths", f"lengths in [0, {n}]", lens.tolist(), "clip them to n")
    d_lens = rt.to_device(lens)
    per_layer_lengths = int(lens[0]) if single else lens
    per_pass = _rows_per_pass(int(q.shape[-1]), q.dtype, k.dtype)
    pieces = []
    for first in range(0, idx.size, per_pass):
        chunk = idx[first:first + per_pass]
        v = np.zeros((n_samples, chunk.size, n))
        for u, row in enumerate(chunk):
            v[lens > row, u, row] = 1.0
        v = rt.to_device(v)
        for layer in range(n_layers - 1, start - 1, -1):
            ql = q[layer] if single else q[:, layer]
            kl = k[layer] if single else k[:, layer]
            p = prepare(ql, kl, scale=scale, causal=causal, mask=mask, score_mod=score_mod,
                        q_lengths=per_layer_lengths, kv_lengths=per_layer_lengths,
                        check_finite=check_finite, target="cuda")
            run = api._Launch(p, with_values=False)
            lse2 = run.lse2()
            n_heads = p.n_problems // n_samples
            received = run.received(lse2, v, n_heads)
            v_new = rt.empty(v.shape, np.float64)
            threads = 32 if rt.SIMULATOR else 256
            blocks = max(1, min(-(-v.size // threads), 1 if rt.SIMULATOR else 4096))
            rt.launch(_combine, blocks, (threads,), 0, received, v, lse2, d_lens,
                      np.int64(n_heads), np.float64(residual), v_new)
            v = v_new
        pieces.append((first, chunk, v))
    out = np.full((n_samples, idx.size, n), np.nan)
    for first, chunk, v in pieces:
        host = v.copy_to_host()
        for u, row in enumerate(chunk):
            for s in range(n_samples):
                if row < lens[s]:
                    out[s, first + u, :lens[s]] = host[s, u, :lens[s]]
    out = out[0] if single else out
    return rt.to_device(out) if on_device else out
