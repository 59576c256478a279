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

Partial correlations (``partial_linear``, ``partial_kendall``) and permutation
p-values (``linear_permutation``, ``kendall_permutation``) follow. The
permutation kernels enumerate all m! orders with Heap's algorithm for short
rows (one swap per order, the sums updated in O(1) or O(m)) and otherwise draw
``n_perm`` Fisher-Yates shuffles from a splitmix64 stream of the row's own,
seeded from (seed, row index), so the result never depends on the threads.
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

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


@njit(cache=True, nogil=True)
def _kendall_counts(a, b, m, idx, tmp, av, bv):
    """The pair counts of Kendall's tau-b of a[:m], b[:m] (Knight's O(m log m) algorithm).

    Returns ``(tot, xtie, x0, x1, ytie, y0, y1, ntie, dis)``: all pairs, pairs tied in
    ``a`` and the two tie terms of the variance (:func:`_tie_sums`), the same for ``b``,
    pairs tied in both, and discordant pairs. ``idx``, ``tmp`` are int scratch and
    ``av``, ``bv`` float scratch of at least ``m``.
    """
    argsort_pairs(a, b, m, idx, tmp)
    # ties in a and joint ties in (a, b): runs in the (a, b) order
    for i in range(m):
        av[i] = a[idx[i]]
    xtie, x0, x1 = _tie_sums(av, m)
    ntie = 0
    start = 0
    for i in range(1, m + 1):
        if i == m or a[idx[i]] != a[idx[start]] or b[idx[i]] != b[idx[start]]:
            t = i - start
            ntie += t * (t - 1) // 2
            start = i
    for i in range(m):
        av[i] = b[idx[i]]
    dis = count_inversions(av, m, bv)  # av is now sorted
    ytie, y0, y1 = _tie_sums(av, m)
    return m * (m - 1) // 2, xtie, x0, x1, ytie, y0, y1, ntie, dis


@njit(cache=True, nogil=True)
def _tau_from_counts(tot, xtie, ytie, ntie, dis):
    """Tau-b from :func:`_kendall_counts`, clipped to [-1, 1] (neither input constant)."""
    tau = (tot - xtie - ytie + ntie - 2 * dis) / np.sqrt(tot - xtie) / np.sqrt(tot - ytie)
    return min(1.0, max(-1.0, tau))


