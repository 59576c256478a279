"""Maps on an image model's patch grid, over the image: one map, a per-image panel, sinks.

* :func:`patch_overlay` -- one map (a [CLS] row, or any map of
  :func:`attnkit.patch_maps`) on the patch grid, over the image when given;
  signed maps get a diverging colour map centred on 0.
* :func:`image_panel` -- one figure per image: the image, its saliency, the last
  layer's [CLS] attention per head, rollout from layer 0 and 1, grad rollout and
  every stored attribution and impact.
* :func:`sink_figure` -- the attention-sink artefact of ViTs without registers:
  per layer the share taken by the top key, where the sink sits on the image,
  and rollout from layer 0 beside rollout from layer 1.
"""

from __future__ import annotations

import numpy as np

from .. import errors
from ..patches import dataset_grid, grid_shape
from .common import check_index, colormap, figure_and_axes, new_figure, vector

__all__ = ["patch_overlay", "image_panel", "sink_figure"]

#: Colour maps: non-negative maps (0 dark) and signed maps (0 white, centred).
SEQUENTIAL_CMAP = "magma"
DIVERGING_CMAP = "RdBu_r"
#: Colour of the outline marking a patch (the attention sink).
MARK_COLOUR = "#00e5ff"
#: Up-sampling of the patch heat over the image.
INTERPOLATIONS = ("nearest", "bilinear")


def _heat(name, values, h, w):
    """A map as an (h, w) float array: (h*w,), (h*w + 1,) with [CLS] first, or (h, w)."""
    a = np.asarray(getattr(values, "values", values))
    if a.ndim == 2:
        if a.shape != (h, w):
            raise errors.shape_error(name, f"({h}, {w}) for grid {(h, w)}", a.shape,
                                     "pass a map of the model's patch grid")
        if a.dtype.kind not in "biuf":
            raise errors.dtype_error(name, a.dtype, f"pass numbers, e.g. {name}.astype(float)")
        return a.astype(np.float64)
    r = vector(name, a)
    if r.size == h * w + 1:
        r = r[1:]
    elif r.size != h * w:
        raise errors.shape_error(name, f"({h * w},) patches or ({h * w + 1},) with [CLS] "
                                 f"first for grid {(h, w)}", r.shape,
                                 "pass the [CLS] row of the rollout and the model's patch grid")
    return r.reshape(h, w)


def _image(image, h, w):
    """The image as (H', W'[, C]) cropped to the pixels the patches cover (when it has them)."""
    img = np.asarray(getattr(image, "values", image))
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise errors.shape_error("image", "(H, W), (H, W, 3) or (H, W, 4)", img.shape,
                                 "pass one image, channels last")
    return _crop(img, h, w)


