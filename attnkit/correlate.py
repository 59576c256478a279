"""Correlation of attention scores with impact, per instance, with uncertainty.

:func:`correlate` computes one Kendall tau-b, Spearman rho or Pearson r (and
its two-sided p-value) per instance over the instance's valid positions, then
summarises across instances: the mean with a seeded percentile-bootstrap
confidence interval and the fraction of instances significant at ``alpha``
(as Jain & Wallace 2019 report). :func:`compare_correlations` compares two
scores against the same target, instance by instance.

NumPy inputs give a :class:`CorrelationResult`; xarray inputs give an
``xarray.Dataset`` with the same names (``statistic``, ``pvalue``,
``n_positions``, ``mean_statistic``, ``ci_low``, ``ci_high``, ``significant_fraction``,
``n_instances``). ``CorrelationResult.to_dataset()`` converts the first into
the second.

The statistics are those of ``scipy.stats.kendalltau`` (tau-b), ``spearmanr``
and ``pearsonr`` to about 1e-12, and so are the asymptotic p-values; short
instances get exact or permutation p-values by default (``pvalue_method``).
``control=`` gives partial correlations, ``groups=`` a cluster bootstrap and
per-group summaries. The kernels are batched Numba loops
(``attnkit.kernels.cpu.correlate``). :func:`attnkit.adjust_pvalues` (Holm,
Benjamini-Hochberg) adjusts the per-instance p-values for multiple comparisons.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from . import errors
from .constants import CORRELATION_METHODS, SPECIAL_TOKENS

__all__ = [
    "AUTO_EXACT_MAX_N",
    "METHODS",
    "PVALUE_METHODS",
    "SPECIAL_TOKENS",
    "ConstantInputWarning",
    "CorrelationResult",
    "DegenerateInputWarning",
    "PairedComparison",
    "TooFewPositionsWarning",
    "cluster_bootstrap_mean",
    "compare_correlations",
    "correlate",
]

METHODS = CORRELATION_METHODS
PVALUE_METHODS = ("auto", "exact", "asymptotic")
#: ``pvalue_method="auto"`` uses the exact / permutation p-value for instances
#: with at most this many valid positions (scipy's cut-off for Kendall's exact test).
AUTO_EXACT_MAX_N = 33
#: Permutation p-values enumerate all n! orders up to this n (8! = 40320), and
#: sample ``n_permutations`` random orders beyond it.
ENUMERATE_MAX_N = 8
#: A permuted |statistic| counts as "at least as extreme" when it is at least
#: |observed| - PERMUTATION_TOL (absorbs rounding; statistics lie in [-1, 1]).
PERMUTATION_TOL = 1e-12


class DegenerateInputWarning(RuntimeWarning):
    """Some instances have no defined correlation; their statistic is NaN."""


class ConstantInputWarning(DegenerateInputWarning):
    """An input is constant over an instance's valid positions (statistic NaN)."""


class TooFewPositionsWarning(DegenerateInputWarning):
    """An instance has fewer than 2 valid positions (statistic NaN)."""


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True, repr=False)
class CorrelationResult:
    """Per-instance correlations and their summary across instances (NumPy inputs).

    Attributes
    ----------
    statistic, pvalue : ndarray
        One value per instance (the input shape without ``dim``); NaN where
        undefined (fewer than 2 valid positions, or a constant input).
    n_positions : ndarray of int
        Valid positions per instance.
    mean_statistic, ci_low, ci_high : ndarray
        Mean statistic over the defined instances and its percentile-bootstrap
        interval; shape = the instance shape without the ``over`` axes (0-d
        when every instance is pooled).
    significant_fraction : ndarray
        Fraction of the defined instances with ``pvalue < alpha``.
    n_instances : ndarray of int
        Defined (non-NaN) instances behind each summary value.
    method, ci, alpha, n_boot, seed, over, pvalue_method, n_permutations
        The settings used; ``over`` holds the summarised instance axes.
    control : str or None
        What the correlation was controlled for: the names of the control
        DataArrays, ``"given"`` for unnamed arrays (comma-separated when
        several), None without ``control=``.
    groups : str or None
        The grouping of a cluster bootstrap (``"given"`` or the DataArray's
        name); None without ``groups=``, and then every ``group_*`` is None.
    group_labels : ndarray or None
        The sorted distinct group labels (the ``group`` axis below).
    group_mean_statistic, group_ci_low, group_ci_high : ndarray or None
        Per group: mean statistic and its percentile-bootstrap interval
        (resampling the group's instances); shape = the summary shape + (groups,).
    group_significant_fraction, group_n_instances : ndarray or None
        Per group: fraction with ``pvalue < alpha`` and defined instances.
    """

    statistic: np.ndarray
    pvalue: np.ndarray
    n_positions: np.ndarray
    mean_statistic: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    significant_fraction: np.ndarray
    n_instances: np.ndarray
    method: str
    ci: float
    alpha: float
    n_boot: int
    seed: int | None
    over: tuple = field(default=())
    pvalue_method: str = "auto"
    n_permutations: int = 9999
    control: str | None = None
    groups: str | None = None
    group_labels: np.ndarray | None = None
    group_mean_statistic: np.ndarray | None = None
    group_ci_low: np.ndarray | None = None
    group_ci_high: np.ndarray | None = None
    group_significant_fraction: np.ndarray | None = None
    group_n_instances: np.ndarray | None = None

    def to_dataset(self):
        """The result as an ``xarray.Dataset`` (instance dims ``instance_0, ...``).

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> r = ak.correlate(np.arange(12.0).reshape(3, 4), np.arange(12.0).reshape(3, 4) ** 2)
        >>> sorted(r.to_dataset().data_vars)  # doctest: +NORMALIZE_WHITESPACE
        ['ci_high', 'ci_low', 'mean_statistic', 'n_instances', 'n_positions',
         'pvalue', 'significant_fraction', 'statistic']
        """
        import xarray as xr

        inst = tuple(f"instance_{i}" for i in range(np.ndim(self.statistic)))
        kept = tuple(d for i, d in enumerate(inst) if i not in self.over)
        data = {name: (inst, getattr(self, name))
                for name in ("statistic", "pvalue", "n_positions")}
        for name in ("mean_statistic", "ci_low", "ci_high", "significant_fraction", "n_instances"):
            data[name] = (kept, getattr(self, name))
        coords = {}
        if self.group_labels is not None:
            for name in GROUP_VARIABLES:
                data[name] = (kept + ("group",), getattr(self, name))
            coords["group"] = np.asarray(self.group_labels)
        return xr.Dataset(data, coords=coords,
                          attrs=_attrs(self.method, self.ci, self.alpha, self.n_boot, self.seed,
                                       [inst[i] for i in self.over], self.pvalue_method,
                                       self.n_permutations, self.control, self.groups))

    def __repr__(self) -> str:
        shape = np.shape(self.statistic)
        head = (f"CorrelationResult({self.method}, {int(np.sum(self.n_instances))} of "
                f"{int(np.prod(shape, dtype=np.int64))} instances defined, shape {shape})")
        if self.control is not None:
            head += f"\n  partial, controlling for {self.control}"
        if self.group_labels is not None:
            head += f"\n  cluster bootstrap over {len(self.group_labels)} groups"
        if np.ndim(self.mean_statistic) == 0:
            return (f"{head}\n  mean {float(self.mean_statistic):.4f}, {self.ci:.0%} CI "
                    f"[{float(self.ci_low):.4f}, {float(self.ci_high):.4f}], significant at "
                    f"{self.alpha:g}: {float(self.significant_fraction):.1%}")
        shape = np.shape(self.mean_statistic)
        return f"{head}\n  summary over axes {self.over}: mean of shape {shape}"


