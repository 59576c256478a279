"""Helpers shared by the commands: user errors, output formats, safe writes."""

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
    """Turn attnkit's ValueError/TypeError/MemoryError into one-line UserErrors."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, MemoryError, OSError, KeyError) as exc:
            raise UserError(str(exc).strip().splitlines()[0] if str(exc) else repr(exc)) from exc

    return wrapper


def format_option(fn):
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
        show_default=True, help="How to print results.",
    )(fn)


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
