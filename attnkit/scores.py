"""Per-token attention scores of the model's read-out, layer by layer.

"How much does the output draw on each input token, up to layer ``l``?" has
several answers; :func:`attention_scores` computes each of them for every
layer, in the shape the correlation with ablation impact needs. The output
explained is a read-out ``w`` over output positions (:mod:`attnkit.readout`):
one position such as [CLS], the mean over tokens (how sentence-transformers
pool), the patches of a ViT, or any weighting.

* ``raw``: the head-averaged attention of layer ``l`` itself, ``w @ mean_h A_l``;
* ``rollout``: ``w @`` the rollout of layers ``0..l`` (:func:`attnkit.rollout`);
* ``flow``: the attention flow through layers ``0..l`` from a super-source
  feeding each top output ``i`` with capacity ``w[i]``
  (:func:`attnkit.flow.readout_flow`; Abnar & Zuidema's flow for one position);
* ``grad``: ``w @`` gradient-weighted rollout of layers ``0..l``
  (:func:`attnkit.grad_rollout`, needs the dataset's ``gradient``).
"""

from __future__ import annotations

import numpy as np

from . import errors
from .constants import SCORE_KINDS
from .rollout import prefix_rows

__all__ = ["attention_scores", "SCORE_KINDS"]

# SCORE_KINDS is defined in attnkit.constants and re-exported here (ak.SCORE_KINDS).


def _layers(layers, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    return [errors.layer_index("layers", layer, n_layers) for layer in np.atleast_1d(layers)]


def attention_scores(ds, kind: str = "rollout", *, target=None, layers=None,
                     residual: float = 0.5, head_fusion: str = "mean"):
    """Scores of every input position for the model's read-out, per layer.

    Parameters
    ----------
    ds : xarray.Dataset
        An attention dataset (``attention``, ``length``; ``gradient`` for "grad").
    kind : {"raw", "rollout", "flow", "grad"}
    target : int, {"cls", "mean", "patches"}, array or None
        The output explained (:func:`attnkit.readout.readout_weights`): an
        output position (0 = [CLS]; samples shorter than it get NaN),
        "mean" (uniform over valid positions), "patches" (uniform over
        positions >= 1), non-negative weights ``(position,)`` or ``(sample,
        position)``, or None (default) for the dataset's ``readout`` attr
        (MiniLM "mean", SaliencyViT "patches"; position 0 when absent).
    layers : int or sequence of int, optional
        Layers to score (default: all). Layer ``l`` uses layers ``0..l``.
    residual, head_fusion
        Passed to rollout and flow.

    Returns
    -------
    xarray.DataArray (sample, layer, position)
        NaN past each sample's length. attrs: ``kind`` and ``target`` ("0",
        "mean", "patches" or "weights").

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((1, 2, 2, 3, 3), 1 / 3))
    >>> s = ak.attention_scores(ds, "raw")
    >>> s.dims, s.values[0, 0].round(3).tolist(), s.attrs["target"]
    (('sample', 'layer', 'position'), [0.333, 0.333, 0.333], '0')
    >>> ak.attention_scores(ds, "rollout", target="mean").values[0, -1].round(3).tolist()
    [0.333, 0.333, 0.333]
    """
    import xarray as xr

    from .flow import readout_flow
    from .readout import readout_weights
    from .rollout import augmented_attention

    if kind not in SCORE_KINDS:
        raise errors.value_error("kind", f"one of {SCORE_KINDS}", repr(kind), "pick one of those")
    if kind == "grad" and "gradient" not in ds.variables:
        raise errors.value_error("ds", "a `gradient` variable (sample, layer, head, query, key) "
                                 "for kind='grad'", "none",
                                 "store gradients with the attention, or use kind='rollout'")
    attn = np.asarray(ds["attention"].values)
    lengths = np.asarray(ds["length"].values)
    n_layers, n = attn.shape[1], attn.shape[-1]
    chosen = _layers(layers, n_layers)
    readout = readout_weights(target, lengths, n, readout=ds.attrs.get("readout"))
    w = readout.weights
    if kind == "raw":
        fused = np.nan_to_num(attn[:, chosen]).mean(axis=2)  # (sample, layer, query, key)
        by_layer = np.einsum("sq,slqk->slk", w, fused)
        chosen_rows = slice(None)
    elif kind == "flow":
        aug = augmented_attention(attn[:, : max(chosen) + 1], head_fusion=head_fusion,
                                  residual=residual, lengths=lengths)
        by_layer = readout_flow(aug, w, lengths)
        chosen_rows = chosen
    else:  # every layer's row from one pass (prefix products)
        grad = np.nan_to_num(np.asarray(ds["gradient"].values)) if kind == "grad" else None
        by_layer = prefix_rows(np.nan_to_num(attn) if kind == "grad" else attn, w,
                               kind=kind, grad=grad, lengths=lengths,
                               head_fusion=head_fusion, residual=residual)
        chosen_rows = chosen
    out = np.array(by_layer[:, chosen_rows], dtype=np.float64)
    valid = (np.arange(n)[None, :] < lengths[:, None]) & readout.defined[:, None]
    out = np.where(valid[:, None, :], out, np.nan)
    coords = {"layer": chosen}
    if "token" in ds.variables:
        coords["token"] = (("sample", "position"), ds["token"].values)
    return xr.DataArray(out, dims=("sample", "layer", "position"), coords=coords,
                        name=f"{kind}_score", attrs={"target": readout.label, "kind": kind})
