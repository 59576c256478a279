"""``attnkit info``: what a saved attention dataset holds, and whether it is valid."""

from __future__ import annotations

import json

import click
import numpy as np

from ._common import file_argument, format_option, user_errors


def _describe(path) -> dict:
    import attnkit as ak

    from attnkit.data import read_error

    ds = ak.open_dataset(path, chunks={"sample": 1})  # lazy where dask is installed
    try:
        ak.validate(ds)  # reads every chunk: a corrupt one fails here, not at open
        problems = []
    except ValueError as exc:
        if not str(exc).startswith("invalid attnkit dataset"):
            ds.close()
            raise read_error(path, exc) from exc
        # the lines after validate's header, one per problem, without their "- " bullet
        problems = [line[2:] if line.startswith("- ") else line
                    for line in str(exc).splitlines()[1:] if line.strip()]
    except Exception as exc:  # e.g. a chunk that fails to decompress
        ds.close()
        raise read_error(path, exc) from exc
    lengths = ds["length"].values if "length" in ds else None
    info = {
        "file": str(path),
        "dims": {name: int(size) for name, size in ds.sizes.items()},
        "variables": {
            name: {"dims": list(var.dims), "dtype": str(var.dtype),
                   "megabytes": round(var.size * var.dtype.itemsize / 1e6, 3)}
            for name, var in ds.variables.items() if name not in ds.dims
        },
        "attrs": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ds.attrs.items()},
        "valid": not problems,
        "problems": problems,
    }
    if lengths is not None and lengths.size:
        info["lengths"] = {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
                           "max": int(lengths.max())}
    if "token" in ds.variables and ds.sizes.get("sample", 0):
        first = ds["token"].values[0]
        info["first_sample"] = " ".join(str(t) for t in first if t)
    ds.close()
    return info


@click.command()
@file_argument
@format_option(choices=("table", "json"), help="How to print the summary.")
@user_errors
def info(file, fmt):
    """Print dims, sizes, provenance and a validation summary of FILE.

    Exit code 0 when the dataset is valid, 1 when it has schema problems
    (listed), 2 when it cannot be read.

    \b
    Example:
      attnkit info minilm
    """
    summary = _describe(file)
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(f"{summary['file']}")
        click.echo("dims: " + ", ".join(f"{k}={v}" for k, v in summary["dims"].items()))
        if "lengths" in summary:
            lens = summary["lengths"]
            click.echo(f"lengths: min {lens['min']}, mean {lens['mean']}, max {lens['max']}")
        click.echo("variables:")
        width = max(len(n) for n in summary["variables"]) if summary["variables"] else 0
        for name, var in summary["variables"].items():
            click.echo(f"  {name.ljust(width)}  ({', '.join(var['dims'])})  {var['dtype']}  "
                       f"{var['megabytes']:.3f} MB")
        click.echo("attrs:")
        for key, value in summary["attrs"].items():
            click.echo(f"  {key}: {value}")
        if "first_sample" in summary:
            click.echo(f"first sample: {summary['first_sample']}")
        if summary["valid"]:
            click.echo("validation: OK (schema 1)")
        else:
            click.echo(f"validation: {len(summary['problems'])} problem(s)")
            for line in summary["problems"]:
                click.echo(f"  {line}")
    if not summary["valid"]:
        raise SystemExit(1)
