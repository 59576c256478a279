"""Attention datasets: build, check, save and open (schema version 1).

An attention dataset is an :class:`xarray.Dataset` holding

* ``attention`` (sample, layer, head, query, key): row-stochastic over ``key``
  inside each sample's valid length; the padding is NaN so accidental use shows;
* ``length`` (sample) int: the number of valid tokens of each sample;
* ``token`` (sample, position) str coordinate, padded with ``""``;
* optional ``q``, ``k``, ``v`` (sample, layer, head, position, dim),
  ``gradient`` (same dims as ``attention``), ``embedding`` (sample, feature) and
  ``impact`` (sample, position, method);
* attrs ``attnkit_schema=1``, ``model``, ``source``, ``created_with``. Attribute
  values must be str, int or float (or a flat sequence of numbers, e.g.
  ``grid=(h, w)``); bool and dict are rejected because netCDF cannot hold them.

xarray is imported inside the functions and zarr only when a zarr store is
written or read, so ``import attnkit`` stays light.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ._files import atomic_file, normal_mode
from .errors import dtype_error, shape_error, value_error

__all__ = ["SCHEMA_VERSION", "from_arrays", "validate", "save_dataset", "open_dataset"]

SCHEMA_VERSION = 1

ATTENTION_DIMS = ("sample", "layer", "head", "query", "key")
_QKV_LEAD = ("sample", "layer", "head", "position")
_RESERVED_ATTRS = ("attnkit_schema",)


# ----------------------------------------------------------------------------- helpers
def _xr():
    import xarray as xr

    from . import accessor  # noqa: F401  (registers ds.attn on datasets attnkit makes)

    return xr


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


def _check_attr(key, value) -> str | None:
    """Return a problem line for a bad attribute value, or None."""
    if isinstance(value, (bool, np.bool_)):
        return (f"attrs[{key!r}]: expected str, int or float, got bool {value!r}. "
                f"Fix: store it as an int (0/1) or a str")
    if isinstance(value, dict):
        return (f"attrs[{key!r}]: expected str, int or float, got dict. "
                f"Fix: flatten it into separate attrs or store json.dumps(value)")
    if isinstance(value, (str, numbers.Integral, numbers.Real)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        flat = np.asarray(value)
        if flat.ndim == 1 and flat.dtype.kind in "iuf":
            return None
    return (f"attrs[{key!r}]: expected str, int or float, got {type(value).__name__}. "
            f"Fix: convert it to a str, int or float")


def _schema_problem(attrs) -> str | None:
    if "attnkit_schema" not in attrs:
        return ("attrs['attnkit_schema']: expected 1, got nothing (missing). "
                "Fix: set ds.attrs['attnkit_schema'] = 1, or build the dataset with ak.from_arrays")
    version = attrs["attnkit_schema"]
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, numbers.Integral):
        return (f"attrs['attnkit_schema']: expected the int {SCHEMA_VERSION}, got {version!r}. "
                f"Fix: set ds.attrs['attnkit_schema'] = {SCHEMA_VERSION}")
    version = int(version)
    if version > SCHEMA_VERSION:
        return (f"attrs['attnkit_schema']: expected {SCHEMA_VERSION}, got {version}: the dataset was "
                f"written by a newer attnkit. Fix: upgrade attnkit (pip install -U attnkit)")
    if version != SCHEMA_VERSION:
        return (f"attrs['attnkit_schema']: expected {SCHEMA_VERSION}, got {version}. "
                f"Fix: rebuild the dataset with ak.from_arrays")
    return None


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
    xr = _xr()
    from ._version import __version__

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
        data_vars[name] = ((*_QKV_LEAD, dim), _pad_positions(
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
        if key in _RESERVED_ATTRS:
            raise value_error(f"attrs[{key!r}]", "no reserved key", key,
                              "leave attnkit_schema to attnkit")
        problem = _check_attr(key, value)
        if problem is not None:
            raise TypeError(problem + ".")
        all_attrs[key] = value
    return xr.Dataset(data_vars, coords=coords, attrs=all_attrs)


# ----------------------------------------------------------------------------- validate
def _where(index, names) -> str:
    return ", ".join(f"{n} {int(i)}" for n, i in zip(names, index))


_VALIDATE_BLOCK_BYTES = 32 << 20  # attention read per step by validate


def _attention_problems(att, n: int, lengths, atol: float) -> list[str]:
    """The attention checks of :func:`validate`, over blocks of samples.

    Only one block (about 32 MB) is in memory at a time, so a lazily opened
    store of any size can be validated. Counts add up over blocks; "first" is
    the first in C order and "worst" the largest over the whole array.
    """
    n_samples = att.sizes["sample"]
    if lengths is None:
        lengths = np.full(n_samples, n, dtype=np.int64)
    per_sample = max(1, int(np.prod(att.shape[1:], dtype=np.int64)) * att.dtype.itemsize)
    step = max(1, _VALIDATE_BLOCK_BYTES // per_sample)
    names = ("sample", "layer", "head", "query", "key")
    count = {"nan": 0, "negative": 0, "off": 0, "padding": 0}
    first: dict = {}
    worst = None  # (deviation, index, sum)
    for start in range(0, n_samples, step):
        block = np.asarray(att.isel(sample=slice(start, start + step)).values)
        valid_pos = np.arange(n)[None, :] < lengths[start:start + step, None]  # (sample, position)
        valid = valid_pos[:, None, None, :, None] & valid_pos[:, None, None, None, :]
        nan = np.isnan(block)
        with np.errstate(invalid="ignore"):
            negative = (block < 0) & valid
        sums = np.where(valid, np.nan_to_num(block, nan=0.0), 0.0).sum(axis=-1)
        off = (np.abs(sums - 1.0) > atol) & valid_pos[:, None, None, :]
        masks = {"nan": nan & valid, "negative": negative, "padding": ~nan & ~valid}
        for key, mask in masks.items():
            hits = int(mask.sum())
            if hits and key not in first:
                idx = np.unravel_index(np.argmax(mask), mask.shape)
                first[key] = ((idx[0] + start, *idx[1:]), block[idx])
            count[key] += hits
        if off.any():
            count["off"] += int(off.sum())
            deviation = np.where(off, np.abs(sums - 1.0), -1.0)
            idx = np.unravel_index(np.argmax(deviation), sums.shape)
            if worst is None or deviation[idx] > worst[0]:
                worst = (deviation[idx], (idx[0] + start, *idx[1:]), sums[idx])

    problems = []
    if count["nan"]:
        problems.append(f"attention: expected no NaN inside the valid length, got "
                        f"{count['nan']} NaN values (first at {_where(first['nan'][0], names)}). "
                        f"Fix: recompute those weights, or lower that sample's length")
    if count["negative"]:
        idx, value = first["negative"]
        problems.append(f"attention: expected probabilities >= 0, got {count['negative']} "
                        f"negative values (first at {_where(idx, names)}: {value:.4g}). "
                        f"Fix: store softmax probabilities, not scores")
    if count["off"]:
        _, idx, total = worst
        problems.append(f"attention: expected rows inside the valid length to sum to 1 "
                        f"(atol={atol:g}), got {count['off']} rows off (worst sum "
                        f"{total:.6g} at {_where(idx, names[:4])}). Fix: normalise with a "
                        f"softmax over the valid keys, or pass a larger atol")
    if count["padding"]:
        problems.append(f"attention: expected NaN in the padding (beyond each sample's length), "
                        f"got {count['padding']} non-NaN values (first at "
                        f"{_where(first['padding'][0], names)}). Fix: set the padding to NaN, e.g. "
                        f"rebuild with ak.from_arrays(..., lengths=...)")
    return problems


def validate(ds, *, atol: float = 1e-4) -> None:
    """Check that ``ds`` follows the attention-dataset schema (version 1).

    Every violation is collected; one ValueError lists them all, one per line,
    each with a fix. A valid dataset passes silently.

    Parameters
    ----------
    ds : xarray.Dataset
    atol : float
        Tolerance on the row sums of ``attention`` inside the valid length.

    Raises
    ------
    ValueError
        Listing every problem found.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> a = np.full((1, 2, 3, 3), 1 / 3)
    >>> ds = ak.from_arrays(a)
    >>> ak.validate(ds)
    >>> ds.attrs["ok"] = True
    >>> ds["attention"][0, 0, 0, 0, 0] = -1.0
    >>> ak.validate(ds)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: invalid attnkit dataset (3 problems):
    - attention: ... negative ...
    - attention: ... sum to 1 ...
    - attrs['ok']: expected str, int or float, got bool True. Fix: ...
    """
    xr = _xr()
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds: expected an xarray.Dataset, got {type(ds).__name__}. "
                        f"Fix: build one with ak.from_arrays or open one with ak.open_dataset.")
    problems: list[str] = []

    att = None
    n = None
    if "attention" not in ds.variables:
        problems.append("attention: expected a variable (sample, layer, head, query, key), got "
                        "nothing (missing). Fix: build the dataset with ak.from_arrays")
    elif ds["attention"].dims != ATTENTION_DIMS:
        problems.append(f"attention: expected dims {ATTENTION_DIMS}, got {ds['attention'].dims}. "
                        f"Fix: rename/transpose, e.g. ds.attention.transpose{ATTENTION_DIMS}")
    elif ds.sizes["query"] != ds.sizes["key"]:
        problems.append(f"attention: expected as many queries as keys, got query={ds.sizes['query']}"
                        f", key={ds.sizes['key']}. Fix: store self-attention padded to one length")
    elif ds["attention"].dtype.kind != "f":
        problems.append(f"attention: expected a float dtype, got {ds['attention'].dtype}. "
                        f"Fix: ds['attention'] = ds.attention.astype('float32')")
    else:
        att = ds["attention"]  # read block by block below: a store may not fit in memory
        n = att.sizes["key"]

    n_samples = ds.sizes.get("sample")
    lengths = None
    if "length" not in ds.variables:
        problems.append("length: expected an int variable (sample), got nothing (missing). "
                        "Fix: ds['length'] = ('sample', valid_token_counts)")
    else:
        length = ds["length"]
        if length.dims != ("sample",):
            problems.append(f"length: expected dims ('sample',), got {length.dims}. "
                            f"Fix: store one length per sample")
        elif length.dtype.kind not in "iu":
            problems.append(f"length: expected an int dtype, got {length.dtype}. "
                            f"Fix: ds['length'] = ds.length.astype('int64')")
        else:
            values = np.asarray(length.values).astype(np.int64)
            upper = n if n is not None else ds.sizes.get("position")
            bad = values < 1
            if upper is not None:
                bad |= values > upper
            if bad.any():
                i = int(np.argmax(bad))
                problems.append(f"length: expected ints in [1, {upper}], got {int(values[i])} at "
                                f"sample {i} ({int(bad.sum())} bad). Fix: store the number of valid "
                                f"tokens of each sample")
            else:
                lengths = values

    if att is not None:
        problems += _attention_problems(att, n, lengths, atol)

    # optional variables
    expected_dims = {
        "gradient": lambda d: d == ATTENTION_DIMS,
        "q": lambda d: len(d) == 5 and d[:4] == _QKV_LEAD,
        "k": lambda d: len(d) == 5 and d[:4] == _QKV_LEAD,
        "v": lambda d: len(d) == 5 and d[:4] == _QKV_LEAD,
        "embedding": lambda d: len(d) == 2 and d[0] == "sample",
        "impact": lambda d: d == ("sample", "position", "method"),
        "token": lambda d: d == ("sample", "position"),
    }
    described = {
        "gradient": str(ATTENTION_DIMS),
        "q": "('sample', 'layer', 'head', 'position', 'dim')",
        "k": "('sample', 'layer', 'head', 'position', 'dim')",
        "v": "('sample', 'layer', 'head', 'position', 'dim')",
        "embedding": "('sample', 'feature')",
        "impact": "('sample', 'position', 'method')",
        "token": "('sample', 'position')",
    }
    for name, ok in expected_dims.items():
        if name in ds.variables and not ok(ds[name].dims):
            problems.append(f"{name}: expected dims {described[name]}, got {ds[name].dims}. "
                            f"Fix: rename/transpose {name} to those dims")
    if n is not None and "position" in ds.sizes and ds.sizes["position"] != n:
        problems.append(f"position: expected size {n} (the attention length), got "
                        f"{ds.sizes['position']}. Fix: pad or cut token/q/k/v to {n} positions")
    if "token" in ds.variables and ds["token"].dtype.kind not in "OUS" and \
            type(ds["token"].dtype).__name__ != "StringDType":
        problems.append(f"token: expected str values, got dtype {ds['token'].dtype}. "
                        f"Fix: store the tokens as str")

    # attrs
    schema = _schema_problem(ds.attrs)
    if schema is not None:
        problems.append(schema)
    for key, value in ds.attrs.items():
        if key == "attnkit_schema":
            continue
        problem = _check_attr(key, value)
        if problem is not None:
            problems.append(problem)
    for name, var in ds.variables.items():
        for key, value in var.attrs.items():
            problem = _check_attr(key, value)
            if problem is not None:
                problems.append(f"{name}." + problem)

    if n_samples is None and att is not None:
        problems.append("sample: expected a sample dim, got none. Fix: add one with expand_dims")
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise ValueError(f"invalid attnkit dataset ({count}):\n"
                         + "\n".join(f"- {p}." for p in problems))


# ----------------------------------------------------------------------------- storage
def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = format.lower()
        if fmt in ("nc", "netcdf", "netcdf4", "h5netcdf"):
            return "netcdf"
        if fmt == "zarr":
            return "zarr"
        raise value_error("format", "'netcdf' or 'zarr'", format, "pass format='netcdf' or 'zarr'")
    suffix = path.suffix.lower()
    if suffix in (".nc", ".nc4", ".netcdf", ".h5"):
        return "netcdf"
    if suffix == ".zarr":
        return "zarr"
    raise value_error("path", "a name ending in .nc or .zarr", str(path),
                      "use a .nc or .zarr suffix, or pass format='netcdf' / 'zarr'")


def _clean_for_writing(ds):
    """A shallow copy with per-variable encodings dropped (they may come from
    another backend) and the token coordinate as object-dtype str."""
    out = ds.copy()
    for name in out.variables:
        out[name].encoding = {}
    if "token" in out.variables:
        out = out.assign_coords(token=out["token"].astype(object))
    return out


def _write_netcdf(ds, tmp_path: str) -> None:
    encoding = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "OUST" or type(var.dtype).__name__ == "StringDType" or var.ndim == 0:
            continue
        enc = {"zlib": True, "complevel": 4, "shuffle": True}
        if var.dims and var.dims[0] == "sample" and var.ndim > 1:
            enc["chunksizes"] = (1, *var.shape[1:])
        encoding[name] = enc
    ds.to_netcdf(tmp_path, engine="h5netcdf", format="NETCDF4", encoding=encoding)


def _zarr_kwargs() -> dict:
    import zarr

    major = int(str(zarr.__version__).split(".")[0])
    return {"zarr_format": 2} if major >= 3 else {}


def _write_zarr(ds, tmp_path: str) -> None:
    encoding = {}
    for name, var in ds.variables.items():
        if var.dims and var.dims[0] == "sample" and var.ndim > 1 and var.dtype.kind != "O":
            encoding[name] = {"chunks": (1, *var.shape[1:])}
    ds.to_zarr(tmp_path, mode="w", encoding=encoding, consolidated=True, **_zarr_kwargs())


def _exchange(a, b) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    A directory cannot be renamed over a non-empty one, so replacing a zarr
    store otherwise takes two renames (old store aside, new one in), and a
    process killed between them would leave no store at the target. Returns
    False where the call or the file system does not support it.
    """
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(os.fspath(a)), at_fdcwd, os.fsencode(os.fspath(b)),
                     rename_exchange) == 0


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def _wait_for_zarr_writes(timeout: float = 60.0) -> None:
    """Let zarr's in-flight chunk writes finish after a failed or interrupted write.

    zarr 3 writes chunks from its own event-loop thread. When the calling
    thread stops early (an exception, or Ctrl-C), that thread goes on writing
    the rest of the array into the temporary store, and would re-create it
    after it is removed. Waiting (not cancelling: other threads may be using
    zarr's loop) lets the temporary store be removed for good.
    """
    try:
        from zarr.core import sync as zarr_sync
    except ImportError:  # zarr 2 writes synchronously
        return
    loop = zarr_sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def others_done():
        import asyncio

        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    import asyncio

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(others_done(), loop).result(timeout + 1)