@njit(cache=True, parallel=True)
def kendall(x, y, valid, exact_mode, factorial, stat, pexact, z, count):
    """Kendall tau-b per row.

    Writes ``stat`` (NaN for fewer than 2 positions or a constant input),
    ``count`` (valid positions), and for the p-value either ``pexact`` (the
    exact two-sided p-value where scipy's 'auto' rule picks the exact method
    and ``exact_mode`` is 1, or for every row without ties when ``exact_mode``
    is 2; NaN elsewhere) or ``z`` (the asymptotic normal score; NaN where the
    statistic is NaN or the exact p-value was written).
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
            tot, xtie, x0, x1, ytie, y0, y1, ntie, dis = _kendall_counts(xs, ys, m, idx, tmp,
                                                                         yv, ftmp)
            if xtie == tot or ytie == tot:
                continue
            con_minus_dis = tot - xtie - ytie + ntie - 2 * dis
            stat[r] = _tau_from_counts(tot, xtie, ytie, ntie, dis)
            if m == 2:
                pexact[r] = 1.0
                continue
            if exact_mode >= 1 and xtie == 0 and ytie == 0 and (
                    exact_mode == 2 or m <= 33 or min(dis, tot - dis) <= 1):
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
    # fall back to two sqrts when the product leaves the float64 range, and when even
    # that fails (squares of deviations near 1e-170 underflow to 0) scale the
    # deviations to max 1 first
    norm = saa * sbb
    if norm == 0.0 or norm == np.inf:
        two = np.sqrt(saa) * np.sqrt(sbb)
        if 0.0 < two < np.inf:
            r = sab / two
        else:
            big_a = 0.0
            big_b = 0.0
            for i in range(m):
                big_a = max(big_a, abs(a[i] - ma))
                big_b = max(big_b, abs(b[i] - mb))
            if big_a == 0.0 or big_b == 0.0:
                return np.nan
            sab = 0.0
            saa = 0.0
            sbb = 0.0
            for i in range(m):
                da = (a[i] - ma) / big_a
                db = (b[i] - mb) / big_b
                sab += da * db
                saa += da * da
                sbb += db * db
            r = sab / np.sqrt(saa * sbb)
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


# ----------------------------------------------------------------------------- partial
@njit(cache=True, nogil=True, error_model="numpy")
def _tau_b(a, b, m, idx, tmp, av, bv):
    """Kendall tau-b of a[:m], b[:m]; NaN when either is constant. ``av``, ``bv`` are
    float scratch of at least ``m``."""
    tot, xtie, _, _, ytie, _, _, ntie, dis = _kendall_counts(a, b, m, idx, tmp, av, bv)
    if xtie == tot or ytie == tot:
        return np.nan
    return _tau_from_counts(tot, xtie, ytie, ntie, dis)


@njit(cache=True, parallel=True, error_model="numpy")
def partial_kendall(x, y, z, valid, stat, count):
    """Kendall's partial tau of x and y given one control ``z`` (B, 1, n) per row.

    (tau_xy - tau_xz tau_yz) / sqrt((1 - tau_xz^2)(1 - tau_yz^2)) with tau-b for
    each pair. A control that is constant over the row's positions carries no
    information: tau_xz = tau_yz = 0 there, so the result is tau_xy. NaN for
    fewer than 2 positions, a constant x or y, or |tau_xz| = 1 or |tau_yz| = 1.
    """
    rows, n = x.shape
    for block in prange((rows + BLOCK - 1) // BLOCK):
        xs = np.empty(n)
        ys = np.empty(n)
        zs = np.empty(n)
        av = np.empty(n)
        bv = np.empty(n)
        idx = np.empty(n, np.int64)
        tmp = np.empty(n, np.int64)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            m = 0
            for j in range(n):
                if valid[r, j]:
                    xs[m] = x[r, j]
                    ys[m] = y[r, j]
                    zs[m] = z[r, 0, j]
                    m += 1
            count[r] = m
            stat[r] = np.nan
            if m < 2 or _is_constant(xs, m) or _is_constant(ys, m):
                continue
            txy = _tau_b(xs, ys, m, idx, tmp, av, bv)
            if _is_constant(zs, m):
                stat[r] = txy
                continue
            txz = _tau_b(xs, zs, m, idx, tmp, av, bv)
            tyz = _tau_b(ys, zs, m, idx, tmp, av, bv)
            den = (1.0 - txz * txz) * (1.0 - tyz * tyz)
            if not den > 0.0:
                continue
            stat[r] = min(1.0, max(-1.0, (txy - txz * tyz) / np.sqrt(den)))


# Relative size below which a residual (or an orthogonalised control) counts as
# zero: the variable is (numerically) a linear function of the controls.
COLLINEAR = 1e-10


@njit(cache=True, nogil=True, error_model="numpy")
def _center(v, m, scale):
    """Centre v[:m]; with ``scale`` also divide it by max |v| (correlations do not see
    the scale, and the sums of squares then neither underflow nor overflow; ranks keep
    their exact half-integer values). Returns the sum of squares (0 if v is constant)."""
    mean = 0.0
    for i in range(m):
        mean += v[i]
    mean /= m
    big = 0.0
    for i in range(m):
        v[i] -= mean
        big = max(big, abs(v[i]))
    if big == 0.0:
        return 0.0
    ss = 0.0
    for i in range(m):
        if scale:
            v[i] /= big
        ss += v[i] * v[i]
    return ss


@njit(cache=True, nogil=True, error_model="numpy")
def _project_out(v, q, k, m):
    """v -= sum_c (q_c . v) q_c for the first k rows of q (orthonormal); returns |v|^2."""
    for c in range(k):
        d = 0.0
        for i in range(m):
            d += q[c, i] * v[i]
        for i in range(m):
            v[i] -= d * q[c, i]
    ss = 0.0
    for i in range(m):
        ss += v[i] * v[i]
    return ss


@njit(cache=True, nogil=True, error_model="numpy")
def _residualise(x, y, z, valid, r, use_ranks, xs, ys, zs, q, idx, tmp, rank):
    """Gather row ``r``, rank it if asked, and replace xs, ys by their residuals on
    [1, z_1, ..., z_k] (least squares with intercept).

    ``q`` receives an orthonormal basis (k_eff rows) of the controls' span
    orthogonal to the constant (modified Gram-Schmidt, twice; controls that are
    constant or collinear with earlier ones are dropped). Returns (m, k_eff, ok)
    where ``ok`` is False for fewer than 2 positions, a constant x or y, or a
    residual that vanishes (x or y explained by the controls).
    """
    n = x.shape[1]
    k = z.shape[1]
    m = 0
    for j in range(n):
        if valid[r, j]:
            xs[m] = x[r, j]
            ys[m] = y[r, j]
            for c in range(k):
                zs[c, m] = z[r, c, j]
            m += 1
    if m < 2 or _is_constant(xs, m) or _is_constant(ys, m):
        return m, 0, False
    if use_ranks:
        _average_ranks(xs, m, idx, tmp, rank)
        for i in range(m):
            xs[i] = rank[i]
        _average_ranks(ys, m, idx, tmp, rank)
        for i in range(m):
            ys[i] = rank[i]
    k_eff = 0
    for c in range(k):
        if use_ranks:
            for i in range(m):
                rank[i] = zs[c, i]
            _average_ranks(rank, m, idx, tmp, zs[c])
        for i in range(m):
            q[k_eff, i] = zs[c, i]
        ss0 = _center(q[k_eff], m, not use_ranks)
        if ss0 == 0.0:
            continue
        _project_out(q[k_eff], q, k_eff, m)
        ss = _project_out(q[k_eff], q, k_eff, m)
        if not ss > COLLINEAR * COLLINEAR * ss0:
            continue
        norm = np.sqrt(ss)
        for i in range(m):
            q[k_eff, i] /= norm
        k_eff += 1
    sx0 = _center(xs, m, not use_ranks)
    sy0 = _center(ys, m, not use_ranks)
    sx = _project_out(xs, q, k_eff, m)
    sy = _project_out(ys, q, k_eff, m)
    if k_eff > 0:
        sx = _project_out(xs, q, k_eff, m)
        sy = _project_out(ys, q, k_eff, m)
    if not (sx > COLLINEAR * COLLINEAR * sx0 and sy > COLLINEAR * COLLINEAR * sy0):
        return m, k_eff, False
    return m, k_eff, True


@njit(cache=True, parallel=True, error_model="numpy")
def partial_linear(x, y, z, valid, use_ranks, stat, count, rank_z):
    """Partial Pearson r (``use_ranks`` 0) or Spearman rho (1) of x and y given the
    controls ``z`` (B, k, n): the Pearson r of the residuals of x and y after a
    least-squares fit on [1, z] (of the average ranks for Spearman).

    Writes ``stat``, ``count`` (valid positions) and ``rank_z`` (the rank of the
    controls after dropping constant/collinear ones, for the degrees of freedom).
    """
    rows, n = x.shape
    k = z.shape[1]
    for block in prange((rows + BLOCK - 1) // BLOCK):
        xs = np.empty(n)
        ys = np.empty(n)
        zs = np.empty((k, n))
        q = np.empty((max(k, 1), n))
        rank = np.empty(n)
        idx = np.empty(n, np.int64)
        tmp = np.empty(n, np.int64)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            m, k_eff, ok = _residualise(x, y, z, valid, r, use_ranks, xs, ys, zs, q, idx, tmp,
                                        rank)
            count[r] = m
            rank_z[r] = k_eff
            stat[r] = np.nan
            if not ok:
                continue
            sab = 0.0
            saa = 0.0
            sbb = 0.0
            for i in range(m):
                sab += xs[i] * ys[i]
                saa += xs[i] * xs[i]
                sbb += ys[i] * ys[i]
            stat[r] = min(1.0, max(-1.0, sab / np.sqrt(saa * sbb)))


# ----------------------------------------------------------------------------- permutations
# Every row draws from its own splitmix64 stream, seeded from (seed, row): the
# p-values do not depend on the number of threads or on the other rows.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _mix64(z):
    """The splitmix64 finaliser (a bijection of uint64)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def row_stream(seed, row):
    """Initial splitmix64 state of row ``row`` under ``seed``."""
    return _mix64(_mix64(np.uint64(seed) + _GOLDEN) ^ _mix64(np.uint64(row) + _MIX2))


