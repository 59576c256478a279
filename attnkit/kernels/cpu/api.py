"""Run a prepared attention problem (:func:`attnkit._prepare.prepare`, target "cpu") on the CPU.

The CPU counterpart of :mod:`attnkit.kernels.cuda.api`, with the same
functions: it allocates the outputs, picks the tile sizes and calls the
kernels of :mod:`.attention` with single-threaded BLAS (the kernels already
use every core), or their serial copies for a problem of one task. Nothing
is validated here.

Kernels that pack all of a call's keys before their tasks start (see
:func:`.attention.packs_in_tasks`) pack them into one buffer kept between
calls (:class:`KeyScratch`, up to :data:`SCRATCH_MAX_BYTES`), lent to one call
at a time: a fresh call-sized array would be new memory, and in a virtual
machine faulting its pages in cost short calls up to half their time.
"""

from __future__ import annotations

import threading

import numpy as np

from . import attention as _kernels
from .gemm import NR, packed_size
from .threads import single_threaded_blas

# Tile sizes of the CPU kernels (queries x keys); tuned with interleaved A/B runs
# on the 2-core reference machine. Each query tile streams all of its head's keys
# and values, so taller tiles cut that traffic: 256 rows ran 4% faster than 128 at
# n = 2048-8192 and 7% at n = 16384 (128 had been 11% faster than 64 there).
# Taller still (512) lost on causal masks, whose diagonal tiles are computed whole.
BLOCK_Q = 256
BLOCK_K = 256
#: Fewest query tiles in a call before :func:`block_q` halves the tile height. A constant,
#: not a multiple of the thread count: the tile height picks between a full and a partial
#: tile's code path, which round differently, so it must not depend on the threads.
MIN_TILES = 16


def _kernel(p, name: str, tasks: int):
    """Kernel ``name`` of :mod:`.attention` for problem ``p``, ready to call.

    Its score_mod compiled in, if any. ``tasks`` is how many independent
    pieces (problem x query or key tile) the call splits into: with one there
    is nothing to run in parallel, and the serial copy of the kernel
    (:func:`.attention.serial`: same source, same tile code, bit-identical
    results) saves the parallel launch. Which copy runs depends on the
    problem's shape only.

    BLAS is limited to one thread around the call unless the kernel cannot
    reach it: float32 tiles use the micro-kernels of :mod:`.gemm`, never BLAS
    (only float64 ``np.dot`` does, and a user score_mod could do anything).
    """
    if p.score_mod is not None:
        kernel = getattr(_kernels.with_score_mod(p.score_mod), name)
    elif tasks == 1:
        kernel = getattr(_kernels.serial(), name)
    else:
        kernel = getattr(_kernels, name)
    if p.score_mod is None and p.q.dtype == np.float32:
        return kernel

    def call(*args):
        with single_threaded_blas():
            return kernel(*args)

    return call


