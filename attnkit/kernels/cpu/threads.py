"""Keep BLAS single-threaded while the parallel Numba kernels run.

The kernels already use every core through ``prange``; each thread calls
BLAS on small tiles. If OpenBLAS also spawned threads inside those calls the
machine would be oversubscribed (seen: one tile shape ran 100x slower, with
OpenBLAS warning about being called from an OpenMP loop).

:func:`single_threaded_blas` is on the path of every small call, so it talks
to threadpoolctl's per-library controllers directly (found once, cached)
instead of building a limiter each time: about 1 us instead of 10-20 us.
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


@functools.lru_cache(maxsize=1)
def _blas_libraries() -> tuple:
    """threadpoolctl's controllers of every loaded BLAS (what ``limit(user_api="blas")`` sets)."""
    return tuple(lib for lib in _controller().lib_controllers if lib.user_api == "blas")


class _OneThread:
    """Sets every BLAS to one thread on entry and restores the ones it changed on exit."""

    __slots__ = ("_changed", "_libraries")

    def __init__(self, libraries) -> None:
        self._libraries = libraries
        self._changed = []

    def __enter__(self):
        for lib in self._libraries:
            threads = lib.get_num_threads()
            if threads != 1:  # already 1 (e.g. OPENBLAS_NUM_THREADS=1): nothing to set or undo
                lib.set_num_threads(1)
                self._changed.append((lib, threads))
        return self

    def __exit__(self, *exc) -> None:
        changed, self._changed = self._changed, []
        for lib, threads in reversed(changed):
            lib.set_num_threads(threads)


def single_threaded_blas():
    """Context manager limiting every loaded BLAS to one thread (~1 us)."""
    try:
        return _OneThread(_blas_libraries())
    except Exception:  # pragma: no cover - threadpoolctl cannot see the BLAS
        return contextlib.nullcontext()
