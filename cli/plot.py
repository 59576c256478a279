"""``attnkit plot``: one figure of a dataset, a correlation table or benchmark results."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (UserError, check_output_path, file_argument, quiet_option, residual_option,
                      user_errors)

DATASET_KINDS = ("heatmap", "grid", "rollout", "flow", "cls", "patch")
STATS_KINDS = ("stats", "special")
RESULT_KINDS = ("correlation", "throughput", "memory", "cost")
KINDS = DATASET_KINDS + STATS_KINDS + RESULT_KINDS
FORMATS = (".png", ".pdf", ".svg")


def _stats_of(file):
    """Head statistics: read from a file of `attnkit stats -o`, else computed from the dataset."""
    import xarray as xr

    import attnkit as ak
    from attnkit.data import read_error
    from attnkit.data.importers import ATTENTION_FILE_SUFFIXES

    path = Path(file)
    if not path.is_dir() and path.suffix.lower() != ".zarr":
        try:
            with xr.open_dataset(path, engine="h5netcdf") as raw:
                if "entropy" in raw.variables:
                    return raw.load()
        except Exception as exc:  # an unreadable file: say so in one line
            if path.suffix.lower() in ATTENTION_FILE_SUFFIXES:  # `attnkit import` reads it
                raise UserError(str(read_error(path, exc))) from exc
            raise UserError(f"{file}: expected a netCDF attention dataset or head statistics, "
                            f"got an unreadable file ({type(exc).__name__}). Fix: check the "
                            f"path, or write one with ak.save_dataset") from exc
    return ak.head_stats(ak.open_dataset(path))


@click.command()
@file_argument
@click.option("--kind", type=click.Choice(KINDS), default="heatmap", show_default=True,
              help="heatmap: one head; grid: every layer and head; rollout / flow: the "
                   "matrix; cls: what feeds [CLS]; patch: [CLS] rollout on the image-patch "
                   "grid; stats: entropy and distance per head; special: attention to "
                   "[CLS]/[SEP]/punctuation; correlation: FILE is a table of `attnkit "
                   "correlate`; throughput / memory / cost: FILE is a results .json or folder.")
@click.option("--sample", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which sample (counted from 0).")
@click.option("--layer", type=int, default=0, show_default=True,
              help="Layer for --kind heatmap (-1 = the last).")
@click.option("--head", type=int, default=0, show_default=True,
              help="Head for --kind heatmap (-1 = the last).")
@residual_option
@click.option("--source", type=click.Choice(["rollout", "flow", "raw"]), default="rollout",
              show_default=True, help="For --kind cls / patch: which [CLS] row.")
@click.option("--metric", type=click.Choice(["gflops", "time"]), default="gflops",
              show_default=True, help="For --kind throughput: GFLOP/s or seconds per call.")
@click.option("--title", default=None, help="Replace the figure's title.")
@click.option("--dpi", type=click.IntRange(20, 1200), default=150, show_default=True,
              help="Resolution of PNG output.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Where to write the figure: .png, .pdf or .svg (by suffix).")
@quiet_option
@user_errors
def plot(file, kind, sample, layer, head, residual, source, metric, title, dpi, output, quiet):
    """Draw one figure and write it as PNG, PDF or SVG.

    FILE is an attention dataset (.nc/.zarr) for the attention kinds, a
    dataset or a head-statistics file of `attnkit stats -o` for stats and
    special, a correlation table (.csv/.json/.nc of `attnkit correlate -o`)
    for correlation, and a results .json file or folder (paper/results) for
    throughput, memory and cost.

    \b
    Examples:
      attnkit plot minilm --kind heatmap --layer 2 --head 3 -o head.png
      attnkit plot minilm --kind rollout --sample 4 -o rollout.pdf
      attnkit plot paper/results --kind throughput -o throughput.svg
    """
    from attnkit import plot as akplot

    path = check_output_path(output, FORMATS, "figure.png")
    if kind in DATASET_KINDS:
        import attnkit as ak

        ds = ak.open_dataset(file)
        fig = akplot.plot_dataset(ds, kind=kind, sample=sample, layer=layer, head=head,
                                  residual=residual, source=source, title=title)
    elif kind in STATS_KINDS:
        stats = _stats_of(file)
        fig = (akplot.head_stats_plot(stats) if kind == "stats"
               else akplot.special_token_plot(stats))
        if title:
            fig.suptitle(title)
    elif kind == "correlation":
        fig = akplot.correlation_plot(file, title=title)
    else:
        results = akplot.load_results(file)
        if kind == "throughput":
            fig = akplot.throughput_plot(results, metric=metric)
        elif kind == "memory":
            fig = akplot.memory_plot(results)
        else:
            fig = akplot.cost_plot(results)
        if title:
            fig.suptitle(title)
    akplot.save_figure(fig, path, dpi=dpi)
    if not quiet:
        click.echo(f"wrote {path}")