@dataclass(frozen=True, repr=False)
class PairedComparison:
    """Two scores correlated with the same target, compared instance by instance.

    Attributes
    ----------
    statistic_a, statistic_b : ndarray
        Per-instance statistics of the two scores.
    difference : ndarray
        ``statistic_a - statistic_b`` (NaN where either is undefined).
    mean_difference, ci_low, ci_high : ndarray
        Mean difference over the instances and its percentile-bootstrap interval.
    fraction_a_greater : ndarray
        Fraction of the instances where ``statistic_a > statistic_b``.
    n_instances : ndarray of int
        Instances with both statistics defined.
    method, ci, n_boot, seed, over
        The settings used.
    """

    statistic_a: np.ndarray
    statistic_b: np.ndarray
    difference: np.ndarray
    mean_difference: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    fraction_a_greater: np.ndarray
    n_instances: np.ndarray
    method: str
    ci: float
    n_boot: int
    seed: int | None
    over: tuple = field(default=())

    def __repr__(self) -> str:
        if np.ndim(self.mean_difference) == 0:
            return (f"PairedComparison({self.method}, {int(self.n_instances)} instances)\n"
                    f"  mean difference a - b {float(self.mean_difference):.4f}, {self.ci:.0%} CI "
                    f"[{float(self.ci_low):.4f}, {float(self.ci_high):.4f}], a > b in "
                    f"{float(self.fraction_a_greater):.1%}")
        return (f"PairedComparison({self.method}, summary over axes {self.over}, "
                f"shape {np.shape(self.mean_difference)})")


GROUP_VARIABLES = ("group_mean_statistic", "group_ci_low", "group_ci_high",
                   "group_significant_fraction", "group_n_instances")


def _attrs(method, ci, alpha, n_boot, seed, over, pvalue_method, n_permutations=None,
           control=None, groups=None):
    attrs = {"method": method, "ci": float(ci), "n_boot": int(n_boot),
             "seed": -1 if seed is None else int(seed), "over": ",".join(over)}
    if alpha is not None:
        attrs["alpha"] = float(alpha)
        attrs["pvalue_method"] = pvalue_method
        if n_permutations is not None and pvalue_method != "asymptotic":
            attrs["n_permutations"] = int(n_permutations)
    if control is not None:
        attrs["control"] = control
    if groups is not None:
        attrs["groups"] = groups
    return attrs


# ----------------------------------------------------------------------------- checks
def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise errors.value_error(name, " | ".join(repr(c) for c in choices), repr(value),
                                 "pick one of those")
    return value


def _check_fraction(name, value):
    ok = isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not 0.0 < float(value) < 1.0:
        raise errors.value_error(name, "a number strictly between 0 and 1", repr(value),
                                 f"pass e.g. {name}=" + ("0.95" if name == "ci" else "0.05"))
    return float(value)


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise errors.value_error("seed", "a non-negative int or None", repr(seed),
                                 "pass e.g. seed=0 (None draws a fresh, unreproducible seed)")
    return int(seed)


def _as_real(name, value):
    a = np.asarray(value)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a real numeric array (float, int or bool), got dtype "
                        f"{a.dtype}. Fix: convert it, e.g. np.asarray({name}, dtype=float).")
    if a.ndim == 0:
        raise errors.shape_error(name, "(..., n) with at least one axis", a.shape,
                                 "pass one value per position")
    return a


# ----------------------------------------------------------------------------- preparation
def _normalise_axis(dim, ndim):
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim: expected an int axis for NumPy inputs, got {dim!r}. "
                        "Fix: pass an axis such as dim=-1, or pass xarray DataArrays to use "
                        "names.")
    if not -ndim <= dim < ndim:
        raise errors.value_error("dim", f"an axis in [{-ndim}, {ndim})", dim,
                                 "pass the axis that holds the positions")
    return int(dim) % ndim


def _broadcast(x, y):
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise errors.value_error("y", f"a shape broadcastable with x {x.shape}", y.shape,
                                 "insert size-1 axes so that the instance axes line up, "
                                 "e.g. y[:, None, :] for one target per sample") from None
    return shape


def _lengths_mask(lengths, inst_shape, n):
    """Boolean (*inst_shape, n): position < length."""
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise errors.value_error("lengths", "integers", f"dtype {arr.dtype}",
                                     "pass whole numbers, e.g. lengths.astype(int)")
    try:
        arr = np.broadcast_to(arr, inst_shape)
    except ValueError:
        raise errors.shape_error("lengths", f"{inst_shape} or broadcastable to it (one length per "
                                 "instance)", arr.shape, "give one length per sample") from None
    if arr.size and (arr.min() < 0 or arr.max() > n):
        bad = int(arr[(arr < 0) | (arr > n)].flat[0])
        raise errors.value_error("lengths", f"lengths in [0, {n}]", bad,
                                 "lengths count valid positions and cannot exceed the axis size")
    return np.arange(n) < arr[..., None]


def _exclude_mask(exclude, tokens, valid, full_shape, axis):
    """Boolean (*inst_shape, n) of positions to drop (``valid`` is (*inst, n))."""
    n = valid.shape[-1]
    if isinstance(exclude, str):
        if exclude != "special":
            raise errors.value_error("exclude", "'special', a boolean mask or a list of positions",
                                     repr(exclude), "pass exclude='special' to drop [CLS]/[SEP]")
        if tokens is None:
            raise errors.value_error(
                "exclude", "tokens to find special tokens in", "exclude='special' without tokens",
                "pass tokens=... (or xarray inputs with a 'token' coordinate), or list the "
                "positions, e.g. exclude=[0, -1]")
        tok = np.asarray(tokens)
        try:
            tok = np.moveaxis(np.broadcast_to(tok, full_shape), axis, -1)
        except ValueError:
            raise errors.shape_error("tokens", f"broadcastable to {full_shape}", tok.shape,
                                     "pass one token per position") from None
        return np.isin(tok, list(SPECIAL_TOKENS))
    arr = np.asarray(exclude)
    if arr.dtype.kind == "b":
        try:
            return np.moveaxis(np.broadcast_to(arr, full_shape), axis, -1)
        except ValueError:
            raise errors.shape_error("exclude", f"a boolean mask broadcastable to {full_shape}",
                                     arr.shape, "pass True at the positions to drop") from None
    if arr.dtype.kind in "iu" and arr.ndim <= 1:
        positions = arr.reshape(-1).astype(np.int64)
        if positions.size and (positions.min() < -n or positions.max() >= n):
            raise errors.value_error("exclude", f"positions in [{-n}, {n})", positions.tolist(),
                                     "count from 0, or from -1 for the last valid position")
        drop = np.zeros(valid.shape, dtype=bool)
        # negative positions count back from each instance's last valid position
        any_valid = valid.any(axis=-1)
        end = np.where(any_valid, n - np.argmax(valid[..., ::-1], axis=-1), 0)
        for p in positions:
            if p >= 0:
                drop[..., p] = True
            else:
                target = end + p
                rows = np.nonzero(target >= 0)
                drop[rows + (target[rows],)] = True
        return drop
    raise TypeError(f"exclude: expected 'special', a boolean mask or a list of int positions, got "
                    f"{type(exclude).__name__} of dtype {arr.dtype}. Fix: e.g. exclude=[0, -1].")


