"""Per-head statistics of stored attention (see :mod:`attnkit.stats`).

``attn`` is (S, L, H, n, n), float32 or float64, valid on ``[0, lengths[s])``.
Every statistic is a mean over the valid query rows of a per-row quantity,
computed in float64. Work is split over (sample, layer) with ``prange``.
"""

import numpy as np
from numba import njit, prange

#: Order of the statistics in the last axis of :func:`head_stats`' ``out``.
STATS = ("entropy", "distance", "max_weight", "self_mass", "prev_mass", "next_mass",
         "cls_mass", "sep_mass", "punct_mass")


@njit(cache=True, nogil=True)
def _head(a, length, cls_keys, sep_keys, punct_keys, has_tokens, out):
    """Statistics of one head ``a`` (n, n) into ``out`` (len(STATS),)."""
    out[:] = 0.0
    for i in range(length):
        ent = 0.0
        dist = 0.0
        peak = 0.0
        cls = 0.0
        sep = 0.0
        punct = 0.0
        for j in range(length):
            p = np.float64(a[i, j])
            if p > 0.0:
                ent -= p * np.log(p)
            dist += p * abs(i - j)
            peak = max(peak, p)
            if has_tokens:
                if cls_keys[j]:
                    cls += p
                if sep_keys[j]:
                    sep += p
                if punct_keys[j]:
                    punct += p
        out[0] += max(ent, 0.0)
        out[1] += dist
        out[2] += peak
        out[3] += a[i, i]
        if i >= 1:
            out[4] += a[i, i - 1]
        if i + 1 < length:
            out[5] += a[i, i + 1]
        out[6] += cls
        out[7] += sep
        out[8] += punct
    for t in range(4):
        out[t] = out[t] / length if length > 0 else np.nan
    out[4] = out[4] / (length - 1) if length > 1 else np.nan
    out[5] = out[5] / (length - 1) if length > 1 else np.nan
    for t in range(6, 9):
        out[t] = out[t] / length if (has_tokens and length > 0) else np.nan


@njit(cache=True, nogil=True)
def _xlogx_rows(heads, length, out):
    """``out[h, i, j] = p log p`` (0 for p = 0) of every valid weight of one layer."""
    for h in range(heads.shape[0]):
        for i in range(length):
            for j in range(length):
                p = np.float64(heads[h, i, j])
                out[h, i, j] = p * np.log(p) if p > 0.0 else 0.0


@njit(cache=True, nogil=True)
def _js_row_nats(p, q, plogp, qlogq, length):
    """Jensen-Shannon divergence of two rows in nats, from their precomputed p log p.

    JS = 1/2 sum [p log p + q log q - (p + q) log((p + q) / 2)]: one log per
    entry instead of two.
    """
    total = 0.0
    for j in range(length):
        mass = np.float64(p[j]) + np.float64(q[j])
        if mass > 0.0:
            total += plogp[j] + qlogq[j] - mass * np.log(0.5 * mass)
    return 0.5 * total


@njit(cache=True, parallel=True)
def head_stats(attn, lengths, cls_keys, sep_keys, punct_keys, has_tokens, out, js):
    """Fill ``out`` (S, L, H, len(STATS)) and ``js`` (S, L, H, H): JS divergence between heads."""
    n_samples, n_layers, n_heads = attn.shape[0], attn.shape[1], attn.shape[2]
    for task in prange(n_samples * n_layers):
        s = task // n_layers
        layer = task % n_layers
        length = lengths[s]
        for h in range(n_heads):
            _head(attn[s, layer, h], length, cls_keys[s], sep_keys[s], punct_keys[s],
                  has_tokens, out[s, layer, h])
        xlogx = np.empty((n_heads, length, length))
        _xlogx_rows(attn[s, layer], length, xlogx)
        for h1 in range(n_heads):
            js[s, layer, h1, h1] = 0.0 if length > 0 else np.nan
            for h2 in range(h1 + 1, n_heads):
                total = 0.0
                for i in range(length):
                    total += _js_row_nats(attn[s, layer, h1, i], attn[s, layer, h2, i],
                                          xlogx[h1, i], xlogx[h2, i], length)
                # bits, clipped at 0 against rounding
                value = max(total / (length * np.log(2.0)), 0.0) if length > 0 else np.nan
                js[s, layer, h1, h2] = value
                js[s, layer, h2, h1] = value
