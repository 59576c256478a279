"""``attnkit correlate``: per-layer table, outputs, scores, and one-line errors."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from numpy.testing import assert_allclose

import attnkit as ak
from attnkit_cli.correlate import parse_layers
from attnkit_cli.main import cli
from cli_checks import assert_user_error


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def dataset(tmp_path, rng):
    """A small schema-1 dataset with tokens and an impact planted on layer 1's [CLS] row."""
    S, L, H = 12, 3, 2
    lengths = rng.integers(5, 9, S)
    attn, tokens, impact = [], [], np.full((S, lengths.max(), 2), np.nan)
    for s, n in enumerate(lengths):
        a = softmax(rng.standard_normal((L, H, n, n)) * 2)
        attn.append(a)
        tokens.append(["[CLS]"] + [f"w{i}" for i in range(1, n - 1)] + ["[SEP]"])
        raw = a[1, :, 0, :].mean(0)
        impact[s, :n, 0] = raw + 1e-4 * rng.standard_normal(n)  # "delete": tracks layer 1
        impact[s, :n, 1] = rng.standard_normal(n)  # "mask": noise
    ds = ak.from_arrays(attn, tokens=tokens, model="toy")
    ds["impact"] = xr.DataArray(impact, dims=("sample", "position", "method"),
                                coords={"method": ["delete", "mask"]})
    path = tmp_path / "toy.nc"
    ak.save_dataset(ds, path)
    return str(path), ds


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_table_per_layer_matches_api(dataset):
    path, ds = dataset
    result = run("correlate", path, "--method", "spearman", "--impact", "delete", "--n-boot", "200")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("Spearman rho") and "except [CLS]/[SEP]" in lines[0]
    header = lines[1].split()
    assert header[:4] == ["score", "impact", "layer", "mean"]
    rows = [line.split() for line in lines[2:]]
    assert [r[2] for r in rows] == ["0", "1", "2"]
    # layer 1 was planted: its [CLS] attention is the impact up to small noise
    means = [float(r[3]) for r in rows]
    assert means[1] > 0.9 and means[1] == max(means)
    # same numbers as the API
    raw = ds.attention.values[:, 1, :, 0, :].mean(axis=1)
    ref = ak.correlate(raw, ds.impact.values[..., 0], method="spearman", n_boot=200,
                       exclude="special", tokens=ds.token.values)
    assert means[1] == pytest.approx(float(ref.mean_statistic), abs=5e-4)
    assert float(rows[1][6]) == pytest.approx(float(ref.significant_fraction), abs=5e-4)


