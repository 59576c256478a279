"""Helpers shared by the commands: user errors, shared options, output formats, safe writes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click
import numpy as np


class UserError(click.ClickException):
    """A one-line error for bad arguments or bad files; exit code 2, no traceback."""

    exit_code = 2


def user_errors(fn):
    """Turn attnkit's errors (ValueError, TypeError, MemoryError, BackendUnavailableError...)
    into one-line UserErrors."""
    import functools

    from attnkit.errors import AttnkitError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AttnkitError, ValueError, TypeError, MemoryError, OSError, KeyError) as exc:
            raise UserError(str(exc).strip().splitlines()[0] if str(exc) else repr(exc)) from exc

    return wrapper


# ----------------------------------------------------------------------------- shared options
# Each is a decorator; those with a parameter are also factories:
# ``@format_option`` or ``@format_option(help="How to print the tables.")``.
def _option(fn, option):
    return option(fn) if fn is not None else option


class DatasetPath(click.ParamType):
    """An existing file, or the name of a shipped dataset (``minilm``, ``planted``...),
    which becomes that dataset's file wherever attnkit is installed."""

    name = "path"

    def convert(self, value, param, ctx):
        from attnkit.data.shipped import resolve

        try:
            return str(resolve(value))
        except FileNotFoundError as exc:
            self.fail(str(exc), param, ctx)


def file_argument(fn):
    """FILE: an existing dataset (or result) file, or a shipped dataset's name."""
    return click.argument("file", type=DatasetPath())(fn)


def in_place_target(dataset, output) -> Path:
    """Where a command that adds variables writes: ``--output``, else DATASET itself.

    A shipped dataset is never rewritten in place (in an installed wheel it is
    package data): without ``--output`` that is a UserError naming the fix.
    """
    from attnkit.data.shipped import is_shipped

    if output:
        return Path(output)
    if is_shipped(dataset):
        raise UserError(f"{dataset}: expected a dataset of your own to rewrite in place, got a "
                        f"shipped dataset. Fix: pass -o OUT.nc to write the result elsewhere")
    return Path(dataset)


def dataset_argument(fn):
    """DATASET: an existing attention dataset, or a shipped dataset's name."""
    return click.argument("dataset", type=DatasetPath())(fn)


def format_option(fn=None, *, choices=("table", "csv", "json"), help="How to print results."):
    """--format: how to print results (``fmt``), table by default."""
    return _option(fn, click.option(
        "--format", "fmt", type=click.Choice(list(choices)), default="table",
        show_default=True, help=help,
    ))


def quiet_option(fn=None, *, help="Print nothing but errors."):
    """-q/--quiet."""
    return _option(fn, click.option("-q", "--quiet", is_flag=True, help=help))


#: -q/--quiet of the commands that show a progress bar (compute, ablate)
progress_quiet_option = quiet_option(help="No progress bar and no summary.")


def residual_option(fn=None, *, help="Residual weight of rollout and flow."):
    """--residual: the identity's weight in rollout and flow, in [0, 1], 0.5 by default."""
    return _option(fn, click.option("--residual", type=click.FloatRange(0, 1), default=0.5,
                                    show_default=True, help=help))


def seed_option(fn=None, *, help="Bootstrap seed."):
    """--seed: a non-negative int seed, 0 by default."""
    return _option(fn, click.option("--seed", type=click.IntRange(min=0), default=0,
                                    show_default=True, help=help))


def step_lines(quiet: bool):
    """The ``progress`` argument of the batch jobs (analyze, evaluate, paper): a
    callable that prints each step's line on stderr, or None with --quiet, which
    also keeps their progress bars off."""
    if quiet:
        return None
    return lambda line: click.echo(line, err=True)


def check_output_path(output, suffixes: tuple[str, ...], example: str) -> Path | None:
    """``--output`` as a Path: it must end in one of ``suffixes`` and its folder exist.

    ``example`` is the file name the fix suggests. None stays None.
    """
    if output is None:
        return None
    path = Path(output)
    if path.suffix.lower() not in suffixes:
        listed = ", ".join(suffixes[:-1]) + " or " + suffixes[-1]
        raise UserError(f"--output: expected a path ending in {listed}, got {output!r}. "
                        f"Fix: e.g. -o {example}")
    if not path.parent.exists():
        raise UserError(f"--output: expected an existing folder {path.parent}, got none. "
                        f"Fix: mkdir -p {path.parent}")
    return path


def merge_methods(ds, new, dim: str, *, replace: bool, same: dict[str, str]):
    """``ds`` with the variable ``new`` (named, with a ``dim`` of methods) added.

    Methods already in ``ds`` are replaced, the others kept. Each attr named
    in ``same`` must agree between the old and the new variable (the value is
    the fix to suggest); ``replace`` drops the old variable first.
    """
    import xarray as xr

    name = new.name
    if name not in ds.variables or replace:
        return ds.drop_vars([name, dim], errors="ignore").assign({name: new})
    old = ds[name]
    for attr, fix in same.items():
        if old.attrs.get(attr) != new.attrs.get(attr):
            raise UserError(f"{name}: expected the dataset's {attr} ({old.attrs.get(attr)!r}), got "
                            f"{new.attrs.get(attr)!r}. Fix: {fix}.")
    added = set(new[dim].values.tolist())
    keep = [i for i, m in enumerate(old[dim].values.tolist()) if m not in added]
    combined = xr.concat([old.isel({dim: keep}), new], dim=dim) if keep else new
    combined.attrs = {**old.attrs, **new.attrs}
    return ds.drop_vars([name, dim]).assign({name: combined})


# ----------------------------------------------------------------------------- output


def emit(rows: list[dict], fmt: str) -> None:
    """Print a list of flat dicts as an aligned table, CSV or JSON."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=float))
        return
    if not rows:
        return
    cols = list(rows[0])

    def cell(x):
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    if fmt == "csv":
        click.echo(",".join(cols))
        for r in rows:
            click.echo(",".join(cell(r[c]) for c in cols))
        return
    width = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(cell(r[c]).rjust(width[c]) for c in cols))


@contextlib.contextmanager
def open_atomic(path, mode: str = "w", **kwargs):
    """Open ``path`` for writing through attnkit's atomic writer (:func:`attnkit.data.atomic_file`).

    The file object writes a temporary file next to ``path``, renamed onto it
    when the block ends without an error: never a partial file, and the mode a
    newly created file would get. ``kwargs`` go to :func:`open`.
    """
    from attnkit.data import atomic_file

    with atomic_file(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz next to ``path`` and rename it into place (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def parse_target(text):
    """``--target``: None, an output position ("0") or a named read-out ("mean", "patches")."""
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    from attnkit.readout import READOUTS

    if text not in READOUTS:
        raise UserError(f"--target: expected an output position (e.g. 0) or one of {READOUTS}, "
                        f"got {text!r}. Fix: e.g. --target mean")
    return text
