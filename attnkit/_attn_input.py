"""Validate stored attention tensors for the interpretation methods.

:func:`attention_stack` turns ``(..., layer, head, n, n)`` attention (plus
optional lengths) into the kernels' flat ``(S, L, H, n, n)`` form, and
:func:`apply_to_xarray` runs a NumPy-level method over an xarray Dataset or
DataArray with :func:`xarray.apply_ufunc` (``dask="parallelized"``), so
chunked and distributed datasets work without code changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from . import errors

ATTENTION_CORE_DIMS = ("layer", "head", "query", "key")


@dataclass
class AttentionStack:
    """Attention flattened to (S, L, H, n, n) with per-sample valid lengths."""

    data: np.ndarray  # (S, L, H, n, n), float32 or float64, C-contiguous
    lengths: np.ndarray  # (S,) int64
    batch_shape: tuple

    @property
    def n(self) -> int:
        return int(self.data.shape[-1])

    def unflatten(self, result: np.ndarray) -> np.ndarray:
        """Give ``result`` (S, ...) back the caller's leading batch shape."""
        return result.reshape(self.batch_shape + result.shape[1:])


def is_xarray(obj) -> bool:
    """True for an xarray Dataset or DataArray (without importing xarray)."""
    return type(obj).__module__.startswith("xarray.")


def as_lengths(name: str, lengths, batch_shape: tuple, n: int) -> np.ndarray:
    """Validate ``lengths`` (None, an int or an int array of ``batch_shape``) into (S,) int64."""
    size = int(np.prod(batch_shape, dtype=np.int64))
    if lengths is None:
        return np.full(size, n, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise errors.value_error(name, "integers", f"dtype {arr.dtype}",
                                     f"pass whole numbers, e.g. {name}.astype(int)")
    if arr.ndim == 0:
        arr = np.full(batch_shape, int(arr), dtype=np.int64)
    if arr.shape != batch_shape:
        raise errors.shape_error(name, f"{batch_shape} (the leading dims of the attention)",
                                 arr.shape, "give one length per sample")
    arr = arr.reshape(-1).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > n):
        bad = int(arr[(arr < 0) | (arr > n)][0])
        raise errors.value_error(name, f"lengths in [0, {n}]", bad,
                                 "lengths count valid tokens and cannot exceed the sequence axis")
    return arr


def attention_stack(attn, lengths=None, *, name: str = "attn",
                    check_values: bool = True) -> AttentionStack:
    """Check ``attn`` (..., layer, head, n, n) and flatten its leading dims.

    Parameters
    ----------
    attn : array_like
        Attention weights; float32 stays float32, other floats become float64.
    lengths : int or array of ints, optional
        Valid tokens per sample (shape = the leading dims). Default: all ``n``.
    check_values : bool
        Reject NaN, inf and negative weights inside the valid block.

    Examples
    --------
    >>> import numpy as np
    >>> stack = attention_stack(np.full((2, 3, 1, 4, 4), 0.25), lengths=[4, 2])
    >>> stack.data.shape, stack.lengths.tolist()
    ((2, 3, 1, 4, 4), [4, 2])
    """
    a = np.asarray(attn)
    if a.dtype.kind not in "f" and a.dtype.kind != "V":
        raise errors.dtype_error(name, a.dtype, f"cast it, e.g. {name}.astype(np.float64)")
    if a.dtype != np.float32:
        a = a.astype(np.float64)
    if a.ndim < 4 or a.shape[-1] != a.shape[-2]:
        raise errors.shape_error(name, "(..., layer, head, n, n)", a.shape,
                                 "stack the per-layer attention as (layer, head, query, key)")
    n_layers, n_heads, n = a.shape[-4], a.shape[-3], a.shape[-1]
    if n_layers == 0 or n_heads == 0:
        raise errors.shape_error(name, "at least one layer and one head", a.shape,
                                 "pass non-empty attention")
    batch_shape = a.shape[:-4]
    lens = as_lengths("lengths", lengths, batch_shape, n)
    # An explicit sample count: reshape(-1, ...) is ambiguous when n = 0.
    n_samples = int(np.prod(batch_shape, dtype=np.int64))
    flat = np.ascontiguousarray(a.reshape((n_samples,) + a.shape[-4:]))
    if check_values and flat.size:
        from .kernels.cpu.rollout import first_invalid

        bad = first_invalid(flat, lens)
        if (bad >= 0).any():
            s = int(np.flatnonzero(bad >= 0)[0])
            length = int(lens[s])
            layer, h, i, j = np.unravel_index(int(bad[s]), (n_layers, n_heads, length, length))
            value = flat[s, layer, h, i, j]
            where = np.unravel_index(s, batch_shape) if batch_shape else ()
            raise errors.value_error(
                name, "finite, non-negative weights inside each sample's length",
                f"{value} at sample {tuple(int(x) for x in where)}, layer {layer}, head {h}, "
                f"query {i}, key {j}",
                "check the source tensors, or pass lengths so padding is excluded")
    return AttentionStack(flat, lens, batch_shape)


def attention_and_lengths(obj, *, variable: str = "attention"):
    """The attention DataArray and lengths DataArray (or None) of an xarray object."""
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        if variable not in obj:
            raise errors.value_error("ds", f"a dataset with a {variable!r} variable",
                                     f"variables {sorted(obj.data_vars)}",
                                     "build one with ak.from_arrays or ak.open_dataset")
        lengths = obj["length"] if "length" in obj else None
        return obj[variable], lengths
    return obj, None


