"""Figures of the benchmark results (the JSON files paper/benchmarks/*.py write)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import errors
from .common import CATEGORICAL, MARKERS, figure_and_axes, integer_log2_axis, new_figure

__all__ = ["load_results", "throughput_plot", "memory_plot", "cost_plot"]


def load_results(path):
    """Load benchmark results: every ``*.json`` of a folder, or one file.

    Parameters
    ----------
    path : str or os.PathLike, dict or list of dict
        A folder (all its .json files, in name order, e.g. a checkout's
        ``paper/results``), one .json file, or already loaded results
        (returned as a list). Required: there is no default folder.

    Returns
    -------
    list of dict
        Each result with ``"_file"`` set to its file name (when read from disk).

    Examples
    --------
    >>> from attnkit.plot import load_results
    >>> load_results([{"benchmark": "x"}])
    [{'benchmark': 'x'}]
    """
    if isinstance(path, dict):
        return [path]
    if isinstance(path, (list, tuple)):
        if not all(isinstance(r, dict) for r in path):
            raise errors.value_error("results", "a list of dicts (loaded JSON results)",
                                     [type(r).__name__ for r in path][:3],
                                     "pass load_results('paper/results')")
        return list(path)
    p = Path(os.fspath(path))
    if not p.exists():
        raise FileNotFoundError(f"{p}: expected a results folder or .json file, got no such "
                                f"path. Fix: run the benchmarks in paper/benchmarks/")
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    results = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{f}: expected a JSON results file, got an unreadable one "
                             f"({exc}). Fix: re-run its benchmark") from exc
        if isinstance(data, dict):
            data["_file"] = f.name
            results.append(data)
    return results


def _device(result: dict) -> str:
    """The row of a result: GPU when its ``machine`` names a GPU (as gpu_attention.py's
    ``machine.gpu`` does), else CPU."""
    machine = result.get("machine")
    return "GPU" if isinstance(machine, dict) and machine.get("gpu") else "CPU"


def _panel(record: dict) -> str:
    """The record's mask: ``mask`` (cpu_attention.py) or ``causal`` (gpu_attention.py)."""
    if record.get("mask") is not None:
        return str(record["mask"])
    return "causal" if record.get("causal") else "full"


def _records(results):
    """Flat benchmark records: device, series, panel, n, gflops, time_s, memory_mb.

    Reads the keys the attention benchmarks write per record: ``method``,
    ``n``, ``mask`` (CPU) or ``causal`` (GPU), ``gflops`` (CPU) or ``tflops``
    (GPU), ``median_s`` and ``peak_extra_mb``.
    """
    out = []
    for result in load_results(results):
        records = result.get("records")
        name = str(result.get("benchmark", result.get("_file", "attention")))
        if not isinstance(records, list) or "attention" not in name:
            continue  # other benchmarks (correlation, interpretation, ...) time other things
        device = _device(result)
        for r in records:
            if not isinstance(r, dict) or r.get("n") is None:
                continue  # e.g. the tiling sweep of gpu_attention.py: no n
            gflops = r.get("gflops")
            if gflops is None and r.get("tflops") is not None:
                gflops = 1000.0 * float(r["tflops"])
            memory = r.get("peak_extra_mb")
            out.append({"device": device,
                        "series": str(r.get("method") or result.get("benchmark", "?")),
                        "panel": _panel(r), "n": int(r["n"]),
                        "gflops": gflops, "time_s": r.get("median_s"),
                        "memory_mb": None if memory is None else float(memory)})
    return out


