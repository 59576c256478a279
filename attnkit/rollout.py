"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021).

Rollout treats each layer's attention as a Markov transition between token
positions, adds the residual connection, and multiplies the layers up:

.. math::

    \\tilde A_l = \\mathrm{rownorm}(r I + (1 - r)\\, \\mathrm{fuse}_h A_{l,h}), \\qquad
    R = \\tilde A_{L-1} \\cdots \\tilde A_{s}

Row ``i`` of ``R`` says how much each input position contributes to output
position ``i``. Copies of rollout in the wild often normalise by the wrong
axis (``a / a.sum(-1)`` broadcasting over columns); here each row is divided
by its own sum, so rows of the result sum to 1.

Every function takes NumPy arrays ``(..., layer, head, n, n)`` with optional
``lengths``, or an attention dataset / DataArray (chunked ones stay lazy).
"""

from __future__ import annotations

import numpy as np

from . import _backend, errors
from ._attn_input import apply_to_xarray, as_lengths, attention_stack, is_xarray
from ._prepare import prepare

__all__ = ["rollout", "rollout_rows", "grad_rollout", "augmented_attention"]


def fusion_code(head_fusion: str) -> int:
    """The kernels' code for a head fusion rule ("mean", "max" or "min"), or a clear error."""
    from .kernels.cpu.rollout import FUSION_CODES

    if head_fusion not in FUSION_CODES:
        raise errors.value_error("head_fusion", "'mean', 'max' or 'min'", repr(head_fusion),
                                 "pick one of those")
    return FUSION_CODES[head_fusion]


def _readout_buffers(stack, readout):
    """The kernels' ``readout`` (S, n) and ``rows`` output: (S, L, n), or (S, 0, n) for none."""
    s, n_layers = stack.data.shape[:2]
    if readout is None:
        return np.zeros((s, stack.n)), np.empty((s, 0, stack.n))
    weights = np.ascontiguousarray(np.broadcast_to(readout, (s, stack.n)), dtype=np.float64)
    return weights, np.empty((s, n_layers, stack.n))


def _rollout_numpy(attn, *, lengths, head_fusion, residual, discard_ratio, start_layer,
                   readout=None):
    """Rollout on the CPU; with ``readout`` weights, the (S, L, n) rows of :func:`prefix_rows`."""
    from .kernels.cpu import rollout as kernels
    from .kernels.cpu.threads import single_threaded_blas

    fusion = fusion_code(head_fusion)
    stack = attention_stack(attn, lengths)
    start = errors.layer_index("start_layer", start_layer, stack.data.shape[1])
    out = np.empty((stack.data.shape[0], stack.n, stack.n))
    weights, rows = _readout_buffers(stack, readout)
    with single_threaded_blas():
        kernels.rollout(stack.data, stack.lengths, fusion, residual, discard_ratio, start, out,
                        weights, rows)
    return stack.unflatten(out) if readout is None else rows


def _rollout_cuda(attn, *, lengths, head_fusion, residual, start_layer):
    """Rollout of stored attention on the GPU; device in, device out."""
    from .kernels.cuda import rollout as kernels
    from .kernels.cuda import runtime

    fusion = fusion_code(head_fusion)
    on_device = _backend.is_device_array(attn)
    data = runtime.as_device(attn) if on_device else np.asarray(attn)
    if data.dtype.name not in ("float16", "float32", "float64"):
        raise errors.dtype_error("attn", data.dtype, "cast it, e.g. attn.astype(np.float32)")
    shape = tuple(int(x) for x in data.shape)
    if len(shape) != 5 or shape[-1] != shape[-2]:
        raise errors.shape_error("attn", "(sample, layer, head, n, n) for backend='cuda'", shape,
                                 "add a sample axis, e.g. attn[None]")
    lens = as_lengths("lengths", lengths, shape[:1], shape[-1])
    start = errors.layer_index("start_layer", start_layer, shape[1])
    out = kernels.rollout(data if on_device else runtime.to_device(data), lens, fusion, residual,
                          start)
    return out if on_device else out.copy_to_host()


