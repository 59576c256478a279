"""Rollout rows streamed from per-layer q/k (no n x n storage) vs rollout of the stored weights."""

import numpy as np
import pytest
from numba import cuda

import attnkit as ak
from rollout_rows_cases import CASES, check_case, stored_rollout_rows
from sim_helpers import randn, tiling


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_empty_rows_padding_and_start_layer_match_the_cpu_contract(rng, case):
    with tiling("2x4"):
        check_case(rng, case, "cuda", dtype=np.float32, atol=2e-6)


@pytest.mark.parametrize("residual,start", [(0.5, 0), (0.0, 1), (0.8, -1)])
def test_rows_match_the_rollout_of_stored_weights(rng, residual, start):
    q, k = randn(rng, 2, 3, 2, 10, 4), randn(rng, 2, 3, 2, 10, 4)  # (sample, layer, head, n, d)
    lengths = np.array([10, 7])
    rows = [0, 6, 9]
    with tiling("2x4"):
        got = ak.rollout_rows(q, k, rows, residual=residual, start_layer=start, causal=True,
                              lengths=lengths, backend="cuda")
    expected = stored_rollout_rows(q, k, rows, lengths, residual, start, causal=True)
    assert got.shape == (2, 3, 10)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)


def test_gqa_mask_and_many_rows_in_several_passes(rng):
    q, k = randn(rng, 1, 2, 4, 12, 4), randn(rng, 1, 2, 2, 12, 4)  # 4 query heads on 2 kv heads
    rows = list(range(10))  # more rows than one pass carries
    mask = ak.masks.local(4) | ak.masks.global_tokens([0])
    with tiling("2x4"):
        got = ak.rollout_rows(q, k, rows, mask=mask, backend="cuda")
    expected = stored_rollout_rows(q, k, rows, None, 0.5, 0, mask=mask)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)  # rollout rows stay stochastic


def test_fully_masked_rows_pass_their_weight_through(rng):
    q, k = randn(rng, 1, 2, 2, 8, 4), randn(rng, 1, 2, 2, 8, 4)
    mask = ak.masks.causal(-2)  # queries 0 and 1 see no key
    with tiling("2x4"):
        got = ak.rollout_rows(q, k, [1, 5], mask=mask, backend="cuda")
    expected = stored_rollout_rows(q, k, [1, 5], None, 0.5, 0, mask=mask)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=0)


def test_single_sample_on_device(rng):
    q, k = randn(rng, 2, 2, 9, 4), randn(rng, 2, 2, 9, 4)  # (layer, head, n, d)
    with tiling("2x4"):
        got = ak.rollout_rows(cuda.to_device(q), cuda.to_device(k), [3], causal=True, lengths=7)
    assert hasattr(got, "copy_to_host")
    expected = stored_rollout_rows(q[None], k[None], [3], np.array([7]), 0.5, 0, causal=True)[0]
    np.testing.assert_allclose(got.copy_to_host(), expected, atol=2e-6, rtol=0)
