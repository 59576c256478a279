"""``attnkit correlate``: attention scores vs leave-one-out impact, per layer."""

from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np

from attnkit.constants import CORRELATION_METHODS, CORRELATION_NAMES, SCORE_KINDS
from attnkit.correlate import AUTO_EXACT_MAX_N, PVALUE_METHODS
from attnkit.pvalues import ADJUST_METHODS

from ._common import (
    UserError,
    check_output_path,
    emit,
    file_argument,
    format_option,
    open_atomic,
    parse_target,
    quiet_option,
    residual_option,
    seed_option,
    user_errors,
)

SCORE_HELP = {
    "raw": "attention from the read-out (--target) to each key at the layer, mean over heads",
    "rollout": "the read-out's row of attention rollout over layers 0..layer",
    "flow": "attention flow from the read-out's output nodes at the layer to each input",
    "grad": "the read-out's row of gradient-weighted rollout over layers 0..layer (needs "
            "`gradient`)",
}
OUTPUT_SUFFIXES = (".csv", ".nc", ".zarr")
ADJUST_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
_CONCAT = {"coords": "minimal", "compat": "override", "join": "exact", "combine_attrs": "override"}


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all', '5', '0,2,5', '3-5' or negative indices from the end -> sorted layer indices."""
    if spec.strip().lower() == "all":
        return list(range(n_layers))
    layers = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                span = range(int(lo), int(hi) + 1)
            else:
                span = [int(part)]
        except ValueError:
            raise UserError(f"--layer: expected 'all' or layers like '5', '0,2,5', '3-5' or '-1', "
                            f"got {spec!r}. Fix: e.g. --layer 0-{n_layers - 1}") from None
        for layer in span:
            if not -n_layers <= layer < n_layers:
                raise UserError(f"--layer: expected layers in [0, {n_layers - 1}] (or -1 for the "
                                f"last), got {layer}. Fix: the dataset has {n_layers} layers")
            layers.append(layer % n_layers)
    return sorted(set(layers))


def _open(file):
    import attnkit as ak

    ds = ak.open_dataset(file)
    missing = [name for name in ("attention", "length") if name not in ds.variables]
    if missing:
        raise UserError(f"{file}: expected an attention dataset with {missing}, got variables "
                        f"{sorted(ds.data_vars)}. Fix: build it with ak.from_arrays or "
                        f"MiniLM.run")
    if "impact" not in ds.variables:
        raise UserError(f"{file}: expected an `impact` variable (sample, position, method), got "
                        f"none. Fix: run `attnkit ablate {file}` first")
    if ds["impact"].dims != ("sample", "position", "method"):
        raise UserError(f"{file}: expected impact dims ('sample', 'position', 'method'), got "
                        f"{ds['impact'].dims}. Fix: ds['impact'] = ds.impact.transpose("
                        f"'sample', 'position', 'method')")
    return ds


def _impact_labels(ds) -> list[str]:
    if "method" in ds.coords:
        return [str(v) for v in ds["method"].values]
    return [str(i) for i in range(ds.sizes["method"])]


def _control(ds, name):
    """The control ``name`` as a (sample, position) DataArray named ``name``."""
    import xarray as xr

    if name in ds.data_vars:
        var = ds[name]
        if set(var.dims) - {"sample", "position"}:
            raise UserError(f"--control: expected a variable with dims (sample, position) or a "
                            f"subset, got {name!r} with dims {var.dims}. Fix: select one slice "
                            f"first, e.g. ds[{name!r}].isel(...), and save it as its own variable")
        var = var.broadcast_like(xr.DataArray(np.zeros((ds.sizes["sample"],
                                                          ds.sizes["position"])),
                                              dims=("sample", "position")))
        return xr.DataArray(var.transpose("sample", "position").values,
                            dims=("sample", "position"), name=name)
    kinds = _baseline_kinds()
    if name in kinds:
        import attnkit as ak

        try:
            score = ak.baseline_scores(ds, name)
        except NotImplementedError:
            raise UserError(f"--control: control kind {name!r} needs ak.baseline_scores, which "
                            f"is not available in this version. Fix: store the control in the "
                            f"dataset as a (sample, position) variable") from None
        return xr.DataArray(score.transpose("sample", "position").values,
                            dims=("sample", "position"), name=name)
    per_position = [v for v in ds.data_vars if "position" in ds[v].dims
                    and set(ds[v].dims) <= {"sample", "position"}]
    hint = f"one of {per_position + list(kinds)}" if per_position or kinds else \
        "a (sample, position) variable of the dataset"
    raise UserError(f"--control: expected {hint}, got {name!r}. Fix: add the control to the "
                    f"dataset as a (sample, position) variable, e.g. ds[{name!r}] = ...")