def _remove_store(path: str) -> None:
    """Remove a temporary zarr store once no write can bring it back."""
    import time

    _wait_for_zarr_writes()
    for _ in range(20):  # a chunk already handed to a worker thread may still land
        _remove(path)
        time.sleep(0.01)
        if not os.path.lexists(path):
            return


def save_dataset(ds, path, *, format: str | None = None) -> None:
    """Validate ``ds`` and write it atomically to netCDF4 (``.nc``) or zarr (``.zarr``).

    netCDF goes through h5netcdf with zlib compression, shuffle and one sample
    per chunk; zarr stores the tokens as variable-length str. The data is
    first written to a temporary file (or directory) next to ``path`` and then
    renamed into place, so a failure mid-write leaves any previous file intact
    and no temporary files behind.

    Parameters
    ----------
    ds : xarray.Dataset
        A schema-1 attention dataset (see :func:`validate`).
    path : str or os.PathLike
    format : {"netcdf", "zarr"}, optional
        Taken from the suffix of ``path`` when not given.

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((2, 1, 1, 2, 2), 0.5), tokens=[["hi", "ü"], ["a", "b"]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ak.save_dataset(ds, os.path.join(tmp, "attn.nc"))
    ...     back = ak.open_dataset(os.path.join(tmp, "attn.nc"))
    ...     sorted(os.listdir(tmp))
    ['attn.nc']
    >>> back.identical(ds)
    True
    """
    validate(ds)
    write_atomic(ds, path, format=format)


