"""Numba evaluation of mask programs built by :meth:`attnkit.masks.Mask.program`.

Two questions are answered from the same postfix program:

* ``mask_allows`` / ``mask_row``: may query ``qi`` attend to key ``kj`` (one
  pair, or a whole row of keys at once, which is what the kernels use)?
* ``tile_state``: for a tile of queries ``[q0, q1)`` x keys ``[k0, k1)``, is
  the mask EMPTY (nothing allowed), FULL (everything allowed) or PARTIAL?
  This uses three-valued (Kleene) logic: with EMPTY=0, PARTIAL=1, FULL=2,
  ``and`` is ``min``, ``or`` is ``max`` and ``not`` is ``2 - x``. The answer
  is conservative: PARTIAL is always safe, EMPTY and FULL must be exact.

An empty program (no ops) allows everything.
"""

import numpy as np
from numba import njit

# Opcodes: keep in sync with attnkit/masks.py.
OP_ALL = 0
OP_CAUSAL = 1
OP_LOCAL = 2
OP_STRIDED = 3
OP_GLOBAL = 4
OP_BLOCK = 5
OP_AND = 6
OP_OR = 7
OP_NOT = 8

EMPTY = 0
PARTIAL = 1
FULL = 2

_STACK = 16  # == attnkit.masks.MAX_STACK_DEPTH


@njit(cache=True, nogil=True)
def leaf_allows(op, a, b, c, d, aux, qi, kj):
    if op == OP_ALL:
        return True
    if op == OP_CAUSAL:
        return kj <= qi + a
    if op == OP_LOCAL:
        return abs(qi - kj) < a
    if op == OP_STRIDED:
        return (qi - kj) % a == 0
    if op == OP_GLOBAL:
        return (qi < c and aux[a + qi] != 0) or (kj < c and aux[a + kj] != 0)
    if op == OP_BLOCK:
        r = qi // a
        s = kj // a
        if r >= c or s >= d:
            return False
        return aux[b + r * d + s] != 0
    return False


@njit(cache=True, nogil=True)
def mask_allows(ops, aux, qi, kj):
    """Evaluate the mask program at one (query, key) pair (reference; kernels use mask_row)."""
    n_ops = ops.shape[0]
    if n_ops == 0:
        return True
    stack = np.empty(_STACK, dtype=np.bool_)
    top = 0
    for t in range(n_ops):
        op = ops[t, 0]
        if op == OP_AND:
            top -= 1
            stack[top - 1] = stack[top - 1] and stack[top]
        elif op == OP_OR:
            top -= 1
            stack[top - 1] = stack[top - 1] or stack[top]
        elif op == OP_NOT:
            stack[top - 1] = not stack[top - 1]
        else:
            stack[top] = leaf_allows(op, ops[t, 1], ops[t, 2], ops[t, 3], ops[t, 4], aux, qi, kj)
            top += 1
    return stack[0]


@njit(cache=True, nogil=True)
def _count(prefix_at, length, aux, lo, hi):
    """Number of global flags set in positions [lo, hi), clipped to the flag range."""
    if hi > length:
        hi = length
    if lo >= hi:
        return 0
    return aux[prefix_at + hi] - aux[prefix_at + lo]


