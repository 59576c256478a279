"""attnkit info / stats / rollout / flow through click's CliRunner."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

import attnkit as ak
from attnkit_cli.main import cli

TOKENS = [["[CLS]", "the", "cat", ",", "sat", "[SEP]"], ["[CLS]", "hi", "!", "[SEP]"],
          ["[CLS]", "a", "b", "c", "[SEP]"]]


@pytest.fixture
def dataset(tmp_path, rng):
    samples = []
    for toks in TOKENS:
        a = rng.random((2, 3, len(toks), len(toks)))
        samples.append(a / a.sum(-1, keepdims=True))
    ds = ak.from_arrays(samples, tokens=TOKENS, model="random", source="test")
    path = tmp_path / "attn.nc"
    ak.save_dataset(ds, path)
    return path, ds


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_info_prints_dims_and_validation(dataset):
    path, ds = dataset
    result = run("info", path)
    assert result.exit_code == 0, result.output
    assert "dims: sample=3, layer=2, head=3" in result.output
    assert "validation: OK" in result.output
    summary = json.loads(run("info", path, "--format", "json").output)
    assert summary["lengths"] == {"min": 4, "mean": 5.0, "max": 6}
    assert summary["attrs"]["model"] == "random"


def test_info_lists_problems_with_exit_1(tmp_path, dataset):
    _, ds = dataset
    bad = ds.copy(deep=True)
    bad["attention"][1, 0, 0, 0, 0] += 0.5  # row no longer sums to 1
    bad.to_netcdf(tmp_path / "bad.nc", engine="h5netcdf")
    result = run("info", tmp_path / "bad.nc")
    assert result.exit_code == 1
    assert "problem" in result.output and "sum" in result.output


def test_info_unreadable_file_exit_2(tmp_path):
    (tmp_path / "junk.nc").write_bytes(b"not a netcdf file")
    result = run("info", tmp_path / "junk.nc")
    assert result.exit_code == 2
    assert "Error:" in result.output and "Traceback" not in result.output


def test_stats_writes_netcdf_and_csv(tmp_path, dataset):
    path, ds = dataset
    result = run("stats", path, "-o", tmp_path / "s.nc", "--format", "csv")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(pd.io.common.StringIO(result.stdout))
    assert len(table) == 2 * 3 and "cls_mass" in table
    saved = xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf").load()
    expected = ak.head_stats(ds)
    np.testing.assert_allclose(saved.entropy.values, expected.entropy.values, rtol=1e-12)
    np.testing.assert_allclose(table["entropy"], expected.entropy.mean("sample").values.ravel(),
                               rtol=1e-3)
    assert run("stats", path, "-o", tmp_path / "s.csv", "-q").exit_code == 0
    frame = pd.read_csv(tmp_path / "s.csv")
    assert len(frame) == 3 * 2 * 3
    np.testing.assert_allclose(frame["distance"], expected.distance.values.ravel(), rtol=1e-5)


def test_rollout_prints_top_sources_and_writes(tmp_path, dataset):
    path, ds = dataset
    result = run("rollout", path, "--residual", "0.3", "-o", tmp_path / "r.nc")
    assert result.exit_code == 0, result.output
    assert "top1" in result.output and "[CLS]" in result.output
    saved = xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf").load()
    np.testing.assert_allclose(saved.rollout.values, ak.rollout(ds, residual=0.3).values,
                               rtol=1e-12, equal_nan=True)
    assert saved.token.values[1, 1] == "hi"
    assert run("rollout", path, "-o", tmp_path / "r.csv", "-q").exit_code == 0
    frame = pd.read_csv(tmp_path / "r.csv")
    assert len(frame) == sum(len(t) ** 2 for t in TOKENS)


def test_flow_one_query_row(tmp_path, dataset):
    path, ds = dataset
    result = run("flow", path, "--query", "1", "-o", tmp_path / "f.nc", "--format", "json")
    assert result.exit_code == 0, result.output
    saved = xr.open_dataset(tmp_path / "f.nc", engine="h5netcdf").load()
    row = saved.flow.values[:, 1, :]
    lengths = ds.length.values
    for s, m in enumerate(lengths):
        np.testing.assert_allclose(row[s, :m].sum(), 1.0, rtol=1e-9)
    assert np.isnan(saved.flow.values[:, 0, :]).all()  # rows not asked for


@pytest.mark.parametrize("args, message", [
    (("stats", "{path}", "-o", "x.txt"), "--output: expected a path ending in .nc, .zarr or .csv"),
    (("rollout", "{path}", "--query", "99"), "--query: expected a position below 6"),
    (("stats", "{path}", "--workers", "2", "--scheduler", "tcp://x:1"), "expected one of them"),
    (("rollout", "{path}", "--head-fusion", "median"), "Invalid value for '--head-fusion'"),
])
def test_bad_arguments_exit_2_with_one_line(dataset, args, message):
    path, _ = dataset
    result = run(*(a.format(path=path) for a in args))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_not_an_attention_dataset(tmp_path):
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    result = run("stats", tmp_path / "other.nc")
    assert result.exit_code == 2
    assert "attnkit_schema" in result.output


def test_stats_on_local_cluster_matches_in_process(tmp_path, dataset):
    """Two worker processes over a chunked zarr store give the in-process numbers."""
    pytest.importorskip("distributed")
    _, ds = dataset
    store = tmp_path / "attn.zarr"
    ak.save_dataset(ds, store)
    local = run("stats", store, "-o", tmp_path / "local.nc", "-q")
    assert local.exit_code == 0, local.output
    remote = run("stats", store, "--workers", "2", "--chunk", "1", "-o", tmp_path / "cluster.nc", "-q")
    assert remote.exit_code == 0, remote.output
    a = xr.open_dataset(tmp_path / "local.nc", engine="h5netcdf").load()
    b = xr.open_dataset(tmp_path / "cluster.nc", engine="h5netcdf").load()
    xr.testing.assert_identical(a, b)
