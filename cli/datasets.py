"""``attnkit datasets``: list the shipped datasets and where this installation keeps them."""

from __future__ import annotations

import click

from ._common import emit, format_option


@click.command()
@click.option("--path", "name", metavar="NAME", default=None,
              help="Print only the file of the shipped dataset NAME (for scripts).")
@format_option
def datasets(name, fmt):
    """List the shipped datasets: name, kind, size, file and what each holds.

    Every command that takes a dataset also takes one of these names, from any
    folder (in a checkout and in an installed wheel alike).

    \b
    Example:
      attnkit datasets
      attnkit info minilm
      attnkit view minilm -o view.html --sample 3
    """
    from attnkit.data import shipped

    if name is not None:
        try:
            click.echo(shipped.path(name))
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        return
    rows = shipped.describe()
    if fmt == "table":
        for row in rows:
            click.echo(f"{row['name']:<18} {row['kind']:<8} {row['size_mb']:>6.1f} MB  "
                       f"{row['description']}\n{'':<18} {row['file']}")
        click.echo(f"\ndefault: {shipped.DEFAULT} (attnkit analyze with no argument)")
        return
    emit(rows, fmt)
