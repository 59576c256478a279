"""Heat maps of one (query, key) matrix: attention, rollout, flow, cross-attention alignment."""

from __future__ import annotations

import numpy as np

from .. import errors
from .common import (cell_inches, colormap, figure_and_axes, matrix, set_index_ticks,
                     set_token_ticks, text_colour, token_list)

__all__ = ["matrix_map", "heatmap", "rollout_map", "flow_map", "alignment"]


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
