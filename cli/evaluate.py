"""``attnkit evaluate``: faithfulness, perturbation curves and the randomisation check."""

from __future__ import annotations

import click

from ._common import DatasetPath, emit, format_option, quiet_option, step_lines, user_errors


def _print_tables(tables: dict, fmt: str) -> None:
    if fmt == "json":
        import json

        click.echo(json.dumps(tables, indent=2, default=float))
        return
    for name, title in (("faithfulness", "faithfulness (AOPC, mean [95% CI])"),
                        ("curves", "perturbation curves (area under the mean similarity)"),
                        ("randomization", "randomisation check (Spearman with the trained "
                                          "model's impact; similarity of the two scores)")):
        rows = tables.get(name) or []
        if rows:
            click.echo(f"\n{title}")
            emit(rows, fmt)


@click.command()
@click.argument("file", type=DatasetPath(), default=None, required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False), default="out/evaluation",
              show_default=True, help="Folder for evaluation.nc, evaluation.md and the figures.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N samples (default: all).")
@click.option("--quick", is_flag=True, help="Smoke run on the first few samples.")
@click.option("--no-randomized", is_flag=True, help="Skip the randomisation sanity check.")
@click.option("--no-figures", is_flag=True, help="Skip the figures.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Sequences or images per forward pass.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Bootstrap seed and the randomised model's seed.")
@format_option(help="How to print the tables.")
@quiet_option
@user_errors
def evaluate(file, output, samples, quick, no_randomized, no_figures, batch_size, seed, fmt,
             quiet):
    """Is each score faithful to the model? AOPC, perturbation curves, randomisation.

    FILE is a dataset made by a built-in model (default: the shipped MiniLM
    dataset; `vision` for the shipped images), with leave-one-out `impact`.
    Every score is read at the last layer and the model's read-out. Writes
    evaluation.nc, evaluation.md and figures into the output folder. On two
    cores the shipped MiniLM dataset (270 sentences) takes about 85 s (140 s
    the first time, while Numba compiles) and the shipped images about 130 s
    (docs/faithfulness.md); --samples N or --quick make it shorter.

    \b
    Example:
      attnkit evaluate --samples 40           # the first 40 shipped sentences
      attnkit evaluate vision -o out/vision   # the shipped images
    """
    from attnkit.data import shipped
    from attnkit.evaluation import evaluate as run_evaluation

    if file is None:
        file = str(shipped.path(shipped.DEFAULT))

    result = run_evaluation(file, output, samples=samples, quick=quick,
                            randomized=not no_randomized, figures=not no_figures,
                            batch_size=batch_size, seed=seed,
                            progress=step_lines(quiet))
    if quiet:
        return
    _print_tables(result.tables, fmt)
    if fmt == "table":
        total = sum(result.seconds.values())
        click.echo(f"\nwrote {len(result.files)} files to {output} in {total:.1f} s")
