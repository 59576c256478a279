"""Bad input gives clear errors: what was expected, what was got, and the fix.

Every case goes through all three public functions where it applies
(attention, attention_weights, attention_stats), since they share one
validation path that must not drift apart.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import attnkit as ak
import reference

N, M, D = 7, 9, 4


def arrays(rng, q_shape=(2, 3, N, D), k_shape=(2, 3, M, D), v_shape=None, dtype=np.float64):
    v_shape = k_shape if v_shape is None else v_shape
    return tuple(rng.standard_normal(s).astype(dtype) for s in (q_shape, k_shape, v_shape))


def call_all(q, k, v, **kw):
    """The three public functions on the same problem (v only where it is used)."""
    return [
        lambda: ak.attention(q, k, v, **kw),
        lambda: ak.attention_weights(q, k, **kw),
        lambda: ak.attention_stats(q, k, **kw),
    ]


def raises_all(qkv, exc, match, **kw):
    """Each public function raises exc matching ``match`` (and, for ValueError/TypeError, says "Fix:")."""
    for fn in call_all(*qkv, **kw):
        with pytest.raises(exc, match=match) as info:
            fn()
        if exc in (ValueError, TypeError):
            assert "Fix:" in str(info.value), str(info.value)


# ------------------------------------------------------------------- shapes
def test_batch_dims_do_not_broadcast(rng):
    raises_all(arrays(rng, (2, 3, N, D), (4, 3, M, D)), ValueError,
               r"q, k: expected shape leading \(batch/head\) dims that broadcast against each "
               r"other, got q batch dims \(2, 3\) and k batch dims \(4, 3\)")


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_one_dimensional_input(rng, which):
    q, k, v = arrays(rng, (N, D), (M, D))
    bad = {"q": (q[0], k, v), "k": (q, k[0], v), "v": (q, k, v[0])}[which]
    with pytest.raises(ValueError, match=rf"{which}: expected shape \(\.\.\., sequence, features\) "
                                         rf"with at least 2 dims, got \({D},\)"):
        ak.attention(*bad)
    if which != "v":
        with pytest.raises(ValueError, match=rf"{which}: expected shape"):
            ak.attention_weights(*bad[:2])
        with pytest.raises(ValueError, match=rf"{which}: expected shape"):
            ak.attention_stats(*bad[:2])


def test_head_dim_mismatch(rng):
    raises_all(arrays(rng, (2, N, D), (2, M, D + 1)), ValueError,
               rf"k: expected shape last dim d = {D} to match q \(2, {N}, {D}\), got \(2, {M}, {D + 1}\)")


def test_zero_head_dim(rng):
    q = np.empty((3, 0))
    with pytest.raises(ValueError, match=r"q: expected shape a feature dim d >= 1"):
        ak.attention(q, q, q)


def test_value_length_mismatch(rng):
    q, k, _ = arrays(rng)
    v = rng.standard_normal((2, 3, M + 2, D))
    with pytest.raises(ValueError, match=rf"v: expected shape {M} positions to match k"):
        ak.attention(q, k, v)


def test_value_batch_mismatch(rng):
    q, k, _ = arrays(rng)
    v = rng.standard_normal((2, 1, M, D))
    with pytest.raises(ValueError, match=r"v: expected shape the same leading dims as k, \(2, 3\)"):
        ak.attention(q, k, v)


def test_value_missing(rng):
    q, k, _ = arrays(rng)
    with pytest.raises(TypeError, match=r"v: expected an array of values"):
        ak.attention(q, k, None)


@pytest.mark.parametrize("hq,hkv", [(4, 3), (6, 4), (2, 3)])
def test_gqa_heads_not_dividing(rng, hq, hkv):
    raises_all(arrays(rng, (2, hq, N, D), (2, hkv, M, D)), ValueError,
               rf"k: expected shape a head count dividing q's {hq} heads \(grouped-query "
               rf"attention\), got {hkv} heads")


def test_empty_sequences(rng):
    """n = 0 or m = 0: either a result (empty / fully masked rows) or a clear error.

    A raw NumPy error that names neither the argument nor the fix is not acceptable.
    """
    for n, m in ((0, M), (N, 0)):
        q, k, v = arrays(rng, (2, n, D), (2, m, D))
        try:
            out, lse = ak.attention(q, k, v, return_lse=True)
        except ValueError as exc:
            assert "Fix:" in str(exc) and ("q:" in str(exc) or "k:" in str(exc)), str(exc)
            continue
        want, want_lse = reference.attention(q, k, v)
        assert out.shape == want.shape == (2, n, D)
        assert_array_equal(out, want)
        assert_array_equal(lse, want_lse)


# ------------------------------------------------------------------ lengths
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(q_lengths=N + 1), rf"q_lengths: expected lengths in \[0, {N}\] \(n = {N}\), got values from {N + 1} to {N + 1}"),
        (dict(q_lengths=[-1, 2]), rf"q_lengths: expected lengths in \[0, {N}\]"),
        (dict(kv_lengths=[3, M + 5]), rf"kv_lengths: expected lengths in \[0, {M}\] \(m = {M}\), got values from 3 to {M + 5}"),
        (dict(kv_lengths=np.ones((3,), int)), r"kv_lengths: expected shape a prefix of the batch shape \(2, 3\)"),
        (dict(q_lengths=np.ones((2, 3, 1), int)), r"q_lengths: expected shape a prefix of the batch shape"),
        (dict(kv_lengths=np.ones((2, 2), int)), r"kv_lengths: expected shape a prefix"),
    ],
)
def test_lengths_value_and_shape(rng, kw, match):
    raises_all(arrays(rng), ValueError, match, **kw)


@pytest.mark.parametrize("bad", [[3.0, 4.0], np.array([True, False]), 2.5, ["3", "4"]])
def test_lengths_non_integer(rng, bad):
    for name in ("q_lengths", "kv_lengths"):
        raises_all(arrays(rng), TypeError, rf"{name}: expected integer lengths, got dtype", **{name: bad})


# ----------------------------------------------------------- non-finite input
@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(rng, which, bad):
    q, k, v = arrays(rng)
    arr = {"q": q, "k": k, "v": v}[which]
    count = int(rng.integers(1, 4))
    flat = arr.reshape(-1)
    flat[rng.choice(flat.size, size=count, replace=False)] = bad
    match = rf"{which}: expected finite values, got {count} NaN/inf entries.*check_finite=False"
    with pytest.raises(ValueError, match=match):
        ak.attention(q, k, v)
    if which != "v":
        with pytest.raises(ValueError, match=match):
            ak.attention_weights(q, k)
        with pytest.raises(ValueError, match=match):
            ak.attention_stats(q, k)


def test_check_finite_false_does_not_raise(rng):
    q, k, v = arrays(rng)
    for arr in (q, k, v):
        arr[tuple(int(rng.integers(x)) for x in arr.shape)] = rng.choice([np.nan, np.inf])
    for fn in call_all(q, k, v, check_finite=False):
        fn()


def test_check_finite_false_nan_value_propagates(rng):
    q, k, v = arrays(rng)
    b, h, key, c = 1, int(rng.integers(3)), int(rng.integers(M)), int(rng.integers(D))
    v[b, h, key, c] = np.nan
    out = ak.attention(q, k, v, check_finite=False)
    assert np.isnan(out[b, h, :, c]).all()  # every query gives that key a positive weight
    clean = np.ones(out.shape, bool)
    clean[b, h, :, c] = False
    assert np.isfinite(out[clean]).all()


def test_check_finite_false_nan_query_propagates(rng):
    """A NaN query is not a masked query: its row must come out NaN, not a silent 0.

    The finite-check error promises "pass check_finite=False if you accept NaN in
    the output"; a NaN score row must not be reported as fully masked (out 0,
    lse -inf, zero weights), which is indistinguishable from padding.
    """
    q, k, v = arrays(rng)
    b, h, row = 0, int(rng.integers(3)), int(rng.integers(N))
    q[b, h, row, int(rng.integers(D))] = np.nan
    out, lse = ak.attention(q, k, v, check_finite=False, return_lse=True)
    others = np.delete(out[b, h], row, axis=0)
    assert np.isfinite(others).all()
    want, _ = reference.attention(np.delete(q[b, h], row, axis=0), k[b, h], v[b, h])
    np.testing.assert_allclose(others, want, rtol=1e-12, atol=1e-12)
    assert np.isnan(out[b, h, row]).all(), f"NaN query gave out={out[b, h, row]}, lse={lse[b, h, row]}"
    assert np.isnan(lse[b, h, row])
    w = ak.attention_weights(q, k, check_finite=False)
    assert np.isnan(w[b, h, row]).all(), f"NaN query gave weights {w[b, h, row]}"


# ------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.complex128, np.bool_])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_unsupported_dtypes(rng, dtype, which):
    q, k, v = arrays(rng)
    cast = {"q": q, "k": k, "v": v}[which]
    cast = (cast * 3).astype(dtype) if dtype is not np.bool_ else cast > 0
    args = {"q": (cast, k, v), "k": (q, cast, v), "v": (q, k, cast)}[which]
    name = np.dtype(dtype).name
    match = (rf"{which}: expected float16, bfloat16, float32 or float64, got {name}\. "
             rf"Fix: cast it, e.g\. {which}\.astype\(np\.float32\)")
    with pytest.raises(TypeError, match=match):
        ak.attention(*args)
    if which != "v":
        with pytest.raises(TypeError, match=match):
            ak.attention_stats(*args[:2])


def test_string_dtype(rng):
    q, k, v = arrays(rng)
    with pytest.raises(TypeError, match=r"q: expected float16, bfloat16, float32 or float64, got <U"):
        ak.attention(q.astype(str), k, v)


# ----------------------------------------------------------- masks and mods
@pytest.mark.parametrize("bad", [np.tril(np.ones((N, M), bool)), "causal", lambda i, j: j <= i, True])
def test_non_mask_object(rng, bad):
    raises_all(arrays(rng), TypeError, rf"mask: expected an attnkit mask, got {type(bad).__name__}",
               mask=bad)


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: ak.masks.local(0), r"window: expected a positive int, got 0"),
        (lambda: ak.masks.local(-2), r"window: expected a positive int, got -2"),
        (lambda: ak.masks.local(2.5), r"window: expected a positive int, got 2\.5"),
        (lambda: ak.masks.local(True), r"window: expected a positive int, got True"),
        (lambda: ak.masks.strided(-1), r"stride: expected a positive int, got -1"),
        (lambda: ak.masks.strided(0), r"stride: expected a positive int, got 0"),
        (lambda: ak.masks.causal(1.5), r"offset: expected an int, got 1\.5"),
        (lambda: ak.masks.global_tokens([-1, 2]), r"global_tokens: expected non-negative positions"),
        (lambda: ak.masks.global_tokens([[0, 1]]), r"global_tokens: expected a 1-d sequence of int positions"),
        (lambda: ak.masks.global_tokens([0.5]), r"global_tokens: expected a 1-d sequence of int positions"),
        (lambda: ak.masks.block_sparse([1, 0, 1], 4), r"layout: expected a non-empty 2-d array"),
        (lambda: ak.masks.block_sparse(np.ones((0, 3)), 4), r"layout: expected a non-empty 2-d array"),
        (lambda: ak.masks.block_sparse(np.full((2, 2), 0.5), 4), r"layout: expected booleans or 0/1 ints, got float64"),
        (lambda: ak.masks.block_sparse(np.ones((2, 2), bool), 0), r"block: expected a positive int, got 0"),
    ],
)
def test_mask_parameter_errors(factory, match):
    with pytest.raises(ValueError, match=match) as info:
        factory()
    assert "Fix:" in str(info.value)


def test_global_tokens_out_of_range(rng):
    limit = max(N, M)
    mask = ak.masks.global_tokens([0, limit])
    with pytest.raises(ValueError, match=rf"global_tokens: expected positions in \[0, {limit}\), got \[0, {limit}\]"):
        mask.dense(N, M)
    raises_all(arrays(rng), ValueError, rf"global_tokens: expected positions in \[0, {limit}\)", mask=mask)
    # inside the longer of the two axes is fine
    assert mask.dense(N, limit + 1)[:, limit].all()


def test_block_sparse_layout_too_small(rng):
    layout = np.ones((1, 2), bool)
    mask = ak.masks.block_sparse(layout, 4)
    match = rf"block_sparse layout: expected at least \(2, 3\) blocks of 4 for {N} queries x {M} keys, got shape \(1, 2\)"
    with pytest.raises(ValueError, match=match):
        mask.dense(N, M)
    raises_all(arrays(rng), ValueError, match, mask=mask)
    raises_all(arrays(rng), ValueError, match, mask=ak.masks.causal() & ~mask)


@pytest.mark.parametrize("bad", [3.0, "alibi", np.ones(3)])
def test_score_mod_not_callable(rng, bad):
    raises_all(arrays(rng), TypeError,
               rf"score_mod: expected a function f\(score, b, h, q_idx, kv_idx\) -> score, got "
               rf"{type(bad).__name__}", score_mod=bad)


def test_score_mod_wrong_number_of_heads(rng):
    slopes = ak.positional.alibi_slopes(3)
    raises_all(arrays(rng, (2, 4, N, D), (2, 4, M, D)), ValueError,
               r"score_mod: expected parameters for 4 heads \(the last batch dim\), got parameters for 3 heads",
               score_mod=ak.positional.alibi(slopes))
    table = rng.standard_normal((3, 5))
    raises_all(arrays(rng, (2, 4, N, D), (2, 4, M, D)), ValueError,
               r"score_mod: expected parameters for 4 heads", score_mod=ak.positional.relative_bias(table))


# ------------------------------------------------------------ other options
@pytest.mark.parametrize("bad", [np.nan, np.inf, "0.5", True, np.ones(2), None])
def test_bad_scale(rng, bad):
    if bad is None:  # None means the default scale
        q, k, v = arrays(rng)
        ak.attention(q, k, v, scale=None)
        return
    # a str is arguably a TypeError; either way the message must name scale and the fix
    for fn in call_all(*arrays(rng), scale=bad):
        with pytest.raises((ValueError, TypeError), match=r"scale: expected a finite float") as info:
            fn()
        assert "Fix:" in str(info.value)


@pytest.mark.parametrize("bad", ["gpu", "CPU", "", None])
def test_bad_backend(rng, bad):
    raises_all(arrays(rng), ValueError,
               rf"backend: expected one of 'auto', 'cpu', 'cuda', got {bad!r}", backend=bad)


def test_cuda_backend_unavailable(rng):
    raises_all(arrays(rng), ak.BackendUnavailableError, r"backend='cuda'.*Fix: use backend='cpu'",
               backend="cuda")
    assert issubclass(ak.BackendUnavailableError, RuntimeError)
    assert issubclass(ak.BackendUnavailableError, ak.AttnkitError)


class FakeDeviceArray:
    """Something that looks like a GPU array (CuPy, PyTorch CUDA tensor, numba device array)."""

    def __init__(self, shape):
        self.shape = shape

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<f4", "data": (0, False), "version": 3}


def test_gpu_array_on_cpu_only_build(rng):
    q, k, v = arrays(rng)
    with pytest.raises(ak.BackendUnavailableError, match=r"q: got a GPU array \(FakeDeviceArray\)"):
        ak.attention(FakeDeviceArray(q.shape), k, v)


@pytest.mark.parametrize(
    "stats,match",
    [
        (("entropy", "bogus"), r"stats: expected names from \('entropy', 'received', 'max', 'distance'\), got \['bogus'\]"),
        ("argmax", r"got \['argmax'\]"),
        (("Entropy",), r"got \['Entropy'\]"),
    ],
)
def test_bad_stats_name(rng, stats, match):
    q, k, _ = arrays(rng)
    with pytest.raises(ValueError, match=match):
        ak.attention_stats(q, k, stats=stats)


@pytest.mark.parametrize("bad", [-1, 2.0, True, "3", None])
def test_bad_topk(rng, bad):
    q, k, _ = arrays(rng)
    with pytest.raises(ValueError, match=rf"topk: expected a non-negative int, got {bad!r}"):
        ak.attention_stats(q, k, topk=bad)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(weights_max_bytes=0), r"weights_max_bytes: expected a positive int \(bytes\), got 0"),
        (dict(weights_max_bytes=1.5e9), r"weights_max_bytes: expected a positive int"),
        (dict(progress="yes"), r"progress: expected True or False"),
        (dict(no_such_option=1), r"unknown option 'no_such_option'"),
    ],
)
def test_bad_options(kw, match):
    before = ak.get_options()
    with pytest.raises(ValueError, match=match):
        ak.set_options(**kw)
    assert ak.get_options() == before


def test_error_types_are_catchable_as_builtins(rng):
    q, k, _ = arrays(rng)
    with pytest.raises(MemoryError):
        ak.attention_weights(q, k, max_bytes=1)
    with pytest.raises(RuntimeError):
        ak.attention(q, k, k, backend="cuda")
