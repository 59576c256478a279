"""Which output a score explains: a weighting of the output positions.

A model reads its answer from some output positions: BERT classifiers from
[CLS], sentence-transformers such as all-MiniLM-L6-v2 from the mean over all
valid tokens, a saliency ViT from every patch. A score that explains "the
output" must be read there. :func:`readout_weights` turns a ``target`` into
one weight row per sample, ``w[s]`` (summing to 1 over the sample's valid
positions), and every read-out-aware score is linear in it:

* raw attention of layer ``l``: ``w @ mean_h A_l``;
* rollout and gradient-weighted rollout: ``w @ R_l``;
* attention flow: the maximum flow from a super-source joined to every top
  node ``i`` by an edge of capacity ``w[i]`` (for ``target="mean"``: ``1/n``
  into every top-layer node).

``target`` may be

* an int: that output position (0 = [CLS]); samples not that long get NaN;
* ``"cls"``: position 0;
* ``"mean"``: uniform over the valid positions (mean pooling);
* ``"patches"``: uniform over positions >= 1 (a ViT's patch tokens);
* an array ``(position,)`` or ``(sample, position)`` of non-negative weights
  (normalised to sum 1 over each sample's valid positions);
* None: the dataset's ``readout`` attr ("cls", "mean" or "patches"), or
  position 0 when the dataset has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import errors
from .errors import is_int

__all__ = ["readout_weights", "Readout", "READOUTS"]

#: Named read-outs (the values of a dataset's ``readout`` attr).
READOUTS = ("cls", "mean", "patches")


@dataclass(frozen=True)
class Readout:
    """Read-out weights of a batch of samples.

    Attributes
    ----------
    weights : numpy.ndarray (sample, position)
        float64; each defined row sums to 1 over the sample's valid positions
        and is 0 elsewhere.
    defined : numpy.ndarray of bool (sample,)
        False where the target does not exist in the sample (an int position
        past its length, "patches" of a sample without patches): its scores are NaN.
    label : str
        The target for attrs and reports: "0", "mean", "patches" or "weights".
    """

    weights: np.ndarray
    defined: np.ndarray
    label: str


def _named(target: str, lengths: np.ndarray, n: int) -> Readout:
    s = lengths.shape[0]
    pos = np.arange(n)[None, :]
    if target == "cls":
        return _position(0, lengths, n)
    first = 0 if target == "mean" else 1
    inside = (pos >= first) & (pos < lengths[:, None])
    count = inside.sum(axis=1)
    weights = np.zeros((s, n))
    np.divide(1.0, count[:, None], out=weights, where=inside & (count[:, None] > 0))
    return Readout(weights, count > 0, target)


def _position(target: int, lengths: np.ndarray, n: int) -> Readout:
    target = errors.position("target", target, n,
                             "pick an output position inside the samples, or 'mean'/'patches'")
    weights = np.zeros((lengths.shape[0], n))
    defined = target < lengths
    weights[defined, target] = 1.0
    return Readout(weights, defined, str(target))


def _array(target, lengths: np.ndarray, n: int) -> Readout:
    s = lengths.shape[0]
    try:
        w = np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"target: expected an int, 'mean', 'patches' or an array of weights over "
                        f"positions, got {type(target).__name__}. Fix: pass one of those") from exc
    if w.shape == (n,):
        w = np.broadcast_to(w, (s, n))
    elif w.shape != (s, n):
        raise errors.shape_error("target", f"({n},) or ({s}, {n}): weights over the output "
                                 "positions", w.shape, "pass one weight per position")
    valid = np.arange(n)[None, :] < lengths[:, None]
    bad = valid & ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        sample, position = (int(i) for i in np.argwhere(bad)[0])
        raise errors.value_error("target", "finite, non-negative weights at valid positions",
                                 f"{float(w[sample, position])} at sample {sample}, position {position}",
                                 "weigh each output position by a number >= 0")
    w = np.where(valid, w, 0.0)
    total = w.sum(axis=1)
    defined = total > 0
    weights = np.zeros((s, n))
    np.divide(w, total[:, None], out=weights, where=defined[:, None])
    return Readout(weights, defined, "weights")


def readout_weights(target, lengths, n: int, *, readout: str | None = None) -> Readout:
    """One weight row per sample over the output positions (see the module docstring).

    Parameters
    ----------
    target : int, {"cls", "mean", "patches"}, array or None
    lengths : array of int (sample,)
        Valid positions per sample.
    n : int
        Positions per sample (the padded length).
    readout : str, optional
        The dataset's ``readout`` attr, used when ``target`` is None.

    Returns
    -------
    Readout

    Examples
    --------
    >>> from attnkit.readout import readout_weights
    >>> r = readout_weights("patches", [3, 1], 4)
    >>> r.weights.tolist(), r.defined.tolist(), r.label
    ([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], [True, False], 'patches')
    >>> readout_weights(None, [3], 3, readout="mean").weights.round(3).tolist()
    [[0.333, 0.333, 0.333]]
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if target is None:
        target = 0 if readout is None else str(readout)
        if isinstance(target, str) and target not in READOUTS:
            raise errors.value_error("ds.attrs['readout']", f"one of {READOUTS}", repr(target),
                                     "fix the attr, or pass target= explicitly")
    if isinstance(target, str):
        if target not in READOUTS:
            raise errors.value_error("target", f"an int position, one of {READOUTS}, an array of "
                                     "weights over positions, or None (the dataset's readout)",
                                     repr(target), "pick one of those")
        return _named(target, lengths, n)
    if is_int(target):
        return _position(int(target), lengths, n)
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target: expected an int position, got a bool. Fix: pass e.g. target=0")
    return _array(target, lengths, n)
