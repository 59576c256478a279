"""Register-blocked float32 tile products for the attention kernels.

OpenBLAS reaches about half of the machine's FMA rate on attention's small
tiles (64 queries x 256 keys, d = 64): every call packs both operands and the
products are too small to amortise it. Here the key tiles are packed once per
call of a kernel (:func:`pack_keys`) and two micro-kernels, written directly in
LLVM vector IR, do the arithmetic:

* :func:`_block` computes an ``MR x (NV * 16)`` block ``C = A @ B`` (or
  ``C = beta[:, None] * C + A @ B``) with the whole block held in ``MR * NV``
  vector registers; each step of the reduction loads ``NV`` vectors of ``B``,
  broadcasts ``MR`` scalars of ``A`` and issues ``MR * NV`` fused multiply-adds.
  Rows past ``rows`` and columns past ``ncols`` are neither read nor written
  (masked loads and stores), so ragged tiles need no padding or copies.
* The functions that use them carry the LLVM attributes
  ``"min-legal-vector-width"="512"`` and ``"prefer-vector-width"="512"`` (see
  :func:`wide_vectors`): LLVM's default tuning for AVX-512 cores splits
  512-bit vectors into two 256-bit halves, which halves the FMA rate on cores
  with two 512-bit FMA units.

Each output element is a fixed sequence of FMAs (reduction index ascending),
so results do not depend on threads or on the machine's load. The
micro-kernels are float32 only; float64 tiles keep ``np.dot`` (BLAS), chosen
by the dtype at compile time (see :func:`score_tile` and
:func:`accumulate_tile`).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

#: Rows of A (queries) per micro-kernel call and vectors of 16 float32 lanes per row.
MR = 6
NV = 4
#: Columns per block (keys of a packed panel, or value columns).
NR = NV * 16

_LANES = 16
_F32 = ir.FloatType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, _LANES)
_VPTR = ir.PointerType(_VEC)
_MASK = ir.VectorType(_I1, _LANES)
_WIDE_ATTRIBUTES = ('"min-legal-vector-width"="512"', '"prefer-vector-width"="512"')


def _widen(function):
    # llvmlite only accepts the enum attributes it knows; string attributes go
    # into the same set and are printed verbatim in the function header.
    for attribute in _WIDE_ATTRIBUTES:
        set.add(function.attributes, attribute)


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM use 512-bit vectors in the calling function (no code of its own)."""

    def codegen(context, builder, signature, args):
        _widen(builder.function)
        return context.get_dummy_value()

    return types.void(), codegen


def _declare(module, name, ret, args):
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ret, args), name)


