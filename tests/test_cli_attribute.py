"""``attnkit compute --gradients`` and ``attnkit attribute``; gradients and attributions in
``attnkit analyze``."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit.attribution import METHOD_DIM
from attnkit_cli.main import cli
from cli_checks import assert_user_error

TEXTS = ["The cat sat on the mat.", "Dogs bark loudly.", "The keys to the cabinet are lost."]


@pytest.fixture(scope="module")
def model():
    return ak.models.MiniLM.load()


@pytest.fixture
def sentences(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def test_compute_gradients_then_attribute_then_analyze(model, sentences, tmp_path):
    runner = CliRunner()
    path = tmp_path / "g.nc"
    result = runner.invoke(cli, ["compute", str(sentences), "-o", str(path), "--gradients",
                                 "--no-qk"])
    assert result.exit_code == 0, result.output
    assert "with gradients" in result.output
    ds = ak.open_dataset(path)
    ak.validate(ds)
    expected = model.run(TEXTS, gradients=True, qk=False)
    np.testing.assert_allclose(ds.gradient.values, expected.gradient.values, atol=1e-6)
    np.testing.assert_allclose(ds.input_gradient.values, expected.input_gradient.values,
                               atol=1e-6)
    assert ds.attrs["gradient_target"].startswith("self")

    # without impacts, analyze says what is missing and how to get it
    result = runner.invoke(cli, ["analyze", str(path), "-o", str(tmp_path / "a0"),
                                 "--no-equivariance", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "attributions: the dataset has no `attribution`" in result.output
    assert "attnkit ablate" in result.output

    result = runner.invoke(cli, ["attribute", str(path), "-m", "input_x_gradient", "-m",
                                 "integrated_gradients", "--steps", "64"])
    assert result.exit_code == 0, result.output
    assert "completeness error: at most" in result.output
    ds = ak.open_dataset(path)
    ak.validate(ds)
    assert ds.attribution.dims == ("sample", "position", METHOD_DIM)
    direct = ak.attribute(model, TEXTS, method=("input_x_gradient", "integrated_gradients"),
                          steps=64)
    np.testing.assert_allclose(ds.attribution.values, direct.values, rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    assert ds.attribution.attrs["completeness_relative_error"] < 0.01

    # a second call adds a method and keeps the others
    result = runner.invoke(cli, ["attribute", str(path), "-m", "grad_rollout", "-q"])
    assert result.exit_code == 0 and result.output == ""
    ds = ak.open_dataset(path)
    assert ds.attribution[METHOD_DIM].values.tolist() == [
        "input_x_gradient", "integrated_gradients", "grad_rollout"]

    result = runner.invoke(cli, ["ablate", str(path), "-m", "delete", "-q"])
    assert result.exit_code == 0, result.output
    res_dir = tmp_path / "a1"
    result = runner.invoke(cli, ["analyze", str(path), "-o", str(res_dir), "--no-equivariance",
                                 "--no-figures", "--method", "spearman", "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    tables = json.loads(result.stdout)
    scores = {r["score"] for r in tables["correlation"]}
    # read at MiniLM's mean read-out, plus the [CLS] readings and the model-free controls;
    # the stored grad_rollout attribution is `grad` at the last layer, so it is not repeated
    assert scores == {"raw", "rollout", "flow", "grad", "raw_cls", "rollout_cls", "flow_cls",
                      "input_x_gradient", "integrated_gradients", "random", "position",
                      "length"}
    assert tables["primary"][0]["n_instances"] > 0
    # attributions explain the whole model: one row each, at the last layer
    ig = [r for r in tables["correlation"] if r["score"] == "integrated_gradients"]
    assert [r["layer"] for r in ig] == [5]
    assert tables["missing"] == []


def test_attribute_bad_input(model, tmp_path):
    other = tmp_path / "other.nc"
    a = np.full((1, 1, 1, 3, 3), 1 / 3)
    ak.save_dataset(ak.from_arrays(a, tokens=[["a", "b", "c"]], model="gpt2"), other)
    assert_user_error(CliRunner().invoke(cli, ["attribute", str(other)]), "built-in model")
    path = tmp_path / "m.nc"
    ak.save_dataset(model.run(["Hello world"], qk=False), path)
    result = CliRunner().invoke(cli, ["attribute", str(path), "--steps", "0"])
    assert result.exit_code == 2 and "--steps" in result.output
    result = CliRunner().invoke(cli, ["attribute", str(path), "-m", "shap"])
    assert result.exit_code == 2 and "shap" in result.output
    assert_user_error(CliRunner().invoke(cli, ["attribute", str(path), "-o",
                                               str(tmp_path / "x.txt")]), ".nc or .zarr")
