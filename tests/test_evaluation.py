"""attnkit.evaluation.evaluate and `attnkit evaluate`: faithfulness of every score,
perturbation curves (images) and the randomisation check, on tiny real inputs."""

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit.evaluation import evaluate


@pytest.fixture(scope="module")
def minilm():
    return ak.models.MiniLM.load()


@pytest.fixture(scope="module")
def sentences(minilm):
    texts = ["The cat sat on the mat.", "Dogs bark.", "A quiet evening by the lake was all she wanted."]
    ds = minilm.run(texts, gradients=True)
    ds["attribution"] = ak.attribute(minilm, ds, method=["input_x_gradient", "grad_rollout"])
    ds["impact"] = ak.ablate(minilm, ds, method=["delete"])
    return ds


def _rows(table, **match):
    return [r for r in table if all(r.get(k) == v for k, v in match.items())]


def test_text_faithfulness_matches_the_api(minilm, sentences, tmp_path):
    bins = (0.2, 0.5)
    res = evaluate(sentences, tmp_path / "out", model=minilm, bins=bins, n_boot=50)
    names = {r["score"] for r in res.tables["faithfulness"]}
    # grad at the last layer and the mean read-out is the grad_rollout attribution: listed once
    assert {"raw", "rollout", "flow", "grad_rollout", "input_x_gradient", "random", "position",
            "length"} == names
    raw = ak.attention_scores(sentences, "raw").isel(layer=-1)
    want = ak.faithfulness(minilm, sentences, raw, method="delete", bins=bins)
    row = _rows(res.tables["faithfulness"], score="raw", model="trained",
                metric="comprehensiveness")[0]
    assert row["aopc"] == pytest.approx(float(want["comprehensiveness_aopc"].mean()), rel=1e-12)
    np.testing.assert_allclose(
        res.results["sufficiency_aopc"].sel(score="raw", model="trained").values,
        want["sufficiency_aopc"].values, rtol=1e-12)
    assert row["ci_low"] <= row["aopc"] <= row["ci_high"]
    # the randomisation table: attention scores and attributions, not the model-free controls
    rand = {r["score"]: r for r in res.tables["randomization"]}
    assert set(rand) == {"raw", "rollout", "flow", "grad_rollout", "input_x_gradient"}
    assert all(-1 <= r["similarity"] <= 1 for r in rand.values())
    assert rand["raw"]["similarity"] < 0.9  # a randomised model attends elsewhere
    assert _rows(res.tables["faithfulness"], model="randomized", score="raw")
    assert not _rows(res.tables["faithfulness"], model="randomized", score="length")
    for name in ("evaluation.nc", "evaluation.md", "faithfulness.png", "randomization.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    import xarray as xr

    saved = xr.open_dataset(tmp_path / "out" / "evaluation.nc", engine="h5netcdf")
    assert saved["comprehensiveness_aopc"].dims == ("score", "model", "sample")
    report = (tmp_path / "out" / "evaluation.md").read_text()
    assert "Randomisation sanity check" in report and "| raw | trained |" in report


def test_randomised_agreement_is_that_of_the_randomised_models_scores(minilm, sentences):
    res = evaluate(sentences, model=minilm, bins=(0.5,), n_boot=50, seed=3)
    rds = minilm.randomized("all", seed=3).run([str(t) for t in sentences.text.values])
    raw = ak.attention_scores(rds, "raw").isel(layer=-1)
    raw = raw.pad(position=(0, sentences.sizes["position"] - raw.sizes["position"]))
    impact = sentences.impact.sel({"method": "delete"}, drop=True)
    want = ak.correlate(raw.drop_vars("token"), impact.drop_vars("token", errors="ignore"),
                        method="spearman", tokens=sentences.token.drop_vars("token"),
                        exclude="special", n_boot=50, seed=3)
    row = _rows(res.tables["randomization"], score="raw")[0]
    assert row["randomized"] == pytest.approx(float(want["mean_statistic"]), rel=1e-12)


def test_images_get_perturbation_curves(tmp_path):
    vit = ak.models.SaliencyViT.load()
    x = np.random.default_rng(0).standard_normal((1, 3, 56, 56)).astype(np.float32)
    ds = vit.run(x, gradients=True)
    ds["impact"] = ak.ablate(vit, x, method="mask")
    res = evaluate(ds, tmp_path, model=vit, inputs=x, bins=(0.25, 0.5), n_boot=20,
                   randomized=False)
    curves = {(r["score"], r["mode"]): r for r in res.tables["curves"]}
    assert ("raw", "deletion") in curves and ("grad_rollout", "insertion") in curves
    raw = ak.attention_scores(ds, "raw").isel(layer=-1)
    want = ak.perturbation_curve(vit, x, raw, mode="insertion",
                                 fractions=np.linspace(0, 1, 11))
    assert curves["raw", "insertion"]["area"] == pytest.approx(float(want["area"][0]), rel=1e-9)
    assert res.results["curve"].dims == ("score", "mode", "sample", "fraction")
    assert (tmp_path / "perturbation.png").stat().st_size > 0
    assert "length" not in {r["score"] for r in res.tables["faithfulness"]}  # patches: no text


def test_errors(minilm, sentences):
    with pytest.raises(ValueError, match="an `impact` variable"):
        evaluate(sentences.drop_vars("impact"), model=minilm)
    with pytest.raises(ValueError, match="samples: expected"):
        evaluate(sentences, model=minilm, samples=0)


def test_cli_evaluate(sentences, tmp_path):
    from attnkit_cli.main import cli

    path = tmp_path / "ds.nc"
    ak.save_dataset(sentences, path)
    out = tmp_path / "ev"
    result = CliRunner().invoke(cli, ["evaluate", str(path), "-o", str(out), "--samples", "2",
                                      "--no-randomized", "--no-figures", "--format", "json",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output == ""  # --quiet: no step lines and no progress bars
    assert (out / "evaluation.md").exists() and not (out / "faithfulness.png").exists()
    bad = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "missing.nc")])
    assert bad.exit_code != 0 and "missing.nc" in bad.output
