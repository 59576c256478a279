"""ak.attention_scores: raw, rollout, flow and grad rows per layer."""

import numpy as np
import pytest

import attnkit as ak


@pytest.fixture
def ds(rng):
    lengths = [6, 4]
    samples, grads = [], []
    for m in lengths:
        a = rng.random((3, 2, m, m))
        samples.append(a / a.sum(-1, keepdims=True))
        grads.append(rng.standard_normal((3, 2, m, m)))
    return ak.from_arrays(samples, gradient=grads)


def test_raw_is_head_mean_of_the_layer(ds):
    s = ak.attention_scores(ds, "raw", layers=[0, 2], target=1)
    a = ds.attention.values
    np.testing.assert_allclose(s.values[0, 1], a[0, 2, :, 1, :].mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.values[1, 0, :4], a[1, 0, :, 1, :4].mean(0), rtol=1e-12)
    assert np.isnan(s.values[1, :, 4:]).all()
    assert list(s.layer.values) == [0, 2]


@pytest.mark.parametrize("kind", ["rollout", "grad", "flow"])
def test_layer_l_uses_layers_up_to_l(ds, kind):
    s = ak.attention_scores(ds, kind, residual=0.4)
    a = np.nan_to_num(ds.attention.values)
    g = np.nan_to_num(ds.gradient.values)
    lengths = ds.length.values
    for layer in range(3):
        upto = a[:, : layer + 1]
        if kind == "rollout":
            want = ak.rollout(upto, residual=0.4, lengths=lengths)[:, 0]
        elif kind == "grad":
            want = ak.grad_rollout(upto, g[:, : layer + 1], lengths=lengths)[:, 0]
        else:
            want = ak.attention_flow(upto, sources=[0], residual=0.4, lengths=lengths)[:, 0]
        np.testing.assert_allclose(s.values[:, layer], want, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("kind", ["rollout", "grad"])
def test_layer_subset_and_query_past_a_sample(ds, kind):
    """Chosen layers pick the matching prefix; a query past a sample's length
    leaves that sample NaN."""
    full = ak.attention_scores(ds, kind, target=4, head_fusion="max")
    some = ak.attention_scores(ds, kind, layers=[-1, 1], target=4, head_fusion="max")
    np.testing.assert_array_equal(some.values, full.values[:, [2, 1]])
    a = ds.attention.values[0]
    if kind == "rollout":
        want = ak.rollout(a[:2], head_fusion="max")[4]
    else:
        want = ak.grad_rollout(a[:2], ds.gradient.values[0, :2])[4]
    np.testing.assert_allclose(full.values[0, 1], want, rtol=1e-12)
    assert np.isnan(full.values[1]).all()  # sample 1 has 4 tokens


def test_errors(ds):
    with pytest.raises(ValueError, match=r"kind: expected one of"):
        ak.attention_scores(ds, "shap")
    with pytest.raises(ValueError, match=r"layers: expected an int layer index in \[0, 3\)"):
        ak.attention_scores(ds, "raw", layers=[5])
    with pytest.raises(ValueError, match=r"target: expected a position in \[0, 6\)"):
        ak.attention_scores(ds, "raw", target=6)
    with pytest.raises(ValueError, match=r"target: expected an int position, one of"):
        ak.attention_scores(ds, "raw", target="max")
    with pytest.raises(ValueError, match=r"target: expected shape \(6,\) or \(2, 6\): weights"):
        ak.attention_scores(ds, "raw", target=np.ones(5))
    with pytest.raises(ValueError, match=r"non-negative weights at valid positions, got nan at "
                       r"sample 0, position 2"):
        ak.attention_scores(ds, "rollout", target=np.array([1, 1, np.nan, 1, 1, 1.0]))
    with pytest.raises(TypeError, match="got a bool"):
        ak.attention_scores(ds, "raw", target=True)
    bad = ds.copy()
    bad.attrs["readout"] = "pooler"
    with pytest.raises(ValueError, match=r"ds.attrs\['readout'\]: expected one of"):
        ak.attention_scores(bad, "raw")
    with pytest.raises(ValueError, match=r"gradient"):
        ak.attention_scores(ds.drop_vars("gradient"), "grad")


@pytest.mark.parametrize("kind", ["raw", "rollout", "grad"])
def test_mean_target_is_the_mean_of_the_rows(ds, kind):
    """target="mean" reads every valid output row with weight 1/n: the mean of
    the rows of raw attention / rollout / grad rollout up to each layer."""
    s = ak.attention_scores(ds, kind, target="mean", residual=0.3)
    assert s.attrs["target"] == "mean"
    a = np.nan_to_num(ds.attention.values)
    g = np.nan_to_num(ds.gradient.values)
    for sample, m in enumerate(ds.length.values):
        for layer in range(3):
            if kind == "raw":
                rows = a[sample, layer, :, :m, :m].mean(0)
            elif kind == "rollout":
                rows = ak.rollout(a[sample, : layer + 1, :, :m, :m], residual=0.3)
            else:
                rows = ak.grad_rollout(a[sample, : layer + 1, :, :m, :m],
                                       g[sample, : layer + 1, :, :m, :m])
            np.testing.assert_allclose(s.values[sample, layer, :m], rows.mean(axis=0),
                                       rtol=1e-12)
        assert np.isnan(s.values[sample, :, m:]).all()


def test_patches_target_and_weights(ds):
    """"patches" is uniform over positions >= 1; an array of weights is
    normalised over each sample's valid positions."""
    r = ak.attention_scores(ds, "rollout", target="patches")
    full = [ak.rollout(np.nan_to_num(ds.attention.values[s, :, :, :m, :m]))
            for s, m in enumerate(ds.length.values)]
    for s, m in enumerate(ds.length.values):
        np.testing.assert_allclose(r.values[s, -1, :m], full[s][1:].mean(0), rtol=1e-12)
    w = np.array([3.0, 0, 1, 0, 0, 5])  # sample 1 (4 tokens) sees weights 3, 0, 1, 0
    got = ak.attention_scores(ds, "rollout", target=w)
    assert got.attrs["target"] == "weights"
    np.testing.assert_allclose(got.values[0, -1], w @ full[0] / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(got.values[1, -1, :4], w[:4] @ full[1] / 4, rtol=1e-12)


def test_readout_attr_is_the_default_target(ds):
    mean = ak.attention_scores(ds, "raw", target="mean")
    tagged = ds.copy()
    tagged.attrs["readout"] = "mean"
    np.testing.assert_array_equal(ak.attention_scores(tagged, "raw").values, mean.values)
    tagged.attrs["readout"] = "cls"
    np.testing.assert_array_equal(ak.attention_scores(tagged, "raw").values,
                                  ak.attention_scores(ds, "raw", target=0).values)


def _super_source_flow(aug, weights, m):
    """Max flow from a super-source (capacity weights[i] into top node i) to
    each input node, by networkx on the layered graph."""
    import networkx as nx

    graph = nx.DiGraph()
    n_layers = aug.shape[0]
    for layer in range(n_layers):
        for i in range(m):
            for j in range(m):
                if aug[layer, i, j] > 0:
                    graph.add_edge((layer + 1, i), (layer, j), capacity=aug[layer, i, j])
    for i in range(m):
        if weights[i] > 0:
            graph.add_edge("source", (n_layers, i), capacity=weights[i])
    values = np.array([nx.maximum_flow_value(graph, "source", (0, j)) for j in range(m)])
    return values / values.sum()


@pytest.mark.parametrize("target", ["mean", "patches", 2])
def test_flow_from_a_super_source_matches_networkx(ds, target):
    s = ak.attention_scores(ds, "flow", target=target, residual=0.4)
    aug = ak.augmented_attention(np.nan_to_num(ds.attention.values), residual=0.4,
                                 lengths=ds.length.values)
    for sample, m in enumerate(ds.length.values):
        if target == "mean":
            w = np.full(m, 1 / m)
        elif target == "patches":
            w = np.r_[0.0, np.full(m - 1, 1 / (m - 1))]
        else:
            w = np.eye(m)[target]
        for layer in (0, 2):
            want = _super_source_flow(aug[sample, : layer + 1, :m, :m], w, m)
            np.testing.assert_allclose(s.values[sample, layer, :m], want, atol=1e-9)
    if target == 2:  # one position: Abnar & Zuidema's flow from that output node
        want = ak.attention_flow(ds, sources=[2], residual=0.4).values[:, 2]
        np.testing.assert_allclose(s.values[:, -1], want, atol=1e-12)


def test_cls_flow_on_minilm_is_the_first_layers_cls_row_up_to_an_affine_map():
    """paper.md and README: on the shipped MiniLM sentences, flow from [CLS] at the last layer
    is a constant plus a multiple of layer 0's [CLS] row (254 of 270 sentences), so its
    ranking says nothing about flow as a method; the read-out's super-source flow is not."""
    ds = ak.datasets.open("minilm").isel(sample=slice(0, 60))
    layer0 = ak.attention_scores(ds, "raw", target=0, layers=[0]).values[:, 0]
    affine = {}
    for target in (0, "mean"):
        flow = ak.attention_scores(ds, "flow", target=target, layers=[-1]).values[:, 0]
        hits = 0
        for s, n in enumerate(ds.length.values):
            x, y = layer0[s, 1:n], flow[s, 1:n]
            design = np.c_[np.ones_like(x), x]
            coef = np.linalg.lstsq(design, y, rcond=None)[0]
            hits += np.abs(design @ coef - y).max() < 1e-9
        affine[target] = hits / ds.sizes["sample"]
    assert affine[0] > 0.85, affine
    assert affine["mean"] < 0.1
