"""Per-token bars: which inputs feed one output position (e.g. [CLS]), and several scores
of the same tokens side by side (impact, attributions, attention)."""

from __future__ import annotations

import numpy as np

from .common import CATEGORICAL, figure_and_axes, set_token_ticks, token_list, vector

__all__ = ["cls_bar", "token_scores"]


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


def token_scores(scores, tokens=None, *, title=None, ax=None, normalise=True):
    """Several per-token scores of one sentence side by side: a group of bars per token.

    For comparing an ablation impact with attributions and attention scores of
    the same tokens. Scores live on different scales, so by default each is
    divided by its largest absolute value (signs kept).

    Parameters
    ----------
    scores : dict of str to array_like (position,)
        Name -> one score per token; NaN (padding) entries are dropped from the end.
    tokens : sequence of str, optional
        One per position; default positions 0..n-1.
    title : str, optional
    ax : matplotlib.axes.Axes, optional
    normalise : bool
        Divide each score by its largest absolute value.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from attnkit.plot import token_scores
    >>> fig = token_scores({"impact": [0.1, 0.4], "IG": [2.0, -1.0]}, ["good", "film"])
    >>> [round(float(p.get_height()), 2) for p in fig.axes[0].patches]
    [0.25, 1.0, 1.0, -0.5]
    """
    if not scores:
        from ..errors import value_error

        raise value_error("scores", "at least one name -> per-token scores", "an empty dict",
                          "pass e.g. {'impact': impact_row}")
    rows = {name: vector(f"scores[{name!r}]", row) for name, row in scores.items()}
    n = 0
    for r in rows.values():
        finite = np.isfinite(r)
        n = max(n, int(np.flatnonzero(finite)[-1]) + 1 if finite.any() else 0)
    tok = token_list("tokens", tokens, max(r.size for r in rows.values()), "position")
    tok = tok[:n] if tok is not None else [str(i) for i in range(n)]
    fig, ax = figure_and_axes(ax, (max(4.0, 0.22 * n * len(rows) ** 0.5 + 2.8), 3.4))
    width = 0.8 / len(rows)
    for k, (name, r) in enumerate(rows.items()):
        r = np.nan_to_num(r[:n])
        if normalise:
            peak = float(np.abs(r).max())
            r = r / peak if peak > 0 else r
        ax.bar(np.arange(n) - 0.4 + width * (k + 0.5), r, width=width, label=name,
               color=CATEGORICAL[k % len(CATEGORICAL)])
    set_token_ticks(ax, "x", tok, rotate=True)
    ax.set_xlim(-0.6, n - 0.4)
    ax.axhline(0.0, color="0.4", linewidth=0.8)
    ax.set_ylabel("score / max |score|" if normalise else "score")
    ax.set_xlabel("input token")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    return fig
