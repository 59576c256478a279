"""Run a prepared attention problem (:func:`attnkit._prepare.prepare`, target "cuda") on the GPU.

Host inputs are copied to the device and the results copied back; device
inputs (numba device arrays, or anything with ``__cuda_array_interface__``)
are read in place and the results returned as numba device arrays, which
CuPy (``cupy.asarray``) and PyTorch (``torch.as_tensor(x, device="cuda")``)
wrap without a copy.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import masking as mk
from . import runtime as rt
from . import tiling as tl
from .attention import (
    device_score_mod,
    forward_kernel,
    query_stats_kernel,
    received_kernel,
    weights_kernel,
)

_tiling = rt.Override()


def use_tiling(tiling: tl.Tiling):
    """Run the kernels with ``tiling`` instead of the automatic choice (tests, tuning)."""
    return _tiling.use(tiling)


class _Launch:
    """Device-side arguments and compile-time choices shared by the kernels of one call."""

    def __init__(self, p, with_values: bool) -> None:
        self.p = p
        self.acc = "float64" if p.out_dtype == np.float64 or _any_f64(p) else "float32"
        self.q, self.k = rt.to_device(p.q), rt.to_device(p.k)
        self.v = rt.to_device(p.v) if with_values else None
        self.d = int(p.q.shape[3])
        self.dv = int(p.v.shape[3]) if with_values else self.d
        self.tiling = tl.choose(self.d, self.dv, self.acc, rt.max_shared_bytes(),
                                rt.SIMULATOR, _tiling.value)
        self.dp, self.dvp = tl.padded_dims(self.tiling, self.d, self.dv)
        self.mask = mk.mask_kind(p.ops)
        self.mod = device_score_mod(p.score_mod)
        self.maps = tuple(rt.to_device(np.ascontiguousarray(a, dtype=np.int64))
                          for a in (p.q_map, p.kv_map, p.q_len, p.kv_len))
        ops = p.ops if p.ops.shape[0] else np.zeros((0, 5), np.int64)
        self.ops = rt.to_device(np.ascontiguousarray(ops, dtype=np.int64))
        self.aux = rt.to_device(np.ascontiguousarray(p.aux, dtype=np.int64))
        t = self.tiling
        self.tiles = _NO_TILES() if self.mask == mk.MASK_NONE else _tiles(
            p.ops.tobytes(), p.aux.tobytes(), p.n, p.m, t.block_q, t.block_k)
        self.scale2 = (np.float64 if self.acc == "float64" else np.float32)(
            p.scale / math.log(2.0))
        self.block = (self.tiling.tx, self.tiling.ty)

    def common(self):
        return (self.q, self.k) + self.maps + self.mask_args()

    def mask_args(self):
        return (self.scale2, self.ops, self.aux, self.tiles, np.int64(self.p.n_heads))

    def query_blocks(self) -> int:
        return self.p.n_problems * -(-self.p.n // self.tiling.block_q)

    def lse2(self):
        """Base-2 log-sum-exp of every query row, (Z, n), on the device."""
        p = self.p
        kern, lay = forward_kernel(self.tiling, self.dp, self.dvp, self.acc, self.mask,
                                   self.mod, False)
        lse = rt.empty((p.n_problems, p.n), self.acc)
        dummy = rt.empty((1, 1, 1, 1), self.acc)
        q, k = self.q, self.k
        rt.launch(kern, self.query_blocks(), self.block, lay.nbytes,
                  q, k, dummy, *self.maps, *self.mask_args(), rt.empty((1, 1, 1), self.acc), lse)
        return lse

    def received(self, lse2, weights, group: int):
        """``sum_i weights[z // group, r, i] p_z[i, j]`` as (Z, rows, m) float64 on the device."""
        p = self.p
        rows = int(weights.shape[1])
        out = rt.empty((p.n_problems, rows, p.m), np.float64)
        kern, lay = received_kernel(self.tiling, self.dp, self.acc, self.mask, self.mod, rows)
        blocks = p.n_problems * -(-p.m // self.tiling.block_k)
        rt.launch(kern, blocks, self.block, lay.nbytes, *self.common(), lse2, weights,
                  np.int64(group), out)
        return out


@functools.lru_cache(maxsize=1)
def _NO_TILES():
    return rt.to_device(np.full((1, 1), mk.FULL, np.int8))


@functools.lru_cache(maxsize=16)
def _tiles(ops: bytes, aux: bytes, n: int, m: int, block_q: int, block_k: int):
    """The tile table on the device, cached: repeated calls skip the host pass and the copy."""
    table = mk.tile_table(np.frombuffer(ops, np.int64).reshape(-1, 5), np.frombuffer(aux, np.int64),
                          n, m, block_q, block_k)
    return rt.to_device(table)


def _any_f64(p) -> bool:
    arrays = [p.q, p.k] + ([p.v] if p.v is not None else [])
    return any(a.dtype == np.float64 for a in arrays)


def _result(p, arr, shape, dtype=None):
    """Reshape a device result; copy it to the host unless the inputs were on the device."""
    if p.device:
        return arr.reshape(shape)
    host = arr.copy_to_host().reshape(shape)
    return host if dtype is None else host.astype(dtype, copy=False)


def attention(p, return_lse: bool):
    """Forward pass: ``out`` (batch..., n, dv) and, optionally, ``lse`` (batch..., n)."""
    run = _Launch(p, with_values=True)
    z, n, dv = p.n_problems, p.n, run.dv
    out_dtype = p.out_dtype if p.out_dtype.name in ("float16", "float32", "float64") \
        else np.dtype(np.float32)  # bfloat16 (host only) is converted after the copy back
    out = rt.empty((z, n, dv), out_dtype)
    lse = rt.empty((z, n), run.acc)
    kern, lay = forward_kernel(run.tiling, run.dp, run.dvp, run.acc, run.mask, run.mod, True)
    rt.launch(kern, run.query_blocks(), run.block, lay.nbytes,
              run.q, run.k, run.v, *run.maps, *run.mask_args(), out, lse)
    out = _result(p, out, p.batch_shape + (n, dv), p.out_dtype)
    if return_lse:
        return out, _result(p, lse, p.batch_shape + (n,))
    return out


def weights(p):
    """Exact probabilities (batch..., n, m) in the accumulation dtype."""
    run = _Launch(p, with_values=False)
    lse2 = run.lse2()
    out = rt.empty((p.n_problems, p.n, p.m), run.acc)
    kern, lay = weights_kernel(run.tiling, run.dp, run.acc, run.mask, run.mod)
    rt.launch(kern, run.query_blocks(), run.block, lay.nbytes, *run.common(), lse2, out)
    return _result(p, out, p.batch_shape + (p.n, p.m))


def _topk_cap(topk: int) -> int:
    return 0 if topk == 0 else 1 << (topk - 1).bit_length()


def stats(p, per_query: bool, topk: int, received: bool) -> dict:
    """As :func:`attnkit.kernels.cpu.api.stats` (float64 / int64 arrays)."""
    run = _Launch(p, with_values=False)
    lse2 = run.lse2()
    z, n, m = p.n_problems, p.n, p.m
    result = {}
    if per_query or topk:
        entropy, maxprob, distance = (rt.empty((z, n), np.float64) for _ in range(3))
        argmax = rt.empty((z, n), np.int64)
        top_i = rt.empty((z, n, max(topk, 1)), np.int64)
        top_v = rt.empty((z, n, max(topk, 1)), np.float64)
        kern, lay = query_stats_kernel(run.tiling, run.dp, run.acc, run.mask, run.mod,
                                       _topk_cap(topk))
        rt.launch(kern, run.query_blocks(), run.block, lay.nbytes, *run.common(), lse2,
                  np.int64(topk), entropy, maxprob, argmax, distance, top_i, top_v)
        result.update(entropy=entropy, max=maxprob, argmax=argmax, distance=distance)
        if topk:
            result.update(topk_index=top_i, topk_value=top_v)
    if received:
        ones = rt.to_device(np.ones((1, 1, max(n, 1))))
        result["received"] = run.received(lse2, ones, max(z, 1)).reshape((z, m))
    return {name: _result(p, arr, p.batch_shape + tuple(arr.shape[1:]))
            for name, arr in result.items()}


#: Most weight rows one received pass carries (more rows: several passes).
MAX_ROWS_PER_PASS = 8


def rows_per_pass(d: int, *dtypes) -> int:
    """Most weight rows (<= MAX_ROWS_PER_PASS) whose received kernel fits shared memory."""
    if d > tl.MAX_HEAD_DIM:  # prepare() refuses the problem with a clear error
        return MAX_ROWS_PER_PASS
    acc = "float64" if any(np.dtype(x) == np.float64 for x in dtypes) else "float32"
    limit = rt.max_shared_bytes()
    t = tl.choose(d, d, acc, limit, rt.SIMULATOR, _tiling.value)
    dp, dvp = tl.padded_dims(t, d, d)
    rows = MAX_ROWS_PER_PASS
    while rows > 1 and tl.layout(t, dp, dvp, np.dtype(acc).itemsize, "received",
                                 rows=rows).nbytes > limit:
        rows -= 1
    return rows


class RowStream:
    """Weighted sums of one layer's attention rows, streamed (for :func:`attnkit.rollout_rows`).

    The GPU counterpart of :class:`attnkit.kernels.cpu.api.RowStream`, with
    the same methods; results come back to the host (they are O(rows x m)).
    """

    def __init__(self, problem) -> None:
        self._run = _Launch(problem, with_values=False)
        self._lse2 = self._run.lse2()

    def lse(self) -> np.ndarray:
        """(Z, n) float64 natural log-sum-exp; ``-inf`` for rows with no allowed key."""
        return self._lse2.copy_to_host().astype(np.float64) * math.log(2.0)

    def received(self, weights: np.ndarray, group: int) -> np.ndarray:
        """(Z, R, m) float64 for ``weights`` (Z // group, R, n) float64 >= 0 on the host."""
        w = rt.to_device(np.ascontiguousarray(weights, dtype=np.float64))
        return self._run.received(self._lse2, w, int(group)).copy_to_host()
