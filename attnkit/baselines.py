"""Control scores: what an explanation must beat before it explains anything.

A score that agrees with leave-one-out impact may only be tracking something
trivial: where a token sits, or how long the word is (long, rare words carry
more meaning than "the"). :func:`baseline_scores` returns such controls in the
shape of :func:`attnkit.attention_scores`'s rows, so they go through
:func:`attnkit.correlate` (also as ``control=`` for partial correlations) and
:func:`attnkit.faithfulness` like any score.
"""

from __future__ import annotations

import numpy as np

from . import errors

__all__ = ["baseline_scores", "BASELINE_KINDS"]

#: Control scores: seeded noise, the position index, the token's character length, a constant.
BASELINE_KINDS = ("random", "position", "length", "uniform")


def _token_length(token: str) -> int:
    """Characters of a token, without WordPiece's continuation mark ``##``."""
    return len(token[2:] if token.startswith("##") and len(token) > 2 else token)


def baseline_scores(ds, kind: str = "random", seed: int = 0):
    """A control score for every valid position of every sample.

    Parameters
    ----------
    ds : xarray.Dataset
        An attention dataset (``length``; ``token`` for ``kind="length"``).
    kind : {"random", "position", "length", "uniform"}
        ``random``: independent uniform numbers in [0, 1) (seeded);
        ``position``: the position index 0, 1, ... (later tokens score
        higher; negate it for the reverse); ``length``: the number of
        characters of the token (WordPiece's ``##`` not counted; a control
        with no model at all); ``uniform``: ``1 / length`` everywhere (every
        token tied: rankings then fall back to position order).
    seed : int
        Seed of ``random``.

    Returns
    -------
    xarray.DataArray (sample, position)
        float64, NaN past each sample's length; named ``{kind}_baseline``,
        with the dataset's ``token`` coordinate when it has one.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((1, 1, 1, 3, 3), 1 / 3),
    ...                     tokens=[["[CLS]", "un", "##likely"]])
    >>> ak.baseline_scores(ds, "length").values.tolist()
    [[5.0, 2.0, 6.0]]
    >>> ak.baseline_scores(ds, "position").values.tolist()
    [[0.0, 1.0, 2.0]]
    """
    import xarray as xr

    if kind not in BASELINE_KINDS:
        raise errors.value_error("kind", f"one of {BASELINE_KINDS}", repr(kind),
                                 "pick one of those")
    if not errors.is_int(seed):
        raise errors.value_error("seed", "an int", repr(seed), "pass e.g. seed=0")
    if "length" not in ds.variables:
        raise errors.value_error("ds", "an attention dataset with a `length` variable", "none",
                                 "build it with ak.from_arrays or open a saved dataset")
    lengths = np.asarray(ds["length"].values, dtype=np.int64)
    n = int(ds.sizes["position"]) if "position" in ds.sizes else int(ds.sizes["key"])
    valid = np.arange(n)[None, :] < lengths[:, None]
    if kind == "random":
        values = np.random.default_rng(seed).random((lengths.size, n))
    elif kind == "position":
        values = np.broadcast_to(np.arange(n, dtype=np.float64), (lengths.size, n))
    elif kind == "uniform":
        values = np.broadcast_to(1.0 / np.maximum(lengths, 1)[:, None], (lengths.size, n))
    else:
        if "token" not in ds.variables:
            raise errors.value_error("ds", "a `token` coordinate for kind='length'", "none",
                                     "store the tokens (model.run does), or pick another kind")
        tokens = ds["token"].values
        if str(ds.attrs.get("readout", "")) == "patches":
            raise errors.value_error("kind", "'random', 'position' or 'uniform' for image "
                                     "patches", "'length'", "patches have no characters: "
                                     "pick another kind")
        values = np.zeros((lengths.size, n))
        for s, m in enumerate(lengths):
            values[s, :m] = [_token_length(str(t)) for t in tokens[s, :m]]
    out = np.where(valid, values, np.nan)
    coords = {}
    if "token" in ds.variables:
        coords["token"] = (("sample", "position"), ds["token"].values)
    return xr.DataArray(out, dims=("sample", "position"), coords=coords, name=f"{kind}_baseline",
                        attrs={"kind": kind, "seed": int(seed)})
