"""Batched rank and linear correlation kernels (Kendall tau-b, Spearman, Pearson).

Every kernel takes ``x``, ``y`` (B, n) float64 and ``valid`` (B, n) uint8 and
computes one statistic per row over the positions where ``valid`` is 1. Rows
are split into blocks, one block per ``prange`` iteration, so the scratch
buffers are allocated once per block rather than once per row.

Kendall tau-b follows Knight (1966): sort the pairs by (x, y), count the
discordant pairs as the inversions of the y sequence with a merge sort, and
correct for ties from the runs of equal x, equal y and equal (x, y). This is
O(n log n) per row. The tie sums are those of scipy.stats.kendalltau, so the
statistic and the asymptotic variance are the same numbers.
"""

import math

import numpy as np
from numba import njit, prange

# float(k!) for k < 171 (171! overflows float64): the exact Kendall null
# distribution divides permutation counts by n!.
FACTORIAL = np.array([float(math.factorial(k)) for k in range(171)])

# Rows per prange block: enough work per block to amortise the scratch buffers.
BLOCK = 64
# The merge sorts insertion-sort runs of this many elements first: on the short
# rows typical here that beats merging from width 1 (about 20% on n = 64).
RUN = 16


@njit(cache=True, nogil=True)
def _less(a, b, i, j):
    """(a[i], b[i]) < (a[j], b[j]) lexicographically."""
    if a[i] < a[j]:
        return True
    if a[i] > a[j]:
        return False
    return b[i] < b[j]


@njit(cache=True, nogil=True)
def argsort_pairs(a, b, m, idx, tmp):
    """Stable bottom-up merge sort of ``idx[:m] = 0..m-1`` by (a, b).

    ``tmp`` is scratch of at least ``m`` ints.
    """
    for i in range(m):
        idx[i] = i
    for lo in range(0, m, RUN):
        hi = min(lo + RUN, m)
        for i in range(lo + 1, hi):
            v = idx[i]
            j = i - 1
            while j >= lo and _less(a, b, v, idx[j]):
                idx[j + 1] = idx[j]
                j -= 1
            idx[j + 1] = v
    src, dst = idx, tmp
    in_idx = True
    width = RUN
    while width < m:
        for lo in range(0, m, 2 * width):
            mid = min(lo + width, m)
            hi = min(lo + 2 * width, m)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                # take the right element only when strictly smaller: stable
                if _less(a, b, src[j], src[i]):
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < hi:
                dst[k] = src[j]
                j += 1
                k += 1
        src, dst = dst, src
        in_idx = not in_idx
        width *= 2
    if not in_idx:
        for i in range(m):
            idx[i] = src[i]


@njit(cache=True, nogil=True)
def count_inversions(v, m, tmp):
    """Sort ``v[:m]`` ascending in place; return the number of pairs i < j with v[i] > v[j]."""
    inversions = 0
    for lo in range(0, m, RUN):
        hi = min(lo + RUN, m)
        for i in range(lo + 1, hi):
            val = v[i]
            j = i - 1
            while j >= lo and v[j] > val:
                v[j + 1] = v[j]
                j -= 1
            inversions += i - 1 - j  # elements val moved past
            v[j + 1] = val
    src, dst = v, tmp
    in_v = True
    width = RUN
    while width < m:
        for lo in range(0, m, 2 * width):
            mid = min(lo + width, m)
            hi = min(lo + 2 * width, m)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if src[j] < src[i]:
                    # src[j] is smaller than every element left in the left half
                    inversions += mid - i
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < hi:
                dst[k] = src[j]
                j += 1
                k += 1
        src, dst = dst, src
        in_v = not in_v
        width *= 2
    if not in_v:
        for i in range(m):
            v[i] = src[i]
    return inversions


@njit(cache=True, nogil=True)
def _gather(x, y, valid, row, xs, ys):
    """Copy the valid positions of row ``row`` into xs, ys; return their count."""
    m = 0
    for j in range(x.shape[1]):
        if valid[row, j]:
            xs[m] = x[row, j]
            ys[m] = y[row, j]
            m += 1
    return m


