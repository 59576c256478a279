"""``attnkit plot``: one figure of a dataset, a correlation table or benchmark results."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import (UserError, check_output_path, file_argument, quiet_option, residual_option,
                      user_errors)

DATASET_KINDS = ("heatmap", "grid", "rollout", "flow", "cls", "patch")
IMAGE_KINDS = ("panel", "sinks")
STATS_KINDS = ("stats", "special")
RESULT_KINDS = ("correlation", "throughput", "memory", "cost")
KINDS = DATASET_KINDS + IMAGE_KINDS + STATS_KINDS + RESULT_KINDS
#: The map --kind patch draws by default (a name of ak.patch_maps).
DEFAULT_MAP = "rollout"
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


def _patch_figure(ds, sample, map_name, source, residual, title):
    """--kind patch: a map of ak.patch_maps over the stored image (or the old [CLS] sources)."""
    import numpy as np

    import attnkit as ak
    from attnkit import plot as akplot
    from attnkit.patches import dataset_grid
    from attnkit.plot.common import check_index
    from attnkit.plot.patches import map_title

    grid = dataset_grid(ds)  # a clear error for datasets without a grid
    check_index("sample", sample, ds.sizes["sample"])
    image = (np.asarray(ds["image"].isel(sample=sample).transpose("y", "x", ...).values)
             if "image" in ds.variables else None)
    if source != "rollout":  # the [CLS] row of attention flow, or of the last layer
        if map_name is not None:
            raise UserError(f"--map {map_name} and --source {source}: expected one of them. "
                            f"Fix: drop --source (maps: ak.patch_maps) or drop --map")
        return akplot.plot_dataset(ds, kind="patch", sample=sample, residual=residual,
                                   source=source, title=title, image=image)
    name = map_name if map_name is not None else DEFAULT_MAP
    maps = ak.patch_maps(ds, sample=sample, residual=residual)
    names = [str(m) for m in maps["map"].values]
    if name not in names:
        raise UserError(f"--map: expected one of this dataset's maps ({', '.join(names)}), got "
                        f"{name!r}. Fix: pick one of those; attributions and impacts appear "
                        f"after `attnkit attribute` / `attnkit ablate`")
    chosen = maps.sel(map=name)
    return akplot.patch_overlay(
        chosen.values, grid, image=image, label=str(chosen["description"].values),
        title=title or f"{map_title(name, ds.sizes['layer'])} (sample {sample})")


@click.command()
@file_argument
@click.option("--kind", type=click.Choice(KINDS), default="heatmap", show_default=True,
              help="heatmap: one head; grid: every layer and head; rollout / flow: the "
                   "matrix; cls: what feeds [CLS]; patch: one map (--map) over the image, on "
                   "the patch grid; panel: every map of one image; sinks: the attention-sink "
                   "artefact (image datasets); stats: entropy and distance per head; special: "
                   "attention to "
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
              show_default=True, help="For --kind cls: which [CLS] row (also --kind patch: flow or "
                   "raw instead of a --map).")
@click.option("--map", "map_name", default=None, metavar="NAME",
              help="For --kind patch: which map of ak.patch_maps, e.g. rollout, rollout_from_1, "
                   "cls_head_0, grad_rollout, attribution:gradcam, impact:mask, saliency "
                   "[default: rollout].")
@click.option("--metric", type=click.Choice(["gflops", "time"]), default="gflops",
              show_default=True, help="For --kind throughput: GFLOP/s or seconds per call.")
@click.option("--title", default=None, help="Replace the figure's title.")
@click.option("--dpi", type=click.IntRange(20, 1200), default=150, show_default=True,
              help="Resolution of PNG output.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Where to write the figure: .png, .pdf or .svg (by suffix).")
@quiet_option
@user_errors
def plot(file, kind, sample, layer, head, residual, source, map_name, metric, title, dpi, output,
         quiet):
    """Draw one figure and write it as PNG, PDF or SVG.

    FILE is an attention dataset (.nc/.zarr) for the attention kinds (an
    image dataset, with a `grid` attr, for patch, panel and sinks), a
    dataset or a head-statistics file of `attnkit stats -o` for stats and
    special, a correlation table (.csv/.json/.nc of `attnkit correlate -o`)
    for correlation, and a results .json file or folder (paper/results) for
    throughput, memory and cost.

    \b
    Examples:
      attnkit plot minilm --kind heatmap --layer 2 --head 3 -o head.png
      attnkit plot minilm --kind rollout --sample 4 -o rollout.pdf
      attnkit plot vision.nc --kind patch --map rollout_from_1 -o rollout1.png
      attnkit plot vision.nc --kind panel --sample 2 -o panel.png
      attnkit plot paper/results --kind throughput -o throughput.svg
    """
    from attnkit import plot as akplot

    path = check_output_path(output, FORMATS, "figure.png")
    if map_name is not None and kind != "patch":
        raise UserError(f"--map: expected only with --kind patch, got --kind {kind}. Fix: add "
                        f"--kind patch, or drop --map")
    if kind in DATASET_KINDS + IMAGE_KINDS:
        import attnkit as ak

        ds = ak.open_dataset(file)
        if kind == "patch":
            fig = _patch_figure(ds, sample, map_name, source, residual, title)
        elif kind == "panel":
            fig = akplot.image_panel(ds, sample, residual=residual, title=title)
        elif kind == "sinks":
            fig = akplot.sink_figure(ds, sample, residual=residual, title=title)
        else:
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