def write_atomic(ds, path, *, format: str | None = None) -> None:
    """Write any Dataset to netCDF4 or zarr atomically, without schema checks.

    :func:`save_dataset` validates and then calls this; analysis results
    (head statistics, rollout, flow) that are not attention datasets are
    written with it directly.

    Examples
    --------
    >>> import os, tempfile, xarray as xr
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_atomic(xr.Dataset({"x": ("a", [1.0, 2.0])}), os.path.join(tmp, "r.nc"))
    ...     sorted(os.listdir(tmp))
    ['r.nc']
    """
    path = Path(os.fspath(path))
    fmt = _format_of(path, format)
    ds = _clean_for_writing(ds)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: expected an existing directory {parent}, got none. "
                                f"Fix: create it first (os.makedirs)")
    prefix = f".{path.name}.tmp-"
    if fmt == "netcdf":
        with atomic_file(path, suffix=".nc") as tmp:
            _write_netcdf(ds, tmp)
        return

    tmp = tempfile.mkdtemp(prefix=prefix, suffix=".zarr", dir=parent)
    aside = None
    try:
        _write_zarr(ds, tmp)
        os.chmod(tmp, normal_mode(directory=True))
        if os.path.lexists(path) and _exchange(tmp, path):
            # one atomic step: path is the new store, tmp holds the old one
            _remove(tmp)
            return
        if os.path.lexists(path):
            aside = tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent)
            os.rmdir(aside)
            os.rename(path, aside)
        try:
            os.rename(tmp, path)
        except BaseException:
            if aside is not None:
                os.rename(aside, path)
                aside = None
            raise
    except BaseException:
        _remove_store(tmp)
        raise
    if aside is not None:
        _remove(aside)


