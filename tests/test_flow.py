"""ak.attention_flow against networkx's maximum_flow_value, closed forms and flow bounds."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import attnkit as ak

EDMONDS_KARP = nx.algorithms.flow.edmonds_karp
PREFLOW_PUSH = nx.algorithms.flow.preflow_push


def random_attention(rng, shape, zeros=0.3, ties=False):
    """Row-stochastic attention with exact zeros; ``ties`` rounds weights to quarters."""
    a = rng.random(shape) ** 2
    a[rng.random(shape) < zeros] = 0.0
    if ties:
        a = np.round(a * 4) / 4
    if shape[-1]:
        a[..., 0] += (a.sum(-1) == 0)  # no all-zero rows unless a test makes them
    return a / np.maximum(a.sum(-1, keepdims=True), 1e-300)


def networkx_flow(aug, flow_func=EDMONDS_KARP):
    """Raw flow values (n, n) of one sample's Ã (L, n, n) on the reference's full graph.

    Nodes (layer, position) for layers 0..L, an edge (l + 1, i) -> (l, j) with
    capacity Ã_l[i, j] (zeros included), one max-flow per (output, input) pair.
    """
    n_layers, n, _ = aug.shape
    graph = nx.DiGraph()
    for layer in range(n_layers):
        for i in range(n):
            for j in range(n):
                graph.add_edge((layer + 1, i), (layer, j), capacity=float(aug[layer, i, j]))
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = nx.maximum_flow_value(graph, (n_layers, i), (0, j), flow_func=flow_func)
    return out


def normalized_rows(raw):
    total = raw.sum(-1, keepdims=True)
    return np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)


@pytest.mark.parametrize("residual, fusion, ties", [
    (0.5, "mean", False), (0.5, "mean", True), (0.0, "mean", True), (0.0, "max", False),
    (0.2, "min", True),
])
def test_matches_networkx_edmonds_karp(rng, residual, fusion, ties):
    for _ in range(3):
        n_layers, n = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        a = random_attention(rng, (n_layers, 3, n, n), zeros=0.4, ties=ties)
        aug = ak.augmented_attention(a, residual=residual, head_fusion=fusion)
        expected = networkx_flow(aug)
        raw = ak.attention_flow(a, residual=residual, head_fusion=fusion, normalize=False)
        np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ak.attention_flow(a, residual=residual, head_fusion=fusion),
                                   normalized_rows(expected), rtol=0, atol=1e-8)


def test_matches_networkx_preflow_push_on_a_deeper_graph(rng):
    # Deep and sparse: augmenting paths must cancel flow through reverse edges.
    a = random_attention(rng, (6, 2, 7, 7), zeros=0.7, ties=True)
    aug = ak.augmented_attention(a, residual=0.0)
    np.testing.assert_allclose(ak.attention_flow(a, residual=0.0, normalize=False),
                               networkx_flow(aug, PREFLOW_PUSH), rtol=0, atol=1e-9)


def test_reverse_edges_are_needed():
    # The first path found, (3,0) -> (2,0) -> (1,0) -> (0,0), fills the only edge from (1,0)
    # to the sink; the second half unit needs that flow rerouted through (2,0) -> (1,1).
    aug = np.zeros((3, 2, 2))
    aug[2] = [[0.5, 0.5], [0.0, 0.0]]
    aug[1] = [[0.5, 0.5], [1.0, 0.0]]
    aug[0] = [[0.5, 0.5], [0.5, 0.5]]
    a = aug[:, None]  # one head; residual 0 keeps Ã = aug
    np.testing.assert_array_equal(ak.augmented_attention(a, residual=0.0), aug)
    raw = ak.attention_flow(a, residual=0.0, normalize=False)
    np.testing.assert_allclose(raw, networkx_flow(aug), atol=1e-12)
    assert raw[0, 0] == pytest.approx(1.0)


def test_one_layer_flow_is_the_augmented_row(rng):
    a = random_attention(rng, (3, 1, 4, 9, 9))
    aug = ak.augmented_attention(a, residual=0.3)[:, 0]
    np.testing.assert_allclose(ak.attention_flow(a, residual=0.3, normalize=False), aug,
                               rtol=0, atol=1e-15)
    np.testing.assert_allclose(ak.attention_flow(a, residual=0.3), aug, rtol=1e-12)


def test_two_layer_flow_closed_form(rng):
    # Source (2, i), sink (0, j): disjoint paths i -> k -> j, so flow = sum_k min(Ã1[i,k], Ã0[k,j]).
    a = random_attention(rng, (2, 2, 20, 20), zeros=0.5, ties=True)
    aug = ak.augmented_attention(a)
    expected = np.minimum(aug[1][:, :, None], aug[0][None, :, :]).sum(axis=1)
    np.testing.assert_allclose(ak.attention_flow(a, normalize=False), expected, atol=1e-12)


def widest_path(aug):
    """Bottleneck of the best single path from each output to each input (a lower bound)."""
    width = aug[-1]
    for layer in range(aug.shape[0] - 2, -1, -1):
        width = np.max(np.minimum(width[:, :, None], aug[layer][None, :, :]), axis=1)
    return width


def test_flow_between_path_and_cut_bounds(rng):
    a = random_attention(rng, (2, 5, 3, 12, 12), zeros=0.5)
    aug = ak.augmented_attention(a, residual=0.4)
    raw = ak.attention_flow(a, residual=0.4, normalize=False)
    out_capacity = aug[:, -1].sum(-1)[:, :, None]   # edges leaving the source
    in_capacity = aug[:, 0].sum(-2)[:, None, :]     # edges entering the sink
    tol = 1e-12
    assert (raw <= np.minimum(out_capacity, in_capacity) + tol).all()
    assert (raw <= 1 + tol).all() and (raw >= 0).all()
    for s in range(2):
        assert (raw[s] >= widest_path(aug[s]) - tol).all()


def test_rows_normalised_and_zero_rows_stay_zero(rng):
    a = random_attention(rng, (3, 2, 6, 6))
    a[-1, :, 2, :] = 0.0  # output 2 attends nowhere in the top layer: no flow leaves it
    flow = ak.attention_flow(a, residual=0.0)
    np.testing.assert_array_equal(flow[2], 0.0)
    rows = np.delete(flow, 2, axis=0)
    np.testing.assert_allclose(rows.sum(-1), 1.0, rtol=1e-12)


def test_full_residual_is_identity(rng):
    a = random_attention(rng, (3, 2, 5, 5))
    np.testing.assert_allclose(ak.attention_flow(a, residual=1.0), np.eye(5), atol=1e-15)


def test_lengths_respected(rng):
    n, lengths = 7, [7, 4, 1, 0]
    a = np.full((4, 3, 2, n, n), np.nan)
    for s, length in enumerate(lengths):
        a[s, :, :, :length, :length] = random_attention(rng, (3, 2, length, length))
    flow = ak.attention_flow(a, lengths=lengths)
    for s, length in enumerate(lengths):
        if length:
            alone = ak.attention_flow(a[s, :, :, :length, :length])
            np.testing.assert_array_equal(flow[s, :length, :length], alone)
        assert np.isnan(flow[s, length:, :]).all() and np.isnan(flow[s, :, length:]).all()


def test_sources_subset_and_negative_positions(rng):
    a = random_attention(rng, (2, 4, 2, 8, 8), ties=True)
    full = ak.attention_flow(a)
    part = ak.attention_flow(a, sources=[1, -1, 1], lengths=[8, 5])
    np.testing.assert_array_equal(part[0, [1, 7]], full[0, [1, 7]])
    assert np.isnan(np.delete(part[0], [1, 7], axis=0)).all()
    # Sample 1 has 5 valid tokens: source 7 is padding there, source 1 is recomputed on 5.
    np.testing.assert_allclose(part[1, 1, :5], ak.attention_flow(a[1, :, :, :5, :5])[1], atol=1e-15)
    assert np.isnan(part[1, 7]).all()
    single = ak.attention_flow(a[0], sources=3)
    np.testing.assert_array_equal(single[3], full[0, 3])
    assert np.isnan(ak.attention_flow(a, sources=[])).all()


def test_leading_batch_dims_and_float32(rng):
    a = random_attention(rng, (2, 3, 3, 2, 6, 6))
    flow = ak.attention_flow(a.astype(np.float32))
    assert flow.shape == (2, 3, 6, 6) and flow.dtype == np.float64
    np.testing.assert_allclose(flow[1, 2], ak.attention_flow(a[1, 2]), atol=1e-6)


def test_head_fusion_and_discard_ratio_reach_the_capacities(rng):
    a = random_attention(rng, (3, 4, 6, 6))
    for options in (dict(head_fusion="max"), dict(discard_ratio=0.5)):
        aug = ak.augmented_attention(a, **options)
        np.testing.assert_allclose(ak.attention_flow(a, normalize=False, **options),
                                   networkx_flow(aug), atol=1e-9)


def ragged_dataset(rng, lengths=(6, 3, 5), n_layers=3, n_heads=2):
    parts = [random_attention(rng, (n_layers, n_heads, m, m), ties=True) for m in lengths]
    return ak.from_arrays(parts)


def test_xarray_dataset_and_dask_chunks_match_numpy(rng):
    pytest.importorskip("dask")
    ds = ragged_dataset(rng)
    expected = ak.attention_flow(ds.attention.values, lengths=ds.length.values, sources=[0, 2])
    flow = ak.attention_flow(ds, sources=[0, 2])
    assert flow.name == "flow" and flow.dims == ("sample", "query", "key")
    np.testing.assert_array_equal(flow.values, expected)
    lazy = ak.attention_flow(ds.chunk({"sample": 1}), sources=[0, 2])
    assert lazy.chunks is not None  # still a dask graph
    np.testing.assert_array_equal(lazy.compute().values, expected)
    np.testing.assert_array_equal(ak.attention_flow(ds.attention.isel(sample=0)).values,
                                  ak.attention_flow(ds.attention.values[0]))


def test_local_cluster_matches_in_process(rng):
    """Two worker processes (threads_per_worker=1) give the in-process numbers exactly."""
    distributed = pytest.importorskip("distributed")
    ds = ragged_dataset(rng, lengths=(5, 4), n_layers=2)
    expected = ak.attention_flow(ds).values
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        got = ak.attention_flow(ds.chunk({"sample": 1})).compute().values
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(attn=np.ones((3, 3, 3))), ValueError, r"attn: expected shape \(\.\.\., layer, head"),
    (dict(attn=np.ones((1, 1, 3, 4))), ValueError, r"attn: expected shape"),
    (dict(attn=-np.ones((1, 1, 3, 3))), ValueError, "non-negative weights"),
    (dict(attn=np.ones((1, 1, 3, 3), dtype=int)), TypeError, "attn: expected float"),
    (dict(sources=[3]), ValueError, r"sources: expected positions in \[-3, 3\), got 3"),
    (dict(sources=[-4]), ValueError, "sources: expected positions"),
    (dict(sources=[0.5]), ValueError, "sources: expected an int position"),
    (dict(sources=[[0]]), ValueError, "sources: expected an int position"),
    (dict(residual=1.5), ValueError, r"residual: expected a number in \[0, 1\]"),
    (dict(head_fusion="median"), ValueError, "head_fusion: expected 'mean', 'max' or 'min'"),
    (dict(normalize="yes"), ValueError, "normalize: expected True or False"),
    (dict(lengths=[4]), ValueError, "lengths"),
])
def test_bad_input_errors(kwargs, error, message):
    kwargs = dict(kwargs)
    attn = kwargs.pop("attn", np.full((1, 1, 3, 3), 1 / 3))
    with pytest.raises(error, match=message):
        ak.attention_flow(attn, **kwargs)


def test_bad_sources_fail_before_dask_runs(rng):
    pytest.importorskip("dask")
    ds = ragged_dataset(rng).chunk({"sample": 1})
    with pytest.raises(ValueError, match="sources: expected positions"):
        ak.attention_flow(ds, sources=[99])


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 6), layers=st.integers(1, 4), residual=st.sampled_from([0.0, 0.3, 0.5]),
       ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_property_matches_networkx_and_rows_sum_to_one(n, layers, residual, ties, seed):
    a = random_attention(np.random.default_rng(seed), (layers, 2, n, n), zeros=0.5, ties=ties)
    raw = ak.attention_flow(a, residual=residual, normalize=False)
    np.testing.assert_allclose(raw, networkx_flow(ak.augmented_attention(a, residual=residual)),
                               atol=1e-9)
    flow = ak.attention_flow(a, residual=residual)
    sums = flow.sum(-1)
    assert np.all((np.abs(sums - 1) < 1e-12) | (sums == 0))
