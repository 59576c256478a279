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

from . import errors
from ._attn_input import apply_to_xarray, as_lengths, attention_stack, is_xarray

__all__ = ["rollout", "rollout_rows", "grad_rollout", "augmented_attention"]

def fusion_code(head_fusion: str) -> int:
    """The kernels' code for a head fusion rule ("mean", "max" or "min"), or a clear error."""
    from .kernels.cpu.rollout import FUSION_CODES

    if head_fusion not in FUSION_CODES:
        raise errors.value_error("head_fusion", "'mean', 'max' or 'min'", repr(head_fusion),
                                 "pick one of those")
    return FUSION_CODES[head_fusion]


def _is_device_array(x) -> bool:
    return hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray)


def _choose_backend(backend: str, attn) -> str:
    errors.backend_name(backend)
    if backend == "auto":
        return "cuda" if _is_device_array(attn) else "cpu"
    return backend


def _prefix_rows_buffer(stack, query):
    """The kernels' ``rows`` output: (S, L, n) for a query, (S, 0, n) for none."""
    s, n_layers = stack.data.shape[:2]
    return np.empty((s, n_layers if query is not None else 0, stack.n))


def _rollout_numpy(attn, *, lengths, head_fusion, residual, discard_ratio, start_layer,
                   query=None):
    """Rollout on the CPU; with ``query``, also the (S, L, n) rows of :func:`prefix_rows`."""
    from .kernels.cpu import rollout as kernels
    from .kernels.cpu.threads import single_threaded_blas

    fusion = fusion_code(head_fusion)
    stack = attention_stack(attn, lengths)
    start = errors.layer_index("start_layer", start_layer, stack.data.shape[1])
    out = np.empty((stack.data.shape[0], stack.n, stack.n))
    rows = _prefix_rows_buffer(stack, query)
    with single_threaded_blas():
        kernels.rollout(stack.data, stack.lengths, fusion, residual, discard_ratio, start, out,
                        -1 if query is None else query, rows)
    return stack.unflatten(out) if query is None else rows


def _rollout_cuda(attn, *, lengths, head_fusion, residual, discard_ratio, start_layer):
    try:
        from .kernels.cuda import rollout as cuda_rollout
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise errors.BackendUnavailableError(
            f"backend='cuda': the CUDA rollout kernel cannot be imported ({exc}). "
            "Fix: pip install 'attnkit[gpu]', or use backend='cpu'.") from exc
    if discard_ratio:
        raise errors.value_error("discard_ratio", "0 with backend='cuda'", discard_ratio,
                                 "use backend='cpu' to discard weights")
    fusion_code(head_fusion)
    shape = tuple(attn.shape)
    if len(shape) != 5 or shape[-1] != shape[-2]:
        raise errors.shape_error("attn", "(sample, layer, head, n, n) on the GPU", shape,
                                 "add a sample axis, e.g. attn[None]")
    lens = as_lengths("lengths", lengths, shape[:1], shape[-1])
    start = errors.layer_index("start_layer", start_layer, shape[1])
    return cuda_rollout.rollout(attn, lens, head_fusion, residual, start)


def prefix_rows(attn, query: int, *, kind="rollout", grad=None, lengths=None, head_fusion="mean",
                residual=0.5):
    """Row ``query`` of the rollout through each layer, from one pass over the layers.

    ``out[:, l]`` equals ``rollout(attn[:, :l + 1], ...)[:, query]`` (or
    ``grad_rollout``'s), without recomputing the shared prefix product for
    every ``l``: L layer products instead of L (L + 1) / 2.

    Parameters
    ----------
    attn : array (sample, layer, head, n, n)
    query : int
        The output position, in [0, n).
    kind : {"rollout", "grad"}
    grad : array like ``attn``, for ``kind="grad"``
    lengths, head_fusion, residual
        As in :func:`rollout`.

    Returns
    -------
    numpy.ndarray (sample, layer, n)
        float64; NaN past each sample's length and for samples shorter than
        ``query + 1``.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit.rollout import prefix_rows
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((2, 3, 2, 4, 4)); a /= a.sum(-1, keepdims=True)
    >>> rows = prefix_rows(a, 1)
    >>> bool(np.allclose(rows[:, 1], ak.rollout(a[:, :2])[:, 1]))
    True
    """
    shape = np.shape(attn)
    if len(shape) != 5:
        raise errors.shape_error("attn", "(sample, layer, head, n, n)", shape,
                                 "add a sample axis, e.g. attn[None]")
    if kind not in ("rollout", "grad"):
        raise errors.value_error("kind", "'rollout' or 'grad'", repr(kind), "pick one of those")
    query = errors.position("query", query, shape[-1], "pick an output position inside the samples")
    if kind == "grad":
        return _grad_rollout_numpy(attn, grad, lengths=lengths, start_layer=0, query=query)
    residual = errors.fraction("residual", residual)
    return _rollout_numpy(attn, lengths=lengths, head_fusion=head_fusion, residual=residual,
                          discard_ratio=0.0, start_layer=0, query=query)


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
    if is_xarray(attn):
        fusion_code(head_fusion)
        out = apply_to_xarray(lambda a, lengths: _rollout_numpy(a, lengths=lengths, **kwargs),
                              attn, lengths=lengths)
        return out.rename("rollout")
    if _choose_backend(backend, attn) == "cuda":
        return _rollout_cuda(attn, lengths=lengths, **kwargs)
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


