"""The permutation checker: :func:`check_equivariance` and its tolerance rule.

Tolerance rule
--------------
Every comparison is made in float64. Each output gets one tolerance::

    tolerance = atol + rtol * max|expected output|

with defaults ``atol = 0`` and ``rtol = 32 * sqrt(n) * eps``, where ``n`` is
the length of the permuted axis and ``eps`` the machine epsilon of the
coarsest floating dtype among the array arguments and the outputs (float64
2.2e-16, float32 1.2e-7, float16 9.8e-4, bfloat16 7.8e-3). Reordering a sum
of ``n`` terms moves the result by a few ``sqrt(n) * eps`` relative to its
magnitude; the factor 32 leaves room for the softmax and a few layers.
Scaling by the largest magnitude of the output (not element by element)
keeps values near zero from needing a tolerance of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import is_int, positive_int, value_error
from .report import EquivarianceReport, OutputResult, TrialResult

__all__ = ["check_equivariance", "default_rtol", "EXPECTATIONS", "RTOL_FACTOR"]

#: What a check can expect of ``fn``.
EXPECTATIONS = ("equivariant", "invariant")

#: ``rtol = RTOL_FACTOR * sqrt(n) * eps`` unless given.
RTOL_FACTOR = 32.0


# -------------------------------------------------------------- validation
def _axes_tuple(spec, what: str, fix: str) -> tuple[int, ...]:
    """An axis spec (int or non-empty tuple/list of ints) as a tuple."""
    axes = (spec,) if is_int(spec) else spec
    if not isinstance(axes, (tuple, list)) or not axes or not all(is_int(a) for a in axes):
        raise value_error(what, "an int axis or a tuple of int axes", repr(spec), fix)
    return tuple(int(a) for a in axes)


def _normalise_axes(axes: tuple[int, ...], ndim: int, what: str, shape, fix: str):
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise value_error(what, f"axes in [-{ndim}, {ndim}) for shape {shape}", a, fix)
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise value_error(what, "distinct axes", list(axes), "name each axis once")
    return tuple(out)


def _parse_permute(permute, args) -> dict[int, tuple[int, ...]]:
    """Validate ``permute`` against ``args``; return index -> normalised axes."""
    if not isinstance(permute, Mapping) or not permute:
        raise value_error(
            "permute", "a non-empty dict {argument index: axis}", repr(permute),
            "pass e.g. permute={0: -2} to permute the rows of the first argument",
        )
    parsed = {}
    for index, spec in permute.items():
        if not is_int(index) or not 0 <= index < len(args):
            raise value_error(
                "permute", f"argument indices 0..{len(args) - 1} (fn gets {len(args)} "
                "arguments)", repr(index), "key the dict by the position of the argument "
                "in check_equivariance(fn, *args)",
            )
        what = f"permute[{index}]"
        axes = _axes_tuple(spec, what, "pass e.g. -2 for the sequence axis of (..., n, d)")
        arg = args[index]
        shape = np.shape(arg)
        if not hasattr(arg, "shape") and not isinstance(arg, (list, tuple)):
            raise value_error(
                what, "an array argument to permute", f"{type(arg).__name__}",
                "permute only array arguments; leave scalars, masks and options out of permute",
            )
        parsed[int(index)] = _normalise_axes(
            axes, len(shape), what, shape,
            f"argument {index} has shape {shape}; pick an axis of it",
        )
    lengths = {(i, a): np.shape(args[i])[a] for i, axes in parsed.items() for a in axes}
    sizes = set(lengths.values())
    if len(sizes) > 1:
        detail = ", ".join(f"argument {i} axis {a}: {s}" for (i, a), s in lengths.items())
        raise value_error(
            "permute", "axes of one common length (they share one permutation)", detail,
            "permute axes of equal length, e.g. the key and value sequence axes together",
        )
    n = sizes.pop()
    if n < 2:
        raise value_error(
            "permute", "axes of length >= 2", f"length {n}",
            "use at least 2 positions: every permutation of fewer is the identity, so "
            "the check could not fail",
        )
    return parsed


def _outputs(result) -> list[tuple[str, np.ndarray]]:
    """fn's result as (name, float-or-int array) pairs."""
    if isinstance(result, Mapping):
        items = [(str(k), v) for k, v in result.items()]
    elif isinstance(result, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(result)]
    else:
        items = [("out", result)]
    out = []
    for name, value in items:
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub" and arr.dtype.name != "bfloat16":
            raise TypeError(
                f"fn output {name!r}: expected a numeric array, got {arr.dtype}. Fix: "
                "return arrays (a single array, a tuple or a dict of arrays)."
            )
        out.append((name, arr))
    return out


