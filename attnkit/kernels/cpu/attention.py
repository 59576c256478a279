"""Tiled (flash-style) attention kernels for the CPU.

No validation happens here: :mod:`attnkit.attention` checks and normalises the
arguments and allocates the outputs. Conventions shared by every kernel:

* ``q`` is ``(Zq, n, d)``, ``k`` is ``(Zk, m, d)``, ``v`` is ``(Zk, m, dv)``,
  all C-contiguous and of one float dtype. Problem ``z`` (``0 <= z < Z``)
  uses ``q[q_map[z]]`` against ``k[kv_map[z]]`` / ``v[kv_map[z]]``; this is
  how broadcasting and grouped-query attention reach the kernels.
* ``q_len[z]`` / ``kv_len[z]`` are the valid lengths; positions past them are
  padding: padded keys get no probability, padded queries are fully masked.
* ``ops`` / ``aux`` is a compiled mask (see :mod:`.masking`).
* ``score_mod(score, b, h, q_idx, kv_idx)`` is applied to each scaled,
  unmasked score, with ``b = z // n_heads`` and ``h = z % n_heads``. It is a
  module global (see :func:`with_score_mod`), not an argument, so that the
  default kernels can be cached on disk.
* A fully masked query row has output 0, log-sum-exp ``-inf`` and zero
  probabilities everywhere: never NaN.

Work is split over (problem, query tile) with ``prange``; each output
element is written by exactly one iteration, so results are bit-identical
from run to run and for any number of threads. float32 tile products use
the register-blocked micro-kernels of :mod:`.gemm` (keys packed once per
call, values read in place); float64 ones go through BLAS via ``np.dot`` on
contiguous blocks (zero-copy views of the flat inputs).

The forward pass fuses the exponential into the score product on FULL tiles
once every row of the query tile has a finite running maximum: the scores
are exponentiated against that maximum as they leave the registers, and a
row is rescaled only when a tile raises its maximum by more than
:data:`RESCALE_ABOVE` (conditional rescaling, as in FlashAttention-4). The
first tile of each row, masked (PARTIAL) tiles, user score_mods and tiles
whose maximum jumps by more than :data:`REDO_ABOVE` take the unfused path:
scores, row maximum, then the exponential.

On PARTIAL tiles the mask is also asked about each block of ``MR`` rows x
``NR`` keys of the micro-kernels (:func:`.masking.block_spans`); both tile
products skip the blocks it rules out, which halves the cost of a causal
mask's diagonal tiles.
"""

import functools
import types

import numpy as np
from numba import njit, prange

from .gemm import MR, NR, accumulate_tile, pack_keys, score_exp_tile, score_tile
from .masking import EMPTY, FULL, PARTIAL, block_spans, mask_tile, tile_state
from .rowops import add_row, entropy_distance_terms, exp_shifted, row_max


@njit(cache=True, nogil=True)
def no_score_mod(score, b, h, q_idx, kv_idx):
    """Identity score_mod, used when the caller gives none."""
    return score


# The kernels call the module globals ``score_mod`` / ``HAS_SCORE_MOD``, which
# Numba freezes at compile time. The defaults below give the disk-cached
# kernels; :func:`with_score_mod` re-jits copies with these rebound.
score_mod = no_score_mod
HAS_SCORE_MOD = False


@njit(cache=True, nogil=True)
def _load_scaled_queries(q, zq, q0, q1, scale, out):
    """Copy queries [q0, q1) of problem zq into out[:q1-q0], multiplied by scale."""
    d = q.shape[2]
    for i in range(q1 - q0):
        for c in range(d):
            out[i, c] = q[zq, q0 + i, c] * scale


