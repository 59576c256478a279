"""Correlation of attention scores with ablation impact per layer, with confidence intervals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import errors
from ..constants import CORRELATION_LABELS, SCORE_KINDS
from .common import CATEGORICAL, MARKERS, new_figure

__all__ = ["correlation_table", "correlation_plot"]


def _rows_from_dataset(ds, score=None):
    """Rows of a correlation Dataset: ak.correlate's (dims ``layer``) or ``attnkit correlate``'s
    (dims ``score``, ``impact``, ``layer``)."""
    for name in ("mean_statistic", "ci_low", "ci_high"):
        if name not in ds:
            raise errors.value_error("table", "a correlation Dataset with mean_statistic, ci_low "
                                     "and ci_high", f"variables {sorted(ds.data_vars)}",
                                     "pass what ak.correlate or `attnkit correlate -o x.nc` made")
    summary = ds[["mean_statistic", "ci_low", "ci_high"]]
    dims = summary["mean_statistic"].dims
    if "layer" not in dims:
        raise errors.value_error("table", "a summary with a `layer` dim", f"dims {dims}",
                                 "correlate per layer (keep `layer`, summarise over `sample`)")
    frame = summary.to_dataframe().reset_index()
    if "layer" not in frame:
        frame["layer"] = np.arange(len(frame))
    frame = frame.rename(columns={"mean_statistic": "statistic"})
    if "score" not in frame:
        frame["score"] = score or "attention"
    keep = [c for c in ("layer", "score", "impact", "statistic", "ci_low", "ci_high") if c in frame]
    frame = frame[keep]
    if "method" in ds.attrs:
        frame.attrs["method"] = str(ds.attrs["method"])
    return frame


def correlation_table(table):
    """Normalise correlation results into a DataFrame for :func:`correlation_plot`.

    Parameters
    ----------
    table : DataFrame, list of dict, dict, xarray.Dataset, CorrelationResult or path
        Any of

        * rows with columns ``layer``, ``score``, ``statistic`` (or ``mean``
          / ``mean_statistic``), ``ci_low``, ``ci_high`` and optionally
          ``impact`` -- a DataFrame, a list of dicts, a dict holding such a
          list under ``"rows"``/``"records"``/``"table"``, or a .csv/.json
          file of them (``attnkit correlate -o x.csv`` writes one);
        * the Dataset of ``attnkit correlate -o x.nc`` (dims score, impact,
          layer) or of :func:`attnkit.correlate` on scores with a ``layer``
          dim (a .nc path works too);
        * a dict ``{score: result}`` of such Datasets or of
          :class:`attnkit.correlate.CorrelationResult` whose summary runs
          over layers (e.g. ``ak.correlate(score, impact, over=0)`` on
          (sample, layer, position) arrays).

    Returns
    -------
    pandas.DataFrame
        Columns layer, score, statistic, ci_low, ci_high (and impact when
        given); ``attrs["method"]`` holds the correlation method when known.

    Examples
    --------
    >>> from attnkit.plot import correlation_table
    >>> rows = [{"layer": 0, "score": "raw", "mean": 0.2, "ci_low": 0.1, "ci_high": 0.3}]
    >>> correlation_table(rows).columns.tolist()
    ['layer', 'score', 'statistic', 'ci_low', 'ci_high']
    """
    import pandas as pd

    method = None
    if isinstance(table, (str, os.PathLike)):
        path = Path(os.fspath(table))
        if not path.exists():
            raise FileNotFoundError(f"{path}: expected a correlation table (.csv, .json or .nc), "
                                    f"got no such file. Fix: write one with `attnkit correlate "
                                    f"FILE -o correlation.csv`")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            table = pd.read_csv(path)
        elif suffix == ".json":
            table = json.loads(path.read_text())
        elif suffix in (".nc", ".zarr"):
            import xarray as xr

            table = (xr.open_zarr(path) if suffix == ".zarr"
                     else xr.open_dataset(path, engine="h5netcdf")).load()
        else:
            raise errors.value_error("table", "a .csv, .json, .nc or .zarr file", repr(str(path)),
                                     "write it with `attnkit correlate -o correlation.csv`")
    if isinstance(table, dict):
        for key in ("rows", "records", "table"):
            if isinstance(table.get(key), list):
                method = table.get("method")
                table = table[key]
                break
        else:
            parts = []
            for score, result in table.items():
                if hasattr(result, "data_vars"):
                    parts.append(_rows_from_dataset(result, score=str(score)))
                elif hasattr(result, "mean_statistic"):
                    mean = np.atleast_1d(np.asarray(result.mean_statistic, dtype=float))
                    if mean.ndim != 1:
                        raise errors.shape_error(f"table[{score!r}].mean_statistic",
                                                 "(layer,): one summary per layer", mean.shape,
                                                 "summarise over samples only, e.g. over=0")
                    method = result.method
                    parts.append(pd.DataFrame({
                        "layer": np.arange(mean.size), "score": str(score), "statistic": mean,
                        "ci_low": np.atleast_1d(result.ci_low),
                        "ci_high": np.atleast_1d(result.ci_high)}))
                else:
                    raise errors.value_error(
                        f"table[{score!r}]", "an xarray Dataset or CorrelationResult",
                        type(result).__name__, "pass ak.correlate results keyed by score name")
            if not parts:
                raise errors.value_error("table", "at least one score", "an empty dict",
                                         "pass {score: result}")
            method = method or parts[0].attrs.get("method")
            table = pd.concat(parts, ignore_index=True)
    if hasattr(table, "data_vars"):
        frame = _rows_from_dataset(table)
    elif isinstance(table, pd.DataFrame):
        frame = table.copy()
    elif isinstance(table, (list, tuple)):
        frame = pd.DataFrame(list(table))
    else:
        raise TypeError(f"table: expected a DataFrame, list of dicts, Dataset or path, got "
                        f"{type(table).__name__}. Fix: see attnkit.plot.correlation_table")
    method = method or frame.attrs.get("method")
    for alias in ("mean", "mean_statistic"):
        if "statistic" not in frame and alias in frame:
            frame = frame.rename(columns={alias: "statistic"})
    if "score" not in frame:
        frame["score"] = "attention"
    missing = [c for c in ("layer", "statistic", "ci_low", "ci_high") if c not in frame]
    if missing:
        raise errors.value_error("table", "columns layer, score, statistic (or mean), ci_low, "
                                 "ci_high", f"columns {list(frame.columns)}",
                                 f"add {missing}")
    keep = [c for c in ("layer", "score", "impact", "statistic", "ci_low", "ci_high") if c in frame]
    frame = frame[keep].reset_index(drop=True)
    frame["layer"] = frame["layer"].astype(int)
    frame["score"] = frame["score"].astype(str)
    if method:
        frame.attrs["method"] = str(method)
    return frame


def correlation_plot(table, *, method=None, title=None, fig=None):
    """Correlation of attention scores with ablation impact per layer, with confidence intervals.

    One marker per (score, layer) at the mean statistic across samples, with
    an error bar from ``ci_low`` to ``ci_high``; scores are side by side
    within each layer. With several impact methods there is one panel each.

    Parameters
    ----------
    table
        Anything :func:`correlation_table` accepts (e.g. the rows of
        ``attnkit correlate``).
    method : str, optional
        "kendall", "spearman" or "pearson", for the axis label (default: the
        table's, else "correlation").
    title : str, optional
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from attnkit.plot import correlation_plot
    >>> rows = [{"layer": l, "score": s, "statistic": 0.1 * l, "ci_low": 0.1 * l - 0.05,
    ...          "ci_high": 0.1 * l + 0.05} for l in range(3) for s in ("raw", "rollout")]
    >>> fig = correlation_plot(rows, method="kendall")
    >>> fig.axes[0].get_ylabel(), len(fig.axes[0].containers)
    ('Kendall τ-b with impact (mean, CI)', 2)
    """
    frame = correlation_table(table)
    method = method or frame.attrs.get("method")
    stat_name = CORRELATION_LABELS.get(method, method or "correlation")
    impacts = list(dict.fromkeys(frame["impact"])) if "impact" in frame else [None]
    present = list(dict.fromkeys(frame["score"]))
    scores = [s for s in SCORE_KINDS if s in present] + [s for s in present
                                                          if s not in SCORE_KINDS]
    layers = np.sort(frame["layer"].unique())
    width = max(4.6, 0.5 * len(layers) * max(1, len(scores)) ** 0.5 + 2.6)
    fig = new_figure((width * len(impacts) if len(impacts) > 1 else width, 3.6), fig)
    axes = fig.subplots(1, len(impacts), squeeze=False, sharey=True)[0]
    span = 0.7
    step = span / max(len(scores), 1)
    for ax, impact in zip(axes, impacts):
        sub = frame if impact is None else frame[frame["impact"] == impact]
        for k, score in enumerate(scores):
            rows = sub[sub["score"] == score].sort_values("layer")
            if rows.empty:
                continue
            x = rows["layer"].to_numpy(float) - span / 2 + step * (k + 0.5)
            y = rows["statistic"].to_numpy(float)
            err = np.vstack([y - rows["ci_low"].to_numpy(float),
                             rows["ci_high"].to_numpy(float) - y])
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt=MARKERS[k % len(MARKERS)],
                        color=CATEGORICAL[k % len(CATEGORICAL)], markersize=5, capsize=2.5,
                        linewidth=1.2, label=score)
        ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.grid(axis="y", alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if impact is not None and len(impacts) > 1:
            ax.set_title(f"impact: {impact}", fontsize=10)
    axes[0].set_ylabel(f"{stat_name} with impact (mean, CI)")
    axes[-1].legend(title="score", frameon=False, fontsize=8, title_fontsize=8,
                    loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    return fig
