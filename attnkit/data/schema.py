"""The attention-dataset schema (version 1): :func:`validate` and the attr checks.

What a valid dataset holds is described in :mod:`attnkit.data`. The names
here (dims, reserved attrs, the per-attr and schema-version checks) are shared
with :mod:`attnkit.data.build`, which makes datasets, and
:mod:`attnkit.data.io`, which refuses to open a newer schema.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["SCHEMA_VERSION", "ATTENTION_DIMS", "QKV_LEAD", "RESERVED_ATTRS", "check_attr",
           "schema_problem", "validate"]

SCHEMA_VERSION = 1

#: dims of ``attention`` and ``gradient``
ATTENTION_DIMS = ("sample", "layer", "head", "query", "key")
#: the leading dims of ``q``, ``k`` and ``v`` (then ``dim``, or ``dim_v`` for a wider ``v``)
QKV_LEAD = ("sample", "layer", "head", "position")
#: attrs that attnkit sets and users may not pass
RESERVED_ATTRS = ("attnkit_schema",)


# ----------------------------------------------------------------------------- attrs
def check_attr(key, value) -> str | None:
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


def schema_problem(attrs) -> str | None:
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
    from .accessor import registered_xarray  # here, so `import attnkit` stays light

    xr = registered_xarray()
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
        "q": lambda d: len(d) == 5 and d[:4] == QKV_LEAD,
        "k": lambda d: len(d) == 5 and d[:4] == QKV_LEAD,
        "v": lambda d: len(d) == 5 and d[:4] == QKV_LEAD,
        "embedding": lambda d: len(d) == 2 and d[0] == "sample",
        "impact": lambda d: d == ("sample", "position", "method"),
        "attribution": lambda d: d in (("sample", "position", "attribution_method"),
                                       ("sample", "position")),
        "input_gradient": lambda d: d == ("sample", "position", "feature"),
        "token": lambda d: d == ("sample", "position"),
    }
    described = {
        "gradient": str(ATTENTION_DIMS),
        "q": "('sample', 'layer', 'head', 'position', 'dim')",
        "k": "('sample', 'layer', 'head', 'position', 'dim')",
        "v": "('sample', 'layer', 'head', 'position', 'dim')",
        "embedding": "('sample', 'feature')",
        "impact": "('sample', 'position', 'method')",
        "attribution": "('sample', 'position', 'attribution_method')",
        "input_gradient": "('sample', 'position', 'feature')",
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
    schema = schema_problem(ds.attrs)
    if schema is not None:
        problems.append(schema)
    for key, value in ds.attrs.items():
        if key == "attnkit_schema":
            continue
        problem = check_attr(key, value)
        if problem is not None:
            problems.append(problem)
    for name, var in ds.variables.items():
        for key, value in var.attrs.items():
            problem = check_attr(key, value)
            if problem is not None:
                problems.append(f"{name}." + problem)

    if n_samples is None and att is not None:
        problems.append("sample: expected a sample dim, got none. Fix: add one with expand_dims")
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise ValueError(f"invalid attnkit dataset ({count}):\n"
                         + "\n".join(f"- {p}." for p in problems))