@njit(cache=True, nogil=True)
def _span_buffer(rows):
    """Scratch for the key spans of a masked tile of ``rows`` queries (see block_spans)."""
    return np.empty(((rows + MR - 1) // MR, 2), dtype=np.int64)


@njit(cache=True, nogil=True)
def _score_tile(qs, k, kp, zk, k0, k1, block_k, s, state, b, h, q0, ops, aux, spans):
    """Scores of a tile into s (bq, bk): dot products, then the mask, then score_mod.

    Masked entries become -inf and are never passed to score_mod. ``qs`` must
    already hold scaled queries; ``kp = pack_keys(k, block_k)``. On a PARTIAL
    tile, products the mask rules out for a whole block of rows are skipped,
    and ``spans`` (from :func:`_span_buffer`) is left describing which were
    computed, for :func:`accumulate_tile` to skip the same ones.
    """
    if state == PARTIAL:
        block_spans(ops, aux, q0, s.shape[0], k0, k1, MR, NR, spans)
        score_tile(qs, k, kp, zk, k0, k1, block_k, s, spans)
        mask_tile(s, ops, aux, q0, k0)
    else:
        score_tile(qs, k, kp, zk, k0, k1, block_k, s, None)
    if HAS_SCORE_MOD:
        for i in range(s.shape[0]):
            for j in range(s.shape[1]):
                if s[i, j] != -np.inf:
                    s[i, j] = score_mod(s[i, j], b, h, q0 + i, k0 + j)


#: A fused tile keeps the row's previous maximum as its exp shift while the tile's
#: maximum stays within this of it (probabilities up to e**8 ~ 3e3, harmless in
#: float32); past it the row is rescaled to the new maximum.
RESCALE_ABOVE = 8.0
#: Past this the fused tile's exponentials may have overflowed: the tile is redone.
REDO_ABOVE = 80.0


@njit(cache=True, nogil=True)
def _fused_online_tile(qs, k, kp, zk, k0, k1, block_k, m_i, l_i, prob, alphas, red, tmax, tsum):
    """One FULL tile of the online softmax with the exp fused into the score product.

    The shift of each row is its running maximum ``m_i`` (all finite: every
    row has seen a tile), so no separate max pass is needed; rows whose new
    maximum exceeds it by more than :data:`RESCALE_ABOVE` are rescaled. Updates
    ``m_i``, ``l_i``, ``alphas`` and ``prob`` like the unfused path and returns
    True, or returns False without touching them when some row's scores rose
    by more than :data:`REDO_ABOVE` (the caller then takes the unfused path).
    """
    rows = prob.shape[0]
    score_exp_tile(qs, k, kp, zk, k0, k1, block_k, m_i, prob, red, tmax, tsum)
    for i in range(rows):
        if tmax[i] - m_i[i] > REDO_ABOVE:
            return False
    for i in range(rows):
        total = np.float64(tsum[i])
        if tmax[i] - m_i[i] > RESCALE_ABOVE:
            c = np.exp(m_i[i] - tmax[i])
            for j in range(prob.shape[1]):
                prob[i, j] *= c
            total *= c
            m_i[i] = tmax[i]
            alphas[i] = c
        else:
            alphas[i] = 1.0
        l_i[i] = l_i[i] * alphas[i] + total
    return True


@njit(cache=True, nogil=True)
def _tile_view(buf, rows, cols):
    """A C-contiguous (rows, cols) view at the start of a flat buffer."""
    return buf[: rows * cols].reshape(rows, cols)


@njit(parallel=True, cache=True)
def flash_forward(
    q, k, v, q_map, kv_map, q_len, kv_len, scale, ops, aux, n_heads,
    with_values, block_q, block_k, out, lse,
):
    """Online-softmax forward pass: ``out`` (Z, n, dv) and ``lse`` (Z, n).

    With ``with_values`` false only ``lse`` is computed (``v`` and ``out`` are
    ignored): this is the first pass of the exact-weights and stats kernels.
    """
    n_problems = q_map.shape[0]
    n = q.shape[1]
    d = q.shape[2]
    dv = v.shape[2]
    n_qt = (n + block_q - 1) // block_q
    dt = q.dtype
    kp = pack_keys(k, block_k)
    for task in prange(n_problems * n_qt):
        z = task // n_qt
        q0 = (task % n_qt) * block_q
        zq = q_map[z]
        zk = kv_map[z]
        b = z // n_heads
        h = z % n_heads
        q1 = min(q0 + block_q, n)
        bq = q1 - q0
        valid_q = min(q1, q_len[z]) - q0  # rows at or past q_len are padding
        m_i = np.full(bq, -np.inf, dtype=dt)
        l_i = np.zeros(bq, dtype=np.float64)
        acc = np.zeros((bq, dv), dtype=dt)
        if valid_q > 0:
            qs = np.empty((valid_q, d), dtype=dt)
            _load_scaled_queries(q, zq, q0, q0 + valid_q, scale, qs)
            s_buf = np.empty(valid_q * block_k, dtype=dt)
            p_buf = np.empty(valid_q * block_k, dtype=dt)
            pv_buf = np.empty(valid_q * dv, dtype=dt)
            alphas = np.empty(valid_q, dtype=dt)
            red = np.empty(32 * valid_q, dtype=dt)
            tmax = np.empty(valid_q, dtype=dt)
            tsum = np.empty(valid_q, dtype=dt)
            spans = _span_buffer(valid_q)
            all_started = False  # every row has a finite running maximum
            m_len = kv_len[z]
            for k0 in range(0, m_len, block_k):
                k1 = min(k0 + block_k, m_len)
                state = tile_state(ops, aux, q0, q0 + valid_q, k0, k1)
                if state == EMPTY:
                    continue
                bk = k1 - k0
                prob = _tile_view(p_buf, valid_q, bk)
                if (not HAS_SCORE_MOD and state == FULL and all_started
                        and _fused_online_tile(qs, k, kp, zk, k0, k1, block_k, m_i, l_i, prob,
                                               alphas, red, tmax, tsum)):
                    if with_values:
                        accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, None)
                    continue
                s = _tile_view(s_buf, valid_q, bk)
                _score_tile(qs, k, kp, zk, k0, k1, block_k, s, state, b, h, q0, ops, aux, spans)
                for i in range(valid_q):
                    tile_max = row_max(s[i])
                    # NaN-aware max (builtin max(-inf, nan) is -inf): NaN poisons the row.
                    m_new = tile_max if (tile_max > m_i[i] or tile_max != tile_max) else m_i[i]
                    if m_new == -np.inf:  # everything so far masked
                        prob[i, :] = 0.0
                        alphas[i] = 1.0
                        continue
                    alphas[i] = np.exp(m_i[i] - m_new)
                    l_i[i] = l_i[i] * alphas[i] + exp_shifted(s[i], m_new, prob[i])
                    m_i[i] = m_new
                all_started = True
                for i in range(valid_q):
                    if m_i[i] == -np.inf or m_i[i] != m_i[i]:
                        all_started = False
                if with_values and state == PARTIAL:
                    accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, spans)
                elif with_values:
                    accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, None)
        for i in range(bq):
            if l_i[i] == 0.0:  # fully masked (a NaN sum must not land here)
                lse[z, q0 + i] = -np.inf
                if with_values:
                    for c in range(dv):
                        out[z, q0 + i, c] = 0.0
            else:
                lse[z, q0 + i] = m_i[i] + np.log(l_i[i])
                if with_values:
                    inv = 1.0 / l_i[i]
                    for c in range(dv):
                        out[z, q0 + i, c] = acc[i, c] * inv


