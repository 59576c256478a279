"""CUDA exact weights and streaming statistics in the simulator vs the float64 reference."""

import numpy as np
import pytest
from numba import cuda

import attnkit as ak
import reference as ref
from sim_helpers import randn, tiling

STAT_TOL = dict(atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("name", ["2x4", "1x4", "2x8"])
def test_weights_match_reference(rng, name):
    q, k = randn(rng, 2, 2, 9, 6), randn(rng, 2, 1, 13, 6)
    kw = dict(mask=ak.masks.local(5) | ak.masks.global_tokens([3]),
              q_lengths=np.array([9, 7]), kv_lengths=np.array([9, 13]))
    with tiling(name):
        w = ak.attention_weights(q, k, backend="cuda", **kw)
    expected, _ = ref.weights(q, k, **kw)
    assert w.shape == (2, 2, 9, 13) and w.dtype == np.float32
    np.testing.assert_allclose(w, expected, atol=1e-6, rtol=0)
    assert (w[1, :, 7:] == 0).all()  # padded queries
    assert (w[0, :, :, 9:] == 0).all()  # padded keys


def test_weights_with_score_mod_rows_sum_to_one(rng):
    q, k = randn(rng, 2, 9, 4) * 3, randn(rng, 2, 12, 4)
    mod = ak.positional.soft_cap(2.0)
    with tiling("2x4"):
        w = ak.attention_weights(q, k, causal=True, score_mod=mod, backend="cuda")
    expected, _ = ref.weights(q, k, causal=True, score_mod=mod)
    np.testing.assert_allclose(w, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)


def test_weights_float64(rng):
    q, k = rng.standard_normal((7, 5)), rng.standard_normal((10, 5))
    with tiling("2x4"):
        w = ak.attention_weights(q, k, mask=ak.masks.strided(2), backend="cuda")
    expected, _ = ref.weights(q, k, mask=ak.masks.strided(2))
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, expected, atol=1e-14, rtol=0)


def _check_stats(st, expected, topk):
    keys = {"entropy", "received", "max", "argmax", "distance"}
    if topk:
        keys |= {"topk_index", "topk_value"}
    assert set(st) == keys
    for key in ("entropy", "received", "max", "distance", "topk_value"):
        if key in st:
            assert st[key].dtype == np.float64
            np.testing.assert_allclose(st[key], expected[key], err_msg=key, **STAT_TOL)
    for key in ("argmax", "topk_index"):
        if key in st:
            assert st[key].dtype == np.int64
            np.testing.assert_array_equal(st[key], expected[key], err_msg=key)


@pytest.mark.parametrize("name,topk", [("2x4", 3), ("1x4", 1), ("2x8", 2)])
def test_stats_match_reference(rng, name, topk):
    q, k = randn(rng, 2, 1, 11, 5) * 2, randn(rng, 2, 1, 13, 5)
    kw = dict(mask=ak.masks.local(6) & ak.masks.causal(2), q_lengths=np.array([11, 8]),
              kv_lengths=np.array([13, 7]))
    with tiling(name):
        st = ak.attention_stats(q, k, backend="cuda", topk=topk, **kw)
    p, _ = ref.weights(q, k, **kw)
    _check_stats(st, ref.stats(p, topk=topk), topk)


@pytest.mark.parametrize("mask_name", ["strided", "block_sparse", "global"])
def test_stats_with_general_masks_and_gqa(rng, mask_name):
    mask = {"strided": ak.masks.strided(3),
            "block_sparse": ak.masks.block_sparse(rng.random((5, 5)) < 0.5, 4),
            "global": ~ak.masks.global_tokens([1, 6])}[mask_name]
    q, k = randn(rng, 4, 11, 4), randn(rng, 2, 14, 4)  # 4 query heads on 2 kv heads
    with tiling("2x4"):
        st = ak.attention_stats(q, k, mask=mask, topk=2, backend="cuda")
    p, _ = ref.weights(q, k, mask=mask)
    _check_stats(st, ref.stats(p, topk=2), 2)


def test_topk_longer_than_the_keys_pads_with_minus_one(rng):
    q, k = randn(rng, 5, 4), randn(rng, 3, 4)
    with tiling("2x4"):
        st = ak.attention_stats(q, k, topk=5, causal=True, backend="cuda")
    p, _ = ref.weights(q, k, causal=True)
    _check_stats(st, ref.stats(p, topk=5), 5)
    assert (st["topk_index"][0, 1:] == -1).all() and (st["topk_value"][0, 1:] == 0).all()


def test_stats_with_score_mod_and_fully_masked_rows(rng):
    q, k = randn(rng, 2, 8, 4), randn(rng, 2, 10, 4)
    mod = ak.positional.alibi(ak.positional.alibi_slopes(2))
    kw = dict(mask=ak.masks.causal(-2), score_mod=mod)
    with tiling("2x4"):
        st = ak.attention_stats(q, k, topk=2, backend="cuda", **kw)
    p, _ = ref.weights(q, k, **kw)
    _check_stats(st, ref.stats(p, topk=2), 2)
    assert (st["argmax"][:, :2] == -1).all() and (st["entropy"][:, :2] == 0).all()


def test_stat_subsets_match_the_cpu_backend(rng):
    q, k = randn(rng, 3, 9, 4), randn(rng, 3, 11, 4)
    with tiling("2x4"):
        received = ak.attention_stats(q, k, stats="received", backend="cuda")
        maxima = ak.attention_stats(q, k, stats=("max",), backend="cuda")
    assert set(received) == {"received"} and set(maxima) == {"max", "argmax"}
    cpu = ak.attention_stats(q, k, backend="cpu")
    np.testing.assert_allclose(received["received"], cpu["received"], atol=2e-6)
    np.testing.assert_allclose(maxima["max"], cpu["max"], atol=2e-6)
    np.testing.assert_array_equal(maxima["argmax"], cpu["argmax"])


def test_stats_of_device_arrays_stay_on_device(rng):
    q, k = randn(rng, 2, 7, 4), randn(rng, 2, 9, 4)
    with tiling("2x4"):
        st = ak.attention_stats(cuda.to_device(q), cuda.to_device(k), topk=2)
        w = ak.attention_weights(cuda.to_device(q), cuda.to_device(k))
    assert all(hasattr(x, "copy_to_host") for x in st.values()) and hasattr(w, "copy_to_host")
    p, _ = ref.weights(q, k)
    expected = ref.stats(p, topk=2)
    np.testing.assert_allclose(st["entropy"].copy_to_host(), expected["entropy"], **STAT_TOL)
    np.testing.assert_array_equal(st["topk_index"].copy_to_host(), expected["topk_index"])
    np.testing.assert_allclose(w.copy_to_host(), p, atol=1e-6)
