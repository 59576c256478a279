"""ak.rollout, ak.grad_rollout and ak.augmented_attention against the formulas in NumPy."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import attnkit as ak
from rollout_rows_cases import CASES, check_case


def random_attention(rng, shape, zeros=0.0):
    a = rng.random(shape)
    if zeros:
        a[rng.random(shape) < zeros] = 0.0
    if shape[-1]:
        a[..., 0] += 1e-3  # no all-zero rows
    return a / a.sum(-1, keepdims=True)


def ref_augmented(heads, fusion="mean", residual=0.5, discard=0.0):
    """Ã of one layer (H, n, n) in float64, written straight from the definition."""
    fused = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](heads, axis=0)
    n = fused.shape[0]
    count = int(np.floor(discard * n * n))
    if count:
        order = np.argsort(fused.ravel(), kind="stable")[:count]
        flat = fused.ravel().copy()
        flat[order[order != 0]] = 0.0
        fused = flat.reshape(n, n)
    a = residual * np.eye(n) + (1 - residual) * fused
    return a / a.sum(axis=1, keepdims=True)


def ref_rollout(layers, fusion="mean", residual=0.5, discard=0.0, start=0):
    result = None
    for heads in layers[start:]:
        a = ref_augmented(heads, fusion, residual, discard)
        result = a if result is None else a @ result
    return result


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [0.0, 0.5, 0.9])
def test_rollout_matches_formula(rng, fusion, residual):
    a = random_attention(rng, (3, 4, 3, 7, 7), zeros=0.3)
    got = ak.rollout(a, head_fusion=fusion, residual=residual)
    for s in range(3):
        np.testing.assert_allclose(got[s], ref_rollout(a[s], fusion, residual), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("discard", [0.1, 0.5, 0.9])
def test_rollout_discard_ratio(rng, discard):
    a = random_attention(rng, (2, 3, 2, 6, 6))
    got = ak.rollout(a, discard_ratio=discard)
    for s in range(2):
        np.testing.assert_allclose(got[s], ref_rollout(a[s], discard=discard), rtol=1e-12)


def test_rollout_start_layer_and_negative_index(rng):
    a = random_attention(rng, (5, 2, 6, 6))
    np.testing.assert_allclose(ak.rollout(a, start_layer=2), ref_rollout(a, start=2), rtol=1e-12)
    np.testing.assert_array_equal(ak.rollout(a, start_layer=-3), ak.rollout(a, start_layer=2))


def test_rollout_rows_are_stochastic_and_float32_works(rng):
    a = random_attention(rng, (2, 6, 4, 9, 9)).astype(np.float32)
    r = ak.rollout(a)
    assert r.dtype == np.float64
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(r, ak.rollout(a.astype(np.float64)), rtol=1e-6)


def test_rollout_respects_lengths(rng):
    n, lengths = 8, [8, 5, 1, 0]
    a = np.full((4, 3, 2, n, n), np.nan)
    for s, length in enumerate(lengths):
        a[s, :, :, :length, :length] = random_attention(rng, (3, 2, length, length))
    r = ak.rollout(a, lengths=lengths)
    for s, length in enumerate(lengths):
        if length:
            np.testing.assert_allclose(r[s, :length, :length],
                                       ref_rollout(a[s, :, :, :length, :length]), rtol=1e-12)
        assert np.isnan(r[s, length:, :]).all() and np.isnan(r[s, :, length:]).all()


def test_rollout_keeps_leading_batch_dims(rng):
    a = random_attention(rng, (2, 3, 2, 2, 5, 5))
    r = ak.rollout(a)
    assert r.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(r[1, 2], ref_rollout(a[1, 2]), rtol=1e-12)


def test_one_layer_rollout_is_augmented_row(rng):
    a = random_attention(rng, (1, 3, 6, 6))
    np.testing.assert_allclose(ak.rollout(a), ref_augmented(a[0]), rtol=1e-12)
    np.testing.assert_allclose(ak.augmented_attention(a)[0], ref_augmented(a[0]), rtol=1e-12)


def test_augmented_attention_padding_is_nan(rng):
    a = random_attention(rng, (2, 2, 2, 5, 5))
    out = ak.augmented_attention(a, lengths=[5, 3], residual=0.3, head_fusion="max")
    assert out.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(out[1, 1, :3, :3], ref_augmented(a[1, 1, :, :3, :3], "max", 0.3))
    assert np.isnan(out[1, :, 3:]).all()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 7), layers=st.integers(1, 4), residual=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1))
def test_rollout_rows_stochastic_property(n, layers, residual, seed):
    a = random_attention(np.random.default_rng(seed), (layers, 2, n, n), zeros=0.5)
    r = ak.rollout(a, residual=residual)
    assert (r >= 0).all()
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-10)


def ref_grad_rollout(attn, grad, start=0):
    n = attn.shape[-1]
    relevance = np.eye(n)
    for a, g in zip(attn[start:], grad[start:]):
        cam = np.clip(g * a, 0, None).mean(axis=0)
        relevance = relevance + cam @ relevance
    return relevance


def test_grad_rollout_matches_formula(rng):
    a = random_attention(rng, (2, 4, 3, 6, 6))
    g = rng.standard_normal(a.shape)
    got = ak.grad_rollout(a, g, start_layer=1)
    for s in range(2):
        np.testing.assert_allclose(got[s], ref_grad_rollout(a[s], g[s], start=1), rtol=1e-12)


@pytest.mark.parametrize("kind, fusion", [("rollout", "mean"), ("rollout", "max"), ("grad", None)])
def test_prefix_rows_equal_one_rollout_per_layer_prefix(rng, kind, fusion):
    """The read-out row of every layer prefix, from one pass, equals ``w @`` the
    rollout of ``attn[:, :l + 1]`` computed on its own: a one-hot ``w`` gives
    that row exactly, random weights their weighted sum."""
    from attnkit.rollout import prefix_rows

    lengths = np.array([7, 5, 2])
    a = random_attention(rng, (3, 4, 2, 7, 7))
    g = rng.standard_normal(a.shape)
    query = 1
    one_hot = np.eye(7)[query]
    weights = rng.random((3, 7)) * (np.arange(7)[None, :] < lengths[:, None])
    kwargs = dict(kind=kind, grad=g if kind == "grad" else None, lengths=lengths,
                  head_fusion=fusion or "mean", residual=0.3)
    rows = prefix_rows(a, one_hot, **kwargs)
    mixed = prefix_rows(a, weights, **kwargs)
    assert rows.shape == mixed.shape == (3, 4, 7)
    for layer in range(4):
        if kind == "grad":
            want = ak.grad_rollout(a[:, : layer + 1], g[:, : layer + 1], lengths=lengths)
        else:
            want = ak.rollout(a[:, : layer + 1], head_fusion=fusion, residual=0.3,
                              lengths=lengths)
        for s, m in enumerate(lengths):
            np.testing.assert_array_equal(rows[s, layer, :m], want[s, query, :m])
            np.testing.assert_allclose(mixed[s, layer, :m], weights[s, :m] @ want[s, :m, :m],
                                       rtol=1e-12)
            assert np.isnan(rows[s, layer, m:]).all()
    with pytest.raises(ValueError, match=r"readout: expected shape \(7,\) or \(3, 7\)"):
        prefix_rows(a, np.ones(6))
    with pytest.raises(ValueError, match=r"kind: expected 'rollout' or 'grad'"):
        prefix_rows(a, one_hot, kind="flow")


def test_grad_rollout_read_at_a_target_is_the_weighted_row_sum(rng):
    lengths = np.array([6, 4])
    a = random_attention(rng, (2, 3, 2, 6, 6))
    g = rng.standard_normal(a.shape)
    full = ak.grad_rollout(a, g, lengths=lengths)
    mean = ak.grad_rollout(a, g, lengths=lengths, target="mean")
    for s, m in enumerate(lengths):
        np.testing.assert_allclose(mean[s, :m], full[s, :m, :m].mean(axis=0), rtol=1e-12)
        assert np.isnan(mean[s, m:]).all()
    np.testing.assert_allclose(ak.grad_rollout(a, g, lengths=lengths, target=2), full[:, 2])
    ds = ak.from_arrays([a[0, :, :, :6, :6], a[1, :, :, :4, :4]],
                        gradient=[g[0, :, :, :6, :6], g[1, :, :, :4, :4]])
    ds.attrs["readout"] = "patches"
    got = ak.grad_rollout(ds, None, target="readout")
    assert got.dims == ("sample", "key") and got.attrs["target"] == "patches"
    np.testing.assert_allclose(got.values[0], full[0, 1:6].mean(axis=0), rtol=1e-12)


def test_grad_rollout_lengths_and_shape_errors(rng):
    a = random_attention(rng, (2, 2, 2, 5, 5))
    g = rng.standard_normal(a.shape)
    got = ak.grad_rollout(a, g, lengths=[5, 2])
    np.testing.assert_allclose(got[1, :2, :2],
                               ref_grad_rollout(a[1, :, :, :2, :2], g[1, :, :, :2, :2]), rtol=1e-12)
    assert np.isnan(got[1, 2:]).all()
    with pytest.raises(ValueError, match=r"grad: expected shape .* Fix: save one gradient"):
        ak.grad_rollout(a, g[:, :1])


def test_xarray_dataset_and_dask_give_the_same_numbers(rng):
    lengths = [6, 4, 5]
    a = np.stack([np.pad(random_attention(rng, (3, 2, m, m)), ((0, 0), (0, 0), (0, 6 - m), (0, 6 - m)))
                  for m in lengths])
    g = rng.standard_normal(a.shape)
    ds = ak.from_arrays([a[s, :, :, :m, :m] for s, m in enumerate(lengths)],
                        gradient=[g[s, :, :, :m, :m] for s, m in enumerate(lengths)])
    expected = ak.rollout(a, lengths=lengths)
    r = ak.rollout(ds)
    assert r.dims == ("sample", "query", "key") and r.name == "rollout"
    np.testing.assert_allclose(r.values, expected, rtol=1e-12, equal_nan=True)
    lazy = ak.rollout(ds.chunk({"sample": 1}))
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, expected, rtol=1e-12, equal_nan=True)
    gr = ak.grad_rollout(ds, None)
    np.testing.assert_allclose(gr.values, ak.grad_rollout(np.nan_to_num(a), np.nan_to_num(g),
                                                          lengths=lengths), equal_nan=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(head_fusion="median"), r"head_fusion: expected 'mean', 'max' or 'min'"),
    (dict(residual=1.5), r"residual: expected a number in \[0, 1\]"),
    (dict(discard_ratio=1.0), r"discard_ratio: expected a number in \[0, 1\)"),
    (dict(start_layer=3), r"start_layer: expected an int layer index in \[0, 3\)"),
    (dict(lengths=[9]), r"lengths: expected lengths in \[0, 4\]"),
    (dict(backend="tpu"), r"backend: expected one of"),
])
def test_rollout_bad_arguments(rng, kwargs, match):
    a = random_attention(rng, (1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match=match):
        ak.rollout(a, **kwargs)


def test_rollout_rejects_bad_weights_naming_the_place(rng):
    a = random_attention(rng, (2, 2, 4, 4))
    a[1, 0, 2, 3] = -0.1
    with pytest.raises(ValueError, match=r"attn: .*-0.1 at sample \(\), layer 1, head 0, query 2, key 3"):
        ak.rollout(a)
    a[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"finite, non-negative"):
        ak.rollout(a)
    with pytest.raises(ValueError, match=r"attn: expected shape \(\.\.\., layer, head, n, n\)"):
        ak.rollout(a[..., :3])
    with pytest.raises(TypeError, match=r"attn: expected float16.*got int64"):
        ak.rollout(np.ones((1, 1, 2, 2), dtype=np.int64))


def stored_weights(q, k, lengths=None, **kwargs):
    """(sample, layer, head, n, n) weights of per-layer q/k, padding NaN past each length."""
    w = np.stack([ak.attention_weights(q[:, l], k[:, l], q_lengths=lengths, kv_lengths=lengths,
                                       **kwargs) for l in range(q.shape[1])], axis=1)
    if lengths is not None:
        for s, m in enumerate(lengths):
            w[s, :, :, m:, :] = np.nan
            w[s, :, :, :, m:] = np.nan
    return w


@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"mask": ak.masks.local(3)}])
def test_rollout_rows_match_stored_rollout(rng, kwargs):
    q = rng.standard_normal((3, 4, 2, 11, 8))
    k = rng.standard_normal((3, 4, 2, 11, 8))
    lengths = [11, 7, 1]
    rows = [0, 3, 10]
    got = ak.rollout_rows(q, k, rows, residual=0.3, start_layer=1, lengths=lengths, **kwargs)
    want = ak.rollout(stored_weights(q, k, lengths, **kwargs), residual=0.3, start_layer=1,
                      lengths=lengths)[:, rows]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, equal_nan=True)
    assert np.isnan(got[1, 2]).all() and np.isnan(got[2, 1]).all()  # rows past the length


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rollout_rows_keep_empty_rows_padding_and_start_layer(rng, case):
    rows = check_case(rng, case, "cpu")
    if case[0] == "empty-rows":  # queries 0 and 1 see no key: their rollout row is e_i
        np.testing.assert_array_equal(rows[:, 0], np.eye(9)[np.zeros(2, int)])
        np.testing.assert_array_equal(rows[:, 1], np.eye(9)[np.ones(2, int)])


def test_rollout_rows_grouped_query_and_float32(rng):
    q = rng.standard_normal((2, 4, 13, 16)).astype(np.float32)   # 4 query heads
    k = rng.standard_normal((2, 2, 13, 16)).astype(np.float32)   # 2 kv heads
    got = ak.rollout_rows(q, k, [0, 12])
    w = np.stack([ak.attention_weights(q[l], k[l]) for l in range(2)]).astype(np.float64)
    np.testing.assert_allclose(got, ak.rollout(w)[[0, 12]], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_rollout_rows_errors(rng):
    q = rng.standard_normal((2, 2, 5, 4))
    with pytest.raises(ValueError, match=r"rows: expected a 1-d array of positions in \[0, 5\)"):
        ak.rollout_rows(q, q, [5])
    with pytest.raises(ValueError, match=r"k: expected shape 2 layers and 5 positions like q"):
        ak.rollout_rows(q, q[:, :, :4], [0])
    with pytest.raises(ValueError, match=r"q, k: expected shape"):
        ak.rollout_rows(q[0], q[0], [0])


def test_rollout_backends_follow_the_shared_rules(rng):
    a = random_attention(rng, (2, 3, 2, 5, 5))
    want = ak.rollout(a, discard_ratio=0.2, backend="cpu")
    # "auto" keeps work the GPU kernel cannot do on the CPU ...
    np.testing.assert_array_equal(ak.rollout(a, discard_ratio=0.2), want)
    # ... and asking for the GPU names the fix.
    with pytest.raises(ak.BackendUnavailableError,
                       match=r"backend='cuda': rollout with discard_ratio > 0 has no CUDA implementation\. "
                             r"Fix: use backend='cpu'"):
        ak.rollout(a, discard_ratio=0.2, backend="cuda")
    with pytest.raises(ValueError, match=r"backend: expected one of 'auto', 'cpu', 'cuda', got 'gpu'"):
        ak.rollout(a, backend="gpu")
    with pytest.raises(ValueError, match=r"backend: expected one of 'auto', 'cpu', 'cuda'"):
        ak.rollout_rows(rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4)), [0],
                        backend="GPU")
