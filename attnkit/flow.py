"""Attention flow (Abnar & Zuidema 2020): exact maximum flows through the layers.

The attention of a model with ``L`` layers is read as a flow network: one node
``(l, k)`` per layer boundary ``l = 0..L`` (0 = the input embeddings, ``L`` =
the top outputs) and position ``k``, and an edge ``(l + 1, i) -> (l, j)`` with
capacity ``Ã_l[i, j]``, the augmented attention of layer ``l`` (heads fused,
residual added, rows normalised; see :func:`attnkit.augmented_attention`).
The flow from output position ``i`` to input position ``j`` is the value of a
maximum flow from source ``(L, i)`` to sink ``(0, j)``, one max-flow problem
per pair. Each row is then divided by its own sum over the input positions.

The values are those of the reference implementation (networkx's
``maximum_flow_value`` on the same graph) to float64 rounding; the solver is
a Numba Dinic specialised for the layered graph (:mod:`attnkit.kernels.cpu.flow`).
"""

from __future__ import annotations

import numpy as np

from . import errors
from ._attn_input import apply_to_xarray, as_lengths, attention_and_lengths, is_xarray

__all__ = ["attention_flow", "readout_flow"]


def _sources(sources, n: int) -> np.ndarray:
    """Validate ``sources`` (None, an int or ints in [-n, n)) into sorted unique int64."""
    if sources is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(sources)
    if arr.size == 0 and arr.ndim == 1:
        return np.empty(0, dtype=np.int64)
    if arr.dtype == bool or arr.dtype.kind not in "iu" or arr.ndim > 1:
        raise errors.value_error("sources", "an int position or a 1-D list of int positions",
                                 repr(sources), "pass e.g. sources=[0] for the first token")
    arr = arr.reshape(-1).astype(np.int64)
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise errors.value_error("sources", f"positions in [-{n}, {n})", int(bad[0]),
                                 "pick query positions inside the sequence axis")
    return np.unique(arr % n) if n else arr


def _flow_numpy(attn, *, sources, lengths, head_fusion, residual, discard_ratio, normalize):
    from .kernels.cpu import flow as kernels
    from .rollout import augmented_attention

    shape = np.shape(attn)
    if len(shape) < 4:
        raise errors.shape_error("attn", "(..., layer, head, n, n)", tuple(shape),
                                 "stack the per-layer attention as (layer, head, query, key)")
    aug = augmented_attention(attn, head_fusion=head_fusion, residual=residual,
                              discard_ratio=discard_ratio, lengths=lengths)
    n = aug.shape[-1]
    batch_shape = aug.shape[:-3]
    lens = as_lengths("lengths", lengths, batch_shape, n)
    src = _sources(sources, n)
    flat = np.ascontiguousarray(aug.reshape((int(np.prod(batch_shape, dtype=np.int64)),)
                                            + aug.shape[-3:]))
    out = np.full((flat.shape[0], n, n), np.nan)
    if flat.size and src.size:
        kernels.attention_flow(flat, lens, src, normalize, out)
    return out.reshape(batch_shape + (n, n))


def readout_flow(aug, weights, lengths, *, normalize=True):
    """Flow from a super-source over the top outputs to every input, through each layer prefix.

    The super-source feeds top node ``i`` through an edge of capacity
    ``weights[s, i]`` (Abnar & Zuidema's flow from one output is a one-hot
    row); it is solved as one more layer on top of the network, whose rows all
    equal ``weights[s]``, by the same exact max-flow kernel.

    Parameters
    ----------
    aug : array (sample, layer, n, n)
        Augmented attention (:func:`attnkit.augmented_attention`).
    weights : array (sample, n)
        Non-negative capacities into the top outputs (0 past each length).
    lengths : array of int (sample,)
    normalize : bool
        Divide each sample's flows by their sum (as :func:`attention_flow`).

    Returns
    -------
    numpy.ndarray (sample, layer, n)
        ``out[:, l]``: flows through layers ``0..l``; NaN past each length.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit.flow import readout_flow
    >>> a = np.zeros((1, 2, 1, 3, 3))
    >>> a[0, :, 0] = [[1, 0, 0], [1, 0, 0], [0, 0.5, 0.5]]
    >>> aug = ak.augmented_attention(a)
    >>> one_hot = readout_flow(aug, np.array([[0.0, 0.0, 1.0]]), [3], normalize=False)
    >>> one_hot[0, 1]                    # = attention_flow(a, sources=[2])[2]
    array([0.25, 0.5 , 0.75])
    >>> readout_flow(aug, np.full((1, 3), 1 / 3), [3])[0, 1].round(3)
    array([0.478, 0.348, 0.174])
    """
    from .kernels.cpu import flow as kernels

    aug = np.asarray(aug, dtype=np.float64)
    s, n_layers, n, _ = aug.shape
    lengths = np.asarray(lengths, dtype=np.int64).reshape(s)
    top = np.zeros((s, 1, n, n))
    top[:, 0] = np.asarray(weights, dtype=np.float64)[:, None, :]
    network = np.concatenate([np.nan_to_num(aug), top], axis=1)
    out = np.full((s, n_layers, n), np.nan)
    source = np.zeros(1, dtype=np.int64)
    for layer in range(n_layers):
        stacked = np.ascontiguousarray(np.concatenate(
            [network[:, : layer + 1], network[:, -1:]], axis=1))
        flows = np.full((s, n, n), np.nan)
        if s and n:
            kernels.attention_flow(stacked, lengths, source, normalize, flows)
        out[:, layer] = flows[:, 0]
    return out