@njit(cache=True, nogil=True, inline="always")
def _lemire(u, bound, state):
    """(state, uniform int in [0, bound)) from a 32-bit uniform ``u``, for
    1 <= bound < 2**32: Lemire's multiply-shift with rejection (no bias); a
    rejection draws again from ``state``."""
    b = np.uint64(bound)
    prod = u * b
    low = prod & _LOW32
    if low < b:
        threshold = (np.uint64(4294967296) - b) % b
        while low < threshold:
            state = state + _GOLDEN
            prod = (_mix64(state) >> np.uint64(32)) * b
            low = prod & _LOW32
    return state, np.int64(prod >> np.uint64(32))


@njit(cache=True, nogil=True)
def _shuffle(v, m, state):
    """Fisher-Yates shuffle of v[:m] in place (two 32-bit draws per splitmix64 output)."""
    i = m - 1
    while i >= 1:
        state = state + _GOLDEN
        w = _mix64(state)
        state, j = _lemire(w >> np.uint64(32), i + 1, state)
        t = v[j]
        v[j] = v[i]
        v[i] = t
        i -= 1
        if i >= 1:
            state, j = _lemire(w & _LOW32, i + 1, state)
            t = v[j]
            v[j] = v[i]
            v[i] = t
            i -= 1
    return state


