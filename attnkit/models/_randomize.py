"""Cascading model-parameter randomisation (Adebayo et al., 2018), shared by the built-in models.

The sanity check of *Sanity Checks for Saliency Maps* (NeurIPS 2018): re-initialise
the weights of a trained network layer by layer, from the top down, and see whether
an explanation method's output changes. An explanation that survives the
randomisation of the layers it claims to explain does not depend on what those
layers learnt. :meth:`attnkit.models.MiniLM.randomized` and
:meth:`attnkit.models.SaliencyViT.randomized` build the randomised models with
the helpers here:

* :func:`select_layers` turns ``layers="all" | k | [i, j, ...]`` into sorted layer
  indices (``k``: the top ``k`` layers, step ``k`` of the cascade);
* :func:`fresh_tensors` draws one layer's new tensors from a generator seeded by
  ``(seed, layer index)`` only, so layer ``i`` gets the same weights at every
  cascade step that includes it (the cascade is nested) and whatever other
  layers are chosen;
* :func:`describe`, :func:`dataset_attrs`, :func:`from_attrs` and :func:`fingerprint`
  record what was done (the ``randomized`` attrs of a dataset, a weights digest
  that differs from the trained model's).
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import is_int, nonnegative_int, value_error

__all__ = ["check_seed", "dataset_attrs", "describe", "fingerprint", "fresh_tensors",
           "from_attrs", "layer_rng", "merge", "normal", "parse_layers", "select_layers",
           "truncated_normal"]

#: Tensor kinds of a layer spec (see :func:`fresh_tensors`).
KINDS = ("weight", "zeros", "ones", "layerscale")

_LAYERS_FIX = ("pass layers='all', an int k in [1, {n}] (the top k layers), or a list of "
               "layer indices in [-{n}, {n})")


def select_layers(layers, n_layers: int) -> tuple[int, ...]:
    """The layer indices a ``layers=`` argument names, sorted, each in [0, n_layers).

    Parameters
    ----------
    layers : "all", int or sequence of int
        "all": every layer. An int ``k`` in [1, n_layers]: the top ``k`` layers
        ``n_layers - k .. n_layers - 1`` (step ``k`` of the cascade). A list
        (tuple, range, 1-d array) of layer indices: exactly those (negative
        indices count from the end), each named once.
    n_layers : int
        The model's number of encoder layers.

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        For 0, k > n_layers, an index out of range, an empty list, repeated
        layers, bools, floats or other strings.

    Examples
    --------
    >>> select_layers("all", 6), select_layers(2, 6), select_layers([-1, 0], 6)
    ((0, 1, 2, 3, 4, 5), (4, 5), (0, 5))
    >>> select_layers(0, 6)
    Traceback (most recent call last):
    ...
    ValueError: layers: expected an int k in [1, 6] (the top k layers), got 0. Fix: pass layers='all', an int k in [1, 6] (the top k layers), or a list of layer indices in [-6, 6).
    """
    fix = _LAYERS_FIX.format(n=n_layers)
    if isinstance(layers, str):
        if layers != "all":
            raise value_error("layers", "'all', an int or a list of layer indices",
                              repr(layers), fix)
        return tuple(range(n_layers))
    if is_int(layers):
        if not 1 <= layers <= n_layers:
            raise value_error("layers", f"an int k in [1, {n_layers}] (the top k layers)",
                              repr(layers), fix)
        return tuple(range(n_layers - int(layers), n_layers))
    if isinstance(layers, np.ndarray) and layers.ndim == 1:
        layers = layers.tolist() if layers.dtype.kind in "iu" else list(layers)
    if not isinstance(layers, (list, tuple, range)):
        raise value_error("layers", "'all', an int or a list of layer indices",
                          f"{type(layers).__name__} {layers!r}", fix)
    if len(layers) == 0:
        raise value_error("layers", "at least one layer index", "an empty list", fix)
    chosen = []
    for i, value in enumerate(layers):
        if not is_int(value) or not -n_layers <= value < n_layers:
            raise value_error(f"layers[{i}]", f"an int layer index in [-{n_layers}, {n_layers})",
                              repr(value), fix)
        chosen.append(int(value) % n_layers)
    if len(set(chosen)) != len(chosen):
        raise value_error("layers", "distinct layers", list(layers),
                          "name each layer once (negative indices count from the end)")
    return tuple(sorted(chosen))


def parse_layers(text: str):
    """A ``--randomize`` value: "all", an int ``k`` ("3") or a comma list ("3,4,5" or "5,").

    Returns "all", an int or a list of ints, for :func:`select_layers`.

    Examples
    --------
    >>> parse_layers("all"), parse_layers("2"), parse_layers("0, -1"), parse_layers("5,")
    ('all', 2, [0, -1], [5])
    >>> parse_layers("two")
    Traceback (most recent call last):
    ...
    ValueError: --randomize: expected 'all', an int k or a comma list of layer indices, got 'two'. Fix: e.g. --randomize all, --randomize 2 (the top 2 layers) or --randomize 0,5 (a single index: 5,).
    """
    s = str(text).strip()
    fix = ("e.g. --randomize all, --randomize 2 (the top 2 layers) or --randomize 0,5 "
           "(a single index: 5,)")
    if s.lower() == "all":
        return "all"
    try:
        if "," not in s:
            return int(s)
        return [int(part) for part in s.split(",") if part.strip()]
    except ValueError:
        raise value_error("--randomize", "'all', an int k or a comma list of layer indices",
                          repr(text), fix) from None


def check_seed(seed) -> int:
    """The ``seed=`` of ``randomized``: a non-negative int (not a bool).

    Examples
    --------
    >>> check_seed(3)
    3
    """
    return nonnegative_int("seed", seed, "pass e.g. seed=0 (an int >= 0)")


def layer_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of layer ``index``'s new weights: seeded by ``(seed, index)`` only.

    Examples
    --------
    >>> float(layer_rng(0, 3).standard_normal()) == float(layer_rng(0, 3).standard_normal())
    True
    """
    return np.random.default_rng([int(seed), int(index)])


