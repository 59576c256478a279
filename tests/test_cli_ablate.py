"""``attnkit ablate``: impacts added to a MiniLM dataset file."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit_cli.main import cli
from cli_checks import assert_user_error

TEXTS = ["The cat sat on the mat.", "Dogs bark loudly."]


@pytest.fixture(scope="module")
def model():
    return ak.models.MiniLM.load()


@pytest.fixture
def dataset(model, tmp_path):
    path = tmp_path / "minilm.nc"
    ak.save_dataset(model.run(TEXTS, qk=False), path)
    return path


def test_ablate_rewrites_the_file_with_impacts(model, dataset):
    runner = CliRunner()
    result = runner.invoke(cli, ["ablate", str(dataset), "-m", "delete", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert "delete: mean impact" in result.output and "ablated forwards" in result.output
    ds = ak.open_dataset(dataset)
    ak.validate(ds)
    expected = ak.ablate(model, TEXTS, method="delete")
    np.testing.assert_allclose(ds.impact.values, expected.values, atol=1e-6, equal_nan=True)

    # a second method is added next to the first; the first is kept
    result = runner.invoke(cli, ["ablate", str(dataset), "-m", "mask", "-q"])
    assert result.exit_code == 0 and result.output == ""
    ds = ak.open_dataset(dataset)
    assert ds.impact.method.values.tolist() == ["delete", "mask"]
    np.testing.assert_allclose(ds.impact.values[..., 0], expected.values[..., 0], atol=1e-6,
                               equal_nan=True)
    assert np.isfinite(ds.impact.values[..., 1]).sum() == np.isfinite(expected.values).sum()

    # a different metric needs --replace
    assert_user_error(runner.invoke(cli, ["ablate", str(dataset), "--metric", "euclidean"]),
                      "--replace")
    result = runner.invoke(cli, ["ablate", str(dataset), "--metric", "euclidean", "-m", "zero",
                                 "--replace", "-q"])
    assert result.exit_code == 0, result.output
    assert ak.open_dataset(dataset).impact.method.values.tolist() == ["zero"]


def test_ablate_output_and_no_position_embeddings(model, tmp_path):
    src = tmp_path / "nopos.nc"
    ak.save_dataset(model.run(TEXTS, position_embeddings=False, qk=False), src)
    out = tmp_path / "out.zarr"
    result = CliRunner().invoke(cli, ["ablate", str(src), "-m", "mask", "--special", "compute",
                                      "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "impact" not in ak.open_dataset(src)
    got = ak.open_dataset(out).impact.values[..., 0]
    expected = ak.ablate(model.configured(position_embeddings=False), TEXTS, method="mask",
                         special="compute").values[..., 0]
    np.testing.assert_allclose(got, expected, atol=1e-6, equal_nan=True)
    with_pos = ak.ablate(model, TEXTS, method="mask", special="compute").values[..., 0]
    assert np.nanmax(np.abs(with_pos - expected)) > 1e-3


def test_ablate_bad_input(tmp_path):
    other = tmp_path / "other.nc"
    a = np.full((1, 1, 1, 3, 3), 1 / 3)
    ak.save_dataset(ak.from_arrays(a, tokens=[["a", "b", "c"]], model="gpt2"), other)
    assert_user_error(CliRunner().invoke(cli, ["ablate", str(other)]), "built-in model")
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a netcdf file")
    assert_user_error(CliRunner().invoke(cli, ["ablate", str(junk)]), "junk.nc")
