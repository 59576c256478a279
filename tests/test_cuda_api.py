"""Backend selection and errors of the CUDA backend, in the main (non-simulator) process.

The kernels themselves are tested in the simulator (tests/cuda_sim), for PTX
compilation (test_cuda_ptx.py) and on a real GPU (test_cuda_gpu.py).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import attnkit as ak
from attnkit._backend import choose as choose_backend, cuda_status

USABLE, REAL_GPU, REASON = cuda_status()


class FakeDeviceArray:
    """Something that looks like a GPU array (CuPy, PyTorch CUDA tensor, numba device array)."""

    def __init__(self, shape):
        self.shape = shape

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<f4", "data": (0, False), "version": 3}


def _arrays(rng):
    return rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 4))


@pytest.mark.skipif(USABLE, reason="a GPU is present: backend='cuda' works here")
def test_cuda_backend_without_gpu_says_why_and_how_to_fix(rng):
    q, k, v = _arrays(rng)
    calls = [lambda: ak.attention(q, k, v, backend="cuda"),
             lambda: ak.attention_weights(q, k, backend="cuda"),
             lambda: ak.attention_stats(q, k, backend="cuda")]
    for call in calls:
        with pytest.raises(ak.BackendUnavailableError,
                           match=r"backend='cuda': the CUDA kernels cannot run here: .+\. "
                                 r"Fix: use backend='cpu' \(or 'auto'\)") as info:
            call()
        assert REASON in str(info.value)


@pytest.mark.skipif(REAL_GPU, reason="a GPU is present: 'auto' picks it")
def test_auto_is_the_cpu_without_gpu(rng):
    q, k, v = _arrays(rng)
    assert choose_backend("auto", q=q, k=k, v=v) == "cpu"
    np.testing.assert_array_equal(ak.attention(q, k, v), ak.attention(q, k, v, backend="cpu"))


@pytest.mark.skipif(USABLE, reason="a GPU is present: GPU arrays are computed there")
def test_gpu_array_without_gpu_names_the_argument_and_fix(rng):
    q, k, v = _arrays(rng)
    with pytest.raises(ak.BackendUnavailableError,
                       match=r"k: got a GPU array \(FakeDeviceArray\), but the CUDA backend cannot "
                             r"run here .*Fix: copy it to the host first"):
        ak.attention_stats(q, FakeDeviceArray(k.shape))


def test_cpu_backend_refuses_gpu_arrays(rng):
    q, k, v = _arrays(rng)
    with pytest.raises(ak.BackendUnavailableError,
                       match=r"v: got a GPU array \(FakeDeviceArray\), but backend='cpu' computes "
                             r"on the host. Fix: use backend='cuda'"):
        ak.attention(q, k, FakeDeviceArray(v.shape), backend="cpu")


def test_auto_never_selects_the_simulator():
    """With NUMBA_ENABLE_CUDASIM=1 kernels could run (slowly), but 'auto' must not pick them."""
    pytest.importorskip("numba_cuda", reason="needs the GPU extra")
    code = ("import numpy as np; from attnkit._backend import choose, cuda_status; "
            "x = np.ones((2, 3)); print(choose('auto', q=x, k=x, v=x), cuda_status()[:2])")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu", "(True,", "False)"]
