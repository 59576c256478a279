"""Where the CUDA kernels run, and the device-array plumbing around them.

The same code runs on a GPU and in Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported). The few places
that differ are here: device-array detection and views, launches (a kernel
needing more than 48 KB of dynamic shared memory must opt in on a GPU), and
the exp2/log2 functions the kernels call (libdevice on the GPU, NumPy in the
simulator, which runs kernels as Python).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings

import numpy as np
from numba import cuda
from numba.cuda.core import config as _cuda_config

#: True when Numba's CUDA simulator replaces the GPU (tests only; never picked by "auto").
SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)

#: Static/default dynamic shared memory a kernel may use without opting in.
DEFAULT_SHARED_BYTES = 48 * 1024

if SIMULATOR:
    exp2_f32 = exp2_f64 = np.exp2
    log2_f32 = log2_f64 = np.log2
else:
    from numba.cuda import libdevice

    exp2_f32, exp2_f64 = libdevice.exp2f, libdevice.exp2
    log2_f32, log2_f64 = libdevice.log2f, libdevice.log2


class Override:
    """A setting that tests and tuning replace inside a ``with`` block (e.g. a tiling).

    ``value`` is None unless :meth:`use` is active.
    """

    def __init__(self) -> None:
        self.value = None

    @contextlib.contextmanager
    def use(self, value):
        previous, self.value = self.value, value
        try:
            yield
        finally:
            self.value = previous


def math_for(acc: np.dtype):
    """``(exp2, log2)`` device functions for the accumulation dtype."""
    if np.dtype(acc) == np.float64:
        return exp2_f64, log2_f64
    return exp2_f32, log2_f32


def usable() -> tuple[bool, str]:
    """Whether kernels can run here (a GPU, or the simulator), and why not."""
    if SIMULATOR:
        return True, ""
    try:
        if cuda.is_available():
            return True, ""
    except Exception as exc:  # pragma: no cover - is_available should not raise
        return False, f"CUDA failed to initialise ({exc})"
    reason = "no CUDA GPU or driver was found (numba.cuda.is_available() is False)"
    try:
        err = cuda.cuda_error()
    except Exception:  # pragma: no cover
        err = None
    if err is not None:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if first:
            reason += f": {first}"
    return False, reason


if SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _FakeCUDAArray

    class _SimArray(_FakeCUDAArray):
        """A simulator device array whose ``shape`` is a plain tuple (negative indices work)."""

        @property
        def shape(self):
            return self._ary.shape


def as_device(x):
    """A Numba device array viewing ``x`` (no copy)."""
    if SIMULATOR:
        if getattr(x, "__cuda_ndarray__", False):
            return _SimArray(x._ary)
        raise TypeError(f"{type(x).__name__} is not a simulator device array")
    if isinstance(x, cuda.devicearray.DeviceNDArray):
        return x
    return cuda.as_cuda_array(x)


def _collapse(shape, strides):
    """(size, stride) of the leading dims as one axis, or None if they do not collapse."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not dims:
        return int(np.prod(shape, dtype=np.int64)), 0
    size, stride = dims[-1]
    for n, s in reversed(dims[:-1]):
        if s != stride * size:
            return None
        size *= n
    return size, stride


def view4d(name: str, x):
    """View a device array (..., rows, cols) as (B, H, rows, cols) without copying.

    ``H`` is the last leading dim (heads) and ``B`` all earlier ones
    collapsed; arbitrary strides are kept (the kernels index with strides),
    so e.g. a transposed ``(B, n, H, d) -> (B, H, n, d)`` tensor needs no copy.
    """
    shape = tuple(int(s) for s in x.shape)
    strides = tuple(int(s) for s in x.strides)
    lead, lead_strides = shape[:-2], strides[:-2]
    if lead:
        heads, head_stride = lead[-1], lead_strides[-1]
        outer = _collapse(lead[:-1], lead_strides[:-1]) if len(lead) > 1 else (1, 0)
    else:
        heads, head_stride, outer = 1, 0, (1, 0)
    if outer is None:
        raise ValueError(
            f"{name}: expected a device array whose batch dims can be viewed as one axis, got "
            f"shape {shape} with strides {strides}. Fix: make it contiguous on the device "
            f"first (e.g. {name}.contiguous() in PyTorch, cupy.ascontiguousarray({name}))."
        )
    shape4 = (outer[0], heads) + shape[-2:]
    strides4 = (outer[1], head_stride) + strides[-2:]
    if SIMULATOR:
        return _SimArray(np.lib.stride_tricks.as_strided(x._ary, shape4, strides4,
                                                         writeable=False))
    return cuda.devicearray.DeviceNDArray(shape4, strides4, x.dtype, gpu_data=x.gpu_data)