@njit(cache=True, nogil=True, error_model="numpy")
def _linear_count_enumerate(a, v, q, k_eff, m, aa, bb, thr):
    """Over all m! orders of v (Heap's algorithm, one swap per step with the sums
    updated in O(k)): how many give |r| >= thr. r = a.v / (|a| |(I - P) v|)."""
    d = 0.0
    for i in range(m):
        d += a[i] * v[i]
    e = np.zeros(max(k_eff, 1))
    for c in range(k_eff):
        s = 0.0
        for i in range(m):
            s += q[c, i] * v[i]
        e[c] = s
    thr2 = thr * thr
    total = 0
    # the first order (v as given)
    if thr <= 0.0:
        total += 1
    else:
        den = bb
        for c in range(k_eff):
            den -= e[c] * e[c]
        if d * d >= thr2 * aa * den:
            total += 1
    ctr = np.zeros(m, np.int64)
    i = 1
    while i < m:
        if ctr[i] < i:
            p = 0 if i % 2 == 0 else ctr[i]
            diff = v[i] - v[p]
            d += (a[p] - a[i]) * diff
            for c in range(k_eff):
                e[c] += (q[c, p] - q[c, i]) * diff
            t = v[p]
            v[p] = v[i]
            v[i] = t
            if thr <= 0.0:
                total += 1
            else:
                den = bb
                for c in range(k_eff):
                    den -= e[c] * e[c]
                if d * d >= thr2 * aa * den:
                    total += 1
            ctr[i] += 1
            i = 1
        else:
            ctr[i] = 0
            i += 1
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def _linear_count_sample(a, v, q, k_eff, m, aa, bb, thr, n_perm, state):
    """Over ``n_perm`` random orders of v: how many give |r| >= thr.

    Each order is a Fisher-Yates shuffle of v as left by the previous one (a
    uniform shuffle of any order is uniform), with a.v (and q_c.v) summed as the
    positions are fixed; this loop is the cost of the permutation p-values, so
    it takes two 32-bit draws per splitmix64 output and keeps two sums.
    """
    if k_eff == 0:
        # r = a.v / (|a| |b|): compare a.v with a fixed threshold
        lim = thr * np.sqrt(aa * bb)
        total = 0
        for _ in range(n_perm):
            d0 = 0.0
            d1 = 0.0
            i = m - 1
            while i >= 1:
                state = state + _GOLDEN
                w = _mix64(state)
                state, j = _lemire(w >> np.uint64(32), i + 1, state)
                t = v[j]
                v[j] = v[i]
                v[i] = t
                d0 += a[i] * t
                i -= 1
                if i >= 1:
                    state, j = _lemire(w & _LOW32, i + 1, state)
                    t = v[j]
                    v[j] = v[i]
                    v[i] = t
                    d1 += a[i] * t
                    i -= 1
            d = d0 + d1 + a[0] * v[0]
            if thr <= 0.0 or abs(d) >= lim:
                total += 1
        return total
    e = np.zeros(k_eff)
    thr2 = thr * thr
    total = 0
    for _ in range(n_perm):
        d = 0.0
        for c in range(k_eff):
            e[c] = 0.0
        i = m - 1
        while i >= 0:
            if i >= 1:
                state = state + _GOLDEN
                state, j = _lemire(_mix64(state) >> np.uint64(32), i + 1, state)
                t = v[j]
                v[j] = v[i]
                v[i] = t
            t = v[i]
            d += a[i] * t
            for c in range(k_eff):
                e[c] += q[c, i] * t
            i -= 1
        if thr <= 0.0:
            total += 1
        else:
            den = bb
            for c in range(k_eff):
                den -= e[c] * e[c]
            if d * d >= thr2 * aa * den:
                total += 1
    return total


