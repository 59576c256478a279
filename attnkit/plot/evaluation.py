"""Figures of the faithfulness study: scores side by side, AOPC, perturbation curves.

* :func:`score_forest` -- one row per score: its mean correlation with impact
  and the interval, controls drawn grey, so a score is read against what no
  model at all achieves;
* :func:`faithfulness_plot` -- comprehensiveness and sufficiency AOPC per score
  (trained and randomised model side by side when both are given);
* :func:`perturbation_plot` -- mean similarity against the fraction of tokens
  removed or inserted, one line per score.
"""

from __future__ import annotations

import numpy as np

from .common import new_figure
from .common import CATEGORICAL

__all__ = ["score_forest", "faithfulness_plot", "perturbation_plot"]

_CONTROL_GREY = "0.55"


def _tidy(ax) -> None:
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def score_forest(rows, *, controls=(), value="statistic", label=None, title=None, fig=None):
    """Mean and interval of each score, one row each, sorted; controls grey.

    Parameters
    ----------
    rows : list of dict
        ``score``, ``value`` (default "statistic"), ``ci_low``, ``ci_high``.
    controls : sequence of str
        Scores drawn grey with open markers (baselines that need no model).
    value : str
        The column to draw.
    label : str, optional
        x-axis label (default: "Spearman ρ with impact (mean, 95% CI)" when
        the rows say ``method="spearman"``).
    title : str, optional
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from attnkit.plot import score_forest
    >>> rows = [{"score": "rollout", "statistic": 0.3, "ci_low": 0.2, "ci_high": 0.4},
    ...         {"score": "length", "statistic": 0.5, "ci_low": 0.45, "ci_high": 0.55}]
    >>> fig = score_forest(rows, controls=["length"])
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['rollout', 'length']
    """
    rows = sorted(rows, key=lambda r: (np.nan_to_num(r[value], nan=-np.inf)))
    fig = new_figure((6.0, 0.9 + 0.32 * len(rows)), fig)
    ax = fig.add_subplot()
    for i, row in enumerate(rows):
        control = row["score"] in controls
        colour = _CONTROL_GREY if control else CATEGORICAL[0]
        y = row[value]
        low, high = row.get("ci_low", y), row.get("ci_high", y)
        ax.errorbar([y], [i], xerr=[[max(y - low, 0)], [max(high - y, 0)]], fmt="o",
                    color=colour, markerfacecolor="white" if control else colour, capsize=2.5,
                    linewidth=1.2, markersize=5)
    ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(rows)), [r["score"] for r in rows])
    method = rows[0].get("method") if rows else None
    ax.set_xlabel(label or (f"{method.capitalize() if method else 'correlation'} with impact "
                            "(mean, 95% CI)"))
    _tidy(ax)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def faithfulness_plot(rows, *, controls=(), title=None, fig=None):
    """Comprehensiveness and sufficiency AOPC per score, with intervals.

    Parameters
    ----------
    rows : list of dict
        ``score``, ``model`` (e.g. "trained", "randomized"), ``metric``
        ("comprehensiveness" or "sufficiency"), ``aopc``, ``ci_low``, ``ci_high``.
    controls : sequence of str
        Scores drawn with hatched bars.
    title : str, optional
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
        One panel per metric: higher comprehensiveness and lower sufficiency
        mean a more faithful ranking.

    Examples
    --------
    >>> from attnkit.plot import faithfulness_plot
    >>> rows = [{"score": s, "model": "trained", "metric": m, "aopc": 0.1, "ci_low": 0.05,
    ...          "ci_high": 0.15} for s in ("raw", "random")
    ...         for m in ("comprehensiveness", "sufficiency")]
    >>> len(faithfulness_plot(rows, controls=["random"]).axes)
    2
    """
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    models = list(dict.fromkeys(r.get("model", "trained") for r in rows))
    scores = list(dict.fromkeys(r["score"] for r in rows))
    fig = new_figure((4.2 * len(metrics), 0.9 + 0.3 * len(scores) * max(1, len(models))), fig)
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    height = 0.8 / max(len(models), 1)
    for ax, metric in zip(axes, metrics):
        for m, model in enumerate(models):
            for i, score in enumerate(scores):
                row = next((r for r in rows if r["metric"] == metric and r["score"] == score
                            and r.get("model", "trained") == model), None)
                if row is None:
                    continue
                y = i - 0.4 + height * (m + 0.5)
                err = [[max(row["aopc"] - row["ci_low"], 0)], [max(row["ci_high"] - row["aopc"], 0)]]
                ax.barh([y], [row["aopc"]], height=height * 0.9, xerr=err,
                        color=CATEGORICAL[m % len(CATEGORICAL)], alpha=0.85,
                        hatch="//" if score in controls else None, capsize=2,
                        label=model if i == 0 else None)
        ax.set_yticks(range(len(scores)), scores)
        ax.set_xlabel(f"{metric} AOPC ({'higher' if metric.startswith('comp') else 'lower'} "
                      "is more faithful)")
        _tidy(ax)
    if len(models) > 1:
        axes[-1].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


#: Line colours of control scores in perturbation plots (dark to light grey).
CONTROL_GREYS = ("#555555", "#999999", "#bbbbbb")


def perturbation_plot(curves, *, controls=(), title=None,
                      ylabel="cosine similarity to the full output", xlabel="fraction of tokens",
                      fig=None):
    """Mean perturbation curves, one line per score, one panel per curve kind.

    Parameters
    ----------
    curves : dict of str to dict of str to (fractions, mean similarity)
        ``{panel: {score: (fractions, values)}}``, e.g. panels "deletion,
        most first" and "insertion, most first".
    controls : sequence of str
        Scores drawn as dashed grey lines (baselines that need no model).
    title, ylabel, xlabel : str, optional
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import perturbation_plot
    >>> f = np.linspace(0, 1, 5)
    >>> fig = perturbation_plot({"deletion": {"raw": (f, 1 - f), "random": (f, 1 - f / 2)}})
    >>> len(fig.axes[0].lines)
    2
    """
    panels = list(curves)
    fig = new_figure((4.2 * len(panels), 3.4), fig)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, panel in zip(axes, panels):
        methods = [score for score in curves[panel] if score not in controls]
        for score, (x, y) in curves[panel].items():
            if score in controls:
                grey = CONTROL_GREYS[list(controls).index(score) % len(CONTROL_GREYS)]
                style = {"color": grey, "linestyle": "--", "marker": "s"}
            else:
                k = methods.index(score)
                style = {"color": CATEGORICAL[k % len(CATEGORICAL)], "marker": "o"}
            ax.plot(x, y, markersize=3, linewidth=1.3, label=score, **style)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    return fig