def _broadcast_controls(shape, controls):
    if not controls:
        return shape
    try:
        return np.broadcast_shapes(shape, *(z.shape for z in controls))
    except ValueError:
        bad = next(z.shape for z in controls
                   if not _broadcastable(shape, z.shape))
        raise errors.shape_error("control", f"{shape} like x and y (or broadcastable with them)",
                                 bad, "give one control value per position of every instance, "
                                 "e.g. the same shape as x") from None


def _broadcastable(a, b):
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _prepare(x, y, axis, lengths, exclude, tokens, controls=()):
    """Flatten to kernel form: x, y (B, n) float64, valid (B, n) uint8, inst_shape, and
    the controls as (B, k, n) float64 (None without controls)."""
    shape = _broadcast_controls(_broadcast(x, y), controls)
    xb = np.moveaxis(np.broadcast_to(x, shape), axis, -1)
    yb = np.moveaxis(np.broadcast_to(y, shape), axis, -1)
    zb = [np.moveaxis(np.broadcast_to(z, shape), axis, -1) for z in controls]
    inst_shape, n = xb.shape[:-1], xb.shape[-1]
    valid = np.ones(xb.shape, dtype=bool)
    for v in (xb, yb, *zb):
        if v.dtype.kind == "f":
            valid &= ~np.isnan(v)
    if lengths is not None:
        valid &= _lengths_mask(lengths, inst_shape, n)
    if exclude is not None:
        valid &= ~_exclude_mask(exclude, tokens, valid, shape, axis)
    elif tokens is not None:
        raise errors.value_error("tokens", "exclude='special' alongside tokens", "tokens alone",
                                 "pass exclude='special' to drop special tokens, or drop tokens=")
    xs = np.ascontiguousarray(xb, dtype=np.float64).reshape(-1, n)
    ys = np.ascontiguousarray(yb, dtype=np.float64).reshape(-1, n)
    zs = None
    if controls:
        zs = np.ascontiguousarray(np.stack([z.astype(np.float64, copy=False) for z in zb],
                                           axis=-2)).reshape(-1, len(zb), n)
    return xs, ys, valid.reshape(-1, n).view(np.uint8), inst_shape, zs


# ----------------------------------------------------------------------------- statistics
def _statistics(xs, ys, valid, method, pvalue_method, zs=None, n_permutations=9999, seed=0):
    """statistic, pvalue, count (B,) for the flattened rows (controls ``zs`` (B, k, n))."""
    if zs is not None:
        return _partial_statistics(xs, ys, zs, valid, method, pvalue_method, n_permutations,
                                   seed)
    from scipy import special

    from .kernels.cpu import correlate as kernels

    rows = xs.shape[0]
    stat = np.empty(rows)
    count = np.empty(rows, dtype=np.int64)
    if method == "kendall":
        pexact = np.empty(rows)
        z = np.empty(rows)
        mode = {"asymptotic": 0, "auto": 1, "exact": 2}[pvalue_method]
        kernels.kendall(xs, ys, valid, mode, kernels.FACTORIAL, stat, pexact, z, count)
        pvalue = np.where(np.isnan(pexact), 2 * special.ndtr(-np.abs(z)), pexact)
        if pvalue_method != "asymptotic":
            # rows the exact null distribution does not cover: ties
            todo = _permutation_rows(stat, count, pvalue_method) & np.isnan(pexact)
            if todo.any():
                kernels.kendall_permutation(xs, ys, valid, todo.view(np.uint8),
                                            n_permutations, ENUMERATE_MAX_N,
                                            _permutation_seed(seed), kernels.FACTORIAL, pvalue)
        return stat, pvalue, count
    if method == "spearman":
        kernels.spearman(xs, ys, valid, stat, count)
        dof = (count - 2).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = stat * np.sqrt((dof / ((stat + 1.0) * (1.0 - stat))).clip(0))
        pvalue = 2 * special.stdtr(dof, -np.abs(t))
    else:
        kernels.pearson(xs, ys, valid, stat, count)
        ab = count / 2.0 - 1.0
        with np.errstate(invalid="ignore"):
            pvalue = 2 * _betaincc(ab, ab, (np.abs(stat) + 1.0) / 2.0)
    # two positions always fit a line perfectly: no evidence either way
    pvalue = np.where(count == 2, 1.0, pvalue)
    pvalue[np.isnan(stat)] = np.nan
    if pvalue_method != "asymptotic":
        _linear_permutation(xs, ys, np.empty((rows, 0, xs.shape[1])), valid,
                            method == "spearman", _permutation_rows(stat, count, pvalue_method),
                            n_permutations, seed, pvalue)
    return stat, pvalue, count


def _permutation_rows(stat, count, pvalue_method, dof=None):
    """Rows that get the exact / permutation p-value: defined, at least one degree of
    freedom, and (for "auto") at most AUTO_EXACT_MAX_N positions."""
    dof = count - 2 if dof is None else dof
    rows = ~np.isnan(stat) & (dof >= 1)
    if pvalue_method == "auto":
        rows &= count <= AUTO_EXACT_MAX_N
    return rows


