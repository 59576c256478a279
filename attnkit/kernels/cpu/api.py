"""Run a prepared attention problem (:func:`attnkit._prepare.prepare`, target "cpu") on the CPU.

The CPU counterpart of :mod:`attnkit.kernels.cuda.api`, with the same
functions: it allocates the outputs, picks the tile sizes and calls the
kernels of :mod:`.attention` with single-threaded BLAS (the kernels already
use every core). Nothing is validated here.
"""

from __future__ import annotations

import numpy as np

from . import attention as _kernels
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


class _Kernels:
    """The CPU kernels for one problem (its score_mod compiled in), run with one BLAS thread."""

    def __init__(self, problem) -> None:
        self._module = (_kernels if problem.score_mod is None
                        else _kernels.with_score_mod(problem.score_mod))

    def __getattr__(self, name):
        kernel = getattr(self._module, name)

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
    while rows > 64 and problem.n_problems * -(-problem.n // rows) < MIN_TILES:
        rows //= 2
    return rows


def _common(p):
    return (p.q, p.k, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale, p.ops, p.aux, p.n_heads)


def _lse(p, kern) -> np.ndarray:
    """Log-sum-exp of every query row, (Z, n), in the compute dtype."""
    lse = np.empty((p.n_problems, p.n), dtype=p.q.dtype)
    dummy = np.zeros((1, 1, 1), dtype=p.q.dtype)
    kern.flash_forward(p.q, p.k, dummy, *_common(p)[2:], False, block_q(p), BLOCK_K, dummy, lse)
    return lse


def _batched(p, arr):
    return arr.reshape(p.batch_shape + arr.shape[1:])


def attention(p, return_lse: bool):
    """Forward pass: ``out`` (batch..., n, dv) and, optionally, ``lse`` (batch..., n)."""
    dv = p.v.shape[2]
    out = np.empty((p.n_problems, p.n, dv), dtype=p.q.dtype)
    lse = np.empty((p.n_problems, p.n), dtype=p.q.dtype)
    _Kernels(p).flash_forward(p.q, p.k, p.v, *_common(p)[2:], True, block_q(p), BLOCK_K, out, lse)
    out = _batched(p, out).astype(p.out_dtype, copy=False)
    return (out, _batched(p, lse)) if return_lse else out


def weights(p):
    """Exact probabilities (batch..., n, m) in the compute dtype."""
    kern = _Kernels(p)
    lse = _lse(p, kern)
    out = np.zeros((p.n_problems, p.n, p.m), dtype=p.q.dtype)
    kern.exact_weights(*_common(p), lse, block_q(p), BLOCK_K, out)
    return _batched(p, out)


def stats(p, per_query: bool, topk: int, received: bool) -> dict:
    """Per-query statistics (entropy, max, argmax, distance, top-k) and/or received attention.

    Returns a dict of float64 / int64 arrays, shaped (batch..., n[, topk]) or
    (batch..., m) for "received"; :func:`attnkit.attention_stats` picks from it.
    """
    kern = _Kernels(p)
    lse = _lse(p, kern).astype(np.float64)
    z, n, m = p.n_problems, p.n, p.m
    result: dict[str, np.ndarray] = {}
    if per_query or topk:
        entropy, maxprob, distance = (np.empty((z, n)) for _ in range(3))
        argmax = np.empty((z, n), dtype=np.int64)
        top_i = np.empty((z, n, topk), dtype=np.int64)
        top_v = np.empty((z, n, topk))
        kern.query_stats(*_common(p), lse, block_q(p), BLOCK_K,
                         entropy, maxprob, argmax, distance, top_i, top_v)
        result.update(entropy=entropy, max=maxprob, argmax=argmax, distance=distance,
                      topk_index=top_i, topk_value=top_v)
    if received:
        result["received"] = np.empty((z, m))
        kern.key_received(*_common(p), lse, BLOCK_Q, BLOCK_K, result["received"])
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
        self._kern = _Kernels(problem)
        self._lse = _lse(problem, self._kern).astype(np.float64)

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
            self._kern.key_received(*_common(p), shifted, BLOCK_Q, BLOCK_K, out[r])
        return out.transpose(1, 0, 2)