@njit(cache=True, nogil=True)
def _is_constant(v, m):
    for i in range(1, m):
        if v[i] != v[0]:
            return False
    return True


@njit(cache=True, nogil=True)
def _tie_sums(v, m):
    """For sorted ``v[:m]``: sum over runs of equal values of t(t-1)/2,
    t(t-1)(t-2) and t(t-1)(2t+5) (the tie terms of Kendall's variance)."""
    pairs = 0
    s0 = 0.0
    s1 = 0.0
    start = 0
    for i in range(1, m + 1):
        if i == m or v[i] != v[start]:
            t = i - start
            if t > 1:
                pairs += t * (t - 1) // 2
                s0 += t * (t - 1.0) * (t - 2)
                s1 += t * (t - 1.0) * (2 * t + 5)
            start = i
    return pairs, s0, s1


@njit(cache=True, nogil=True)
def kendall_exact_pvalue(n, c, factorial):
    """Two-sided exact p-value of Kendall's tau without ties (Kendall 1970).

    ``c`` is the number of concordant pairs. Counts the permutations of n
    items with at most ``min(c, n(n-1)/2 - c)`` inversions by the recurrence
    scipy uses (``scipy.stats._mstats_basic._kendall_p_exact``), so the two
    give the same number.
    """
    tot = n * (n - 1) // 2
    c = min(c, tot - c)
    if n <= 2:
        return 1.0
    if c == 0:
        prob = 2.0 / factorial[n] if n < 171 else 0.0
    elif c == 1:
        prob = 2.0 / factorial[n - 1] if n < 172 else 0.0
    elif 4 * c == n * (n - 1):
        prob = 1.0
    elif n < 171:
        new = np.zeros(c + 1)
        new[0] = 1.0
        new[1] = 1.0
        for j in range(3, n + 1):
            acc = 0.0
            for k in range(c + 1):
                acc += new[k]
                new[k] = acc
            if j <= c:
                # new[j:] -= new[:c + 1 - j] with the old values: go downwards
                for k in range(c, j - 1, -1):
                    new[k] -= new[k - j]
        total = 0.0
        for k in range(c + 1):
            total += new[k]
        prob = 2.0 * total / factorial[n]
    else:
        new = np.zeros(c + 1)
        new[0] = 1.0
        new[1] = 1.0
        for j in range(3, n + 1):
            acc = 0.0
            for k in range(c + 1):
                acc += new[k]
                new[k] = acc / j
            if j <= c:
                for k in range(c, j - 1, -1):
                    new[k] -= new[k - j]
        prob = 0.0
        for k in range(c + 1):
            prob += new[k]
    return min(max(prob, 0.0), 1.0)