def _permutation_seed(seed):
    """The uint64 that seeds every row's permutation stream."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    return np.uint64(int(seed) % 2**64)


def _linear_permutation(xs, ys, zs, valid, ranks, todo, n_permutations, seed, pvalue):
    from .kernels.cpu import correlate as kernels

    if todo.any():
        kernels.linear_permutation(xs, ys, zs, valid, int(ranks), todo.view(np.uint8),
                                   n_permutations, ENUMERATE_MAX_N, _permutation_seed(seed),
                                   PERMUTATION_TOL, kernels.FACTORIAL, pvalue)


def _partial_statistics(xs, ys, zs, valid, method, pvalue_method, n_permutations, seed):
    """Partial correlations given the controls ``zs`` (B, k, n)."""
    from scipy import special

    from .kernels.cpu import correlate as kernels

    rows = xs.shape[0]
    stat = np.empty(rows)
    count = np.empty(rows, dtype=np.int64)
    if method == "kendall":
        kernels.partial_kendall(xs, ys, zs, valid, stat, count)
        # no p-value: see the Notes of ak.correlate
        return stat, np.full(rows, np.nan), count
    rank_z = np.empty(rows, dtype=np.int64)
    kernels.partial_linear(xs, ys, zs, valid, int(method == "spearman"), stat, count, rank_z)
    dof = count - 2 - rank_z
    with np.errstate(divide="ignore", invalid="ignore"):
        t = stat * np.sqrt((dof / ((stat + 1.0) * (1.0 - stat))).clip(0))
        pvalue = 2 * special.stdtr(dof.astype(np.float64), -np.abs(t))
    # no degree of freedom left: the residuals always fit, no evidence either way
    pvalue = np.where(dof == 0, 1.0, pvalue)
    pvalue[np.isnan(stat)] = np.nan
    if pvalue_method != "asymptotic":
        _linear_permutation(xs, ys, zs, valid, method == "spearman",
                            _permutation_rows(stat, count, pvalue_method, dof),
                            n_permutations, seed, pvalue)
    return stat, pvalue, count


def _betaincc(a, b, x):
    from scipy import special

    if hasattr(special, "betaincc"):  # scipy >= 1.11
        return special.betaincc(a, b, x)
    return special.betainc(b, a, 1.0 - x)


def _warn_degenerate(stat, count, what, stacklevel, controls=False):
    few = count < 2
    constant = np.isnan(stat) & ~few
    total = stat.size
    explained = " (or one the controls explain fully)" if controls else ""
    if few.any():
        warnings.warn(TooFewPositionsWarning(
            f"{int(few.sum())} of {total} instances{what} have fewer than 2 valid positions; "
            f"their statistic is NaN (first: instance {int(np.argmax(few))} in C order)."),
            stacklevel=stacklevel)
    if constant.any():
        warnings.warn(ConstantInputWarning(
            f"{int(constant.sum())} of {total} instances{what} have a constant input{explained} "
            f"over their valid positions, where the correlation is not defined; their statistic "
            f"is NaN "
            f"(first: instance {int(np.argmax(constant))} in C order)."),
            stacklevel=stacklevel)


# ----------------------------------------------------------------------------- summary
def bootstrap_mean(values, *, n_boot=2000, ci=0.95, seed=0):
    """Mean of the non-NaN ``values`` with a percentile-bootstrap interval.

    Resamples the values with replacement ``n_boot`` times from
    ``np.random.default_rng(seed)``; the interval holds the central ``ci`` of
    the resampled means. Returns ``(mean, low, high, count)``; NaNs when no
    value is defined.

    Examples
    --------
    >>> from attnkit.correlate import bootstrap_mean
    >>> mean, low, high, count = bootstrap_mean([0.1, 0.3, 0.2, 0.6], seed=0)
    >>> round(mean, 3), low <= mean <= high, count
    (0.3, True, 4)
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    k = v.size
    if k == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(v.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, (1 << 21) // k)  # keep the index block near 16 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = v[rng.integers(0, k, size=(stop - start, k))].mean(axis=1)
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high), k


def _grouped(arrays, over, inst_shape):
    """Move the ``over`` axes last and flatten: each array becomes (G, K); returns kept shape."""
    kept = tuple(i for i in range(len(inst_shape)) if i not in over)
    order = kept + tuple(over)
    kept_shape = tuple(inst_shape[i] for i in kept)
    g = int(np.prod(kept_shape, dtype=np.int64))
    return [np.transpose(a, order).reshape(g, -1) for a in arrays], kept_shape