@njit(cache=True, parallel=True, error_model="numpy")
def linear_permutation(x, y, z, valid, use_ranks, todo, n_perm, enumerate_max, seed, tol,
                       factorial, pvalue):
    """Two-sided permutation p-values of (partial) Pearson / Spearman per row.

    For the rows with ``todo`` set: the residuals a, b of x and y on [1, z]
    (of their average ranks when ``use_ranks``; with no controls simply the
    centred values) are formed as in ``partial_linear``, then b is permuted
    (Freedman & Lane 1983: the permuted residuals are projected off the controls
    again, so each permutation's r is a partial correlation too). The p-value
    counts the orders with |r_perm| >= |r_obs| - tol: over all m! orders when
    m <= ``enumerate_max`` (p = count / m!), else over ``n_perm`` random orders
    from the row's own stream (p = (1 + count) / (1 + n_perm)). Rows not in
    ``todo`` are left as they are.
    """
    rows, n = x.shape
    k = z.shape[1]
    for block in prange((rows + BLOCK - 1) // BLOCK):
        xs = np.empty(n)
        ys = np.empty(n)
        zs = np.empty((k, n))
        q = np.empty((max(k, 1), n))
        rank = np.empty(n)
        idx = np.empty(n, np.int64)
        tmp = np.empty(n, np.int64)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            if not todo[r]:
                continue
            m, k_eff, ok = _residualise(x, y, z, valid, r, use_ranks, xs, ys, zs, q, idx, tmp,
                                        rank)
            if not ok:
                pvalue[r] = np.nan
                continue
            sab = 0.0
            aa = 0.0
            bb = 0.0
            for i in range(m):
                sab += xs[i] * ys[i]
                aa += xs[i] * xs[i]
                bb += ys[i] * ys[i]
            r_obs = min(1.0, max(-1.0, sab / np.sqrt(aa * bb)))
            thr = abs(r_obs) - tol
            if m <= enumerate_max:
                hits = _linear_count_enumerate(xs, ys, q, k_eff, m, aa, bb, thr)
                pvalue[r] = min(1.0, hits / factorial[m])
            else:
                state = row_stream(seed, r)
                hits = _linear_count_sample(xs, ys, q, k_eff, m, aa, bb, thr, n_perm, state)
                pvalue[r] = (1.0 + hits) / (1.0 + n_perm)


@njit(cache=True, nogil=True)
def _sign(v):
    if v > 0:
        return 1
    if v < 0:
        return -1
    return 0


@njit(cache=True, nogil=True)
def _kendall_s(nxt, v, m):
    """S = concordant - discordant pairs for positions sorted by x, where ``nxt[p]`` is
    the first position of the next x value (pairs tied in x count 0) and ``v`` holds
    the y values in that order: S = sum_p sum_{q >= nxt[p]} sign(v_q - v_p). The
    inner loop is a plain compare-and-count over a contiguous range (vectorised)."""
    s = 0
    for p in range(m - 1):
        vp = v[p]
        acc = 0
        for q in range(nxt[p], m):
            w = v[q]
            acc += (w > vp) - (w < vp)
        s += acc
    return s


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (LLVM's ctpop: one instruction on x86-64 with POPCNT)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(cache=True, nogil=True)
def _kendall_s_bits(gmask, v, m, k, masks, above, below):
    """``_kendall_s`` for m <= 64 with bit masks: ``gmask[p]`` holds the positions of
    larger x than position p; per order, the positions of each y rank are OR-ed into
    masks of the positions with larger / smaller y, and S = sum_p popcount(gmask[p] &
    above[v_p]) - popcount(gmask[p] & below[v_p]): O(m + k) per order."""
    one = np.uint64(1)
    for c in range(k):
        masks[c] = np.uint64(0)
    for p in range(m):
        masks[v[p]] |= one << np.uint64(p)
    acc = np.uint64(0)
    for c in range(k):
        below[c] = acc
        acc |= masks[c]
    acc = np.uint64(0)
    for c in range(k - 1, -1, -1):
        above[c] = acc
        acc |= masks[c]
    s = 0
    for p in range(m - 1):
        gp = gmask[p]
        vp = v[p]
        s += np.int64(_popcount(gp & above[vp])) - np.int64(_popcount(gp & below[vp]))
    return s


@njit(cache=True, parallel=True, error_model="numpy")
def kendall_permutation(x, y, valid, todo, n_perm, enumerate_max, seed, factorial, pvalue):
    """Two-sided permutation p-values of Kendall's tau-b per row (for rows with ties).

    The tau-b denominator does not change when y is permuted, so the statistic
    is S = concordant - discordant pairs, an integer compared exactly:
    p = #{|S_perm| >= |S_obs|} over all m! orders when m <= ``enumerate_max``
    (Heap's algorithm, S updated in O(m) per swap), else (1 + #) / (1 + n_perm)
    over the row's own random orders (O(m^2) per order).
    """
    rows, n = x.shape
    for block in prange((rows + BLOCK - 1) // BLOCK):
        xs = np.empty(n)
        ys = np.empty(n)
        v = np.empty(n, np.int64)
        g = np.empty(n, np.int64)
        nxt = np.empty(n, np.int64)
        idx = np.empty(n, np.int64)
        tmp = np.empty(n, np.int64)
        ctr = np.empty(n, np.int64)
        gmask = np.empty(n, np.uint64)
        masks = np.empty(n, np.uint64)
        above = np.empty(n, np.uint64)
        below = np.empty(n, np.uint64)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            if not todo[r]:
                continue
            m = _gather(x, y, valid, r, xs, ys)
            # y as integer ranks (ties share one), in the order of x; g = x's group index
            argsort_pairs(ys, ys, m, idx, tmp)
            k = 0
            for i in range(m):
                if i > 0 and ys[idx[i]] != ys[idx[i - 1]]:
                    k += 1
                v[idx[i]] = k
            argsort_pairs(xs, xs, m, idx, tmp)
            for i in range(m):
                ctr[i] = v[idx[i]]
            k = 0
            for i in range(m):
                if i > 0 and xs[idx[i]] != xs[idx[i - 1]]:
                    k += 1
                g[i] = k
                v[i] = ctr[i]
            end = m
            for i in range(m - 1, -1, -1):
                if i < m - 1 and g[i] != g[i + 1]:
                    end = i + 1
                nxt[i] = end
            n_ranks = 0
            for i in range(m):
                n_ranks = max(n_ranks, v[i] + 1)
            if m <= 64:
                full = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - m)
                for i in range(m):
                    gmask[i] = full ^ ((np.uint64(1) << np.uint64(nxt[i])) - np.uint64(1)) \
                        if nxt[i] < 64 else np.uint64(0)
            s = _kendall_s(nxt, v, m)
            s_obs = abs(s)
            hits = 0
            if m <= enumerate_max:
                if abs(s) >= s_obs:
                    hits += 1
                for i in range(m):
                    ctr[i] = 0
                i = 1
                while i < m:
                    if ctr[i] < i:
                        p = 0 if i % 2 == 0 else ctr[i]
                        # swap v[p], v[i] (p < i): only pairs touching p or i change;
                        # sign(x_a - x_b) = sign(g_a - g_b)
                        vp = v[p]
                        vi = v[i]
                        delta = 0
                        for t in range(m):
                            if t != p and t != i:
                                delta += ((_sign(g[p] - g[t]) - _sign(g[i] - g[t]))
                                          * (_sign(vi - v[t]) - _sign(vp - v[t])))
                        delta += _sign(g[p] - g[i]) * (_sign(vi - vp) - _sign(vp - vi))
                        s += delta
                        v[p] = vi
                        v[i] = vp
                        if abs(s) >= s_obs:
                            hits += 1
                        ctr[i] += 1
                        i = 1
                    else:
                        ctr[i] = 0
                        i += 1
                pvalue[r] = min(1.0, hits / factorial[m])
            else:
                state = row_stream(seed, r)
                for _ in range(n_perm):
                    state = _shuffle(v, m, state)
                    if m <= 64:
                        s = _kendall_s_bits(gmask, v, m, n_ranks, masks, above, below)
                    else:
                        s = _kendall_s(nxt, v, m)
                    if abs(s) >= s_obs:
                        hits += 1
                pvalue[r] = (1.0 + hits) / (1.0 + n_perm)