def prefix_rows(attn, readout, *, kind="rollout", grad=None, lengths=None, head_fusion="mean",
                residual=0.5):
    """The read-out row of the rollout through each layer, from one pass over the layers.

    ``out[:, l]`` equals ``readout @ rollout(attn[:, :l + 1], ...)`` (or
    ``grad_rollout``'s), without recomputing the shared prefix product for
    every ``l``: L layer products instead of L (L + 1) / 2.

    Parameters
    ----------
    attn : array (sample, layer, head, n, n)
    readout : array (sample, n) or (n,)
        Weights of the output positions (a one-hot row: that position's row);
        see :func:`attnkit.readout.readout_weights`.
    kind : {"rollout", "grad"}
    grad : array like ``attn``, for ``kind="grad"``
    lengths, head_fusion, residual
        As in :func:`rollout`.

    Returns
    -------
    numpy.ndarray (sample, layer, n)
        float64; NaN past each sample's length.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit.rollout import prefix_rows
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((2, 3, 2, 4, 4)); a /= a.sum(-1, keepdims=True)
    >>> rows = prefix_rows(a, np.full(4, 0.25))
    >>> bool(np.allclose(rows[:, 1], ak.rollout(a[:, :2]).mean(axis=1)))
    True
    """
    shape = np.shape(attn)
    if len(shape) != 5:
        raise errors.shape_error("attn", "(sample, layer, head, n, n)", shape,
                                 "add a sample axis, e.g. attn[None]")
    if kind not in ("rollout", "grad"):
        raise errors.value_error("kind", "'rollout' or 'grad'", repr(kind), "pick one of those")
    readout = np.asarray(readout, dtype=np.float64)
    if readout.shape not in ((shape[-1],), (shape[0], shape[-1])):
        raise errors.shape_error("readout", f"({shape[-1]},) or ({shape[0]}, {shape[-1]})",
                                 readout.shape, "pass one weight per output position")
    if kind == "grad":
        return _grad_rollout_numpy(attn, grad, lengths=lengths, start_layer=0, readout=readout)
    residual = errors.fraction("residual", residual)
    return _rollout_numpy(attn, lengths=lengths, head_fusion=head_fusion, residual=residual,
                          discard_ratio=0.0, start_layer=0, readout=readout)


def rollout(attn, *, head_fusion="mean", residual=0.5, discard_ratio=0.0, start_layer=0,
            lengths=None, backend="auto"):
    """Attention rollout: how much each input position feeds each output position.

    Parameters
    ----------
    attn : array (..., layer, head, n, n), xarray.Dataset or xarray.DataArray
        Attention weights, rows over keys. A Dataset supplies its ``attention``
        and ``length`` variables; chunked data is computed lazily (dask).
    head_fusion : {"mean", "max", "min"}
        How heads are combined in each layer (vit-explain's options).
    residual : float in [0, 1]
        Weight of the identity (the residual stream); 0.5 is Abnar & Zuidema's.
    discard_ratio : float in [0, 1)
        Fraction of the smallest fused weights of each layer set to 0 before
        the residual is added (vit-explain). Entry (0, 0) is always kept.
    start_layer : int
        First layer of the product (negative counts from the end).
    lengths : int or array of ints, optional
        Valid tokens per sample; the rest is padding (NaN in the result).
    backend : {"auto", "cpu", "cuda"}
        "auto" uses the GPU for device arrays and the CPU otherwise.

    Returns
    -------
    numpy.ndarray (..., query, key), or xarray.DataArray with dims (..., query, key)
        Rows sum to 1 inside each sample's length; float64.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((2, 4, 3, 5, 5)); a /= a.sum(-1, keepdims=True)
    >>> r = ak.rollout(a)
    >>> r.shape, bool(np.allclose(r.sum(-1), 1))
    ((2, 5, 5), True)

    One layer with ``residual=0`` is the head-averaged attention itself:

    >>> bool(np.allclose(ak.rollout(a[:, :1], residual=0), a[:, 0].mean(1)))
    True
    """
    residual = errors.fraction("residual", residual)
    discard_ratio = errors.fraction("discard_ratio", discard_ratio, upper_open=True)
    kwargs = dict(head_fusion=head_fusion, residual=residual, discard_ratio=discard_ratio,
                  start_layer=start_layer)
    if is_xarray(attn):  # labelled (possibly dask) data runs on the CPU kernels
        _backend.choose(backend, cuda_supported=False, what="rollout of an xarray dataset")
        fusion_code(head_fusion)
        out = apply_to_xarray(lambda a, lengths: _rollout_numpy(a, lengths=lengths, **kwargs),
                              attn, lengths=lengths)
        return out.rename("rollout")
    if _backend.choose(backend, attn=attn, cuda_supported=not discard_ratio,
                       what="rollout with discard_ratio > 0") == "cuda":
        return _rollout_cuda(attn, lengths=lengths, head_fusion=head_fusion, residual=residual,
                             start_layer=start_layer)
    return _rollout_numpy(attn, lengths=lengths, **kwargs)