def cluster_bootstrap_mean(values, groups, *, n_boot=2000, ci=0.95, seed=0):
    """Mean of the non-NaN ``values`` with a cluster (group) percentile-bootstrap interval.

    Each resample draws as many groups as there are (groups with at least one
    non-NaN value) with replacement from ``np.random.default_rng(seed)`` and
    keeps every value of a drawn group; its mean is the pooled mean of those
    values (each instance weighs the same, so large groups weigh more). The
    interval holds the central ``ci`` of the resampled means. The mean itself
    is the plain mean of the values, as in :func:`bootstrap_mean`. Returns
    ``(mean, low, high, count)``; NaNs when no value is defined.

    Examples
    --------
    >>> from attnkit.correlate import cluster_bootstrap_mean
    >>> values = [0.1, 0.2, 0.3, 0.5, 0.7, 0.6]
    >>> mean, low, high, count = cluster_bootstrap_mean(values, [0, 0, 0, 1, 1, 1], seed=0)
    >>> round(mean, 3), round(low, 3), round(high, 3), count
    (0.4, 0.2, 0.6, 6)
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    _, codes = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
    if codes.size != v.size:
        raise errors.shape_error("groups", f"one label per value ({v.size})", codes.size,
                                 "give every value its group")
    defined = ~np.isnan(v)
    v, codes = v[defined], codes.reshape(-1)[defined]
    k = v.size
    if k == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(v.mean())
    sums = np.bincount(codes, weights=v)
    sizes = np.bincount(codes).astype(np.float64)
    present = sizes > 0
    sums, sizes = sums[present], sizes[present]
    g = sums.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, (1 << 21) // g)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        pick = rng.integers(0, g, size=(stop - start, g))
        means[start:stop] = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high), k


def _significant(p, defined, alpha):
    """Fraction of ``p < alpha`` among the defined instances with a p-value (NaN if none)."""
    has_p = defined & ~np.isnan(p)
    return float(np.mean(p[has_p] < alpha)) if has_p.any() else np.nan


def _summarise(stat, pvalue, over, alpha, ci, n_boot, seed, codes=None, n_groups=0):
    """The summary across the ``over`` axes; with group ``codes`` (the shape of the over
    axes, ints in [0, n_groups)) a cluster bootstrap and per-group summaries too."""
    (s, p), kept_shape = _grouped([stat, pvalue], over, stat.shape)
    out = np.empty((5, s.shape[0]))
    flat = None if codes is None else np.asarray(codes).reshape(-1)
    per_group = np.empty((5, s.shape[0], n_groups))
    for g in range(s.shape[0]):
        if flat is None:
            mean, low, high, k = bootstrap_mean(s[g], n_boot=n_boot, ci=ci, seed=seed)
        else:
            mean, low, high, k = cluster_bootstrap_mean(s[g], flat, n_boot=n_boot, ci=ci,
                                                        seed=seed)
        defined = ~np.isnan(s[g])
        frac = _significant(p[g], defined, alpha) if k else np.nan
        out[:, g] = (mean, low, high, frac, k)
        for j in range(n_groups):
            member = flat == j
            gm, gl, gh, gk = bootstrap_mean(s[g][member], n_boot=n_boot, ci=ci, seed=seed)
            gfrac = _significant(p[g][member], defined[member], alpha) if gk else np.nan
            per_group[:, g, j] = (gm, gl, gh, gfrac, gk)
    shaped = [row.reshape(kept_shape) for row in out]
    shaped[4] = shaped[4].astype(np.int64)
    summary = [a[()] if a.ndim == 0 else a for a in shaped]
    if flat is None:
        return summary, None
    groups = [row.reshape(kept_shape + (n_groups,)) for row in per_group]
    groups[4] = groups[4].astype(np.int64)
    return summary, groups


def _summarise_paired(a, b, over, ci, n_boot, seed):
    diff = a - b
    (d, sa, sb), kept_shape = _grouped([diff, a, b], over, diff.shape)
    out = np.empty((5, d.shape[0]))
    for g in range(d.shape[0]):
        mean, low, high, k = bootstrap_mean(d[g], n_boot=n_boot, ci=ci, seed=seed)
        defined = ~np.isnan(d[g])
        frac = float(np.mean(sa[g][defined] > sb[g][defined])) if k else np.nan
        out[:, g] = (mean, low, high, frac, k)
    shaped = [row.reshape(kept_shape) for row in out]
    shaped[4] = shaped[4].astype(np.int64)
    return diff, [x[()] if x.ndim == 0 else x for x in shaped]


def _over_axes(over, ndim):
    if over is None:
        return tuple(range(ndim))
    items = over if isinstance(over, (tuple, list)) else (over,)
    axes = []
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)) \
                or not -ndim <= item < ndim:
            raise errors.value_error("over", f"instance axes in [{-ndim}, {ndim}) (the result's "
                                     "axes, i.e. the input's without dim)", repr(over),
                                     "pass e.g. over=0 to summarise across the first axis")
        axes.append(int(item) % ndim)
    if len(set(axes)) != len(axes):
        raise errors.value_error("over", "distinct axes", repr(over), "list each axis once")
    return tuple(sorted(axes))


def _check_common(method, ci, alpha, n_boot, seed, pvalue_method):
    _check_choice("method", method, METHODS)
    _check_choice("pvalue_method", pvalue_method, PVALUE_METHODS)
    return (_check_fraction("ci", ci), _check_fraction("alpha", alpha),
            errors.positive_int("n_boot", n_boot), _check_seed(seed))


# ----------------------------------------------------------------------------- xarray
def _is_xarray(obj) -> bool:
    return type(obj).__module__.startswith("xarray.")


def _xr_inputs(x, y, dim, lengths, exclude, tokens, over, controls=(), groups=None):
    """Broadcast DataArrays by name; return NumPy arrays plus the labels to rebuild.

    ``labels`` also carries the controls' values (``controls``, each broadcast to
    (*inst_dims, dim)) and the group labels in the order of the over axes
    (``groups``, or None).
    """
    import xarray as xr

    x_dims = getattr(x, "dims", None)
    x_shape = getattr(x, "shape", None)

    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, xr.DataArray):
            raise TypeError(f"{name}: expected an xarray.DataArray like the other input, got "
                            f"{type(value).__name__}. Fix: pass two DataArrays, e.g. ds['impact']"
                            f".sel({{'method': 'delete'}}), or two NumPy arrays.")
        if dim not in value.dims:
            raise errors.value_error(f"{name}.dims", f"a dim named {dim!r}", value.dims,
                                     "pass dim=<the positions' dim name>, or rename it")
    if x.sizes[dim] != y.sizes[dim]:
        raise errors.shape_error("y", f"{x.sizes[dim]} positions along {dim!r} like x",
                                 dict(y.sizes), "slice both to the same positions")
    try:
        x, y = xr.align(x, y, join="exact")
    except ValueError as exc:
        raise errors.value_error("y", "the same coordinate labels as x", str(exc).splitlines()[0],
                                 "select matching samples/positions first") from None
    x, y = xr.broadcast(x, y)
    inst_dims = tuple(d for d in x.dims if d != dim)
    x = x.transpose(*inst_dims, dim)
    y = y.transpose(*inst_dims, dim)
    if tokens is None and exclude is not None:
        tokens = next((v.coords["token"] for v in (x, y) if "token" in v.coords), None)
    template = x.isel({dim: 0}, drop=True)

    def along(value, name, core=()):
        if isinstance(value, xr.DataArray):
            missing = [d for d in value.dims if d not in x.dims]
            if missing:
                raise errors.value_error(f"{name}.dims", f"dims among {x.dims}", value.dims,
                                         f"rename or drop {missing}")
            target = x if core else template
            return xr.broadcast(value, target)[0].transpose(*target.dims).values
        return value

    lengths = along(lengths, "lengths")
    exclude = None if exclude is None else (
        exclude if isinstance(exclude, str) else along(exclude, "exclude", core=(dim,)))
    tokens = None if tokens is None else along(tokens, "tokens", core=(dim,))
    if over is None:
        over_dims = ("sample",) if "sample" in inst_dims else inst_dims
    else:
        over_dims = tuple(over) if isinstance(over, (tuple, list)) else (over,)
        bad = [d for d in over_dims if d not in inst_dims]
        if bad:
            raise errors.value_error("over", f"dims among the instance dims {inst_dims}",
                                     repr(over), "name dims of the inputs other than dim")
    over_axes = tuple(sorted(inst_dims.index(d) for d in over_dims))
    coords = {k: v for k, v in x.coords.items() if dim not in v.dims}
    coords.update({k: v for k, v in y.coords.items() if dim not in v.dims and k not in coords})
    labels = {"inst_dims": inst_dims, "over_axes": over_axes, "coords": coords,
              "controls": [_xr_control(c, i, len(controls), x, dim, x_dims, x_shape)
                           for i, c in enumerate(controls)],
              "groups": None if groups is None else _xr_groups(groups, x, inst_dims, over_axes)}
    return x.values, y.values, lengths, exclude, tokens, labels


def _xr_control(control, i, k, x, dim, x_dims, x_shape):
    """One control as NumPy values broadcast to x's (*inst_dims, dim) layout."""
    import xarray as xr

    name = "control" if k == 1 else f"control[{i}]"
    if not isinstance(control, xr.DataArray):
        arr = np.asarray(control)
        if arr.shape != tuple(x_shape):
            raise TypeError(f"{name}: expected an xarray.DataArray like x (or an array of x's "
                            f"shape {tuple(x_shape)}, dims {tuple(x_dims)}), got "
                            f"{type(control).__name__} of shape {arr.shape}. Fix: pass e.g. "
                            f"ds['length'] or xr.DataArray(values, dims=('sample', 'position')).")
        control = xr.DataArray(arr, dims=x_dims)
    if dim not in control.dims:
        raise errors.value_error(f"{name}.dims", f"a dim named {dim!r}", control.dims,
                                 "give one control value per position")
    missing = [d for d in control.dims if d not in x.dims]
    if missing:
        raise errors.value_error(f"{name}.dims", f"dims among those of x and y {x.dims}",
                                 control.dims, f"rename or drop {missing}")
    bad = {d: n for d, n in control.sizes.items() if n not in (x.sizes[d],)}
    if bad:
        raise errors.shape_error(name, f"sizes {dict(x.sizes)} like x and y", dict(control.sizes),
                                 "select the same samples/positions as x")
    try:
        control, _ = xr.align(control, x, join="exact")
    except ValueError as exc:
        raise errors.value_error(name, "the same coordinate labels as x",
                                 str(exc).splitlines()[0],
                                 "select matching samples/positions first") from None
    return xr.broadcast(control, x)[0].transpose(*x.dims).values