def test_csv_output_and_scores(dataset, tmp_path):
    path, ds = dataset
    out = tmp_path / "corr.csv"
    result = run("correlate", path, "--score", "raw", "--score", "rollout", "--score", "flow",
                 "--layer", "1-2", "--versus", "raw", "--n-boot", "100", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2 * 2  # scores x impacts x layers
    assert {r["score"] for r in rows} == {"raw", "rollout", "flow"}
    assert {r["layer"] for r in rows} == {"1", "2"}
    raw_rows = [r for r in rows if r["score"] == "raw"]
    assert all(float(r["vs_raw"]) == 0.0 for r in raw_rows)
    for r in rows:
        assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
        assert float(r["vs_ci_low"]) <= float(r["vs_raw"]) <= float(r["vs_ci_high"])
    # rollout up to layer 1 is row 0 of ak.rollout over layers 0..1
    roll = ak.rollout(ds.attention.values[:, :2], lengths=ds.length.values)[:, 0, :]
    ref = ak.correlate(roll, ds.impact.values[..., 1], n_boot=100, lengths=ds.length.values,
                       exclude="special", tokens=ds.token.values)
    row = next(r for r in rows if r["score"] == "rollout" and r["layer"] == "1"
               and r["impact"] == "mask")
    assert_allclose(float(row["mean"]), float(ref.mean_statistic), rtol=1e-12)


def test_csv_output_is_written_atomically(dataset, tmp_path, monkeypatch):
    """-o x.csv goes through attnkit's atomic writer: the permissions of a new file, and
    a write that fails halfway keeps the previous table and leaves no temporary file."""
    path, _ = dataset
    out = tmp_path / "out"
    out.mkdir()
    target = out / "corr.csv"
    old = os.umask(0o022)
    try:
        assert run("correlate", path, "--n-boot", "20", "-o", str(target), "-q").exit_code == 0
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644
    before = target.read_bytes()

    def half_the_rows(self, rows):
        self.writer.writerow(["raw", "delete", "0,"])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", half_the_rows)
    result = run("correlate", path, "--n-boot", "20", "-o", str(target), "-q")
    assert result.exit_code == 2 and "No space" in result.output
    assert os.listdir(out) == [target.name]
    assert target.read_bytes() == before


def test_netcdf_output_holds_per_sample_statistics(dataset, tmp_path):
    path, ds = dataset
    out = tmp_path / "corr.nc"
    result = run("correlate", path, "--layer", "-1", "--keep-special", "--n-boot", "50",
                 "--format", "json", "-o", str(out))
    assert result.exit_code == 0, result.output
    back = xr.open_dataset(out, engine="h5netcdf")
    assert back["statistic"].sizes["sample"] == ds.sizes["sample"]
    assert set(back["statistic"].dims) == {"sample", "layer", "score", "impact"}
    assert back["impact"].values.tolist() == ["delete", "mask"]
    assert back.attrs["exclude_special"] == 0
    expect = ak.correlate(ds.attention.values[:, 2, :, 0, :].mean(1), ds.impact.values[..., 0],
                          n_boot=50)
    got = back["statistic"].sel(score="raw", impact="delete").isel(layer=0).values
    assert_allclose(got, expect.statistic, rtol=1e-12)
    back.close()


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0,2", 4) == [0, 2]
    assert parse_layers("1-3", 6) == [1, 2, 3]
    assert parse_layers("-1", 6) == [5]


@pytest.mark.parametrize("args, fragments", [
    (["--layer", "7"], ["--layer: expected layers in [0, 2]"]),
    (["--layer", "x"], ["--layer: expected 'all' or layers"]),
    (["--impact", "zero"], ["--impact: expected one of ['delete', 'mask']", "Fix:"]),
    (["--score", "grad"], ["expected a `gradient` variable", "Fix:"]),
    (["-o", "out.txt"], ["--output: expected a path ending in .csv, .nc or .zarr"]),
    (["-o", "no/such/dir/out.csv"], ["--output: expected an existing folder"]),
])
def test_user_errors(dataset, args, fragments):
    path, _ = dataset
    assert_user_error(run("correlate", path, *args), *fragments)


def test_dataset_without_impact(tmp_path, rng):
    ds = ak.from_arrays(softmax(rng.standard_normal((2, 1, 1, 4, 4))))
    path = tmp_path / "plain.nc"
    ak.save_dataset(ds, path)
    assert_user_error(run("correlate", str(path)), "expected an `impact` variable",
                      "attnkit ablate")


# ----------------------------------------------------------------------------- issue 18 options
@pytest.fixture
def controlled(dataset, tmp_path):
    """The toy dataset plus a per-position control and a per-sample grouping."""
    _, ds = dataset
    n = ds.sizes["position"]
    lengths = ds.length.values
    position = np.where(np.arange(n) < lengths[:, None], np.arange(n) * 1.0, np.nan)
    ds = ds.assign(position_score=(("sample", "position"), position),
                   source=("sample", np.array(["news", "wiki", "chat"])[np.arange(len(lengths)) % 3]))
    path = tmp_path / "controlled.nc"
    ak.save_dataset(ds, path)
    return str(path), ds


def test_control_groups_pvalue_method_and_adjust(controlled, tmp_path):
    path, ds = controlled
    out = tmp_path / "corr.csv"
    result = run("correlate", path, "--method", "spearman", "--control", "position_score",
                 "--groups", "source", "--pvalue-method", "exact", "--adjust", "holm",
                 "--n-boot", "200", "--layer", "0-1", "-o", str(out))
    assert result.exit_code == 0, result.output
    head = result.output.splitlines()[0]
    assert head.startswith("Partial Spearman rho given position_score")
    assert "cluster bootstrap over the groups of source" in head and "Holm" in head
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert {"significant_holm", "groups"} <= set(rows[0])
    assert all(r["groups"] == "3" for r in rows)
    # the same numbers as the API
    raw = ak.attention_scores(ds, "raw", layers=[0, 1])
    target = xr.DataArray(ds.impact.values[..., 0], dims=("sample", "position"))
    control = xr.DataArray(ds.position_score.values, dims=("sample", "position"),
                           name="position_score")
    groups = xr.DataArray(ds.source.values, dims="sample", name="source")
    ref = ak.correlate(raw, target, method="spearman", exclude="special", n_boot=200,
                       lengths=xr.DataArray(ds.length.values, dims="sample"), control=control,
                       groups=groups, pvalue_method="exact")
    assert ref.attrs["control"] == "position_score" and ref.attrs["groups"] == "source"
    adjusted = ak.adjust_pvalues(ref.pvalue, "holm", dim="sample")
    for j, row in enumerate(r for r in rows if r["impact"] == "delete"):
        assert float(row["mean"]) == pytest.approx(float(ref.mean_statistic[j]), rel=1e-12)
        assert float(row["ci_low"]) == pytest.approx(float(ref.ci_low[j]), rel=1e-12)
        assert float(row["significant"]) == pytest.approx(float(ref.significant_fraction[j]))
        defined = adjusted[:, j].notnull()
        want = float((adjusted[:, j][defined] < 0.05).mean())
        assert float(row["significant_holm"]) == pytest.approx(want)
        assert float(row["significant_holm"]) <= float(row["significant"])


def test_netcdf_output_has_adjusted_pvalues_and_group_summaries(controlled, tmp_path):
    path, _ds = controlled
    out = tmp_path / "corr.nc"
    result = run("correlate", path, "--groups", "source", "--adjust", "bh", "--n-boot", "50",
                 "--pvalue-method", "asymptotic", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    back = xr.open_dataset(out, engine="h5netcdf")
    assert back.attrs["adjust"] == "bh" and back.attrs["groups"] == "source"
    assert back.attrs["pvalue_method"] == "asymptotic"
    assert back["pvalue_adjusted"].dims == back["pvalue"].dims
    assert back["group_mean_statistic"].dims == ("impact", "score", "layer", "group")
    assert sorted(back["group"].values.tolist()) == ["chat", "news", "wiki"]
    p = back["pvalue"].sel(impact="mask", score="raw").isel(layer=0).values
    got = back["pvalue_adjusted"].sel(impact="mask", score="raw").isel(layer=0).values
    assert_allclose(got, ak.adjust_pvalues(p, "bh"), rtol=1e-12, equal_nan=True)
    back.close()


@pytest.mark.parametrize("args, fragments", [
    (["--control", "nothing"], ["--control: expected one of ['position_score'", "Fix:"]),
    (["--control", "position_score", "--control", "position_score2"],
     ["--control: expected one of"]),
    (["--groups", "nothing"], ["--groups: expected a per-sample variable", "source", "Fix:"]),
    (["--groups", "position_score"], ["--groups: expected a variable with dims ('sample',)"]),
    (["--pvalue-method", "permutation"], ["Invalid value for '--pvalue-method'"]),
    (["--adjust", "bonferroni"], ["Invalid value for '--adjust'"]),
])
def test_option_errors(controlled, args, fragments):
    path, _ = controlled
    result = run("correlate", path, *args)
    if "Invalid value" in fragments[0]:  # click's own usage error
        assert result.exit_code == 2 and fragments[0] in result.output
    else:
        assert_user_error(result, *fragments)


def test_kendall_takes_one_control(controlled):
    path, ds = controlled
    path2 = path.replace(".nc", "2.nc")
    ak.save_dataset(ds.assign(other=ds.position_score ** 2), path2)
    assert_user_error(run("correlate", path2, "--control", "position_score", "--control", "other"),
                      "--control: expected one control with --method kendall", "Fix:")
    result = run("correlate", path2, "--control", "position_score", "--n-boot", "20")
    assert result.exit_code == 0 and "has no p-value" in result.output


def test_control_kind_from_baseline_scores(controlled, tmp_path):
    """A control kind of ak.baseline_scores: `position` is the position index, as the
    dataset's own position_score variable."""
    path, _ds = controlled
    kind, own = tmp_path / "kind.nc", tmp_path / "own.nc"
    common = ["--method", "pearson", "--n-boot", "50", "--pvalue-method", "asymptotic", "-q"]
    assert run("correlate", path, "--control", "position", "-o", str(kind), *common).exit_code == 0
    assert run("correlate", path, "--control", "position_score", "-o", str(own),
               *common).exit_code == 0
    a, b = xr.open_dataset(kind, engine="h5netcdf"), xr.open_dataset(own, engine="h5netcdf")
    assert a.attrs["control"] == "position" and b.attrs["control"] == "position_score"
    assert_allclose(a["statistic"].values, b["statistic"].values, rtol=1e-12, equal_nan=True)
    a.close()
    b.close()


def test_target_reads_scores_at_the_chosen_output(dataset, tmp_path):
    path, ds = dataset
    out = {}
    for target in ("0", "mean"):
        result = run("correlate", path, "--method", "spearman", "--impact", "delete",
                     "--layer", "1", "--n-boot", "50", "--target", target, "--format", "csv")
        assert result.exit_code == 0, result.output
        out[target] = float(list(csv.DictReader(result.output.splitlines()))[0]["mean"])
    for target, expected in (("0", 0), ("mean", "mean")):
        score = ak.attention_scores(ds, "raw", target=expected, layers=[1])
        ref = ak.correlate(score, ds.impact.isel(method=0).drop_vars("method"),
                           method="spearman", n_boot=50, exclude="special",
                           lengths=xr.DataArray(ds.length.values, dims="sample"))
        assert out[target] == pytest.approx(float(ref.mean_statistic[0]), abs=5e-4)
    assert out["0"] > 0.9 > out["mean"]  # the impact was planted on [CLS]'s row
    result = run("correlate", path, "--target", "middle")
    assert_user_error(result, "--target", "mean", "Fix:")
