"""Head statistics of stored attention: what each head attends to, in numbers.

:func:`head_stats` summarises every (sample, layer, head) by means over the
valid query rows: entropy, mean attention distance, peak weight, the mass on
the token itself, on the previous and next token, on [CLS]-like, [SEP]-like
and punctuation tokens (when tokens are known), and the Jensen-Shannon
divergence between the heads of a layer.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from . import errors
from ._attn_input import apply_to_xarray, attention_and_lengths, attention_stack, is_xarray
from .constants import CLS_TOKENS, SEP_TOKENS

__all__ = ["head_stats", "STAT_DESCRIPTIONS", "CLS_TOKENS", "SEP_TOKENS"]

#: Tokens counted as [CLS]-like (sequence start) and [SEP]-like (separator / end).
# (defined in attnkit.constants, re-exported here)

#: Variables of the head_stats Dataset and what they mean.
STAT_DESCRIPTIONS = {
    "entropy": "mean row entropy -sum p log p (nats)",
    "distance": "mean attention distance sum p_ij |i - j| (positions)",
    "max_weight": "mean of each row's largest weight",
    "self_mass": "mean weight on the query's own position",
    "prev_mass": "mean weight on the previous position (rows 1..n-1)",
    "next_mass": "mean weight on the next position (rows 0..n-2)",
    "cls_mass": "mean weight on [CLS]-like tokens (NaN without tokens)",
    "sep_mass": "mean weight on [SEP]-like tokens (NaN without tokens)",
    "punct_mass": "mean weight on punctuation tokens (NaN without tokens)",
    "js_divergence": "mean Jensen-Shannon divergence between two heads' rows (bits, 0..1)",
}

_WORD_PIECE_MARKS = ("##", "\u0120", "\u2581")  # BERT '##', GPT-2 'Ġ', SentencePiece '▁'


def is_punctuation(token: str) -> bool:
    """True if ``token`` (without sub-word markers) is only punctuation.

    Examples
    --------
    >>> [is_punctuation(t) for t in [".", "##,", "\u2581?!", "a.", "", "[CLS]"]]
    [True, True, True, False, False, False]
    """
    for mark in _WORD_PIECE_MARKS:
        if token.startswith(mark):
            token = token[len(mark):]
    return bool(token) and all(unicodedata.category(c).startswith("P") for c in token)


def token_masks(tokens, n: int, cls_tokens=CLS_TOKENS, sep_tokens=SEP_TOKENS):
    """Boolean key masks (S, n) for [CLS]-like, [SEP]-like and punctuation tokens."""
    rows = [list(t) for t in tokens]
    masks = np.zeros((3, len(rows), n), dtype=np.bool_)
    cls_set, sep_set = set(cls_tokens), set(sep_tokens)
    for s, row in enumerate(rows):
        for j, tok in enumerate(row[:n]):
            tok = "" if tok is None else str(tok)
            masks[0, s, j] = tok in cls_set
            masks[1, s, j] = tok in sep_set
            masks[2, s, j] = is_punctuation(tok)
    return masks


def _head_stats_numpy(attn, cls_keys=None, sep_keys=None, punct_keys=None, *, lengths):
    """NumPy core: (..., L, H, n, n) -> stats (..., L, H, n_stats), js (..., L, H, H)."""
    from .kernels.cpu.head_stats import STATS, head_stats as kernel

    stack = attention_stack(attn, lengths)
    s, n_layers, n_heads, n, _ = stack.data.shape
    has_tokens = cls_keys is not None
    if has_tokens:
        cls_keys, sep_keys, punct_keys = (np.ascontiguousarray(np.asarray(m, dtype=np.bool_)
                                                               .reshape(s, n))
                                          for m in (cls_keys, sep_keys, punct_keys))
    else:
        cls_keys = sep_keys = punct_keys = np.zeros((s, n), dtype=np.bool_)
    out = np.empty((s, n_layers, n_heads, len(STATS)))
    js = np.empty((s, n_layers, n_heads, n_heads))
    kernel(stack.data, stack.lengths, cls_keys, sep_keys, punct_keys, has_tokens, out, js)
    return stack.unflatten(out), stack.unflatten(js)


def _to_dataset(stats, js, batch_dims, coords=None):
    import xarray as xr

    from .kernels.cpu.head_stats import STATS

    dims = tuple(batch_dims) + ("layer", "head")
    data = {name: (dims, stats[..., i]) for i, name in enumerate(STATS)}
    data["js_divergence"] = (dims + ("other_head",), js)
    ds = xr.Dataset(data, coords=coords)
    # Index labels, as every dataset result gets (attnkit._attn_input.label_result).
    ds = ds.assign_coords({dim: np.arange(ds.sizes[dim]) for dim in ("layer", "head")
                           if dim not in ds.coords})
    return _describe(ds)


def _describe(ds):
    for name, text in STAT_DESCRIPTIONS.items():
        if name in ds:
            ds[name].attrs["description"] = text
    return ds


def head_stats(attn, *, lengths=None, tokens=None, cls_tokens=CLS_TOKENS, sep_tokens=SEP_TOKENS):
    """Per-head statistics of attention, as an xarray Dataset.

    Parameters
    ----------
    attn : array (..., layer, head, n, n), xarray.Dataset or xarray.DataArray
        Attention weights. A Dataset supplies ``attention``, ``length`` and the
        ``token`` coordinate; chunked (dask) data stays lazy.
    lengths : int or array of ints, optional
        Valid tokens per sample (arrays only; a Dataset has its own).
    tokens : sequence of sequences of str, optional
        Tokens of each sample (arrays only), for the [CLS]/[SEP]/punctuation
        masses; without tokens those variables are NaN.
    cls_tokens, sep_tokens : sequence of str
        Which tokens count as [CLS]-like and [SEP]-like.

    Returns
    -------
    xarray.Dataset
        Variables ``entropy``, ``distance``, ``max_weight``, ``self_mass``,
        ``prev_mass``, ``next_mass``, ``cls_mass``, ``sep_mass``, ``punct_mass``
        with dims (sample, layer, head) -- ``sample`` only when the input has a
        leading sample axis -- and ``js_divergence`` (sample, layer, head,
        other_head). See :data:`STAT_DESCRIPTIONS`.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> prev = np.eye(4, k=-1); prev[0, 0] = 1          # a previous-token head
    >>> uniform = np.full((4, 4), 0.25)
    >>> st = ak.head_stats(np.stack([prev, uniform])[None])   # (layer=1, head=2, 4, 4)
    >>> st.prev_mass.values.round(2).tolist()
    [[1.0, 0.25]]
    >>> float(st.js_divergence[0, 0, 1].round(3))
    0.549
    """
    if is_xarray(attn):
        return _head_stats_xarray(attn, lengths=lengths, cls_tokens=cls_tokens,
                                  sep_tokens=sep_tokens)
    a = np.asarray(attn)
    if a.ndim < 4:
        raise errors.shape_error("attn", "(..., layer, head, n, n)", a.shape,
                                 "stack the per-layer attention as (layer, head, query, key)")
    batch_shape, n = a.shape[:-4], a.shape[-1]
    masks = (None, None, None)
    if tokens is not None:
        flat_tokens = [tokens] if not batch_shape else list(np.asarray(tokens, dtype=object)
                                                            .reshape(-1, np.shape(tokens)[-1]))
        if len(flat_tokens) != int(np.prod(batch_shape, dtype=np.int64)):
            raise errors.shape_error("tokens", f"one token list per sample ({batch_shape})",
                                     np.shape(tokens), "pass tokens with the attention's leading shape")
        masks = token_masks(flat_tokens, n, cls_tokens, sep_tokens)
    stats, js = _head_stats_numpy(a, *masks, lengths=lengths)
    batch_dims = ("sample",) if len(batch_shape) == 1 else tuple(f"dim_{i}" for i in range(len(batch_shape)))
    return _to_dataset(stats, js, batch_dims)


def _head_stats_xarray(obj, *, lengths, cls_tokens, sep_tokens):
    import xarray as xr

    from .kernels.cpu.head_stats import STATS

    attn, _ = attention_and_lengths(obj)
    extra, extra_dims = (), ()
    token = obj["token"] if "token" in obj.coords or (isinstance(obj, xr.Dataset) and "token" in obj) else None
    if token is not None and "position" in token.dims:
        values = np.asarray(token.values, dtype=object)
        flat = values.reshape(-1, values.shape[-1])
        masks = token_masks(flat, values.shape[-1], cls_tokens, sep_tokens).reshape(
            (3,) + values.shape)
        extra = tuple(xr.DataArray(m, dims=token.dims, coords=token.coords).rename(position="key")
                      .drop_vars("token", errors="ignore") for m in masks)
        if attn.chunks is not None:
            extra = tuple(m.chunk({d: attn.chunksizes[d] for d in m.dims if d in attn.chunksizes})
                          for m in extra)
        extra_dims = (("key",),) * 3

    def run(a, *masks, lengths):
        return _head_stats_numpy(a, *masks, lengths=lengths)

    n_heads = attn.sizes["head"]
    stats, js = apply_to_xarray(
        run, obj, lengths=lengths, extra=extra, extra_core_dims=extra_dims,
        output_core_dims=(("layer", "head", "statistic"), ("layer", "head", "other_head")),
        output_dtypes=(np.float64, np.float64),
        output_sizes={"statistic": len(STATS), "other_head": n_heads})
    stats = stats.assign_coords(statistic=list(STATS))
    ds = stats.to_dataset(dim="statistic")
    ds["js_divergence"] = js
    return _describe(ds)
