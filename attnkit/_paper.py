"""Regenerate every figure and table of paper/paper.md from the shipped data and results.

Used by ``attnkit paper`` and ``make paper``. Deterministic: fixed seeds, and
the benchmark figures are drawn from the JSON in ``paper/results`` (the
benchmarks themselves are not re-run; ``make bench`` does that).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["build_paper", "referenced_figures", "without_timings", "PAPER_DATASET"]

#: The real dataset the paper's analysis runs on, relative to the repository root.
PAPER_DATASET = Path("datasets") / "minilm" / "minilm.nc"
#: The shipped datasets `attnkit evaluate` runs on for the paper, by the suffix of their files.
EVALUATION_DATASETS = {"text": "minilm", "images": "vision"}
_PERF_FIGURES = ("throughput.png", "memory.png", "attention_cost.png")


def referenced_figures(paper_md) -> list[str]:
    """File names of the figures ``paper.md`` shows (``![...](figures/NAME)``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = pathlib.Path(tmp) / "paper.md"
    ...     _ = p.write_text("![a](figures/one.png) text ![b](figures/two.png)")
    ...     referenced_figures(p)
    ['one.png', 'two.png']
    """
    text = Path(paper_md).read_text()
    return re.findall(r"!\[[^\]]*\]\(figures/([^)\s]+)\)", text)


def _performance_figures(results: Path, figures: Path) -> list[Path]:
    from . import plot

    out = plot.FigureFolder(figures)
    for name, draw in zip(_PERF_FIGURES, (plot.throughput_plot, plot.memory_plot, plot.cost_plot)):
        out.save(draw(str(results)), name)
    return out.written


TIMINGS_HEADING = "## Time per step"


def without_timings(text: str) -> str:
    r"""A report without its "Time per step" section, so that the paper's tables are the
    same bytes on every run (the timings stay in the reports of `attnkit analyze` and
    `attnkit evaluate`).

    Examples
    --------
    >>> without_timings("# r\n\n## A\n\nx\n\n## Time per step (s)\n\n| s |\n\n## B\n")
    '# r\n\n## A\n\nx\n\n## B\n'
    """
    start = text.find(TIMINGS_HEADING)
    if start < 0:
        return text
    end = text.find("\n## ", start + len(TIMINGS_HEADING))
    return text[:start] + ("" if end < 0 else text[end + 1:])


def _move_report(source: Path, target: Path) -> Path:
    """Move a report into paper/results/, without timings when it is Markdown."""
    if source.suffix == ".md":
        source.write_text(without_timings(source.read_text(encoding="utf-8")), encoding="utf-8")
    os.replace(source, target)
    return target


def _evaluations(root: Path, figures: Path, results: Path, quick: bool, progress) -> list[Path]:
    """`attnkit evaluate` on the shipped text and images: figures NAME_{text,images}.png and
    results/evaluation_{text,images}.{nc,md}."""
    import shutil

    from .data import shipped
    from .evaluation import evaluate

    written = []
    for tag, name in EVALUATION_DATASETS.items():
        scratch = figures / f".evaluate_{tag}"
        res = evaluate(shipped.path(name), scratch, quick=quick, progress=progress)
        for path in res.files:
            if path.suffix == ".png":
                target = figures / f"{path.stem}_{tag}.png"
                os.replace(path, target)
            else:
                target = _move_report(path, results / f"evaluation_{tag}{path.suffix}")
            written.append(target)
        shutil.rmtree(scratch, ignore_errors=True)
    return written


def build_paper(root=".", *, dataset=None, quick: bool = False, equivariance: bool = True,
                evaluation: bool = True, progress=None) -> list[Path]:
    """Write paper/figures/* and paper/results/{analysis,evaluation_*}.{nc,md} under ``root``.

    Parameters
    ----------
    root : path
        The repository root (holding ``paper/`` and ``datasets/``).
    dataset : path, optional
        Attention dataset to analyse (default :data:`PAPER_DATASET`).
    quick : bool
        Analyse only a few samples (for tests; the numbers are then not the paper's).
    equivariance : bool
        Run the equivariance checks (tables only; no figure depends on them).
    evaluation : bool
        Run `attnkit evaluate` on the shipped MiniLM sentences and images
        (faithfulness, perturbation curves, randomisation; about 15 minutes on
        two cores, seconds with ``quick``).
    progress : callable, optional
        Called with a line of text per step.

    Returns
    -------
    list of pathlib.Path
        Every file written.
    """
    from .analysis import analyze

    root = Path(root)
    paper = root / "paper"
    figures = paper / "figures"
    results = paper / "results"
    figures.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    dataset = root / PAPER_DATASET if dataset is None else Path(dataset)
    if not dataset.exists():
        raise FileNotFoundError(f"{dataset}: expected the shipped MiniLM dataset, got no such "
                                "file. Fix: run from the repository root, or regenerate it with "
                                "python datasets/make_minilm_dataset.py")
    analysis = analyze(dataset, figures, quick=quick, equivariance=equivariance, progress=progress)
    written = [p for p in analysis.files if p.suffix == ".png"]
    for name, target in (("analysis.nc", "analysis.nc"), ("report.md", "analysis.md")):
        written.append(_move_report(figures / name, results / target))
    if evaluation:
        written += _evaluations(root, figures, results, quick, progress)
    if progress:
        progress("performance figures from paper/results/*.json")
    written += _performance_figures(results, figures)
    return written
