"""ak.attention_sinks against a loop reference, on arrays, datasets and planted sink heads."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit as ak


def _random_dataset(rng, lengths, layers=3, heads=2):
    attention = []
    for n in lengths:
        e = np.exp(3 * rng.standard_normal((layers, heads, n, n)))
        attention.append(e / e.sum(-1, keepdims=True))
    tokens = [[f"t{i}" for i in range(n)] for n in lengths]
    return ak.from_arrays(attention, tokens=tokens)


def _reference_share(a, length, by_head):
    """Received share by explicit loops in float64: sum over queries, divided by the length."""
    layers, heads = a.shape[:2]
    share = np.zeros((layers, heads, length))
    for layer in range(layers):
        for h in range(heads):
            for j in range(length):
                share[layer, h, j] = sum(float(a[layer, h, i, j]) for i in range(length)) / length
    return share if by_head else share.mean(axis=1)


@pytest.mark.parametrize("by_head", [False, True])
def test_shares_and_sinks_match_a_loop_reference(rng, by_head):
    lengths = [7, 1, 12, 5]
    ds = _random_dataset(rng, lengths)
    sinks = ak.attention_sinks(ds, ratio=1.5, by_head=by_head)
    for s, n in enumerate(lengths):
        a = ds.attention.values[s]
        expected = _reference_share(a, n, by_head)
        got = sinks.share.values[s][..., :n]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
        assert np.isnan(sinks.share.values[s][..., n:]).all()
        np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(sinks.is_sink.values[s][..., :n], expected >= 1.5 / n)
        assert not sinks.is_sink.values[s][..., n:].any()
        np.testing.assert_array_equal(sinks.top_sink.values[s], expected.argmax(-1))
        np.testing.assert_allclose(sinks.top_share.values[s], expected.max(-1), rtol=1e-12)
        np.testing.assert_allclose(sinks.sink_share.values[s],
                                   np.where(expected >= 1.5 / n, expected, 0).sum(-1), rtol=1e-12)
        np.testing.assert_array_equal(sinks.n_sinks.values[s], (expected >= 1.5 / n).sum(-1))
    assert sinks.key_token.values[2, 3] == "t3" and sinks.attrs["ratio"] == 1.5


def test_arrays_with_lengths_give_the_dataset_answer(rng):
    lengths = [6, 3, 9]
    ds = _random_dataset(rng, lengths)
    from_dataset = ak.attention_sinks(ds)
    padded = np.nan_to_num(ds.attention.values)  # arrays: zeros in the padding
    from_array = ak.attention_sinks(padded, lengths=lengths)
    np.testing.assert_array_equal(from_array.share.values, from_dataset.share.values)
    np.testing.assert_array_equal(from_array.top_sink.values, from_dataset.top_sink.values)
    from_dataarray = ak.attention_sinks(ds.attention, lengths=ds.length)
    np.testing.assert_array_equal(from_dataarray.is_sink.values, from_dataset.is_sink.values)


def test_planted_cls_and_sep_sink_heads_are_found():
    ds = ak.datasets.open("planted").load()
    sinks = ak.attention_sinks(ds, by_head=True)
    role = ds["role"].values
    tokens = ds.token.values
    for layer, head in zip(*np.nonzero(np.isin(role, ["cls-sink", "sep-sink"]))):
        top = sinks.top_sink.values[:, layer, head]
        found = np.array([tokens[s, t] for s, t in enumerate(top)])
        wanted = "[CLS]" if role[layer, head] == "cls-sink" else "[SEP]"
        assert (found == wanted).all(), (layer, head, set(found))
        assert (sinks.n_sinks.values[:, layer, head] >= 1).all()
    uniform = np.nonzero(role == "uniform")
    assert (sinks.n_sinks.values[:, uniform[0], uniform[1]] == 0).all()


@pytest.mark.parametrize("ratio", [0, -1, float("nan"), True, "5"])
def test_bad_ratio_names_the_fix(ratio):
    with pytest.raises(ValueError, match="ratio: expected a positive number.*ratio=5"):
        ak.attention_sinks(np.full((1, 1, 2, 2), 0.5), ratio=ratio)


def test_the_documented_minilm_figures():
    """docs/interpretation.md: on the first 20 shipped sentences [CLS] is the top sink of every
    layer, with a mean share of 29% in layer 0 and 54-65% in layers 1-5."""
    ds = ak.datasets.open("minilm").isel(sample=slice(0, 20)).load()
    sinks = ak.attention_sinks(ds)
    assert (sinks.top_sink.values == 0).all() and (ds.token.values[:, 0] == "[CLS]").all()
    mean_share = sinks.top_share.mean("sample").values
    assert round(float(mean_share[0]), 2) == 0.29
    assert (mean_share[1:] >= 0.535).all() and (mean_share[1:] < 0.655).all()