def _resolve_out_axes(out_axis, outputs, expect: str, n: int):
    """Map each compared output name to its permuted axes (None: unchanged)."""
    names = [name for name, _ in outputs]
    if expect == "invariant":
        return {name: None for name in names}, ()
    single = len(outputs) == 1 and names == ["out"]
    if single or out_axis is None or is_int(out_axis):
        specs = {name: out_axis for name in names}
    elif isinstance(out_axis, Mapping):
        unknown = [str(k) for k in out_axis if str(k) not in names]
        if unknown:
            raise value_error(
                "out_axis", f"keys among fn's outputs {names}", unknown,
                "name outputs as fn returns them (tuple outputs by position: 0, 1, ...)",
            )
        specs = {str(k): v for k, v in out_axis.items()}
    elif isinstance(out_axis, (tuple, list)):
        if len(out_axis) != len(outputs):
            raise value_error(
                "out_axis", f"one entry per output ({len(outputs)} outputs)",
                f"{len(out_axis)} entries {tuple(out_axis)!r}",
                "give one axis (int, tuple of ints, or None for 'unchanged') per output; "
                "to permute several axes of one output, nest them: ((-2, -1), -1)",
            )
        specs = dict(zip(names, out_axis))
    else:
        raise value_error("out_axis", "an int, a tuple, a dict or None", repr(out_axis),
                          "pass e.g. out_axis=-2")
    resolved = {}
    shapes = dict(outputs)
    for name, spec in specs.items():
        if spec is None:
            resolved[name] = None
            continue
        what = "out_axis" if single else f"out_axis[{name!r}]"
        shape = shapes[name].shape
        axes = _normalise_axes(
            _axes_tuple(spec, what, "pass the output axis that holds positions, or None"),
            len(shape), what, shape, f"output {name!r} has shape {shape}",
        )
        bad = [a for a in axes if shape[a] != n]
        if bad:
            raise value_error(
                what, f"output axes of length n = {n} (the permuted length)",
                f"axis {bad[0]} of length {shape[bad[0]]} in output {name!r} of shape {shape}",
                "pick the output axis that holds positions, or None for an output that "
                "should not change",
            )
        resolved[name] = axes
    ignored = tuple(name for name in names if name not in resolved)
    return resolved, ignored


def _eps(dtype: np.dtype) -> float | None:
    if dtype.name == "bfloat16":
        return 2.0**-7
    if dtype.kind == "f":
        return float(np.finfo(dtype).eps)
    return None


def default_rtol(n: int, dtypes) -> tuple[float, float]:
    """The default relative tolerance for permuted length ``n``, and its eps.

    ``rtol = 32 * sqrt(n) * eps`` with ``eps`` the epsilon of the coarsest
    floating dtype in ``dtypes`` (float64 when there is none).

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.equivariance import default_rtol
    >>> rtol, eps = default_rtol(16, [np.float32, np.float64])
    >>> eps == float(np.finfo(np.float32).eps), bool(np.isclose(rtol, 128 * eps))
    (True, True)
    """
    found = [e for e in (_eps(np.dtype(d)) for d in dtypes) if e is not None]
    eps = max(found, default=float(np.finfo(np.float64).eps))
    return RTOL_FACTOR * math.sqrt(n) * eps, eps


def _tolerance_arg(name: str, value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)) or not np.isfinite(value) or value < 0:
        raise value_error(name, "None or a finite float >= 0", repr(value),
                          f"pass e.g. {name}=1e-6")
    return float(value)


