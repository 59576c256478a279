"""Which input tokens feed one output position (e.g. [CLS]): a bar per token."""

from __future__ import annotations

import numpy as np

from .common import CATEGORICAL, figure_and_axes, set_token_ticks, token_list, vector

__all__ = ["cls_bar"]


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
