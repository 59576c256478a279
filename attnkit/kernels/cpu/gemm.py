"""Register-blocked float32 tile products for the attention kernels.

OpenBLAS reaches about half of the machine's FMA rate on attention's small
tiles (64 queries x 256 keys, d = 64): every call packs both operands and the
products are too small to amortise it. Here the key tiles are packed once per
call of a kernel (:func:`pack_keys_into`, into a buffer the caller may keep
between calls) or, where each key tile is read by few tasks, by each task just
before it reads the tile (:func:`pack_tile`), and micro-kernels written
directly in LLVM vector IR (:mod:`.vector_ir`) do the arithmetic:

* Each computes an ``MR x (NV * 16)`` block ``C = A @ B`` with the whole
  block held in ``MR * NV`` vector registers; each step of the reduction loads
  ``NV`` vectors of ``B``, broadcasts ``MR`` scalars of ``A`` and issues
  ``MR * NV`` fused multiply-adds. Rows past ``rows`` and columns past
  ``ncols`` are not written (masked stores), so ragged tiles need no copies.
* ``B`` is read with plain loads wherever all ``NV * 16`` columns are
  readable (packed keys are zero-padded; full value blocks): a masked load
  costs an extra vector-port operation next to the FMAs, and dropping them
  took the products from ~95 to ~120 GFLOP/s on the reference machine.
* Epilogues: :func:`block_mul` stores ``C``; :func:`block_mul_acc` computes
  ``C = beta[:, None] * C + A @ B`` (the value product of the online softmax);
  :func:`block_score_exp` stores ``exp(C - shift[:, None])`` and folds row
  maxima and sums, so the online softmax needs no separate pass over the
  scores (:func:`score_exp_tile`).

Each output element is a fixed sequence of FMAs (reduction index ascending),
so results do not depend on threads or on the machine's load. The
micro-kernels are float32 only; float64 tiles keep ``np.dot`` (BLAS), chosen
by the dtype at compile time (see :func:`score_tile`, :func:`score_exp_tile`
and :func:`accumulate_tile`).
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .vector_ir import LANES, VectorBuilder, is_f32_array, wide_vectors

#: Rows of A (queries) per micro-kernel call and vectors of 16 float32 lanes per row.
MR = 6
NV = 4
#: Columns per block (keys of a packed panel, or value columns).
NR = NV * LANES


def _product_args(vb, args, argtys, mr, nv, b_padded):
    """Pointers, strides and the register-blocked product shared by every block intrinsic.

    The first twelve arguments are always ``a, a_off, lda, b, b_off, ldb, c,
    c_off, ldc, kdim, rows, ncols``. With ``b_padded`` every row of B has
    ``16 nv`` readable columns (zero past ``ncols``), so B is read with plain
    loads. Returns ``(final, c_rows, masks, rows)``: the accumulators, a
    pointer to each row of C and the column masks.
    """
    b = vb.builder
    pa = vb.data(args, argtys, 0, vb.arg_i64(args, argtys, 1))
    pb = vb.data(args, argtys, 3, vb.arg_i64(args, argtys, 4))
    pc = vb.data(args, argtys, 6, vb.arg_i64(args, argtys, 7))
    lda, ldb, ldc = (vb.arg_i64(args, argtys, i) for i in (2, 5, 8))
    kdim, rows, ncols = (vb.arg_i64(args, argtys, i) for i in (9, 10, 11))
    masks = [vb.lanes_below(b.sub(ncols, vb.i64(v * LANES))) for v in range(nv)]
    final = vb.block_product(pa, lda, pb, ldb, kdim, rows, mr, nv, None if b_padded else masks,
                             f"block{mr}x{nv * LANES}")
    c_rows = [b.gep(pc, [b.mul(vb.i64(r), ldc)]) for r in range(mr)]
    return final, c_rows, masks, rows


def _make_block(mr, nv, scale_c, b_padded):
    """An intrinsic computing one ``mr x (16 nv)`` block; see the module docstring."""

    def typer(typingctx, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, kdim, rows, ncols,
              beta, beta_off):
        if not is_f32_array(a, b, c, beta):
            return None
        sig = types.void(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, kdim, rows, ncols,
                         beta, beta_off)

        def codegen(context, builder, signature, args):
            argtys = signature.args
            vb = VectorBuilder(context, builder)
            final, c_rows, masks, rows_ = _product_args(vb, args, argtys, mr, nv, b_padded)
            if scale_c:
                pbeta = vb.data(args, argtys, 12, vb.arg_i64(args, argtys, 13))
            for r in range(mr):
                with builder.if_then(builder.icmp_signed("<", vb.i64(r), rows_), likely=True):
                    if scale_c:
                        beta_r = vb.splat(builder.load(builder.gep(pbeta, [vb.i64(r)])))
                    for v in range(nv):
                        ptr = builder.gep(c_rows[r], [vb.i64(v * LANES)])
                        val = final[r * nv + v]
                        if scale_c:
                            val = vb.fma(vb.load(ptr, masks[v]), beta_r, val)
                        vb.store(val, ptr, masks[v])
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = f"block_{mr}x{nv * LANES}{'_acc' if scale_c else ''}{'_padded' if b_padded else ''}"
    return intrinsic(typer)


#: ``C[r, :ncols] = sum_k A[r, k] B[k, :ncols]`` for ``r < rows`` (element offsets, row
#: strides); every row of B must have NR readable columns (packed keys are zero-padded).
block_mul = _make_block(MR, NV, False, True)
#: ``C[r, :ncols] = beta[r] C[r, :ncols] + sum_k A[r, k] B[k, :ncols]``.
block_mul_acc = _make_block(MR, NV, True, False)
#: block_mul_acc for ``ncols == NR`` (plain loads of B).
block_mul_acc_full = _make_block(MR, NV, True, True)


def _packs(k):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_packs)
def _packs_impl(k):
    packs = k.dtype == types.float32
    return lambda k: packs


def packed_size(zk_count, m, d, block_k):
    """Elements of the packed keys of :func:`pack_keys_into` for ``(zk_count, m, d)`` keys."""
    return zk_count * -(-m // block_k) * -(-block_k // NR) * d * NR


@njit(cache=True, nogil=True)
def pack_tile(k, zk, k0, k1, out, oz, ot):
    """Keys ``[k0, k1)`` of problem ``zk`` into the panels ``out[oz, ot]`` (``(panels, d, NR)``).

    Panel ``p`` gets ``k[zk, k0 + p * NR + j, c]`` at ``[p, c, j]``; the lanes
    past ``k1 - k0`` in its last panel are zeroed (the micro-kernels read whole
    panels), later panels are left alone (never read). Full panels go by
    16 x 16 blocks, which keeps both the reads and the writes within a few
    cache lines (~0.2 ns a key entry on the reference machine, d = 64 or 128);
    a partial one is zeroed whole (one contiguous fill), then gets its keys (a
    tiny call's only panel, 16 keys x 64: ~0.4 us, against ~1.1 us lane by
    lane). Plain element indexing throughout: array views here cost reference
    counting, which doubled the time of full panels.
    """
    wide_vectors()
    d = k.shape[2]
    bk = k1 - k0
    for p in range((bk + NR - 1) // NR):
        j0 = k0 + p * NR
        cnt = min(NR, bk - p * NR)
        if cnt == NR and d % LANES == 0:
            for c0 in range(0, d, LANES):
                for l0 in range(0, NR, LANES):
                    for c in range(c0, c0 + LANES):
                        for lane in range(l0, l0 + LANES):
                            out[oz, ot, p, c, lane] = k[zk, j0 + lane, c]
        else:
            for c in range(d):
                for lane in range(NR):
                    out[oz, ot, p, c, lane] = 0.0
            for j in range(cnt):
                for c in range(d):
                    out[oz, ot, p, c, j] = k[zk, j0 + j, c]


@njit(parallel=True, cache=True, nogil=True)
def pack_keys_into(k, block_k, out):
    """Pack every key tile of ``k`` (``(Zk, m, d)`` float32) into ``out`` (see :func:`pack_keys`).

    ``out`` is ``(Zk, n_tiles, panels, d, NR)`` and may hold anything: each
    tile is written by :func:`pack_tile` (zeros past the keys in its last
    panel; panels past them are never read).
    """
    zk_count, m = k.shape[0], k.shape[1]
    n_tiles = (m + block_k - 1) // block_k
    for zt in prange(zk_count * n_tiles):
        z = zt // n_tiles
        k0 = (zt % n_tiles) * block_k
        pack_tile(k, z, k0, min(k0 + block_k, m), out, z, zt % n_tiles)


@njit(cache=True, nogil=True)
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
    pack_keys_into(k, block_k, out)
    return out


@njit(cache=True, nogil=True)
def _rows(x, z, start, stop):
    """Rows [start, stop) of problem z of a C-contiguous (Z, rows, cols) array, no copy."""
    cols = x.shape[2]
    flat = x.reshape(-1)
    base = z * x.shape[1] * cols
    return flat[base + start * cols: base + stop * cols].reshape(stop - start, cols)


def score_tile(qs, k, kp, zk, k0, k1, block_k, s, spans):  # pragma: no cover - replaced
    """``s = qs @ k[zk, k0:k1].T`` for a C-contiguous ``s`` of shape (rows, k1 - k0).

    ``k0`` must be a multiple of ``block_k`` and ``kp = pack_keys(k, block_k)``.
    ``spans`` is None (compute everything) or, for masked tiles, an int64
    array ``(ceil(rows / MR), 2)``: rows ``[MR b, MR b + MR)`` need only the
    key panels ``spans[b, 0] <= p < spans[b, 1]`` (``NR`` keys each; see
    :func:`.masking.block_spans`). Scores outside are left unwritten, for the
    mask to overwrite; float64 tiles ignore ``spans``.
    """
    raise NotImplementedError


def _is_none(value):
    return value is None or isinstance(value, (types.NoneType, types.Omitted))


@overload(score_tile, jit_options={"nogil": True})
def _score_tile(qs, k, kp, zk, k0, k1, block_k, s, spans):
    if qs.dtype == types.float32:
        dense = _is_none(spans)

        def fast(qs, k, kp, zk, k0, k1, block_k, s, spans):
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
                    if not dense and not spans[i0 // MR, 0] <= p < spans[i0 // MR, 1]:
                        continue
                    block_mul(qs, i0 * d, d, kp, base + p * panel_size, NR, s, i0 * bk + p * NR,
                              bk, d, min(MR, rows - i0), ncols, s, 0)

        return fast

    def blas(qs, k, kp, zk, k0, k1, block_k, s, spans):
        np.dot(qs, _rows(k, zk, k0, k1).T, s)

    return blas


def accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, spans):  # pragma: no cover - replaced
    """``acc[i] = alphas[i] * acc[i] + prob[i] @ v[zk, k0:k0 + bk]`` for every row i.

    ``prob`` is (rows, bk) and ``acc`` (>= rows, dv), both C-contiguous;
    ``pv_buf`` is scratch of at least rows * dv elements (used by BLAS only).
    ``spans`` as for :func:`score_tile`: ``prob`` must be 0 outside them.
    """
    raise NotImplementedError


@overload(accumulate_tile, jit_options={"nogil": True})
def _accumulate_tile(prob, v, zk, k0, acc, alphas, pv_buf, spans):
    if prob.dtype == types.float32:
        dense = _is_none(spans)

        def fast(prob, v, zk, k0, acc, alphas, pv_buf, spans):
            wide_vectors()
            rows, bk = prob.shape
            m = v.shape[1]
            dv = v.shape[2]
            for i0 in range(0, rows, MR):
                j0 = 0
                j1 = bk
                if not dense:  # keys outside the span have probability 0: skip them
                    j0 = min(spans[i0 // MR, 0] * NR, bk)
                    j1 = min(spans[i0 // MR, 1] * NR, bk)
                v_base = (zk * m + k0 + j0) * dv
                for c0 in range(0, dv, NR):
                    ncols = min(NR, dv - c0)
                    if ncols == NR:
                        block_mul_acc_full(prob, i0 * bk + j0, bk, v, v_base + c0, dv, acc,
                                           i0 * dv + c0, dv, j1 - j0, min(MR, rows - i0), ncols,
                                           alphas, i0)
                    else:
                        block_mul_acc(prob, i0 * bk + j0, bk, v, v_base + c0, dv, acc,
                                      i0 * dv + c0, dv, j1 - j0, min(MR, rows - i0), ncols,
                                      alphas, i0)

        return fast

    def blas(prob, v, zk, k0, acc, alphas, pv_buf, spans):
        rows, bk = prob.shape
        dv = v.shape[2]
        pv = pv_buf[: rows * dv].reshape(rows, dv)
        np.dot(prob, _rows(v, zk, k0, k0 + bk), pv)
        for i in range(rows):
            a = alphas[i]
            for c in range(dv):
                acc[i, c] = acc[i, c] * a + pv[i, c]

    return blas


def _make_score_exp(full):
    """An intrinsic for one ``MR x NR`` block of exponentiated scores (see block_score_exp)."""

    def typer(typingctx, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, kdim, rows, ncols,
              shift, shift_off, red, red_off, first):
        if not is_f32_array(a, b, c, shift, red):
            return None
        sig = types.void(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, kdim, rows, ncols,
                         shift, shift_off, red, red_off, first)

        def codegen(context, builder, signature, args):
            argtys = signature.args
            vb = VectorBuilder(context, builder)
            final, c_rows, masks, rows_ = _product_args(vb, args, argtys, MR, NV, True)
            pshift = vb.data(args, argtys, 12, vb.arg_i64(args, argtys, 13))
            pred = vb.data(args, argtys, 14, vb.arg_i64(args, argtys, 15))
            first = builder.icmp_signed("!=", vb.arg_i64(args, argtys, 16), vb.i64(0))
            for r in range(MR):
                with builder.if_then(builder.icmp_signed("<", vb.i64(r), rows_), likely=True):
                    sh = vb.splat(builder.load(builder.gep(pshift, [vb.i64(r)])))
                    p_max = builder.gep(pred, [vb.i64(2 * LANES * r)])
                    p_sum = builder.gep(pred, [vb.i64(2 * LANES * r + LANES)])
                    best = builder.select(first, vb.neg_inf, vb.load(p_max))
                    total = builder.select(first, vb.zero, vb.load(p_sum))
                    for v in range(NV):
                        s = final[r * NV + v]
                        e = vb.exp(builder.fsub(s, sh), exact_zero=False)
                        if not full:  # padded keys score 0: keep them out of max and sum
                            s = builder.select(masks[v], s, vb.neg_inf)
                            e = builder.select(masks[v], e, vb.zero)
                        best = vb.max(s, best)
                        total = builder.fadd(total, e)
                        vb.store(e, builder.gep(c_rows[r], [vb.i64(v * LANES)]),
                                 None if full else masks[v])
                    vb.store(best, p_max)
                    vb.store(total, p_sum)
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = f"block_score_exp{'_full' if full else ''}"
    return intrinsic(typer)


#: ``C[r, j] = exp(S[r, j] - shift[shift_off + r])`` for the block ``S = A @ B`` (B packed
#: keys, ``r < rows``, ``j < ncols``), with the 16-lane partial maxima of ``S`` and partial
#: sums of ``C`` of row ``r`` folded into ``red[red_off + 32 r :][:16]`` and ``[16:32]``
#: (which a nonzero ``first`` starts afresh instead of reading).
#: ``S - shift`` must stay below 88 for ``C`` to be meaningful (the partial maxima tell
#: the caller whether it did); arguments below -86 give exp(-86), not 0.
block_score_exp = _make_score_exp(False)
#: block_score_exp for ``ncols == NR`` (no column masks).
block_score_exp_full = _make_score_exp(True)


@intrinsic
def fold_partials(typingctx, red, row, tmax, tsum):
    """``tmax[row]``, ``tsum[row]`` = largest and sum of the 16 partials of ``row`` in ``red``.

    ``red`` holds 32 floats per row as block_score_exp leaves them (partial
    maxima, then partial sums); both folds go by halving, a fixed order.
    """
    if not is_f32_array(red, tmax, tsum):
        return None

    def codegen(context, builder, signature, args):
        vb = VectorBuilder(context, builder)
        argtys = signature.args
        r = vb.arg_i64(args, argtys, 1)
        base = vb.data(args, argtys, 0, builder.mul(r, vb.i64(2 * LANES)))
        best = vb.hmax(vb.load(base))
        total = vb.hsum(vb.load(builder.gep(base, [vb.i64(LANES)])))
        builder.store(best, vb.data(args, argtys, 2, r))
        builder.store(total, vb.data(args, argtys, 3, r))
        return context.get_dummy_value()

    return types.void(red, row, tmax, tsum), codegen


def score_exp_tile(qs, k, kp, zk, k0, k1, block_k, shift, p, red, tmax, tsum):  # pragma: no cover
    """Scores of a tile, exponentiated against a per-row shift, in one pass.

    ``p[i, j] = exp(s[i, j] - shift[i])`` for ``s = qs @ k[zk, k0:k1].T`` and
    a C-contiguous ``p`` of shape (rows, k1 - k0); ``tmax[i]`` is the largest
    ``s[i, :]`` (NaN entries are skipped) and ``tsum[i]`` the sum of
    ``p[i, :]``. ``red`` is scratch of at least ``32 * rows`` elements. The
    result is meaningful only where ``tmax[i] - shift[i] < 88``; callers
    check that and fall back to :func:`score_tile` otherwise.
    """
    raise NotImplementedError


@overload(score_exp_tile, jit_options={"nogil": True})
def _score_exp_tile(qs, k, kp, zk, k0, k1, block_k, shift, p, red, tmax, tsum):
    if qs.dtype == types.float32:

        def fast(qs, k, kp, zk, k0, k1, block_k, shift, p, red, tmax, tsum):
            wide_vectors()
            rows, d = qs.shape
            bk = k1 - k0
            base = (zk * kp.shape[1] + k0 // block_k) * kp.shape[2] * d * NR
            for panel in range((bk + NR - 1) // NR):
                ncols = min(NR, bk - panel * NR)
                first = panel == 0
                for i0 in range(0, rows, MR):
                    if ncols == NR:
                        block_score_exp_full(qs, i0 * d, d, kp, base + panel * d * NR, NR, p,
                                             i0 * bk + panel * NR, bk, d, min(MR, rows - i0),
                                             ncols, shift, i0, red, 2 * LANES * i0, first)
                    else:
                        block_score_exp(qs, i0 * d, d, kp, base + panel * d * NR, NR, p,
                                        i0 * bk + panel * NR, bk, d, min(MR, rows - i0), ncols,
                                        shift, i0, red, 2 * LANES * i0, first)
            for i in range(rows):
                fold_partials(red, i, tmax, tsum)

        return fast

    def generic(qs, k, kp, zk, k0, k1, block_k, shift, p, red, tmax, tsum):
        score_tile(qs, k, kp, zk, k0, k1, block_k, p, None)
        for i in range(p.shape[0]):
            best = -np.inf
            total = 0.0
            for j in range(p.shape[1]):
                s = p[i, j]
                best = s if s > best else best
                e = np.exp(s - shift[i])
                p[i, j] = e
                total += e
            tmax[i] = best
            tsum[i] = total

    return generic