# ------------------------------------------------------------- comparison
def _compare(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs difference, max |expected|) in float64; matching NaN/inf count as equal."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(
            f"fn output: expected the same shape for permuted inputs, got {a.shape} instead of "
            f"{e.shape}. Fix: fn must return outputs whose shape does not depend on the order "
            "of its inputs."
        )
    finite = np.isfinite(e)
    scale = float(np.abs(e[finite]).max()) if finite.any() else 0.0
    if a.size == 0:
        return 0.0, scale
    same = (a == e) | (np.isnan(a) & np.isnan(e))
    if same.all():
        return 0.0, scale
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - e))
    # NaN against a number, or inf against anything else: infinitely wrong
    diff[np.isnan(diff)] = math.inf
    return float(diff.max()), scale


def _permutations(n: int, trials: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``trials`` seeded permutations of ``range(n)``: never the identity, distinct if possible."""
    identity = np.arange(n)
    perms: list[np.ndarray] = []
    distinct = math.factorial(n) - 1 if n < 13 else math.inf
    while len(perms) < trials:
        perm = rng.permutation(n)
        if np.array_equal(perm, identity):
            continue
        if len(perms) < distinct and any(np.array_equal(perm, p) for p in perms):
            continue
        perms.append(perm)
    return perms


# ------------------------------------------------------------------ checker
def check_equivariance(fn, *args, permute=None, expect="equivariant", out_axis=-2, trials=5,
                       seed=0, atol=None, rtol=None, name=None) -> EquivarianceReport:
    """Check that ``fn`` commutes with (or ignores) permutations of its inputs.

    Each trial draws a permutation ``p`` of ``range(n)`` (seeded, never the
    identity), applies it to the listed axes of the listed arguments (one
    shared permutation for all of them), calls ``fn`` and compares in float64:

    * ``expect="equivariant"``: ``fn(permuted) == take(fn(args), p, out_axis)``,
      e.g. permuting the queries permutes the output rows;
    * ``expect="invariant"``: ``fn(permuted) == fn(args)``, e.g. permuting
      key/value pairs together leaves attention unchanged.

    Parameters
    ----------
    fn : callable
        Called as ``fn(*args)``; returns an array, a tuple/list of arrays, or
        a dict of arrays (e.g. :func:`attnkit.attention_stats`). Bind other
        arguments with a lambda or ``functools.partial``.
    *args
        Arguments of ``fn``. Those not in ``permute`` pass through unchanged.
    permute : dict of int to int or tuple of int
        Argument index -> axis (or axes) to permute; default ``{0: -2}``, the
        sequence axis of the first argument. All listed axes must have the
        same length ``n >= 2``. A tuple permutes several axes of one argument
        alike (e.g. both axes of an (n, n) bias).
    expect : {"equivariant", "invariant"}
    out_axis : int, tuple, list, dict or None
        Where the permutation shows in the output (``expect="equivariant"``
        only; ignored for "invariant"). For a single array output: an axis
        or a tuple of axes (``(-2, -1)`` for self-attention weights). For a
        tuple output: one int/None for all outputs, or one entry per output
        (nest tuples to permute several axes of one output). For a dict
        output: one int/None for all, or a dict naming the outputs to compare
        (others are not compared and listed in ``report.ignored_outputs``).
        ``None`` means "this output must not change".
    trials : int
        Number of permutations to try.
    seed : int
        Seed of ``np.random.default_rng`` for the permutations.
    atol, rtol : float, optional
        Tolerance ``atol + rtol * max|expected output|`` per output; defaults
        ``0`` and ``32 * sqrt(n) * eps`` (see the module docstring).
    name : str, optional
        Label for the report (default ``fn.__name__``).

    Returns
    -------
    EquivarianceReport
        ``.passed``, ``.max_abs_error``, ``.max_rel_error``, ``.tolerance``,
        ``.failing_permutation``, per-trial errors in ``.trials``; print it
        for a readable summary, ``.to_dict()`` for JSON.

    Examples
    --------
    Self-attention without positions is permutation equivariant:

    >>> import numpy as np, attnkit as ak
    >>> x = np.random.default_rng(0).standard_normal((10, 8))
    >>> report = ak.check_equivariance(lambda x: ak.attention(x, x, x), x)
    >>> report.passed, report.max_abs_error < 1e-13
    (True, True)

    Permuting key/value pairs together leaves the output unchanged:

    >>> q, k, v = (np.random.default_rng(i).standard_normal((6, 4)) for i in range(3))
    >>> ak.check_equivariance(ak.attention, q, k, v, permute={1: -2, 2: -2},
    ...                       expect="invariant").passed
    True

    A causal mask ties the output to positions, and the report says by how much:

    >>> causal = ak.check_equivariance(lambda x: ak.attention(x, x, x, causal=True), x)
    >>> causal.passed, causal.max_rel_error > 0.1
    (False, True)
    >>> causal.failing_permutation is not None
    True
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}. Fix: pass the "
                        "function to check, e.g. lambda x: ak.attention(x, x, x).")
    if not args:
        raise value_error("args", "at least one argument for fn", "none",
                          "call check_equivariance(fn, x, ...)")
    if expect not in EXPECTATIONS:
        raise value_error("expect", "'equivariant' or 'invariant'", repr(expect),
                          "pick one of those")
    trials = positive_int("trials", trials)
    atol_arg, rtol_arg = _tolerance_arg("atol", atol), _tolerance_arg("rtol", rtol)
    axes = _parse_permute({0: -2} if permute is None else permute, args)
    n = np.shape(args[next(iter(axes))])[axes[next(iter(axes))][0]]
    if isinstance(seed, np.random.Generator):
        raise TypeError("seed: expected an int, got a Generator. Fix: pass an int seed so the "
                        "report can be reproduced.")
    rng = np.random.default_rng(seed)

    base = _outputs(fn(*args))
    specs, ignored = _resolve_out_axes(out_axis, base, expect, n)
    dtypes = [np.asarray(a).dtype for a in args if hasattr(a, "dtype") or isinstance(a, np.ndarray)]
    dtypes += [arr.dtype for _, arr in base]
    default, eps = default_rtol(n, dtypes)
    rtol_v = default if rtol_arg is None else rtol_arg
    atol_v = 0.0 if atol_arg is None else atol_arg

    def expected_of(name, arr, perm):
        spec = specs[name]
        if spec is None:
            return arr
        for a in spec:
            arr = np.take(arr, perm, axis=a)
        return arr

    results = []
    for perm in _permutations(n, trials, rng):
        permuted = list(args)
        for index, arg_axes in axes.items():
            arr = np.asarray(args[index])
            for a in arg_axes:
                arr = np.take(arr, perm, axis=a)
            permuted[index] = arr
        got = dict(_outputs(fn(*permuted)))
        if sorted(got) != sorted(name for name, _ in base):
            raise ValueError(
                f"fn output: expected the same outputs for permuted inputs, got {sorted(got)} "
                f"instead of {sorted(name for name, _ in base)}. Fix: return the same structure "
                "whatever the input order."
            )
        per_output = []
        for out_name, arr in base:
            if out_name not in specs:
                continue
            err, scale = _compare(got[out_name], expected_of(out_name, arr, perm))
            tol = atol_v + rtol_v * scale
            rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
            per_output.append(OutputResult(out_name, specs[out_name], err, rel, tol))
        results.append(TrialResult(perm, tuple(per_output)))

    worst_trial = max(results, key=lambda t: t.worst.ratio)
    worst = worst_trial.worst
    passed = all(t.passed for t in results)
    return EquivarianceReport(
        name=name or getattr(fn, "__name__", type(fn).__name__),
        expect=expect,
        passed=passed,
        max_abs_error=worst.max_abs_error,
        max_rel_error=worst.max_rel_error,
        tolerance=worst.tolerance,
        worst_output=worst.name,
        failing_permutation=None if passed else worst_trial.permutation,
        trials=tuple(results),
        n=int(n),
        rtol=rtol_v,
        atol=atol_v,
        eps=eps,
        permuted={i: tuple(a) for i, a in axes.items()},
        ignored_outputs=ignored,
    )
