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
    assert {r["score"] for r in rows} == {"raw", "rollout", "flow", "grad",
                                          "random", "position", "length"}
    # controls are scored at the last layer only
    assert {r["layer"] for r in rows if r["score"] in ("random", "position", "length")} == {3}
    assert {r["impact"] for r in rows} == {"delete", "mask"}
    top = {r["score"]: r for r in rows if r["layer"] == 3 and r["impact"] == "delete"}
    # impact was built from rollout: rollout correlates strongly, noise-only impact does not
    assert top["rollout"]["statistic"] > 0.8
    assert top["rollout"]["ci_low"] <= top["rollout"]["statistic"] <= top["rollout"]["ci_high"]
    noise = [r for r in rows if r["impact"] == "mask" and r["score"] == "rollout"]
    assert all(abs(r["statistic"]) < 0.5 for r in noise)
    primary, = res.tables["primary"]  # impact follows rollout, so rollout beats raw
    assert primary["rollout"] > 0.8 and primary["difference"] > 0 and primary["ci_low"] > 0
    secondary = {r["score"]: r for r in res.tables["secondary"]}
    assert secondary["rollout"]["statistic"] == pytest.approx(top["rollout"]["statistic"])
    assert all(r["p_holm"] >= r["p_wilcoxon"] for r in secondary.values())
    assert abs(secondary["random"]["statistic"]) < 0.5
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
                            "flow.png", "correlation_kendall.png", "scores_last_layer.png",
                            "analysis.nc", "report.md"])
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
    assert "expected an existing file or the name of a shipped dataset" in result.output
    assert "Fix:" in result.output
    result = CliRunner().invoke(cli, ["analyze", PLANTED, "--score", "shap"])
    assert result.exit_code == 2


def test_analyze_rejects_unknown_scores():
    with pytest.raises(ValueError, match=r"scores: expected a subset of"):
        analyze(PLANTED, scores=("raw", "shap"), equivariance=False, figures=False)


def test_analyze_correlates_stored_attributions_and_draws_them(with_impact, tmp_path, rng):
    ds = with_impact
    impact = ds.impact.isel(method=0).values
    scores = np.stack([impact + rng.random(impact.shape) * 1e-3, rng.random(impact.shape)], -1)
    ds["attribution"] = xr.DataArray(np.where(np.isnan(impact)[..., None], np.nan, scores),
                                     dims=("sample", "position", "attribution_method"),
                                     coords={"attribution_method": ["good", "noise"]})
    res = analyze(ds, tmp_path / "out", equivariance=False, n_boot=100, methods=("spearman",))
    assert "attributions.png" in [p.name for p in res.files]
    rows = {(r["score"], r["impact"]): r for r in res.tables["correlation"]
            if r["score"] in ("good", "noise")}
    assert {r["layer"] for r in rows.values()} == {3}  # the last layer
    assert rows[("good", "delete")]["statistic"] > 0.9
    assert abs(rows[("noise", "delete")]["statistic"]) < 0.5
    assert res.tables["missing"] == []
    only = analyze(ds, attributions=["good", "absent"], equivariance=False, figures=False,
                   n_boot=50, methods=("spearman",))
    assert {r["score"] for r in only.tables["correlation"]} >= {"good"}
    assert "noise" not in {r["score"] for r in only.tables["correlation"]}
    assert [m["score"] for m in only.tables["missing"]] == ["absent"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| 3 | good | delete |" in report


def test_analyze_says_why_scores_are_missing(tmp_path):
    ds = ak.open_dataset(PLANTED).isel(sample=slice(0, 4)).drop_vars("gradient")
    res = analyze(ds, tmp_path / "o", equivariance=False, figures=False)
    reasons = {m["score"]: m["reason"] for m in res.tables["missing"]}
    assert "attnkit compute --gradients" in reasons["grad"]
    assert "attnkit attribute" in reasons["attributions"]
    assert "attnkit ablate" in reasons["all (correlations)"]
    assert "## Scores left out, and why" in (tmp_path / "o" / "report.md").read_text()
