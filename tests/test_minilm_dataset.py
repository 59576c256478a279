"""The shipped MiniLM dataset (datasets/minilm/) matches its sentences, the model and its README."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

import attnkit as ak

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "datasets" / "minilm"


@pytest.fixture(scope="module")
def ds():
    return ak.open_dataset(FOLDER / "minilm.nc")


@pytest.fixture(scope="module")
def texts():
    return (FOLDER / "sentences.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def model():
    return ak.models.MiniLM.load()


def test_files_are_small_and_valid(ds):
    total = sum(p.stat().st_size for p in (ROOT / "datasets").rglob("*") if p.is_file())
    assert total < 60e6, total  # the budget of all shipped data
    ak.validate(ds, atol=1e-6)
    assert ds.attrs["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ds.attrs["position_embeddings"] == 1
    assert ds.attrs["readout"] == "mean"
    assert ds.attrs["gradient_target"].startswith("self")
    assert {"attention", "length", "embedding", "impact", "gradient", "attribution"} <= set(
        ds.data_vars)
    assert ds.impact.method.values.tolist() == ["delete", "mask"]
    assert ds.embedding.dims == ("sample", "feature")
    assert ds.impact.attrs["special"] == "computed"


def test_sentences_sources_and_lengths(ds, texts):
    with open(FOLDER / "sources.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == len(texts) == ds.sizes["sample"] >= 200
    assert [int(r["line"]) for r in rows] == list(range(1, len(texts) + 1))
    groups = {r["group"] for r in rows}
    assert groups == {"ewt", "agreement", "classic"}
    for r in rows:
        assert r["licence"] == ("CC BY-SA 4.0" if r["group"] == "ewt" else "CC0-1.0")
    assert ds.text.values.tolist() == texts
    lengths = ds.length.values
    assert lengths.min() >= 5 and lengths.max() <= 64
    assert "The cat sat on the mat." in texts
    assert "The keys to the cabinet are on the table." in texts


def test_attention_rows_sum_to_one_on_the_quantisation_grid(ds):
    att = ds.attention.values[:20].astype(np.float64)
    valid = ~np.isnan(att)
    grid = att[valid] * 2**16
    np.testing.assert_array_equal(grid, np.round(grid))
    sums = np.nansum(att, axis=-1)
    rows = valid.any(-1)
    np.testing.assert_array_equal(sums[rows], 1.0)


def test_gradients_are_rounded_and_attributions_complete(ds):
    g = ds.gradient.values[:20]
    bits = g[np.isfinite(g)].view(np.uint32)
    assert np.all(bits & np.uint32((1 << 15) - 1) == 0)  # 8 mantissa bits kept
    a = ds.attribution
    assert a.attribution_method.values.tolist() == [
        "input_x_gradient", "integrated_gradients", "grad_rollout"]
    assert a.attrs["steps"] == 64 and a.attrs["baseline"] == "zero"
    # integrated gradients sum to T(x) - T(baseline) within 1% on every shipped sentence
    assert a.attrs["completeness_relative_error"] < 0.01
    lengths = ds.length.values
    valid = np.arange(ds.sizes["position"])[None, :] < lengths[:, None]
    assert np.array_equal(np.isfinite(a.values[..., 0]), valid)


def test_samples_match_the_model(ds, texts, model):
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(texts), size=3, replace=False))
    fresh = model.run([texts[i] for i in chosen], qk=False, gradients=True)
    for j, i in enumerate(chosen):
        n = int(ds.length[i])
        assert int(fresh.length[j]) == n
        assert ds.token.values[i, :n].tolist() == fresh.token.values[j, :n].tolist()
        err = np.abs(ds.attention.values[i, :, :, :n, :n] - fresh.attention.values[j, :, :, :n, :n])
        assert err.max() <= 2.0**-16 + 1e-5  # quantisation + float32 rounding
        np.testing.assert_allclose(ds.embedding.values[i], fresh.embedding.values[j], atol=1e-5)
        g_ref = fresh.gradient.values[j, :, :, :n, :n]
        g_err = np.abs(ds.gradient.values[i, :, :, :n, :n] - g_ref)
        assert np.all(g_err <= 2.0**-9 * np.abs(g_ref) + 1e-6 * np.abs(g_ref).max())
    attribution = ak.attribute(model, fresh, method=("input_x_gradient", "integrated_gradients",
                                                     "grad_rollout"), steps=64)
    np.testing.assert_allclose(ds.attribution.values[chosen][:, : attribution.sizes["position"]],
                               attribution.values, rtol=1e-4, atol=1e-5)
    impact = ak.ablate(model, fresh, method=("delete", "mask"), special="compute")
    np.testing.assert_allclose(ds.impact.values[chosen][:, : impact.sizes["position"]],
                               impact.values, atol=2e-6)


def test_make_script_helpers():
    sys.path.insert(0, str(ROOT / "datasets"))
    try:
        import make_minilm_dataset as make
    finally:
        sys.path.pop(0)
    rows = make.agreement_sentences()
    assert len(rows) == 4 * (len(make.PP_FRAMES) + len(make.RC_FRAMES))
    assert ("The keys to the cabinet are on the table.", "agreement-pp:PS") in rows
    assert make.is_clean("Google is a nice search engine.")
    assert not make.is_clean("see http://example.com now.")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 9)) * 4
    p = np.exp(x)
    p /= p.sum(-1, keepdims=True)
    q = make.quantize_rows(p.astype(np.float32))
    assert np.abs(q - p).max() < 2.0**-16
    np.testing.assert_array_equal(q.astype(np.float64).sum(-1), 1.0)
    g = (rng.standard_normal(1000) * 10.0 ** rng.uniform(-8, 2, 1000)).astype(np.float32)
    g[:3] = [np.nan, 0.0, -0.0]
    r = make.round_mantissa(g, 8)
    assert np.isnan(r[0]) and r[1] == 0.0
    rel = np.abs(r[3:] / g[3:] - 1)
    assert rel.max() <= 2.0**-9 and rel.max() > 2.0**-12  # nearest, not truncation or a no-op
