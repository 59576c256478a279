"""One figure of an attention dataset by kind (behind ``ds.attn.plot(kind=...)``)."""

from __future__ import annotations

import numpy as np

from .. import errors
from .common import check_index
from .heads import head_grid
from .matrices import flow_map, heatmap, rollout_map
from .patches import patch_overlay
from .stats import head_stats_plot, special_token_plot
from .tokens import cls_bar

__all__ = ["plot_dataset", "KINDS"]

#: The kinds :func:`plot_dataset` draws.
KINDS = ("heatmap", "grid", "rollout", "flow", "cls", "patch", "stats", "special")


def _one_sample(ds, sample: int):
    check_index("sample", sample, ds.sizes["sample"])
    return ds.isel(sample=[sample])


def _tokens_of(ds, sample: int, length: int):
    if "token" not in ds.coords and "token" not in ds:
        return None
    return [str(t) for t in np.asarray(ds["token"].values, dtype=object)[sample][:length]]


def _length_of(ds, sample: int) -> int:
    if "length" in ds:
        return int(np.asarray(ds["length"].values)[sample])
    return int(ds.sizes["key"])


def _cls_source(ds, sample, source, residual, head_fusion):
    import attnkit as ak

    one = _one_sample(ds, sample)
    length = _length_of(ds, sample)
    if source == "rollout":
        m = ak.rollout(one, residual=residual, head_fusion=head_fusion)
    elif source == "flow":
        m = ak.attention_flow(one, sources=[0], residual=residual, head_fusion=head_fusion)
    elif source == "raw":
        m = one["attention"].isel(layer=-1).mean("head")
    else:
        raise errors.value_error("source", "'rollout', 'flow' or 'raw'", repr(source),
                                 "pick one of those")
    return np.asarray(m.values, dtype=np.float64)[0, 0, :length], length


def plot_dataset(ds, kind="heatmap", *, sample=0, layer=0, head=0, residual=0.5,
                 head_fusion="mean", source="rollout", title=None, **kwargs):
    """Draw one figure of an attention dataset (behind ``ds.attn.plot(kind=...)``).

    Everything is computed through the public API (:func:`attnkit.rollout`,
    :func:`attnkit.attention_flow`, :func:`attnkit.head_stats`) and cut to the
    sample's length.

    Parameters
    ----------
    ds : xarray.Dataset
        A schema-1 attention dataset.
    kind : str
        ``"heatmap"`` one head (``sample``, ``layer``, ``head``);
        ``"grid"`` every head of ``sample`` (:func:`head_grid`);
        ``"rollout"`` / ``"flow"`` the rollout / flow matrix of ``sample``;
        ``"cls"`` what feeds [CLS] (``source`` = "rollout", "flow" or "raw":
        the last layer's [CLS] row, mean over heads);
        ``"patch"`` the [CLS] rollout on the patch grid (needs the ``grid``
        attr; pass ``image=`` to overlay);
        ``"stats"`` entropy and distance per head (:func:`head_stats_plot`);
        ``"special"`` attention to [CLS]/[SEP]/punctuation (:func:`special_token_plot`).
    sample, layer, head : int
        Which sample / layer / head (counted from 0).
    residual, head_fusion
        Passed to rollout and flow.
    source : {"rollout", "flow", "raw"}
        For ``kind="cls"``.
    title : str, optional
        Replaces the default title.
    **kwargs
        Passed to the drawing function (e.g. ``cmap``, ``ax``, ``fig``, ``image``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> a = np.full((1, 2, 2, 3, 3), 1 / 3)
    >>> ds = ak.from_arrays(a, tokens=[["[CLS]", "ok", "[SEP]"]])
    >>> fig = ds.attn.plot(kind="heatmap", layer=1, head=0)
    >>> fig.axes[0].get_title()
    'layer 1, head 0 (sample 0)'
    """
    import attnkit as ak

    if not isinstance(kind, str) or kind not in KINDS:
        raise errors.value_error("kind", " | ".join(KINDS), repr(kind), "pick one of those")
    if not hasattr(ds, "data_vars") or "attention" not in ds:
        raise errors.value_error("ds", "an attention dataset (xarray.Dataset with `attention`)",
                                 type(ds).__name__, "open one with ak.open_dataset")
    if kind == "stats":
        return head_stats_plot(ak.head_stats(ds), **kwargs)
    if kind == "special":
        return special_token_plot(ak.head_stats(ds), **kwargs)
    if kind == "grid":
        return head_grid(ds, sample, title=title, **kwargs)
    check_index("sample", sample, ds.sizes["sample"])
    length = _length_of(ds, sample)
    tokens = _tokens_of(ds, sample, length)
    if kind == "heatmap":
        layer = check_index("layer", layer, ds.sizes["layer"])
        head = check_index("head", head, ds.sizes["head"])
        a = ds["attention"].isel(sample=sample, layer=layer, head=head).values[:length, :length]
        return heatmap(a, tokens=tokens, title=title or f"layer {layer}, head {head} (sample "
                       f"{sample})", **kwargs)
    if kind in ("rollout", "flow"):
        one = _one_sample(ds, sample)
        if kind == "rollout":
            m = ak.rollout(one, residual=residual, head_fusion=head_fusion)
            draw = rollout_map
        else:
            m = ak.attention_flow(one, residual=residual, head_fusion=head_fusion)
            draw = flow_map
        m = np.asarray(m.values, dtype=np.float64)[0, :length, :length]
        name = "rollout" if kind == "rollout" else "flow"
        return draw(m, tokens, title=title or f"Attention {name} (sample {sample}, "
                    f"{ds.sizes['layer']} layers, residual {residual:g})", **kwargs)
    if kind == "cls":
        row, _ = _cls_source(ds, sample, source, residual, head_fusion)
        what = {"rollout": "rollout", "flow": "flow", "raw": "last-layer attention"}[source]
        return cls_bar(row, tokens, title=title or f"What feeds [CLS]: {what} (sample {sample})",
                       ylabel=f"{what} from [CLS]", **kwargs)
    # patch
    if "grid" not in ds.attrs:
        raise errors.value_error("ds.attrs['grid']", "(h, w): the patch grid of an image model",
                                 "no grid attr", "set ds.attrs['grid'] = (h, w)")
    row, _ = _cls_source(ds, sample, source, residual, head_fusion)
    return patch_overlay(row, tuple(np.asarray(ds.attrs["grid"]).tolist()),
                         title=title or f"[CLS] {source} on the patch grid (sample {sample})",
                         **kwargs)
