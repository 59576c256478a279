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
def _js_bits(p, q, length):
    """Jensen-Shannon divergence of two rows in bits (0 = identical, 1 = disjoint)."""
    total = 0.0
    for j in range(length):
        a = np.float64(p[j])
        b = np.float64(q[j])
        mid = 0.5 * (a + b)
        if a > 0.0:
            total += a * np.log(a / mid)
        if b > 0.0:
            total += b * np.log(b / mid)
    return max(0.5 * total / np.log(2.0), 0.0)


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
        for h1 in range(n_heads):
            js[s, layer, h1, h1] = 0.0 if length > 0 else np.nan
            for h2 in range(h1 + 1, n_heads):
                total = 0.0
                for i in range(length):
                    total += _js_bits(attn[s, layer, h1, i], attn[s, layer, h2, i], length)
                value = total / length if length > 0 else np.nan
                js[s, layer, h1, h2] = value
                js[s, layer, h2, h1] = value
