"""Results computed from a dataset keep its labels: tokens, layer and head indices."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit as ak

TOKENS = [["[CLS]", "the", "cat", "sat", "[SEP]"], ["[CLS]", "dogs", "[SEP]"],
          ["[CLS]", "a", "b", "c", "d", "e", "[SEP]"]]


@pytest.fixture(scope="module")
def ds():
    rng = np.random.default_rng(7)
    attention = []
    for tokens in TOKENS:
        n = len(tokens)
        e = np.exp(rng.standard_normal((3, 2, n, n)))
        attention.append(e / e.sum(-1, keepdims=True))
    gradient = [rng.standard_normal(a.shape) for a in attention]
    return ak.from_arrays(attention, tokens=TOKENS, gradient=gradient)


def _padded(tokens, n):
    return [row + [""] * (n - len(row)) for row in tokens]


@pytest.mark.parametrize("method", ["rollout", "flow", "grad_rollout"])
def test_token_matrices_carry_query_and_key_tokens(ds, method):
    result = {"rollout": lambda: ak.rollout(ds),
              "flow": lambda: ak.attention_flow(ds),
              "grad_rollout": lambda: ak.grad_rollout(ds, ds.gradient)}[method]()
    assert result.dims == ("sample", "query", "key")
    expected = _padded(TOKENS, 7)
    assert result.query_token.values.tolist() == expected
    assert result.key_token.values.tolist() == expected
    # a label picks the same numbers as the index it names
    cat = result.isel(sample=0).where(result.key_token.isel(sample=0) == "cat", drop=True)
    np.testing.assert_array_equal(cat.values[:, 0], result.values[0, :, 2])


def test_head_statistics_carry_layer_and_head_indices(ds):
    stats = ak.head_stats(ds)
    assert stats["layer"].values.tolist() == [0, 1, 2]
    assert stats["head"].values.tolist() == [0, 1]
    entropy = stats["entropy"]
    np.testing.assert_array_equal(entropy.sel(layer=2, head=1).values,
                                  entropy.values[:, 2, 1])


def test_scores_carry_tokens_and_layers(ds):
    scores = ak.attention_scores(ds, "rollout")
    assert scores.token.values.tolist() == _padded(TOKENS, 7)
    assert scores.layer.values.tolist() == [0, 1, 2]


def test_existing_labels_are_kept_not_renumbered(ds):
    named = ds.assign_coords(layer=[10, 20, 30], head=["a", "b"])
    stats = ak.head_stats(named)
    assert stats["layer"].values.tolist() == [10, 20, 30]
    assert stats["head"].values.tolist() == ["a", "b"]


def test_a_bare_array_without_tokens_gets_index_labels_only(ds):
    result = ak.rollout(ds.attention, lengths=ds.length)
    assert "query_token" not in result.coords and "key_token" not in result.coords
    np.testing.assert_array_equal(result.values, ak.rollout(ds).values)