def _xr_groups(groups, x, inst_dims, over_axes):
    """Group labels as an array over the over dims (in axis order)."""
    import xarray as xr

    over_dims = [inst_dims[i] for i in over_axes]
    if not isinstance(groups, xr.DataArray):
        return np.asarray(groups)
    if set(groups.dims) != set(over_dims):
        raise errors.value_error("groups.dims", f"the summarised dims {tuple(over_dims)}",
                                 groups.dims, "label each instance along them, e.g. "
                                 "groups=ds['source'] over 'sample'")
    bad = {d: n for d, n in groups.sizes.items() if n != x.sizes[d]}
    if bad:
        raise errors.shape_error("groups", f"one label per instance, sizes "
                                 f"{ {d: x.sizes[d] for d in over_dims} }", dict(groups.sizes),
                                 "give one group label per sample")
    try:
        groups, _ = xr.align(groups, x.isel({d: 0 for d in x.dims if d not in over_dims},
                                            drop=True), join="exact")
    except ValueError as exc:
        raise errors.value_error("groups", "the same coordinate labels as x",
                                 str(exc).splitlines()[0], "select matching samples first") from None
    return groups.transpose(*over_dims).values


def _group_codes(groups, over_shape):
    """(sorted distinct labels, int codes of shape ``over_shape``) of the group labels."""
    arr = np.asarray(groups)
    if arr.shape != tuple(over_shape):
        raise errors.shape_error("groups", f"{tuple(over_shape)} (one label per instance along "
                                 "the summarised axes)", arr.shape,
                                 "give one group label per sample, e.g. a list as long as the "
                                 "summarised axis")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise errors.value_error("groups", "a label for every instance", "NaN labels",
                                 "fill them, or drop those instances")
    try:
        labels, codes = np.unique(arr.reshape(-1), return_inverse=True)
    except TypeError:
        raise TypeError("groups: expected labels of one sortable type (ints or strings), got "
                        f"{sorted({type(v).__name__ for v in arr.reshape(-1)})}. Fix: convert "
                        "them, e.g. np.asarray(groups, dtype=str).") from None
    return labels, codes.reshape(over_shape)


def _control_name(controls):
    names = []
    for c in controls:
        name = getattr(c, "name", None) if _is_xarray(c) else None
        names.append("given" if name is None else str(name))
    return ",".join(names)


def _xr_dataset(variables, labels, attrs):
    """Build the result Dataset: instance variables and summary variables."""
    import xarray as xr

    inst = labels["inst_dims"]
    kept = tuple(d for i, d in enumerate(inst) if i not in labels["over_axes"])
    dims = {"instance": inst, "summary": kept, "group": kept + ("group",)}
    data = {}
    for name, (kind, value) in variables.items():
        data[name] = (dims[kind], np.asarray(value))
    coords = {k: v for k, v in labels["coords"].items()
              if set(v.dims) <= set(inst)}
    if labels.get("group_labels") is not None:
        coords["group"] = np.asarray(labels["group_labels"])
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    return ds


