"""Mask programs (:meth:`attnkit.masks.Mask.program`) for the CUDA kernels.

The same opcodes and answers as :mod:`attnkit.kernels.cpu.masking`:

* :func:`tile_table` (host): the state of every ``block_q x block_k`` tile,
  EMPTY (skipped), FULL (no per-element test) or PARTIAL, computed with the
  CPU backend's own Kleene-logic ``tile_state``, so both backends skip the
  same tiles by construction. Kernels read one byte per tile instead of
  running the classifier (which also keeps their compile time down).
* :func:`allows` (device): may query ``qi`` attend to key ``kj``? The postfix
  program runs on a bit stack held in one integer register (the expression
  depth is at most ``attnkit.masks.MAX_STACK_DEPTH = 16``).
* :func:`band_bounds` (device): the allowed key interval of a row when the
  mask is an AND of causal/local terms (:func:`is_band`), the common case.

Device functions are inlined into the kernels at the Numba IR level
(``inline="always"``), which also lets ``cuda.compile_ptx`` build every
kernel without a GPU.
"""

import numpy as np
from numba import cuda, njit, prange

from ..cpu import masking as _cpu
from ..cpu.masking import (  # noqa: F401 - one set of opcodes and tile states for both backends
    EMPTY, FULL, OP_AND, OP_NOT, OP_OR, PARTIAL,
)
from ..cpu.masking import tile_state as _cpu_tile_state

#: Kernel variants by mask: no mask, band (causal/local ANDs), anything else.
MASK_NONE = 0
MASK_BAND = 1
MASK_GENERAL = 2

def is_band(ops) -> bool:
    """True when every op is all/causal/local/and: each row allows one key interval."""
    return bool(_cpu.is_band(np.ascontiguousarray(ops, dtype=np.int64)))


@njit(parallel=True, cache=True)
def _fill_tiles(ops, aux, n, m, block_q, block_k, out):
    n_qt, n_kt = out.shape
    for qt in prange(n_qt):
        q0 = qt * block_q
        q1 = min(q0 + block_q, n)
        for kt in range(n_kt):
            k0 = kt * block_k
            out[qt, kt] = _cpu_tile_state(ops, aux, q0, q1, k0, min(k0 + block_k, m))


def tile_table(ops, aux, n: int, m: int, block_q: int, block_k: int) -> np.ndarray:
    """int8 (ceil(n / block_q), ceil(m / block_k)): EMPTY, PARTIAL or FULL per tile.

    Tiles are classified over the whole ``n x m`` problem; padding (the
    lengths) is handled by the kernels' loop bounds and per-element checks,
    so a tile that is EMPTY only because of padding may be computed and
    then masked, never the reverse.
    """
    out = np.empty((max(-(-n // block_q), 1), max(-(-m // block_k), 1)), dtype=np.int8)
    if n and m and ops.shape[0]:
        _fill_tiles(ops, aux, n, m, block_q, block_k, out)
    else:
        out[:] = FULL
    return out


def mask_kind(ops) -> int:
    """MASK_NONE, MASK_BAND or MASK_GENERAL for a compiled program (host side)."""
    if ops.shape[0] == 0:
        return MASK_NONE
    return MASK_BAND if is_band(ops) else MASK_GENERAL


# The CPU backend's leaf test, compiled as a device function: one definition of each mask.
leaf_allows = cuda.jit(device=True, inline="always")(_cpu.leaf_allows.py_func)


@cuda.jit(device=True, inline="always")
def allows(ops, aux, qi, kj):
    """Evaluate the mask program at one (query, key) pair (a bit stack in one int)."""
    stack = 0
    for t in range(ops.shape[0]):
        op = ops[t, 0]
        if op == OP_AND or op == OP_OR:
            top = stack & 1
            stack >>= 1
            below = stack & 1
            both = (top & below) if op == OP_AND else (top | below)
            stack = (stack & ~1) | both
        elif op == OP_NOT:
            stack ^= 1
        else:
            bit = 1 if leaf_allows(op, ops[t, 1], ops[t, 2], ops[t, 3], ops[t, 4], aux, qi, kj) \
                else 0
            stack = (stack << 1) | bit
    return ops.shape[0] == 0 or (stack & 1) != 0


#: Allowed keys ``[lo, hi)`` of row ``qi`` for a band mask: the CPU backend's own function.
band_bounds = cuda.jit(device=True, inline="always")(_cpu.band_bounds.py_func)
