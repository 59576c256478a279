"""``attnkit equivariance``: run the built-in permutation equivariance checks."""

from __future__ import annotations

import json

import click

from ._common import emit, format_option, seed_option, user_errors


@click.command()
@click.option("--backend", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu",
              show_default=True, help="Backend of the attention kernels under test.")
@click.option("--quick", is_flag=True,
              help="Smaller inputs, at most 2 trials, optional controls left out.")
@click.option("--trials", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random permutations per check.")
@seed_option(help="Seed of the permutations and of the random inputs.")
@click.option("--check", "select", multiple=True, metavar="TEXT",
              help="Run only checks whose name starts with TEXT (repeatable; wildcards "
                   "allowed), e.g. 'positional/' or '*causal*'.")
@format_option
@user_errors
def equivariance(backend, quick, trials, seed, select, fmt):
    """Check which attention functions ignore the order of their inputs.

    Permutes the queries (or key/value pairs) of attnkit's kernels, variants,
    positional encodings and the built-in MiniLM with seeded random
    permutations and compares the outputs in float64. Checks marked "not
    equivariant" / "not invariant" (causal and local masks, positional
    encodings, MiniLM with its position embeddings) demonstrate a violation:
    they succeed by failing, and max_abs_err says by how much. Model checks
    need the MiniLM weights package and show as unavailable without it.

    Exits with 0 when every check meets its expectation, 1 otherwise.

    \b
    Example:
      attnkit equivariance --quick
      attnkit equivariance --check positional/ --format csv
    """
    from attnkit.equivariance import builtin_checks

    checks = builtin_checks(backend=backend, quick=quick, trials=trials, seed=seed,
                            select=list(select) or None)
    if fmt == "json":
        click.echo(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        rows = [{k: "-" if v is None else v for k, v in c.to_row().items()} for c in checks]
        emit(rows, fmt)
    unexpected = [c for c in checks if c.status == "unexpected"]
    if fmt == "table":
        unavailable = [c for c in checks if c.status == "unavailable"]
        click.echo(
            f"{len(checks)} checks on backend {backend!r}: "
            f"{len(checks) - len(unexpected) - len(unavailable)} met their expectation, "
            f"{len(unexpected)} did not, {len(unavailable)} unavailable."
        )
        for c in unavailable:
            click.echo(f"  {c.name}: unavailable: {c.unavailable.splitlines()[0]}")
        for c in unexpected:
            click.echo(f"UNEXPECTED {c.name} (expected {c.expectation}):\n{c.report}")
    if unexpected:
        raise SystemExit(1)
