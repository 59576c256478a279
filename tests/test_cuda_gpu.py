"""CUDA kernels on a real GPU at real sizes (skipped where no GPU is present).

The same checks as the simulator suite (tests/cuda_sim), at lengths the
simulator cannot reach, with the tilings chosen for the device, against the
float64 reference (small) or the CPU backend (large).
"""

import ml_dtypes
import numpy as np
import pytest

import attnkit as ak
import reference as ref
from attnkit._backend import cuda_status

pytestmark = pytest.mark.skipif(not cuda_status()[1], reason="needs a CUDA GPU")

if cuda_status()[1]:
    from numba import cuda

    from attnkit.kernels.cuda import api, tiling


def _randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _close_to_cpu(gpu, cpu, atol=2e-5):
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    np.testing.assert_allclose(gpu, cpu, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_cpu_at_real_size(rng, d, causal):
    q, k, v = (_randn(rng, 2, 4, n, d) for n in (1031, 1100, 1100))
    out, lse = ak.attention(q, k, v, causal=causal, return_lse=True, backend="cuda")
    cpu_out, cpu_lse = ak.attention(q, k, v, causal=causal, return_lse=True, backend="cpu")
    _close_to_cpu(out, cpu_out)
    _close_to_cpu(lse, cpu_lse)


def test_small_problem_matches_float64_reference(rng):
    q, k, v = _randn(rng, 3, 37, 16), _randn(rng, 3, 53, 16), _randn(rng, 3, 53, 16)
    out, lse = ak.attention(q, k, v, causal=True, return_lse=True, backend="cuda")
    expected, expected_lse = ref.attention(q, k, v, causal=True)
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=0)
    np.testing.assert_allclose(lse, expected_lse, atol=2e-5, rtol=2e-5)


