"""The study's pre-specified tables: one primary contrast, then the corrected rest.

:func:`attnkit.analysis.analyze` correlates every score with leave-one-out
impact layer by layer. This module reads that as a study should be read:

* the **primary contrast**, fixed before looking at the numbers
  (:data:`PRIMARY`): rollout against raw attention of the last layer, both
  read at the model's read-out, Spearman with deletion impact, paired over
  the same sentences;
* the **secondary table**: every score at the last layer, with a two-sided
  Wilcoxon signed-rank p-value of its per-instance correlations against 0,
  Holm-adjusted over the table, the partial correlation given the token-length
  control (text), and the fraction of instances significant after a
  Benjamini-Hochberg correction within the score;
* **per group** (e.g. the three sentence sources, kept apart instead of
  pooled) and **per length bin** (the "fraction significant" grows with
  length: a short sentence has too few positions for any test to reject).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PRIMARY", "LENGTH_BINS", "study_tables"]

#: The pre-specified primary contrast.
PRIMARY = {"score": "rollout", "versus": "raw", "method": "spearman", "impact": "delete"}
#: Edges of the length bins (valid positions without special tokens): [lo, hi).
LENGTH_BINS = (0, 10, 20, 30, 1000)


def _last(score):
    return score.isel(layer=-1, drop=True) if "layer" in score.dims else score


def _impact(ds, name):
    impact = ds["impact"]
    names = [str(m) for m in impact["method"].values]
    name = name if name in names else names[0]
    return name, impact.sel({"method": name}, drop=True)  # keeps `token`: specials are left out


def _wilcoxon(values) -> float:
    """Two-sided Wilcoxon signed-rank p of ``values`` against 0 (NaN with < 2 values)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2 or np.all(v == 0):
        return float("nan")
    return float(stats.wilcoxon(v).pvalue)


def _length_bins(ds, exclude_special: bool):
    """A label per sample: its count of content positions, binned."""
    import xarray as xr

    from .constants import SPECIAL_TOKENS

    lengths = np.asarray(ds["length"].values)
    if exclude_special and "token" in ds.variables:
        tokens = ds["token"].values
        lengths = np.array([sum(str(t) not in SPECIAL_TOKENS for t in tokens[s, :m])
                            for s, m in enumerate(lengths)])
    edges = LENGTH_BINS
    labels = [f"{lo}-{hi - 1}" if hi < 1000 else f">={lo}" for lo, hi in zip(edges, edges[1:])]
    index = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(labels) - 1)
    return xr.DataArray(np.array(labels)[index], dims="sample")


def _group_rows(res, score: str, by: str) -> list[dict]:
    rows = []
    for g, label in enumerate(res["group"].values):
        rows.append({by: str(label), "score": score,
                     "statistic": float(res["group_mean_statistic"].values[g]),
                     "ci_low": float(res["group_ci_low"].values[g]),
                     "ci_high": float(res["group_ci_high"].values[g]),
                     "significant_fraction": float(res["group_significant_fraction"].values[g]),
                     "n_instances": int(res["group_n_instances"].values[g])})
    return rows


def study_tables(ds, scores: dict, *, n_boot: int, seed: int, target: str) -> dict:
    """The primary contrast, the secondary table, and group and length-bin summaries.

    Parameters
    ----------
    ds : xarray.Dataset
        With ``impact`` (and a ``group`` coordinate for the group table).
    scores : dict of str to xarray.DataArray (sample, layer, position)
        Every score of the study, by name (attention scores, attributions,
        controls); the last layer is used.
    n_boot, seed : int
        Bootstrap resamples and seed.
    target : str
        The read-out the attention scores explain (for the table labels).

    Returns
    -------
    dict of str to list of dict
        ``primary``, ``secondary``, ``groups`` (empty without a ``group``
        coordinate) and ``length_bins``.
    """
    import attnkit as ak

    exclude = "special" if "token" in ds.variables else None
    impact_name, impact = _impact(ds, PRIMARY["impact"])
    method = PRIMARY["method"]
    common = {"method": method, "dim": "position", "exclude": exclude, "n_boot": n_boot,
              "seed": seed}
    groups = ds["group"] if "group" in ds.coords else None
    tables: dict = {"primary": [], "secondary": [], "groups": [], "length_bins": []}

    a, b = PRIMARY["score"], PRIMARY["versus"]
    if a in scores and b in scores:
        cmp = ak.compare_correlations(_last(scores[a]).drop_vars("token", errors="ignore"),
                                      _last(scores[b]).drop_vars("token", errors="ignore"),
                                      impact, **common)
        tables["primary"].append({
            "contrast": f"{a} - {b} (last layer, read at {target})", "impact": impact_name,
            "method": method,
            f"{a}": float(np.nanmean(cmp["statistic_a"].values)),
            f"{b}": float(np.nanmean(cmp["statistic_b"].values)),
            "difference": float(cmp["mean_difference"]),
            "ci_low": float(cmp["ci_low"]), "ci_high": float(cmp["ci_high"]),
            "p_wilcoxon": _wilcoxon(cmp["difference"].values),
            "n_instances": int(cmp["n_instances"]),
        })

    length = None
    if "token" in ds.variables and str(ds.attrs.get("readout", "")) != "patches":
        length = ak.baseline_scores(ds, "length").drop_vars("token", errors="ignore")
    bins = _length_bins(ds, exclude is not None)
    for name, score in scores.items():
        last = _last(score).drop_vars("token", errors="ignore")
        res = ak.correlate(last, impact, **common)
        stat = res["statistic"].values
        p_adjusted = ak.adjust_pvalues(res["pvalue"].values, method="bh")
        row = {"score": name, "impact": impact_name, "method": method,
               "statistic": float(res["mean_statistic"]), "ci_low": float(res["ci_low"]),
               "ci_high": float(res["ci_high"]), "p_wilcoxon": _wilcoxon(stat),
               "significant_fraction": float(res["significant_fraction"]),
               "significant_fraction_bh": float(np.nanmean(p_adjusted[np.isfinite(stat)] < 0.05))
               if np.isfinite(stat).any() else float("nan"),
               "n_instances": int(res["n_instances"])}
        if length is not None:  # NaN for the control itself: every row has the same columns
            row["partial_given_length"] = float("nan") if name == "length" else float(
                ak.correlate(last, impact, control=length, **common)["mean_statistic"])
        tables["secondary"].append(row)
        if groups is not None:  # three groups are too few clusters for a cluster bootstrap:
            by_group = ak.correlate(last, impact, groups=groups, **common)  # per-group rows only
            tables["groups"] += _group_rows(by_group, name, "group")
        by_length = ak.correlate(last, impact, groups=bins, **common)
        tables["length_bins"] += _group_rows(by_length, name, "length_bin")
    adjusted = ak.adjust_pvalues([r["p_wilcoxon"] for r in tables["secondary"]], method="holm")
    order = ["score", "impact", "method", "statistic", "ci_low", "ci_high", "p_wilcoxon",
             "p_holm", "significant_fraction", "significant_fraction_bh",
             "partial_given_length", "n_instances"]
    tables["secondary"] = [{k: {**row, "p_holm": float(p)}[k] for k in order
                            if k in row or k == "p_holm"}
                           for row, p in zip(tables["secondary"], adjusted)]
    return tables
