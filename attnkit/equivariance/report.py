"""What :func:`attnkit.check_equivariance` returns: the report and its per-trial parts.

An :class:`EquivarianceReport` holds one :class:`TrialResult` per permutation,
and each trial one :class:`OutputResult` per compared output. Plain data: the
checker fills them in, nothing here computes a comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EquivarianceReport", "TrialResult", "OutputResult"]


@dataclass(frozen=True)
class OutputResult:
    """One output of one trial: its error against its own tolerance."""

    name: str
    axes: tuple | None  # permuted output axes; None: expected unchanged
    max_abs_error: float
    max_rel_error: float  # max_abs_error / max|expected|
    tolerance: float

    @property
    def ratio(self) -> float:
        """``max_abs_error / tolerance`` (passes at <= 1)."""
        return _ratio(self.max_abs_error, self.tolerance)

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance


@dataclass(frozen=True)
class TrialResult:
    """One permutation and how every compared output fared under it."""

    permutation: np.ndarray
    outputs: tuple[OutputResult, ...]

    @property
    def worst(self) -> OutputResult:
        """The output with the largest error relative to its tolerance."""
        return max(self.outputs, key=lambda o: o.ratio)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return self.worst.max_abs_error

    @property
    def max_rel_error(self) -> float:
        return self.worst.max_rel_error


@dataclass(frozen=True)
class EquivarianceReport:
    """Result of :func:`check_equivariance`.

    With several outputs, ``max_abs_error``, ``max_rel_error`` and
    ``tolerance`` describe the output that came closest to (or went furthest
    past) its tolerance, named by ``worst_output``; ``trials`` has every
    output of every trial. ``passed`` is ``max_abs_error <= tolerance``.

    Attributes
    ----------
    name : str
        What was checked (``fn.__name__`` unless given).
    expect : {"equivariant", "invariant"}
    passed : bool
        Every output of every trial is within its tolerance.
    max_abs_error, max_rel_error, tolerance : float
        Worst trial: largest absolute difference, the same divided by the
        largest magnitude of that output, and that output's tolerance.
    worst_output : str
        Name of the output the figures above describe ("out" for a single
        array, "0", "1", ... for a tuple, the key for a dict).
    failing_permutation : ndarray or None
        The permutation of the worst failing trial; None when passed.
    trials : tuple of TrialResult
        Per-trial permutations and errors.
    n : int
        Length of the permuted axes.
    rtol, atol, eps : float
        The tolerance parameters used, and the epsilon the default came from.
    permuted : dict
        Argument index -> permuted axes, as checked.
    ignored_outputs : tuple of str
        Outputs of a dict result not named in ``out_axis`` (not compared).
    """

    name: str
    expect: str
    passed: bool
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    worst_output: str
    failing_permutation: np.ndarray | None
    trials: tuple[TrialResult, ...]
    n: int
    rtol: float
    atol: float
    eps: float
    permuted: dict = field(default_factory=dict)
    ignored_outputs: tuple[str, ...] = ()

    @property
    def trial_errors(self) -> np.ndarray:
        """Worst absolute error of each trial, shape (trials,)."""
        return np.array([t.max_abs_error for t in self.trials])

    def to_dict(self) -> dict:
        """A JSON-friendly summary (floats, ints, lists and strings only)."""
        return {
            "name": self.name,
            "expect": self.expect,
            "passed": bool(self.passed),
            "max_abs_error": float(self.max_abs_error),
            "max_rel_error": float(self.max_rel_error),
            "tolerance": float(self.tolerance),
            "worst_output": self.worst_output,
            "failing_permutation": None if self.failing_permutation is None
            else [int(i) for i in self.failing_permutation],
            "n": int(self.n),
            "rtol": float(self.rtol),
            "atol": float(self.atol),
            "eps": float(self.eps),
            "permuted": {str(k): list(v) for k, v in self.permuted.items()},
            "ignored_outputs": list(self.ignored_outputs),
            "trials": [
                {
                    "permutation": [int(i) for i in t.permutation],
                    "passed": bool(t.passed),
                    "outputs": [
                        {"name": o.name, "axes": None if o.axes is None else list(o.axes),
                         "max_abs_error": float(o.max_abs_error),
                         "max_rel_error": float(o.max_rel_error),
                         "tolerance": float(o.tolerance)}
                        for o in t.outputs
                    ],
                }
                for t in self.trials
            ],
        }

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"<EquivarianceReport {self.name!r} {self.expect}: {verdict}, max abs error "
                f"{self.max_abs_error:.3g} vs tolerance {self.tolerance:.3g}, "
                f"{len(self.trials)} trials, n={self.n}>")

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        permuted = ", ".join(f"argument {i} axis {'/'.join(map(str, ax))}"
                             for i, ax in self.permuted.items())
        lines = [
            f"{self.expect} check of {self.name}: {verdict}",
            f"  permuted: {permuted} (n = {self.n}); {len(self.trials)} seeded permutations",
            f"  max abs error {self.max_abs_error:.3g} "
            f"{'<=' if self.passed else '>'} tolerance {self.tolerance:.3g} "
            f"(output {self.worst_output!r}; max rel error {self.max_rel_error:.3g}; "
            f"rtol {self.rtol:.3g}, atol {self.atol:.3g}, eps {self.eps:.3g})",
        ]
        compared = ", ".join(
            f"{o.name} ({'unchanged' if o.axes is None else 'axis ' + '/'.join(map(str, o.axes))})"
            for o in self.trials[0].outputs)
        lines.append(f"  compared: {compared}")
        if self.failing_permutation is not None:
            lines.append(f"  failing permutation: {_short(self.failing_permutation)}")
        if self.ignored_outputs:
            lines.append(f"  not compared: {', '.join(self.ignored_outputs)}")
        names = [o.name for o in self.trials[0].outputs]
        several = len(names) > 1
        head = ["trial"]
        for out in names:
            prefix = f"{out} " if several else ""
            head += [f"{prefix}max_abs_error", f"{prefix}max_rel_error"]
        head.append("passed")
        widths = [max(len(h), 9) for h in head]
        lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths)))
        for i, t in enumerate(self.trials):
            cells = [str(i)]
            for o in t.outputs:
                cells += [f"{o.max_abs_error:.3g}", f"{o.max_rel_error:.3g}"]
            cells.append("yes" if t.passed else "no")
            lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
        return "\n".join(lines)


def _ratio(err: float, tol: float) -> float:
    if err <= tol:
        return err / tol if tol > 0 else 0.0
    return err / tol if tol > 0 else math.inf


def _short(perm: np.ndarray, limit: int = 16) -> str:
    items = [str(int(i)) for i in perm[:limit]]
    return "[" + " ".join(items) + (" ...]" if perm.size > limit else "]")
