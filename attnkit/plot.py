"""Figures of attention and of attnkit's analyses (matplotlib).

Every function returns a :class:`matplotlib.figure.Figure` with constrained
layout and never calls ``plt.show()``. Functions drawing one panel take
``ax=`` to draw into an existing axes; multi-panel ones take ``fig=``.
Attention maps use perceptually uniform colour maps (viridis, magma,
cividis) with 0 at the dark end; padding (NaN) is drawn light grey.

This module imports matplotlib; ``import attnkit`` does not import it.

* Attention: :func:`heatmap`, :func:`head_grid`, :func:`alignment`.
* Rollout and flow: :func:`matrix_map` (:func:`rollout_map`, :func:`flow_map`),
  :func:`cls_bar`, :func:`patch_overlay`.
* Head statistics: :func:`head_stats_plot`, :func:`special_token_plot`.
* Results: :func:`correlation_plot` (:func:`correlation_table`),
  :func:`throughput_plot`, :func:`memory_plot`, :func:`cost_plot`
  (:func:`load_results`).
* :func:`plot_dataset` (behind ``ds.attn.plot(kind=...)``) and :func:`save_figure`.

Examples
--------
>>> import numpy as np, attnkit as ak
>>> from attnkit import plot
>>> a = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
>>> fig = plot.heatmap(a, tokens=["the", "cat", "sat"], title="one head")
>>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
['the', 'cat', 'sat']
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np

from . import errors
from ._plot_common import (CATEGORICAL, MARKERS, cell_inches, colormap, figure_and_axes, matrix,
                           new_figure, set_index_ticks, set_token_ticks, text_colour, token_list,
                           token_text, vector)
from ._plot_results import (correlation_plot, correlation_table, cost_plot, load_results,
                            memory_plot, throughput_plot)

__all__ = [
    "heatmap",
    "head_grid",
    "alignment",
    "matrix_map",
    "rollout_map",
    "flow_map",
    "cls_bar",
    "patch_overlay",
    "head_stats_plot",
    "special_token_plot",
    "correlation_plot",
    "correlation_table",
    "throughput_plot",
    "memory_plot",
    "cost_plot",
    "load_results",
    "plot_dataset",
    "save_figure",
    "KINDS",
    "FORMATS",
]

#: Suffixes :func:`save_figure` writes.
FORMATS = (".png", ".pdf", ".svg")


# ----------------------------------------------------------------------------- matrices
def _draw_matrix(ax, a, *, cmap, vmin, vmax, colorbar, label):
    fig = ax.get_figure()
    finite = a[np.isfinite(a)]
    top = float(finite.max()) if finite.size else 1.0
    vmin = 0.0 if vmin is None else float(vmin)
    vmax = (top if top > vmin else vmin + 1.0) if vmax is None else float(vmax)
    image = ax.imshow(a, cmap=colormap(cmap), vmin=vmin, vmax=vmax, interpolation="nearest",
                      aspect="equal")
    if colorbar:
        bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02, aspect=25)
        bar.set_label(label)
    return image


def _square_size(nq: int, nk: int, extra_w: float = 2.2, extra_h: float = 1.7):
    cell = cell_inches(max(nq, nk))
    return max(3.2, nk * cell + extra_w), max(2.6, nq * cell + extra_h)


def matrix_map(matrix_2d, tokens=None, *, query_tokens=None, title=None, ax=None, cmap="viridis",
               vmin=None, vmax=None, colorbar=True, xlabel="key (attended to)",
               ylabel="query (attending)", label="attention weight"):
    """A (query, key) matrix as a heat map with token labels.

    The common drawing of :func:`heatmap`, :func:`rollout_map` and
    :func:`flow_map`: rows are queries (output positions), columns keys
    (input positions), row 0 on top; key labels are rotated.

    Parameters
    ----------
    matrix_2d : array_like (query, key)
        Weights; NaN (padding) is drawn light grey.
    tokens : sequence of str, optional
        Key tokens; also the query tokens when the matrix is square and
        ``query_tokens`` is not given. Without tokens, positions are numbered.
    query_tokens : sequence of str, optional
    title : str, optional
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    cmap : str or Colormap
        Default "viridis" (perceptually uniform).
    vmin, vmax : float, optional
        Colour limits; default 0 and the largest finite value.
    colorbar : bool
    xlabel, ylabel, label : str
        Axis labels and the colour-bar label.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import matrix_map
    >>> fig = matrix_map(np.eye(3), ["a", "b", "c"], title="identity")
    >>> [float(c) for c in fig.axes[0].images[0].get_clim()]
    [0.0, 1.0]
    """
    a = matrix("matrix", matrix_2d)
    nq, nk = a.shape
    keys = token_list("tokens", tokens, nk, "key")
    if query_tokens is None and keys is not None and nq == nk:
        queries = keys
    else:
        queries = token_list("query_tokens", query_tokens, nq, "query")
    fig, ax = figure_and_axes(ax, _square_size(nq, nk))
    _draw_matrix(ax, a, cmap=cmap, vmin=vmin, vmax=vmax, colorbar=colorbar, label=label)
    if keys is not None:
        set_token_ticks(ax, "x", keys, rotate=True)
    else:
        set_index_ticks(ax, "x", nk)
    if queries is not None:
        set_token_ticks(ax, "y", queries)
    else:
        set_index_ticks(ax, "y", nq)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig


def heatmap(attn_2d, *, tokens=None, query_tokens=None, title=None, ax=None, cmap="viridis",
            vmin=None, vmax=None, colorbar=True):
    """The attention of one head: queries down, keys across, with token labels.

    Parameters
    ----------
    attn_2d : array_like (query, key)
        One head's weights, e.g. ``ds.attention[sample, layer, head]`` cut to
        the sample's length.
    tokens : sequence of str, optional
        Key tokens (and query tokens for self-attention).
    query_tokens : sequence of str, optional
        Query tokens when they differ from the keys.
    title : str, optional
    ax : matplotlib.axes.Axes, optional
    cmap, vmin, vmax, colorbar
        As in :func:`matrix_map` (default colour limits 0 .. largest weight).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import heatmap
    >>> a = np.array([[1.0, 0.0], [0.5, 0.5]])
    >>> fig = heatmap(a, tokens=["[CLS]", "hi"], title="layer 0, head 0")
    >>> ax = fig.axes[0]
    >>> ax.get_title(), [t.get_text() for t in ax.get_yticklabels()]
    ('layer 0, head 0', ['[CLS]', 'hi'])
    """
    return matrix_map(attn_2d, tokens, query_tokens=query_tokens, title=title, ax=ax, cmap=cmap,
                      vmin=vmin, vmax=vmax, colorbar=colorbar)


def rollout_map(matrix_2d, tokens=None, *, title="Attention rollout", ax=None, cmap="viridis",
                vmax=None, colorbar=True):
    """An attention-rollout matrix (output position x input token); see :func:`matrix_map`.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit.plot import rollout_map
    >>> a = np.full((2, 1, 3, 3), 1 / 3)
    >>> fig = rollout_map(ak.rollout(a), ["[CLS]", "yes", "[SEP]"])
    >>> fig.axes[0].get_title(), fig.axes[0].get_xlabel()
    ('Attention rollout', 'input token')
    """
    return matrix_map(matrix_2d, tokens, title=title, ax=ax, cmap=cmap, vmax=vmax,
                      colorbar=colorbar, xlabel="input token", ylabel="output position",
                      label="rollout weight")


def flow_map(matrix_2d, tokens=None, *, title="Attention flow", ax=None, cmap="viridis",
             vmax=None, colorbar=True):
    """An attention-flow matrix (output position x input token); see :func:`matrix_map`.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit.plot import flow_map
    >>> a = np.full((2, 1, 3, 3), 1 / 3)
    >>> flow_map(ak.attention_flow(a), list("abc")).axes[0].get_title()
    'Attention flow'
    """
    return matrix_map(matrix_2d, tokens, title=title, ax=ax, cmap=cmap, vmax=vmax,
                      colorbar=colorbar, xlabel="input token", ylabel="output position",
                      label="normalised flow")


def alignment(attn_2d, source_tokens, target_tokens, *, title=None, ax=None, cmap="magma",
              annotate=None, colorbar=True):
    """A cross-attention alignment matrix: target tokens down, source tokens across the top.

    The layout of Bahdanau et al.'s translation figures: each row is one
    target (decoder) token, each column one source (encoder) token, so a
    word-for-word translation shows as a near-diagonal.

    Parameters
    ----------
    attn_2d : array_like (target, source)
        Cross-attention weights, rows over source tokens.
    source_tokens, target_tokens : sequence of str
    title : str, optional
    ax : matplotlib.axes.Axes, optional
    cmap : str or Colormap
        Default "magma" (perceptually uniform, dark = 0).
    annotate : bool, optional
        Write each weight in its cell; default on when both sides have at
        most 12 tokens.
    colorbar : bool

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import alignment
    >>> a = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.05, 0.85, 0.1]])
    >>> fig = alignment(a, ["I", "love", "you"], ["je", "t'", "aime"])
    >>> ax = fig.axes[0]
    >>> [t.get_text() for t in ax.get_xticklabels()], ax.get_ylabel()
    (['I', 'love', 'you'], 'target')
    """
    a = matrix("attn_2d", attn_2d)
    nt, ns = a.shape
    source = token_list("source_tokens", source_tokens, ns, "source position (column)")
    target = token_list("target_tokens", target_tokens, nt, "target position (row)")
    if source is None or target is None:
        raise errors.value_error("source_tokens/target_tokens", "two token lists", None,
                                 "pass the source and target tokens")
    fig, ax = figure_and_axes(ax, _square_size(nt, ns, extra_h=1.9))
    image = _draw_matrix(ax, a, cmap=cmap, vmin=0.0, vmax=None, colorbar=colorbar,
                         label="attention weight")
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    set_token_ticks(ax, "x", source)
    ax.set_xticklabels(source, rotation=45, ha="left", rotation_mode="anchor",
                       fontsize=ax.get_xticklabels()[0].get_fontsize())
    set_token_ticks(ax, "y", target)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if annotate is None:
        annotate = max(nt, ns) <= 12
    if annotate:
        for i in range(nt):
            for j in range(ns):
                if np.isfinite(a[i, j]):
                    ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color=text_colour(image.cmap(image.norm(a[i, j]))))
    if title:
        ax.set_title(title)
    return fig


# ----------------------------------------------------------------------------- head grid
def _sample_block(data, sample: int, tokens):
    """(layer, head, n, n) attention of one sample cut to its length, and its tokens."""
    if type(data).__module__.startswith("xarray."):
        ds = data
        if hasattr(ds, "data_vars"):
            if "attention" not in ds:
                raise errors.value_error("ds", "a dataset with an `attention` variable",
                                         sorted(ds.data_vars), "build it with ak.from_arrays")
            da = ds["attention"]
        else:
            da = ds
        if "sample" in da.dims:
            n_samples = da.sizes["sample"]
            _check_index("sample", sample, n_samples)
            da = da.isel(sample=sample)
        a = np.asarray(da.transpose("layer", "head", "query", "key").values, dtype=np.float64)
        length = a.shape[-1]
        if hasattr(ds, "data_vars") and "length" in ds:
            lengths = np.asarray(ds["length"].values).reshape(-1)
            length = int(lengths[sample] if lengths.size > 1 else lengths[0])
        if tokens is None and "token" in ds.coords:
            tok = np.asarray(ds["token"].values, dtype=object)
            tokens = tok[sample] if tok.ndim == 2 else tok
            tokens = list(tokens[:length])
        return a[..., :length, :length], tokens
    a = np.asarray(data, dtype=np.float64)
    if a.ndim == 5:
        _check_index("sample", sample, a.shape[0])
        a = a[sample]
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise errors.shape_error("data", "(layer, head, n, n) or (sample, layer, head, n, n)",
                                 a.shape, "pass the attention of every layer and head")
    return a, tokens


def _check_index(name: str, value, size: int) -> int:
    ok = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
          and -size <= value < size)
    if not ok:
        raise errors.value_error(name, f"an int in [0, {size})", repr(value),
                                 f"the data has {size} {name}s, counted from 0")
    return int(value) % size


def head_grid(data, sample=0, *, tokens=None, cmap="viridis", vmax=None, title=None, fig=None,
              cell=None):
    """Every head of every layer as small multiples (a static bertviz model view).

    Rows are layers (0 on top), columns heads; all panels share one colour
    scale (0 .. ``vmax``) and one colour bar. Each panel is one head's
    (query, key) map with query 0 top left, like :func:`heatmap` without labels;
    the tokens are written under the title.

    Parameters
    ----------
    data : xarray.Dataset, DataArray or array
        An attention dataset (its ``length`` and ``token`` are used), or
        attention (layer, head, n, n) / (sample, layer, head, n, n).
    sample : int
        Which sample of a dataset or 5-D array.
    tokens : sequence of str, optional
        The sample's tokens (default: the dataset's), shown in the title.
    cmap : str or Colormap
    vmax : float, optional
        Upper colour limit shared by all panels; default the largest weight.
    title : str, optional
        Default ``"sample <i>: every layer and head"``.
    fig : matplotlib.figure.Figure, optional
        Draw into this (empty) figure.
    cell : float, optional
        Panel side in inches (default 1.0, 1.2 for more than 32 tokens).

    Returns
    -------
    matplotlib.figure.Figure
        ``layers * heads`` image axes plus a colour bar.

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import head_grid
    >>> a = np.full((2, 3, 4, 4), 0.25)            # 2 layers, 3 heads
    >>> fig = head_grid(a, tokens=["[CLS]", "a", "b", "[SEP]"])
    >>> sum(len(ax.images) for ax in fig.axes), fig.axes[0].get_title()
    (6, 'head 0')
    """
    a, tokens = _sample_block(data, sample, tokens)
    n_layers, n_heads, n, _ = a.shape
    tokens = token_list("tokens", tokens, n, "position")
    if title is None:
        title = f"sample {sample}: every layer and head"
    if tokens is not None:
        title = f"{title}\n{token_text(tokens, limit=max(60, 14 * n_heads))}"
    cell = float(cell) if cell is not None else (1.2 if n > 32 else 1.0)
    fig = new_figure((n_heads * cell + 1.3, n_layers * cell + 1.2), fig)
    axes = np.asarray(fig.subplots(n_layers, n_heads, squeeze=False))
    finite = a[np.isfinite(a)]
    vmax = (float(finite.max()) if finite.size else 1.0) if vmax is None else float(vmax)
    cm = colormap(cmap)
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(a[layer, head], cmap=cm, vmin=0.0, vmax=vmax,
                              interpolation="nearest", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    bar = fig.colorbar(image, ax=axes, shrink=min(0.9, max(0.3, 3.0 / n_layers)), aspect=30,
                       pad=0.01)
    bar.set_label("attention weight")
    fig.suptitle(title, fontsize=11)
    return fig


# ----------------------------------------------------------------------------- [CLS] views
def cls_bar(row, tokens=None, *, title=None, ax=None, ylabel="weight from [CLS]",
            color=CATEGORICAL[0]):
    """Which input tokens feed one output position: a bar per input token.

    Parameters
    ----------
    row : array_like (key,)
        One row of a rollout/flow/attention matrix, e.g. ``rollout[0]`` for
        the [CLS] output. NaN (padding) entries are dropped from the end.
    tokens : sequence of str, optional
        One per entry of ``row``; default positions 0..n-1.
    title : str, optional
    ax : matplotlib.axes.Axes, optional
    ylabel : str
    color : colour

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from attnkit.plot import cls_bar
    >>> fig = cls_bar([0.5, 0.3, 0.2], ["[CLS]", "good", "[SEP]"])
    >>> [round(float(p.get_height()), 2) for p in fig.axes[0].patches]
    [0.5, 0.3, 0.2]
    """
    r = vector("row", row)
    finite = np.isfinite(r)
    n = int(np.flatnonzero(finite)[-1]) + 1 if finite.any() else r.size
    tok = token_list("tokens", tokens, r.size, "entry of row")
    r = r[:n]
    tok = tok[:n] if tok is not None else [str(i) for i in range(n)]
    fig, ax = figure_and_axes(ax, (max(3.5, 0.32 * n + 1.6), 3.2))
    ax.bar(np.arange(n), np.nan_to_num(r), color=color, width=0.75)
    set_token_ticks(ax, "x", tok, rotate=True)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, max(float(np.nanmax(r)) * 1.1, 1e-12) if np.isfinite(r).any() else 1)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("input token")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    return fig


def _grid_shape(grid):
    try:
        h, w = (int(g) for g in np.asarray(grid).reshape(-1))
    except (TypeError, ValueError):
        raise errors.value_error("grid", "(h, w): the patch rows and columns", repr(grid),
                                 "pass e.g. grid=(14, 14) for a 224px ViT-B/16") from None
    if h < 1 or w < 1:
        raise errors.value_error("grid", "two positive ints", repr(grid), "pass e.g. grid=(14, 14)")
    return h, w


def patch_overlay(cls_row, grid, image=None, *, title=None, ax=None, cmap="magma", alpha=0.6,
                  colorbar=True):
    """The [CLS] rollout of an image-patch model on the patch grid (over the image).

    Parameters
    ----------
    cls_row : array_like (h*w,) or (h*w + 1,)
        Weights from [CLS] to every patch. With ``h*w + 1`` entries the first
        is [CLS] itself and is dropped; the rest are patches in row-major order.
    grid : (int, int)
        Patch rows ``h`` and columns ``w`` (a dataset's ``grid`` attr).
    image : array_like (H, W) or (H, W, 3|4), optional
        The input image; the heat is stretched over it with ``alpha``.
        Without an image only the patch heat map is drawn, with patch borders.
    title : str, optional
    ax : matplotlib.axes.Axes, optional
    cmap : str or Colormap
    alpha : float
        Opacity of the heat over the image.
    colorbar : bool

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
    """
    h, w = _grid_shape(grid)
    r = vector("cls_row", cls_row)
    if r.size == h * w + 1:
        r = r[1:]
    elif r.size != h * w:
        raise errors.shape_error("cls_row", f"({h * w},) patches or ({h * w + 1},) with [CLS] "
                                 f"first for grid {(h, w)}", r.shape,
                                 "pass the [CLS] row of the rollout and the model's patch grid")
    heat = r.reshape(h, w)
    fig, ax = figure_and_axes(ax, (5.4, 4.3 * h / w + 0.7))
    extent = (0, w, h, 0)
    finite = heat[np.isfinite(heat)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    if image is not None:
        img = np.asarray(image)
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
            raise errors.shape_error("image", "(H, W), (H, W, 3) or (H, W, 4)", img.shape,
                                     "pass one image, channels last")
        ax.imshow(img, extent=extent, cmap="gray" if img.ndim == 2 else None,
                  interpolation="bilinear")
        shown = ax.imshow(heat, extent=extent, cmap=colormap(cmap), vmin=0.0, vmax=vmax,
                          alpha=float(alpha), interpolation="bilinear")
    else:
        shown = ax.imshow(heat, extent=extent, cmap=colormap(cmap), vmin=0.0, vmax=vmax,
                          interpolation="nearest")
        ax.set_xticks(np.arange(w + 1), minor=True)
        ax.set_yticks(np.arange(h + 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6, alpha=0.6)
        ax.tick_params(which="minor", length=0)
    ax.set_xticks(np.arange(w) + 0.5)
    ax.set_xticklabels([str(i) for i in range(w)], fontsize=7)
    ax.set_yticks(np.arange(h) + 0.5)
    ax.set_yticklabels([str(i) for i in range(h)], fontsize=7)
    ax.set_xlabel("patch column")
    ax.set_ylabel("patch row")
    if colorbar:  # an opaque colour bar, also when the heat is drawn translucent
        from matplotlib.cm import ScalarMappable

        opaque = ScalarMappable(norm=shown.norm, cmap=shown.cmap)
        fig.colorbar(opaque, ax=ax, shrink=0.85, pad=0.02).set_label("rollout weight from [CLS]")
    ax.set_title(title if title else "[CLS] rollout on the patch grid")
    return fig


# ----------------------------------------------------------------------------- head statistics
_STAT_LABELS = {
    "entropy": "entropy (nats)",
    "distance": "mean attention distance (positions)",
    "max_weight": "largest weight",
    "self_mass": "weight on self",
    "prev_mass": "weight on previous token",
    "next_mass": "weight on next token",
    "cls_mass": "[CLS]",
    "sep_mass": "[SEP]",
    "punct_mass": "punctuation",
}


def _layer_head(stats, name: str) -> np.ndarray:
    """Variable ``name`` of a head_stats Dataset as (layer, head), averaged over samples."""
    if not hasattr(stats, "data_vars"):
        raise TypeError(f"stats: expected the xarray.Dataset of ak.head_stats, got "
                        f"{type(stats).__name__}. Fix: pass ak.head_stats(ds)")
    if name not in stats:
        raise errors.value_error("stats", f"a head_stats Dataset with {name!r}",
                                 f"variables {sorted(stats.data_vars)}", "pass ak.head_stats(ds)")
    da = stats[name]
    extra = [d for d in da.dims if d not in ("layer", "head")]
    values = np.asarray(da.transpose(*extra, "layer", "head").values, dtype=np.float64)
    values = values.reshape(-1, *values.shape[-2:])
    with _quiet_nan():
        return np.nanmean(values, axis=0)


@contextlib.contextmanager
def _quiet_nan():
    """Silence 'Mean of empty slice' for all-NaN cells (they stay NaN on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def head_stats_plot(stats, *, variables=("entropy", "distance"), cmap="viridis", annotate=None,
                    fig=None):
    """Per-head statistics as layer x head heat maps, one panel per variable.

    Parameters
    ----------
    stats : xarray.Dataset
        What :func:`attnkit.head_stats` returns; values are averaged over
        every dim other than ``layer`` and ``head`` (the samples).
    variables : sequence of str
        Which statistics to draw (default entropy and mean distance).
    cmap : str or Colormap
    annotate : bool, optional
        Write each value in its cell; default on for at most 16 heads.
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
        One image axes (plus colour bar) per variable.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit.plot import head_stats_plot
    >>> a = np.full((3, 2, 4, 5, 5), 0.2)            # 3 samples, 2 layers, 4 heads
    >>> fig = head_stats_plot(ak.head_stats(a))
    >>> [ax.get_title() for ax in fig.axes if ax.images]
    ['entropy (nats)', 'mean attention distance (positions)']
    """
    values = [_layer_head(stats, v) for v in variables]
    n_layers, n_heads = values[0].shape
    if annotate is None:
        annotate = n_heads <= 16
    cell = 0.5 if annotate else 0.3
    width = len(values) * (n_heads * cell + 1.6) + 0.4
    fig = new_figure((max(5.0, width), n_layers * cell + 1.6), fig)
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for ax, name, v in zip(axes, variables, values):
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        image = ax.imshow(v, cmap=colormap(cmap), vmin=lo, vmax=hi if hi > lo else lo + 1e-9,
                          interpolation="nearest", aspect="auto")
        fig.colorbar(image, ax=ax, pad=0.02, aspect=20)
        top = float(np.nanmax(np.abs(finite))) if finite.size else 1.0
        fmt = "{:.2f}" if top < 10 else "{:.1f}" if top < 100 else "{:.0f}"
        ax.set_title(_STAT_LABELS.get(name, name))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(np.arange(n_heads))
        ax.set_yticks(np.arange(n_layers))
        ax.tick_params(labelsize=8, length=2)
        if annotate:
            for i in range(n_layers):
                for j in range(n_heads):
                    if np.isfinite(v[i, j]):
                        ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=6.5,
                                color=text_colour(image.cmap(image.norm(v[i, j]))))
    return fig


def special_token_plot(stats, *, variables=("cls_mass", "sep_mass", "punct_mass"), ax=None):
    """Attention to [CLS], [SEP] and punctuation per layer: per-head dots, mean line, ± 1 sd band.

    Each dot is one head (averaged over samples); the line is the mean over
    the heads of the layer and the band the mean ± one standard deviation
    across those heads (Clark et al. 2019, "What does BERT look at?", Fig. 2).

    Parameters
    ----------
    stats : xarray.Dataset
        What :func:`attnkit.head_stats` returns for a dataset with tokens.
    variables : sequence of str
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If every value is NaN (the dataset had no tokens).

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> from attnkit.plot import special_token_plot
    >>> a = np.full((2, 3, 2, 4, 4), 0.25)
    >>> st = ak.head_stats(a, tokens=[["[CLS]", "hi", ".", "[SEP]"]] * 2)
    >>> [t.get_text() for t in special_token_plot(st).axes[0].get_legend().get_texts()]
    ['[CLS]', '[SEP]', 'punctuation']
    """
    values = {name: _layer_head(stats, name) for name in variables}
    if all(not np.isfinite(v).any() for v in values.values()):
        raise errors.value_error("stats", f"finite {', '.join(variables)}",
                                 "only NaN (the attention had no tokens)",
                                 "run ak.head_stats on a dataset with a token coordinate")
    n_layers, n_heads = next(iter(values.values())).shape
    fig, ax = figure_and_axes(ax, (max(4.5, 0.55 * n_layers + 2.8), 3.4))
    layers = np.arange(n_layers)
    offsets = np.linspace(-0.18, 0.18, len(variables)) if len(variables) > 1 else [0.0]
    jitter = np.random.default_rng(0).uniform(-0.06, 0.06, n_heads)  # fixed: same figure each run
    for k, (name, v) in enumerate(values.items()):
        colour = CATEGORICAL[k % len(CATEGORICAL)]
        with _quiet_nan():
            mean = np.nanmean(v, axis=1)
            sd = np.nanstd(v, axis=1)
        x = layers + offsets[k]
        ax.scatter((x[:, None] + jitter[None, :]).ravel(), v.ravel(), s=9, color=colour,
                   alpha=0.35, linewidths=0)
        ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15, linewidth=0)
        ax.plot(x, mean, color=colour, marker=MARKERS[k % len(MARKERS)], markersize=4,
                label=_STAT_LABELS.get(name, name))
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention weight")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Attention to special tokens (dots: heads; band: mean ± 1 sd)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- dispatcher
#: The kinds :func:`plot_dataset` draws.
KINDS = ("heatmap", "grid", "rollout", "flow", "cls", "patch", "stats", "special")


