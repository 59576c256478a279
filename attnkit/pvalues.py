"""Multiple-comparison control: Holm and Benjamini-Hochberg adjusted p-values.

:func:`adjust_pvalues` adjusts a whole array of p-values (e.g. the per-sample
``pvalue`` of :func:`attnkit.correlate`) as one family, or one family per
index of the axes not named in ``dim``. NaN entries (undefined tests) are not
part of any family and stay NaN.
"""

from __future__ import annotations

import numpy as np

from . import errors

__all__ = ["ADJUST_METHODS", "adjust_pvalues"]

#: The methods :func:`adjust_pvalues` knows.
ADJUST_METHODS = ("holm", "bh")


def _holm(p):
    """Holm's step-down adjusted p-values of the 1-d ``p`` (no NaN)."""
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def _bh(p):
    """Benjamini-Hochberg step-up adjusted p-values of the 1-d ``p`` (no NaN)."""
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def _family_axes(dim, names, ndim):
    """The family axes as sorted ints from ``dim`` (None: all axes)."""
    if dim is None:
        return tuple(range(ndim))
    items = dim if isinstance(dim, (tuple, list)) else (dim,)
    axes = []
    for item in items:
        if names is not None and isinstance(item, str):
            if item not in names:
                raise errors.value_error("dim", f"dims among {tuple(names)}", repr(item),
                                         "name the dims whose entries form one family")
            axes.append(names.index(item))
        elif errors.is_int(item) and -ndim <= item < ndim:
            axes.append(int(item) % ndim)
        else:
            what = f"dim names among {tuple(names)} or axes" if names is not None else "axes"
            raise errors.value_error("dim", f"{what} in [{-ndim}, {ndim})", repr(dim),
                                     "pass e.g. dim=0 (one family per index of the other axes) "
                                     "or dim=None (one family)")
    if len(set(axes)) != len(axes):
        raise errors.value_error("dim", "distinct axes", repr(dim), "list each axis once")
    return tuple(sorted(axes))


def adjust_pvalues(p, method="holm", *, dim=None):
    """Adjust p-values for multiple comparisons (Holm or Benjamini-Hochberg).

    Parameters
    ----------
    p : array_like or xarray.DataArray
        P-values in [0, 1], any shape. NaN entries (undefined tests) are left
        out of the family and stay NaN in the result.
    method : {"holm", "bh"}
        ``"holm"``: Holm's step-down procedure, which controls the family-wise
        error rate: with the m non-NaN p-values sorted, p_(i) becomes
        max_{j <= i} min(1, (m - j + 1) p_(j)). ``"bh"``: Benjamini-Hochberg's
        step-up procedure, which controls the false discovery rate (for
        independent or positively dependent tests): p_(i) becomes
        min_{j >= i} min(1, m p_(j) / j). Both are monotone in p and capped at 1.
    dim : int, str or sequence, optional
        The axes (dim names for a DataArray) whose entries form one family;
        every index of the other axes is adjusted separately. Default None:
        the family is every non-NaN entry of ``p``.

    Returns
    -------
    ndarray or xarray.DataArray
        Adjusted p-values, float64, the shape of ``p`` (a DataArray with the
        same dims, coords and name for DataArray input); compare them with the
        significance level as usual (e.g. ``adjusted < 0.05``).

    Raises
    ------
    ValueError
        For p-values outside [0, 1] or an unknown method.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> p = np.array([0.01, 0.04, np.nan, 0.03, 0.2])
    >>> ak.adjust_pvalues(p, "holm")
    array([0.04, 0.09,  nan, 0.09, 0.2 ])
    >>> ak.adjust_pvalues(p, "bh")
    array([0.04      , 0.05333333,        nan, 0.05333333, 0.2       ])

    Per layer, over the samples of a :func:`attnkit.correlate` result:

    >>> rng = np.random.default_rng(0)
    >>> r = ak.correlate(rng.random((30, 3, 8)), rng.random((30, 1, 8)), over=0)
    >>> ak.adjust_pvalues(r.pvalue, "bh", dim=0).shape
    (30, 3)
    """
    if not isinstance(method, str) or method not in ADJUST_METHODS:
        raise errors.value_error("method", " | ".join(repr(m) for m in ADJUST_METHODS),
                                 repr(method), "pass method='holm' (family-wise error rate) or "
                                 "method='bh' (false discovery rate)")
    is_xr = type(p).__module__.startswith("xarray.")
    values = np.asarray(p.values if is_xr else p)
    if values.dtype.kind not in "fiub":
        raise TypeError(f"p: expected real numbers in [0, 1], got dtype {values.dtype}. "
                        f"Fix: convert it, e.g. np.asarray(p, dtype=float).")
    values = values.astype(np.float64)
    defined = ~np.isnan(values)
    bad = defined & ((values < 0.0) | (values > 1.0))
    if bad.any():
        raise errors.value_error("p", "p-values in [0, 1] (or NaN for undefined tests)",
                                 f"{values[bad].flat[0]!r} at index "
                                 f"{tuple(int(i) for i in np.argwhere(bad)[0])}",
                                 "pass p-values, not statistics or log p-values")
    axes = _family_axes(dim, list(p.dims) if is_xr else None, values.ndim)
    adjust = _holm if method == "holm" else _bh
    rest = tuple(i for i in range(values.ndim) if i not in axes)
    moved = np.transpose(values, rest + axes)
    flat = moved.reshape(int(np.prod([values.shape[i] for i in rest], dtype=np.int64)), -1)
    out = np.full(flat.shape, np.nan)
    for row in range(flat.shape[0]):
        keep = ~np.isnan(flat[row])
        if keep.any():
            out[row, keep] = adjust(flat[row, keep])
    out = np.transpose(out.reshape(moved.shape), np.argsort(rest + axes))
    if is_xr:
        return p.copy(data=out)
    return out