def _grad_rollout_numpy(attn, grad, *, lengths, start_layer, query=None):
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
    rows = _prefix_rows_buffer(stack, query)
    with single_threaded_blas():
        kernels.grad_rollout(stack.data, g, stack.lengths, start, out,
                             -1 if query is None else query, rows)
    return stack.unflatten(out) if query is None else rows


def grad_rollout(attn, grad, *, start_layer=0, lengths=None):
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

    Returns
    -------
    numpy.ndarray (..., query, key), or xarray.DataArray
        Relevance of each input position (key) for each output position (query).
        Rows are not normalised (the rule accumulates relevance).

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> a = np.full((1, 2, 2, 2), 0.5); g = np.ones_like(a)
    >>> ak.grad_rollout(a, g).tolist()
    [[1.5, 0.5], [0.5, 1.5]]
    """
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


def _weighted_received_cpu(problem, weights):
    """``sum_i weights[z, i] * p[z, i, :]`` for every problem z, streaming.

    The key_received kernel sums ``exp(s_ij - lse_i)`` over queries; handing it
    ``lse_i - log(w_i)`` instead makes it sum ``w_i * p_ij``. Zero weights give
    ``+inf`` and contribute exactly 0.
    """
    from .attention import CPU_BLOCK_K, CPU_BLOCK_Q, _CpuKernels, _lse

    p = problem
    kern = _CpuKernels(p)
    lse = _lse(p, kern).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        shifted = np.where(weights > 0, lse - np.log(weights), np.inf).astype(p.q.dtype)
    received = np.empty((p.n_problems, p.m))
    kern.key_received(p.q, p.k, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale, p.ops, p.aux,
                      p.n_heads, shifted, CPU_BLOCK_Q, CPU_BLOCK_K, received)
    return received


def _rollout_rows_cpu(q, k, idx, *, residual, start, lengths, **attention_kwargs):
    from ._prepare import prepare

    n_samples, n_layers, n_heads, n = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
    out = np.full((n_samples, idx.size, n), np.nan)
    for u, row in enumerate(idx):
        v = np.zeros((n_samples, n))
        v[lengths > row, row] = 1.0
        for layer in range(n_layers - 1, start - 1, -1):
            problem = prepare(q[:, layer], k[:, layer], q_lengths=lengths, kv_lengths=lengths,
                              **attention_kwargs)
            weights = np.repeat(v, n_heads, axis=0)  # problems are (sample, head) row-major
            received = _weighted_received_cpu(problem, weights).reshape(n_samples, n_heads, n)
            v = residual * v + (1.0 - residual) * received.mean(axis=1)
        valid = lengths > row
        out[valid, u] = v[valid]
        for s in range(n_samples):
            out[s, u, lengths[s]:] = np.nan
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
        "auto" runs on the GPU for device arrays.

    Returns
    -------
    numpy.ndarray (sample, row, key), or (row, key) for 4-d inputs
        float64; NaN for rows and keys past a sample's length.

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
    backend_name = _choose_backend(backend, q if _is_device_array(q) else k)
    if backend_name == "cuda":
        from .kernels.cuda import rollout as cuda_rollout

        return cuda_rollout.rollout_rows(q, k, rows, residual=residual, start_layer=start_layer,
                                         scale=scale, causal=causal, mask=mask,
                                         score_mod=score_mod, lengths=lengths,
                                         check_finite=check_finite)
    q, k = np.asarray(q), np.asarray(k)
    if q.ndim not in (4, 5) or k.ndim != q.ndim:
        raise errors.shape_error("q, k", "(layer, head, n, d) or (sample, layer, head, n, d)",
                                 (q.shape, k.shape), "stack the layers on one axis")
    single = q.ndim == 4
    if single:
        q, k = q[None], k[None]
    n_layers, n = q.shape[1], q.shape[3]
    if k.shape[1] != n_layers or k.shape[3] != n:
        raise errors.shape_error("k", f"{n_layers} layers and {n} positions like q", k.shape,
                                 "rollout needs self-attention: keys at the query positions")
    idx = np.asarray(rows)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise errors.value_error("rows", f"a 1-d array of positions in [0, {n})", repr(rows),
                                 "pass e.g. rows=[0] for the first token")
    residual = errors.fraction("residual", residual)
    start = errors.layer_index("start_layer", start_layer, n_layers)
    lens = as_lengths("lengths", lengths, q.shape[:1], n)
    padding = np.arange(n)[None, :] >= lens[:, None]  # (sample, position)
    if padding.any():  # datasets pad q/k with NaN; the kernels must never see it
        q, k = (np.where(padding[:, None, None, :, None], 0, x) for x in (q, k))
    out = _rollout_rows_cpu(q, k, idx.astype(np.int64), residual=residual, start=start,
                            lengths=lens, scale=scale, causal=causal, mask=mask,
                            score_mod=score_mod, check_finite=check_finite)
    return out[0] if single else out