def _perf_figure(results, value: str, ylabel: str, title: str, fig, *, logy: bool):
    """Rows CPU and GPU, one column per mask; a GPU row saying "no GPU results yet" if none."""
    records = [r for r in _records(results) if r[value] is not None]
    if not records:
        fig = new_figure((6.0, 2.4), fig)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no benchmark results with {value!r} found\n"
                "(run paper/benchmarks/*.py)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return fig
    panels = list(dict.fromkeys(r["panel"] for r in records))
    series = list(dict.fromkeys(r["series"] for r in records))
    devices = [d for d in ("CPU", "GPU") if any(r["device"] == d for r in records)]
    heights = [3.0 if d in devices else 0.55 for d in ("CPU", "GPU")]
    fig = new_figure((3.3 * len(panels) + 1.8, sum(heights) + 0.75), fig)
    grid = fig.add_gridspec(2, len(panels), height_ratios=heights)
    handles = {}
    for i, device in enumerate(("CPU", "GPU")):
        if device not in devices:
            ax = fig.add_subplot(grid[i, :])
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{device}: no {device} results yet (paper/results/"
                    f"{device.lower()}_*.json missing)", ha="center", va="center",
                    transform=ax.transAxes, color="0.3", fontsize=10)
            continue
        rows = [r for r in records if r["device"] == device]
        scale, label = 1.0, ylabel
        if value == "gflops" and max(float(r[value]) for r in rows) >= 2000:
            scale, label = 1e-3, ylabel.replace("GFLOP/s", "TFLOP/s")  # GPU numbers
        first = None
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(grid[i, j], sharey=first)
            first = first or ax
            for k, name in enumerate(series):
                pts = sorted((r["n"], float(r[value]) * scale) for r in rows
                             if r["panel"] == panel and r["series"] == name)
                if not pts:
                    continue
                x, y = zip(*pts)
                (line,) = ax.plot(x, y, marker=MARKERS[k % len(MARKERS)], markersize=4,
                                  color=CATEGORICAL[k % len(CATEGORICAL)], label=name)
                handles.setdefault(name, line)
            ax.set_title(f"{device}: {panel}", fontsize=10)
            if not ax.get_lines():
                ax.text(0.5, 0.5, f"no {device} results for {panel}", ha="center", va="center",
                        transform=ax.transAxes, color="0.3", fontsize=9)
                ax.tick_params(labelbottom=False, labelleft=False, length=0)
                continue
            ax.set_xscale("log", base=2)
            integer_log2_axis(ax.xaxis)
            if logy:
                ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlabel("sequence length n")
            if j == 0:
                ax.set_ylabel(label)
            else:
                ax.tick_params(labelleft=False)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right center",
               frameon=False, fontsize=9)
    fig.suptitle(title)
    return fig


def throughput_plot(results, *, metric="gflops", fig=None):
    """Attention throughput (or time) vs sequence length, per backend and peer.

    Reads every attention benchmark (a ``benchmark`` name or file name containing
    "attention", e.g. ``cpu_attention.json`` and ``gpu_attention_*.json``) with a
    ``records`` list, with the keys paper/benchmarks/cpu_attention.py and
    gpu_attention.py write: each record needs ``n`` and ``gflops`` (CPU) or
    ``tflops`` (GPU) / ``median_s``, and is grouped by ``method`` into lines
    and by ``mask`` (CPU) or ``causal`` (GPU: panel "causal" or "full")
    into panels. Records come out on the GPU row when the result's
    ``machine`` names a GPU (``machine.gpu``); without any the figure says
    "no GPU results yet".

    Parameters
    ----------
    results : path, dict or list of dict
        A results folder, a .json file, or loaded results (:func:`load_results`).
        Required: there is no default folder.
    metric : {"gflops", "time"}
        GFLOP/s (higher is better) or median seconds per call.
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from attnkit.plot import throughput_plot
    >>> res = {"benchmark": "cpu_attention", "records": [
    ...     {"method": "attnkit", "mask": "full", "n": n, "gflops": g, "median_s": 0.1}
    ...     for n, g in ((512, 50.0), (1024, 60.0))]}
    >>> fig = throughput_plot(res)
    >>> [t.get_text() for t in fig.texts if "GPU" in t.get_text()] or \\
    ...     [t.get_text() for ax in fig.axes for t in ax.texts]
    ['GPU: no GPU results yet (paper/results/gpu_*.json missing)']
    """
    if metric not in ("gflops", "time"):
        raise errors.value_error("metric", "'gflops' or 'time'", repr(metric), "pick one of those")
    if metric == "gflops":
        return _perf_figure(results, "gflops", "GFLOP/s (median)",
                            "Attention forward throughput vs length", fig, logy=False)
    return _perf_figure(results, "time_s", "seconds per call (median)",
                        "Attention forward time vs length", fig, logy=True)


