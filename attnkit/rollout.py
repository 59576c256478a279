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

__all__ = ["rollout", "grad_rollout", "augmented_attention"]

_BACKENDS = ("auto", "cpu", "cuda")


def _fusion_code(head_fusion: str) -> int:
    from .kernels.cpu.rollout import FUSION_CODES

    if head_fusion not in FUSION_CODES:
        raise errors.value_error("head_fusion", "'mean', 'max' or 'min'", repr(head_fusion),
                                 "pick one of those")
    return FUSION_CODES[head_fusion]


def _fraction(name: str, value, *, upper_open: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise errors.value_error(name, f"a number in {interval}", repr(value),
                                 f"pass e.g. {name}=0.5")
    return value


def _start_layer(start_layer, n_layers: int) -> int:
    if isinstance(start_layer, bool) or not isinstance(start_layer, (int, np.integer)) or not (
            -n_layers <= start_layer < n_layers):
        raise errors.value_error("start_layer", f"an int layer index in [0, {n_layers})",
                                 repr(start_layer), "count layers from 0 (negative counts from the end)")
    return int(start_layer) % n_layers


def _is_device_array(x) -> bool:
    return hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray)


def _choose_backend(backend: str, attn) -> str:
    if backend not in _BACKENDS:
        raise errors.value_error("backend", "one of 'auto', 'cpu', 'cuda'", repr(backend),
                                 "pick one of those")
    if backend == "auto":
        return "cuda" if _is_device_array(attn) else "cpu"
    return backend


def _rollout_numpy(attn, *, lengths, head_fusion, residual, discard_ratio, start_layer):
    from .kernels.cpu import rollout as kernels
    from .kernels.cpu.threads import single_threaded_blas

    fusion = _fusion_code(head_fusion)
    stack = attention_stack(attn, lengths)
    start = _start_layer(start_layer, stack.data.shape[1])
    out = np.empty((stack.data.shape[0], stack.n, stack.n))
    with single_threaded_blas():
        kernels.rollout(stack.data, stack.lengths, fusion, residual, discard_ratio, start, out)
    return stack.unflatten(out)


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
    _fusion_code(head_fusion)
    shape = tuple(attn.shape)
    if len(shape) != 5 or shape[-1] != shape[-2]:
        raise errors.shape_error("attn", "(sample, layer, head, n, n) on the GPU", shape,
                                 "add a sample axis, e.g. attn[None]")
    lens = as_lengths("lengths", lengths, shape[:1], shape[-1])
    start = _start_layer(start_layer, shape[1])
    return cuda_rollout.rollout(attn, lens, head_fusion, residual, start)


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
    residual = _fraction("residual", residual)
    discard_ratio = _fraction("discard_ratio", discard_ratio, upper_open=True)
    kwargs = dict(head_fusion=head_fusion, residual=residual, discard_ratio=discard_ratio,
                  start_layer=start_layer)
    if is_xarray(attn):
        _fusion_code(head_fusion)
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

    fusion = _fusion_code(head_fusion)
    residual = _fraction("residual", residual)
    discard_ratio = _fraction("discard_ratio", discard_ratio, upper_open=True)
    stack = attention_stack(attn, lengths)
    s, n_layers, _, n, _ = stack.data.shape
    out = np.empty((s, n_layers, n, n))
    kernels.augmented_layers(stack.data, stack.lengths, fusion, residual, discard_ratio, out)
    return stack.unflatten(out)


def _grad_rollout_numpy(attn, grad, *, lengths, start_layer):
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
    start = _start_layer(start_layer, stack.data.shape[1])
    out = np.empty((stack.data.shape[0], stack.n, stack.n))
    with single_threaded_blas():
        kernels.grad_rollout(stack.data, g, stack.lengths, start, out)
    return stack.unflatten(out)


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
