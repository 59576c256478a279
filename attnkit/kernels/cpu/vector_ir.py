"""Building blocks for CPU kernels written directly in 16-lane LLVM vector IR.

The pip builds of llvmlite have no SVML and LLVM's default tuning for AVX-512
cores splits 512-bit vectors in two, so the hot loops of the float32 attention
kernels (:mod:`.gemm`, :mod:`.rowops`) are emitted by hand as Numba
intrinsics. :class:`VectorBuilder` wraps an ``llvmlite`` IR builder with the
few operations they share: masked loads and stores, fused multiply-adds, the
vector exponential, horizontal reductions and the register-blocked matrix
product.

Every operation is a fixed sequence of instructions (no fast-math
reassociation), so results do not depend on threads or on the machine's load.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

LANES = 16
F32 = ir.FloatType()
I1 = ir.IntType(1)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
VEC = ir.VectorType(F32, LANES)
IVEC = ir.VectorType(I32, LANES)
VPTR = ir.PointerType(VEC)
MASK = ir.VectorType(I1, LANES)
_WIDE_ATTRIBUTES = ('"min-legal-vector-width"="512"', '"prefer-vector-width"="512"')

# exp(x) = 2**k * p(r): k = round(x / ln 2) by the 1.5 * 2**23 trick, r = x - k ln 2
# with a Cody-Waite split of ln 2 (exact FMAs), and p a degree-5 polynomial fitted to
# exp on |r| <= ln(2) / 2 for least maximum relative error (1.9e-7 evaluated in float32,
# against 2.1e-7 for the degree-6 Taylor polynomial it replaced).
_LOG2E = float(np.float32(1.4426950408889634))
_LN2_HI = float(np.float32(0.693145751953125))
_LN2_LO = float(np.float32(1.428606765330187e-06))
_MAGIC = 12582912.0  # 1.5 * 2**23: adding it rounds |x| < 2**22 to an integer (in the low bits)
_EXP_POLY = (0.008297654800117016, 0.04191538318991661, 0.16667574644088745,
             0.49998894333839417, 0.9999997019767761, 1.0000001192092896)  # r**5 ... r**0
#: Arguments below this give exactly 0 (exp(-86) ~ 4e-38 is near float32's smallest normal,
#: and 2**k stays normal, which the exponent-field addition needs).
EXP_FLOOR = -86.0


def widen(function):
    """Let LLVM use 512-bit vectors in ``function`` (an ``ir.Function``)."""
    # llvmlite only accepts the enum attributes it knows; string attributes go
    # into the same set and are printed verbatim in the function header.
    for attribute in _WIDE_ATTRIBUTES:
        set.add(function.attributes, attribute)


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM use 512-bit vectors in the calling function (no code of its own)."""

    def codegen(context, builder, signature, args):
        widen(builder.function)
        return context.get_dummy_value()

    return types.void(), codegen


