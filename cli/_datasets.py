"""Shared plumbing of the dataset commands: open, compute with progress, write.

The commands hold no analysis logic: they open a dataset, run one public
attnkit function over it (in sample blocks with a progress bar, or lazily on
a dask cluster), and write the result as netCDF, zarr or CSV.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click
import numpy as np

from ._common import UserError, check_output_path, open_atomic

OUTPUT_SUFFIXES = (".nc", ".zarr", ".csv")


def cluster_options(fn):
    """--workers / --scheduler / --chunk options for commands that may run on dask."""
    fn = click.option("--chunk", type=click.IntRange(min=1), default=None, metavar="N",
                      help="Samples per block (default: about 50 blocks in all).")(fn)
    fn = click.option("--scheduler", default=None, metavar="ADDRESS",
                      help="Run on a dask.distributed scheduler, e.g. tcp://host:8786.")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
                      help="Run on a local dask cluster of N worker processes (1 thread each).")(fn)
    return fn


def output_option(fn):
    return click.option(
        "-o", "--output", type=click.Path(), default=None,
        help="Write the result: .nc (netCDF4), .zarr or .csv.")(fn)


def check_output(output) -> Path | None:
    """``-o`` of the dataset commands: .nc, .zarr or .csv in an existing folder, or None."""
    return check_output_path(output, OUTPUT_SUFFIXES, "results.nc")


@contextlib.contextmanager
def dask_client(workers, scheduler, quiet):
    """A dask.distributed client for --workers / --scheduler, or None."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise UserError("--workers and --scheduler: expected one of them, got both. "
                        "Fix: drop one")
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise UserError("--workers/--scheduler need dask.distributed, which is not installed. "
                        "Fix: pip install 'attnkit[dask]'") from exc
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise UserError(f"--scheduler: could not connect to {scheduler} ({exc}). "
                            "Fix: check the address, e.g. tcp://host:8786") from exc
        with client:
            yield client
        return
    # One Numba thread per worker process, so N workers use N cores.
    previous = os.environ.get("NUMBA_NUM_THREADS")
    os.environ["NUMBA_NUM_THREADS"] = "1"
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=40) as cluster, \
                Client(cluster) as client:
            if not quiet:
                click.echo(f"local dask cluster: {workers} workers x 1 thread", err=True)
            yield client
    finally:
        if previous is None:
            os.environ.pop("NUMBA_NUM_THREADS", None)
        else:
            os.environ["NUMBA_NUM_THREADS"] = previous


def open_input(path, *, lazy: bool, chunk: int | None):
    """Open an attention dataset lazily, chunked by sample (when dask is installed).

    Nothing big is read here: :func:`run_blocks` loads one block of samples at
    a time (or the cluster reads the chunks), so memory stays bounded by a
    block whatever the size of the store. ``lazy`` asks for ``chunk`` samples
    per chunk (the cluster's tasks); otherwise chunks follow the storage (one
    sample). The small ``length`` and ``token`` variables are loaded at once.
    """
    import attnkit as ak

    ds = ak.open_dataset(path, chunks={"sample": (chunk or 1) if lazy else 1})
    for name in ("length", "token"):
        if name in ds.variables:
            ds.variables[name].load()
    return ds


def block_size(n_samples: int, chunk: int | None) -> int:
    return chunk or max(1, -(-n_samples // 50))


@contextlib.contextmanager
def _read_errors(source):
    """Lazily opened chunks are first read while computing: a chunk that cannot be
    read or decompressed becomes a one-line error naming the file."""
    try:
        yield
    except (ValueError, TypeError, MemoryError, KeyError, OSError, click.ClickException):
        raise  # attnkit's own messages; user_errors prints them
    except Exception as exc:
        if source is not None:
            from attnkit.data import read_error

            raise read_error(source, exc) from exc
        raise UserError(f"input: expected readable chunks, got {type(exc).__name__} while "
                        f"computing ({exc}). Fix: check the file with `attnkit info FILE`; it "
                        f"may be corrupt or truncated") from exc


def run_blocks(fn, ds, *, client, chunk, quiet, label, source=None):
    """``fn(ds)`` computed block by block over samples with a progress bar.

    Each block is loaded, computed and kept only as its (small) result, so a
    store larger than memory streams through. With a dask client the dataset
    is already chunked; the whole lazy result is computed on the cluster
    instead. ``source`` (the input path) names the file in read errors.
    """
    with _read_errors(source):
        return _run_blocks(fn, ds, client=client, chunk=chunk, quiet=quiet, label=label)


def _run_blocks(fn, ds, *, client, chunk, quiet, label):
    import xarray as xr

    if client is not None:
        result = fn(ds)
        if not quiet:
            click.echo(f"{label}: computing {ds.sizes['sample']} samples on the cluster", err=True)
        return result.compute()
    n = ds.sizes["sample"]
    size = block_size(n, chunk)
    parts = []
    show = not quiet and n > size
    # A temporary sample coordinate makes errors name a sample's number in the
    # file (attnkit reads it), not its index inside the block.
    numbered = "sample" not in ds.coords
    source = ds.assign_coords(sample=np.arange(n)) if numbered else ds
    with click.progressbar(length=n, label=label, file=sys.stderr, hidden=not show) as bar:
        for start in range(0, n, size):
            part = fn(source.isel(sample=slice(start, start + size)).load())
            parts.append(part.drop_vars("sample", errors="ignore") if numbered else part)
            bar.update(min(size, n - start))
    return xr.concat(parts, dim="sample") if len(parts) > 1 else parts[0]


def write_result(result, path: Path, *, csv_frame=None) -> None:
    """Write a Dataset atomically as netCDF/zarr, or ``csv_frame()`` as CSV."""
    from attnkit.data import write_atomic

    if path.suffix.lower() != ".csv":
        write_atomic(result, path)
        return
    frame = csv_frame()
    with open_atomic(path, newline="") as fh:
        frame.to_csv(fh, index=False, float_format="%.6g")


def token_label(ds, sample: int, position: int) -> str:
    if "token" not in ds.coords and "token" not in ds:
        return str(position)
    tok = ds["token"].values[sample, position]
    return f"{position}:{tok}" if tok else str(position)