def normal(rng, shape, std: float) -> np.ndarray:
    """Normal(0, std) in float64 (BERT's ``normal_(0, initializer_range)``)."""
    return rng.standard_normal(shape) * std


def truncated_normal(rng, shape, std: float, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    """Normal(0, std) truncated to [low, high] (absolute bounds, as ``torch.nn.init.trunc_normal_``).

    Values outside the bounds are drawn again. PyTorch's defaults ``low=-2,
    high=2`` are absolute values, so at ``std=0.02`` (100 standard deviations)
    the truncation does not change the distribution.

    Examples
    --------
    >>> w = truncated_normal(np.random.default_rng(0), (1000,), 1.0, -1.0, 1.0)
    >>> bool(np.abs(w).max() <= 1.0)
    True
    """
    if not low < 0 < high:
        raise value_error("low, high", "low < 0 < high", (low, high), "pass e.g. low=-2, high=2")
    x = rng.standard_normal(shape) * std
    outside = (x < low) | (x > high)
    while outside.any():
        x[outside] = rng.standard_normal(int(outside.sum())) * std
        outside = (x < low) | (x > high)
    return x


def fresh_tensors(spec, seed: int, index: int, *, std: float, truncate=None,
                  layerscale: float = 1.0) -> dict:
    """New tensors of one layer, drawn in ``spec`` order from :func:`layer_rng`.

    Parameters
    ----------
    spec : sequence of (name, kind, shape)
        ``kind``: "weight" (Normal(0, std), or truncated to ``truncate`` =
        (low, high)), "zeros" (biases, LayerNorm shifts), "ones" (LayerNorm
        scales) or "layerscale" (filled with ``layerscale``).
    seed, index : int
        The generator's seed: the user's seed and the layer's index.
    std : float
        The standard deviation of the weights (``initializer_range``).
    truncate : (float, float), optional
        Bounds of a truncated normal.
    layerscale : float
        The initial value of a LayerScale.

    Returns
    -------
    dict of name -> float64 ndarray

    Examples
    --------
    >>> spec = [("w", "weight", (2, 3)), ("b", "zeros", (2,)), ("g", "ones", (2,))]
    >>> t = fresh_tensors(spec, 0, 1, std=0.02)
    >>> t["w"].shape, t["b"].tolist(), t["g"].tolist()
    ((2, 3), [0.0, 0.0], [1.0, 1.0])
    """
    rng = layer_rng(seed, index)
    out = {}
    for name, kind, shape in spec:
        if kind == "weight":
            out[name] = (normal(rng, shape, std) if truncate is None
                         else truncated_normal(rng, shape, std, *truncate))
        elif kind == "zeros":
            out[name] = np.zeros(shape)
        elif kind == "ones":
            out[name] = np.ones(shape)
        elif kind == "layerscale":
            out[name] = np.full(shape, float(layerscale))
        else:  # pragma: no cover - a programming error in a model's spec
            raise value_error("kind", f"one of {KINDS}", repr(kind), "fix the layer spec")
    return out


def describe(layers, seed: int) -> str:
    """The ``randomization`` of a model: which layers were re-initialised, with which seed.

    Examples
    --------
    >>> describe((3, 4, 5), 0), describe((5,), 1)
    ('layers 3,4,5 re-initialised (seed 0)', 'layer 5 re-initialised (seed 1)')
    """
    word = "layer" if len(layers) == 1 else "layers"
    return f"{word} {','.join(str(i) for i in layers)} re-initialised (seed {int(seed)})"


def dataset_attrs(model) -> dict:
    """The attrs ``run`` writes for a randomised model (none for a trained one).

    ``randomized`` (the description), ``randomized_layers`` ("3,4,5") and
    ``randomized_seed`` (int): enough for :func:`from_attrs` to rebuild the model.
    """
    if getattr(model, "randomization", None) is None:
        return {}
    return {"randomized": model.randomization,
            "randomized_layers": ",".join(str(i) for i in model.randomized_layers),
            "randomized_seed": int(model.randomization_seed)}


def from_attrs(attrs):
    """``(layers, seed)`` of a dataset made by a randomised model, or None for a trained one.

    Examples
    --------
    >>> from_attrs({"randomized_layers": "4,5", "randomized_seed": 7})
    ([4, 5], 7)
    >>> from_attrs({}) is None
    True
    """
    if "randomized_layers" not in attrs:
        return None
    text = str(attrs["randomized_layers"])
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
        seed = int(attrs.get("randomized_seed", 0))
    except (TypeError, ValueError):
        raise value_error("attrs['randomized_layers']", "a comma list of layer indices",
                          repr(text), "recompute the dataset with attnkit compute") from None
    return layers, seed


def merge(model, chosen: tuple, seed: int) -> tuple[int, ...]:
    """The layers of ``model.randomized(chosen, seed)`` when ``model`` is itself randomised.

    Randomising a randomised model again re-initialises the union of the layers
    (layer ``i``'s weights depend only on ``(seed, i)``); a different seed is refused.
    """
    before = tuple(getattr(model, "randomized_layers", ()) or ())
    if not before:
        return chosen
    if model.randomization_seed != seed:
        raise value_error("seed", f"{model.randomization_seed} (the seed this model's layers "
                          f"{','.join(map(str, before))} were re-initialised with)", seed,
                          "call randomized() on the trained model (MiniLM.load() / "
                          "SaliencyViT.load()), or reuse the same seed")
    return tuple(sorted(set(before) | set(chosen)))


def fingerprint(base: str, layer_dicts) -> str:
    """SHA-256 of a trained model's digest ``base`` and the arrays of its re-initialised layers.

    Each layer is a dict of arrays or tuples of arrays; the arrays enter as
    float32 bytes in key order, so a float32 and a float64 copy of a model agree.

    Examples
    --------
    >>> a = fingerprint("abc", [{"w": (np.zeros(2), np.ones(2))}])
    >>> len(a), a == fingerprint("abc", [{"w": (np.zeros(2), np.zeros(2))}])
    (64, False)
    """
    digest = hashlib.sha256(("randomized:" + base).encode())
    for layer in layer_dicts:
        for key in sorted(layer):
            value = layer[key]
            for array in (value if isinstance(value, tuple) else (value,)):
                digest.update(key.encode())
                digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()