def _baseline_kinds() -> tuple:
    """Control kinds ak.baseline_scores offers, () while it is not available."""
    try:
        from attnkit.baselines import BASELINE_KINDS
    except ImportError:
        return ()
    return tuple(BASELINE_KINDS)


def _groups(ds, name):
    """The per-sample grouping ``name`` as a DataArray over sample."""
    import xarray as xr

    if name not in ds.variables:
        candidates = [v for v in ds.variables if ds[v].dims == ("sample",) and v != "length"]
        raise UserError(f"--groups: expected a per-sample variable or coordinate of the dataset"
                        f"{' (' + ', '.join(candidates) + ')' if candidates else ''}, got "
                        f"{name!r}. Fix: add one, e.g. ds[{name!r}] = ('sample', labels)")
    var = ds[name]
    if var.dims != ("sample",):
        raise UserError(f"--groups: expected a variable with dims ('sample',), got {name!r} with "
                        f"dims {var.dims}. Fix: pass one label per sample")
    return xr.DataArray(var.values, dims="sample", name=name)


def _write(result, rows, path: Path) -> None:
    if path.suffix.lower() == ".csv":
        import csv

        with open_atomic(path, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return
    from attnkit.data import write_atomic

    write_atomic(result, path)


@click.command()
@file_argument
@click.option("--score", "scores", type=click.Choice(SCORE_KINDS), multiple=True, default=("raw",),
              show_default=True,
              help="Attention score per position (repeat for several): "
                   + "; ".join(f"{k}: {v}" for k, v in SCORE_HELP.items()) + ".")
@click.option("--target", default=None, metavar="TARGET",
              help="The output the scores explain: an output position (0 = [CLS]), 'mean' or "
                   "'patches' (default: the dataset's readout attr, MiniLM 'mean', "
                   "SaliencyViT 'patches'; [CLS] where it has none).")
@click.option("--layer", "layer_spec", default="all", show_default=True, metavar="LAYERS",
              help="Layers (0-based): 'all', '5', '0,2,5', '3-5', '-1' for the last.")
@click.option("--method", type=click.Choice(CORRELATION_METHODS),
              default="kendall", show_default=True, help="Correlation statistic.")
@click.option("--impact", "impacts", multiple=True, metavar="NAME",
              help="Impact method(s) of the dataset's `impact` variable, e.g. delete or mask "
                   "(default: every one).")
@click.option("--versus", type=click.Choice(SCORE_KINDS), default=None,
              help="Also compare every other score with this one, sample by sample: mean "
                   "difference of the statistics with its bootstrap CI.")
@click.option("--keep-special", is_flag=True,
              help="Keep [CLS]/[SEP] positions (by default they are left out when the "
                   "dataset has tokens).")
@residual_option
@click.option("--ci", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True, help="Confidence level of the bootstrap interval.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Significance level for the significant fraction.")
@click.option("--n-boot", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Bootstrap resamples.")
@click.option("--control", "controls", multiple=True, metavar="NAME",
              help="Partial correlation controlling for a (sample, position) variable of the "
                   "dataset, or for a control score of ak.baseline_scores ("
                   + ", ".join(_baseline_kinds()) + "; a dataset variable of the same name "
                   "wins); repeat for several (Spearman/Pearson).")
@click.option("--pvalue-method", type=click.Choice(PVALUE_METHODS), default="auto",
              show_default=True,
              help="auto: exact/permutation p-values for samples with at most "
                   f"{AUTO_EXACT_MAX_N} positions, asymptotic beyond; exact: always exact or "
                   "permutation; asymptotic: t / normal approximations.")
@click.option("--groups", "groups_var", default=None, metavar="VAR",
              help="A per-sample variable or coordinate of the dataset (e.g. the source "
                   "corpus): the CI becomes a cluster bootstrap over its groups, and -o x.nc "
                   "gets per-group summaries.")
@click.option("--adjust", type=click.Choice(("none",) + ADJUST_METHODS), default="none",
              show_default=True,
              help="Adjust the per-sample p-values for multiple comparisons (holm: family-wise "
                   "error, bh: false discovery rate; the family is the samples of one table "
                   "row) and add the fraction significant after adjustment.")
@seed_option
@click.option("-o", "--output", type=click.Path(dir_okay=True), default=None,
              help="Write the table as .csv, or every per-sample statistic as .nc / .zarr.")
@format_option
@quiet_option
@user_errors
def correlate(file, scores, target, layer_spec, method, impacts, versus, keep_special, residual, ci, alpha,
              n_boot, controls, pvalue_method, groups_var, adjust, seed, output, fmt, quiet):
    """Correlate attention scores with leave-one-out impact, layer by layer.

    FILE is an attention dataset (schema 1) holding `attention` and `impact`
    (sample, position, method). For every score, impact method and layer it
    computes one correlation per sample over that sample's tokens, and prints
    the mean with a bootstrap confidence interval and the fraction of samples
    whose correlation is significant at --alpha.

    With --control the correlation is partial (the control's effect on both
    the score and the impact is regressed out per sample); with --groups the
    confidence interval resamples whole groups of samples; --adjust adds the
    fraction of samples still significant after a Holm or Benjamini-Hochberg
    adjustment over the samples of each row.

    \b
    Example:
      attnkit correlate minilm --score raw --score rollout \\
          --method spearman --impact delete --versus raw -o correlation.csv
      attnkit correlate minilm --method spearman --control position_score \\
          --groups source --adjust holm
    """
    import xarray as xr

    import attnkit as ak

    path = check_output_path(output, OUTPUT_SUFFIXES, "correlation.csv")
    ds = _open(file)
    layers = parse_layers(layer_spec, ds.sizes["layer"])
    labels = _impact_labels(ds)
    chosen = list(dict.fromkeys(impacts)) or labels
    unknown = [name for name in chosen if name not in labels]
    if unknown:
        raise UserError(f"--impact: expected one of {labels}, got {unknown[0]!r}. "
                        f"Fix: e.g. --impact {labels[0]}")
    scores = list(dict.fromkeys(scores))
    if versus is not None and versus not in scores:
        scores.append(versus)
    has_tokens = "token" in ds.variables
    exclude = "special" if has_tokens and not keep_special else None
    lengths = xr.DataArray(ds["length"].values, dims="sample")
    common = {"method": method, "lengths": lengths, "exclude": exclude, "ci": ci,
                  "n_boot": n_boot, "seed": seed}
    controls_names = list(dict.fromkeys(controls))
    control = [_control(ds, name) for name in controls_names]
    if len(control) > 1 and method == "kendall":
        raise UserError(f"--control: expected one control with --method kendall (Kendall's "
                        f"partial tau), got {len(control)}. Fix: pass one --control, or use "
                        f"--method spearman or pearson")
    groups = None if groups_var is None else _groups(ds, groups_var)
    extra = {"pvalue_method": pvalue_method, "control": control or None, "groups": groups}
    read_out = parse_target(target)
    score_da = {s: ak.attention_scores(ds, s, target=read_out, layers=layers, residual=residual)
                for s in scores}
    per_impact, rows = [], []
    for impact_name in chosen:
        parts = []
        target = ds["impact"].isel(method=labels.index(impact_name)).drop_vars(
            [c for c in ("method",) if c in ds["impact"].coords])
        target = xr.DataArray(target.values, dims=("sample", "position"))
        for s in scores:
            res = ak.correlate(score_da[s], target, alpha=alpha, **common, **extra)
            if adjust != "none":
                res["pvalue_adjusted"] = ak.adjust_pvalues(res["pvalue"], adjust, dim="sample")
                res["significant_adjusted"] = (
                    (res["pvalue_adjusted"] < alpha).where(res["pvalue_adjusted"].notnull())
                    .mean("sample"))
            if versus is not None:
                # against itself the comparison is 0 (kept so every score has the same variables)
                other = score_da[versus] if s != versus else score_da[s]
                cmp = ak.compare_correlations(score_da[s], other, target, **common)
                res["difference"] = cmp["difference"]
                res["mean_difference"] = cmp["mean_difference"]
                res["difference_ci_low"] = cmp["ci_low"]
                res["difference_ci_high"] = cmp["ci_high"]
            parts.append(res.expand_dims(score=[s]))
            for j, layer in enumerate(layers):
                row = {"score": s, "impact": impact_name, "layer": layer,
                       "mean": float(res["mean_statistic"][j]),
                       "ci_low": float(res["ci_low"][j]), "ci_high": float(res["ci_high"][j]),
                       "significant": float(res["significant_fraction"][j]),
                       "n": int(res["n_instances"][j])}
                if adjust != "none":
                    row[f"significant_{adjust}"] = float(res["significant_adjusted"][j])
                if groups is not None:
                    row["groups"] = int((res["group_n_instances"][j] > 0).sum())
                if versus is not None:
                    row[f"vs_{versus}"] = float(res["mean_difference"][j])
                    row["vs_ci_low"] = float(res["difference_ci_low"][j])
                    row["vs_ci_high"] = float(res["difference_ci_high"][j])
                rows.append(row)
        per_impact.append(xr.concat(parts, dim="score", **_CONCAT).expand_dims(
            impact=[impact_name]))
    result = xr.concat(per_impact, dim="impact", **_CONCAT)
    result.attrs.update({"source_file": os.path.basename(str(file)),
                         "target": str(score_da[scores[0]].attrs.get("target", "")),
                         "exclude_special":
                         int(exclude is not None), "residual": float(residual),
                         "model": str(ds.attrs.get("model", ""))})
    if adjust != "none":
        result.attrs["adjust"] = adjust
    if path is not None:
        _write(result, rows, path)
    if quiet:
        return
    if fmt == "table":
        partial = f"partial {CORRELATION_NAMES[method]} given {', '.join(controls_names)}" \
            if control else CORRELATION_NAMES[method]
        boot = "bootstrap CI" if groups is None else \
            f"CI from a cluster bootstrap over the groups of {groups_var}"
        click.echo(f"{partial[0].upper()}{partial[1:]} between attention scores and leave-one-out "
                   f"impact (scores read at {result.attrs['target']}), per sample over its "
                   f"tokens{' except [CLS]/[SEP]' if exclude else ''}; "
                   f"mean over {ds.sizes['sample']} samples with {ci:.0%} {boot} (n_boot "
                   f"{n_boot}, seed {seed}); significant = fraction of samples with p < {alpha:g} "
                   f"({pvalue_method} p-values)"
                   + (f"; significant_{adjust} = the same after {ADJUST_NAMES[adjust]} adjustment"
                      " over the row's samples" if adjust != "none" else ""))
        if control and method == "kendall":
            click.echo("Kendall's partial tau has no p-value (significant is NaN); use "
                       "--method spearman or pearson to test partial correlations.")
    emit(rows, fmt)
    if path is not None and fmt == "table":
        click.echo(f"wrote {path}")