@njit(cache=True, nogil=True)
def _leaf_state(op, a, b, c, d, aux, q0, q1, k0, k1):
    # Tiles are non-empty: q0 < q1 and k0 < k1; the last query is q1 - 1.
    if op == OP_ALL:
        return FULL
    if op == OP_CAUSAL:
        if k1 - 1 <= q0 + a:
            return FULL
        if k0 > q1 - 1 + a:
            return EMPTY
        return PARTIAL
    if op == OP_LOCAL:
        far = max(abs(q0 - (k1 - 1)), abs((q1 - 1) - k0))
        if far < a:
            return FULL
        if q1 - 1 < k0:
            near = k0 - (q1 - 1)
        elif k1 - 1 < q0:
            near = q0 - (k1 - 1)
        else:
            near = 0
        if near >= a:
            return EMPTY
        return PARTIAL
    if op == OP_STRIDED:
        if a == 1:
            return FULL
        if q1 - q0 == 1 and k1 - k0 == 1:
            return FULL if (q0 - k0) % a == 0 else EMPTY
        return PARTIAL
    if op == OP_GLOBAL:
        nq = _count(b, c, aux, q0, q1)
        nk = _count(b, c, aux, k0, k1)
        if nq == q1 - q0 or nk == k1 - k0:
            return FULL
        if nq == 0 and nk == 0:
            return EMPTY
        return PARTIAL
    if op == OP_BLOCK:
        any_on = False
        all_on = True
        for r in range(q0 // a, (q1 - 1) // a + 1):
            for s in range(k0 // a, (k1 - 1) // a + 1):
                on = r < c and s < d and aux[b + r * d + s] != 0
                any_on = any_on or on
                all_on = all_on and on
        if all_on:
            return FULL
        if not any_on:
            return EMPTY
        return PARTIAL
    return PARTIAL


@njit(cache=True, nogil=True)
def tile_state(ops, aux, q0, q1, k0, k1):
    """Classify the tile [q0, q1) x [k0, k1) as EMPTY, PARTIAL or FULL."""
    if ops.shape[0] == 0:
        return FULL
    return _tile_state(ops, aux, q0, q1, k0, k1, np.empty(_STACK, dtype=np.int64))


@njit(cache=True, nogil=True)
def _tile_state(ops, aux, q0, q1, k0, k1, stack):
    """tile_state with caller-provided scratch (``stack``: >= 16 int64)."""
    n_ops = ops.shape[0]
    if n_ops == 0:
        return FULL
    top = 0
    for t in range(n_ops):
        op = ops[t, 0]
        if op == OP_AND:
            top -= 1
            stack[top - 1] = min(stack[top - 1], stack[top])
        elif op == OP_OR:
            top -= 1
            stack[top - 1] = max(stack[top - 1], stack[top])
        elif op == OP_NOT:
            stack[top - 1] = 2 - stack[top - 1]
        else:
            stack[top] = _leaf_state(
                op, ops[t, 1], ops[t, 2], ops[t, 3], ops[t, 4], aux, q0, q1, k0, k1
            )
            top += 1
    return stack[0]


@njit(cache=True, nogil=True)
def block_spans(ops, aux, q0, rows, k0, k1, mr, nr, spans):
    """Which key panels each row block of a tile may need, for skipping masked products.

    The tile is queries ``[q0, q0 + rows)`` x keys ``[k0, k1)``, cut into
    blocks of ``mr`` rows and panels of ``nr`` keys. ``spans[b] = (lo, hi)``
    gets the panels ``lo <= p < hi`` outside which every pair of row block
    ``b`` is masked (``lo == hi`` when the whole block is); panels inside
    may still be masked in part.
    """
    stack = np.empty(_STACK, dtype=np.int64)
    n_panels = (k1 - k0 + nr - 1) // nr
    for blk in range((rows + mr - 1) // mr):
        r0 = q0 + blk * mr
        r1 = min(r0 + mr, q0 + rows)
        lo = n_panels
        hi = 0
        for p in range(n_panels):
            c0 = k0 + p * nr
            if _tile_state(ops, aux, r0, r1, c0, min(c0 + nr, k1), stack) != EMPTY:
                lo = min(lo, p)
                hi = p + 1
        spans[blk, 0] = min(lo, hi)
        spans[blk, 1] = hi


@njit(cache=True, nogil=True)
def is_band(ops):
    """True when the mask is an AND of causal/local terms: each row allows one interval."""
    for t in range(ops.shape[0]):
        op = ops[t, 0]
        if op != OP_ALL and op != OP_CAUSAL and op != OP_LOCAL and op != OP_AND:
            return False
    return True


@njit(cache=True, nogil=True)
def band_bounds(ops, qi):
    """Allowed keys ``[lo, hi)`` of row ``qi`` for a band mask (see :func:`is_band`)."""
    lo = -(1 << 62)
    hi = 1 << 62
    for t in range(ops.shape[0]):
        op = ops[t, 0]
        a = ops[t, 1]
        if op == OP_CAUSAL:
            hi = min(hi, qi + a + 1)
        elif op == OP_LOCAL:
            lo = max(lo, qi - a + 1)
            hi = min(hi, qi + a)
    return lo, hi


@njit(cache=True, nogil=True)
def _fill(row, lo, hi, n):
    """row[:n] = lo <= j < hi (bounds clipped to the row)."""
    lo = min(max(lo, 0), n)
    hi = min(max(hi, lo), n)
    row[:lo] = False
    row[lo:hi] = True
    row[hi:n] = False


@njit(cache=True, nogil=True)
def mask_row(ops, aux, qi, k0, n, stack):
    """Evaluate the mask for query ``qi`` against keys ``k0 .. k0 + n - 1`` at once.

    The postfix program runs on whole boolean rows (``stack`` is a
    ``(16, >= n)`` scratch array); the answer is left in ``stack[0, :n]``.
    Each leaf fills a row with simple loops, so this is far cheaper than
    :func:`mask_allows` per element.
    """
    top = 0
    for t in range(ops.shape[0]):
        op = ops[t, 0]
        a = ops[t, 1]
        b = ops[t, 2]
        c = ops[t, 3]
        d = ops[t, 4]
        if op == OP_AND:
            top -= 1
            for j in range(n):
                stack[top - 1, j] = stack[top - 1, j] and stack[top, j]
            continue
        if op == OP_OR:
            top -= 1
            for j in range(n):
                stack[top - 1, j] = stack[top - 1, j] or stack[top, j]
            continue
        if op == OP_NOT:
            for j in range(n):
                stack[top - 1, j] = not stack[top - 1, j]
            continue
        row = stack[top]
        top += 1
        if op == OP_ALL:
            _fill(row, 0, n, n)
        elif op == OP_CAUSAL:
            _fill(row, 0, qi + a + 1 - k0, n)
        elif op == OP_LOCAL:
            _fill(row, qi - a + 1 - k0, qi + a - k0, n)
        elif op == OP_STRIDED:
            for j in range(n):
                row[j] = (qi - (k0 + j)) % a == 0
        elif op == OP_GLOBAL:
            if qi < c and aux[a + qi] != 0:
                _fill(row, 0, n, n)
            else:
                for j in range(n):
                    kj = k0 + j
                    row[j] = kj < c and aux[a + kj] != 0
        elif op == OP_BLOCK:
            r = qi // a
            if r >= c:
                _fill(row, 0, 0, n)
            else:
                for j in range(n):
                    col = (k0 + j) // a
                    row[j] = col < d and aux[b + r * d + col] != 0
        else:
            _fill(row, 0, 0, n)


@njit(cache=True, nogil=True)
def mask_tile(s, ops, aux, q0, k0):
    """Set the disallowed entries of the score tile ``s`` (rows q0.., cols k0..) to -inf."""
    rows, cols = s.shape
    neg_inf = -np.inf
    if is_band(ops):
        for i in range(rows):
            lo, hi = band_bounds(ops, q0 + i)
            lo = min(max(lo - k0, 0), cols)
            hi = min(max(hi - k0, lo), cols)
            s[i, :lo] = neg_inf
            s[i, hi:] = neg_inf
        return
    stack = np.empty((_STACK, cols), dtype=np.bool_)
    for i in range(rows):
        mask_row(ops, aux, q0 + i, k0, cols, stack)
        for j in range(cols):
            if not stack[0, j]:
                s[i, j] = neg_inf
