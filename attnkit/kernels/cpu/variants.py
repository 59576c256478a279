"""CPU kernels for the attention variants of :mod:`attnkit.variants`.

No validation happens here: :mod:`attnkit.variants` checks and normalises the
arguments and allocates the outputs. As in :mod:`.attention`, problem ``z``
uses row ``q_map[z]`` of the query-side arrays and row ``kv_map[z]`` of the
key-side arrays (broadcasting and grouped-query heads), all arrays are
C-contiguous, and sums accumulate in float64 whatever the storage dtype.
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def additive_weights(pq, pk, v_a, q_map, kv_map, kv_len, allowed, out):
    """Additive (Bahdanau) attention probabilities into ``out`` (Z, n, m).

    ``score[z, i, j] = sum_h v_a[h] * tanh(pq[q_map[z], i, h] + pk[kv_map[z], j, h])``
    where ``pq`` (Zq, n, hidden) and ``pk`` (Zk, m, hidden) are the projected
    queries and keys: the ``(n, m, hidden)`` tensor is never formed. Keys at or
    past ``kv_len[z]`` and pairs with ``allowed[i, j]`` false (when ``allowed``
    is a non-empty (n, m) array) are masked. Each row then gets a softmax over
    its unmasked keys: masked entries are exactly 0 and a fully masked row is
    all 0.
    """
    n_problems = q_map.shape[0]
    n = out.shape[1]
    m = out.shape[2]
    hidden = v_a.shape[0]
    use_mask = allowed.shape[0] > 0
    for task in prange(n_problems * n):
        z = task // n
        i = task % n
        zq = q_map[z]
        zk = kv_map[z]
        m_len = kv_len[z]
        row_max = -np.inf
        for j in range(m):
            if j >= m_len or (use_mask and not allowed[i, j]):
                out[z, i, j] = -np.inf
                continue
            acc = 0.0
            for h in range(hidden):
                acc += v_a[h] * np.tanh(pq[zq, i, h] + pk[zk, j, h])
            out[z, i, j] = acc
            if acc > row_max:
                row_max = acc
        if row_max == -np.inf:  # fully masked row
            for j in range(m):
                out[z, i, j] = 0.0
            continue
        total = 0.0
        for j in range(m):
            s = out[z, i, j]
            e = 0.0 if s == -np.inf else np.exp(s - row_max)
            out[z, i, j] = e
            total += e
        inv = 1.0 / total
        for j in range(m):
            out[z, i, j] = out[z, i, j] * inv


@njit(parallel=True, cache=True)
def causal_linear_attention(phi_q, phi_k, v, q_map, kv_map, eps, out):
    """Causal linear attention with running sums into ``out`` (Z, n, dv).

    ``out[z, i] = phi_q[i] @ S_i / (phi_q[i] @ s_i + eps)`` with
    ``S_i = sum_{j <= i} outer(phi_k[j], v[j])`` and ``s_i = sum_{j <= i} phi_k[j]``
    (keys past ``m`` do not exist); a zero denominator gives 0, never NaN.
    Time O(n * r * dv), extra memory O(r * dv) per problem, where ``r`` is the
    feature dimension.
    """
    n_problems = q_map.shape[0]
    n = phi_q.shape[1]
    m = phi_k.shape[1]
    r = phi_q.shape[2]
    dv = v.shape[2]
    for z in prange(n_problems):
        zq = q_map[z]
        zk = kv_map[z]
        state = np.zeros((r, dv))
        norm = np.zeros(r)
        row = np.empty(dv)
        for i in range(n):
            if i < m:
                for a in range(r):
                    f = phi_k[zk, i, a]
                    norm[a] += f
                    for c in range(dv):
                        state[a, c] += f * v[zk, i, c]
            den = 0.0
            row[:] = 0.0
            for a in range(r):
                f = phi_q[zq, i, a]
                den += f * norm[a]
                for c in range(dv):
                    row[c] += f * state[a, c]
            total = den + eps
            inv = 0.0 if total == 0.0 else 1.0 / total  # no key seen: output 0
            for c in range(dv):
                out[z, i, c] = row[c] * inv
