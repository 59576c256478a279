"""`attnkit paper` produces every figure paper/paper.md shows."""

import shutil
from pathlib import Path

from attnkit._paper import build_paper, referenced_figures

ROOT = Path(__file__).resolve().parents[1]


def test_every_referenced_figure_is_produced(tmp_path):
    figures = referenced_figures(ROOT / "paper" / "paper.md")
    assert len(figures) >= 8
    (tmp_path / "paper").mkdir()
    shutil.copytree(ROOT / "paper" / "results", tmp_path / "paper" / "results")
    written = build_paper(tmp_path, dataset=ROOT / "datasets" / "minilm" / "minilm.nc",
                          quick=True, equivariance=False)
    produced = {p.name for p in written if p.parent.name == "figures"}
    missing = sorted(set(figures) - produced)
    assert not missing, f"paper.md shows figures that attnkit paper does not make: {missing}"
    for name in figures:
        assert (tmp_path / "paper" / "figures" / name).stat().st_size > 5000
    assert (tmp_path / "paper" / "results" / "analysis.md").read_text().startswith("# attnkit analyze")
