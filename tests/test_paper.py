"""`attnkit paper` produces every figure paper/paper.md shows, the same bytes every time."""

import shutil
from pathlib import Path

from attnkit._paper import build_paper, referenced_figures

ROOT = Path(__file__).resolve().parents[1]


def _build(root: Path) -> list[Path]:
    (root / "paper").mkdir(parents=True)
    shutil.copytree(ROOT / "paper" / "results", root / "paper" / "results")
    return build_paper(root, dataset=ROOT / "datasets" / "minilm" / "minilm.nc", quick=True,
                       equivariance=False)


def test_every_referenced_figure_is_produced_and_the_bytes_repeat(tmp_path):
    figures = referenced_figures(ROOT / "paper" / "paper.md")
    assert len(figures) >= 8
    written = _build(tmp_path / "a")
    produced = {p.name for p in written if p.parent.name == "figures"}
    missing = sorted(set(figures) - produced)
    assert not missing, f"paper.md shows figures that attnkit paper does not make: {missing}"
    for name in figures:
        assert (tmp_path / "a" / "paper" / "figures" / name).stat().st_size > 5000
    results = tmp_path / "a" / "paper" / "results"
    assert (results / "analysis.md").read_text().startswith("# attnkit analyze")
    for tag in ("text", "images"):
        report = (results / f"evaluation_{tag}.md").read_text()
        assert report.startswith("# attnkit evaluate") and "Time per step" not in report
    # paper.md promises that two runs write the same bytes (no timings, fixed seeds)
    again = _build(tmp_path / "b")
    assert [p.relative_to(tmp_path / "b") for p in again] == \
        [p.relative_to(tmp_path / "a") for p in written]
    changed = [str(p.relative_to(tmp_path / "a")) for p in written
               if p.read_bytes() != (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()]
    assert not changed, f"attnkit paper wrote different bytes on a second run: {changed}"
