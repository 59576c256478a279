"""Attention sinks: tokens that receive far more attention than the average token.

Transformers park attention on a few tokens that carry little content: [CLS]
and [SEP] in BERT-style encoders, the first token in decoders (Xiao et al.
2023), and in vision transformers without register tokens a few background
patches with large norms (Darcet et al. 2023, "Vision Transformers Need
Registers"). Such a sink dominates plain rollout, which multiplies the layers'
attention: when one patch takes most of layer 0's attention, every rollout row
leans on that patch. :func:`attention_sinks` finds them, per sample and layer.

The share of key ``j`` in a layer is the attention it receives, averaged over
heads and valid queries: ``share[j] = mean_h mean_i a[h, i, j]``; the shares
of a sample's keys sum to 1 and average ``1 / n``. A sink takes at least
``ratio / n`` (``ratio`` times the average share).
"""

from __future__ import annotations

import numpy as np

from . import errors
from ._attn_input import apply_to_xarray, attention_stack, is_xarray

__all__ = ["attention_sinks"]

#: Default threshold: a sink receives at least this many times the average share 1/n.
DEFAULT_RATIO = 5.0


def _received_share(attn, *, lengths, by_head: bool):
    """Received share (..., layer[, head], key): mean over valid queries (and heads)."""
    stack = attention_stack(attn, lengths)
    data, lens = stack.data, stack.lengths
    n = stack.n
    share = np.full(data.shape[:3] + (n,), np.nan)
    for s, length in enumerate(lens):
        if length:
            share[s, :, :, :length] = data[s, :, :, :length, :length].mean(axis=2, dtype=np.float64)
    if not by_head:
        share = share.mean(axis=2)
    return stack.unflatten(share)


def _summary(share, lengths, ratio: float):
    """is_sink, n_sinks, sink_share, top_sink and top_share from the shares (..., key)."""
    n_valid = np.asarray(lengths, dtype=np.float64)[..., None]
    threshold = np.where(n_valid > 0, ratio / np.maximum(n_valid, 1), np.inf)
    filled = np.nan_to_num(share, nan=-np.inf)
    is_sink = filled >= threshold
    top = filled.argmax(axis=-1)
    top_share = np.take_along_axis(share, top[..., None], axis=-1)[..., 0]
    sink_share = np.where(is_sink, np.nan_to_num(share), 0.0).sum(axis=-1)
    return is_sink, is_sink.sum(axis=-1), sink_share, top, top_share


def attention_sinks(attn, *, ratio: float = DEFAULT_RATIO, by_head: bool = False, lengths=None):
    """Find attention sinks: keys receiving at least ``ratio`` times the average share.

    Parameters
    ----------
    attn : xarray.Dataset, xarray.DataArray or array (..., layer, head, n, n)
        Attention; a Dataset supplies ``attention``, ``length`` and ``token``.
    ratio : float
        A key is a sink when its share of the layer's attention is at least
        ``ratio / n`` (``n`` the sample's length), i.e. ``ratio`` times the
        average. Default 5.
    by_head : bool
        Shares per head instead of averaged over heads.
    lengths : array of int, optional
        Valid tokens per sample (arrays, or a DataArray without its dataset).

    Returns
    -------
    xarray.Dataset
        ``share`` (..., layer[, head], key): attention received, averaged over
        heads and valid queries (sums to 1 over a sample's keys; NaN past its
        length); ``is_sink`` (same dims) bool; and per (..., layer[, head]):
        ``n_sinks``, ``sink_share`` (the share all sinks take together),
        ``top_sink`` (the key receiving most) and ``top_share`` (its share).
        A dataset's ``key_token`` labels the keys. ``ratio`` is an attr.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> a = np.full((1, 1, 4, 4), 0.05)
    >>> a[..., 2] = 0.85                              # every query looks at token 2
    >>> sinks = ak.attention_sinks(a, ratio=2)
    >>> sinks.share.values.round(2).tolist(), sinks.top_sink.values.tolist()
    ([[0.05, 0.05, 0.85, 0.05]], [2])
    >>> sinks.is_sink.values.tolist(), sinks.sink_share.values.round(2).tolist()
    ([[False, False, True, False]], [0.85])
    """
    import xarray as xr

    if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, (int, float, np.integer,
                                                                     np.floating)) \
            or not np.isfinite(ratio) or ratio <= 0:
        raise errors.value_error("ratio", "a positive number (times the average share 1/n)",
                                 repr(ratio), "pass e.g. ratio=5")
    by_head = errors.flag("by_head", by_head)
    key_dims = ("layer", "head", "key") if by_head else ("layer", "key")
    if is_xarray(attn):
        share = apply_to_xarray(
            lambda a, lengths: _received_share(a, lengths=lengths, by_head=by_head),
            attn, lengths=lengths, output_core_dims=(key_dims,)).compute()
        if isinstance(attn, xr.Dataset) and "length" in attn:
            lens = attn["length"]
        elif lengths is not None:
            lens = xr.DataArray(np.asarray(lengths), dims=share.dims[:np.ndim(lengths)])
        else:
            lens = xr.DataArray(share.sizes["key"])
        lens = lens.broadcast_like(share.isel(key=0, drop=True)).transpose(*share.dims[:-1]).values
        parts = _summary(share.values, lens, float(ratio))
        outer = share.dims[:-1]
        ds = xr.Dataset({"share": share, "is_sink": (share.dims, parts[0])},
                        coords={k: v for k, v in share.coords.items()})
        for name, values in zip(("n_sinks", "sink_share", "top_sink", "top_share"), parts[1:]):
            ds[name] = (outer, values)
    else:
        a = np.asarray(attn)
        share = _received_share(a, lengths=lengths, by_head=by_head)
        batch_shape = a.shape[:-4]
        n = a.shape[-1]
        lens = np.broadcast_to(n if lengths is None else np.asarray(lengths), batch_shape)
        lens = lens.reshape(batch_shape + (1,) * (share.ndim - 1 - len(batch_shape)))
        lens = np.broadcast_to(lens, share.shape[:-1])
        parts = _summary(share, lens, float(ratio))
        batch_dims = ("sample",) if len(batch_shape) == 1 else tuple(
            f"dim_{i}" for i in range(len(batch_shape)))
        dims = batch_dims + key_dims
        ds = xr.Dataset({"share": (dims, share), "is_sink": (dims, parts[0])})
        for name, values in zip(("n_sinks", "sink_share", "top_sink", "top_share"), parts[1:]):
            ds[name] = (dims[:-1], values)
        ds = ds.assign_coords({d: np.arange(ds.sizes[d]) for d in ("layer", "head")
                               if d in ds.dims})
    ds.attrs["ratio"] = float(ratio)
    ds["share"].attrs["description"] = ("attention received, averaged over heads and valid "
                                        "queries; sums to 1 over a sample's keys")
    ds["is_sink"].attrs["description"] = f"share >= ratio / n (ratio = {float(ratio):g})"
    return ds