def memory_plot(results, *, fig=None):
    """Peak extra memory of one attention call vs sequence length, per backend and peer.

    Uses the records' ``peak_extra_mb``: memory allocated beyond the inputs
    during the call. Layout as in :func:`throughput_plot` (log-log axes).

    Parameters
    ----------
    results : path, dict or list of dict
        A results folder, a .json file, or loaded results (:func:`load_results`).
        Required: there is no default folder.
    fig : matplotlib.figure.Figure, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from attnkit.plot import memory_plot
    >>> res = {"records": [{"method": "numpy", "n": n, "peak_extra_mb": n * n / 2**17}
    ...                    for n in (512, 1024)]}
    >>> memory_plot(res).axes[0].get_ylabel()
    'peak extra memory (MB)'
    """
    return _perf_figure(results, "memory_mb", "peak extra memory (MB)",
                        "Peak memory of one attention call vs length", fig, logy=True)


def cost_plot(results, *, ax=None):
    """Time vs sequence length per attention pattern (full, local, sparse, strided, linear).

    Reads the ``attention_cost`` result (``series``: pattern -> points with
    ``n`` and ``median_s``; ``exponents``: fitted ``p`` in ``time ~ n^p``),
    on log-log axes with dashed n^1 and n^2 guides.

    Parameters
    ----------
    results : path, dict or list of dict
        A results folder, ``attention_cost.json`` or loaded results.
        Required: there is no default folder.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from attnkit.plot import cost_plot
    >>> res = {"benchmark": "attention_cost", "series": {
    ...     "full": [{"n": 512, "median_s": 0.01}, {"n": 1024, "median_s": 0.04}],
    ...     "linear": [{"n": 512, "median_s": 0.01}, {"n": 1024, "median_s": 0.02}]}}
    >>> [t.get_text() for t in cost_plot(res).axes[0].get_legend().get_texts()][:2]
    ['full: fitted n^2.00', 'linear: fitted n^1.00']
    """
    found = [r for r in load_results(results) if isinstance(r.get("series"), dict)
             and r.get("benchmark", "attention_cost") == "attention_cost"]
    fig, ax = figure_and_axes(ax, (7.2, 4.4))
    if not found:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no attention_cost results yet\n(run paper/benchmarks/attention_cost.py)",
                ha="center", va="center", transform=ax.transAxes)
        return fig
    result = found[-1]
    exponents = result.get("exponents", {})
    first = None
    for k, (name, points) in enumerate(result["series"].items()):
        pts = sorted((int(p["n"]), float(p["median_s"])) for p in points if "median_s" in p)
        if not pts:
            continue
        n, t = (np.array(v) for v in zip(*pts))
        p = exponents.get(name)
        if p is None and len(n) > 1:
            p = float(np.polyfit(np.log(n), np.log(t), 1)[0])
        label = f"{name}: fitted n^{p:.2f}" if p is not None else name
        ax.plot(n, t * 1e3, marker=MARKERS[k % len(MARKERS)], markersize=4,
                color=CATEGORICAL[k % len(CATEGORICAL)], label=label)
        first = first or (n, t * 1e3)
    if first is not None and len(first[0]) > 1:
        n, t = first
        for power, style in ((1, ":"), (2, "--")):
            ax.plot(n, t[0] * (n / n[0]) ** power, color="0.55", linestyle=style, linewidth=1,
                    label=f"guide ∝ n^{power}")
    ax.set_xscale("log", base=2)
    integer_log2_axis(ax.xaxis)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("time per call (ms, median)")
    shape = result.get("shape", {})
    where = ", ".join(f"{k}={v}" for k, v in shape.items())
    ax.set_title(f"Attention cost vs length{' (' + where + ')' if where else ''}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, frameon=False, loc="upper left")
    return fig