def block_q(problem) -> int:
    """Query rows per tile for the kernels parallel over query tiles.

    :data:`BLOCK_Q`, halved (down to 64) while the problem has fewer than
    :data:`MIN_TILES` tiles in all, so that small problems still keep several
    cores busy. It depends on the problem's shape only, never on the number
    of threads: results are bit-identical for any thread count.
    """
    rows = BLOCK_Q
    z, n = problem.n_problems, problem.n
    while rows > 64 and z * -(-n // rows) < MIN_TILES:
        rows //= 2
    return rows


def block_k(problem) -> int:
    """Keys per tile: :data:`BLOCK_K`, or all the keys in one tile rounded up to whole panels.

    With ``m <= BLOCK_K`` every kernel sees one key tile ``[0, m)`` either way,
    so the results are the same; the smaller tile only packs (and zero-fills)
    fewer key panels, which is most of a tiny call's kernel time.
    """
    if problem.m >= BLOCK_K:
        return BLOCK_K
    return max(NR, -(-problem.m // NR) * NR)


#: Most bytes of one query tile's kept rows (rows x m) in the one-pass weights and received
#: (:func:`slab_rows`): about half an L2 cache of the reference machine, so that the final
#: rescaling of each tile reads them from there rather than from memory.
SLAB_BYTES = 1 << 20
#: Most bytes of the per-query-tile parts of "received" (Z x query tiles x m, float64) that
#: :func:`stats` keeps to fold it into the pass of the per-query statistics.
PARTS_BYTES = 64 << 20


def slab_rows(problem) -> int:
    """Query rows per tile for the passes that keep a tile's rows of probabilities (rows x m).

    :func:`block_q`, halved (down to 16) until the rows take at most
    :data:`SLAB_BYTES`. From the problem's shape only, like :func:`block_q`.
    """
    rows = block_q(problem)
    while rows > 16 and rows * problem.m * problem.q.dtype.itemsize > SLAB_BYTES:
        rows //= 2
    return rows


def _query_tasks(p, rows: int) -> int:
    """Tasks of the kernels parallel over (problem, query tile) with ``rows``-row tiles."""
    return p.n_problems * -(-p.n // rows)


def _key_tasks(p, cols: int) -> int:
    """Tasks of :func:`.attention.key_received` (parallel over key tiles) with ``cols``-key tiles."""
    return p.n_problems * -(-p.m // cols)


def _common(p):
    return (p.q, p.k, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale, p.ops, p.aux, p.n_heads)


#: Most bytes of packed keys :data:`KEY_SCRATCH` keeps between calls; larger calls get a
#: fresh array (their page faults are a small part of their time).
SCRATCH_MAX_BYTES = 64 << 20


class KeyScratch:
    """One flat float32 buffer for the call-wide packed keys, kept between calls.

    :meth:`lend` hands it to one call at a time: a call that finds it lent
    (another Python thread is inside a kernel with it) gets a fresh array, so
    no two calls ever share it. It grows to the largest request up to
    ``max_bytes``; :meth:`release` drops it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._buf: np.ndarray | None = None

    def lend(self, size: int) -> tuple[np.ndarray, bool]:
        """``(buffer of at least size float32, lent)``.

        Give a lent one back with :meth:`give_back` once the call is done.
        """
        if size * 4 > self.max_bytes or not self._lock.acquire(blocking=False):
            return np.empty(size, dtype=np.float32), False
        buf = self._buf
        if buf is None or buf.size < size:
            self._buf = None  # the old one goes before the new one is allocated
            buf = self._buf = np.empty(size, dtype=np.float32)
        return buf, True

    def give_back(self) -> None:
        self._lock.release()

    def release(self) -> None:
        """Drop the kept buffer (it is allocated again by the next call that needs one)."""
        with self._lock:
            self._buf = None

    @property
    def nbytes(self) -> int:
        """Bytes held between calls now."""
        buf = self._buf
        return 0 if buf is None else buf.nbytes


#: The packed-key buffer of this process's CPU kernels.
KEY_SCRATCH = KeyScratch(SCRATCH_MAX_BYTES)
_F32 = np.dtype(np.float32)


def _packs_per_call(p, tasks: int) -> bool:
    """Whether a query-tile kernel split into ``tasks`` packs all of ``p``'s keys once.

    float32 only (float64 tiles read the keys in place), by the rule of
    :func:`.attention.packs_in_tasks`; callers may test the cheap
    ``tasks <= LOCAL_PACK_USES * zk`` (always per task) first.
    """
    return (p.q.dtype is _F32 or p.q.dtype == _F32) and not _kernels.packs_in_tasks.py_func(
        tasks, p.k.shape[0], p.ops.shape[0] > 0)


def _run_packing_once(p, kernel, cols: int, args: tuple) -> None:
    """``kernel(*args, kp_buf)`` with :data:`KEY_SCRATCH` lent as ``kp_buf`` (or a fresh array)."""
    kp_buf, lent = KEY_SCRATCH.lend(packed_size(p.k.shape[0], p.m, p.k.shape[2], cols))
    try:
        kernel(*args, kp_buf)
    finally:
        if lent:
            KEY_SCRATCH.give_back()


def _forward(p, v, out, rows=None, weights=None):
    """Run :func:`.attention.flash_forward` and return ``lse`` (Z, n), compute dtype.

    Values go to ``out`` unless ``v`` is None, probabilities to ``weights``
    if given; ``rows`` defaults to :func:`block_q`.
    """
    dtype = p.q.dtype
    lse = np.empty((p.n_problems, p.n), dtype=dtype)
    rows = block_q(p) if rows is None else rows
    cols = block_k(p)
    dummy = np.empty((1, 1, 1), dtype=dtype)  # never read or written
    tasks = _query_tasks(p, rows)
    args = (
        p.q, p.k, dummy if v is None else v, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale,
        p.ops, p.aux, p.n_heads, v is not None, rows, cols, dummy if out is None else out,
        lse, weights is not None, dummy if weights is None else weights,
    )
    kernel = _kernel(p, "flash_forward", tasks)
    if tasks <= _kernels.LOCAL_PACK_USES * p.k.shape[0] or not _packs_per_call(p, tasks):
        kernel(*args)  # keys packed per task (or not at all): no buffer to pass
    else:
        _run_packing_once(p, kernel, cols, args)
    return lse


def _batched(p, arr):
    return arr.reshape(p.batch_shape + arr.shape[1:])


def attention(p, return_lse: bool):
    """Forward pass: ``out`` (batch..., n, dv) and, optionally, ``lse`` (batch..., n)."""
    out = np.empty((p.n_problems, p.n, p.v.shape[2]), dtype=p.q.dtype)
    lse = _forward(p, p.v, out)
    out = _batched(p, out)
    if out.dtype != p.out_dtype:
        out = out.astype(p.out_dtype)
    return (out, _batched(p, lse)) if return_lse else out


def weights(p):
    """Exact probabilities (batch..., n, m) in the compute dtype, in one pass over the keys."""
    out = np.zeros((p.n_problems, p.n, p.m), dtype=p.q.dtype)
    _forward(p, None, None, slab_rows(p), out)
    return _batched(p, out)


def stats(p, per_query: bool, topk: int, received: bool) -> dict:
    """Per-query statistics (entropy, max, argmax, distance, top-k) and/or received attention.

    Returns a dict of float64 / int64 arrays, shaped (batch..., n[, topk]) or
    (batch..., m) for "received"; :func:`attnkit.attention_stats` picks from it.

    One online pass over the keys (:func:`.attention.query_stats`) gives the
    per-query statistics and the log-sum-exp, and folds "received" in (each
    query tile's parts, summed in order) while those parts take at most
    :data:`PARTS_BYTES` and a tile's rows at most :data:`SLAB_BYTES`; past
    that, "received" takes a pass of its own over the queries with that
    log-sum-exp. Which way depends on the shape only, never on which
    statistics are asked for, so "received" is the same either way.
    """
    z, n, m = p.n_problems, p.n, p.m
    rows = slab_rows(p)
    fold = (received and rows * m * p.q.dtype.itemsize <= SLAB_BYTES
            and z * -(-n // rows) * m * 8 <= PARTS_BYTES)
    if not fold:  # no rows to keep: the usual tiles (the per-query results are the same)
        rows = block_q(p)
    tiles = -(-n // rows)
    result: dict[str, np.ndarray] = {}
    if per_query or topk or received:
        lse = np.empty((z, n))
        entropy, maxprob, distance = (np.empty((z, n)) for _ in range(3))
        argmax = np.empty((z, n), dtype=np.int64)
        top_i = np.empty((z, n, topk), dtype=np.int64)
        top_v = np.empty((z, n, topk))
        parts = np.zeros((z, tiles, m) if fold else (1, 1, 1))
        cols = block_k(p)
        args = (*_common(p), rows, cols, lse, entropy, maxprob, argmax, distance, top_i, top_v,
                fold, parts)
        kernel = _kernel(p, "query_stats", z * tiles)
        if z * tiles <= _kernels.LOCAL_PACK_USES * p.k.shape[0] \
                or not _packs_per_call(p, z * tiles):
            kernel(*args)
        else:
            _run_packing_once(p, kernel, cols, args)
        result.update(entropy=entropy, max=maxprob, argmax=argmax, distance=distance,
                      topk_index=top_i, topk_value=top_v)
        if fold:  # the parts summed over the query tiles, in order (one tile: the part itself)
            result["received"] = parts[:, 0] if tiles == 1 else parts.sum(axis=1)
    if received and not fold:
        result["received"] = np.empty((z, m))
        cols = block_k(p)
        _kernel(p, "key_received", _key_tasks(p, cols))(
            *_common(p), lse.astype(p.q.dtype), BLOCK_Q, cols, result["received"],
        )
    return {name: _batched(p, arr) for name, arr in result.items()}


#: Most weight rows one :class:`RowStream` pass carries (bounds its (Z, rows, m) result).
MAX_ROWS_PER_PASS = 64


def rows_per_pass(d: int, *dtypes) -> int:
    """Weight rows per :class:`RowStream` pass (the CPU has no shared-memory limit)."""
    return MAX_ROWS_PER_PASS


class RowStream:
    """Weighted sums of one layer's attention rows, streamed (for :func:`attnkit.rollout_rows`).

    ``lse()`` gives every query's log-sum-exp, ``received(weights, group)``
    gives ``sum_i weights[z // group, r, i] * p_z[i, j]`` for every problem
    ``z``, weight row ``r`` and key ``j``; the probabilities are recomputed
    tile by tile, never stored.
    """

    def __init__(self, problem) -> None:
        self.p = problem
        self._lse = _forward(problem, None, None).astype(np.float64)
        self._cols = block_k(problem)
        self._received = _kernel(problem, "key_received", _key_tasks(problem, self._cols))

    def lse(self) -> np.ndarray:
        """(Z, n) float64 natural log-sum-exp; ``-inf`` for rows with no allowed key."""
        return self._lse

    def received(self, weights: np.ndarray, group: int) -> np.ndarray:
        """(Z, R, m) float64 for ``weights`` (Z // group, R, n) float64 >= 0 on the host."""
        p = self.p
        out = np.empty((weights.shape[1], p.n_problems, p.m))
        rows = np.repeat(weights, group, axis=0)  # (Z, R, n)
        for r in range(weights.shape[1]):
            # key_received sums exp(s_ij - lse_i) over queries; handing it
            # lse_i - log(w_i) makes it sum w_i p_ij. Zero weights give +inf: exactly 0.
            w = rows[:, r]
            with np.errstate(divide="ignore", invalid="ignore"):
                shifted = np.where(w > 0, self._lse - np.log(w), np.inf).astype(p.q.dtype)
            self._received(*_common(p), shifted, BLOCK_Q, self._cols, out[r])
        return out.transpose(1, 0, 2)
