"""Tiled attention kernels for CUDA: forward, exact weights, per-query stats, received.

No validation happens here (see :mod:`attnkit._prepare` and :mod:`.api`).
Conventions, shared with the CPU kernels (:mod:`attnkit.kernels.cpu.attention`):

* ``q`` is ``(Bq, Hq, n, d)``, ``k`` is ``(Bk, Hk, m, d)``, ``v`` is
  ``(Bk, Hk, m, dv)``, any strides, float16/32/64. Problem ``z`` uses flat
  batch index ``q_map[z]`` of q (``(b, h) = divmod(q_map[z], Hq)``) and
  ``kv_map[z]`` of k/v: broadcasting and grouped-query heads.
* ``q_len[z]`` / ``kv_len[z]`` are the valid lengths; ``ops`` / ``aux`` a
  compiled mask, ``tiles[qt, kt]`` the state (EMPTY/PARTIAL/FULL) of each
  ``block_q x block_k`` tile (:func:`.masking.tile_table`; EMPTY tiles are
  skipped, FULL ones need no per-element test); ``score_mod(score, z // n_heads, z % n_heads, q_idx, kv_idx)``
  applies to every unmasked scaled score.
* Scores are kept in base 2: queries are multiplied by
  ``scale2 = scale * log2(e)`` so that probabilities are ``exp2(s - m)``
  (one hardware instruction). Internal log-sum-exps (``lse2``) are in base 2 too.
* A fully masked query row has output 0, lse ``-inf`` and zero probabilities.

Each factory builds one kernel for a tiling (:mod:`.tiling`), padded head
dims, accumulation dtype, mask kind and score_mod, with every size a
compile-time constant (static loops that unroll, register arrays, fixed
shared-memory offsets), and caches it. All kernels use dynamic shared memory
of :func:`.tiling.layout` bytes.

Barriers: every ``cuda.syncthreads()`` below sits in control flow that is
uniform across the block (loop bounds and branch conditions computed from
block-level values only: ``valid_q``, ``k0``, tile states, compile-time
flags). Per-thread conditions (row validity, ``tx == 0``) never enclose a
barrier.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda, types

from . import masking as mk
from .runtime import SIMULATOR, math_for
from .tiling import Layout, Tiling, layout

U = types.uint64  # unsigned shared-memory indices: no negative-index fix-up, so loads vectorise
ALIGNED = not SIMULATOR
_LN2 = float(np.log(2.0))
_LOG2E = float(1.0 / np.log(2.0))


@cuda.jit(device=True, inline="always")
def _no_score_mod(score, b, h, q_idx, kv_idx):
    return score


@functools.lru_cache(maxsize=64)
def device_score_mod(fn):
    """The CUDA device version of a score_mod (its Python source, inlined into kernels)."""
    if fn is None:
        return None
    py = getattr(fn, "py_func", fn)
    return cuda.jit(device=True, inline="always")(py)


def _nb(acc: str):
    return types.float64 if acc == "float64" else types.float32


def _np(acc: str):
    return np.float64 if acc == "float64" else np.float32


class _Parts:
    """Compile-time constants and inlined device functions shared by the kernels."""

    def __init__(self, t: Tiling, dp: int, dvp: int, acc: str, lay: Layout, mask: int, mod):
        self.t, self.dp, self.dvp, self.acc, self.lay = t, dp, dvp, acc, lay
        self.acc_t = _nb(acc)
        f = _np(acc)
        self.ZERO, self.ONE, self.NEG_INF = f(0.0), f(1.0), f(-np.inf)
        self.LN2, self.LOG2E = f(_LN2), f(_LOG2E)
        self.exp2, self.log2 = math_for(np.dtype(acc))
        self.load_q = _loader(t.block_q, dp, lay.q, lay.dqp, t.threads, self.acc_t, f)
        self.load_k = _loader(t.block_k, dp, lay.kp, lay.dkp, t.threads, self.acc_t, f)
        self.load_v = _loader(t.block_k, dvp, lay.v, dvp, t.threads, self.acc_t, f)
        self.qk = _qk(t, dp, lay, self.acc_t, self.ZERO)
        self.mask_scores = _mask_scores(t, mask, mod, self.acc_t, self.NEG_INF, self.LN2,
                                        self.LOG2E)


def _loader(rows, cols, off, stride, nt, acc_t, f):
    """Device fn: copy rows [r0, r0 + rows) x cols of x[xb, xh] to shared memory, times mult.

    Consecutive threads take consecutive columns (coalesced global reads,
    conflict-free shared writes); rows/cols past the valid ones are zero.
    """
    total = rows * cols
    loads = -(-total // nt)
    zero = f(0.0)

    @cuda.jit(device=True, inline="always")
    def load(sm, tid, x, xb, xh, r0, valid_rows, valid_cols, mult):
        for it in range(loads):
            idx = tid + it * nt
            if idx < total:
                r = idx // cols
                c = idx - r * cols
                val = zero
                if r < valid_rows and c < valid_cols:
                    val = acc_t(x[xb, xh, r0 + r, c]) * mult
                sm[U(off + r * stride + c)] = val

    return load


def _qk(t: Tiling, dp: int, lay: Layout, acc_t, zero):
    """Device fn: s[i, j] = Q[ty + TY i] . K[tx + TX j] from shared memory (16-byte loads)."""
    TY, TX, RQ, RK = t.ty, t.tx, t.rq, t.rk
    DP4 = dp // 4
    QO, KO, DQP, DKP = lay.q, lay.kp, lay.dqp, lay.dkp

    @cuda.jit(device=True, inline="always")
    def qk(sm, s, ty, tx):
        a = cuda.local.array((RQ, 4), acc_t)
        bb = cuda.local.array((RK, 4), acc_t)
        for i in range(RQ):
            for j in range(RK):
                s[i, j] = zero
        for c4 in range(DP4):
            for i in range(RQ):
                base = U(QO + (ty + TY * i) * DQP + 4 * c4)
                for e in range(4):
                    a[i, e] = sm[base + U(e)]
            for j in range(RK):
                base = U(KO + (tx + TX * j) * DKP + 4 * c4)
                for e in range(4):
                    bb[j, e] = sm[base + U(e)]
            for i in range(RQ):
                for j in range(RK):
                    for e in range(4):
                        s[i, j] += a[i, e] * bb[j, e]

    return qk


def _mask_scores(t: Tiling, mask: int, mod, acc_t, neg_inf, ln2, log2e):
    """Device fn: padding, mask and score_mod on the register tile; masked scores -> -inf."""
    TY, TX, RQ, RK = t.ty, t.tx, t.rq, t.rk
    HAS_MOD = mod is not None
    fn = mod if HAS_MOD else _no_score_mod
    band, general = mask == mk.MASK_BAND, mask == mk.MASK_GENERAL
    PARTIAL = mk.PARTIAL
    band_bounds, allows = mk.band_bounds, mk.allows

    @cuda.jit(device=True, inline="always")
    def mask_scores(s, ty, tx, q0, valid_q, k0, k1, state, ops, aux, b, h):
        for i in range(RQ):
            r = ty + TY * i
            row = q0 + r
            lo = 0
            hi = 0
            if band and state == PARTIAL:
                lo, hi = band_bounds(ops, row)
            for j in range(RK):
                key = k0 + tx + TX * j
                ok = r < valid_q and key < k1
                if ok and state == PARTIAL:
                    if band:
                        ok = key >= lo and key < hi
                    elif general:
                        ok = allows(ops, aux, row, key)
                x = s[i, j]
                if ok:
                    if HAS_MOD:
                        x = acc_t(fn(x * ln2, b, h, row, key)) * log2e
                else:
                    x = neg_inf
                s[i, j] = x

    return mask_scores


def _pv(t: Tiling, dvp: int, lay: Layout, acc_t):
    """Device fn: acc[i, :] += P[ty + TY i, :] @ V[:, dims of tx] from shared memory."""
    TY, TX, RQ, VD = t.ty, t.tx, t.rq, t.vd
    GD = dvp // (VD * TX)
    DVT = GD * VD
    BK4 = t.block_k // 4
    PO, VO, PP = lay.kp, lay.v, lay.pp

    @cuda.jit(device=True, inline="always")
    def pv(sm, acc, ty, tx):
        pr = cuda.local.array((RQ, 4), acc_t)
        vv = cuda.local.array((4, DVT), acc_t)
        for j4 in range(BK4):
            for i in range(RQ):
                base = U(PO + (ty + TY * i) * PP + 4 * j4)
                for e in range(4):
                    pr[i, e] = sm[base + U(e)]
            for e in range(4):
                for g in range(GD):
                    base = U(VO + (4 * j4 + e) * dvp + g * VD * TX + tx * VD)
                    for w in range(VD):
                        vv[e, g * VD + w] = sm[base + U(w)]
            for i in range(RQ):
                for e in range(4):
                    for x in range(DVT):
                        acc[i, x] += pr[i, e] * vv[e, x]

    return pv


def _nanmax_factory():
    @cuda.jit(device=True, inline="always")
    def nanmax(a, b):
        # NaN wins (like the CPU kernels), so NaN inputs poison their row.
        return a if (a > b or a != a) else b

    return nanmax


_nanmax = _nanmax_factory()


# ------------------------------------------------------------------ forward
@functools.lru_cache(maxsize=128)
def forward_kernel(t: Tiling, dp: int, dvp: int, acc: str, mask: int, mod, with_values: bool):
    """Online-softmax forward pass.

    With values: ``out`` (Z, n, dv) and natural-log ``lse`` (Z, n). Without:
    only the base-2 ``lse`` (``out`` and ``v`` are ignored), the first pass
    of the weights and statistics kernels.

    Signature: ``(q, k, v, q_map, kv_map, q_len, kv_len, scale2, ops, aux,
    tiles, n_heads, out, lse)``; grid ``Z * ceil(n / block_q)`` blocks of
    ``(tx, ty)`` threads.
    """
    lay = layout(t, dp, dvp, np.dtype(acc).itemsize, "forward" if with_values else "lse")
    P = _Parts(t, dp, dvp, acc, lay, mask, mod)
    TY, TX, RQ, RK, VD = t.ty, t.tx, t.rq, t.rk, t.vd
    BQ, BK = t.block_q, t.block_k
    GD = dvp // (VD * TX)
    DVT = GD * VD
    RED, PO, PP = lay.red, lay.kp, lay.pp
    WITH_V, MASKED = with_values, mask != mk.MASK_NONE
    EMPTY, FULL = mk.EMPTY, mk.FULL
    acc_t, ZERO, ONE, NEG_INF, LN2 = P.acc_t, P.ZERO, P.ONE, P.NEG_INF, P.LN2
    exp2, log2, nanmax = P.exp2, P.log2, _nanmax
    load_q, load_k, load_v, qk, mask_scores = P.load_q, P.load_k, P.load_v, P.qk, P.mask_scores
    pv = _pv(t, dvp, lay, acc_t)

    def kernel(q, k, v, q_map, kv_map, q_len, kv_len, scale2, ops, aux, tiles, n_heads, out,
               lse):
        if ALIGNED:  # the simulator rejects alignment; the GPU needs it to vectorise
            sm = cuda.shared.array(0, acc_t, alignment=16)
        else:
            sm = cuda.shared.array(0, acc_t)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        n = q.shape[2]
        d = q.shape[3]
        dv = v.shape[3]
        n_z = q_map.shape[0]
        n_qt = (n + BQ - 1) // BQ
        bid = cuda.blockIdx.x
        z = bid % n_z
        q0 = (n_qt - 1 - bid // n_z) * BQ  # longest (causal) tiles first
        zq = q_map[z]
        zk = kv_map[z]
        qb = zq // q.shape[1]
        qh = zq - qb * q.shape[1]
        kb = zk // k.shape[1]
        kh = zk - kb * k.shape[1]
        b = z // n_heads
        h = z - b * n_heads
        valid_q = min(q0 + BQ, q_len[z]) - q0

        m_i = cuda.local.array(RQ, acc_t)
        l_i = cuda.local.array(RQ, acc_t)
        s = cuda.local.array((RQ, RK), acc_t)
        acc_o = cuda.local.array((RQ, DVT), acc_t)
        for i in range(RQ):
            m_i[i] = NEG_INF
            l_i[i] = ZERO
            for x in range(DVT):
                acc_o[i, x] = ZERO
        load_q(sm, tid, q, qb, qh, q0, valid_q, d, scale2)
        cuda.syncthreads()

        k_end = kv_len[z]
        if valid_q > 0:
            for k0 in range(0, k_end, BK):
                k1 = min(k0 + BK, k_end)
                state = FULL
                if MASKED:
                    state = tiles[q0 // BQ, k0 // BK]
                if state == EMPTY:
                    continue
                load_k(sm, tid, k, kb, kh, k0, k1 - k0, d, ONE)
                if WITH_V:
                    load_v(sm, tid, v, kb, kh, k0, k1 - k0, dv, ONE)
                cuda.syncthreads()  # A: K (and V) tile loaded
                qk(sm, s, ty, tx)
                mask_scores(s, ty, tx, q0, valid_q, k0, k1, state, ops, aux, b, h)
                for i in range(RQ):
                    mloc = NEG_INF
                    for j in range(RK):
                        mloc = nanmax(mloc, s[i, j])
                    sm[U(RED + (ty + TY * i) * TX + tx)] = mloc
                cuda.syncthreads()  # B: partial maxima written, every K read done
                for i in range(RQ):
                    r = ty + TY * i
                    m_tile = NEG_INF
                    for u in range(TX):
                        m_tile = nanmax(m_tile, sm[U(RED + r * TX + u)])
                    m_new = nanmax(m_i[i], m_tile)
                    shift = m_new if m_new != NEG_INF else ZERO  # all masked: p = exp2(-inf) = 0
                    alpha = exp2(m_i[i] - shift)
                    lsum = ZERO
                    for j in range(RK):
                        p = exp2(s[i, j] - shift)
                        lsum += p
                        if WITH_V:
                            sm[U(PO + r * PP + tx + TX * j)] = p  # overwrites the K tile
                    l_i[i] = l_i[i] * alpha + lsum
                    m_i[i] = m_new
                    if WITH_V:
                        for x in range(DVT):
                            acc_o[i, x] *= alpha
                if WITH_V:
                    cuda.syncthreads()  # C: probability tile complete
                    pv(sm, acc_o, ty, tx)
                cuda.syncthreads()  # D: tile consumed before the next one is loaded

        for i in range(RQ):
            sm[U(RED + (ty + TY * i) * TX + tx)] = l_i[i]
        cuda.syncthreads()  # E: partial row sums written
        for i in range(RQ):
            r = ty + TY * i
            row = q0 + r
            if row < n:
                total = ZERO
                for u in range(TX):
                    total += sm[U(RED + r * TX + u)]
                if WITH_V:
                    inv = ZERO
                    if total != ZERO:
                        inv = ONE / total
                    for g in range(GD):
                        for w in range(VD):
                            dim = g * VD * TX + tx * VD + w
                            if dim < dv:
                                val = ZERO
                                if total != ZERO:
                                    val = acc_o[i, g * VD + w] * inv
                                out[z, row, dim] = val
                if tx == 0:
                    if total == ZERO:
                        lse[z, row] = NEG_INF
                    elif WITH_V:
                        lse[z, row] = (m_i[i] + log2(total)) * LN2
                    else:
                        lse[z, row] = m_i[i] + log2(total)

    return cuda.jit(kernel), lay


# ------------------------------------------------------------------ weights
@functools.lru_cache(maxsize=64)
def weights_kernel(t: Tiling, dp: int, acc: str, mask: int, mod):
    """Exact probabilities ``exp2(s - lse2)`` into ``out`` (Z, n, m), zeros included.

    Signature: ``(q, k, q_map, kv_map, q_len, kv_len, scale2, ops, aux,
    tiles, n_heads, lse2, out)``; grid ``Z * ceil(n / block_q)``.
    """
    lay = layout(t, dp, 4, np.dtype(acc).itemsize, "weights")
    P = _Parts(t, dp, 4 * t.tx, acc, lay, mask, mod)
    TY, TX, RQ, RK = t.ty, t.tx, t.rq, t.rk
    BQ, BK = t.block_q, t.block_k
    MASKED = mask != mk.MASK_NONE
    EMPTY, FULL = mk.EMPTY, mk.FULL
    acc_t, ZERO, ONE, NEG_INF = P.acc_t, P.ZERO, P.ONE, P.NEG_INF
    exp2 = P.exp2
    load_q, load_k, qk, mask_scores = P.load_q, P.load_k, P.qk, P.mask_scores

    def kernel(q, k, q_map, kv_map, q_len, kv_len, scale2, ops, aux, tiles, n_heads, lse2, out):
        if ALIGNED:  # the simulator rejects alignment; the GPU needs it to vectorise
            sm = cuda.shared.array(0, acc_t, alignment=16)
        else:
            sm = cuda.shared.array(0, acc_t)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        n = q.shape[2]
        d = q.shape[3]
        m = out.shape[2]
        n_z = q_map.shape[0]
        n_qt = (n + BQ - 1) // BQ
        bid = cuda.blockIdx.x
        z = bid % n_z
        q0 = (n_qt - 1 - bid // n_z) * BQ
        zq = q_map[z]
        zk = kv_map[z]
        qb = zq // q.shape[1]
        qh = zq - qb * q.shape[1]
        kb = zk // k.shape[1]
        kh = zk - kb * k.shape[1]
        b = z // n_heads
        h = z - b * n_heads
        valid_q = min(q0 + BQ, q_len[z]) - q0

        s = cuda.local.array((RQ, RK), acc_t)
        lse_r = cuda.local.array(RQ, acc_t)
        for i in range(RQ):
            r = ty + TY * i
            lse_r[i] = lse2[z, q0 + r] if r < valid_q else NEG_INF
        load_q(sm, tid, q, qb, qh, q0, valid_q, d, scale2)
        cuda.syncthreads()

        k_end = kv_len[z]
        for k0 in range(0, m, BK):
            k1 = min(k0 + BK, k_end)
            state = EMPTY
            if valid_q > 0 and k0 < k_end:
                state = FULL
                if MASKED:
                    state = tiles[q0 // BQ, k0 // BK]
            if state == EMPTY:
                for i in range(RQ):
                    row = q0 + ty + TY * i
                    if row < n:
                        for j in range(RK):
                            key = k0 + tx + TX * j
                            if key < m:
                                out[z, row, key] = ZERO
                continue
            load_k(sm, tid, k, kb, kh, k0, k1 - k0, d, ONE)
            cuda.syncthreads()  # A: K tile loaded
            qk(sm, s, ty, tx)
            mask_scores(s, ty, tx, q0, valid_q, k0, k1, state, ops, aux, b, h)
            for i in range(RQ):
                row = q0 + ty + TY * i
                if row < n:
                    lr = lse_r[i]
                    for j in range(RK):
                        key = k0 + tx + TX * j
                        if key < m:
                            p = ZERO
                            if lr != NEG_INF:
                                p = exp2(s[i, j] - lr)
                            out[z, row, key] = p
            cuda.syncthreads()  # D: K tile consumed

    return cuda.jit(kernel), lay


# -------------------------------------------------------------- query stats
@functools.lru_cache(maxsize=64)
def query_stats_kernel(t: Tiling, dp: int, acc: str, mask: int, mod, topk_cap: int):
    """Entropy, max/argmax, mean distance and top-k of every query, from exact probabilities.

    Each thread accumulates its own keys (float64); partial results are
    combined through shared memory at the end (argmax: largest probability,
    then smallest key, i.e. the first on ties). Top-k: after each tile the
    probabilities go to shared memory and one thread per query row merges
    them into its sorted list in key order, exactly like the CPU kernel.

    Signature: ``(q, k, q_map, kv_map, q_len, kv_len, scale2, ops, aux,
    tiles, n_heads, lse2, topk, entropy, maxprob, argmax, distance, topk_index,
    topk_value)``; ``topk <= topk_cap``; grid ``Z * ceil(n / block_q)``.
    """
    has_topk = topk_cap > 0
    lay = layout(t, dp, 4, np.dtype(acc).itemsize, "query_stats", topk=has_topk)
    P = _Parts(t, dp, 4 * t.tx, acc, lay, mask, mod)
    TY, TX, RQ, RK = t.ty, t.tx, t.rq, t.rk
    BQ, BK, NT = t.block_q, t.block_k, t.threads
    OWN = -(-BQ // NT)  # query rows each thread merges top-k for
    CAP = max(topk_cap, 1)
    PO, PP, SL = lay.kp, lay.pp, lay.slots
    BQTX = BQ * TX
    MASKED = mask != mk.MASK_NONE
    EMPTY, FULL = mk.EMPTY, mk.FULL
    acc_t, ZERO, ONE, NEG_INF = P.acc_t, P.ZERO, P.ONE, P.NEG_INF
    LN2_64 = np.float64(_LN2)
    exp2 = P.exp2
    load_q, load_k, qk, mask_scores = P.load_q, P.load_k, P.qk, P.mask_scores
    f64, i64 = types.float64, types.int64

    def kernel(q, k, q_map, kv_map, q_len, kv_len, scale2, ops, aux, tiles, n_heads, lse2, topk,
               entropy, maxprob, argmax, distance, topk_index, topk_value):
        if ALIGNED:  # the simulator rejects alignment; the GPU needs it to vectorise
            sm = cuda.shared.array(0, acc_t, alignment=16)
        else:
            sm = cuda.shared.array(0, acc_t)
        if ALIGNED:  # the simulator rejects alignment; the GPU needs it to vectorise
            smd = cuda.shared.array(0, f64, alignment=16)
        else:
            smd = cuda.shared.array(0, f64)
        if ALIGNED:  # the simulator rejects alignment; the GPU needs it to vectorise
            smi = cuda.shared.array(0, i64, alignment=16)
        else:
            smi = cuda.shared.array(0, i64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        n = q.shape[2]
        d = q.shape[3]
        n_z = q_map.shape[0]
        n_qt = (n + BQ - 1) // BQ
        bid = cuda.blockIdx.x
        z = bid % n_z
        q0 = (n_qt - 1 - bid // n_z) * BQ
        zq = q_map[z]
        zk = kv_map[z]
        qb = zq // q.shape[1]
        qh = zq - qb * q.shape[1]
        kb = zk // k.shape[1]
        kh = zk - kb * k.shape[1]
        b = z // n_heads
        h = z - b * n_heads
        valid_q = min(q0 + BQ, q_len[z]) - q0

        s = cuda.local.array((RQ, RK), acc_t)
        lse_r = cuda.local.array(RQ, acc_t)
        ent = cuda.local.array(RQ, f64)
        dist = cuda.local.array(RQ, f64)
        best = cuda.local.array(RQ, f64)
        best_at = cuda.local.array(RQ, i64)
        for i in range(RQ):
            r = ty + TY * i
            lse_r[i] = lse2[z, q0 + r] if r < valid_q else NEG_INF
            ent[i] = 0.0
            dist[i] = 0.0
            best[i] = 0.0
            best_at[i] = -1
        tv = cuda.local.array((OWN, CAP), f64)
        ti = cuda.local.array((OWN, CAP), i64)
        for o in range(OWN):
            for u in range(CAP):
                tv[o, u] = 0.0
                ti[o, u] = -1
        load_q(sm, tid, q, qb, qh, q0, valid_q, d, scale2)
        cuda.syncthreads()

        k_end = kv_len[z]
        if valid_q > 0:
            for k0 in range(0, k_end, BK):
                k1 = min(k0 + BK, k_end)
                state = FULL
                if MASKED:
                    state = tiles[q0 // BQ, k0 // BK]
                if state == EMPTY:
                    continue
                load_k(sm, tid, k, kb, kh, k0, k1 - k0, d, ONE)
                cuda.syncthreads()  # A: K tile loaded
                qk(sm, s, ty, tx)
                mask_scores(s, ty, tx, q0, valid_q, k0, k1, state, ops, aux, b, h)
                for i in range(RQ):
                    lr = lse_r[i]
                    row = q0 + ty + TY * i
                    for j in range(RK):
                        p = ZERO
                        if lr != NEG_INF:
                            p = exp2(s[i, j] - lr)
                        pd = f64(p)
                        if pd != 0.0:
                            key = k0 + tx + TX * j
                            ent[i] += pd * ((f64(lr) - f64(s[i, j])) * LN2_64)
                            dist[i] += pd * f64(abs(row - key))
                            if pd > best[i]:
                                best[i] = pd
                                best_at[i] = key
                        s[i, j] = p
                if has_topk:
                    cuda.syncthreads()  # B: every K read done
                    for i in range(RQ):
                        for j in range(RK):
                            sm[U(PO + (ty + TY * i) * PP + tx + TX * j)] = s[i, j]
                    cuda.syncthreads()  # C: probability tile complete
                    for o in range(OWN):
                        r = tid + o * NT
                        if r < valid_q:
                            for jj in range(BK):
                                pd = f64(sm[U(PO + r * PP + jj)])
                                if pd > tv[o, topk - 1]:
                                    pos = topk - 1
                                    while pos > 0 and pd > tv[o, pos - 1]:
                                        tv[o, pos] = tv[o, pos - 1]
                                        ti[o, pos] = ti[o, pos - 1]
                                        pos -= 1
                                    tv[o, pos] = pd
                                    ti[o, pos] = k0 + jj
                cuda.syncthreads()  # D: tile consumed

        # The slots alias Q/KP (SL == 0): every read of those happened before the
        # last barrier D (or the one after the Q load when no tile was computed).
        for i in range(RQ):
            at = (ty + TY * i) * TX + tx
            smd[U(SL + at)] = ent[i]
            smd[U(SL + BQTX + at)] = dist[i]
            smd[U(SL + 2 * BQTX + at)] = best[i]
            smi[U(SL + 3 * BQTX + at)] = best_at[i]
        cuda.syncthreads()  # E: partial statistics written
        if tx == 0:
            for i in range(RQ):
                r = ty + TY * i
                row = q0 + r
                if row < n:
                    e_sum = 0.0
                    d_sum = 0.0
                    b_val = 0.0
                    b_at = -1
                    for u in range(TX):
                        at = r * TX + u
                        e_sum += smd[U(SL + at)]
                        d_sum += smd[U(SL + BQTX + at)]
                        val = smd[U(SL + 2 * BQTX + at)]
                        where = smi[U(SL + 3 * BQTX + at)]
                        if val > b_val or (val == b_val and val > 0.0 and where < b_at):
                            b_val = val
                            b_at = where
                    entropy[z, row] = max(e_sum, 0.0)
                    distance[z, row] = d_sum
                    maxprob[z, row] = b_val
                    argmax[z, row] = b_at
        if has_topk:
            for o in range(OWN):
                r = tid + o * NT
                row = q0 + r
                if r < BQ and row < n:
                    for u in range(topk):
                        topk_value[z, row, u] = tv[o, u]
                        topk_index[z, row, u] = ti[o, u]

    return cuda.jit(kernel), lay


# ----------------------------------------------------------------- received
@functools.lru_cache(maxsize=64)
def received_kernel(t: Tiling, dp: int, acc: str, mask: int, mod, rows: int = 1):
    """Weighted attention received by each key, ``sum_i w[r, i] p[i, j]``, into (Z, rows, m).

    With one row of ones this is the received attention of
    :func:`attnkit.attention_stats`; with rows of a rollout it is the
    product ``V @ P`` that :func:`.rollout.rollout_rows` streams. Problem
    ``z`` uses weights ``w[z // group]``. One block per key tile loops over
    the query tiles, so every column sum is accumulated in a fixed order
    (deterministic, no atomics).

    Signature: ``(q, k, q_map, kv_map, q_len, kv_len, scale2, ops, aux,
    tiles, n_heads, lse2, weights, group, received)``; ``weights`` (W, rows,
    n) float64; grid ``Z * ceil(m / block_k)``.
    """
    lay = layout(t, dp, 4, np.dtype(acc).itemsize, "received", rows=rows)
    P = _Parts(t, dp, 4 * t.tx, acc, lay, mask, mod)
    TY, TX, RQ, RK, R = t.ty, t.tx, t.rq, t.rk, rows
    BQ, BK = t.block_q, t.block_k
    SL = lay.slots
    MASKED = mask != mk.MASK_NONE
    EMPTY, FULL = mk.EMPTY, mk.FULL
    acc_t, ZERO, ONE, NEG_INF = P.acc_t, P.ZERO, P.ONE, P.NEG_INF
    exp2 = P.exp2
    load_q, load_k, qk, mask_scores = P.load_q, P.load_k, P.qk, P.mask_scores
    f64 = types.float64

    def kernel(q, k, q_map, kv_map, q_len, kv_len, scale2, ops, aux, tiles, n_heads, lse2,
               weights, group, received):
        if ALIGNED:  # the simulator rejects alignment; the GPU needs it to vectorise
            sm = cuda.shared.array(0, acc_t, alignment=16)
        else:
            sm = cuda.shared.array(0, acc_t)
        if ALIGNED:
            smd = cuda.shared.array(0, f64, alignment=16)
        else:
            smd = cuda.shared.array(0, f64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        d = q.shape[3]
        m = k.shape[2]
        n_z = q_map.shape[0]
        bid = cuda.blockIdx.x
        z = bid % n_z
        k0 = (bid // n_z) * BK
        zq = q_map[z]
        zk = kv_map[z]
        qb = zq // q.shape[1]
        qh = zq - qb * q.shape[1]
        kb = zk // k.shape[1]
        kh = zk - kb * k.shape[1]
        b = z // n_heads
        h = z - b * n_heads
        wz = z // group
        k1 = min(k0 + BK, kv_len[z])

        s = cuda.local.array((RQ, RK), acc_t)
        lse_r = cuda.local.array(RQ, acc_t)
        w_i = cuda.local.array(R, f64)
        col = cuda.local.array((R, RK), f64)
        for u in range(R):
            for j in range(RK):
                col[u, j] = 0.0
        load_k(sm, tid, k, kb, kh, k0, k1 - k0, d, ONE)

        n_valid = q_len[z]
        if k1 > k0:
            for q0 in range(0, n_valid, BQ):
                valid_q = min(q0 + BQ, n_valid) - q0
                state = FULL
                if MASKED:
                    state = tiles[q0 // BQ, k0 // BK]
                if state == EMPTY:
                    continue
                load_q(sm, tid, q, qb, qh, q0, valid_q, d, scale2)
                for i in range(RQ):
                    r = ty + TY * i
                    lse_r[i] = lse2[z, q0 + r] if r < valid_q else NEG_INF
                cuda.syncthreads()  # A: Q tile (and, the first time, K tile) loaded
                qk(sm, s, ty, tx)
                mask_scores(s, ty, tx, q0, valid_q, k0, k1, state, ops, aux, b, h)
                for i in range(RQ):
                    lr = lse_r[i]
                    if lr != NEG_INF:  # a valid query row (padding has lse -inf)
                        for u in range(R):
                            w_i[u] = weights[wz, u, q0 + ty + TY * i]
                        for j in range(RK):
                            p = f64(exp2(s[i, j] - lr))
                            for u in range(R):
                                col[u, j] += w_i[u] * p
                cuda.syncthreads()  # D: Q tile consumed

        for u in range(R):
            for j in range(RK):
                smd[U(SL + (u * TY + ty) * BK + tx + TX * j)] = col[u, j]
        cuda.syncthreads()  # E: partial column sums written
        if ty == 0:
            for u in range(R):
                for j in range(RK):
                    key = k0 + tx + TX * j
                    if key < m:
                        total = 0.0
                        for v in range(TY):
                            total += smd[U(SL + (u * TY + v) * BK + tx + TX * j)]
                        received[z, u, key] = total

    return cuda.jit(kernel), lay


# ------------------------------------------------------------- inspection
def _arr(dtype, ndim, layout="C"):
    from numba.np.numpy_support import from_dtype

    return types.Array(from_dtype(np.dtype(dtype)), ndim, layout)


def signature(kind: str, acc: str, in_dtype: str = "float32", out_dtype: str | None = None,
              layout: str = "C") -> tuple:
    """Argument types of a kernel, as the API launches it (for ``cuda.compile_ptx``).

    ``kind``: "forward", "lse", "weights", "query_stats" or "received";
    ``in_dtype``: the q/k/v element type; ``layout``: "C", or "A" for strided
    device views.
    """
    acc_nb = _nb(acc)
    x = _arr(in_dtype, 4, layout)
    maps = (_arr(np.int64, 1),) * 4
    ops = (acc_nb, _arr(np.int64, 2), _arr(np.int64, 1), _arr(np.int8, 2), types.int64)
    head = (x, x) + maps + ops
    if kind in ("forward", "lse"):
        out = _arr(out_dtype or (in_dtype if kind == "forward" else acc), 3)
        lse = _arr(acc, 2)
        return (x, x, x) + maps + ops + (out, lse)
    if kind == "weights":
        return head + (_arr(acc, 2), _arr(acc, 3))
    if kind == "query_stats":
        f, i = _arr(np.float64, 2), _arr(np.int64, 2)
        return head + (_arr(acc, 2), types.int64, f, f, i, f, _arr(np.int64, 3),
                       _arr(np.float64, 3))
    if kind == "received":
        return head + (_arr(acc, 2), _arr(np.float64, 3), types.int64, _arr(np.float64, 3))
    raise ValueError(f"unknown kernel kind {kind!r}")


def kernel_for(kind: str, t: Tiling, dp: int, dvp: int, acc: str, mask: int, mod=None,
               topk_cap: int = 0, rows: int = 1):
    """(dispatcher, layout) of one kernel variant, from the cached factories."""
    if kind in ("forward", "lse"):
        return forward_kernel(t, dp, dvp, acc, mask, mod, kind == "forward")
    if kind == "weights":
        return weights_kernel(t, dp, acc, mask, mod)
    if kind == "query_stats":
        return query_stats_kernel(t, dp, acc, mask, mod, topk_cap)
    if kind == "received":
        return received_kernel(t, dp, acc, mask, mod, rows)
    raise ValueError(f"unknown kernel kind {kind!r}")


def compile_ptx(kind: str, t: Tiling, dp: int, dvp: int, acc: str, mask: int, mod=None,
                topk_cap: int = 0, in_dtype: str = "float32", cc=(9, 0), layout: str = "C",
                rows: int = 1) -> str:
    """PTX of one kernel variant for compute capability ``cc`` (no GPU needed)."""
    kern, _ = kernel_for(kind, t, dp, dvp, acc, mask, mod, topk_cap, rows)
    sig = signature(kind, acc, in_dtype, layout=layout)
    ptx, _ = cuda.compile_ptx(kern.py_func, sig, cc=cc)
    return ptx
