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