def _dask_available() -> bool:
    try:
        import dask  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_chunk_warning():
    """Silence xarray's warning that lazy chunks split stored chunks: the small
    1-D variables (``length``) are stored whole, and splitting them is harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified chunks separate")
        yield


def read_error(path, exc: BaseException) -> ValueError:
    """The ValueError for a dataset file that cannot be read (corrupt, truncated,
    not netCDF/zarr). Lazily opened data fails only when a chunk is read: callers
    that compute on it use this for the same message."""
    path = Path(os.fspath(path))
    zarr_like = path.is_dir() or path.suffix.lower() == ".zarr"
    kind, fmt = ("zarr store", "zarr") if zarr_like else ("netCDF4 file", "netcdf")
    return ValueError(f"{path}: expected a readable {kind}, got an unreadable or truncated one "
                      f"({type(exc).__name__}: {exc}). Fix: re-create it with ak.save_dataset; "
                      f"the file may be corrupt or not a {fmt} file")


def open_dataset(path, *, chunks=None):
    """Open an attention dataset saved by :func:`save_dataset` (netCDF or zarr).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.nc`` file or a ``.zarr`` directory.
    chunks : dict or "auto", optional
        When given and dask is installed, the data stays lazy (dask arrays);
        otherwise everything is loaded into memory and the file closed.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupt or truncated, is not an attnkit dataset, or was
        written by a newer attnkit (schema version above 1).

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((1, 1, 4, 4), 0.25), tokens=list("abcd"))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ak.save_dataset(ds, os.path.join(tmp, "attn.zarr"))
    ...     back = ak.open_dataset(os.path.join(tmp, "attn.zarr"))
    >>> back.token.values.tolist(), int(back.attrs["attnkit_schema"])
    ([['a', 'b', 'c', 'd']], 1)
    """
    xr = _xr()
    path = Path(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected an attnkit dataset (.nc file or .zarr directory), "
                                f"got no such file. Fix: check the path, or write one with "
                                f"ak.save_dataset")
    fmt = "zarr" if (path.is_dir() or path.suffix.lower() == ".zarr") else "netcdf"
    lazy = chunks is not None and _dask_available()
    try:
        if fmt == "zarr":
            import zarr  # noqa: F401

            with _quiet_chunk_warning():
                ds = xr.open_zarr(path, chunks=chunks if lazy else None)
        else:
            with _quiet_chunk_warning():
                ds = xr.open_dataset(path, engine="h5netcdf", chunks=chunks if lazy else None)
        if not lazy:
            loaded = ds.load()
            ds.close()
            ds = loaded
    except ImportError:
        raise
    except Exception as exc:
        raise read_error(path, exc) from exc
    problem = _schema_problem(ds.attrs)
    if problem is not None:
        ds.close()
        raise ValueError(f"{path}: {problem}.")
    if "token" in ds.variables and ds["token"].dtype != object:
        ds = ds.assign_coords(token=ds["token"].astype(object))
    if "attnkit_schema" in ds.attrs:
        ds.attrs["attnkit_schema"] = int(ds.attrs["attnkit_schema"])
    for name in ds.variables:
        ds[name].encoding.pop("source", None)
    return ds