def _crop(pixels, h, w):
    """``pixels`` (H, W, ...) cut to ``(H // h) * h`` x ``(W // w) * w``: what the patches see."""
    height, width = pixels.shape[:2]
    if height >= h and width >= w:
        return pixels[: height // h * h, : width // w * w]
    return pixels  # fewer pixels than patches: stretched over the grid


def _colour_range(heat, signed, vmin, vmax):
    """(signed, vmin, vmax): signed maps are centred on 0, others start at 0."""
    finite = heat[np.isfinite(heat)]
    if signed is None:
        signed = bool(finite.size and finite.min() < 0)
    signed = errors.flag("signed", signed)
    if signed:
        top = float(np.abs(finite).max()) if finite.size else 0.0
        top = top if top > 0 else 1.0
        lo, hi = -top, top
    else:
        lo = 0.0
        hi = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return signed, lo if vmin is None else float(vmin), hi if vmax is None else float(vmax)


def _marks(mark, h, w):
    if mark is None:
        return []
    cells = np.asarray(mark)
    if cells.ndim == 1:
        cells = cells[None]
    if cells.ndim != 2 or cells.shape[-1] != 2 or cells.dtype.kind not in "iu":
        raise errors.value_error("mark", "(row, col) or a list of them", repr(mark),
                                 "pass e.g. mark=(3, 4)")
    for r, c in cells:
        if not (0 <= r < h and 0 <= c < w):
            raise errors.value_error("mark", f"patches inside the {h}x{w} grid", repr((r, c)),
                                     "count rows and columns from 0")
    return [(int(r), int(c)) for r, c in cells]


def draw_map(ax, heat, grid, image=None, *, cmap=None, signed=None, vmin=None, vmax=None,
             alpha=0.6, interpolation="nearest", ticks=True, mark=None, pixel_map=None):
    """Draw one patch map into ``ax`` (the image underneath when given); returns the heat image.

    ``heat`` is (rows, cols). ``pixel_map`` (H, W), when given, is drawn
    instead of ``heat`` at pixel resolution (a saliency map), bilinearly.
    """
    h, w = grid
    if interpolation not in INTERPOLATIONS:
        raise errors.value_error("interpolation", "'nearest' (one block per patch) or "
                                 "'bilinear'", repr(interpolation), "pick one of those")
    shown_values = heat if pixel_map is None else _crop(np.asarray(pixel_map, np.float64), h, w)
    signed, lo, hi = _colour_range(shown_values, signed, vmin, vmax)
    cm = colormap(cmap if cmap is not None else DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
    extent = (0, w, h, 0)
    if image is not None:
        img = _image(image, h, w)
        ax.imshow(img, extent=extent, cmap="gray" if img.ndim == 2 else None,
                  interpolation="bilinear")
        shown = ax.imshow(shown_values, extent=extent, cmap=cm, vmin=lo, vmax=hi,
                          alpha=float(alpha),
                          interpolation="bilinear" if pixel_map is not None else interpolation)
    else:
        shown = ax.imshow(shown_values, extent=extent, cmap=cm, vmin=lo, vmax=hi,
                          interpolation="bilinear" if pixel_map is not None else "nearest")
        if ticks:
            ax.set_xticks(np.arange(w + 1), minor=True)
            ax.set_yticks(np.arange(h + 1), minor=True)
            ax.grid(which="minor", color="white", linewidth=0.6, alpha=0.6)
            ax.tick_params(which="minor", length=0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    if ticks:
        step = max(1, int(np.ceil(max(h, w) / 16)))
        ax.set_xticks(np.arange(0, w, step) + 0.5)
        ax.set_xticklabels([str(i) for i in range(0, w, step)], fontsize=7)
        ax.set_yticks(np.arange(0, h, step) + 0.5)
        ax.set_yticklabels([str(i) for i in range(0, h, step)], fontsize=7)
        ax.set_xlabel("patch column")
        ax.set_ylabel("patch row")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.patches import Rectangle

    for r, c in _marks(mark, h, w):
        ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor=MARK_COLOUR, linewidth=2.0))
    return shown


def _colorbar(fig, ax, shown, label):
    """An opaque colour bar, also when the heat is drawn translucent."""
    from matplotlib.cm import ScalarMappable

    opaque = ScalarMappable(norm=shown.norm, cmap=shown.cmap)
    bar = fig.colorbar(opaque, ax=ax, shrink=0.85, pad=0.02)
    bar.set_label(label)
    return bar


def patch_overlay(cls_row, grid, image=None, *, title=None, ax=None, cmap=None, alpha=0.6,
                  colorbar=True, signed=None, vmin=None, vmax=None, label=None,
                  interpolation="nearest", ticks=True, mark=None):
    """A map on the patch grid of an image model, over the image when given.

    Parameters
    ----------
    cls_row : array_like (h*w,), (h*w + 1,) or (h, w)
        One value per patch: a [CLS] row (with ``h*w + 1`` entries the first
        is [CLS] itself and is dropped; the rest are patches in row-major
        order), or a map of :func:`attnkit.patch_maps` (``maps.sel(map=...)``).
    grid : (int, int)
        Patch rows ``h`` and columns ``w`` (a dataset's ``grid`` attr).
    image : array_like (H, W), (H, W, 1|3|4), optional
        The input image, uint8 or floats in [0, 1]. The heat is drawn over it
        with ``alpha``, each patch a block over its ``H // h`` x ``W // w``
        pixels (pixels past ``h * (H // h)`` rows or ``w * (W // w)`` columns,
        which no patch sees, are cut). Without an image only the patch heat
        map is drawn, with patch borders.
    title : str, optional
    ax : matplotlib.axes.Axes, optional
    cmap : str or Colormap, optional
        Default "magma" (0 dark) for non-negative maps, "RdBu_r" (0 white)
        for signed ones.
    alpha : float
        Opacity of the heat over the image.
    colorbar : bool
    signed : bool, optional
        Draw the map as signed: a diverging colour map with limits
        ``±max|value|``. Default: signed when any value is negative.
    vmin, vmax : float, optional
        Colour limits (default 0 .. max, or ±max|value| when signed).
    label : str, optional
        The colour bar's label (default "rollout weight from [CLS]").
    interpolation : {"nearest", "bilinear"}
        How the heat is stretched over the image: one block per patch
        ("nearest") or smoothed.
    ticks : bool
        Number patch rows and columns (False: no ticks, for small multiples).
    mark : (int, int) or list of them, optional
        Patches ``(row, col)`` to outline (e.g. an attention sink).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import patch_overlay
    >>> row = np.r_[0.0, np.arange(6.0) / 15]           # [CLS] + 2x3 patches
    >>> fig = patch_overlay(row, grid=(2, 3))
    >>> fig.axes[0].images[0].get_array().shape
    (2, 3)
    >>> signed = patch_overlay(np.array([[-1.0, 0.5, 0.0], [0.2, 0.3, 2.0]]), (2, 3))
    >>> signed.axes[0].images[0].get_clim(), signed.axes[0].images[0].get_cmap().name
    ((-2.0, 2.0), 'RdBu_r')
    """
    h, w = grid_shape(grid)
    heat = _heat("cls_row", cls_row, h, w)
    fig, ax = figure_and_axes(ax, (5.4, 4.3 * h / w + 0.7))
    shown = draw_map(ax, heat, (h, w), image, cmap=cmap, signed=signed, vmin=vmin, vmax=vmax,
                     alpha=alpha, interpolation=interpolation, ticks=ticks, mark=mark)
    if colorbar:
        _colorbar(fig, ax, shown, label if label is not None else "rollout weight from [CLS]")
    ax.set_title(title if title else "[CLS] rollout on the patch grid")
    return fig


# ----------------------------------------------------------------------------- dataset figures
def _image_dataset(ds, sample):
    if not hasattr(ds, "data_vars") or "attention" not in ds:
        raise errors.value_error("ds", "an attention dataset (xarray.Dataset with `attention`)",
                                 type(ds).__name__, "open one with ak.open_dataset")
    grid = dataset_grid(ds)
    sample = check_index("sample", sample, ds.sizes["sample"])
    return grid, sample


def _stored_image(ds, sample):
    if "image" not in ds.variables:
        return None
    return np.asarray(ds["image"].isel(sample=sample).transpose("y", "x", ...).values)


def _stored_saliency(ds, sample):
    if "saliency" not in ds.variables:
        return None
    return np.asarray(ds["saliency"].isel(sample=sample).transpose("y", "x").values,
                      dtype=np.float64)


def map_title(name: str, n_layers: int | None = None) -> str:
    """A short panel title for a map of :func:`attnkit.patch_maps`.

    Examples
    --------
    >>> map_title("cls_head_3", 12), map_title("rollout_from_1"), map_title("impact:mask")
    ('[CLS] attn. L11 h3', 'rollout from layer 1', 'impact: mask')
    """
    if name.startswith("cls_head_"):
        layer = "" if n_layers is None else f" L{n_layers - 1}"
        return f"[CLS] attn.{layer} h{name[len('cls_head_'):]}"
    if name == "rollout":
        return "rollout from layer 0"
    if name.startswith("rollout_from_"):
        return f"rollout from layer {name[len('rollout_from_'):]}"
    if name == "grad_rollout":
        return "grad rollout (Chefer)"
    if name == "saliency":
        return "saliency per patch"
    if ":" in name:
        kind, method = name.split(":", 1)
        return f"{kind}: {method}"
    return name


def image_panel(ds, sample=0, *, maps=None, start_layers=(0, 1), heads=True, residual=0.5,
                head_fusion="mean", alpha=0.6, ncols=None, cmap=None, colorbars=False,
                title=None, fig=None):
    """One image's maps side by side, each over the image: the per-image panel.

    Panels, in order: the image; the model's saliency map (when stored, at
    pixel resolution); rollout from each of ``start_layers``; gradient-weighted
    rollout (with a ``gradient``); every stored attribution and impact; then,
    on rows of their own, the last layer's [CLS] attention of every head
    (DINO-style small multiples). The maps are those of
    :func:`attnkit.patch_maps`; each has its own colour scale, diverging for
    signed maps.

    Parameters
    ----------
    ds : xarray.Dataset
        An image dataset (``grid`` attr); ``image`` and ``saliency`` are
        drawn when present.
    sample : int
    maps : list of str, optional
        Names of :func:`attnkit.patch_maps` to draw (default: all but the
        pooled "saliency", which the pixel saliency panel shows in full).
    start_layers, heads, residual, head_fusion
        Passed to :func:`attnkit.patch_maps`.
    alpha : float
        Opacity of the maps over the image.
    ncols : int, optional
        Panels a row (default: up to 6, enough for the heads).
    cmap : str, optional
        One colour map for every panel (default magma, RdBu_r when signed).
    colorbars : bool
        A colour bar beside every map.
    title : str, optional
        The figure's title.
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
        One axes per panel (plus colour bars), each titled.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit import plot
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((1, 2, 3, 7, 7)); a /= a.sum(-1, keepdims=True)
    >>> ds = ak.from_arrays(a, attrs={"grid": (2, 3), "readout": "patches"})
    >>> ds["image"] = (("sample", "y", "x", "channel"),
    ...                rng.integers(0, 256, (1, 28, 42, 3), dtype=np.uint8))
    >>> fig = plot.image_panel(ds)
    >>> [ax.get_title() for ax in fig.axes]  # doctest: +NORMALIZE_WHITESPACE
    ['image', 'rollout from layer 0', 'rollout from layer 1',
     '[CLS] attn. L1 h0', '[CLS] attn. L1 h1', '[CLS] attn. L1 h2']
    """
    from ..patches import patch_maps

    (h, w), sample = _image_dataset(ds, sample)
    all_maps = patch_maps(ds, sample=sample, start_layers=start_layers, heads=heads,
                          residual=residual, head_fusion=head_fusion)
    names = [str(m) for m in all_maps["map"].values]
    if maps is None:
        chosen = [m for m in names if m != "saliency"]
    else:
        chosen = [maps] if isinstance(maps, str) else list(maps)
        unknown = [m for m in chosen if m not in names]
        if unknown:
            raise errors.value_error("maps", f"names of this dataset's maps: {', '.join(names)}",
                                     repr(unknown[0]), "pick from those (ak.patch_maps(ds).map)")
    image = _stored_image(ds, sample)
    saliency = _stored_saliency(ds, sample)
    n_layers = ds.sizes["layer"]

    general = []  # (title, kind, payload)
    if image is not None:
        general.append(("image", "image", None))
    if saliency is not None and maps is None:
        general.append(("saliency (model output)", "pixels", saliency))
    head_maps = [m for m in chosen if m.startswith("cls_head_")]
    general += [(map_title(m, n_layers), "map", m) for m in chosen if m not in head_maps]
    heads_panels = [(map_title(m, n_layers), "map", m) for m in head_maps]
    if ncols is None:
        ncols = max(1, min(6, max(len(general), len(heads_panels))))
    ncols = errors.positive_int("ncols", ncols)
    rows_general = -(-len(general) // ncols)
    rows_heads = -(-len(heads_panels) // ncols)
    n_rows = rows_general + rows_heads
    if n_rows == 0:
        raise errors.value_error("maps", "at least one map to draw", "none",
                                 "pass heads=True or some map names")
    cell = 2.3
    fig = new_figure((cell * ncols + (0.5 * ncols if colorbars else 0), cell * h / w * n_rows
                      + 0.6), fig)
    grid = fig.add_gridspec(n_rows, ncols)
    slots = [(i // ncols, i % ncols) for i in range(len(general))]
    slots += [(rows_general + i // ncols, i % ncols) for i in range(len(heads_panels))]
    drawn = []
    for (panel_title, kind, payload), (r, c) in zip(general + heads_panels, slots):
        ax = fig.add_subplot(grid[r, c])
        if kind == "image":
            ax.imshow(_image(image, h, w), extent=(0, w, h, 0), interpolation="bilinear",
                      cmap="gray" if image.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            shown = None
        elif kind == "pixels":
            shown = draw_map(ax, np.zeros((h, w)), (h, w), image, pixel_map=payload, cmap=cmap,
                             alpha=alpha, ticks=False)
        else:
            heat = np.asarray(all_maps.sel(map=payload).values, dtype=np.float64)
            shown = draw_map(ax, heat, (h, w), image, cmap=cmap, alpha=alpha, ticks=False)
        ax.set_title(panel_title, fontsize=8)
        drawn.append((ax, shown))
    if colorbars:  # after every panel, so fig.axes lists the panels first
        from matplotlib.cm import ScalarMappable

        for ax, shown in drawn:
            if shown is not None:
                bar = fig.colorbar(ScalarMappable(norm=shown.norm, cmap=shown.cmap), ax=ax,
                                   shrink=0.8, pad=0.02)
                bar.ax.tick_params(labelsize=6)
    model = ds.attrs.get("model", "")
    fig.suptitle(title if title else f"{model + ': ' if model else ''}sample {sample} on the "
                 f"{h}×{w} patch grid", fontsize=10)
    return fig


def _token_labels(ds, sample, n, grid):
    h, w = grid
    if "token" in ds.variables:
        return [str(t) for t in np.asarray(ds["token"].isel(sample=sample).values)[:n]]
    return ["[CLS]" if i == 0 else f"p({(i - 1) // w},{(i - 1) % w})" if i <= h * w
            else f"#{i}" for i in range(n)]


def sink_figure(ds, sample=0, *, layer=None, ratio=5.0, residual=0.5, head_fusion="mean",
                alpha=0.6, cmap=None, title=None, fig=None):
    """The attention-sink artefact on one image: who takes each layer's attention, and rollout.

    Vision transformers without register tokens park much of their attention
    on a few background patches (Darcet et al. 2023). Plain rollout multiplies
    the layers, so one such sink can dominate it. Panels:

    1. per layer, the share of the layer's attention received by the top
       patch (each point labelled with its token) and by [CLS] (shares from
       :func:`attnkit.attention_sinks`: mean over heads and queries; the
       layer's top key is the higher of the two), against the uniform share
       ``1/n`` and the sink threshold ``ratio/n``;
    2. the share each patch receives in ``layer``, over the image, the top
       patch outlined;
    3. rollout from layer 0 and 4. rollout from layer 1 (when the model has
       two layers), the same patch outlined.

    Parameters
    ----------
    ds : xarray.Dataset
        An image dataset (``grid`` attr; ``image`` drawn underneath when present).
    sample : int
    layer : int, optional
        The layer of panel 2 (default: the layer where one patch takes the
        largest share).
    ratio : float
        Sink threshold, as in :func:`attnkit.attention_sinks`.
    residual, head_fusion
        Passed to :func:`attnkit.rollout`.
    alpha, cmap
        As in :func:`patch_overlay`.
    title : str, optional
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
        Axes: the shares per layer (lines "top patch", "[CLS]"), the sink on
        the image (outlined: a Rectangle patch), the rollout panels, then the
        colour bar of panel 2.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit import plot
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((1, 2, 3, 7, 7)); a[..., 5] += 6; a /= a.sum(-1, keepdims=True)
    >>> ds = ak.from_arrays(a, attrs={"grid": (2, 3), "readout": "patches"})
    >>> fig = plot.sink_figure(ds)
    >>> [ax.get_title() for ax in fig.axes[:4]]  # doctest: +NORMALIZE_WHITESPACE
    ['share of attention received', 'layer 0: p(1,1) takes 68%',
     'rollout from layer 0', 'rollout from layer 1']
    """
    from .. import attention_sinks
    from ..patches import patch_maps
    from .common import CATEGORICAL

    (h, w), sample = _image_dataset(ds, sample)
    one = ds.isel(sample=[sample])
    sinks = attention_sinks(one, ratio=ratio)
    share = np.asarray(sinks["share"].values, dtype=np.float64)[0]  # (layer, key)
    top_share = np.asarray(sinks["top_share"].values, dtype=np.float64)[0]
    n_layers = share.shape[0]
    n = int(np.asarray(one["length"].values)[0]) if "length" in one else share.shape[1]
    tokens = _token_labels(ds, sample, n, (h, w))
    size = 1 + h * w
    patch_share = share[:, 1:size]  # (layer, patch)
    if layer is None:
        layer = int(np.nanargmax(np.nanmax(patch_share, axis=1)))
    layer = check_index("layer", layer, n_layers)
    sink_patch = int(np.nanargmax(patch_share[layer]))
    sink_cell = divmod(sink_patch, w)
    image = _stored_image(ds, sample)
    maps = patch_maps(ds, sample=sample, heads=False, residual=residual,
                      head_fusion=head_fusion)
    rollouts = [m for m in ("rollout", "rollout_from_1") if m in maps["map"].values]

    panels = 2 + len(rollouts)
    fig = new_figure((3.6 * panels + 0.8, 3.8), fig)
    grid = fig.add_gridspec(1, panels, width_ratios=[1.3] + [1.0] * (panels - 1))
    ax = fig.add_subplot(grid[0, 0])
    layers = np.arange(n_layers)
    top_patch = np.nanargmax(patch_share, axis=1)  # per layer
    top_patch_share = patch_share[layers, top_patch]
    ax.plot(layers, top_patch_share, marker="o", color=CATEGORICAL[1], label="top patch")
    ax.plot(layers, share[:, 0], marker="s", color=CATEGORICAL[0], label="[CLS]")
    ax.axhline(1.0 / n, color="0.4", linestyle="--", linewidth=1, label="uniform 1/n")
    ax.axhline(ratio / n, color="0.4", linestyle=":", linewidth=1,
               label=f"sink threshold {ratio:g}/n")
    for x, y, k in zip(layers, top_patch_share, top_patch):
        ax.annotate(tokens[1 + int(k)], (x, y), textcoords="offset points", xytext=(0, 5),
                    ha="center", fontsize=6, rotation=45)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the layer's attention")
    ax.set_xticks(layers)
    highest = float(np.nanmax(np.r_[top_share, top_patch_share]))
    ax.set_ylim(0, min(1.05, max(1.3 * highest, 2.0 * ratio / n)))
    ax.legend(fontsize=7, loc="best")
    ax.set_title("share of attention received", fontsize=9)

    ax = fig.add_subplot(grid[0, 1])
    shown = draw_map(ax, patch_share[layer].reshape(h, w), (h, w), image, cmap=cmap,
                     alpha=alpha, ticks=False, mark=sink_cell, signed=False)
    share_axes = ax
    ax.set_title(f"layer {layer}: {tokens[1 + sink_patch]} takes "
                 f"{patch_share[layer, sink_patch]:.0%}", fontsize=9)
    for i, name in enumerate(rollouts):
        ax = fig.add_subplot(grid[0, 2 + i])
        draw_map(ax, np.asarray(maps.sel(map=name).values, dtype=np.float64), (h, w), image,
                 cmap=cmap, alpha=alpha, ticks=False, mark=sink_cell)
        ax.set_title(map_title(name), fontsize=9)
    _colorbar(fig, share_axes, shown, f"share of layer {layer}'s attention")
    model = ds.attrs.get("model", "")
    fig.suptitle(title if title else f"Attention sink{' of ' + model if model else ''} "
                 f"(sample {sample})", fontsize=10)
    return fig
