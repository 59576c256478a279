"""Build schema-1 attention datasets from NumPy arrays: :func:`from_arrays`.

Ragged samples are padded to the longest with NaN, tokens with ``""``;
nothing is validated here (:func:`attnkit.validate` and
:func:`attnkit.save_dataset` do that). The layout is described in
:mod:`attnkit.data`.
"""

from __future__ import annotations

import numpy as np

from ..errors import dtype_error, shape_error, value_error
from .schema import ATTENTION_DIMS, QKV_LEAD, RESERVED_ATTRS, SCHEMA_VERSION, check_attr

__all__ = ["from_arrays"]


# ----------------------------------------------------------------------------- helpers
def _float_dtype(*arrays) -> np.dtype:
    """A float dtype able to hold NaN for all ``arrays`` (float32 or float64)."""
    dtype = None
    for a in arrays:
        d = a.dtype
        if d.kind != "f" or d.itemsize < 4 or d.itemsize > 8:
            half = d.kind == "V" or (d.kind == "f" and d.itemsize < 4)  # float16, bfloat16
            d = np.dtype(np.float32) if half else np.dtype(np.float64)
        dtype = d if dtype is None else np.promote_types(dtype, d)
    return np.dtype(np.float64) if dtype is None else dtype


def _check_real(name: str, a: np.ndarray) -> None:
    """Refuse dtypes that cannot become float without losing information
    (complex would drop its imaginary part) or that are not numbers at all."""
    if a.dtype.kind in "iuf" or a.dtype.name == "bfloat16":
        return
    fix = (f"keep the real part explicitly, e.g. np.real({name}).astype(np.float32)"
           if a.dtype.kind == "c" else f"pass numbers, e.g. np.asarray({name}, dtype=np.float32)")
    raise dtype_error(name, a.dtype, fix)


def _as_samples(name: str, value, ndim: int, expected: str):
    """Turn ``value`` into a list of per-sample arrays with ``ndim`` dims each.

    A list/tuple is a ragged list of samples; an array with ``ndim + 1`` dims is
    many samples; an array with ``ndim`` dims is one sample.
    """
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise shape_error(name, expected, "an empty list", "pass at least one sample")
        items = [np.asarray(v) for v in value]
        for i, a in enumerate(items):
            _check_real(f"{name}[{i}]", a)
            if a.ndim != ndim:
                raise shape_error(f"{name}[{i}]", "(" + expected[len("(sample, "):], a.shape,
                                  f"give every sample of {name} {ndim} dims")
        return items, False
    a = np.asarray(value)
    _check_real(name, a)
    if a.ndim == ndim + 1:
        return list(a), False
    if a.ndim == ndim:
        return [a], True
    raise shape_error(name, expected, a.shape,
                      f"pass {ndim + 1} dims for many samples, {ndim} for one sample, "
                      "or a list of per-sample arrays")


def _pad_positions(name, items, lengths, n, pos_axes, dtype):
    """Stack per-sample arrays, padding ``pos_axes`` to ``n`` with NaN and
    setting every position at or beyond the sample's length to NaN."""
    lead = items[0].shape
    out_shape = list(lead)
    for ax in pos_axes:
        out_shape[ax] = n
    for i, a in enumerate(items):
        for ax, size in enumerate(a.shape):
            if ax in pos_axes:
                if size > n:
                    raise shape_error(f"{name}[{i}]", f"at most {n} positions on axis {ax}", a.shape,
                                      "make it match the attention of the same sample")
            elif size != lead[ax]:
                raise shape_error(f"{name}[{i}]", f"axis {ax} of size {lead[ax]} like sample 0", a.shape,
                                  "give every sample the same number of layers/heads/features")
    out = np.full((len(items), *out_shape), np.nan, dtype=dtype)
    for i, a in enumerate(items):
        index = (i,) + tuple(slice(0, s) for s in a.shape)
        out[index] = a
        length = int(lengths[i])
        for ax in pos_axes:
            pad = [slice(None)] * len(out_shape)
            pad[ax] = slice(length, None)
            out[(i, *pad)] = np.nan
    return out