def augmented_attention(attn, *, head_fusion="mean", residual=0.5, discard_ratio=0.0,
                        lengths=None):
    """Per-layer augmented attention Ã (the factors of rollout and the capacities of flow).

    Parameters
    ----------
    attn : array (..., layer, head, n, n)
    head_fusion, residual, discard_ratio, lengths
        As in :func:`rollout`.

    Returns
    -------
    numpy.ndarray (..., layer, query, key)
        float64, rows summing to 1 inside each sample's length, NaN outside.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> a = np.full((2, 1, 3, 3), 1 / 3)
    >>> ak.augmented_attention(a, residual=0.5)[0].round(3).tolist()[0]
    [0.667, 0.167, 0.167]
    """
    from .kernels.cpu import rollout as kernels

    fusion = fusion_code(head_fusion)
    residual = errors.fraction("residual", residual)
    discard_ratio = errors.fraction("discard_ratio", discard_ratio, upper_open=True)
    stack = attention_stack(attn, lengths)
    s, n_layers, _, n, _ = stack.data.shape
    out = np.empty((s, n_layers, n, n))
    kernels.augmented_layers(stack.data, stack.lengths, fusion, residual, discard_ratio, out)
    return stack.unflatten(out)


def _grad_rollout_numpy(attn, grad, *, lengths, start_layer, readout=None):
    from .kernels.cpu import rollout as kernels
    from .kernels.cpu.threads import single_threaded_blas

    stack = attention_stack(attn, lengths)
    g = np.asarray(grad)
    if g.shape != tuple(np.shape(attn)):
        raise errors.shape_error("grad", f"{tuple(np.shape(attn))} (the shape of attn)", g.shape,
                                 "save one gradient per attention weight (same layers and heads)")
    if g.dtype.kind != "f":
        raise errors.dtype_error("grad", g.dtype, "cast it, e.g. grad.astype(np.float64)")
    g = np.ascontiguousarray(g.reshape(stack.data.shape), dtype=stack.data.dtype)
    start = errors.layer_index("start_layer", start_layer, stack.data.shape[1])
    out = np.empty((stack.data.shape[0], stack.n, stack.n))
    weights, rows = _readout_buffers(stack, readout)
    with single_threaded_blas():
        kernels.grad_rollout(stack.data, g, stack.lengths, start, out, weights, rows)
    return stack.unflatten(out) if readout is None else rows


def _read_out(full, target, lengths, readout_attr):
    """``w @ full`` over the query axis: the read-out row of (..., query, key) relevance."""
    from .readout import readout_weights

    if is_xarray(full):
        import xarray as xr

        n = full.sizes["key"]
        lens = np.broadcast_to(np.asarray(lengths if lengths is not None else n),
                               full.shape[:-2]).reshape(-1)
        r = readout_weights(target, lens, n, readout=readout_attr)
        w = xr.DataArray(np.where(r.defined[:, None], r.weights, np.nan)
                         .reshape(full.shape[:-2] + (n,)), dims=full.dims[:-2] + ("query",))
        out = xr.dot(w, full.fillna(0.0), dim="query")
        valid = xr.DataArray(np.arange(n), dims="key") < xr.DataArray(
            lens.reshape(full.shape[:-2]), dims=full.dims[:-2])
        out = out.where(valid)
        out.attrs["target"] = r.label
        return out
    full = np.asarray(full)
    n = full.shape[-1]
    lens = as_lengths("lengths", lengths, full.shape[:-2], n)
    r = readout_weights(target, lens, n, readout=readout_attr)
    flat = np.nan_to_num(full.reshape((-1, n, n)))
    out = np.einsum("sq,sqk->sk", r.weights, flat)
    out[~r.defined] = np.nan
    out[np.arange(n)[None, :] >= lens[:, None]] = np.nan
    return out.reshape(full.shape[:-2] + (n,))


