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
    # Numba's np.dot calls SciPy's BLAS, which Numba loads only when a kernel
    # first runs. Load it now: a controller made earlier never sees it, and the
    # limit silently misses the library that matters (seen: 2.6x slower).
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded_blas():
    """Context manager limiting every loaded BLAS to one thread (~0.03 ms)."""
    try:
        return _controller().limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl cannot see the BLAS
        return contextlib.nullcontext()
