"""The scalar a model's gradients are taken of: ``T(x') = <r(x'), direction>``.

``r`` is the model's read-out before any final normalisation (MiniLM: the
mean-pooled last hidden state). ``target="self"`` takes ``direction =
r(x) / |r(x)|`` of the unperturbed input, held fixed; an array gives the
direction itself, one for all samples or one per sample.
"""

from __future__ import annotations

import numpy as np

from ..errors import shape_error, value_error

SELF = "self"


def check_target(target, n_samples: int, width: int, what: str = "the read-out"):
    """Validate ``target``: None for "self", else a float64 array (n_samples, width).

    Raises
    ------
    ValueError
        For an unknown string, a wrong length, or non-finite values.
    """
    if isinstance(target, str):
        if target != SELF:
            raise value_error("target", f"'{SELF}' or an array of {width} floats", repr(target),
                              f"pass target='{SELF}' or a direction vector of length {width}")
        return None
    try:
        a = np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"target: expected '{SELF}' or an array of {width} floats, got "
                        f"{type(target).__name__}. Fix: pass a NumPy vector of length {width}") from exc
    if a.shape == (width,):
        a = np.broadcast_to(a, (n_samples, width))
    elif a.shape != (n_samples, width):
        raise shape_error("target", f"({width},) or ({n_samples}, {width}): one direction in "
                          f"{what} space of width {width}, for all samples or per sample",
                          a.shape, f"pass a vector of length {width}")
    if not np.all(np.isfinite(a)):
        raise value_error("target", "finite values", "NaN or inf", "replace them")
    return a


def describe(target) -> str:
    """A str for the dataset attrs (netCDF attrs hold no arrays)."""
    if target is None:
        return "self: T(x') = <r(x'), r(x)/|r(x)|>, r(x) held fixed"
    return "vector: T(x') = <r(x'), target> (stored as gradient_target)"


def directions(target, readout, index) -> np.ndarray:
    """Per-row direction of a batch: ``r/|r|`` (target None) or ``target[index]``."""
    if target is None:
        norm = np.linalg.norm(readout, axis=-1, keepdims=True)
        return readout / np.where(norm > 0, norm, 1.0)
    return np.asarray(target[index], dtype=readout.dtype)