def grad_rollout(attn, grad, *, start_layer=0, lengths=None, target=None):
    """Gradient-weighted rollout, Chefer et al. (2021), generic rule, from saved gradients.

    Starting from ``R = I``, each layer ``l >= start_layer`` updates
    ``R <- R + mean_h(max(grad_l * attn_l, 0)) @ R``.

    Parameters
    ----------
    attn : array (..., layer, head, n, n), or an attention Dataset
        Attention weights. A Dataset supplies ``attention``, ``gradient`` and
        ``length``; then ``grad`` may be None.
    grad : array of the same shape as ``attn``, or None with a Dataset
        Gradient of the explained output with respect to each attention weight.
    start_layer : int
        First layer included.
    lengths : int or array of ints, optional
        Valid tokens per sample.
    target : int, {"cls", "mean", "patches"}, "readout" or array, optional
        Return only the relevance for this read-out, ``w @ R`` over the
        output positions (see :mod:`attnkit.readout`): an int position,
        "mean" (uniform over valid positions), "patches" (uniform over
        positions >= 1), weights over positions, or "readout" for a
        Dataset's ``readout`` attr. Default: every output position.

    Returns
    -------
    numpy.ndarray (..., query, key), or xarray.DataArray
        Relevance of each input position (key) for each output position (query).
        Rows are not normalised (the rule accumulates relevance). With
        ``target``: (..., key).

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> a = np.full((1, 2, 2, 2), 0.5); g = np.ones_like(a)
    >>> ak.grad_rollout(a, g).tolist()
    [[1.5, 0.5], [0.5, 1.5]]
    >>> ak.grad_rollout(a, g, target="mean").tolist()
    [1.0, 1.0]
    """
    if target is not None:
        readout_attr = getattr(attn, "attrs", {}).get("readout")
        if isinstance(target, str) and target == "readout":
            target = None  # readout_weights then reads the attr
        if lengths is None and is_xarray(attn) and "length" in getattr(attn, "variables", ()):
            lengths = np.asarray(attn["length"].values)
        full = grad_rollout(attn, grad, start_layer=start_layer, lengths=lengths)
        return _read_out(full, target, lengths, readout_attr)
    if is_xarray(attn):
        import xarray as xr

        if grad is None:
            if not isinstance(attn, xr.Dataset) or "gradient" not in attn:
                raise errors.value_error("grad", "an array, or a dataset with a 'gradient' variable",
                                         None, "pass grad= or store gradients with ak.from_arrays")
            grad = attn["gradient"]
        out = apply_to_xarray(
            lambda a, g, lengths: _grad_rollout_numpy(a, g, lengths=lengths, start_layer=start_layer),
            attn, lengths=lengths, extra=(grad,),
            extra_core_dims=(("layer", "head", "query", "key"),))
        return out.rename("grad_rollout")
    if grad is None:
        raise errors.value_error("grad", "an array of the shape of attn", None,
                                 "pass the saved attention gradients")
    return _grad_rollout_numpy(attn, grad, lengths=lengths, start_layer=start_layer)


def _rollout_rows_layers(q, k, idx, lens, *, single, residual, start, target, attention_kwargs):
    """Rows ``idx`` of the mean-fusion rollout, one streamed pass per layer and row chunk.

    A row vector ``v`` of the rollout advances through layer ``l`` as
    ``v Ã_l``, with ``Ã_l[i] = (r e_i + (1 - r) mean_h P_h[i]) / c_i``. The
    row sum ``c_i = r + (1 - r) * (share of heads where row i sees a key)``
    is 1 for ordinary rows; a row with no allowed key keeps only its
    residual path (``Ã_l[i] = e_i``), as the row normalisation of
    :func:`rollout` does. So ``v Ã_l = r w + (1 - r) mean_h (w P_h)`` with
    ``w = v / c``, and ``w P_h`` is the weighted received attention that the
    kernels stream. A row of ``Ã_l`` that sums to 0 (``r = 0``, no key) stays 0.
    """
    n_layers, n_heads, n = (int(x) for x in q.shape[-4:-1])
    n_samples = lens.size
    kernels = _backend.kernels(target)
    per_pass = kernels.rows_per_pass(int(q.shape[-1]), q.dtype, k.dtype)
    out = np.full((n_samples, idx.size, n), np.nan)
    valid_key = np.arange(n)[None, :] < lens[:, None]  # (sample, position)
    for first in range(0, idx.size, per_pass):
        chunk = idx[first:first + per_pass]
        v = np.zeros((n_samples, chunk.size, n))
        for u, row in enumerate(chunk):
            v[lens > row, u, row] = 1.0
        for layer in range(n_layers - 1, start - 1, -1):
            ql, kl = (x[layer] if single else x[:, layer] for x in (q, k))
            problem = prepare(ql, kl, q_lengths=int(lens[0]) if single else lens,
                              kv_lengths=int(lens[0]) if single else lens, target=target,
                              **attention_kwargs)
            stream = kernels.RowStream(problem)
            sees_a_key = np.isfinite(stream.lse()).reshape(n_samples, n_heads, n).mean(axis=1)
            row_sum = residual + (1.0 - residual) * sees_a_key  # (sample, position)
            with np.errstate(divide="ignore", invalid="ignore"):
                w = np.where(row_sum[:, None, :] > 0, v / row_sum[:, None, :], 0.0)
            received = stream.received(w, n_heads).reshape(n_samples, n_heads, chunk.size, n)
            v = residual * w + (1.0 - residual) * received.mean(axis=1)
            v[~np.broadcast_to(valid_key[:, None, :], v.shape)] = 0.0
        out[:, first:first + chunk.size] = v
    row_valid = idx[None, :] < lens[:, None]  # (sample, row)
    out[~row_valid] = np.nan
    out[~np.broadcast_to(valid_key[:, None, :], out.shape)] = np.nan
    return out