# ----------------------------------------------------------------------------- public
def correlate(x, y, *, method="kendall", dim=None, lengths=None, exclude=None, tokens=None,
              ci=0.95, alpha=0.05, n_boot=2000, seed=0, over=None, pvalue_method="auto",
              control=None, groups=None, n_permutations=9999):
    """Per-instance correlation of ``x`` and ``y`` over positions, with a summary.

    Each instance (every index of the inputs except ``dim``) gets one
    statistic and two-sided p-value over its valid positions; the summary is
    the mean across instances with a percentile-bootstrap interval and the
    fraction of instances significant at ``alpha``.

    Parameters
    ----------
    x, y : array_like or xarray.DataArray
        Scores and targets (e.g. attention and leave-one-out impact). NumPy
        inputs broadcast against each other; DataArrays broadcast by dim name
        and must share coordinate labels. Integer and bool inputs are fine.
    method : {"kendall", "spearman", "pearson"}
        Kendall tau-b (ties handled as in ``scipy.stats.kendalltau``), Spearman
        rho (average ranks for ties) or Pearson r.
    dim : int or str, optional
        The positions: an axis for NumPy inputs (default -1), a dim name for
        xarray inputs (default ``"position"``).
    lengths : int or array of ints, optional
        Valid positions per instance, counted from the start (broadcast
        against the instance shape; a DataArray for xarray inputs). Positions
        where ``x`` or ``y`` is NaN are always left out too (schema-1 padding).
    exclude : {"special"}, bool array or sequence of int, optional
        Positions to leave out: a boolean mask (True = drop) broadcastable to
        the inputs, positions along ``dim`` (negative ones count back from each
        instance's last valid position, so ``[0, -1]`` drops [CLS] and [SEP]),
        or ``"special"`` to drop the tokens in :data:`SPECIAL_TOKENS`.
    tokens : array of str, optional
        Tokens (broadcastable to the inputs) for ``exclude="special"``. For
        xarray inputs the ``token`` coordinate is used when present.
    ci : float
        Confidence level of the bootstrap interval.
    alpha : float
        Significance level for ``significant_fraction``.
    n_boot : int
        Bootstrap resamples.
    seed : int or None
        Seed of the bootstrap and of the permutation p-values; every summary
        cell uses ``default_rng(seed)``, so a cell's interval does not depend on
        the other cells, and every instance draws its permutations from its own
        stream derived from (seed, instance index in C order), so p-values do
        not depend on the number of threads.
    over : int, str or sequence, optional
        Instance axes (NumPy: axes of the result, i.e. of the input without
        ``dim``) or dims (xarray) to summarise across. Default: every instance
        axis for NumPy; ``"sample"`` for xarray when present, else every dim.
    pvalue_method : {"auto", "exact", "asymptotic"}
        ``"asymptotic"``: the t distribution (Spearman; partial correlations
        with n - 2 - k degrees of freedom), the exact-under-normality beta
        distribution (Pearson) or the normal approximation with the
        tie-corrected variance (Kendall), as scipy. ``"exact"``: Kendall without
        ties uses its exact null distribution (any n, as
        ``kendalltau(method="exact")``); everything else gets a permutation
        p-value, over all n! orders for n <= 8 and from ``n_permutations``
        random orders beyond (see Notes). ``"auto"`` (default): as ``"exact"``
        for instances with at most :data:`AUTO_EXACT_MAX_N` (33) valid
        positions, as ``"asymptotic"`` for longer ones, except that Kendall
        without ties and with at most one discordant (or concordant) pair stays
        exact at any n (scipy's rule).
    control : array_like, xarray.DataArray or sequence of them, optional
        Control variable(s) for a partial correlation, one value per position
        (the shape of ``x``, or broadcastable like ``x`` and ``y``; DataArrays
        are aligned like ``x`` and ``y``). Positions where a control is NaN are
        invalid too. Spearman: the Pearson r of the residuals of rank(x) and
        rank(y) after a least-squares fit (with intercept) on the controls'
        ranks; Pearson: the same on the raw values; Kendall (one control only):
        Kendall's partial tau, whose p-value is NaN (see Notes).
    groups : array_like or xarray.DataArray, optional
        A label per instance along the ``over`` axes (e.g. one per sample: the
        source corpus, the annotator, the prompt template). The summary
        interval then comes from a cluster bootstrap over groups, and per-group
        summaries are added (see Returns).
    n_permutations : int
        Random orders per instance for permutation p-values beyond n = 8.

    Returns
    -------
    CorrelationResult or xarray.Dataset
        NumPy inputs give a :class:`CorrelationResult`; xarray inputs a Dataset
        with ``statistic``, ``pvalue`` and ``n_positions`` over the instance
        dims and ``mean_statistic``, ``ci_low``, ``ci_high``, ``significant_fraction``
        and ``n_instances`` over the instance dims not in ``over``. With
        ``groups``: ``group_mean_statistic``, ``group_ci_low``, ``group_ci_high``,
        ``group_significant_fraction`` and ``group_n_instances`` over those dims
        plus ``group`` (the sorted labels as its coordinate). The attrs record
        the settings, ``control`` (the controls' names, ``"given"`` for unnamed
        ones) and ``groups`` when used.

    Warns
    -----
    TooFewPositionsWarning
        Instances with fewer than 2 valid positions (statistic NaN).
    ConstantInputWarning
        Instances where ``x`` or ``y`` is constant over the valid positions, or
        (with controls) a linear function of the controls there (statistic
        NaN). Both are :class:`DegenerateInputWarning`.

    Notes
    -----
    With exactly 2 valid positions the statistic is +-1 and the p-value is 1
    for every method (scipy gives NaN for Spearman there, from a t test with
    0 degrees of freedom); likewise a partial correlation with no degree of
    freedom left (n = 2 + k). Kendall tau-b runs in O(n log n) per instance
    (Knight's algorithm). NaN statistics are left out of the summary, and NaN
    p-values out of ``significant_fraction`` (NaN when no p-value is defined).

    Permutation p-values permute y against x within the instance (ties kept:
    the ranks are permuted) and count the orders with |statistic| at least
    |observed| - 1e-12: p = count / n! when all n! orders are enumerated
    (n <= 8), else p = (1 + count) / (1 + n_permutations). For Kendall the
    tau-b denominator does not change under permutation, so the counts compare
    the integer S = concordant - discordant exactly. Partial Spearman/Pearson
    permute the residuals of y (Freedman & Lane 1983) and recompute the
    partial correlation each time; this is an approximate test (residuals are
    only approximately exchangeable). Kendall's partial tau has no p-value
    (NaN): its null distribution depends on the unknown joint distribution of
    x, y and the control, and permuting y tests a different hypothesis (y
    independent of both x and the control); use Spearman or Pearson for tests.

    The group summaries resample whole groups: each resample draws as many
    groups as are present, with replacement, and takes the mean over all
    instances of the drawn groups (a pooled mean, weighted by instances, so
    ``mean_statistic`` itself is unchanged). Instances within a group are
    often correlated (same source, same template), and the cluster interval is
    then wider and honest where the plain one is too narrow.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> attn = rng.random((200, 12))
    >>> impact = attn + 0.5 * rng.random((200, 12))
    >>> r = ak.correlate(attn, impact, method="spearman")
    >>> r.statistic.shape, bool(r.ci_low < r.mean_statistic < r.ci_high)
    ((200,), True)
    >>> float(r.significant_fraction) > 0.5
    True

    Lengths and excluded positions (here [CLS] and the last valid token):

    >>> r = ak.correlate(attn, impact, lengths=rng.integers(5, 13, 200), exclude=[0, -1])
    >>> int(r.n_positions.max()) <= 10
    True

    Controlling for position, and a cluster bootstrap over 20 sources:

    >>> position = np.broadcast_to(np.arange(12.0), attn.shape)
    >>> r = ak.correlate(attn, impact, method="spearman", control=position,
    ...                  groups=np.repeat(np.arange(20), 10))
    >>> r.control, r.group_mean_statistic.shape, int(r.group_n_instances.sum())
    ('given', (20,), 200)
    """
    ci, alpha, n_boot, seed = _check_common(method, ci, alpha, n_boot, seed, pvalue_method)
    n_permutations = errors.positive_int("n_permutations", n_permutations)
    if n_permutations >= 2**31:
        raise errors.value_error("n_permutations", "fewer than 2**31", n_permutations,
                                 "9999 or 99999 are the usual choices")
    controls = _control_list(control)
    groups_arg = groups
    if controls and method == "kendall" and len(controls) > 1:
        raise errors.value_error("control", "one control for method='kendall' (Kendall's "
                                 "partial tau)", f"{len(controls)} controls",
                                 "pass one control, or use method='spearman' or 'pearson', "
                                 "which regress on several")
    xarray_input = _is_xarray(x) or _is_xarray(y)
    if xarray_input:
        dim = "position" if dim is None else dim
        xv, yv, lengths, exclude, tokens, labels = _xr_inputs(x, y, dim, lengths, exclude,
                                                              tokens, over, controls, groups)
        xv, yv = _as_real("x", xv), _as_real("y", yv)
        zv = [_as_real("control", z) for z in labels["controls"]]
        xs, ys, valid, inst_shape, zs = _prepare(xv, yv, xv.ndim - 1, lengths, exclude, tokens,
                                                 zv)
        over_axes = labels["over_axes"]
        groups = labels["groups"]
    else:
        xv, yv = _as_real("x", x), _as_real("y", y)
        zv = [_as_real("control", z) for z in controls]
        ndim = max(v.ndim for v in (xv, yv, *zv))
        axis = _normalise_axis(-1 if dim is None else dim, ndim)
        xv, yv, *zv = (v.reshape((1,) * (ndim - v.ndim) + v.shape) for v in (xv, yv, *zv))
        xs, ys, valid, inst_shape, zs = _prepare(xv, yv, axis, lengths, exclude, tokens, zv)
        over_axes = _over_axes(over, len(inst_shape))
    group_labels, codes = (None, None) if groups is None else _group_codes(
        groups, tuple(inst_shape[i] for i in over_axes))
    stat, pvalue, count = _statistics(xs, ys, valid, method, pvalue_method, zs, n_permutations,
                                      seed)
    _warn_degenerate(stat, count, "", stacklevel=3, controls=bool(controls))
    stat, pvalue, count = (a.reshape(inst_shape) for a in (stat, pvalue, count))
    summary, per_group = _summarise(stat, pvalue, over_axes, alpha, ci, n_boot, seed, codes,
                                    0 if group_labels is None else len(group_labels))
    control_name = _control_name(controls) if controls else None
    groups_name = None
    if group_labels is not None:
        named = _is_xarray(groups_arg) and groups_arg.name is not None
        groups_name = str(groups_arg.name) if named else "given"
    if xarray_input:
        names = ("mean_statistic", "ci_low", "ci_high", "significant_fraction", "n_instances")
        variables = {"statistic": ("instance", stat), "pvalue": ("instance", pvalue),
                     "n_positions": ("instance", count)}
        variables.update({n: ("summary", v) for n, v in zip(names, summary)})
        if per_group is not None:
            variables.update({n: ("group", v) for n, v in zip(GROUP_VARIABLES, per_group)})
            labels["group_labels"] = group_labels
        over_dims = [labels["inst_dims"][i] for i in over_axes]
        return _xr_dataset(variables, labels,
                           _attrs(method, ci, alpha, n_boot, seed, over_dims, pvalue_method,
                                  n_permutations, control_name, groups_name))
    extra = {}
    if per_group is not None:
        extra = dict(zip(GROUP_VARIABLES, per_group), group_labels=group_labels,
                     groups=groups_name)
    return CorrelationResult(stat[()] if stat.ndim == 0 else stat,
                             pvalue[()] if pvalue.ndim == 0 else pvalue,
                             count[()] if count.ndim == 0 else count, *summary,
                             method=method, ci=ci, alpha=alpha, n_boot=n_boot, seed=seed,
                             over=over_axes, pvalue_method=pvalue_method,
                             n_permutations=n_permutations, control=control_name, **extra)


