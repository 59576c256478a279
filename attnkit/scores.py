"""Per-token attention scores of one output position, layer by layer.

"How much does output position ``query`` draw on each input token, up to
layer ``l``?" has several answers; :func:`attention_scores` computes each of
them for every layer, in the shape the correlation with ablation impact needs:

* ``raw``: the head-averaged attention of layer ``l`` itself, row ``query``;
* ``rollout``: row ``query`` of the rollout of layers ``0..l`` (:func:`attnkit.rollout`);
* ``flow``: the attention flow from output node ``query`` through layers ``0..l``
  (:func:`attnkit.attention_flow`);
* ``grad``: row ``query`` of gradient-weighted rollout of layers ``0..l``
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


def attention_scores(ds, kind: str = "rollout", *, layers=None, query: int = 0,
                     residual: float = 0.5, head_fusion: str = "mean"):
    """Scores of every input position for output position ``query``, per layer.

    Parameters
    ----------
    ds : xarray.Dataset
        An attention dataset (``attention``, ``length``; ``gradient`` for "grad").
    kind : {"raw", "rollout", "flow", "grad"}
    layers : int or sequence of int, optional
        Layers to score (default: all). Layer ``l`` uses layers ``0..l``.
    query : int
        The output position explained (0 = [CLS]).
    residual, head_fusion
        Passed to rollout and flow.

    Returns
    -------
    xarray.DataArray (sample, layer, position)
        NaN past each sample's length.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((1, 2, 2, 3, 3), 1 / 3))
    >>> s = ak.attention_scores(ds, "raw")
    >>> s.dims, s.values[0, 0].round(3).tolist()
    (('sample', 'layer', 'position'), [0.333, 0.333, 0.333])
    """
    import xarray as xr

    import attnkit as ak

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
    query = errors.position("query", query, n, "pick an output position inside the samples")
    out = np.full((attn.shape[0], len(chosen), n), np.nan)
    if kind in ("rollout", "grad"):  # every layer's row from one pass (prefix products)
        grad = np.nan_to_num(np.asarray(ds["gradient"].values)) if kind == "grad" else None
        by_layer = prefix_rows(np.nan_to_num(attn) if kind == "grad" else attn, query,
                               kind=kind, grad=grad, lengths=lengths,
                               head_fusion=head_fusion, residual=residual)
    for i, layer in enumerate(chosen):
        if kind == "raw":
            row = attn[:, layer, :, query, :].mean(axis=1)  # NaN only in padding
        elif kind in ("rollout", "grad"):
            row = by_layer[:, layer]
        else:
            row = ak.attention_flow(attn[:, : layer + 1], sources=[query], residual=residual,
                                    head_fusion=head_fusion, lengths=lengths)[:, query, :]
        valid = np.arange(n)[None, :] < lengths[:, None]
        out[:, i] = np.where(valid & (query < lengths)[:, None], row, np.nan)
    coords = {"layer": chosen}
    if "token" in ds.variables:
        coords["token"] = (("sample", "position"), ds["token"].values)
    return xr.DataArray(out, dims=("sample", "layer", "position"), coords=coords,
                        name=f"{kind}_score", attrs={"query": int(query), "kind": kind})