MASKS = {
    "sliding": ak.masks.local(128) & ak.masks.causal(),
    "strided": ak.masks.local(32) | ak.masks.strided(32),
    "global": ak.masks.local(64) | ak.masks.global_tokens([0, 5, 400]),
    "random": ak.masks.random(0.3, block=64, seed=1),
    "not": ~ak.masks.causal(),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_masks_lengths_and_gqa(rng, name):
    q, k, v = _randn(rng, 2, 8, 600, 64), _randn(rng, 2, 2, 700, 64), _randn(rng, 2, 2, 700, 32)
    kw = dict(mask=MASKS[name], q_lengths=np.array([600, 311]), kv_lengths=np.array([0, 650]))
    out = ak.attention(q, k, v, backend="cuda", **kw)
    cpu = ak.attention(q, k, v, backend="cpu", **kw)
    assert not np.isnan(out).any()
    _close_to_cpu(out, cpu)


@pytest.mark.parametrize("mod", ["alibi", "soft_cap"])
def test_score_mods(rng, mod):
    fn = (ak.positional.alibi(ak.positional.alibi_slopes(4)) if mod == "alibi"
          else ak.positional.soft_cap(5.0))
    q, k, v = (_randn(rng, 2, 4, 500, 64) for _ in range(3))
    _close_to_cpu(ak.attention(q, k, v, causal=True, score_mod=fn, backend="cuda"),
                  ak.attention(q, k, v, causal=True, score_mod=fn, backend="cpu"))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_dtypes(rng, dtype):
    q, k, v = (rng.standard_normal((2, 2, 700, 64)).astype(dtype) for _ in range(3))
    out = ak.attention(q, k, v, causal=True, backend="cuda")
    cpu = ak.attention(q, k, v, causal=True, backend="cpu")
    assert out.dtype == cpu.dtype
    tol = 1e-12 if dtype == np.float64 else 4 * float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(out.astype(np.float64), cpu.astype(np.float64), atol=tol, rtol=0)


@pytest.mark.parametrize("d", [16, 40, 96, 256])
def test_head_dims(rng, d):
    q, k, v = _randn(rng, 2, 300, d), _randn(rng, 2, 333, d), _randn(rng, 2, 333, d)
    _close_to_cpu(ak.attention(q, k, v, backend="cuda"), ak.attention(q, k, v, backend="cpu"))


@pytest.mark.parametrize("t", [(8, 16, 4, 4), (16, 16, 4, 4), (8, 8, 2, 2), (2, 4, 2, 2),
                               (16, 32, 4, 2)])
def test_other_tilings(rng, t):
    q, k, v = _randn(rng, 2, 513, 64), _randn(rng, 2, 500, 64), _randn(rng, 2, 500, 64)
    with api.use_tiling(tiling.Tiling(*t)):
        out = ak.attention(q, k, v, mask=ak.masks.local(100), backend="cuda")
        st = ak.attention_stats(q, k, mask=ak.masks.local(100), topk=3, backend="cuda")
    _close_to_cpu(out, ak.attention(q, k, v, mask=ak.masks.local(100), backend="cpu"))
    cpu = ak.attention_stats(q, k, mask=ak.masks.local(100), topk=3, backend="cpu")
    for key in ("entropy", "received", "max", "distance"):
        np.testing.assert_allclose(st[key], cpu[key], atol=1e-5, rtol=1e-4)


def test_weights_and_stats_match_cpu(rng):
    q, k = _randn(rng, 2, 2, 1000, 64), _randn(rng, 2, 2, 1200, 64)
    kw = dict(mask=ak.masks.local(300), kv_lengths=np.array([1200, 900]))
    w = ak.attention_weights(q, k, backend="cuda", **kw)
    np.testing.assert_allclose(w, ak.attention_weights(q, k, backend="cpu", **kw), atol=1e-6)
    st = ak.attention_stats(q, k, topk=5, backend="cuda", **kw)
    cpu = ak.attention_stats(q, k, topk=5, backend="cpu", **kw)
    assert set(st) == set(cpu)
    for key in ("entropy", "received", "max", "distance", "topk_value"):
        np.testing.assert_allclose(st[key], cpu[key], atol=1e-5, rtol=1e-4, err_msg=key)
    # Indices may differ only between (near) ties: the chosen key carries the maximum.
    picked = np.take_along_axis(w, st["argmax"][..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(picked, cpu["max"], atol=1e-6)
    assert (st["argmax"] == cpu["argmax"]).mean() > 0.999


def test_device_arrays_in_and_out(rng):
    q, k, v = _randn(rng, 2, 4, 700, 64), _randn(rng, 2, 4, 800, 64), _randn(rng, 2, 4, 800, 64)
    dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
    out, lse = ak.attention(dq, dk, dv, causal=True, return_lse=True)  # auto -> cuda
    assert isinstance(out, cuda.devicearray.DeviceNDArray)
    assert isinstance(lse, cuda.devicearray.DeviceNDArray)
    _close_to_cpu(out.copy_to_host(), ak.attention(q, k, v, causal=True, backend="cpu"))

    class Interface:  # any object exposing the CUDA Array Interface (CuPy, PyTorch)
        def __init__(self, arr):
            self.__cuda_array_interface__ = arr.__cuda_array_interface__
            self._keep = arr

    st = ak.attention_stats(Interface(dq), Interface(dk), topk=2)
    assert all(isinstance(x, cuda.devicearray.DeviceNDArray) for x in st.values())
    cpu = ak.attention_stats(q, k, topk=2, backend="cpu")
    np.testing.assert_allclose(st["entropy"].copy_to_host(), cpu["entropy"], atol=1e-5)


def test_transposed_device_view(rng):
    base = _randn(rng, 2, 900, 4, 64)  # (B, n, H, d) as projections produce it
    view = cuda.to_device(base).transpose((0, 2, 1, 3))  # (B, H, n, d), no copy
    out = ak.attention(view, view, view, causal=True)
    x = np.ascontiguousarray(base.transpose(0, 2, 1, 3))
    _close_to_cpu(out.copy_to_host(), ak.attention(x, x, x, causal=True, backend="cpu"))


def test_long_sequence_statistics_in_linear_memory(rng):
    n = 65536
    q, k = _randn(rng, 1, n, 64), _randn(rng, 1, n, 64)
    st = ak.attention_stats(cuda.to_device(q), cuda.to_device(k), causal=True)
    received = st["received"].copy_to_host()
    np.testing.assert_allclose(received.sum(), n, rtol=1e-6)  # each query hands out 1
    entropy = st["entropy"].copy_to_host()
    assert np.isfinite(entropy).all() and entropy[0, 0] == 0.0


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_rollout_matches_cpu(rng, fusion):
    attn = rng.random((3, 12, 12, 197, 197)).astype(np.float32)
    attn /= attn.sum(-1, keepdims=True)
    lengths = np.array([197, 150, 1])
    got = ak.rollout(cuda.to_device(attn), lengths=lengths, head_fusion=fusion, start_layer=2)
    assert isinstance(got, cuda.devicearray.DeviceNDArray)
    cpu = ak.rollout(attn, lengths=lengths, head_fusion=fusion, start_layer=2, backend="cpu")
    host = got.copy_to_host()
    np.testing.assert_array_equal(np.isnan(host), np.isnan(cpu))
    np.testing.assert_allclose(host, cpu, atol=1e-12, rtol=0)
    np.testing.assert_allclose(ak.rollout(attn, lengths=lengths, head_fusion=fusion,
                                          start_layer=2, backend="cuda"), cpu, atol=1e-12)


def test_rollout_rows_from_q_and_k_match_stored_rollout(rng):
    q, k = _randn(rng, 2, 4, 4, 600, 64), _randn(rng, 2, 4, 2, 600, 64)  # GQA, 4 layers
    lengths = np.array([600, 450])
    rows = [0, 17, 449, 599]
    got = ak.rollout_rows(q, k, rows, causal=True, lengths=lengths, start_layer=1,
                          backend="cuda")
    weights = np.stack([ak.attention_weights(q[:, l], k[:, l], causal=True, q_lengths=lengths,
                                             kv_lengths=lengths, backend="cpu")
                        for l in range(4)], axis=1).astype(np.float64)
    expected = ak.rollout(weights, lengths=lengths, start_layer=1, backend="cpu")[:, rows]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
