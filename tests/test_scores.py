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
    s = ak.attention_scores(ds, "raw", layers=[0, 2], query=1)
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
    full = ak.attention_scores(ds, kind, query=4, head_fusion="max")
    some = ak.attention_scores(ds, kind, layers=[-1, 1], query=4, head_fusion="max")
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
    with pytest.raises(ValueError, match=r"query: expected a position in \[0, 6\)"):
        ak.attention_scores(ds, "raw", query=6)
    with pytest.raises(ValueError, match=r"gradient"):
        ak.attention_scores(ds.drop_vars("gradient"), "grad")
