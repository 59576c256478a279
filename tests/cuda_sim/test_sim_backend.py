"""Backend choice when the simulator is on: "auto" never picks it for host arrays."""

import numpy as np
import pytest
from numba import cuda

import attnkit as ak
from attnkit._backend import choose as choose_backend, cuda_status


def test_auto_never_selects_the_simulator_for_host_arrays():
    q = np.ones((2, 3))
    usable, real_gpu, _ = cuda_status()
    assert usable and not real_gpu
    assert choose_backend("auto", q=q, k=q, v=q) == "cpu"
    assert choose_backend("cuda", q=q, k=q, v=q) == "cuda"


def test_auto_follows_device_arrays():
    q = cuda.to_device(np.ones((2, 3), np.float32))
    assert choose_backend("auto", q=q, k=np.ones((2, 3)), v=None) == "cuda"


def test_cpu_backend_refuses_device_arrays():
    q = cuda.to_device(np.ones((2, 3), np.float32))
    with pytest.raises(ak.BackendUnavailableError,
                       match=r"q: got a GPU array .*backend='cpu' computes on the host. "
                             r"Fix: use backend='cuda'"):
        ak.attention(q, q, q, backend="cpu")


def test_cpu_only_functions_refuse_device_arrays():
    x = cuda.to_device(np.ones((2, 3), np.float32))
    with pytest.raises(ak.BackendUnavailableError,
                       match=r"got a GPU array .*this function computes on the CPU. Fix: copy"):
        ak.multi_head_attention(x, np.ones((3, 3)), np.ones((3, 3)), np.ones((3, 3)),
                                np.ones((3, 3)), 1)


def test_unsupported_device_dtype_names_the_cast():
    q = cuda.to_device(np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match=r"q: expected float16, bfloat16, float32 or float64, "
                                        r"got int32. Fix: cast it on the device"):
        ak.attention(q, q, q)


def test_head_dim_over_the_limit_names_the_fix():
    q = cuda.to_device(np.ones((2, 300), np.float32))
    with pytest.raises(ValueError, match=r"head dim d: expected at most 256 for backend='cuda'"):
        ak.attention(q, q, q)


def test_variants_pass_backend_cuda_to_attention(rng):
    # multi_head_attention and Luong's "dot"/"general" run on ak.attention's backends
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    w_q, w_k, w_v, w_o = (rng.standard_normal((8, 8)).astype(np.float32) / 3 for _ in range(4))
    calls = [
        lambda backend: ak.multi_head_attention(x, w_q, w_k, w_v, w_o, 2, q_lengths=[6, 4],
                                                causal=True, return_weights=True,
                                                backend=backend),
        lambda backend: ak.luong_attention(x[:, :3], x, x, kv_lengths=[6, 2],
                                           return_weights=True, backend=backend),
        lambda backend: ak.luong_attention(x[:, :3], x, x, score="general", w=w_q,
                                           kv_lengths=[6, 2], return_weights=True,
                                           backend=backend),
    ]
    for call in calls:
        for got, want in zip(call("cuda"), call("cpu")):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