@njit(parallel=True, cache=True)
def exact_weights(
    q, k, q_map, kv_map, q_len, kv_len, scale, ops, aux, n_heads,
    lse, block_q, block_k, out,
):
    """Exact probabilities ``exp(score - lse)`` into ``out`` (Z, n, m).

    ``out`` must arrive zero-filled: skipped tiles, padding and fully masked
    rows are left at zero.
    """
    n_problems = q_map.shape[0]
    n = q.shape[1]
    d = q.shape[2]
    n_qt = (n + block_q - 1) // block_q
    dt = q.dtype
    kp = pack_keys(k, block_k)
    for task in prange(n_problems * n_qt):
        z = task // n_qt
        q0 = (task % n_qt) * block_q
        zq = q_map[z]
        zk = kv_map[z]
        valid_q = min(q0 + block_q, n, q_len[z]) - q0
        if valid_q <= 0:
            continue
        qs = np.empty((valid_q, d), dtype=dt)
        _load_scaled_queries(q, zq, q0, q0 + valid_q, scale, qs)
        s_buf = np.empty(valid_q * block_k, dtype=dt)
        spans = _span_buffer(valid_q)
        m_len = kv_len[z]
        for k0 in range(0, m_len, block_k):
            k1 = min(k0 + block_k, m_len)
            state = tile_state(ops, aux, q0, q0 + valid_q, k0, k1)
            if state == EMPTY:
                continue
            s = _tile_view(s_buf, valid_q, k1 - k0)
            _score_tile(qs, k, kp, zk, k0, k1, block_k, s, state, z // n_heads, z % n_heads,
                        q0, ops, aux, spans)
            for i in range(valid_q):
                row_lse = lse[z, q0 + i]
                if row_lse == -np.inf:
                    continue
                exp_shifted(s[i], row_lse, out[z, q0 + i, k0:k1])