def _control_list(control):
    """``control`` as a list of arrays/DataArrays ([] for None)."""
    if control is None:
        return []
    if isinstance(control, (list, tuple)):
        if len(control) == 0:
            raise errors.value_error("control", "an array or a non-empty sequence of arrays",
                                     "an empty sequence", "pass control=None for no control")
        # several controls are a list/tuple of arrays; nested lists are one control
        if all(_is_xarray(c) or isinstance(c, np.ndarray) for c in control):
            return list(control)
    return [control]


def compare_correlations(a, b, y, *, method="kendall", dim=None, lengths=None, exclude=None,
                         tokens=None, ci=0.95, n_boot=2000, seed=0, over=None):
    """Paired comparison of two scores ``a`` and ``b`` correlated with the same ``y``.

    Correlates ``a`` with ``y`` and ``b`` with ``y`` per instance (as
    :func:`correlate`), takes the per-instance difference, and reports its
    mean with a percentile-bootstrap interval: an interval that excludes 0
    says one score tracks ``y`` better than the other on these instances.

    Parameters
    ----------
    a, b : array_like or xarray.DataArray
        The two scores (e.g. rollout and raw attention), same layout.
    y : array_like or xarray.DataArray
        The common target (e.g. leave-one-out impact).
    method, dim, lengths, exclude, tokens, ci, n_boot, seed, over
        As in :func:`correlate`; both scores see the same valid positions
        (positions where either score or ``y`` is NaN are dropped from both).

    Returns
    -------
    PairedComparison or xarray.Dataset
        ``statistic_a``, ``statistic_b`` and ``difference`` (a - b) per
        instance; ``mean_difference``, ``ci_low``, ``ci_high``, ``fraction_a_greater`` and
        ``n_instances`` across the ``over`` instances. xarray inputs give a
        Dataset with these variables.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(1)
    >>> impact = rng.random((300, 10))
    >>> good = impact + 0.2 * rng.random((300, 10))
    >>> poor = impact + 2.0 * rng.random((300, 10))
    >>> cmp = ak.compare_correlations(good, poor, impact, method="spearman")
    >>> bool(cmp.ci_low > 0), float(cmp.fraction_a_greater) > 0.8
    (True, True)
    """
    ci, _, n_boot, seed = _check_common(method, ci, 0.05, n_boot, seed, "auto")
    if any(_is_xarray(v) for v in (a, b, y)):
        import xarray as xr

        dim = "position" if dim is None else dim
        for name, value in (("a", a), ("b", b), ("y", y)):
            if not isinstance(value, xr.DataArray):
                raise TypeError(f"{name}: expected an xarray.DataArray like the other inputs, got "
                                f"{type(value).__name__}. Fix: pass three DataArrays or three "
                                f"NumPy arrays.")
        try:
            a, b, y = xr.align(a, b, y, join="exact")
        except ValueError as exc:
            raise errors.value_error("a, b, y", "the same coordinate labels",
                                     str(exc).splitlines()[0],
                                     "select matching samples/positions first") from None
        a, b, y = xr.broadcast(a, b, y)
        # a common NaN pattern, so that both scores use the same positions
        nan = a.isnull() | b.isnull() | y.isnull()
        y = y.where(~nan)
        av, yv, lengths_, exclude_, tokens_, labels = _xr_inputs(a.where(~nan), y, dim, lengths,
                                                                 exclude, tokens, over)
        bv, *_ = _xr_inputs(b.where(~nan), y, dim, lengths, exclude, tokens, over)
        av, bv, yv = _as_real("a", av), _as_real("b", bv), _as_real("y", yv)
        axis, over_axes = av.ndim - 1, labels["over_axes"]
    else:
        av, bv, yv = _as_real("a", a), _as_real("b", b), _as_real("y", y)
        ndim = max(av.ndim, bv.ndim, yv.ndim)
        av, bv, yv = (v.reshape((1,) * (ndim - v.ndim) + v.shape) for v in (av, bv, yv))
        axis = _normalise_axis(-1 if dim is None else dim, ndim)
        try:
            shape = np.broadcast_shapes(av.shape, bv.shape, yv.shape)
        except ValueError:
            raise errors.value_error("a, b, y", "shapes that broadcast together",
                                     (av.shape, bv.shape, yv.shape),
                                     "give the scores and the target the same instance "
                                     "axes") from None
        nan = np.zeros(shape, dtype=bool)
        for v in (av, bv, yv):
            if v.dtype.kind == "f":
                nan = nan | np.isnan(v)
        av = np.where(nan, np.nan, av)
        bv = np.where(nan, np.nan, bv)
        lengths_, exclude_, tokens_ = lengths, exclude, tokens
        over_axes = None
    stats = []
    for score in (av, bv):
        xs, ys, valid, inst_shape, _ = _prepare(score, yv, axis, lengths_, exclude_, tokens_)
        stat, _, count = _statistics(xs, ys, valid, method, "asymptotic")
        _warn_degenerate(stat, count, " of a" if not stats else " of b", stacklevel=3)
        stats.append(stat.reshape(inst_shape))
    if over_axes is None:
        over_axes = _over_axes(over, len(inst_shape))
    diff, summary = _summarise_paired(stats[0], stats[1], over_axes, ci, n_boot, seed)
    if any(_is_xarray(v) for v in (a, b, y)):
        names = ("mean_difference", "ci_low", "ci_high", "fraction_a_greater", "n_instances")
        variables = {"statistic_a": ("instance", stats[0]), "statistic_b": ("instance", stats[1]),
                     "difference": ("instance", diff)}
        variables.update({n: ("summary", v) for n, v in zip(names, summary)})
        over_dims = [labels["inst_dims"][i] for i in over_axes]
        return _xr_dataset(variables, labels,
                           _attrs(method, ci, None, n_boot, seed, over_dims, None))
    return PairedComparison(*(s[()] if s.ndim == 0 else s for s in (stats[0], stats[1], diff)),
                            *summary, method=method, ci=ci, n_boot=n_boot, seed=seed,
                            over=over_axes)