# ----------------------------------------------------------------------------- from_arrays
def from_arrays(attention, *, tokens=None, lengths=None, q=None, k=None, v=None, gradient=None,
                embedding=None, model="", source="", attrs=None):
    """Build a schema-1 attention dataset from NumPy arrays.

    Parameters
    ----------
    attention : array_like or list of array_like
        One sample (layer, head, query, key), many samples
        (sample, layer, head, query, key), or a list of per-sample arrays
        (layer, head, n_i, n_i) with ragged lengths, padded to the longest with NaN.
    tokens : list of str or list of list of str, optional
        Tokens per sample (ragged allowed); stored as the str coordinate
        ``token`` (sample, position), padded with ``""``.
    lengths : array_like of int, optional
        Valid tokens per sample. Inferred from ragged inputs or from ``tokens``
        when not given, else the full length. Attention outside it is set to NaN.
    q, k, v : array_like or list of array_like, optional
        (sample, layer, head, position, dim), or one sample / a ragged list like
        ``attention``. A ``v`` with another width than q/k gets the dim ``dim_v``.
    gradient : array_like or list of array_like, optional
        Same layout as ``attention``.
    embedding : array_like, optional
        (sample, feature), or (feature,) for one sample. Its own dim,
        ``feature``, never aligns with q/k/v's ``dim``, whatever the sizes.
    model, source : str
        Stored as attrs.
    attrs : dict, optional
        Extra attrs; values must be str, int or float.

    Returns
    -------
    xarray.Dataset
        With attrs ``attnkit_schema=1``, ``model``, ``source`` and ``created_with``.
        It is not validated here; :func:`validate` and :func:`save_dataset` do that.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> def softmax(x):
    ...     e = np.exp(x - x.max(-1, keepdims=True))
    ...     return e / e.sum(-1, keepdims=True)
    >>> a = [softmax(rng.standard_normal((2, 3, n, n))) for n in (4, 6)]
    >>> ds = ak.from_arrays(a, tokens=[list("abcd"), list("uvwxyz")], model="toy")
    >>> dict(ds.attention.sizes)
    {'sample': 2, 'layer': 2, 'head': 3, 'query': 6, 'key': 6}
    >>> ds.length.values.tolist(), ds.token.values[0].tolist()
    ([4, 6], ['a', 'b', 'c', 'd', '', ''])
    >>> ak.validate(ds)
    """
    from .. import __version__
    from .accessor import registered_xarray  # here, so `import attnkit` stays light

    xr = registered_xarray()

    att_items, single = _as_samples("attention", attention, 4,
                                    "(sample, layer, head, query, key)")
    for i, a in enumerate(att_items):
        if a.shape[-1] != a.shape[-2]:
            raise shape_error(f"attention[{i}]" if not single else "attention",
                              "(layer, head, n, n) with as many queries as keys", a.shape,
                              "pass self-attention weights (square in query and key)")
    for i, a in enumerate(att_items):
        if a.shape[-1] == 0:
            raise shape_error(f"attention[{i}]" if not single else "attention",
                              "(layer, head, n, n) with n >= 1", a.shape,
                              "drop empty samples; every sample needs at least one token")
    n = max(a.shape[-1] for a in att_items)
    n_samples = len(att_items)
    shapes = [a.shape[-1] for a in att_items]
    ragged = len(set(shapes)) > 1 or isinstance(attention, (list, tuple))

    # tokens
    tok_lists = None
    if tokens is not None:
        if isinstance(tokens, np.ndarray):
            tokens = tokens.tolist()
        tokens = list(tokens)
        if tokens and all(isinstance(t, str) for t in tokens):
            tok_lists = [tokens]
        else:
            tok_lists = [[str(t) for t in row] for row in tokens]
        if len(tok_lists) != n_samples:
            raise value_error("tokens", f"one token list per sample ({n_samples})",
                              f"{len(tok_lists)} lists", "pass a list of str lists, one per sample")
        for i, row in enumerate(tok_lists):
            if not all(isinstance(t, str) for t in row):
                raise value_error(f"tokens[{i}]", "a list of str", row, "convert the tokens to str")
            if len(row) > n:
                raise value_error(f"tokens[{i}]", f"at most {n} tokens (the attention length)",
                                  len(row), "drop tokens or pass matching attention")

    # lengths
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.ndim == 0:
            lengths = lengths.reshape(1)
        if lengths.shape != (n_samples,):
            raise shape_error("lengths", f"({n_samples},)", lengths.shape, "pass one length per sample")
        if lengths.dtype.kind not in "iu":
            if lengths.dtype.kind == "f" and np.all(lengths == np.round(lengths)):
                lengths = lengths.astype(np.int64)
            else:
                raise value_error("lengths", "integers", lengths.dtype, "pass ints")
        lengths = lengths.astype(np.int64)
        bad = (lengths < 1) | (lengths > np.array(shapes))
        if bad.any():
            i = int(np.argmax(bad))
            raise value_error(f"lengths[{i}]", f"an int in [1, {shapes[i]}]", int(lengths[i]),
                              "pass the number of valid tokens of that sample")
    elif ragged:
        lengths = np.array(shapes, dtype=np.int64)
    elif tok_lists is not None:
        lengths = np.array([max(len(r), 1) for r in tok_lists], dtype=np.int64)
    else:
        lengths = np.full(n_samples, n, dtype=np.int64)
    if tok_lists is not None:
        for i, row in enumerate(tok_lists):
            if len(row) not in (int(lengths[i]), n):
                raise value_error(f"tokens[{i}]", f"{int(lengths[i])} tokens (the sample's length)",
                                  len(row), "pass one token per valid position")

    dtype = _float_dtype(*att_items)
    data_vars = {
        "attention": (ATTENTION_DIMS, _pad_positions("attention", att_items, lengths, n, (2, 3), dtype)),
        "length": (("sample",), lengths),
    }

    if gradient is not None:
        g_items, _ = _as_samples("gradient", gradient, 4, "(sample, layer, head, query, key)")
        if len(g_items) != n_samples:
            raise shape_error("gradient", f"{n_samples} samples like attention", len(g_items),
                              "pass one gradient per attention sample")
        for i, (g, a) in enumerate(zip(g_items, att_items)):
            if g.shape[:2] != a.shape[:2]:
                raise shape_error(f"gradient[{i}]", f"({a.shape[0]}, {a.shape[1]}, query, key): "
                                  f"the layers and heads of attention[{i}]", g.shape,
                                  "save one gradient per attention weight (same layers and heads)")
        data_vars["gradient"] = (ATTENTION_DIMS, _pad_positions(
            "gradient", g_items, lengths, n, (2, 3), _float_dtype(*g_items)))

    dim_sizes = {}
    for name, value in (("q", q), ("k", k), ("v", v)):
        if value is None:
            continue
        items, _ = _as_samples(name, value, 4, "(sample, layer, head, position, dim)")
        if len(items) != n_samples:
            raise shape_error(name, f"{n_samples} samples like attention", len(items),
                              f"pass one {name} per attention sample")
        for i, (x, a) in enumerate(zip(items, att_items)):
            if x.shape[:2] != a.shape[:2]:
                raise shape_error(f"{name}[{i}]", f"({a.shape[0]}, {a.shape[1]}, position, dim): "
                                  f"the layers and heads of attention[{i}]", x.shape,
                                  f"store {name} for the same layers and heads as the attention")
        width = items[0].shape[-1]
        dim = "dim"
        if "dim" in dim_sizes and dim_sizes["dim"] != width:
            if name != "v":
                raise shape_error(name, f"last axis {dim_sizes['dim']} like the other of q/k",
                                  items[0].shape, "give q and k the same head width")
            dim = "dim_v"
        dim_sizes[dim] = width
        data_vars[name] = ((*QKV_LEAD, dim), _pad_positions(
            name, items, lengths, n, (2,), _float_dtype(*items)))

    if embedding is not None:
        if isinstance(embedding, (list, tuple)):
            emb = np.stack([np.asarray(e) for e in embedding])
        else:
            emb = np.asarray(embedding)
            _check_real("embedding", emb)
            if emb.ndim == 1:
                emb = emb[None]
        if emb.ndim != 2 or emb.shape[0] != n_samples:
            raise shape_error("embedding", f"({n_samples}, feature)", emb.shape,
                              "pass one embedding vector per sample")
        data_vars["embedding"] = (("sample", "feature"), emb)

    coords = {}
    if tok_lists is not None:
        tok = np.empty((n_samples, n), dtype=object)
        tok[...] = ""
        for i, row in enumerate(tok_lists):
            tok[i, : len(row)] = row
        coords["token"] = (("sample", "position"), tok)

    all_attrs = {"attnkit_schema": SCHEMA_VERSION, "model": str(model), "source": str(source),
                 "created_with": __version__}
    for key, value in (attrs or {}).items():
        if key in RESERVED_ATTRS:
            raise value_error(f"attrs[{key!r}]", "no reserved key", key,
                              "leave attnkit_schema to attnkit")
        problem = check_attr(key, value)
        if problem is not None:
            raise TypeError(problem + ".")
        all_attrs[key] = value
    return xr.Dataset(data_vars, coords=coords, attrs=all_attrs)

