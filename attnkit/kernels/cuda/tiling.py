"""Thread-block tilings of the CUDA attention kernels and their shared-memory layouts.

A block of ``ty x tx`` threads owns ``block_q = ty * rq`` queries. Thread
``(y, x)`` computes the scores of queries ``y + ty * i`` (``i < rq``) against
keys ``x + tx * j`` (``j < rk``) of each ``block_k = tx * rk`` key tile, and
accumulates output dims ``vd * x + vd * tx * g + w`` (``w < vd``). Rows and
keys are strided across threads and dims contiguous, which keeps every
shared-memory access free of bank conflicts (see docs/gpu.md).

Shared memory (dynamic, one buffer in the accumulation dtype):

* ``Q``: ``block_q x dqp`` scaled queries, loaded once per block;
* ``KP``: the ``block_k x dkp`` key tile, overwritten by the
  ``block_q x pp`` probability tile once the scores are in registers;
* ``V``: the ``block_k x dvp`` value tile (forward only);
* ``RED``: ``block_q x tx`` partial row maxima / sums;
* 8-byte reduction slots for the statistics kernels (query_stats reuses Q
  and KP for them once the last tile is done).

Row strides are padded so that 16-byte vector loads of 4 consecutive
elements hit distinct bank groups (``dqp / 4`` and ``dkp / 4`` odd) and the
probability writes of one warp land in distinct banks (``pp = tx mod 32``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: Largest head dim (of q/k and of v) the CUDA kernels accept.
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class Tiling:
    """Threads ``ty x tx``; each thread owns ``rq`` queries x ``rk`` keys and ``vd``-wide dims."""

    ty: int
    tx: int
    rq: int
    rk: int
    vd: int = 0  # 0: chosen from the value dim by :func:`with_value_dim`

    def __post_init__(self) -> None:
        if self.tx not in (4, 8, 16, 32):
            raise ValueError(f"tiling tx must be 4, 8, 16 or 32, got {self.tx}")
        if min(self.ty, self.rq, self.rk) < 1 or self.ty * self.tx > 1024:
            raise ValueError(f"bad tiling {self}")
        if self.vd not in (0, 1, 2, 4):
            raise ValueError(f"tiling vd must be 1, 2 or 4, got {self.vd}")

    @property
    def threads(self) -> int:
        return self.ty * self.tx

    @property
    def block_q(self) -> int:
        return self.ty * self.rq

    @property
    def block_k(self) -> int:
        return self.tx * self.rk


def with_value_dim(tiling: Tiling, dv: int) -> Tiling:
    """Fix ``vd`` for value dim ``dv``: least padding, then the widest vector."""
    if tiling.vd:
        return tiling
    best = min((1, 2, 4), key=lambda vd: (_round_up(max(dv, 1), vd * tiling.tx), -vd))
    return replace(tiling, vd=best)


def _round_up(x: int, to: int) -> int:
    return -(-x // to) * to


def padded_dims(tiling: Tiling, d: int, dv: int) -> tuple[int, int]:
    """(dp, dvp): q/k dim padded to a multiple of 4, v dim to one of ``vd * tx``."""
    return _round_up(max(d, 1), 4), _round_up(max(dv, 1), tiling.vd * tiling.tx)


def _odd_quads(cols: int) -> int:
    """Row stride >= cols (a multiple of 4) whose number of 16-byte quads is odd."""
    return cols if (cols // 4) % 2 else cols + 4


def _prob_stride(block_k: int, tx: int) -> int:
    """Row stride >= block_k congruent to tx mod 32 (conflict-free probability writes)."""
    if tx >= 32:
        return block_k
    return block_k + (tx - block_k) % 32


@dataclass(frozen=True)
class Layout:
    """Offsets (in accumulation-dtype elements) of the shared-memory regions."""

    dqp: int
    dkp: int
    pp: int
    q: int
    kp: int
    v: int
    red: int
    slots: int  # offset of the 8-byte reduction slots, in 8-byte units
    nbytes: int


def layout(tiling: Tiling, dp: int, dvp: int, itemsize: int, kind: str,
           topk: bool = False, rows: int = 1) -> Layout:
    """Shared-memory layout of one kernel.

    ``kind`` is ``"forward"`` (``"lse"`` without values), ``"weights"``,
    ``"query_stats"`` (``topk`` adds the probability tile) or ``"received"``
    (with ``rows`` weight rows).
    """
    t = tiling
    bq, bk = t.block_q, t.block_k
    dqp, dkp, pp = _odd_quads(dp), _odd_quads(dp), _prob_stride(bk, t.tx)
    with_p = kind == "forward" or (kind == "query_stats" and topk)
    offset = 0

    def take(elems: int) -> int:
        nonlocal offset
        at = offset
        offset += _round_up(elems, 4)
        return at

    q_at = take(bq * dqp)
    kp_at = take(max(bk * dkp, bq * pp if with_p else 0))
    v_at = take(bk * dvp) if kind == "forward" else 0
    red_at = take(bq * t.tx) if kind in ("forward", "lse") else 0
    byte_end = offset * itemsize
    if kind == "query_stats":
        # The final reduction runs after the last tile's barrier, when Q and KP
        # are dead, so its slots reuse them from offset 0.
        return Layout(dqp, dkp, pp, q_at, kp_at, v_at, red_at, 0,
                      max(byte_end, 4 * bq * t.tx * 8))
    slot_bytes = rows * t.ty * bk * 8 if kind == "received" else 0
    slots = _round_up(byte_end, 16) // 8
    return Layout(dqp, dkp, pp, q_at, kp_at, v_at, red_at, slots, slots * 8 + slot_bytes)


# Candidate tilings for a GPU, best first, per padded head dim and accumulation
# width. The first whose layouts fit the device's shared memory wins; the
# common fallbacks fit in 48 KB. They were chosen by the FLOP/shared-load
# ratios in docs/gpu.md; re-tune with paper/benchmarks/gpu_attention.py --sweep.
_FALLBACK = [Tiling(8, 8, 2, 2), Tiling(4, 8, 2, 2), Tiling(4, 8, 2, 1), Tiling(4, 8, 1, 1),
             Tiling(2, 8, 1, 1)]
_GPU_TILINGS = {
    (64, 4): [Tiling(16, 16, 8, 4), Tiling(16, 16, 4, 4), Tiling(8, 16, 4, 4), Tiling(8, 8, 4, 4)],
    (128, 4): [Tiling(16, 16, 4, 4), Tiling(8, 16, 4, 4), Tiling(8, 16, 2, 2)],
    (256, 4): [Tiling(16, 16, 4, 4), Tiling(16, 16, 2, 2), Tiling(8, 16, 2, 2)],
    (64, 8): [Tiling(16, 16, 4, 4), Tiling(8, 16, 4, 4), Tiling(8, 8, 4, 4)],
    (128, 8): [Tiling(16, 16, 4, 4), Tiling(8, 16, 4, 2)],
    (256, 8): [Tiling(8, 16, 4, 2), Tiling(8, 16, 2, 2)],
}

#: Kernel kinds whose layouts must fit (query_stats with its top-k tile is the largest).
_KINDS = (("forward", False), ("lse", False), ("weights", False), ("received", False),
          ("query_stats", True))


def fits(t: Tiling, d: int, dv: int, itemsize: int, max_bytes: int) -> bool:
    """Whether every kernel's shared memory fits ``max_bytes`` with tiling ``t``."""
    dp, dvp = padded_dims(t, d, dv)
    return all(layout(t, dp, dvp, itemsize, kind, topk).nbytes <= max_bytes
               for kind, topk in _KINDS)


#: Small tiling for the simulator, which runs every thread as a Python thread.
SIMULATOR_TILING = Tiling(2, 4, 2, 2)


def choose(d: int, dv: int, acc, max_bytes: int, simulator: bool = False,
           override: Tiling | None = None) -> Tiling:
    """The tiling for head dims (d, dv) and accumulation dtype ``acc``.

    Head dims must be at most :data:`MAX_HEAD_DIM` (checked by the caller,
    :func:`attnkit._prepare.prepare`).
    """
    itemsize = np.dtype(acc).itemsize
    if override is not None or simulator:
        return with_value_dim(override or SIMULATOR_TILING, dv)
    width = 64 if max(d, dv, 1) <= 64 else 128 if max(d, dv) <= 128 else 256
    for cand in _GPU_TILINGS[(width, itemsize)] + _FALLBACK:
        t = with_value_dim(cand, dv)
        if fits(t, d, dv, itemsize, max_bytes):
            return t
    raise RuntimeError(  # pragma: no cover - every device has 48 KB; d <= MAX_HEAD_DIM fits
        f"no CUDA tiling fits head dims {(d, dv)} in {max_bytes} bytes of shared memory")
