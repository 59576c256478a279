"""Row operations of the CPU attention kernels: max, shifted exp, sum.

The pip builds of llvmlite have no SVML, so ``np.exp`` in a Numba loop is a
scalar libm call (~10 ns each), and LLVM does not vectorise a NaN-propagating
max reduction written in Python. For contiguous float32 rows both are written
directly in 16-lane LLVM vector IR (Numba intrinsics):

* :func:`row_max`: ``x > m ? x : m`` lanes plus a separate NaN flag (~0.13 ns
  per element on the reference machine, against ~0.9 ns for the Python loop).
* :func:`exp_shifted`: ``exp(x) = 2**k * p(r)`` with ``k = round(x / ln 2)``
  (by the ``1.5 * 2**23`` rounding trick), ``r = x - k ln 2`` (Cody-Waite split
  of ln 2, exact FMAs, no fast-math reassociation) and a degree-6 Taylor
  polynomial on ``|r| <= ln(2) / 2``; relative error <= 2e-7, about one
  float32 ulp (~0.4 ns per element, against ~1.6 ns before). Arguments below
  -87 (including -inf) give exactly 0: ``exp(-87) ~ 1.6e-38`` is below
  float32's normal range and never matters next to a row maximum of 1. NaN
  gives NaN, so NaN inputs (``check_finite=False``) propagate.

Other rows (float64, or strided views) use plain loops with ``np.exp``:
float64 is chosen for accuracy, not speed. Every result is a fixed sequence
of operations, independent of threads.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import gemm
from .gemm import wide_vectors

# Only flags that keep inf semantics: -inf marks masked scores.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(1.428606765330187e-06)
_FLOOR = np.float32(-87.0)


def _contiguous_f32(*arrays):
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
               and a.dtype == types.float32 for a in arrays)


_MAGIC = 12582912.0  # 1.5 * 2**23: adding it rounds |x| < 2**22 to an integer (in the low bits)


@intrinsic
def _exp_row_f32(typingctx, src, shift, dst):
    """exp_shifted for contiguous float32 rows, written in 16-lane vector IR.

    Rounding by the 1.5 * 2**23 trick (``t = x log2(e) + M``: ``t - M`` is ``k`` and the low
    bits of ``t`` are ``k``, so ``2**k`` is ``(bits(t) << 23) + (127 << 23)``),
    explicit FMAs and no fast-math reassociation (the Cody-Waite split stays
    exact). NaN survives the clamp (``x < -87 ? -87 : x``) and every step after it.
    """
    if not _contiguous_f32(src, dst) or not isinstance(shift, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        sty, shty, dty = signature.args
        gemm._widen(builder.function)
        module = builder.module
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, 16)
        ivec = ir.VectorType(i32, 16)
        vptr = ir.PointerType(vec)
        mask_t = ir.VectorType(i1, 16)
        fma = gemm._declare(module, "llvm.fma.v16f32", vec, [vec, vec, vec])
        mload = gemm._declare(module, "llvm.masked.load.v16f32.p0", vec, [vptr, i32, mask_t, vec])
        mstore = gemm._declare(module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                               [vec, vptr, i32, mask_t])
        src_arr = context.make_array(sty)(context, builder, args[0])
        dst_arr = context.make_array(dty)(context, builder, args[2])
        n = builder.extract_value(src_arr.shape, 0)
        sh = context.cast(builder, args[1], shty, types.float32)

        def splat(x):
            return ir.Constant(vec, [x] * 16)

        undef = ir.Constant(vec, ir.Undefined)
        sh_v = builder.shuffle_vector(builder.insert_element(undef, sh, ir.Constant(i32, 0)),
                                      undef, ir.Constant(ivec, [0] * 16))
        zero = splat(0.0)
        floor_v = splat(float(_FLOOR))
        align = ir.Constant(i32, 4)

        def exp16(x_in, total):
            x = builder.fsub(x_in, sh_v)
            low = builder.fcmp_ordered("<", x, floor_v)
            xc = builder.select(low, floor_v, x)
            t = builder.call(fma, [xc, splat(float(_LOG2E)), splat(_MAGIC)])
            kf = builder.fsub(t, splat(_MAGIC))
            r = builder.call(fma, [kf, splat(-float(_LN2_HI)), xc])
            r = builder.call(fma, [kf, splat(-float(_LN2_LO)), r])
            poly = splat(float(np.float32(1.0 / 720.0)))
            for c in (1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
                poly = builder.call(fma, [poly, r, splat(float(np.float32(c)))])
            bits = builder.add(builder.shl(builder.bitcast(t, ivec), ir.Constant(ivec, [23] * 16)),
                               ir.Constant(ivec, [127 << 23] * 16))
            e = builder.fmul(poly, builder.bitcast(bits, vec))
            e = builder.select(low, zero, e)
            return e, builder.fadd(total, e)

        whole = builder.and_(n, ir.Constant(i64, -16))
        entry = builder.block
        loop = builder.append_basic_block("exprow.loop")
        after = builder.append_basic_block("exprow.after")
        builder.cbranch(builder.icmp_signed(">", whole, ir.Constant(i64, 0)), loop, after)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        total = builder.phi(vec)
        j.add_incoming(ir.Constant(i64, 0), entry)
        total.add_incoming(zero, entry)
        x_in = builder.load(builder.bitcast(builder.gep(src_arr.data, [j]), vptr))
        x_in.align = 4
        e, total_next = exp16(x_in, total)
        st = builder.store(e, builder.bitcast(builder.gep(dst_arr.data, [j]), vptr))
        st.align = 4
        j_next = builder.add(j, ir.Constant(i64, 16))
        loop_end = builder.block
        j.add_incoming(j_next, loop_end)
        total.add_incoming(total_next, loop_end)
        builder.cbranch(builder.icmp_signed("<", j_next, whole), loop, after)
        builder.position_at_end(after)
        acc = builder.phi(vec)
        acc.add_incoming(zero, entry)
        acc.add_incoming(total_next, loop_end)
        # Tail (fewer than 16 entries) with masked loads and stores.
        left = builder.sub(n, whole)
        before_tail = builder.block
        with builder.if_then(builder.icmp_signed(">", left, ir.Constant(i64, 0))):
            lane = ir.Constant(ir.VectorType(i64, 16), list(range(16)))
            undef_i = ir.Constant(ir.VectorType(i64, 16), ir.Undefined)
            left_v = builder.shuffle_vector(
                builder.insert_element(undef_i, left, ir.Constant(i32, 0)), undef_i,
                ir.Constant(ivec, [0] * 16))
            mask = builder.icmp_signed("<", lane, left_v)
            x_t = builder.call(mload, [builder.bitcast(builder.gep(src_arr.data, [whole]), vptr),
                                       align, mask, zero])
            e_t, _ = exp16(x_t, acc)
            e_t = builder.select(mask, e_t, zero)
            builder.call(mstore, [e_t, builder.bitcast(builder.gep(dst_arr.data, [whole]), vptr),
                                  align, mask])
            with_tail = builder.fadd(acc, e_t)
            tail_end = builder.block
        final = builder.phi(vec)
        final.add_incoming(acc, before_tail)
        final.add_incoming(with_tail, tail_end)
        # Horizontal sum by halving: a fixed order, so a fixed result.
        width = 16
        while width > 1:
            width //= 2
            hi = builder.shuffle_vector(
                final, undef, ir.Constant(ivec, [(t + width) % 16 for t in range(16)]))
            final = builder.fadd(final, hi)
        return builder.fpext(builder.extract_element(final, ir.Constant(i32, 0)), ir.DoubleType())

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
        (aty,) = signature.args
        gemm._widen(builder.function)
        module = builder.module
        i1, i16, i32, i64 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64)
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, 16)
        mask_t = ir.VectorType(i1, 16)
        mload = gemm._declare(module, "llvm.masked.load.v16f32.p0", vec,
                              [ir.PointerType(vec), i32, mask_t, vec])
        arr = context.make_array(aty)(context, builder, args[0])
        data = arr.data
        n = builder.extract_value(arr.shape, 0)
        neg_inf = ir.Constant(vec, [float("-inf")] * 16)
        no_nan = ir.Constant(mask_t, [0] * 16)
        lane = ir.Constant(ir.VectorType(i64, 16), list(range(16)))
        undef_i = ir.Constant(ir.VectorType(i64, 16), ir.Undefined)
        zeros_i32 = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

        def load(j):
            left = builder.sub(n, j)
            spl = builder.shuffle_vector(
                builder.insert_element(undef_i, left, ir.Constant(i32, 0)), undef_i, zeros_i32)
            mask = builder.icmp_signed("<", lane, spl)
            ptr = builder.bitcast(builder.gep(data, [j]), ir.PointerType(vec))
            return builder.call(mload, [ptr, ir.Constant(i32, 4), mask, neg_inf])

        entry = builder.block
        loop = builder.append_basic_block("rowmax.loop")
        done = builder.append_basic_block("rowmax.done")
        builder.cbranch(builder.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        m0, m1, nan = builder.phi(vec), builder.phi(vec), builder.phi(mask_t)
        for phi, init in ((j, ir.Constant(i64, 0)), (m0, neg_inf), (m1, neg_inf), (nan, no_nan)):
            phi.add_incoming(init, entry)
        x0 = load(j)
        x1 = load(builder.add(j, ir.Constant(i64, 16)))
        m0n = builder.select(builder.fcmp_ordered(">", x0, m0), x0, m0)
        m1n = builder.select(builder.fcmp_ordered(">", x1, m1), x1, m1)
        nann = builder.or_(nan, builder.or_(builder.fcmp_unordered("uno", x0, x0),
                                            builder.fcmp_unordered("uno", x1, x1)))
        jn = builder.add(j, ir.Constant(i64, 32))
        both = builder.select(builder.fcmp_ordered(">", m1n, m0n), m1n, m0n)
        tail = builder.block
        for phi, val in ((j, jn), (m0, m0n), (m1, m1n), (nan, nann)):
            phi.add_incoming(val, tail)
        builder.cbranch(builder.icmp_signed("<", jn, n), loop, done)
        builder.position_at_end(done)
        mf, nanf = builder.phi(vec), builder.phi(mask_t)
        mf.add_incoming(neg_inf, entry)
        mf.add_incoming(both, tail)
        nanf.add_incoming(no_nan, entry)
        nanf.add_incoming(nann, tail)
        # Horizontal max by halving.
        width = 16
        cur = mf
        while width > 1:
            width //= 2
            hi = builder.shuffle_vector(
                cur, ir.Constant(vec, ir.Undefined),
                ir.Constant(ir.VectorType(i32, 16), [(t + width) % 16 for t in range(16)]))
            cur = builder.select(builder.fcmp_ordered(">", hi, cur), hi, cur)
        best = builder.extract_element(cur, ir.Constant(i32, 0))
        any_nan = builder.icmp_unsigned("!=", builder.bitcast(nanf, i16), ir.Constant(i16, 0))
        return builder.select(any_nan, ir.Constant(f32, float("nan")), best)

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
def add_row(dst, src):
    """``dst += src`` in place."""
    wide_vectors()
    for j in range(dst.shape[0]):
        dst[j] += src[j]
