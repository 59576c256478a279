"""``attnkit paper``: regenerate the paper's figures and tables."""

from __future__ import annotations

import time

import click

from ._common import quiet_option, step_lines, user_errors


@click.command()
@click.option("--root", type=click.Path(file_okay=False, exists=True), default=".",
              show_default=True, help="Repository root (holds paper/ and datasets/).")
@click.option("--quick", is_flag=True, help="A few samples only (a smoke run; not the paper's numbers).")
@click.option("--no-evaluation", is_flag=True,
              help="Skip attnkit evaluate on the shipped text and images (about 15 minutes on "
                   "two cores); its stored results and figures stay as they are.")
@quiet_option
@user_errors
def paper(root, quick, no_evaluation, quiet):
    """Regenerate every figure and table of paper/paper.md.

    Runs the main analysis on the shipped MiniLM dataset, `attnkit evaluate`
    on the shipped sentences and images, and draws the
    performance figures from the stored benchmark results (paper/results/*.json).
    Deterministic (fixed seeds).

    \b
    Example:
      attnkit paper            # same as: make paper
    """
    from attnkit._paper import build_paper

    start = time.perf_counter()
    written = build_paper(root, quick=quick, evaluation=not no_evaluation,
                          progress=step_lines(quiet))
    if not quiet:
        for path in written:
            click.echo(f"wrote {path}")
        click.echo(f"{len(written)} files in {time.perf_counter() - start:.1f} s")
