"""The shipped image dataset (datasets/vision/vision.nc) against the model it came from."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit as ak

HERE = ak.datasets.folder()


@pytest.fixture(scope="module")
def ds():
    return ak.datasets.open("vision").load()


@pytest.fixture(scope="module")
def vit():
    return ak.models.SaliencyViT.load()


def test_schema_packing_and_provenance(ds):
    ak.validate(ds)
    assert ds.attrs["readout"] == "patches" and tuple(int(g) for g in ds.attrs["grid"]) == (16, 16)
    assert ds.attention.encoding["dtype"] == np.dtype("uint16")
    counts = ds.attention.values.astype(np.float64) * 2**12
    np.testing.assert_array_equal(counts, np.rint(counts))  # multiples of 2**-12 ...
    np.testing.assert_array_equal(counts.sum(-1), 2**12)    # ... rows summing to exactly 1
    assert ds.attribution["attribution_method"].values.tolist() == [
        "input_x_gradient", "gradient_norm", "grad_rollout", "gradcam"]
    assert ds["method"].values.tolist() == ["mask", "key_mask"]
    names = [line.split("\t")[0] for line in
             (HERE / "vision" / "images.tsv").read_text().splitlines()[1:]]
    assert len(names) == 8 and all((HERE / "vision" / "images" / f"{n}.jpg").is_file()
                                   for n in names)


def test_attention_saliency_and_image_match_the_model(ds, vit):
    files = [str(HERE / "vision" / "images" / f"{name}.jpg")
             for name in ("chelsea", "coffee", "astronaut")]
    assert ds.attrs["source"] == "datasets/vision/images/{chelsea,coffee,astronaut}.jpg"
    pre = vit.preprocess(files)
    np.testing.assert_array_equal(ds.image.values, pre.images)
    out = vit.forward(pre.pixels)
    assert np.abs(ds.attention.values - out.attention).max() <= 2.0**-12
    np.testing.assert_allclose(ds.saliency.values, out.saliency, atol=1e-5)


def test_impacts_and_attributions_match_the_model(ds, vit):
    one = ds.isel(sample=[1])
    impact = ak.ablate(vit, one, method=["mask", "key_mask"], positions=[5, 100],
                       special="compute")
    stored = one.impact.isel(position=[5, 100]).values
    got = impact.isel(position=[5, 100]).transpose(*one.impact.dims).values
    np.testing.assert_allclose(got, stored, rtol=1e-4, atol=1e-8)
    scores = ak.attribute(vit, one, method=["gradcam", "input_x_gradient"])
    stored = one.attribution.sel(attribution_method=["gradcam", "input_x_gradient"]).values
    got = scores.transpose("sample", "position", "attribution_method").values
    # float32 sums differ in their last bits between a batch of 3 (the file) and of 1 (here)
    scale = np.nanmax(np.abs(stored), axis=1, keepdims=True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(stored))
    assert np.nanmax(np.abs(got - stored) / scale) < 1e-3


def test_the_documented_sink_figures(ds):
    """docs/vision.md: in layer 0 [CLS] takes 16-22% and one patch 13-16%; rollout from layer 0
    puts 8-10% of its patch mass on that patch, rollout from layer 1 at most 1.4% anywhere."""
    share = ak.attention_sinks(ds).share.isel(layer=0).values
    assert (share[:, 0] >= 0.16).all() and (share[:, 0] <= 0.22).all()
    patch = share[:, 1:].max(1)
    assert (patch >= 0.13).all() and (patch <= 0.165).all()
    sink = share[:, 1:].argmax(1)
    maps = ak.patch_maps(ds, heads=False)
    from_0 = maps.sel(map="rollout").values.reshape(3, -1)
    from_1 = maps.sel(map="rollout_from_1").values.reshape(3, -1)
    on_sink = from_0[np.arange(3), sink] / from_0.sum(1)
    assert (from_0.argmax(1) == sink).all()
    assert (on_sink >= 0.08).all() and (on_sink <= 0.10).all()
    assert (from_1.max(1) / from_1.sum(1) <= 0.014).all()
