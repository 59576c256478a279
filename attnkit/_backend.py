"""The one place that picks a compute backend and recognises GPU arrays.

Every public function with a ``backend=`` argument (attention, attention_weights,
attention_stats, rollout, rollout_rows, the attention variants) calls
:func:`choose`, so ``"auto"`` means the same everywhere:

* GPU inputs (numba device arrays, simulator arrays, anything with
  ``__cuda_array_interface__``: CuPy, PyTorch) run on the CUDA backend;
* host inputs run on the CUDA backend when a real GPU is present (never the
  simulator), unless ``ATTNKIT_AUTO_BACKEND=cpu`` is set, and on the CPU
  otherwise.

``"cpu"`` refuses GPU inputs; ``"cuda"`` raises
:class:`~attnkit.errors.BackendUnavailableError` where the kernels cannot run.
The kernel modules below (:mod:`attnkit.kernels.cpu.api`,
:mod:`attnkit.kernels.cuda.api`) validate nothing: they trust what the public
functions pass them.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from . import errors

__all__ = ["BACKENDS", "choose", "cuda_status", "gpu_array_error", "is_device_array", "kernels"]

#: Values every ``backend=`` argument accepts.
BACKENDS = errors.BACKENDS

_NVIDIA_DEVICES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/proc/driver/nvidia")


def is_device_array(x) -> bool:
    """True for a GPU array: CUDA Array Interface (CuPy, PyTorch, Numba) or a simulator array.

    Examples
    --------
    >>> import numpy as np
    >>> is_device_array(np.zeros(3))
    False
    """
    if isinstance(x, np.ndarray):
        return False
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, bool, str]:
    """``(kernels can run, a real GPU is present, why not)``, computed once per process.

    The simulator (``NUMBA_ENABLE_CUDASIM=1``) can run kernels but is never a
    real GPU. Numba's CUDA package is imported only where a driver may exist,
    so this is cheap and never raises on machines without a GPU.

    Examples
    --------
    >>> usable, real_gpu, reason = cuda_status()
    >>> isinstance(reason, str)
    True
    """
    import importlib.util
    import sys

    if importlib.util.find_spec("numba_cuda") is None:
        return False, False, "numba-cuda is not installed"
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    if sys.platform.startswith("linux") and not simulator \
            and not any(os.path.exists(p) for p in _NVIDIA_DEVICES):
        return False, False, "no NVIDIA driver was found (no /dev/nvidia* device)"
    try:
        from .kernels.cuda import runtime
    except Exception as exc:  # a broken CUDA install must not break the CPU backend
        return False, False, f"numba.cuda failed to import ({exc})"
    ok, reason = runtime.usable()
    return ok, ok and not runtime.SIMULATOR, reason


def gpu_array_error(name: str, x, reason: str, fix: str) -> errors.BackendUnavailableError:
    """The error for a GPU array that cannot be used where it was passed."""
    return errors.BackendUnavailableError(
        f"{name}: got a GPU array ({type(x).__name__}), but {reason}. Fix: {fix}."
    )


def host_copy_fix(name: str) -> str:
    """How to bring GPU array ``name`` to the host, for error messages."""
    return (f"copy it to the host first, e.g. {name}.copy_to_host(), {name}.cpu().numpy() "
            f"or cupy.asnumpy({name})")


def choose(backend: str, *, cuda_supported: bool = True, what: str = "this computation",
           **arrays) -> str:
    """``"cpu"`` or ``"cuda"`` for ``backend``, given the arrays (by argument name).

    Parameters
    ----------
    backend : {"auto", "cpu", "cuda"}
    cuda_supported : bool
        False where the requested computation has no CUDA implementation
        (e.g. rollout with ``discard_ratio``): "auto" then stays on the CPU
        for host arrays, and "cuda" or GPU arrays give a clear error.
    what : str
        The computation's name, for that error.
    **arrays
        The inputs; GPU arrays among them force the CUDA backend.

    Examples
    --------
    >>> import numpy as np
    >>> choose("cpu", q=np.ones((2, 3)))
    'cpu'
    >>> choose("gpu")
    Traceback (most recent call last):
    ...
    ValueError: backend: expected one of 'auto', 'cpu', 'cuda', got 'gpu'. Fix: pick one of those.
    """
    errors.backend_name(backend)
    on_gpu = [(name, x) for name, x in arrays.items()
              if type(x) is not np.ndarray and is_device_array(x)]
    if backend == "cpu":
        if on_gpu:
            name, x = on_gpu[0]
            raise gpu_array_error(name, x, "backend='cpu' computes on the host",
                                  f"use backend='cuda' (or 'auto'), or copy {name} to the host")
        return "cpu"
    if backend == "cuda" or on_gpu:
        if not cuda_supported:
            raise errors.BackendUnavailableError(
                f"backend='cuda': {what} has no CUDA implementation. Fix: use backend='cpu' "
                "(or 'auto'), which runs it on the CPU"
                + (f", with {on_gpu[0][0]} copied to the host." if on_gpu else ".")
            )
        usable, _, reason = cuda_status()
        if usable:
            return "cuda"
        if backend == "cuda":
            raise errors.BackendUnavailableError(
                f"backend='cuda': the CUDA kernels cannot run here: {reason}. Fix: use "
                "backend='cpu' (or 'auto'), or run on a machine with an NVIDIA GPU and driver, "
                "with the GPU extra installed (pip install 'attnkit[gpu]')."
            )
        name, x = on_gpu[0]
        raise gpu_array_error(
            name, x, f"the CUDA backend cannot run here ({reason})",
            host_copy_fix(name) + ", and use backend='cpu'",
        )
    if not cuda_supported:
        return "cpu"
    if os.environ.get("ATTNKIT_AUTO_BACKEND", "").strip().lower() == "cpu":
        return "cpu"
    return "cuda" if cuda_status()[1] else "cpu"


def kernels(target: str):
    """The kernel API module of a backend chosen by :func:`choose`.

    Both modules offer the same functions over a prepared
    :class:`attnkit._prepare.Problem`: ``attention``, ``weights``, ``stats``
    and ``RowStream`` (rows of rollout).
    """
    api = _KERNEL_APIS.get(target)
    if api is None:  # imported once: an import statement per call costs a tiny call ~1 us
        if target == "cuda":
            from .kernels.cuda import api
        else:
            from .kernels.cpu import api
        _KERNEL_APIS[target] = api
    return api


_KERNEL_APIS: dict = {}
