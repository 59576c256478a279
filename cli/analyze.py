"""``attnkit analyze``: the main job, from an attention dataset to a report folder."""

from __future__ import annotations


import click

from attnkit.constants import CORRELATION_METHODS, SCORE_KINDS

from ._common import (DatasetPath, emit, format_option, parse_target, quiet_option, step_lines,
                      user_errors)


def _print_tables(tables: dict, fmt: str) -> None:
    if fmt == "json":
        import json

        click.echo(json.dumps(tables, indent=2, default=float))
        return
    click.echo("\nhead statistics per layer (means over samples and heads)")
    emit(tables["layers"], fmt)
    if tables.get("primary"):
        click.echo(f"\nprimary contrast (pre-specified; scores read at {tables['target']})")
        emit(tables["primary"], fmt)
    if tables.get("secondary"):
        click.echo("\nevery score at the last layer (Holm-adjusted p; controls: random, "
                   "position, length)")
        emit(tables["secondary"], fmt)
    correlation = tables.get("correlation") or []
    for method in sorted({r["method"] for r in correlation}):
        for impact in sorted({r["impact"] for r in correlation}):
            rows = [r for r in correlation if r["method"] == method and r["impact"] == impact]
            layers = sorted({r["layer"] for r in rows})
            names = list(dict.fromkeys(r["score"] for r in rows))
            table = []
            for layer in layers:
                row = {"layer": layer, **{name: "" for name in names}}  # attributions: last layer
                for r in rows:
                    if r["layer"] == layer:
                        row[r["score"]] = (f"{r['statistic']:+.2f} [{r['ci_low']:+.2f},"
                                           f"{r['ci_high']:+.2f}] {r['significant_fraction']:.0%}")
                table.append(row)
            click.echo(f"\n{method} correlation with {impact} impact "
                       "(mean [95% CI] fraction significant)")
            emit(table, fmt)
    if tables.get("equivariance"):
        click.echo("\npermutation equivariance checks")
        emit(tables["equivariance"], fmt)
    if tables.get("missing"):
        click.echo("\nscores left out")
        for row in tables["missing"]:
            click.echo(f"  {row['score']}: {row['reason']}")


@click.command()
@click.argument("file", type=DatasetPath(), default=None, required=False)
@click.option("-o", "--output", type=click.Path(file_okay=False), default="out/analysis",
              show_default=True, help="Folder for analysis.nc, report.md and the figures.")
@click.option("--quick", is_flag=True, help="Smoke run on the first few samples.")
@click.option("--score", "scores", multiple=True,
              type=click.Choice(SCORE_KINDS),
              help="Scores to correlate with impact (repeatable; default all available).")
@click.option("--target", default=None, metavar="TARGET",
              help="The output the attention scores explain: an output position (0 = [CLS]), "
                   "'mean' or 'patches' (default: the dataset's readout attr, MiniLM 'mean').")
@click.option("--attribution", "attributions", multiple=True,
              help="Stored attribution methods to correlate too (repeatable; default all the "
                   "dataset holds, see attnkit attribute).")
@click.option("--method", "methods", multiple=True,
              type=click.Choice(CORRELATION_METHODS),
              help="Correlation methods (repeatable; default spearman and kendall).")
@click.option("--no-equivariance", is_flag=True, help="Skip the equivariance checks.")
@click.option("--no-figures", is_flag=True, help="Skip the figures.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@format_option(help="How to print the tables.")
@quiet_option
@user_errors
def analyze(file, output, quick, scores, target, attributions, methods, no_equivariance,
            no_figures, seed, fmt, quiet):
    """Analyse an attention dataset: statistics, rollout, flow, equivariance, correlations.

    FILE is a dataset path or a shipped dataset's name (`attnkit datasets`
    lists them); it defaults to the shipped MiniLM dataset, found from any
    folder. Prints per-layer tables and
    writes analysis.nc, report.md and PNG figures into the output folder.
    Stored attributions (attnkit attribute) are correlated with the impacts
    beside the attention scores; a score that cannot be computed is listed
    with the reason and the fix.

    \b
    Example:
      attnkit analyze                       # the shipped MiniLM dataset -> out/analysis/
      attnkit analyze my_attention.nc -o out/mine --quick
    """
    from attnkit.analysis import analyze as run_analysis
    from attnkit.data import shipped

    if file is None:
        file = str(shipped.path(shipped.DEFAULT))

    result = run_analysis(
        file, output, quick=quick, scores=scores or SCORE_KINDS,
        attributions=attributions or None, target=parse_target(target),
        methods=methods or ("spearman", "kendall"), seed=seed,
        equivariance=not no_equivariance, figures=not no_figures,
        progress=step_lines(quiet))
    if quiet:
        return
    _print_tables(result.tables, fmt)
    if fmt == "table":
        total = sum(result.seconds.values())
        click.echo(f"\nwrote {len(result.files)} files to {output} in {total:.1f} s")
