"""Shared error types and message builders.

Every message says what was expected, what was received, and how to fix it.
Tests match these messages with ``pytest.raises(match=...)``, so keep the
wording stable.
"""

from __future__ import annotations

__all__ = [
    "AttnkitError",
    "WeightsTooLargeError",
    "BackendUnavailableError",
    "shape_error",
    "dtype_error",
    "value_error",
    "positive_int",
]


class AttnkitError(Exception):
    """Base class for attnkit's own exception types."""


class WeightsTooLargeError(AttnkitError, MemoryError):
    """Raised when materialising attention weights would exceed the memory budget."""


class BackendUnavailableError(AttnkitError, RuntimeError):
    """Raised when a requested compute backend cannot run here."""


def shape_error(argument: str, expected: str, got, fix: str) -> ValueError:
    """Build a ValueError for an argument with the wrong shape.

    Examples
    --------
    >>> str(shape_error("q", "(..., n, d)", (3,), "add a sequence axis"))
    'q: expected shape (..., n, d), got (3,). Fix: add a sequence axis.'
    """
    return ValueError(f"{argument}: expected shape {expected}, got {got}. Fix: {fix}.")


def dtype_error(argument: str, got, fix: str | None = None) -> TypeError:
    """Build a TypeError for an unsupported dtype.

    Examples
    --------
    >>> import numpy as np
    >>> str(dtype_error("q", np.dtype("int64")))  # doctest: +ELLIPSIS
    'q: expected float16, bfloat16, float32 or float64, got int64. Fix: cast it, e.g. q.astype(np.float32).'
    """
    fix = fix or f"cast it, e.g. {argument}.astype(np.float32)"
    return TypeError(
        f"{argument}: expected float16, bfloat16, float32 or float64, got {got}. Fix: {fix}."
    )


def value_error(argument: str, expected: str, got, fix: str) -> ValueError:
    """Build a ValueError for an argument with a bad value.

    Examples
    --------
    >>> str(value_error("window", "a positive int", 0, "pass window >= 1"))
    'window: expected a positive int, got 0. Fix: pass window >= 1.'
    """
    return ValueError(f"{argument}: expected {expected}, got {got}. Fix: {fix}.")


def position(name: str, value, n: int, fix: str) -> int:
    """Return ``value`` as an int if it is an integer index in [0, n) (not a bool), else raise.

    Examples
    --------
    >>> position("query", 2, 5, "pick a query inside the sequence")
    2
    >>> position("query", 5, 5, "pick a query inside the sequence")
    Traceback (most recent call last):
    ...
    ValueError: query: expected a position in [0, 5), got 5. Fix: pick a query inside the sequence.
    """
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not (
            0 <= value < n):
        raise value_error(name, f"a position in [0, {n})", repr(value), fix)
    return int(value)


def positive_int(name: str, value) -> int:
    """Return ``value`` as an int if it is a positive integer (not a bool), else raise.

    Examples
    --------
    >>> positive_int("window", 3)
    3
    >>> positive_int("window", 0)
    Traceback (most recent call last):
    ...
    ValueError: window: expected a positive int, got 0. Fix: pass window >= 1.
    """
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise value_error(name, "a positive int", repr(value), f"pass {name} >= 1")
    return int(value)