def _make_block(mr, nv, scale_c):
    """An intrinsic computing one ``mr x (16 nv)`` block; see the module docstring."""
    name = f"block_{mr}x{nv * _LANES}{'_acc' if scale_c else ''}"

    def typer(typingctx, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, kdim, rows, ncols,
              beta, beta_off):
        for arr in (a, b, c, beta):
            if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
                return None
        sig = types.void(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, kdim, rows, ncols,
                         beta, beta_off)

        def codegen(context, builder, signature, args):
            argtys = signature.args
            _widen(builder.function)
            module = builder.module
            fma = _declare(module, "llvm.fma.v16f32", _VEC, [_VEC, _VEC, _VEC])
            mload = _declare(module, "llvm.masked.load.v16f32.p0", _VEC,
                             [_VPTR, _I32, _MASK, _VEC])
            mstore = _declare(module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                              [_VEC, _VPTR, _I32, _MASK])

            def as_i64(i):
                return context.cast(builder, args[i], argtys[i], types.int64)

            def base(i):
                data = context.make_array(argtys[i])(context, builder, args[i]).data
                return builder.gep(data, [as_i64(i + 1)])

            pa, pb, pc = base(0), base(3), base(6)
            lda_, ldb_, ldc_ = as_i64(2), as_i64(5), as_i64(8)
            kdim_, rows_, ncols_ = as_i64(9), as_i64(10), as_i64(11)
            const = lambda x: ir.Constant(_I64, x)  # noqa: E731
            align = ir.Constant(_I32, 4)
            zero = ir.Constant(_VEC, [0.0] * _LANES)
            undef = ir.Constant(_VEC, ir.Undefined)
            splat_idx = ir.Constant(ir.VectorType(_I32, _LANES), [0] * _LANES)

            def splat(x, undef_v):
                one = builder.insert_element(undef_v, x, ir.Constant(_I32, 0))
                return builder.shuffle_vector(one, undef_v, splat_idx)

            # Rows past `rows` read the last valid row (and are not stored).
            last = builder.sub(rows_, const(1))
            a_rows = []
            for r in range(mr):
                rr = builder.select(builder.icmp_signed("<", const(r), rows_), const(r), last)
                a_rows.append(builder.gep(pa, [builder.mul(rr, lda_)]))
            lane = ir.Constant(ir.VectorType(_I64, _LANES), list(range(_LANES)))
            undef_i = ir.Constant(ir.VectorType(_I64, _LANES), ir.Undefined)
            masks = [builder.icmp_signed("<", lane,
                                         splat(builder.sub(ncols_, const(v * _LANES)), undef_i))
                     for v in range(nv)]

            def vload(ptr, v):
                return builder.call(mload, [builder.bitcast(ptr, _VPTR), align, masks[v], zero])

            def vstore(val, ptr, v):
                builder.call(mstore, [val, builder.bitcast(ptr, _VPTR), align, masks[v]])

            entry = builder.block
            loop = builder.append_basic_block(name + ".loop")
            done = builder.append_basic_block(name + ".done")
            builder.cbranch(builder.icmp_signed(">", kdim_, const(0)), loop, done)

            builder.position_at_end(loop)
            kk = builder.phi(_I64)
            kk.add_incoming(const(0), entry)
            acc = []
            for _ in range(mr * nv):
                phi = builder.phi(_VEC)
                phi.add_incoming(zero, entry)
                acc.append(phi)
            b_row = builder.gep(pb, [builder.mul(kk, ldb_)])
            bvec = [vload(builder.gep(b_row, [const(v * _LANES)]), v) for v in range(nv)]
            new = []
            for r in range(mr):
                av = splat(builder.load(builder.gep(a_rows[r], [kk])), undef)
                for v in range(nv):
                    new.append(builder.call(fma, [av, bvec[v], acc[r * nv + v]]))
            kk_next = builder.add(kk, const(1))
            tail = builder.block
            kk.add_incoming(kk_next, tail)
            for phi, x in zip(acc, new):
                phi.add_incoming(x, tail)
            builder.cbranch(builder.icmp_signed("<", kk_next, kdim_), loop, done)

            builder.position_at_end(done)
            final = []
            for i in range(mr * nv):
                phi = builder.phi(_VEC)
                phi.add_incoming(zero, entry)
                phi.add_incoming(new[i], tail)
                final.append(phi)
            if scale_c:
                pbeta = base(12)
            for r in range(mr):
                with builder.if_then(builder.icmp_signed("<", const(r), rows_), likely=True):
                    c_row = builder.gep(pc, [builder.mul(const(r), ldc_)])
                    if scale_c:
                        beta_r = splat(builder.load(builder.gep(pbeta, [const(r)])), undef)
                    for v in range(nv):
                        ptr = builder.gep(c_row, [const(v * _LANES)])
                        val = final[r * nv + v]
                        if scale_c:
                            val = builder.call(fma, [vload(ptr, v), beta_r, val])
                        vstore(val, ptr, v)
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = name
    return intrinsic(typer)


#: ``C[r, :ncols] = sum_k A[r, k] B[k, :ncols]`` for ``r < rows`` (element offsets, row strides).
block_mul = _make_block(MR, NV, False)
#: ``C[r, :ncols] = beta[r] C[r, :ncols] + sum_k A[r, k] B[k, :ncols]``.
block_mul_acc = _make_block(MR, NV, True)


def _packs(k):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_packs)
def _packs_impl(k):
    packs = k.dtype == types.float32
    return lambda k: packs