@njit(cache=True, parallel=True)
def kendall(x, y, valid, exact_mode, factorial, stat, pexact, z, count):
    """Kendall tau-b per row.

    Writes ``stat`` (NaN for fewer than 2 positions or a constant input),
    ``count`` (valid positions), and for the p-value either ``pexact`` (the
    exact two-sided p-value where scipy's 'auto' rule picks the exact method
    and ``exact_mode`` is 1; NaN elsewhere) or ``z`` (the asymptotic normal
    score; NaN where the statistic is NaN).
    """
    rows, n = x.shape
    for block in prange((rows + BLOCK - 1) // BLOCK):
        xs = np.empty(n)
        ys = np.empty(n)
        yv = np.empty(n)
        idx = np.empty(n, np.int64)
        tmp = np.empty(n, np.int64)
        ftmp = np.empty(n)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            m = _gather(x, y, valid, r, xs, ys)
            count[r] = m
            stat[r] = np.nan
            pexact[r] = np.nan
            z[r] = np.nan
            if m < 2:
                continue
            argsort_pairs(xs, ys, m, idx, tmp)
            # ties in x and joint ties in (x, y): runs in the (x, y) order
            for i in range(m):
                yv[i] = xs[idx[i]]
            xtie, x0, x1 = _tie_sums(yv, m)
            ntie = 0
            start = 0
            for i in range(1, m + 1):
                if i == m or xs[idx[i]] != xs[idx[start]] or ys[idx[i]] != ys[idx[start]]:
                    t = i - start
                    ntie += t * (t - 1) // 2
                    start = i
            for i in range(m):
                yv[i] = ys[idx[i]]
            dis = count_inversions(yv, m, ftmp)  # yv is now sorted
            ytie, y0, y1 = _tie_sums(yv, m)
            tot = m * (m - 1) // 2
            if xtie == tot or ytie == tot:
                continue
            con_minus_dis = tot - xtie - ytie + ntie - 2 * dis
            tau = con_minus_dis / np.sqrt(tot - xtie) / np.sqrt(tot - ytie)
            stat[r] = min(1.0, max(-1.0, tau))
            if m == 2:
                pexact[r] = 1.0
                continue
            if exact_mode == 1 and xtie == 0 and ytie == 0 and (
                    m <= 33 or min(dis, tot - dis) <= 1):
                pexact[r] = kendall_exact_pvalue(m, tot - dis, factorial)
                continue
            mm = m * (m - 1.0)
            var = ((mm * (2 * m + 5) - x1 - y1) / 18
                   + (2.0 * xtie * ytie) / mm + x0 * y0 / (9 * mm * (m - 2)))
            z[r] = con_minus_dis / np.sqrt(var)


@njit(cache=True, nogil=True)
def _average_ranks(v, m, idx, tmp, out):
    """Average ranks (1-based, ties share the mean rank) of ``v[:m]`` into ``out``."""
    argsort_pairs(v, v, m, idx, tmp)
    start = 0
    for i in range(1, m + 1):
        if i == m or v[idx[i]] != v[idx[start]]:
            rank = 0.5 * (start + i + 1)  # mean of start+1 .. i
            for k in range(start, i):
                out[idx[k]] = rank
            start = i


@njit(cache=True, nogil=True)
def _pearson(a, b, m):
    """Pearson r of a[:m], b[:m] (two passes; NaN when either is constant)."""
    if _is_constant(a, m) or _is_constant(b, m):
        return np.nan
    if m == 2:
        return 1.0 if (a[1] - a[0] > 0) == (b[1] - b[0] > 0) else -1.0
    ma = 0.0
    mb = 0.0
    for i in range(m):
        ma += a[i]
        mb += b[i]
    ma /= m
    mb /= m
    sab = 0.0
    saa = 0.0
    sbb = 0.0
    for i in range(m):
        da = a[i] - ma
        db = b[i] - mb
        sab += da * db
        saa += da * da
        sbb += db * db
    # one sqrt of the product is exact for rank data (perfect ranks give exactly +-1);
    # fall back to two sqrts when the product leaves the float64 range
    norm = saa * sbb
    if norm == 0.0 or norm == np.inf:
        r = sab / (np.sqrt(saa) * np.sqrt(sbb))
    else:
        r = sab / np.sqrt(norm)
    return min(1.0, max(-1.0, r))


@njit(cache=True, parallel=True)
def spearman(x, y, valid, stat, count):
    """Spearman rho per row: Pearson r of the average ranks."""
    rows, n = x.shape
    for block in prange((rows + BLOCK - 1) // BLOCK):
        xs = np.empty(n)
        ys = np.empty(n)
        rx = np.empty(n)
        ry = np.empty(n)
        idx = np.empty(n, np.int64)
        tmp = np.empty(n, np.int64)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            m = _gather(x, y, valid, r, xs, ys)
            count[r] = m
            stat[r] = np.nan
            if m < 2 or _is_constant(xs, m) or _is_constant(ys, m):
                continue
            _average_ranks(xs, m, idx, tmp, rx)
            _average_ranks(ys, m, idx, tmp, ry)
            stat[r] = _pearson(rx, ry, m)


@njit(cache=True, parallel=True)
def pearson(x, y, valid, stat, count):
    """Pearson r per row."""
    rows, n = x.shape
    for block in prange((rows + BLOCK - 1) // BLOCK):
        xs = np.empty(n)
        ys = np.empty(n)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            m = _gather(x, y, valid, r, xs, ys)
            count[r] = m
            stat[r] = np.nan
            if m < 2:
                continue
            stat[r] = _pearson(xs, ys, m)