def to_device(x):
    """Copy a host (NumPy) array to the device; anything else is taken as on the device already."""
    if not isinstance(x, np.ndarray):
        return x
    return cuda.to_device(np.ascontiguousarray(x))


def empty(shape, dtype):
    """An uninitialised C-contiguous device array."""
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def max_shared_bytes() -> int:
    """Largest dynamic shared memory one block may opt in to on this device."""
    if SIMULATOR:
        return 227 * 1024
    dev = cuda.get_current_device()
    try:
        return int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    except Exception:  # pragma: no cover - very old drivers
        return DEFAULT_SHARED_BYTES


_opted_in: set = set()
_opt_lock = threading.Lock()


def _opt_in(kernel, args, smem: int) -> None:
    """Let the compiled kernel for ``args`` use ``smem`` bytes of dynamic shared memory."""
    argtypes = tuple(kernel.typeof_pyval(a) for a in args)
    compiled = kernel.compile(argtypes)
    cufunc = compiled._codelibrary.get_cufunc()
    key = (id(cufunc), smem)
    with _opt_lock:
        if key in _opted_in:
            return
        from numba.cuda.cudadrv.driver import binding, driver

        attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        driver.cuKernelSetAttribute(attr, int(smem), cufunc.handle, cufunc.device.id)
        _opted_in.add(key)


def _quiet():
    """Suppress Numba's performance warnings (small grids, host arrays) for a launch."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    for module in ("numba.core.errors", "numba.cuda.core.errors"):
        try:
            cls = __import__(module, fromlist=["NumbaPerformanceWarning"]).NumbaPerformanceWarning
        except (ImportError, AttributeError):  # pragma: no cover
            continue
        warnings.simplefilter("ignore", cls)
    return ctx


def launch(kernel, blocks: int, block: tuple, smem: int, *args) -> None:
    """Launch ``kernel`` on ``blocks`` blocks of ``block`` = (x, y) threads."""
    if blocks <= 0:
        return
    ctx = _quiet()
    try:
        if not SIMULATOR and smem > DEFAULT_SHARED_BYTES:
            _opt_in(kernel, args, smem)
        kernel[(int(blocks),), block, 0, int(smem)](*args)
    finally:
        ctx.__exit__(None, None, None)


# ---------------------------------------------------------------- small kernels
_NONFINITE_THREADS = 256
_FLOAT_MAX = np.finfo(np.float64).max


@cuda.jit
def _count_nonfinite(x, count):
    """count[0] += number of NaN/inf entries of the 4-d array x."""
    b_, h_, r_, c_ = x.shape
    total = b_ * h_ * r_ * c_
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    found = 0
    for idx in range(start, total, step):
        c = idx % c_
        rest = idx // c_
        r = rest % r_
        rest = rest // r_
        h = rest % h_
        b = rest // h_
        v = np.float64(x[b, h, r, c])
        if not abs(v) <= _FLOAT_MAX:  # NaN compares false
            found += 1
    if found:
        cuda.atomic.add(count, 0, found)


def count_nonfinite(x4) -> int:
    """Number of NaN/inf entries of a 4-d device array (one pass on the device)."""
    total = math.prod(x4.shape)
    if total == 0:
        return 0
    count = cuda.to_device(np.zeros(1, dtype=np.int64))
    threads = 32 if SIMULATOR else _NONFINITE_THREADS
    blocks = min(-(-total // threads), 1 if SIMULATOR else 4096)
    ctx = _quiet()
    try:
        _count_nonfinite[(blocks,), (threads,)](x4, count)
    finally:
        ctx.__exit__(None, None, None)
    return int(count.copy_to_host()[0])