def attention_flow(attn, *, sources=None, head_fusion="mean", residual=0.5, discard_ratio=0.0,
                   lengths=None, normalize=True):
    """Attention flow: the maximum flow from each output position to each input position.

    Builds Abnar & Zuidema's layered flow network from the augmented attention
    ``Ã_l`` of every layer (as in :func:`rollout`) and solves one exact
    max-flow problem per (output ``i``, input ``j``) pair, from node
    ``(L, i)`` down to node ``(0, j)``. To stop at an intermediate layer
    ``k``, pass the first ``k`` layers (``attn[..., :k, :, :, :]``, or
    ``ds.isel(layer=slice(0, k))``).

    Parameters
    ----------
    attn : array (..., layer, head, n, n), xarray.Dataset or xarray.DataArray
        Attention weights, rows over keys, finite and non-negative. A Dataset
        supplies its ``attention`` and ``length`` variables; chunked data
        stays lazy (dask, one task per chunk).
    sources : int or sequence of int, optional
        Output positions (query rows) to compute; negative counts from the
        end. Default: every position. Rows not computed are NaN.
    head_fusion : {"mean", "max", "min"}
        How heads are combined in each layer.
    residual : float in [0, 1]
        Weight of the identity in ``Ã`` (0.5 is Abnar & Zuidema's).
    discard_ratio : float in [0, 1)
        Fraction of the smallest fused weights per layer set to 0 (as in rollout).
    lengths : int or array of ints, optional
        Valid tokens per sample. Padding positions are not part of the graph;
        their rows and columns are NaN.
    normalize : bool
        Divide each row by its own sum over the input positions (default), as
        the reference does. A row whose flows are all 0 stays 0. With False,
        the raw max-flow values (each at most 1) are returned.

    Returns
    -------
    numpy.ndarray (..., query, key), or xarray.DataArray named "flow" with dims (..., query, key)
        float64. Row ``i`` holds the flow from output ``i`` to every input
        position ``j``.

    Notes
    -----
    The solver is exact up to a saturation threshold of 1e-12 on residual
    capacities: each raw value is at most 1e-12 times the number of edges in
    a minimum cut below the true maximum flow (tested against networkx to
    1e-9). Cost: ``n`` max-flows per source, each ``O(L n^2)`` per phase of
    Dinic's algorithm; sources run in parallel over (sample, source) pairs.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> a = np.zeros((2, 1, 3, 3))            # 2 layers, 1 head, 3 tokens
    >>> a[:, 0] = [[1, 0, 0], [1, 0, 0], [0, 0.5, 0.5]]
    >>> ak.augmented_attention(a)[0]          # Ã of each layer (residual 0.5)
    array([[1.  , 0.  , 0.  ],
           [0.5 , 0.5 , 0.  ],
           [0.  , 0.25, 0.75]])
    >>> ak.attention_flow(a, sources=[2], normalize=False)[2]
    array([0.25, 0.5 , 0.75])
    >>> ak.attention_flow(a).round(3)        # every row divided by its sum
    array([[1.   , 0.   , 0.   ],
           [0.667, 0.333, 0.   ],
           [0.167, 0.333, 0.5  ]])
    """
    from .rollout import fusion_code

    fusion_code(head_fusion)
    residual = errors.fraction("residual", residual)
    discard_ratio = errors.fraction("discard_ratio", discard_ratio, upper_open=True)
    normalize = errors.flag("normalize", normalize)
    kwargs = dict(head_fusion=head_fusion, residual=residual, discard_ratio=discard_ratio,
                  normalize=normalize)
    if is_xarray(attn):
        data, _ = attention_and_lengths(attn)
        if "query" in data.dims:
            _sources(sources, data.sizes["query"])  # fail now, not inside a dask task
        out = apply_to_xarray(
            lambda a, lengths: _flow_numpy(a, sources=sources, lengths=lengths, **kwargs),
            attn, lengths=lengths)
        return out.rename("flow")
    return _flow_numpy(attn, sources=sources, lengths=lengths, **kwargs)