@njit(cache=True, nogil=True)
def _insert_topk(row, k0, top_v, top_i):
    """Merge the keys of one tile row into a descending top-k (values, keys).

    Only entries above the current k-th value move anything, so after the
    first tiles most of the row is one comparison each; ties keep the
    earlier key first.
    """
    topk = top_v.shape[0]
    for j in range(row.shape[0]):
        p = np.float64(row[j])
        if p > top_v[topk - 1]:
            pos = topk - 1
            while pos > 0 and p > top_v[pos - 1]:
                top_v[pos] = top_v[pos - 1]
                top_i[pos] = top_i[pos - 1]
                pos -= 1
            top_v[pos] = p
            top_i[pos] = k0 + j


@njit(parallel=True, cache=True)
def query_stats(
    q, k, q_map, kv_map, q_len, kv_len, scale, ops, aux, n_heads,
    lse, block_q, block_k,
    entropy, maxprob, argmax, distance, topk_index, topk_value,
):
    """Per-query statistics from exact probabilities, one tile at a time.

    Writes, for every (z, query): entropy ``-sum p log p`` (nats), the largest
    probability and its key (first on ties, -1 for masked rows), the mean
    attention distance ``sum p |i - j|``, and the ``topk_index.shape[2]``
    most attended keys (descending; index -1 / value 0 where fewer exist).
    """
    n_problems = q_map.shape[0]
    n = q.shape[1]
    d = q.shape[2]
    topk = topk_index.shape[2]
    n_qt = (n + block_q - 1) // block_q
    dt = q.dtype
    kp = pack_keys(k, block_k)
    for task in prange(n_problems * n_qt):
        z = task // n_qt
        q0 = (task % n_qt) * block_q
        zq = q_map[z]
        zk = kv_map[z]
        q1 = min(q0 + block_q, n)
        bq = q1 - q0
        valid_q = min(q1, q_len[z]) - q0
        ent = np.zeros(bq, dtype=np.float64)
        dist = np.zeros(bq, dtype=np.float64)
        best = np.zeros(bq, dtype=np.float64)
        best_at = np.full(bq, -1, dtype=np.int64)
        top_v = np.zeros((bq, topk), dtype=np.float64)
        top_i = np.full((bq, topk), -1, dtype=np.int64)
        if valid_q > 0:
            qs = np.empty((valid_q, d), dtype=dt)
            _load_scaled_queries(q, zq, q0, q0 + valid_q, scale, qs)
            s_buf = np.empty(valid_q * block_k, dtype=dt)
            spans = _span_buffer(valid_q)
            prob = np.empty(block_k, dtype=dt)
            m_len = kv_len[z]
            for k0 in range(0, m_len, block_k):
                k1 = min(k0 + block_k, m_len)
                state = tile_state(ops, aux, q0, q0 + valid_q, k0, k1)
                if state == EMPTY:
                    continue
                s = _tile_view(s_buf, valid_q, k1 - k0)
                _score_tile(qs, k, kp, zk, k0, k1, block_k, s, state, z // n_heads,
                            z % n_heads, q0, ops, aux, spans)
                bk = k1 - k0
                row = prob[:bk]
                for i in range(valid_q):
                    row_lse = lse[z, q0 + i]
                    if row_lse == -np.inf:
                        continue
                    exp_shifted(s[i], row_lse, row)
                    ent_part, dist_part = entropy_distance_terms(row, s[i], row_lse, q0 + i - k0)
                    ent[i] += ent_part
                    dist[i] += dist_part
                    # Strictly larger than earlier tiles' best, then the first
                    # key holding it: the first maximum over the whole row.
                    top = np.float64(row_max(row))
                    if top > best[i]:
                        j = 0
                        while np.float64(row[j]) != top:
                            j += 1
                        best[i] = top
                        best_at[i] = k0 + j
                    if topk > 0:
                        _insert_topk(row, k0, top_v[i], top_i[i])
        for i in range(bq):
            entropy[z, q0 + i] = max(ent[i], 0.0)
            distance[z, q0 + i] = dist[i]
            maxprob[z, q0 + i] = best[i]
            argmax[z, q0 + i] = best_at[i]
            for t in range(topk):
                topk_value[z, q0 + i, t] = top_v[i, t]
                topk_index[z, q0 + i, t] = top_i[i, t]