@njit(parallel=True, cache=True, nogil=True)
def pack_keys(k, block_k):
    """Keys ``(Zk, m, d)`` packed for :func:`score_tile`.

    float32: ``(Zk, n_tiles, panels, d, NR)`` where panel ``p`` of key tile
    ``t`` holds ``k[z, t * block_k + p * NR + j, c]`` at ``[z, t, p, c, j]``
    (zero past the tile or the keys). float64: a dummy (BLAS reads ``k``).
    """
    zk_count, m, d = k.shape
    if not _packs(k):
        return np.zeros((1, 1, 1, 1, 1), dtype=k.dtype)
    n_tiles = (m + block_k - 1) // block_k
    ppt = (block_k + NR - 1) // NR
    out = np.zeros((zk_count, n_tiles, ppt, d, NR), dtype=k.dtype)
    for zt in prange(zk_count * n_tiles):
        z = zt // n_tiles
        t = zt % n_tiles
        k0 = t * block_k
        for j in range(min(k0 + block_k, m) - k0):
            p = j // NR
            lane = j % NR
            for c in range(d):
                out[z, t, p, c, lane] = k[z, k0 + j, c]
    return out


@njit(cache=True, nogil=True)
def _rows(x, z, start, stop):
    """Rows [start, stop) of problem z of a C-contiguous (Z, rows, cols) array, no copy."""
    cols = x.shape[2]
    flat = x.reshape(-1)
    base = z * x.shape[1] * cols
    return flat[base + start * cols: base + stop * cols].reshape(stop - start, cols)


def score_tile(qs, k, kp, zk, k0, k1, block_k, s):  # pragma: no cover - replaced
    """``s = qs @ k[zk, k0:k1].T`` for a C-contiguous ``s`` of shape (rows, k1 - k0).

    ``k0`` must be a multiple of ``block_k`` and ``kp = pack_keys(k, block_k)``.
    """
    raise NotImplementedError


@overload(score_tile, jit_options={"nogil": True})
def _score_tile(qs, k, kp, zk, k0, k1, block_k, s):
    if qs.dtype == types.float32:

        def fast(qs, k, kp, zk, k0, k1, block_k, s):
            wide_vectors()
            rows, d = qs.shape
            bk = k1 - k0
            t = k0 // block_k
            ppt = kp.shape[2]
            panel_size = d * NR
            base = (zk * kp.shape[1] + t) * ppt * panel_size
            for p in range((bk + NR - 1) // NR):
                ncols = min(NR, bk - p * NR)
                for i0 in range(0, rows, MR):
                    block_mul(qs, i0 * d, d, kp, base + p * panel_size, NR, s, i0 * bk + p * NR,
                              bk, d, min(MR, rows - i0), ncols, s, 0)

        return fast

    def blas(qs, k, kp, zk, k0, k1, block_k, s):
        np.dot(qs, _rows(k, zk, k0, k1).T, s)

    return blas


def accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf):  # pragma: no cover - replaced
    """``acc[i] = alphas[i] * acc[i] + prob[i] @ v[zk, k0:k0 + bk]`` for every row i.

    ``prob`` is (rows, bk) and ``acc`` (>= rows, dv), both C-contiguous;
    ``pv_buf`` is scratch of at least rows * dv elements (used by BLAS only).
    """
    raise NotImplementedError


@overload(accumulate_tile, jit_options={"nogil": True})
def _accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf):
    if prob.dtype == types.float32:

        def fast(prob, v, zk, k0, acc, alphas, pv_buf):
            wide_vectors()
            rows, bk = prob.shape
            m = v.shape[1]
            dv = v.shape[2]
            v_base = (zk * m + k0) * dv
            for c0 in range(0, dv, NR):
                ncols = min(NR, dv - c0)
                for i0 in range(0, rows, MR):
                    block_mul_acc(prob, i0 * bk, bk, v, v_base + c0, dv, acc, i0 * dv + c0, dv,
                                  bk, min(MR, rows - i0), ncols, alphas, i0)

        return fast

    def blas(prob, v, zk, k0, acc, alphas, pv_buf):
        rows, bk = prob.shape
        dv = v.shape[2]
        pv = pv_buf[: rows * dv].reshape(rows, dv)
        np.dot(prob, _rows(v, zk, k0, k0 + bk), pv)
        for i in range(rows):
            a = alphas[i]
            for c in range(dv):
                acc[i, c] = acc[i, c] * a + pv[i, c]

    return blas
