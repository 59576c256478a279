"""The main job: attnkit.analysis.analyze and `attnkit analyze`."""

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import attnkit as ak
from attnkit.analysis import analyze
from attnkit_cli.main import cli

PLANTED = "datasets/synthetic/planted.nc"


@pytest.fixture
def with_impact(rng):
    """Planted attention plus an impact that follows rollout from [CLS] (plus noise)."""
    ds = ak.open_dataset(PLANTED).isel(sample=slice(0, 10))
    r = ak.rollout(ds).values[:, 0, :]
    noise = rng.random(r.shape) * 1e-3
    impact = np.stack([r + noise, np.where(np.isnan(r), np.nan, noise)], axis=-1)
    ds["impact"] = xr.DataArray(impact, dims=("sample", "position", "method"),
                                coords={"method": ["delete", "mask"]})
    return ds


def test_analyze_tables_and_results(with_impact):
    res = analyze(with_impact, equivariance=False, figures=False, methods=("spearman",),
                  n_boot=200)
    rows = res.tables["correlation"]
    assert {r["score"] for r in rows} == {"raw", "rollout", "flow", "grad"}
    assert {r["impact"] for r in rows} == {"delete", "mask"}
    top = {r["score"]: r for r in rows if r["layer"] == 3 and r["impact"] == "delete"}
    # impact was built from rollout: rollout correlates strongly, noise-only impact does not
    assert top["rollout"]["statistic"] > 0.8
    assert top["rollout"]["ci_low"] <= top["rollout"]["statistic"] <= top["rollout"]["ci_high"]
    noise = [r for r in rows if r["impact"] == "mask" and r["score"] == "rollout"]
    assert all(abs(r["statistic"]) < 0.5 for r in noise)
    paired = res.tables["paired"]
    assert len(paired) == 4 * 2
    st = ak.head_stats(with_impact)
    np.testing.assert_allclose(res.results.entropy.values, st.entropy.values)
    assert res.results["correlation_statistic"].dims == ("score", "impact", "method", "layer")
    np.testing.assert_allclose([r["entropy"] for r in res.tables["layers"]],
                               st.entropy.mean(("sample", "head")).values)


def test_analyze_writes_report_results_and_figures(with_impact, tmp_path):
    res = analyze(with_impact, tmp_path / "out", equivariance=False, n_boot=100,
                  methods=("kendall",))
    names = sorted(p.name for p in res.files)
    assert names == sorted(["head_grid.png", "head_stats.png", "special_tokens.png", "rollout.png",
                            "flow.png", "correlation_kendall.png", "analysis.nc", "report.md"])
    for path in res.files:
        assert path.stat().st_size > 1000
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Attention scores vs leave-one-out impact" in report
    back = xr.open_dataset(tmp_path / "out" / "analysis.nc", engine="h5netcdf")
    assert "rollout_score" in back and "correlation_ci_low" in back


def test_analyze_cli_quick_smoke(tmp_path):
    result = CliRunner().invoke(cli, ["analyze", PLANTED, "-o", str(tmp_path / "a"), "--quick",
                                      "--no-equivariance", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "head statistics per layer" in result.stdout
    assert (tmp_path / "a" / "report.md").exists()


def test_analyze_cli_errors(tmp_path):
    result = CliRunner().invoke(cli, ["analyze", str(tmp_path / "missing.nc")])
    assert result.exit_code == 2
    assert "expected an attention dataset" in result.output and "Fix:" in result.output
    result = CliRunner().invoke(cli, ["analyze", PLANTED, "--score", "shap"])
    assert result.exit_code == 2


def test_analyze_rejects_unknown_scores():
    with pytest.raises(ValueError, match=r"scores: expected a subset of"):
        analyze(PLANTED, scores=("raw", "shap"), equivariance=False, figures=False)