def check_core_dims(da, dims, name: str) -> None:
    missing = [d for d in dims if d not in da.dims]
    if missing:
        raise errors.value_error(name, f"dims including {dims}", f"dims {da.dims}",
                                 f"rename the dims, e.g. da.rename(...) to {dims}")


_SAMPLE_IN_MESSAGE = re.compile(r"at sample \((\d+),\)")


def renumber_samples(exc: Exception, sample_ids) -> Exception:
    """``exc`` with "at sample (i,)" naming the sample's number in the whole
    dataset, not its index in the chunk or block the kernel was given.

    Examples
    --------
    >>> str(renumber_samples(ValueError("attn: got nan at sample (1,), layer 0"), [7, 8, 9]))
    'attn: got nan at sample (8,), layer 0'
    """
    match = _SAMPLE_IN_MESSAGE.search(str(exc))
    if match is None or sample_ids is None or int(match.group(1)) >= len(sample_ids):
        return exc
    message = str(exc)
    number = int(np.asarray(sample_ids)[int(match.group(1))])
    renamed = type(exc)(message[: match.start()] + f"at sample ({number},)" + message[match.end():])
    return renamed.with_traceback(exc.__traceback__)


def _sample_ids(attn):
    """Sample numbers of ``attn`` (its integer ``sample`` coordinate, else 0..S-1),
    chunked like it, when ``sample`` is its only batch dim; else None."""
    import xarray as xr

    batch = [d for d in attn.dims if d not in ATTENTION_CORE_DIMS]
    if batch != ["sample"]:
        return None
    if "sample" in attn.coords and attn["sample"].dtype.kind in "iu":
        ids = xr.DataArray(np.asarray(attn["sample"].values), dims="sample")
    else:
        ids = xr.DataArray(np.arange(attn.sizes["sample"]), dims="sample")
    if "sample" in attn.coords:
        ids = ids.assign_coords(sample=attn["sample"].values)
    if attn.chunks is not None:
        ids = ids.chunk({"sample": attn.chunksizes["sample"]})
    return ids


#: Result dims that index tokens, and the name of the token coordinate each gets.
_TOKEN_DIMS = {"query": "query_token", "key": "key_token", "position": "token"}


def label_result(result, obj):
    """``result`` with the labels of ``obj`` it lost on the way through the kernels.

    Every ``layer`` or ``head`` dim without a coordinate gets its integer index;
    every ``query``, ``key`` or ``position`` dim gets the tokens of ``obj`` (a
    dataset with a ``token`` (sample, position) coordinate) as ``query_token``,
    ``key_token`` or ``token``. Works on a DataArray or a Dataset result.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((1, 1, 1, 2, 2), 0.5), tokens=[["[CLS]", "hi"]])
    >>> r = label_result(ak.rollout(ds.attention, lengths=ds.length), ds)
    >>> r.key_token.values.tolist()
    [['[CLS]', 'hi']]
    """
    import xarray as xr

    labels = {dim: np.arange(result.sizes[dim]) for dim in ("layer", "head")
              if dim in result.dims and dim not in result.coords}
    tokens = obj.coords.get("token") if isinstance(obj, xr.Dataset) else None
    if tokens is not None and tokens.dims == ("sample", "position"):
        tokens = tokens.load()
        for dim, name in _TOKEN_DIMS.items():
            if dim not in result.dims or name in result.coords:
                continue
            if result.sizes[dim] != tokens.sizes["position"] or "sample" not in result.dims:
                continue
            labels[name] = tokens.rename(position=dim).variable
    return result.assign_coords(labels) if labels else result


def apply_to_xarray(func, obj, *, lengths=None, output_core_dims=(("query", "key"),),
                    output_dtypes=(np.float64,), output_sizes=None, name: str = "attn",
                    extra=(), extra_core_dims=()):
    """Run ``func(attn, *extra, lengths=...)`` over ``obj`` with apply_ufunc.

    ``func`` takes NumPy arrays with the core dims last and returns one array
    per entry of ``output_core_dims``. Chunked (dask) inputs stay lazy.
    """
    import xarray as xr

    attn, ds_lengths = attention_and_lengths(obj)
    check_core_dims(attn, ATTENTION_CORE_DIMS, name)
    if lengths is None:
        lengths = ds_lengths
    if lengths is None:
        lengths = xr.DataArray(attn.sizes["query"])
    elif not isinstance(lengths, xr.DataArray):
        batch = [d for d in attn.dims if d not in ATTENTION_CORE_DIMS]
        lengths = xr.DataArray(np.asarray(lengths), dims=batch[: np.ndim(lengths)])

    ids = _sample_ids(attn)
    if ids is None:
        ids = xr.DataArray(-1)  # no sample axis: nothing to renumber

    def call(a, *rest):
        *others, sample_ids, lens = rest
        try:
            return func(a, *others, lengths=lens)
        except ValueError as exc:
            raise renumber_samples(exc, None if np.ndim(sample_ids) == 0 else
                                   np.asarray(sample_ids).reshape(-1)) from None

    gufunc_kwargs = {"allow_rechunk": True}
    if output_sizes:
        gufunc_kwargs["output_sizes"] = dict(output_sizes)
    out = xr.apply_ufunc(
        call, attn, *extra, ids, lengths,
        input_core_dims=[list(ATTENTION_CORE_DIMS)] + [list(d) for d in extra_core_dims] + [[], []],
        output_core_dims=[list(d) for d in output_core_dims],
        dask="parallelized",
        output_dtypes=list(output_dtypes),
        dask_gufunc_kwargs=gufunc_kwargs,
        keep_attrs=False,
    )
    if isinstance(out, tuple):
        return tuple(label_result(part, obj) for part in out)
    return label_result(out, obj)
