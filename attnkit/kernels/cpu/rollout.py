"""Rollout kernels: head fusion, residual augmentation, layer products.

No validation happens here (see :mod:`attnkit.rollout`). Conventions:

* ``attn`` is ``(S, L, H, n, n)`` float32 or float64; sample ``s`` is valid on
  ``[0, lengths[s])`` in both query and key. Arithmetic is float64.
* Outputs are float64 and preallocated by the caller. Rows and columns past a
  sample's length are NaN.
* ``fusion`` is 0 (mean), 1 (max) or 2 (min) over heads.

Work is split over samples with ``prange``; every output element is written
by one iteration, so results do not depend on the thread count.
"""

import numpy as np
from numba import njit, prange

FUSION_CODES = {"mean": 0, "max": 1, "min": 2}


@njit(cache=True, nogil=True)
def fuse_heads(heads, length, fusion, out):
    """Fuse ``heads`` (H, n, n) over the head axis into ``out[:length, :length]``.

    Head-outer loops keep every access contiguous (a row at a time).
    """
    n_heads = heads.shape[0]
    for i in range(length):
        dst = out[i, :length]
        src = heads[0, i, :length]
        for j in range(length):
            dst[j] = src[j]
        for h in range(1, n_heads):
            src = heads[h, i, :length]
            if fusion == 0:
                for j in range(length):
                    dst[j] += src[j]
            elif fusion == 1:
                for j in range(length):
                    dst[j] = max(dst[j], np.float64(src[j]))
            else:
                for j in range(length):
                    dst[j] = min(dst[j], np.float64(src[j]))
        if fusion == 0:
            for j in range(length):
                dst[j] /= n_heads


@njit(cache=True, nogil=True)
def discard_smallest(fused, length, ratio):
    """Zero the ``floor(ratio * length**2)`` smallest entries of ``fused[:length, :length]``.

    Ties keep their row-major order (stable sort), and entry (0, 0) is never
    discarded, as in vit-explain (its [CLS]-to-[CLS] weight).
    """
    count = int(np.floor(ratio * length * length))
    if count <= 0:
        return
    flat = np.empty(length * length)
    for i in range(length):
        for j in range(length):
            flat[i * length + j] = fused[i, j]
    order = np.argsort(flat, kind="mergesort")
    for t in range(count):
        idx = order[t]
        if idx != 0:
            fused[idx // length, idx % length] = 0.0


@njit(cache=True, nogil=True)
def augment(fused, length, residual):
    """``residual * I + (1 - residual) * fused``, each row divided by its own sum.

    A row that sums to 0 (possible only with ``residual == 0``) stays 0.
    """
    for i in range(length):
        total = 0.0
        for j in range(length):
            x = (1.0 - residual) * fused[i, j]
            if i == j:
                x += residual
            fused[i, j] = x
            total += x
        if total > 0.0:
            for j in range(length):
                fused[i, j] /= total


@njit(cache=True, nogil=True)
def _augmented_layer(heads, length, fusion, residual, discard, out):
    fuse_heads(heads, length, fusion, out)
    discard_smallest(out, length, discard)
    augment(out, length, residual)


@njit(cache=True, parallel=True)
def augmented_layers(attn, lengths, fusion, residual, discard, out):
    """Write the augmented attention Ã of every (sample, layer) into out (S, L, n, n)."""
    n_samples, n_layers = attn.shape[0], attn.shape[1]
    for s in prange(n_samples):
        length = lengths[s]
        out[s] = np.nan
        for layer in range(n_layers):
            _augmented_layer(attn[s, layer], length, fusion, residual, discard, out[s, layer])


@njit(cache=True, nogil=True)
def _keep_prefix_row(result, s, layer, length, readout, rows):
    """Write ``readout[s] @ (product so far)`` into ``rows[s, layer]``.

    ``readout`` (S, n) weighs the output positions (a one-hot row picks one
    position exactly); ``rows`` is (S, L, n), NaN-filled by the kernel. An
    (S, 0, n) ``rows`` turns the copy off.
    """
    if rows.shape[1] > 0:
        rows[s, layer, :length] = np.dot(readout[s, :length], result)


@njit(cache=True, parallel=True)
def rollout(attn, lengths, fusion, residual, discard, start_layer, out, readout, rows):
    """Rollout ``Ã_L ... Ã_start`` of every sample into out (S, n, n).

    ``readout[s] @ Ã_l ... Ã_start`` of every partial product goes to
    ``rows[s, l]`` (see :func:`_keep_prefix_row`): all layers' scores of one
    read-out cost one pass instead of one rollout per layer.
    """
    n_samples, n_layers, n = attn.shape[0], attn.shape[1], attn.shape[3]
    for s in prange(n_samples):
        length = lengths[s]
        out[s] = np.nan
        rows[s] = np.nan
        if length == 0:
            continue
        layer_mat = np.empty((length, length))
        result = np.empty((length, length))
        for layer in range(start_layer, n_layers):
            _augmented_layer(attn[s, layer], length, fusion, residual, discard, layer_mat)
            if layer == start_layer:
                result[:, :] = layer_mat
            else:
                result = np.dot(layer_mat, result)
            _keep_prefix_row(result, s, layer, length, readout, rows)
        out[s, :length, :length] = result


@njit(cache=True, parallel=True)
def grad_rollout(attn, grad, lengths, start_layer, out, readout, rows):
    """Chefer et al. (2021): ``R <- R + mean_h(max(grad * attn, 0)) @ R`` from R = I.

    ``readout`` and ``rows`` keep each layer's read-out row as in :func:`rollout`.
    """
    n_samples, n_layers, n_heads = attn.shape[0], attn.shape[1], attn.shape[2]
    for s in prange(n_samples):
        length = lengths[s]
        out[s] = np.nan
        rows[s] = np.nan
        if length == 0:
            continue
        relevance = np.eye(length)
        cam = np.empty((length, length))
        for layer in range(start_layer, n_layers):
            cam[:, :] = 0.0
            for h in range(n_heads):
                for i in range(length):
                    for j in range(length):
                        x = np.float64(grad[s, layer, h, i, j]) * np.float64(attn[s, layer, h, i, j])
                        if x > 0.0:
                            cam[i, j] += x
            cam /= n_heads
            relevance = relevance + np.dot(cam, relevance)
            _keep_prefix_row(relevance, s, layer, length, readout, rows)
        out[s, :length, :length] = relevance


@njit(cache=True, nogil=True)
def _row_is_bad(row, length):
    """True if any of row[:length] is NaN, inf or negative (branch-free, vectorises)."""
    bad = False
    for j in range(length):
        x = row[j]
        bad |= not (x >= 0.0 and x < np.inf)
    return bad


@njit(cache=True, parallel=True)
def first_invalid(attn, lengths):
    """Per sample: flat index (in the valid block) of the first NaN/inf/negative weight, or -1."""
    n_samples, n_layers, n_heads = attn.shape[0], attn.shape[1], attn.shape[2]
    bad = np.full(n_samples, -1, dtype=np.int64)
    for s in prange(n_samples):
        length = lengths[s]
        for row_index in range(n_layers * n_heads * length):
            layer = row_index // (n_heads * length)
            h = (row_index // length) % n_heads
            i = row_index % length
            row = attn[s, layer, h, i]
            if _row_is_bad(row, length):
                for j in range(length):
                    x = row[j]
                    if not (x >= 0.0 and x < np.inf):
                        bad[s] = row_index * length + j
                        break
                break
    return bad