def _one_sample(ds, sample: int):
    _check_index("sample", sample, ds.sizes["sample"])
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
    _check_index("sample", sample, ds.sizes["sample"])
    length = _length_of(ds, sample)
    tokens = _tokens_of(ds, sample, length)
    if kind == "heatmap":
        layer = _check_index("layer", layer, ds.sizes["layer"])
        head = _check_index("head", head, ds.sizes["head"])
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


# ----------------------------------------------------------------------------- saving
def save_figure(fig, path, *, dpi=150):
    """Write ``fig`` to ``path`` (.png, .pdf or .svg) atomically.

    The figure is rendered to a temporary file next to ``path`` and renamed
    into place, so a failed save never leaves a partial file.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike
        The suffix picks the format.
    dpi : int
        Resolution of PNG output (and of raster parts of PDF/SVG).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from attnkit.plot import heatmap, save_figure
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = save_figure(heatmap(np.eye(2)), os.path.join(tmp, "head.png"), dpi=50)
    ...     sorted(os.listdir(tmp)), open(out, "rb").read(4)
    (['head.png'], b'\\x89PNG')
    """
    from .data import atomic_file

    path = Path(os.fspath(path))
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise errors.value_error("path", "a name ending in .png, .pdf or .svg", repr(str(path)),
                                 "pick the format by the suffix, e.g. figure.png")
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig: expected a matplotlib Figure, got {type(fig).__name__}. "
                        f"Fix: pass what an attnkit.plot function returned")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: expected an existing folder {parent}, got none. "
                                f"Fix: create it first (mkdir -p {parent})")
    with atomic_file(path, suffix=suffix) as tmp:
        fig.savefig(tmp, format=suffix[1:], dpi=dpi)
    return path
