"""Keep BLAS single-threaded while the parallel Numba kernels run.

The kernels already use every core through ``prange``; each thread calls
BLAS on small tiles. If OpenBLAS also spawned threads inside those calls the
machine would be oversubscribed (seen: one tile shape ran 100x slower, with
OpenBLAS warning about being called from an OpenMP loop).
"""

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded_blas():
    """Context manager limiting every loaded BLAS to one thread (~0.03 ms)."""
    try:
        return _controller().limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl cannot see the BLAS
        return contextlib.nullcontext()
