"""Figures of per-head statistics (:func:`attnkit.head_stats`): heat maps and special tokens."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from .. import errors
from .common import CATEGORICAL, MARKERS, colormap, figure_and_axes, new_figure, text_colour

__all__ = ["head_stats_plot", "special_token_plot"]

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
