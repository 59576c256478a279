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
    "is_int",
    "position",
    "positive_int",
    "nonnegative_int",
    "layer_index",
    "fraction",
    "flag",
    "BACKENDS",
    "backend_name",
    "method_names",
]

#: The values every ``backend=`` argument accepts.
BACKENDS = ("auto", "cpu", "cuda")


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


def is_int(value) -> bool:
    """True for Python and NumPy integers, False for bools (which are ints to Python).

    Examples
    --------
    >>> is_int(3), is_int(True), is_int(3.0)
    (True, False, False)
    """
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
    if not is_int(value) or not 0 <= value < n:
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
    if not is_int(value) or value < 1:
        raise value_error(name, "a positive int", repr(value), f"pass {name} >= 1")
    return int(value)


def nonnegative_int(name: str, value, fix: str | None = None) -> int:
    """Return ``value`` as an int if it is an integer >= 0 (not a bool), else raise.

    Examples
    --------
    >>> nonnegative_int("seed", 0)
    0
    >>> nonnegative_int("seed", -1)
    Traceback (most recent call last):
    ...
    ValueError: seed: expected a non-negative int, got -1. Fix: pass e.g. seed=0.
    """
    if not is_int(value) or value < 0:
        raise value_error(name, "a non-negative int", repr(value), fix or f"pass e.g. {name}=0")
    return int(value)


def layer_index(name: str, value, n_layers: int) -> int:
    """Return a layer index in [0, n_layers); negative values count from the end.

    Examples
    --------
    >>> layer_index("start_layer", -1, 6)
    5
    >>> layer_index("start_layer", 6, 6)
    Traceback (most recent call last):
    ...
    ValueError: start_layer: expected an int layer index in [0, 6), got 6. Fix: count layers from 0 (negative counts from the end).
    """
    if not is_int(value) or not -n_layers <= value < n_layers:
        raise value_error(name, f"an int layer index in [0, {n_layers})", repr(value),
                          "count layers from 0 (negative counts from the end)")
    return int(value) % n_layers


def fraction(name: str, value, *, upper_open: bool = False) -> float:
    """Return ``value`` as a float in [0, 1] (or [0, 1) with ``upper_open``), else raise.

    Examples
    --------
    >>> fraction("residual", 0.5)
    0.5
    >>> fraction("discard_ratio", 1, upper_open=True)
    Traceback (most recent call last):
    ...
    ValueError: discard_ratio: expected a number in [0, 1), got 1. Fix: pass e.g. discard_ratio=0.5.
    """
    import numpy as np

    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))
    if ok:
        ok = 0.0 <= float(value) < 1.0 if upper_open else 0.0 <= float(value) <= 1.0
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise value_error(name, f"a number in {interval}", repr(value), f"pass e.g. {name}=0.5")
    return float(value)


def flag(name: str, value) -> bool:
    """Return ``value`` as a bool if it is True or False (NumPy bools too), else raise.

    Examples
    --------
    >>> flag("normalize", False)
    False
    >>> flag("normalize", "yes")
    Traceback (most recent call last):
    ...
    ValueError: normalize: expected True or False, got 'yes'. Fix: pass normalize=True or normalize=False.
    """
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise value_error(name, "True or False", repr(value),
                          f"pass {name}=True or {name}=False")
    return bool(value)


def backend_name(value) -> str:
    """Return ``value`` if it is a backend name ("auto", "cpu" or "cuda"), else raise.

    Only the name is checked; whether that backend can run here is decided
    where the computation is dispatched.

    Examples
    --------
    >>> backend_name("cpu")
    'cpu'
    >>> backend_name("gpu")
    Traceback (most recent call last):
    ...
    ValueError: backend: expected one of 'auto', 'cpu', 'cuda', got 'gpu'. Fix: pick one of those.
    """
    if not isinstance(value, str) or value not in BACKENDS:
        raise value_error("backend", "one of 'auto', 'cpu', 'cuda'", repr(value),
                          "pick one of those")
    return value


def method_names(name: str, value, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """One method name or a sequence of them, each in ``allowed`` and listed once.

    Examples
    --------
    >>> method_names("method", "mask", ("delete", "mask"))
    ('mask',)
    """
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise value_error(name, f"one or more of {allowed}", "nothing",
                          f"pass {name}={allowed[0]!r}")
    for m in names:
        if m not in allowed:
            raise value_error(name, f"one of {allowed}", repr(m), "pick one of those")
    if len(set(names)) != len(names):
        raise value_error(name, "distinct names", names, f"list each {name} once")
    return names
