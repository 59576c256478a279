"""``attnkit stats | rollout | flow``: interpretation of a saved attention dataset."""

from __future__ import annotations

import click
import numpy as np

from ._common import (UserError, emit, file_argument, format_option, quiet_option,
                      residual_option, user_errors)
from ._datasets import (check_output, cluster_options, dask_client, open_input, output_option,
                        run_blocks, token_label, write_result)

def _carry_context(result, ds):
    """A Dataset of ``result`` with the input's lengths, tokens and provenance attached."""
    import xarray as xr

    if isinstance(result, xr.DataArray):
        result = result.to_dataset()
    if "length" in ds:
        result["length"] = ds["length"].compute()
    if "token" in ds.variables:
        result = result.assign_coords(token=ds["token"].compute())
    result.attrs.update({k: v for k, v in ds.attrs.items() if k in ("model", "source")})
    return result


# ----------------------------------------------------------------------------- stats
STAT_COLUMNS = ("entropy", "distance", "self_mass", "prev_mass", "next_mass", "cls_mass",
                "sep_mass", "punct_mass")


@click.command()
@file_argument
@output_option
@cluster_options
@format_option
@quiet_option
@user_errors
def stats(file, output, workers, scheduler, chunk, fmt, quiet):
    """Per-head statistics: entropy, distance, positional and special-token mass.

    Prints one row per (layer, head), averaged over samples, and writes the
    per-sample statistics with -o (.nc/.zarr keep js_divergence between heads;
    .csv holds one row per sample, layer and head).

    \b
    Example:
      attnkit stats minilm -o out/stats.nc
    """
    import attnkit as ak

    path = check_output(output)
    with dask_client(workers, scheduler, quiet) as client:
        ds = open_input(file, lazy=client is not None, chunk=chunk)
        result = run_blocks(ak.head_stats, ds, client=client, chunk=chunk, quiet=quiet,
                            label="head stats", source=file)
    result = _carry_context(result, ds)
    if path is not None:
        write_result(result, path, csv_frame=lambda: result.drop_vars(
            ["js_divergence", "length", "token"], errors="ignore").to_dataframe().reset_index())
    if quiet:
        return
    mean = result.drop_vars(["length"], errors="ignore")
    mean = mean.mean("sample") if "sample" in mean.dims else mean
    columns = [c for c in STAT_COLUMNS if not np.isnan(mean[c].values).all()]
    rows = []
    for layer in range(mean.sizes["layer"]):
        for head in range(mean.sizes["head"]):
            row = {"layer": layer, "head": head}
            row.update({c: float(mean[c].values[layer, head]) for c in columns})
            rows.append(row)
    emit(rows, fmt)
    if path is not None and fmt == "table":
        click.echo(f"wrote {path}")


# ----------------------------------------------------------------------------- rollout / flow
def _row_summary(result, ds, query: int, top: int, limit: int) -> list[dict]:
    """For each sample: the `top` input positions feeding output position `query`."""
    rows = []
    lengths = ds["length"].values if "length" in ds else [result.sizes["key"]] * result.sizes["sample"]
    for s in range(min(result.sizes["sample"], limit)):
        length = int(lengths[s])
        if query >= length:
            continue
        weights = result.values[s, query, :length]
        order = np.argsort(-weights, kind="stable")[:top]
        row = {"sample": s, "length": length}
        for rank, j in enumerate(order, 1):
            row[f"top{rank}"] = f"{token_label(ds, s, int(j))}={weights[j]:.3f}"
        rows.append(row)
    return rows


def _matrix_frame(result, variable: str):
    frame = result[variable].to_dataframe(name="value").reset_index()
    frame = frame[np.isfinite(frame["value"])]
    return frame[["sample", "query", "key", "value"]]


def _interpretation_command(name, compute, help_text):
    @click.command(name=name, help=help_text)
    @file_argument
    @click.option("--query", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Output position whose sources are printed (0 = [CLS]).")
    @click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
                  help="How many input positions to print per sample.")
    @click.option("--show", type=click.IntRange(min=0), default=10, show_default=True,
                  help="How many samples to print.")
    @click.option("--head-fusion", type=click.Choice(["mean", "max", "min"]), default="mean",
                  show_default=True)
    @residual_option(help="Weight of the identity (residual connection).")
    @click.option("--all-rows", is_flag=True,
                  help="Flow only: compute every output position, not just --query.")
    @output_option
    @cluster_options
    @format_option
    @quiet_option
    @user_errors
    def command(file, query, top, show, head_fusion, residual, all_rows, output, workers,
                scheduler, chunk, fmt, quiet):
        path = check_output(output)
        with dask_client(workers, scheduler, quiet) as client:
            ds = open_input(file, lazy=client is not None, chunk=chunk)
            if query >= ds.sizes["query"]:
                raise UserError(f"--query: expected a position below {ds.sizes['query']}, got "
                                f"{query}. Fix: pick a position inside the samples")
            options = dict(head_fusion=head_fusion, residual=residual)
            result = run_blocks(lambda part: compute(part, query, all_rows, **options), ds,
                                client=client, chunk=chunk, quiet=quiet, label=name, source=file)
        result = _carry_context(result.rename(name), ds)
        if path is not None:
            write_result(result, path, csv_frame=lambda: _matrix_frame(result, name))
        if quiet:
            return
        emit(_row_summary(result[name], ds, query, top, show), fmt)
        if path is not None and fmt == "table":
            click.echo(f"wrote {path}")

    return command


def _rollout(ds, query, all_rows, **options):
    import attnkit as ak

    return ak.rollout(ds, **options)


def _flow(ds, query, all_rows, **options):
    import attnkit as ak

    return ak.attention_flow(ds, sources=None if all_rows else [query], **options)


rollout = _interpretation_command("rollout", _rollout, """Attention rollout of every sample.

    Prints, per sample, the input positions that feed output position --query
    most; writes the full (sample, query, key) rollout with -o.

    \b
    Example:
      attnkit rollout minilm --query 0 -o out/rollout.nc
    """)

flow = _interpretation_command("flow", _flow, """Attention flow (exact max-flow) of every sample.

    By default only output position --query is computed (one max-flow per
    input position); --all-rows computes every output position.

    \b
    Example:
      attnkit flow minilm --query 0 -o out/flow.csv
    """)
