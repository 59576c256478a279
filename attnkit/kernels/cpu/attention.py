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
from run to run and for any number of threads. :func:`serial` compiles the
same source without threads, for calls of one task (bit-identical too: the
same tile code runs). float32 tile products use
the register-blocked micro-kernels of :mod:`.gemm` on packed keys (values are
read in place); float64 ones go through BLAS via ``np.dot`` on contiguous
blocks (zero-copy views of the flat inputs). Where each key tile is read by
few tasks (:func:`packs_in_tasks`: short sequences, every task of
:func:`key_received`) each task packs the tiles it reads into a small buffer
of its own just before reading them; otherwise the call packs all its keys
once, into a buffer its caller may keep between calls (``kp_buf``). Either
way the packed values and the arithmetic are the same, so is every result.

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

Nothing needs the log-sum-exp before its pass over the keys: the exact
weights are the forward pass storing each tile's ``exp(s - m)`` and
rescaling the query tile's rows once they are done, and the per-query
statistics (:func:`query_stats`) are online sums that also give the
log-sum-exp and, from the kept rows, the attention each key receives.
Only :func:`key_received` (a pass over the queries) takes a log-sum-exp.
"""

import functools
import types

import numpy as np
from numba import njit, prange
from numba.extending import overload

from . import gemm as _gemm
from .gemm import (
    MR,
    NR,
    _is_none,
    _packs,
    accumulate_tile,
    pack_keys_into,
    pack_tile,
    score_exp_tile,
    score_tile,
)
from .masking import EMPTY, FULL, PARTIAL, block_spans, mask_tile, tile_state
from .rowops import add_row, entropy_distance_terms, exp_shifted, row_max
from .vector_ir import wide_vectors


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
def _count_nonfinite(x):
    wide_vectors()
    bad = 0
    for i in range(x.shape[0]):
        v = x[i]
        bad += (v - v) != 0.0  # 0 for finite v, NaN for NaN and inf
    return bad


@njit(cache=True, nogil=True)
def count_nonfinite(a, b, c):
    """How many entries of the 1-d float arrays ``a``, ``b`` and ``c`` are NaN or inf, in all.

    The finiteness check of the attention inputs (:mod:`attnkit._prepare`):
    vectorised passes without the temporaries of ``np.isfinite(x).all()``,
    and one call for q, k and v, since a call costs a tiny problem more than
    the passes.
    """
    return _count_nonfinite(a) + _count_nonfinite(b) + _count_nonfinite(c)


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
def _score_tile(qs, k, kp, pz, pk0, block_k, k0, k1, s, state, b, h, q0, ops, aux, spans):
    """Scores of a tile into s (bq, bk): dot products, then the mask, then score_mod.

    Masked entries become -inf and are never passed to score_mod. ``qs`` must
    already hold scaled queries. The keys ``[k0, k1)`` are read as the packed
    tile of ``kp`` at ``(pz, pk0)`` (see :func:`_tile_keys`). On a PARTIAL
    tile, products the mask rules out for a whole block of rows are skipped,
    and ``spans`` (from :func:`_span_buffer`) is left describing which were
    computed, for :func:`accumulate_tile` to skip the same ones.
    """
    pk1 = pk0 + (k1 - k0)
    if state == PARTIAL:
        block_spans(ops, aux, q0, s.shape[0], k0, k1, MR, NR, spans)
        score_tile(qs, k, kp, pz, pk0, pk1, block_k, s, spans)
        mask_tile(s, ops, aux, q0, k0)
    else:
        score_tile(qs, k, kp, pz, pk0, pk1, block_k, s, None)
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
def _fused_online_tile(qs, k, kp, pz, pk0, pk1, block_k, m_i, l_i, prob, alphas, red, tmax,
                       tsum):
    """One FULL tile of the online softmax with the exp fused into the score product.

    The shift of each row is its running maximum ``m_i`` (all finite: every
    row has seen a tile), so no separate max pass is needed; rows whose new
    maximum exceeds it by more than :data:`RESCALE_ABOVE` are rescaled. Updates
    ``m_i``, ``l_i``, ``alphas`` and ``prob`` like the unfused path and returns
    True, or returns False without touching them when some row's scores rose
    by more than :data:`REDO_ABOVE` (the caller then takes the unfused path).
    The keys are the packed tile of ``kp`` at ``(pz, pk0)`` (see :func:`_tile_keys`).
    """
    rows = prob.shape[0]
    score_exp_tile(qs, k, kp, pz, pk0, pk1, block_k, m_i, prob, red, tmax, tsum)
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
def _online_row(s_row, m_old, l_old, prob_row):
    """One query row of an unfused online-softmax tile.

    Exponentiates the row's scores against its new running maximum into
    ``prob_row`` and returns ``(m_new, l_new, alpha, tile_max)``, where
    ``alpha = exp(m_old - m_new)`` rescales what earlier tiles accumulated.
    While nothing has been allowed (``m_new == -inf``) the row gets zero
    probabilities and alpha 1. NaN scores poison the row.
    """
    tile_max = row_max(s_row)
    # NaN-aware max (builtin max(-inf, nan) is -inf): NaN poisons the row.
    m_new = tile_max if (tile_max > m_old or tile_max != tile_max) else m_old
    if m_new == -np.inf:  # everything so far masked
        prob_row[:] = 0.0
        return m_new, l_old, 1.0, tile_max
    alpha = np.exp(m_old - m_new)
    return m_new, l_old * alpha + exp_shifted(s_row, m_new, prob_row), alpha, tile_max


@njit(cache=True, nogil=True)
def _store_weights(prob, m_i, weights, z, q0, k0, shifts, t):
    """Copy a tile's ``exp(s - m_i)`` into ``weights`` and remember each row's shift ``m_i``."""
    wide_vectors()
    bk = prob.shape[1]
    for i in range(prob.shape[0]):
        shifts[i, t] = m_i[i]
        src = prob[i]
        dst = weights[z, q0 + i, k0: k0 + bk]
        for j in range(bk):  # from 0: indices LLVM knows are nonnegative, so it vectorises
            dst[j] = src[j]


@njit(cache=True, nogil=True)
def _normalise_weights(weights, z, q0, m_i, l_i, shifts, used, block_k, m_len):
    """Rescale a finished query tile's stored tiles: ``exp(s - shift) * exp(shift - m) / l``.

    Rows with nothing allowed (``l == 0``) hold zeros and are left alone;
    the factor is computed in float64.
    """
    wide_vectors()
    for i in range(shifts.shape[0]):
        if l_i[i] == 0.0:
            continue
        row = weights[z, q0 + i]
        for t in range(used.shape[0]):
            if not used[t]:
                continue
            factor = np.exp(np.float64(shifts[i, t]) - np.float64(m_i[i])) / l_i[i]
            seg = row[t * block_k: min(t * block_k + block_k, m_len)]
            for j in range(seg.shape[0]):
                seg[j] = seg[j] * factor


@njit(cache=True, nogil=True)
def _received_from_rows(prob, m_len, m_i, l_i, shifts, used, block_k, received):
    """``received[j] += sum_i exp(s_ij - lse_i)`` over a finished query tile's kept rows.

    ``prob`` holds row ``i``'s ``exp(s - shifts[i, t])`` at ``[i * m_len:][:m_len]``
    (key tile ``t`` in its own slot); rows with nothing allowed are skipped and
    the factors ``exp(shift - m) / l`` are float64, like :func:`_normalise_weights`.
    """
    wide_vectors()
    for i in range(shifts.shape[0]):
        if l_i[i] == 0.0:
            continue
        base = i * m_len
        for t in range(used.shape[0]):
            if not used[t]:
                continue
            factor = np.exp(np.float64(shifts[i, t]) - np.float64(m_i[i])) / l_i[i]
            k0 = t * block_k
            k1 = min(k0 + block_k, m_len)
            seg = prob[base + k0: base + k1]
            dst = received[k0:k1]
            for j in range(seg.shape[0]):
                dst[j] += factor * seg[j]


@njit(cache=True, nogil=True)
def _tile_view(buf, rows, cols):
    """A C-contiguous (rows, cols) view at the start of a flat buffer."""
    return buf[: rows * cols].reshape(rows, cols)


#: Each task packs the key tiles it reads itself, just before reading them, into a
#: small buffer of its own, when no key tile is read by more than this many tasks
#: (short sequences: a head's queries in a few tiles); otherwise the call packs all
#: its keys once, before the tasks start, into a call-sized buffer. Per task there is
#: no call-sized buffer to fill (and fault in), the packed tile is read from cache
#: and only tiles the mask lets through are packed; the price is packing a tile once
#: per task that reads it. Interleaved A/B runs on the 2-core reference machine
#: (d = 64 and 128): per task won 4-11% at 2-4 readers, lost 2-3% at 8-16 without a
#: mask; with a causal mask (about half the tiles skipped) it still won 5-7% at 8.
#: Which way a call goes changes no result: the packed values and the arithmetic are
#: the same.
LOCAL_PACK_USES = 4
#: :data:`LOCAL_PACK_USES` for calls with a mask (any mask program: causal, local, ...).
LOCAL_PACK_USES_MASKED = 8


@njit(cache=True, nogil=True)
def packs_in_tasks(n_tasks, zk_count, masked):
    """True if a kernel of ``n_tasks`` tasks over ``zk_count`` key sets packs keys per task.

    The tasks split every key set alike, so each key tile is read by
    ``n_tasks / zk_count`` of them (see :data:`LOCAL_PACK_USES`); ``masked``:
    the call has a mask program. Depends on the problem's shape and mask only.
    Callers that keep a buffer for the call-wide packed keys ask this
    (``.py_func``) first.
    """
    return n_tasks <= (LOCAL_PACK_USES_MASKED if masked else LOCAL_PACK_USES) * zk_count


def _call_panels(k, block_k, zk_count, buf):  # pragma: no cover - replaced by the overload
    """The call-wide packed-key array ``(zk_count, tiles, panels, d, NR)``, not yet filled.

    A view of the flat scratch ``buf`` (any content) where it has at least
    :func:`.gemm.packed_size` elements, else (or with ``buf`` None) a fresh array; a dummy
    ``(1, 1, 1, 1, 1)`` when ``zk_count`` is 0 (keys packed per task) or the
    dtype packs nothing (float64: BLAS reads the keys in place).
    """
    raise NotImplementedError


@overload(_call_panels, jit_options={"nogil": True})
def _call_panels_impl(k, block_k, zk_count, buf):
    if _is_none(buf):
        def fresh(k, block_k, zk_count, buf):
            if zk_count == 0 or not _packs(k):
                return np.empty((1, 1, 1, 1, 1), dtype=k.dtype)
            shape = (zk_count, (k.shape[1] + block_k - 1) // block_k, (block_k + NR - 1) // NR,
                     k.shape[2], NR)
            return np.empty(shape, dtype=k.dtype)

        return fresh

    def view(k, block_k, zk_count, buf):
        if zk_count == 0 or not _packs(k):
            return np.empty((1, 1, 1, 1, 1), dtype=k.dtype)
        shape = (zk_count, (k.shape[1] + block_k - 1) // block_k, (block_k + NR - 1) // NR,
                 k.shape[2], NR)
        size = shape[0] * shape[1] * shape[2] * shape[3] * NR
        if buf.shape[0] < size:  # a stand-in, or too small: a fresh array
            return np.empty(shape, dtype=k.dtype)
        return buf[:size].reshape(shape)

    return view


@njit(cache=True, nogil=True)
def _task_panels(k, block_k, local):
    """One task's buffer for the key tile it packs itself: ``(1, 1, panels, d, NR)``.

    A dummy ``(1, 1, 1, 1, 1)`` unless ``local`` and the dtype packs.
    """
    if local and _packs(k):
        return np.empty((1, 1, (block_k + NR - 1) // NR, k.shape[2], NR), dtype=k.dtype)
    return np.empty((1, 1, 1, 1, 1), dtype=k.dtype)


@njit(cache=True, nogil=True)
def _tile_keys(k, zk, k0, k1, kp, kl, local):
    """Where the keys ``[k0, k1)`` of problem ``zk`` are packed: ``(panels, pz, pk0)``.

    With ``local`` the task packs them now into its own ``kl`` (slot 0);
    otherwise they are the call-wide ``kp`` at ``(zk, k0)``, packed before the
    tasks started (float64: ``kp`` is a dummy and the BLAS path reads ``k``
    at ``(zk, k0)``). Pass the three on to :func:`_score_tile`,
    :func:`_fused_online_tile` or the :mod:`.gemm` products.
    """
    if local:
        pack_tile(k, zk, k0, k1, kl, 0, 0)
        return kl, 0, 0
    return kp, zk, k0


@njit(parallel=True, cache=True)
def flash_forward(
    q, k, v, q_map, kv_map, q_len, kv_len, scale, ops, aux, n_heads,
    with_values, block_q, block_k, out, lse, with_weights, weights, kp_buf=None,
):
    """Online-softmax forward pass: ``out`` (Z, n, dv) and ``lse`` (Z, n).

    With ``with_values`` false ``v`` and ``out`` are ignored. With
    ``with_weights`` the exact probabilities are also written to ``weights``
    (Z, n, m), which must arrive zero-filled (skipped tiles, padding and fully
    masked rows stay 0; otherwise pass a dummy): each tile is stored as it
    leaves the online softmax, ``exp(s - shift)`` against the row's running
    maximum at the time, and once the query tile has seen every key its rows
    are rescaled by ``exp(shift - m) / l`` (float64), i.e. to
    ``exp(s - lse)``, without a second pass over the scores.

    Keys are packed per task or once for the call (:func:`packs_in_tasks`);
    ``kp_buf``, a flat array of the compute dtype with at least
    :func:`.gemm.packed_size` elements, is used for the latter instead of a
    fresh array (its content is overwritten).
    """
    n_problems = q_map.shape[0]
    n = q.shape[1]
    d = q.shape[2]
    dv = v.shape[2]
    n_qt = (n + block_q - 1) // block_q
    n_kt = (k.shape[1] + block_k - 1) // block_k
    dt = q.dtype
    local = _packs(k) and packs_in_tasks(n_problems * n_qt, k.shape[0], ops.shape[0] > 0)
    kp = _call_panels(k, block_k, 0 if local else k.shape[0], kp_buf)
    if not local and _packs(k):
        pack_keys_into(k, block_k, kp)
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
            shifts = np.empty((valid_q if with_weights else 0, n_kt), dtype=dt)
            used = np.zeros(n_kt if with_weights else 0, dtype=np.bool_)
            kl = _task_panels(k, block_k, local)
            for k0 in range(0, m_len, block_k):
                k1 = min(k0 + block_k, m_len)
                state = tile_state(ops, aux, q0, q0 + valid_q, k0, k1)
                if state == EMPTY:
                    continue
                bk = k1 - k0
                panels, pz, pk0 = _tile_keys(k, zk, k0, k1, kp, kl, local)
                prob = _tile_view(p_buf, valid_q, bk)
                if (not HAS_SCORE_MOD and state == FULL and all_started
                        and _fused_online_tile(qs, k, panels, pz, pk0, pk0 + bk, block_k, m_i,
                                               l_i, prob, alphas, red, tmax, tsum)):
                    if with_values:
                        accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, None)
                    if with_weights:
                        _store_weights(prob, m_i, weights, z, q0, k0, shifts, k0 // block_k)
                        used[k0 // block_k] = True
                    continue
                s = _tile_view(s_buf, valid_q, bk)
                _score_tile(qs, k, panels, pz, pk0, block_k, k0, k1, s, state, b, h, q0, ops,
                            aux, spans)
                for i in range(valid_q):
                    m_i[i], l_i[i], alphas[i], _ = _online_row(s[i], m_i[i], l_i[i], prob[i])
                all_started = True
                for i in range(valid_q):
                    if m_i[i] == -np.inf or m_i[i] != m_i[i]:
                        all_started = False
                if with_values and state == PARTIAL:
                    accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, spans)
                elif with_values:
                    accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, None)
                if with_weights:
                    _store_weights(prob, m_i, weights, z, q0, k0, shifts, k0 // block_k)
                    used[k0 // block_k] = True
            if with_weights:
                _normalise_weights(weights, z, q0, m_i, l_i, shifts, used, block_k, m_len)
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
    block_q, block_k, lse, entropy, maxprob, argmax, distance, topk_index, topk_value,
    with_received, received_parts, kp_buf=None,
):
    """Per-query statistics in one online-softmax pass over the keys (no log-sum-exp first).

    Writes, for every (z, query): ``lse`` (float64 log-sum-exp, ``-inf`` for
    masked rows), the entropy ``-sum p log p`` (nats), the largest probability
    and its key (first on ties, -1 for masked rows), the mean attention
    distance ``sum p |i - j|``, and the ``topk_index.shape[2]`` most attended
    keys (descending; index -1 / value 0 where fewer exist).

    Each row keeps, next to its running maximum ``m`` and sum
    ``l = sum exp(s - m)``, the sums ``E = sum exp(s - m) (m - s)`` and
    ``D = sum exp(s - m) |i - j|``, rescaled with ``l`` when ``m`` rises
    (``E`` also gains ``(m_new - m_old) l``); at the end ``lse = m + log l``,
    the entropy is ``log l + E / l`` (two nonnegative terms: no cancellation)
    and the distance ``D / l``. The maximum and the top-k are kept as scores
    and turned into probabilities ``exp(s - lse)`` at the end (float64).

    With ``with_received``, the attention each key receives from the query
    tile's rows is added to ``received_parts[z, tile]`` (float64, (Z, query
    tiles, m), zero-filled; a dummy otherwise): the tile's ``exp(s - m)`` rows
    are kept (``block_q x m`` scratch per task) and, once their ``lse`` is
    known, summed over the rows with the factors ``exp(shift - m) / l`` (as
    in :func:`_normalise_weights`). Summing the parts over the tiles, in
    order, gives ``received`` without a second pass over the scores.

    Keys are packed as in :func:`flash_forward` (``kp_buf`` likewise).
    """
    n_problems = q_map.shape[0]
    n = q.shape[1]
    d = q.shape[2]
    topk = topk_index.shape[2]
    n_qt = (n + block_q - 1) // block_q
    n_kt = (k.shape[1] + block_k - 1) // block_k
    dt = q.dtype
    local = _packs(k) and packs_in_tasks(n_problems * n_qt, k.shape[0], ops.shape[0] > 0)
    kp = _call_panels(k, block_k, 0 if local else k.shape[0], kp_buf)
    if not local and _packs(k):
        pack_keys_into(k, block_k, kp)
    for task in prange(n_problems * n_qt):
        z = task // n_qt
        q0 = (task % n_qt) * block_q
        zq = q_map[z]
        zk = kv_map[z]
        q1 = min(q0 + block_q, n)
        bq = q1 - q0
        valid_q = min(q1, q_len[z]) - q0
        m_len = kv_len[z]
        m_i = np.full(bq, -np.inf, dtype=dt)
        l_i = np.zeros(bq, dtype=np.float64)
        ent = np.zeros(bq, dtype=np.float64)
        dist = np.zeros(bq, dtype=np.float64)
        best = np.full(bq, -np.inf, dtype=np.float64)
        best_at = np.full(bq, -1, dtype=np.int64)
        top_s = np.full((bq, topk), -np.inf, dtype=np.float64)
        top_i = np.full((bq, topk), -1, dtype=np.int64)
        if valid_q > 0:
            qs = np.empty((valid_q, d), dtype=dt)
            _load_scaled_queries(q, zq, q0, q0 + valid_q, scale, qs)
            s_buf = np.empty(valid_q * block_k, dtype=dt)
            spans = _span_buffer(valid_q)
            # exp(s - m) rows: one tile's worth, or all of them (valid_q x m_len) to keep
            prob = np.empty(valid_q * m_len if with_received else block_k, dtype=dt)
            shifts = np.empty((valid_q if with_received else 0, n_kt), dtype=dt)
            used = np.zeros(n_kt if with_received else 0, dtype=np.bool_)
            kl = _task_panels(k, block_k, local)
            for k0 in range(0, m_len, block_k):
                k1 = min(k0 + block_k, m_len)
                state = tile_state(ops, aux, q0, q0 + valid_q, k0, k1)
                if state == EMPTY:
                    continue
                panels, pz, pk0 = _tile_keys(k, zk, k0, k1, kp, kl, local)
                s = _tile_view(s_buf, valid_q, k1 - k0)
                _score_tile(qs, k, panels, pz, pk0, block_k, k0, k1, s, state, z // n_heads,
                            z % n_heads, q0, ops, aux, spans)
                if with_received:
                    used[k0 // block_k] = True
                for i in range(valid_q):
                    m_old = m_i[i]
                    l_old = l_i[i]
                    if with_received:
                        row = prob[i * m_len + k0: i * m_len + k1]
                    else:
                        row = prob[: k1 - k0]
                    m_new, l_new, alpha, tile_max = _online_row(s[i], m_old, l_old, row)
                    if with_received:
                        shifts[i, k0 // block_k] = m_new
                    if m_new == -np.inf:  # nothing allowed so far
                        continue
                    ent_part, dist_part = entropy_distance_terms(row, s[i], m_new, q0 + i - k0)
                    if l_old == 0.0:  # first mass of the row (m_old may be -inf)
                        ent[i] = ent_part
                        dist[i] = dist_part
                    else:
                        a = np.float64(alpha)
                        ent[i] = a * (ent[i] + (np.float64(m_new) - np.float64(m_old)) * l_old) \
                            + ent_part
                        dist[i] = a * dist[i] + dist_part
                    m_i[i] = m_new
                    l_i[i] = l_new
                    # Strictly above earlier tiles' best, then the first key holding
                    # it: the first maximum over the whole row.
                    top = np.float64(tile_max)
                    if top > best[i]:
                        j = 0
                        while np.float64(s[i, j]) != top:
                            j += 1
                        best[i] = top
                        best_at[i] = k0 + j
                    if topk > 0:
                        _insert_topk(s[i], k0, top_s[i], top_i[i])
            if with_received:
                _received_from_rows(prob, m_len, m_i, l_i, shifts, used, block_k,
                                    received_parts[z, task % n_qt])
        for i in range(bq):
            if l_i[i] == 0.0:  # padding or nothing allowed (a NaN sum must not land here)
                lse[z, q0 + i] = -np.inf
                entropy[z, q0 + i] = 0.0
                distance[z, q0 + i] = 0.0
                maxprob[z, q0 + i] = 0.0
                argmax[z, q0 + i] = -1
                for t in range(topk):
                    topk_value[z, q0 + i, t] = 0.0
                    topk_index[z, q0 + i, t] = -1
                continue
            log_l = np.log(l_i[i])
            row_lse = np.float64(m_i[i]) + log_l
            lse[z, q0 + i] = row_lse
            entropy[z, q0 + i] = max(log_l + ent[i] / l_i[i], 0.0)
            distance[z, q0 + i] = dist[i] / l_i[i]
            maxprob[z, q0 + i] = np.exp(best[i] - row_lse) if best_at[i] >= 0 else 0.0
            argmax[z, q0 + i] = best_at[i]
            for t in range(topk):
                topk_index[z, q0 + i, t] = top_i[i, t]
                topk_value[z, q0 + i, t] = np.exp(top_s[i, t] - row_lse) if top_i[i, t] >= 0 \
                    else 0.0


@njit(parallel=True, cache=True)
def key_received(
    q, k, q_map, kv_map, q_len, kv_len, scale, ops, aux, n_heads,
    lse, block_q, block_k, received,
):
    """Attention received by each key, ``sum_i exp(s[i, j] - lse[i])``, into ``received`` (Z, m).

    ``lse`` (Z, n) is in the compute dtype; rows whose ``lse`` is ``-inf``
    (nothing allowed) or ``+inf`` add nothing. Parallel over key tiles, so
    every column sum is accumulated by one iteration in a fixed order
    (deterministic, no per-thread buffers). FULL tiles take the fused
    exponential of :func:`.gemm.score_exp_tile` (the scores never leave the
    registers); there, terms below ``exp(-86)`` (~4e-38) come out as
    ``exp(-86)`` rather than 0. A tile where some score exceeds its row's
    shift by more than :data:`REDO_ABOVE` is redone unfused. Each task packs
    its one key tile itself (it is the only task reading it).
    """
    n_problems = q_map.shape[0]
    m = k.shape[1]
    d = q.shape[2]
    n_kt = (m + block_k - 1) // block_k
    dt = q.dtype
    local = _packs(k)
    kp = _call_panels(k, block_k, 0, None)  # a dummy: float32 tasks pack their own tile
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
            shift_buf = np.empty(block_q, dtype=dt)
            red = np.empty(32 * block_q, dtype=dt)
            tmax = np.empty(block_q, dtype=dt)
            tsum = np.empty(block_q, dtype=dt)
            kl = _task_panels(k, block_k, local)
            panels, pz, pk0 = _tile_keys(k, zk, k0, valid_k1, kp, kl, local)
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
                shift = shift_buf[:bq]
                for i in range(bq):
                    shift[i] = lse[z, q0 + i]
                fused = not HAS_SCORE_MOD and state == FULL
                if fused:
                    score_exp_tile(qv, k, panels, pz, pk0, pk0 + bk, block_k, shift, s, red, tmax,
                                   tsum)
                    for i in range(bq):
                        if tmax[i] - shift[i] > REDO_ABOVE:
                            fused = False
                if fused:  # s holds the probabilities
                    for i in range(bq):
                        if shift[i] != -np.inf and shift[i] != np.inf:
                            add_row(col[:bk], s[i])
                    continue
                _score_tile(qv, k, panels, pz, pk0, block_k, k0, valid_k1, s, state, z // n_heads,
                            z % n_heads, q0, ops, aux, spans)
                for i in range(bq):
                    if shift[i] == -np.inf or shift[i] == np.inf:
                        continue
                    exp_shifted(s[i], shift[i], prob)
                    add_row(col[:bk], prob[:bk])
        for j in range(k1 - k0):
            received[z, k0 + j] = col[j]


_KERNELS = ("_score_tile", "flash_forward", "query_stats", "key_received")
#: The kernels that split their work with ``prange`` (see :func:`serial`).
_PARALLEL = ("flash_forward", "query_stats", "key_received")


def _recompile(original, namespace, name, **options):
    """``original``'s Python source compiled again, reading its globals from ``namespace``."""
    py = original.py_func
    clone = types.FunctionType(py.__code__, namespace, name, py.__defaults__)
    clone.__qualname__ = name  # names the disk cache of a cached copy: never the original's
    options = {**{k: v for k, v in original.targetoptions.items()
                  if k not in ("cache", "nopython")}, **options}
    return njit(**options)(clone)


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
        namespace[name] = _recompile(globals()[name], namespace, name)
    return types.SimpleNamespace(**{name: namespace[name] for name in _KERNELS})


@functools.lru_cache(maxsize=1)
def serial():
    """The kernels of this module (no score_mod) compiled from the same source without threads.

    ``prange`` runs as ``range`` (and :func:`.gemm.pack_keys_into` likewise), so a
    call starts no parallel region: for a problem of one task the parallel
    launch would cost more than the work. Every output element goes through
    the same tile code in the same order as in the parallel kernels, so the
    results are bit-identical to theirs. Cached on disk under their own names
    (``flash_forward_serial``, ...); their globals never change.
    """
    namespace = dict(globals())
    namespace["pack_keys_into"] = _recompile(pack_keys_into, vars(_gemm), "pack_keys_into_serial",
                                             parallel=False, cache=True)
    for name in _PARALLEL:
        namespace[name] = _recompile(globals()[name], namespace, f"{name}_serial",
                                     parallel=False, cache=True)
    return types.SimpleNamespace(**{name: namespace[name] for name in _KERNELS})
