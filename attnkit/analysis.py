"""The main job: one call from an attention dataset to tables, figures and a results file.

:func:`analyze` validates a dataset, computes head statistics, rollout, flow
and gradient scores of the [CLS] position, runs the built-in equivariance
checks, correlates every score with the stored leave-one-out impacts (with
bootstrap intervals and a paired rollout-vs-raw comparison), and writes a
results dataset, a Markdown report and figures into one folder. ``attnkit
analyze`` is its command-line face; this module holds the logic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import errors
from .constants import SCORE_KINDS

__all__ = ["analyze", "AnalysisResult", "QUICK_SAMPLES"]

#: Samples kept by ``quick=True`` (a smoke run).
QUICK_SAMPLES = 8
_LAYER_STATS = ("entropy", "distance", "self_mass", "prev_mass", "next_mass", "cls_mass",
                "sep_mass", "punct_mass")


@dataclass
class AnalysisResult:
    """What :func:`analyze` computed.

    Attributes
    ----------
    results : xarray.Dataset
        Head statistics, per-layer [CLS] scores, and the correlation summaries.
    tables : dict of str to list of dict
        ``"layers"`` (head statistics per layer), ``"correlation"`` (per layer,
        score, impact and method), ``"paired"`` (rollout minus raw) and
        ``"equivariance"`` (one row per built-in check).
    files : list of pathlib.Path
        Everything written into the output folder.
    seconds : dict of str to float
        Wall time of each step.
    """

    results: object
    tables: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


class _Steps:
    """Time each step and tell ``progress`` when it starts."""

    def __init__(self, progress, total: int) -> None:
        self._progress = progress
        self._total = total
        self._index = 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        self._index += 1
        if self._progress:
            self._progress(f"[{self._index}/{self._total}] {name}")
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 3)
        return value


def _layer_table(stats) -> list[dict]:
    mean = stats.mean([d for d in ("sample", "head") if d in stats.dims])
    rows = []
    for layer in range(stats.sizes["layer"]):
        row = {"layer": layer}
        for name in _LAYER_STATS:
            value = float(mean[name].values[layer])
            if not np.isnan(value):
                row[name] = value
        rows.append(row)
    return rows


#: Control scores correlated beside the attention scores (at the last layer).
CONTROLS = ("random", "position", "length")
#: Attention scores also read from [CLS] when the model reads its output elsewhere, as the
#: earlier studies did (flow from [CLS] is degenerate on MiniLM: kept, labelled as such).
CLS_KINDS = ("raw", "rollout", "flow")


def _scores(ds, kinds, residual, attributions, target=None):
    """Attention scores per layer at the read-out (and at [CLS]); attributions and
    controls at the last layer.

    Attributions explain the whole model, so they sit at the last layer, beside
    the scores that have seen every layer; so do the controls, which need no model.
    """
    import attnkit as ak
    from .attribution import METHOD_DIM

    out = {kind: ak.attention_scores(ds, kind, residual=residual, target=target)
           for kind in kinds}
    read_at = next(iter(out.values())).attrs["target"] if out else "0"
    if read_at != "0":
        for kind in (k for k in CLS_KINDS if k in kinds):
            out[f"{kind}_cls"] = ak.attention_scores(ds, kind, residual=residual, target=0)
    last = ds.sizes["layer"] - 1

    def at_last_layer(a):
        return a.drop_vars("token", errors="ignore").expand_dims(layer=[last], axis=1)

    for name in attributions:
        if name == "grad_rollout" and "grad" in out and target is None:
            continue  # the `grad` score's last layer, read at the same read-out: the same numbers
        a = ds["attribution"]
        out[name] = at_last_layer(a.sel({METHOD_DIM: name}, drop=True) if METHOD_DIM in a.dims
                                  else a)
    for kind in CONTROLS:
        if kind == "length" and ("token" not in ds.variables
                                 or str(ds.attrs.get("readout", "")) == "patches"):
            continue
        out[kind] = at_last_layer(ak.baseline_scores(ds, kind))
    return out


def score_target(ds, target=None) -> str:
    """The read-out attention scores explain, as a label ("mean", "patches", "0", ...)."""
    from .readout import readout_weights

    return readout_weights(target, ds["length"].values[:1], ds.sizes["key"],
                           readout=ds.attrs.get("readout")).label


def _stored_attributions(ds) -> list[str]:
    from .attribution import METHOD_DIM

    if "attribution" not in ds.variables:
        return []
    a = ds["attribution"]
    if METHOD_DIM in a.dims:
        return [str(m) for m in a[METHOD_DIM].values]
    return [str(a.attrs.get("method", "attribution"))]


def missing_scores(ds, scores, attributions) -> list[dict]:
    """Why a requested score or table cannot be computed from ``ds``: rows of (score, reason)."""
    rows = []
    if "grad" in scores and "gradient" not in ds.variables:
        rows.append({"score": "grad", "reason": "the dataset has no `gradient` (dT/d attention). "
                     "Fix: attnkit compute --gradients, or model.run(texts, gradients=True)"})
    if attributions is None and "attribution" not in ds.variables:
        rows.append({"score": "attributions", "reason": "the dataset has no `attribution`. "
                     "Fix: attnkit attribute DATASET (input x gradient, integrated gradients, "
                     "grad_rollout)"})
    for name in attributions or ():
        if name not in _stored_attributions(ds):
            rows.append({"score": name, "reason": f"no attribution {name!r} in the dataset. "
                         f"Fix: attnkit attribute DATASET -m {name}"})
    if "impact" not in ds.variables:
        rows.append({"score": "all (correlations)", "reason": "the dataset has no `impact`, so "
                     "nothing is correlated. Fix: attnkit ablate DATASET"})
    return rows


def _correlations(ds, scores, methods, n_boot, seed):
    """Per layer: each score against each impact method, summarised over samples."""
    import attnkit as ak

    rows, paired = [], []
    impact = ds["impact"]
    impact_methods = [str(m) for m in impact["method"].values] if "method" in impact.coords else [
        str(i) for i in range(impact.sizes["method"])]
    for i, impact_name in enumerate(impact_methods):
        target = impact.isel(method=i, drop=True)
        for method in methods:
            for kind, score in scores.items():
                res = ak.correlate(score, target, method=method, dim="position",
                                   exclude="special", n_boot=n_boot, seed=seed)
                for layer_index, layer in enumerate(score["layer"].values):
                    pick = res.isel(layer=layer_index)
                    rows.append({
                        "layer": int(layer), "score": kind, "impact": impact_name,
                        "method": method,
                        "statistic": float(pick["mean_statistic"]),
                        "ci_low": float(pick["ci_low"]), "ci_high": float(pick["ci_high"]),
                        "significant_fraction": float(pick["significant_fraction"]),
                        "n_instances": int(pick["n_instances"]),
                    })
            if "rollout" in scores and "raw" in scores:
                diff = ak.compare_correlations(scores["rollout"], scores["raw"], target,
                                               method=method, dim="position", exclude="special",
                                               n_boot=n_boot, seed=seed)
                for layer_index, layer in enumerate(scores["raw"]["layer"].values):
                    pick = diff.isel(layer=layer_index)
                    paired.append({
                        "layer": int(layer), "impact": impact_name, "method": method,
                        "rollout_minus_raw": float(pick["mean_difference"]),
                        "ci_low": float(pick["ci_low"]), "ci_high": float(pick["ci_high"]),
                    })
    return rows, paired


#: Built-in equivariance checks the main job runs. ALiBi and relative bias are left out:
#: as score_mods they compile their own kernels (~20 s each per process, never cached on
#: disk); ``attnkit equivariance`` runs them with the rest.
ANALYZE_CHECKS = ("attention", "multi_head_attention", "linear_attention",
                  "positional/sinusoidal", "positional/learned", "positional/rope", "model/")


def _equivariance(seed: int) -> list[dict]:
    """The built-in checks at their quick size (``attnkit equivariance`` runs them all)."""
    from .equivariance import builtin_checks

    rows = []
    for check in builtin_checks(quick=True, seed=seed, select=ANALYZE_CHECKS):
        report = check.report
        rows.append({
            "check": check.name, "expectation": check.expectation, "status": check.status,
            "max_abs_error": float(report.max_abs_error) if report is not None else float("nan"),
            "tolerance": float(report.tolerance) if report is not None else float("nan"),
        })
    return rows


def _results_dataset(ds, stats, scores, correlation):
    import pandas as pd
    import xarray as xr

    out = stats.copy()
    for kind, score in scores.items():
        if kind.removesuffix("_cls") in SCORE_KINDS:  # attributions are in the input already
            out[f"{kind}_score"] = score.drop_vars("token", errors="ignore")
    if correlation:
        frame = pd.DataFrame(correlation).set_index(["score", "impact", "method", "layer"])
        summary = xr.Dataset.from_dataframe(frame)
        out = out.merge(summary.rename({c: f"correlation_{c}" for c in summary.data_vars}))
    out["length"] = ds["length"]
    out.attrs.update({k: ds.attrs[k] for k in ("model", "source") if k in ds.attrs})
    out.attrs["analysis"] = "attnkit analyze"
    return out


def _figures(ds, stats, scores, correlation, tables, folder: Path) -> list[Path]:
    from . import plot

    out = plot.FigureFolder(folder)
    save = out.save

    lengths = ds["length"].values
    # A short sample reads best in the per-token figures.
    candidates = np.flatnonzero((lengths >= 6) & (lengths <= 14))
    sample = int(candidates[0]) if candidates.size else int(np.argmin(lengths))
    length = int(lengths[sample])
    tokens = [str(t) for t in ds["token"].values[sample, :length]] if "token" in ds.variables \
        else None
    save(plot.head_grid(ds, sample=sample), "head_grid.png")
    save(plot.head_stats_plot(stats), "head_stats.png")
    save(plot.special_token_plot(stats), "special_tokens.png")
    import attnkit as ak

    one = ds.isel(sample=[sample])
    save(plot.rollout_map(ak.rollout(one).values[0, :length, :length], tokens,
                          title=f"Rollout, sample {sample}").figure, "rollout.png")
    save(plot.flow_map(ak.attention_flow(one).values[0, :length, :length], tokens,
                       title=f"Attention flow, sample {sample}").figure, "flow.png")
    attributions = [k for k in scores if k not in SCORE_KINDS and k not in CONTROLS
                    and not k.endswith("_cls")]
    if attributions:
        rows = {}
        if "impact" in ds.variables:
            impact = ds["impact"].isel(method=0)
            rows[f"impact ({impact['method'].item() if 'method' in impact.coords else 0})"] = \
                impact.values[sample, :length]
        for kind in [k for k in ("raw", "grad") if k in scores] + attributions:
            label = f"{kind} (layer {int(scores[kind]['layer'][-1])})" if kind in SCORE_KINDS \
                else kind
            rows[label] = scores[kind].values[sample, -1, :length]
        save(plot.token_scores(rows, tokens, title=f"Impact, attention and attributions, "
                               f"sample {sample}"), "attributions.png")
    if correlation:
        for method in sorted({row["method"] for row in correlation}):
            rows = [r for r in correlation if r["method"] == method  # the per-layer scores
                    and r["score"].removesuffix("_cls") in SCORE_KINDS]
            save(plot.correlation_plot(rows, method=method), f"correlation_{method}.png")
    if tables.get("secondary"):
        row = tables["secondary"][0]
        save(plot.score_forest(tables["secondary"], controls=CONTROLS,
                               title=f"{row['method'].capitalize()} with {row['impact']} impact, "
                                     f"last layer, read at {tables['target']}"),
             "scores_last_layer.png")
    return out.written


def _cell(value) -> str:
    """A table cell: floats to 3 decimals, or 3 significant digits when that would hide
    them (p-values, tolerances, rounding errors)."""
    if not isinstance(value, float):
        return str(value)
    if value == 0 or not np.isfinite(value) or 1e-3 <= abs(value) < 1e5:
        return f"{value:.3f}"
    return f"{value:.3g}"


def markdown_table(rows) -> str:
    """Rows of dicts as a Markdown table: floats to 3 decimals (3 significant digits
    below 0.001), columns in order of first appearance, blank where a row lacks one.

    Examples
    --------
    >>> print(markdown_table([{"score": "raw", "rho": 0.6769, "p": 4.97e-46}]), end="")
    | score | rho | p |
    |---|---|---|
    | raw | 0.677 | 4.97e-46 |
    """
    if not rows:
        return "(none)\n"
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _markdown(tables, seconds, ds, quick) -> str:
    table = markdown_table

    parts = [f"# attnkit analyze: {ds.attrs.get('model', '') or 'attention dataset'}\n",
             f"{ds.sizes['sample']} samples{' (quick run)' if quick else ''}, "
             f"{ds.sizes['layer']} layers x {ds.sizes['head']} heads, "
             f"lengths {int(ds['length'].min())}..{int(ds['length'].max())}.\n",
             "## Head statistics per layer (means over samples and heads)\n", table(tables["layers"])]
    if tables.get("missing"):
        parts += ["## Scores left out, and why\n", table(tables["missing"])]
    if tables.get("primary"):
        parts += ["## Primary contrast (pre-specified)\n",
                  "Rollout against raw attention of the last layer, both read at the model's "
                  f"read-out ({tables['target']}), Spearman with deletion impact, paired over the "
                  "same samples: mean difference, 95% bootstrap CI, two-sided Wilcoxon "
                  "signed-rank p of the per-sample differences.\n",
                  table(tables["primary"])]
    if tables.get("secondary"):
        parts += ["## Secondary: every score at the last layer\n",
                  "Mean per-sample Spearman with deletion impact (95% percentile-bootstrap CI "
                  "over samples; the groups are summarised apart below); p_wilcoxon: "
                  "signed-rank test of the per-sample correlations against 0, p_holm: "
                  "Holm-adjusted over this table; significant_fraction: samples with p < 0.05 "
                  "(exact/permutation p for short samples), _bh: after Benjamini-Hochberg within "
                  "the score; partial_given_length: partial Spearman given the token-length "
                  "control. `random`, `position` and `length` are controls that need no model; "
                  "`*_cls` read [CLS] instead of the read-out.\n",
                  table(tables["secondary"])]
    if tables.get("groups"):
        parts += ["## Per sentence group (last layer, Spearman with deletion impact)\n",
                  table(tables["groups"])]
    if tables.get("length_bins"):
        parts += ["## Per length bin (content tokens; last layer)\n",
                  "The fraction of significant samples grows with length: short samples have "
                  "too few positions for any test to reject.\n",
                  table(tables["length_bins"])]
    if tables.get("correlation"):
        parts += ["## Attention scores vs leave-one-out impact per layer (mean over samples, "
                  "95% bootstrap CI)\n",
                  "Attributions (input x gradient, integrated gradients, grad_rollout, ...) and "
                  "controls are listed at the last layer.\n",
                  table(tables["correlation"])]
    if tables.get("paired"):
        parts += ["## Rollout minus raw attention (paired, same samples)\n", table(tables["paired"])]
    if tables.get("equivariance"):
        parts += ["## Permutation equivariance checks\n", table(tables["equivariance"])]
    parts += ["## Time per step (s)\n", table([{"step": k, "seconds": v} for k, v in seconds.items()])]
    return "\n".join(parts)


def analyze(data, output_dir=None, *, quick: bool = False, scores=SCORE_KINDS,
            attributions=None, methods=("spearman", "kendall"), residual: float = 0.5,
            target=None, n_boot: int = 1000,
            seed: int = 0, equivariance: bool = True, figures: bool = True, progress=None):
    """Run the whole analysis of an attention dataset.

    Parameters
    ----------
    data : xarray.Dataset or path
        A schema-1 attention dataset (``impact`` enables the correlations,
        ``gradient`` the gradient score).
    output_dir : path, optional
        Folder for ``analysis.nc``, ``report.md`` and the figures (created).
        Nothing is written when None.
    quick : bool
        Smoke run: the first :data:`QUICK_SAMPLES` samples, 200 bootstrap
        resamples, quick equivariance checks.
    scores : sequence of {"raw", "rollout", "flow", "grad"}
        Attention scores to correlate with impact ("grad" only with
        gradients), read at ``target``; when that is not [CLS], raw, rollout
        and flow are also read at [CLS] (``raw_cls``, ...) as earlier studies
        did. The controls (random, position, token length) are always added.
    attributions : sequence of str, optional
        Stored ``attribution`` methods to correlate too (listed at the last
        layer); default: all the dataset holds. Scores that cannot be computed
        are listed, with the reason and the fix, in ``tables["missing"]``.
    methods : sequence of {"spearman", "kendall", "pearson"}
    residual : float
        Residual weight of rollout and flow.
    target : int, str or array, optional
        The output the attention scores explain (:func:`attnkit.attention_scores`);
        default: the dataset's ``readout`` attr (MiniLM: "mean").
    n_boot, seed : int
        Bootstrap resamples and seed of the confidence intervals.
    equivariance, figures : bool
        Run the built-in equivariance checks; draw the figures.
    progress : callable, optional
        Called with a line of text as each step starts.

    Returns
    -------
    AnalysisResult

    Examples
    --------
    >>> import attnkit as ak
    >>> from attnkit.analysis import analyze
    >>> ds = ak.open_dataset("datasets/synthetic/planted.nc")
    >>> res = analyze(ds, quick=True, equivariance=False, figures=False)
    >>> [row["layer"] for row in res.tables["layers"]]
    [0, 1, 2, 3]
    """
    import attnkit as ak

    ds = ak.open_dataset(data) if isinstance(data, (str, Path)) else data
    unknown = set(scores) - set(SCORE_KINDS)
    if unknown:
        raise errors.value_error("scores", f"a subset of {SCORE_KINDS}", sorted(unknown),
                                 "drop the unknown names")
    if quick:
        ds = ds.isel(sample=slice(0, QUICK_SAMPLES))
        n_boot = min(n_boot, 200)
    ds = ds.load()
    kinds = [k for k in scores if k != "grad" or "gradient" in ds.variables]
    stored = _stored_attributions(ds)
    chosen = stored if attributions is None else [a for a in attributions if a in stored]
    missing = missing_scores(ds, scores, attributions)
    has_impact = "impact" in ds.variables
    total = 3 + 2 * int(has_impact) + int(equivariance) + int(figures) + int(output_dir is not None)
    steps = _Steps(progress, total)
    steps.run("validate", ak.validate, ds)
    stats = steps.run("head statistics", ak.head_stats, ds)
    read_at = score_target(ds, target)
    score_arrays = steps.run(f"scores at the read-out ({read_at}), attributions, controls",
                             _scores, ds, kinds, residual, chosen, target)
    tables = {"layers": _layer_table(stats), "missing": missing, "target": read_at}
    correlation = []
    if has_impact:
        correlation, paired = steps.run("correlation with impact", _correlations, ds,
                                        score_arrays, methods, n_boot, seed)
        tables["correlation"] = correlation
        tables["paired"] = paired
        from ._study import study_tables

        tables.update(steps.run("primary contrast, corrected secondary table, groups",
                                study_tables, ds, score_arrays, n_boot=n_boot, seed=seed,
                                target=read_at))
    if equivariance:
        tables["equivariance"] = steps.run("equivariance checks", _equivariance, seed)
    results = _results_dataset(ds, stats, score_arrays, correlation)
    result = AnalysisResult(results, tables, [], steps.seconds)
    if output_dir is not None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if figures:
            result.files += steps.run("figures", _figures, ds, stats, score_arrays, correlation,
                                      tables, folder)
        from .data import atomic_file, write_atomic

        def write():
            write_atomic(results, folder / "analysis.nc")
            with atomic_file(folder / "report.md") as tmp, open(tmp, "w") as fh:
                fh.write(_markdown(tables, steps.seconds, ds, quick))
            return [folder / "analysis.nc", folder / "report.md"]

        result.files += steps.run("write results", write)
    return result
