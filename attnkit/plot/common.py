"""Shared pieces of attnkit's figures: figure creation, input checks, token ticks.

Figures are :class:`matplotlib.figure.Figure` objects with constrained
layout. When the caller has imported :mod:`matplotlib.pyplot`, new figures are
made through it (so ``plt.show()`` shows them); otherwise they are plain
``Figure`` objects that pyplot never sees (no GUI backend, nothing to close),
which is what the CLI and the paper build use.
"""

from __future__ import annotations

import sys

import numpy as np

from .. import errors

#: Colour-blind-safe qualitative colours (Okabe & Ito) for categorical series.
CATEGORICAL = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
               "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def new_figure(figsize, fig=None):
    """A constrained-layout figure of ``figsize`` inches, or ``fig`` cleared of nothing."""
    if fig is not None:
        return fig
    figsize = (float(figsize[0]), float(figsize[1]))
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, layout="constrained")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def figure_and_axes(ax, figsize):
    """``(fig, ax)``: the figure of ``ax``, or a new figure with one axes."""
    if ax is not None:
        return ax.get_figure(), ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


def matrix(name: str, value) -> np.ndarray:
    """``value`` as a 2-D float array (a DataArray gives its values)."""
    a = np.asarray(getattr(value, "values", value))
    if a.ndim != 2:
        raise errors.shape_error(name, "(query, key), a 2-D matrix", a.shape,
                                 "select one sample, layer and head, e.g. ds.attention[0, 0, 0]")
    if a.dtype.kind not in "biuf":
        raise errors.dtype_error(name, a.dtype, f"pass numbers, e.g. {name}.astype(float)")
    if a.size == 0:
        raise errors.shape_error(name, "a non-empty matrix", a.shape,
                                 "pass at least one row and column")
    return a.astype(np.float64)


def check_index(name: str, value, size: int) -> int:
    """``value`` as an index in [0, ``size``); negative values count from the end.

    Examples
    --------
    >>> check_index("layer", -1, 2)
    1
    >>> check_index("layer", 5, 2)
    Traceback (most recent call last):
    ...
    ValueError: layer: expected an int in [0, 2), got 5. Fix: the data has 2 layers, counted from 0.
    """
    if not errors.is_int(value) or not -size <= value < size:
        raise errors.value_error(name, f"an int in [0, {size})", repr(value),
                                 f"the data has {size} {name}s, counted from 0")
    return int(value) % size


def vector(name: str, value) -> np.ndarray:
    a = np.asarray(getattr(value, "values", value))
    if a.ndim != 1 or a.size == 0:
        raise errors.shape_error(name, "(n,), a non-empty 1-D vector", a.shape,
                                 "pass one row, e.g. rollout[0] for [CLS]")
    if a.dtype.kind not in "biuf":
        raise errors.dtype_error(name, a.dtype, f"pass numbers, e.g. {name}.astype(float)")
    return a.astype(np.float64)


def token_list(name: str, tokens, n: int, what: str):
    """``tokens`` as a list of ``n`` str (None stays None)."""
    if tokens is None:
        return None
    if isinstance(tokens, str):
        raise errors.value_error(name, f"a list of {n} tokens", repr(tokens),
                                 "pass a list, e.g. text.split()")
    values = np.asarray(getattr(tokens, "values", tokens), dtype=object).ravel().tolist()
    if len(values) != n:
        raise errors.value_error(name, f"{n} tokens (one per {what})", f"{len(values)} tokens",
                                 f"pass exactly one token per {what}")
    return ["" if t is None else str(t) for t in values]


def tick_fontsize(n: int) -> float:
    """Token label size that stays readable as the number of labels grows."""
    return 10.0 if n <= 12 else 9.0 if n <= 24 else 7.0 if n <= 48 else 6.0


def cell_inches(n: int) -> float:
    """Side of one heat-map cell in inches: big for short inputs, small for long ones."""
    return 0.42 if n <= 12 else 0.3 if n <= 24 else 0.2 if n <= 48 else 0.14


def set_token_ticks(ax, axis: str, tokens, *, rotate: bool = False) -> None:
    """Label every position of ``axis`` ("x" or "y") with its token."""
    n = len(tokens)
    size = tick_fontsize(n)
    if axis == "x":
        ax.set_xticks(np.arange(n))
        if rotate:
            ax.set_xticklabels(tokens, rotation=60, ha="right", rotation_mode="anchor",
                               fontsize=size)
        else:
            ax.set_xticklabels(tokens, fontsize=size)
    else:
        ax.set_yticks(np.arange(n))
        ax.set_yticklabels(tokens, fontsize=size)
    ax.tick_params(axis=axis, length=2)


def set_index_ticks(ax, axis: str, n: int) -> None:
    """Integer position ticks (every position when few, else matplotlib's choice)."""
    from matplotlib.ticker import MaxNLocator

    locator = MaxNLocator(nbins=min(n, 10), integer=True)
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(locator)


def colormap(name):
    """A copy of colormap ``name`` that draws NaN (padding) in light grey."""
    import matplotlib

    cmap = matplotlib.colormaps[name] if isinstance(name, str) else name
    return cmap.with_extremes(bad="#e6e6e6")


def text_colour(rgba) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b = rgba[:3]
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if luminance > 0.45 else "white"


def token_text(tokens, limit: int = 110) -> str:
    """The tokens joined by spaces, cut to about ``limit`` characters."""
    text = " ".join(tokens)
    return text if len(text) <= limit else text[: limit - 2].rstrip() + " …"


def integer_log2_axis(axis) -> None:
    """A base-2 log axis labelled with plain integers (512, 1024, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=2))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