def declare(module, name, ret, args):
    """The function ``name`` of ``module``, declared on first use."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ret, args), name)


def is_f32_array(*values):
    """True if every value is a Numba float32 array type."""
    return all(isinstance(a, types.Array) and a.dtype == types.float32 for a in values)


class VectorBuilder:
    """16-lane float32 operations on top of an ``llvmlite`` IR builder.

    Parameters
    ----------
    context, builder
        The Numba target context and IR builder an intrinsic's codegen receives.
        Creating one marks the function being built for 512-bit vectors.
    """

    def __init__(self, context, builder):
        self.context = context
        self.builder = builder
        module = builder.module
        widen(builder.function)
        self._fma = declare(module, "llvm.fma.v16f32", VEC, [VEC, VEC, VEC])
        self._mload = declare(module, "llvm.masked.load.v16f32.p0", VEC, [VPTR, I32, MASK, VEC])
        self._mstore = declare(module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                               [VEC, VPTR, I32, MASK])
        self.zero = self.constant(0.0)
        self.neg_inf = self.constant(float("-inf"))

    # -- scalars and pointers --------------------------------------------------
    @staticmethod
    def i64(x):
        return ir.Constant(I64, x)

    def arg_i64(self, args, argtys, i):
        """Argument ``i`` of an intrinsic as an i64 value."""
        return self.context.cast(self.builder, args[i], argtys[i], types.int64)

    def data(self, args, argtys, i, offset=None):
        """Pointer to element ``offset`` (an i64 value) of the array argument ``i``."""
        ptr = self.context.make_array(argtys[i])(self.context, self.builder, args[i]).data
        return ptr if offset is None else self.builder.gep(ptr, [offset])

    def length(self, args, argtys, i):
        """Length of the 1-d array argument ``i`` (i64)."""
        arr = self.context.make_array(argtys[i])(self.context, self.builder, args[i])
        return self.builder.extract_value(arr.shape, 0)

    # -- vectors ------------------------------------------------------------------
    @staticmethod
    def constant(x):
        return ir.Constant(VEC, [x] * LANES)

    def splat(self, scalar):
        """A vector with ``scalar`` (a float32 value) in every lane."""
        undef = ir.Constant(VEC, ir.Undefined)
        one = self.builder.insert_element(undef, scalar, ir.Constant(I32, 0))
        return self.builder.shuffle_vector(one, undef, ir.Constant(IVEC, [0] * LANES))

    def lanes_below(self, count):
        """Mask of the lanes ``j < count`` (``count`` an i64 value; <= 0 gives none)."""
        vty = ir.VectorType(I64, LANES)
        undef = ir.Constant(vty, ir.Undefined)
        one = self.builder.insert_element(undef, count, ir.Constant(I32, 0))
        spl = self.builder.shuffle_vector(one, undef, ir.Constant(IVEC, [0] * LANES))
        return self.builder.icmp_signed("<", ir.Constant(vty, list(range(LANES))), spl)

    def load(self, ptr, mask=None, fill=None):
        """16 floats at ``ptr`` (float*); masked-off lanes read nothing and give ``fill``."""
        vptr = self.builder.bitcast(ptr, VPTR)
        if mask is None:
            value = self.builder.load(vptr)
            value.align = 4
            return value
        fill = self.zero if fill is None else fill
        return self.builder.call(self._mload, [vptr, ir.Constant(I32, 4), mask, fill])

    def store(self, value, ptr, mask=None):
        """Store 16 floats at ``ptr``; masked-off lanes are not written."""
        vptr = self.builder.bitcast(ptr, VPTR)
        if mask is None:
            self.builder.store(value, vptr).align = 4
        else:
            self.builder.call(self._mstore, [value, vptr, ir.Constant(I32, 4), mask])

    def fma(self, a, b, c):
        return self.builder.call(self._fma, [a, b, c])

    def max(self, a, b):
        """``a > b ? a : b`` per lane (a NaN in ``a`` is not taken)."""
        return self.builder.select(self.builder.fcmp_ordered(">", a, b), a, b)

    def exp(self, x, exact_zero=True):
        """``exp(x)`` per lane: relative error <= 2e-7 (about 1.5 float32 ulp), NaN stays NaN.

        Arguments below :data:`EXP_FLOOR` (and -inf) give exactly 0, or with
        ``exact_zero=False`` ``exp(EXP_FLOOR)`` (two operations fewer; for
        finite scores where a 4e-38 instead of 0 cannot matter). Valid for
        ``x <= 88`` (larger arguments overflow float32 anyway and give garbage
        here: callers keep their arguments below it).
        """
        b = self.builder
        floor = self.constant(EXP_FLOOR)
        if exact_zero:
            low = b.fcmp_ordered("<", x, floor)
            xc = b.select(low, floor, x)
        else:
            xc = b.select(b.fcmp_unordered("uge", x, floor), x, floor)  # keeps NaN
        t = self.fma(xc, self.constant(_LOG2E), self.constant(_MAGIC))
        kf = b.fsub(t, self.constant(_MAGIC))
        r = self.fma(kf, self.constant(-_LN2_HI), xc)
        r = self.fma(kf, self.constant(-_LN2_LO), r)
        poly = self.constant(_EXP_POLY[0])
        for c in _EXP_POLY[1:]:
            poly = self.fma(poly, r, self.constant(c))
        # 2**k * p by adding k to p's exponent field: the low bits of t hold k, so
        # t's bits shifted left by 23 are k << 23 (two's complement wraps for k < 0).
        k_bits = b.shl(b.bitcast(t, IVEC), ir.Constant(IVEC, [23] * LANES))
        e = b.bitcast(b.add(b.bitcast(poly, IVEC), k_bits), VEC)
        return b.select(low, self.zero, e) if exact_zero else e

    def _fold(self, value, combine):
        width = LANES
        undef = ir.Constant(VEC, ir.Undefined)
        while width > 1:
            width //= 2
            moved = self.builder.shuffle_vector(
                value, undef, ir.Constant(IVEC, [(t + width) % LANES for t in range(LANES)]))
            value = combine(moved, value)
        return self.builder.extract_element(value, ir.Constant(I32, 0))

    def hsum(self, value):
        """Sum of the 16 lanes, by halving (a fixed order, so a fixed result)."""
        return self._fold(value, self.builder.fadd)

    def hmax(self, value):
        """Largest of the 16 lanes, by halving (NaN lanes are not taken)."""
        return self._fold(value, self.max)

    # -- the register-blocked product ----------------------------------------------
    def block_product(self, pa, lda, pb, ldb, kdim, rows, mr, nv, masks, name):
        """``acc[r][v] = sum_k A[r, k] B[k, 16 v : 16 v + 16]``, held in ``mr * nv`` registers.

        ``pa``/``pb`` point at ``A[0, 0]``/``B[0, 0]`` (row strides ``lda``,
        ``ldb``; i64 values). Rows of A past ``rows`` read the last valid row;
        columns of B outside ``masks[v]`` are not read (they give 0); with
        ``masks=None`` all ``16 nv`` columns are read (plain loads: a masked
        load costs an extra vector-port operation next to the FMAs). Returns the
        ``mr * nv`` accumulators, row-major; each is a fixed FMA sequence
        (``k`` ascending).
        """
        b = self.builder
        last = b.sub(rows, self.i64(1))
        a_rows = []
        for r in range(mr):
            rr = b.select(b.icmp_signed("<", self.i64(r), rows), self.i64(r), last)
            a_rows.append(b.gep(pa, [b.mul(rr, lda)]))
        entry = b.block
        loop = b.append_basic_block(name + ".loop")
        done = b.append_basic_block(name + ".done")
        b.cbranch(b.icmp_signed(">", kdim, self.i64(0)), loop, done)

        b.position_at_end(loop)
        kk = b.phi(I64)
        kk.add_incoming(self.i64(0), entry)
        acc = []
        for _ in range(mr * nv):
            phi = b.phi(VEC)
            phi.add_incoming(self.zero, entry)
            acc.append(phi)
        b_row = b.gep(pb, [b.mul(kk, ldb)])
        bvec = [self.load(b.gep(b_row, [self.i64(v * LANES)]), None if masks is None else masks[v])
                for v in range(nv)]
        new = []
        for r in range(mr):
            av = self.splat(b.load(b.gep(a_rows[r], [kk])))
            for v in range(nv):
                new.append(self.fma(av, bvec[v], acc[r * nv + v]))
        kk_next = b.add(kk, self.i64(1))
        tail = b.block
        kk.add_incoming(kk_next, tail)
        for phi, x in zip(acc, new):
            phi.add_incoming(x, tail)
        b.cbranch(b.icmp_signed("<", kk_next, kdim), loop, done)

        b.position_at_end(done)
        final = []
        for i in range(mr * nv):
            phi = b.phi(VEC)
            phi.add_incoming(self.zero, entry)
            phi.add_incoming(new[i], tail)
            final.append(phi)
        return final
