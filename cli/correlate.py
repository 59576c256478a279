"""``attnkit correlate``: attention scores vs leave-one-out impact, per layer."""

from __future__ import annotations

import os
from pathlib import Path

import click

from attnkit.constants import CORRELATION_METHODS, CORRELATION_NAMES, SCORE_KINDS

from ._common import (UserError, check_output_path, emit, file_argument, format_option,
                      open_atomic, quiet_option, residual_option, seed_option, user_errors)

SCORE_HELP = {
    "raw": "attention from [CLS] (query 0) to each key at the layer, mean over heads",
    "rollout": "row 0 of attention rollout over layers 0..layer",
    "flow": "attention flow from the [CLS] output node at the layer to each input",
    "grad": "row 0 of gradient-weighted rollout over layers 0..layer (needs `gradient`)",
}
OUTPUT_SUFFIXES = (".csv", ".nc", ".zarr")
_CONCAT = dict(coords="minimal", compat="override", join="exact", combine_attrs="override")


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
@seed_option
@click.option("-o", "--output", type=click.Path(dir_okay=True), default=None,
              help="Write the table as .csv, or every per-sample statistic as .nc / .zarr.")
@format_option
@quiet_option
@user_errors
def correlate(file, scores, layer_spec, method, impacts, versus, keep_special, residual, ci, alpha,
              n_boot, seed, output, fmt, quiet):
    """Correlate attention scores with leave-one-out impact, layer by layer.

    FILE is an attention dataset (schema 1) holding `attention` and `impact`
    (sample, position, method). For every score, impact method and layer it
    computes one correlation per sample over that sample's tokens, and prints
    the mean with a bootstrap confidence interval and the fraction of samples
    whose correlation is significant at --alpha.

    \b
    Example:
      attnkit correlate minilm --score raw --score rollout \\
          --method spearman --impact delete --versus raw -o correlation.csv
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
    common = dict(method=method, lengths=lengths, exclude=exclude, ci=ci,
                  n_boot=n_boot, seed=seed)
    score_da = {s: ak.attention_scores(ds, s, layers=layers, residual=residual)
                for s in scores}
    per_impact, rows = [], []
    for impact_name in chosen:
        parts = []
        target = ds["impact"].isel(method=labels.index(impact_name)).drop_vars(
            [c for c in ("method",) if c in ds["impact"].coords])
        target = xr.DataArray(target.values, dims=("sample", "position"))
        for s in scores:
            res = ak.correlate(score_da[s], target, alpha=alpha, **common)
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
                if versus is not None:
                    row[f"vs_{versus}"] = float(res["mean_difference"][j])
                    row["vs_ci_low"] = float(res["difference_ci_low"][j])
                    row["vs_ci_high"] = float(res["difference_ci_high"][j])
                rows.append(row)
        per_impact.append(xr.concat(parts, dim="score", **_CONCAT).expand_dims(
            impact=[impact_name]))
    result = xr.concat(per_impact, dim="impact", **_CONCAT)
    result.attrs.update({"source_file": os.path.basename(str(file)), "exclude_special":
                         int(exclude is not None), "residual": float(residual),
                         "model": str(ds.attrs.get("model", ""))})
    if path is not None:
        _write(result, rows, path)
    if quiet:
        return
    if fmt == "table":
        click.echo(f"{CORRELATION_NAMES[method]} between attention scores and leave-one-out impact, per "
                   f"sample over its tokens{' except [CLS]/[SEP]' if exclude else ''}; mean over "
                   f"{ds.sizes['sample']} samples with {ci:.0%} bootstrap CI (n_boot {n_boot}, "
                   f"seed {seed}); significant = fraction of samples with p < {alpha:g}")
    emit(rows, fmt)
    if path is not None and fmt == "table":
        click.echo(f"wrote {path}")
