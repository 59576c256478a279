"""Row operations of the CPU attention kernels: max, shifted exp, sum.

The pip builds of llvmlite have no SVML, so ``np.exp`` in a Numba loop is a
scalar libm call (~10 ns each), and LLVM does not vectorise a NaN-propagating
max reduction written in Python. For contiguous float32 rows both are written
directly in 16-lane LLVM vector IR (Numba intrinsics built with
:class:`.vector_ir.VectorBuilder`):

* :func:`row_max`: ``x > m ? x : m`` lanes plus a separate NaN flag (~0.13 ns
  per element on the reference machine, against ~0.9 ns for the Python loop).
* :func:`exp_shifted`: the vector exponential of :meth:`VectorBuilder.exp`
  (range reduction by ``ln 2`` with exact FMAs, a degree-5 minimax
  polynomial; relative error <= 2e-7, about 1.5 float32 ulp). Arguments
  below -86 (including -inf, i.e. masked scores) give exactly 0:
  ``exp(-86) ~ 4e-38`` is at float32's smallest normal and never matters next
  to a row maximum of 1. NaN gives NaN, so NaN inputs
  (``check_finite=False``) propagate.

Other rows (float64, or strided views) use plain loops with ``np.exp``:
float64 is chosen for accuracy, not speed. Every result is a fixed sequence
of operations, independent of threads.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .vector_ir import I64, LANES, VectorBuilder, wide_vectors

# Only flags that keep inf semantics: -inf marks masked scores.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


def _contiguous_f32(*arrays):
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
               and a.dtype == types.float32 for a in arrays)


@intrinsic
def _exp_row_f32(typingctx, src, shift, dst):
    """exp_shifted for contiguous float32 rows, 16 lanes at a time (see the module docstring)."""
    if not _contiguous_f32(src, dst) or not isinstance(shift, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        argtys = signature.args
        vb = VectorBuilder(context, builder)
        n = vb.length(args, argtys, 0)
        sh = vb.splat(context.cast(builder, args[1], argtys[1], types.float32))
        psrc, pdst = vb.data(args, argtys, 0), vb.data(args, argtys, 2)

        whole = builder.and_(n, vb.i64(-LANES))
        entry = builder.block
        loop = builder.append_basic_block("exprow.loop")
        after = builder.append_basic_block("exprow.after")
        builder.cbranch(builder.icmp_signed(">", whole, vb.i64(0)), loop, after)
        builder.position_at_end(loop)
        j = builder.phi(I64)
        total = builder.phi(vb.zero.type)
        j.add_incoming(vb.i64(0), entry)
        total.add_incoming(vb.zero, entry)
        e = vb.exp(builder.fsub(vb.load(builder.gep(psrc, [j])), sh))
        vb.store(e, builder.gep(pdst, [j]))
        total_next = builder.fadd(total, e)
        j_next = builder.add(j, vb.i64(LANES))
        loop_end = builder.block
        j.add_incoming(j_next, loop_end)
        total.add_incoming(total_next, loop_end)
        builder.cbranch(builder.icmp_signed("<", j_next, whole), loop, after)
        builder.position_at_end(after)
        acc = builder.phi(vb.zero.type)
        acc.add_incoming(vb.zero, entry)
        acc.add_incoming(total_next, loop_end)
        # Tail (fewer than 16 entries) with masked loads and stores.
        left = builder.sub(n, whole)
        before_tail = builder.block
        with builder.if_then(builder.icmp_signed(">", left, vb.i64(0))):
            mask = vb.lanes_below(left)
            e_t = vb.exp(builder.fsub(vb.load(builder.gep(psrc, [whole]), mask), sh))
            e_t = builder.select(mask, e_t, vb.zero)
            vb.store(e_t, builder.gep(pdst, [whole]), mask)
            with_tail = builder.fadd(acc, e_t)
            tail_end = builder.block
        final = builder.phi(vb.zero.type)
        final.add_incoming(acc, before_tail)
        final.add_incoming(with_tail, tail_end)
        return builder.fpext(vb.hsum(final), ir.DoubleType())

    return types.float64(src, shift, dst), codegen


def exp_shifted(src, shift, dst):  # pragma: no cover - replaced by the overload
    """``dst[j] = exp(src[j] - shift)`` for 1-d rows; returns ``sum(dst)`` (float64).

    ``dst`` must not overlap ``src``. For float32 rows the sum is accumulated
    in float32 (16 lanes, then halving), which is exact enough for the few
    hundred terms of a tile row.
    """
    raise NotImplementedError


@overload(exp_shifted, jit_options={"nogil": True})
def _exp_shifted(src, shift, dst):
    if _contiguous_f32(src, dst):
        return lambda src, shift, dst: _exp_row_f32(src, shift, dst)

    def exact(src, shift, dst):
        total = 0.0
        for j in range(src.shape[0]):
            e = np.exp(src[j] - shift)
            dst[j] = e
            total += e
        return total

    return exact


def row_max(row):  # pragma: no cover - replaced by the overload
    """Largest entry of a 1-d row: -inf for an all -inf row, NaN if any entry is NaN."""
    raise NotImplementedError


@intrinsic
def _row_max_f32(typingctx, row):
    """row_max of a contiguous float32 row, written in vector IR.

    LLVM cannot vectorise a NaN-propagating max reduction from Python code
    (it took ~1 ns per element, as long as the exp). Here: two 16-lane
    accumulators of ``x > m ? x : m`` (one vmaxps each), masked loads for
    the tail (padding -inf), and the NaN test kept apart as an OR of
    ``x != x``.
    """
    if not _contiguous_f32(row):
        return None

    def codegen(context, builder, signature, args):
        argtys = signature.args
        vb = VectorBuilder(context, builder)
        n = vb.length(args, argtys, 0)
        data = vb.data(args, argtys, 0)
        mask_t = ir.VectorType(ir.IntType(1), LANES)
        no_nan = ir.Constant(mask_t, [0] * LANES)

        def load(j):
            return vb.load(builder.gep(data, [j]), vb.lanes_below(builder.sub(n, j)), vb.neg_inf)

        entry = builder.block
        loop = builder.append_basic_block("rowmax.loop")
        done = builder.append_basic_block("rowmax.done")
        builder.cbranch(builder.icmp_signed(">", n, vb.i64(0)), loop, done)
        builder.position_at_end(loop)
        j = builder.phi(I64)
        m0, m1, nan = builder.phi(vb.zero.type), builder.phi(vb.zero.type), builder.phi(mask_t)
        for phi, init in ((j, vb.i64(0)), (m0, vb.neg_inf), (m1, vb.neg_inf), (nan, no_nan)):
            phi.add_incoming(init, entry)
        x0 = load(j)
        x1 = load(builder.add(j, vb.i64(LANES)))
        m0n, m1n = vb.max(x0, m0), vb.max(x1, m1)
        nann = builder.or_(nan, builder.or_(builder.fcmp_unordered("uno", x0, x0),
                                            builder.fcmp_unordered("uno", x1, x1)))
        jn = builder.add(j, vb.i64(2 * LANES))
        both = vb.max(m1n, m0n)
        tail = builder.block
        for phi, val in ((j, jn), (m0, m0n), (m1, m1n), (nan, nann)):
            phi.add_incoming(val, tail)
        builder.cbranch(builder.icmp_signed("<", jn, n), loop, done)
        builder.position_at_end(done)
        mf, nanf = builder.phi(vb.zero.type), builder.phi(mask_t)
        mf.add_incoming(vb.neg_inf, entry)
        mf.add_incoming(both, tail)
        nanf.add_incoming(no_nan, entry)
        nanf.add_incoming(nann, tail)
        best = vb.hmax(mf)
        any_nan = builder.icmp_unsigned("!=", builder.bitcast(nanf, ir.IntType(LANES)),
                                        ir.Constant(ir.IntType(LANES), 0))
        return builder.select(any_nan, ir.Constant(ir.FloatType(), float("nan")), best)

    return types.float32(row), codegen


@njit(cache=True, nogil=True, fastmath=FAST)
def _row_max_any(row):
    best = -np.inf
    for j in range(row.shape[0]):
        # NaN wins: (x != x) is true only for NaN.
        best = row[j] if (row[j] > best or row[j] != row[j]) else best
    return best


@overload(row_max, jit_options={"nogil": True})
def _row_max(row):
    if _contiguous_f32(row):
        return lambda row: _row_max_f32(row)
    return lambda row: _row_max_any(row)


@njit(cache=True, nogil=True, fastmath=FAST)
def entropy_distance_terms(prob, scores, lse, offset):
    """``(sum p (lse - s), sum p |offset - j|)`` over one tile row, in float64.

    With ``p = exp(s - lse)``, ``p (lse - s)`` is ``-p log p`` without a log;
    entries with ``p == 0`` are left out of it (a masked score is -inf, and
    ``0 * inf`` is NaN), while a NaN ``p`` still propagates. ``offset`` is
    the query's index minus the tile's first key, so ``|offset - j|`` is the
    query-key distance. Vectorised (FAST allows the reassociation), the lane
    order fixed by the code.
    """
    wide_vectors()
    ent = 0.0
    dist = 0.0
    for j in range(prob.shape[0]):
        p = np.float64(prob[j])
        term = p * (lse - np.float64(scores[j]))
        ent += term if p != 0.0 else 0.0
        dist += p * abs(np.float64(offset - j))
    return ent, dist


@njit(cache=True, nogil=True, fastmath=FAST)
def add_row(dst, src):
    """``dst += src`` in place."""
    wide_vectors()
    for j in range(dst.shape[0]):
        dst[j] += src[j]