def rollout_rows(q, k, rows, *, residual=0.5, start_layer=0, scale=None, causal=False, mask=None,
                 score_mod=None, lengths=None, check_finite=True, backend="auto"):
    """Rows of attention rollout computed from per-layer queries and keys, never storing n x n.

    Each layer's attention is recomputed tile by tile by the streaming kernels,
    so memory is O(n) per row and head: rollout works at lengths where one
    layer's weights do not fit. Head fusion is the mean (max/min need every
    head's weights at once: use stored attention and :func:`rollout`).
    Equals ``ak.rollout(w, head_fusion="mean", residual=..., start_layer=...)[..., rows, :]``
    where ``w`` stacks ``ak.attention_weights(q[l], k[l], ...)`` over layers.

    Parameters
    ----------
    q, k : arrays (layer, head, n, d) or (sample, layer, head, n, d)
        Per-layer queries and keys (as stored in an attention dataset's ``q``
        and ``k``); ``k`` may have fewer heads (grouped-query attention).
    rows : sequence of int
        Output positions whose rollout rows are wanted.
    residual, start_layer
        As in :func:`rollout`.
    scale, causal, mask, score_mod, check_finite
        How each layer's attention is computed, as in :func:`attnkit.attention`.
    lengths : int or array (sample,), optional
        Valid tokens per sample; q/k past them (NaN in a dataset) are ignored.
    backend : {"auto", "cpu", "cuda"}
        As in :func:`attnkit.attention`: "auto" runs on the GPU for device
        arrays or where a GPU is present.

    Returns
    -------
    numpy.ndarray (sample, row, key), or (row, key) for 4-d inputs
        float64; NaN for rows and keys past a sample's length. A numba
        device array for GPU inputs.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((2, 3, 4, 6, 8))   # (q/k, layer, head, n, d)
    >>> w = np.stack([ak.attention_weights(q[l], k[l]) for l in range(3)])
    >>> got = ak.rollout_rows(q, k, rows=[0, 5])
    >>> bool(np.allclose(got, ak.rollout(w)[[0, 5]]))
    True
    """
    target = _backend.choose(backend, q=q, k=k)
    on_device = _backend.is_device_array(q) or _backend.is_device_array(k)
    if on_device:
        from .kernels.cuda import runtime

        q, k = (runtime.as_device(x) if _backend.is_device_array(x) else np.asarray(x)
                for x in (q, k))
    else:
        q, k = np.asarray(q), np.asarray(k)
    if len(q.shape) not in (4, 5) or len(k.shape) != len(q.shape):
        raise errors.shape_error("q, k", "(layer, head, n, d) or (sample, layer, head, n, d)",
                                 (tuple(q.shape), tuple(k.shape)), "stack the layers on one axis")
    single = len(q.shape) == 4
    n_layers, n = int(q.shape[-4]), int(q.shape[-2])
    if int(k.shape[-4]) != n_layers or int(k.shape[-2]) != n:
        raise errors.shape_error("k", f"{n_layers} layers and {n} positions like q",
                                 tuple(k.shape),
                                 "rollout needs self-attention: keys at the query positions")
    idx = np.asarray(rows)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise errors.value_error("rows", f"a 1-d array of positions in [0, {n})", repr(rows),
                                 "pass e.g. rows=[0] for the first token")
    residual = errors.fraction("residual", residual)
    start = errors.layer_index("start_layer", start_layer, n_layers)
    lens = as_lengths("lengths", lengths, () if single else (int(q.shape[0]),), n)
    if not on_device:
        padding = np.arange(n)[None, :] >= lens[:, None]  # (sample, position)
        if padding.any():  # datasets pad q/k with NaN; the kernels must never see it
            pad = padding[0, None, None, :, None] if single else padding[:, None, None, :, None]
            q, k = (np.where(pad, 0, x) for x in (q, k))
    out = _rollout_rows_layers(
        q, k, idx.astype(np.int64), lens, single=single, residual=residual, start=start,
        target=target,
        attention_kwargs=dict(scale=scale, causal=causal, mask=mask, score_mod=score_mod,
                              check_finite=check_finite))
    out = out[0] if single else out
    return runtime.to_device(out) if on_device else out