@njit(parallel=True, cache=True)
def key_received(
    q, k, q_map, kv_map, q_len, kv_len, scale, ops, aux, n_heads,
    lse, block_q, block_k, received,
):
    """Attention received by each key, ``sum_i p[i, j]``, into ``received`` (Z, m).

    Parallel over key tiles, so every column sum is accumulated by one
    iteration in a fixed order (deterministic, no per-thread buffers).
    """
    n_problems = q_map.shape[0]
    m = k.shape[1]
    d = q.shape[2]
    n_kt = (m + block_k - 1) // block_k
    dt = q.dtype
    kp = pack_keys(k, block_k)
    for task in prange(n_problems * n_kt):
        z = task // n_kt
        k0 = (task % n_kt) * block_k
        zq = q_map[z]
        zk = kv_map[z]
        k1 = min(k0 + block_k, m)
        col = np.zeros(k1 - k0, dtype=np.float64)
        valid_k1 = min(k1, kv_len[z])
        if valid_k1 > k0:
            bk = valid_k1 - k0
            qs = np.empty((block_q, d), dtype=dt)
            s_buf = np.empty(block_q * bk, dtype=dt)
            spans = _span_buffer(block_q)
            prob = np.empty(bk, dtype=dt)
            n_valid = q_len[z]
            for q0 in range(0, n_valid, block_q):
                q1 = min(q0 + block_q, n_valid)
                state = tile_state(ops, aux, q0, q1, k0, valid_k1)
                if state == EMPTY:
                    continue
                bq = q1 - q0
                qv = _tile_view(qs.reshape(-1), bq, d)
                _load_scaled_queries(q, zq, q0, q1, scale, qv)
                s = _tile_view(s_buf, bq, bk)
                _score_tile(qv, k, kp, zk, k0, valid_k1, block_k, s, state, z // n_heads,
                            z % n_heads, q0, ops, aux, spans)
                for i in range(bq):
                    row_lse = lse[z, q0 + i]
                    if row_lse == -np.inf:
                        continue
                    exp_shifted(s[i], row_lse, prob)
                    add_row(col[:bk], prob[:bk])
        for j in range(k1 - k0):
            received[z, k0 + j] = col[j]


_KERNELS = ("_score_tile", "flash_forward", "exact_weights", "query_stats", "key_received")


@functools.lru_cache(maxsize=32)
def with_score_mod(fn):
    """Kernels specialised for the jitted ``fn(score, b, h, q_idx, kv_idx)``.

    Returns a namespace with the same kernel names as this module. The copies
    are compiled on first use and not cached on disk: a disk cache keyed on a
    function object could hand one process another function's constants.
    """
    namespace = dict(globals())
    namespace["score_mod"] = fn
    namespace["HAS_SCORE_MOD"] = True
    for name in _KERNELS:
        original = globals()[name]
        py = original.py_func
        clone = types.FunctionType(py.__code__, namespace, py.__name__, py.__defaults__)
        options = {k: v for k, v in original.targetoptions.items() if k not in ("cache", "nopython")}
        namespace[name] = njit(**options)(clone)
    return types.SimpleNamespace(**{name: namespace[name] for name in _KERNELS})
