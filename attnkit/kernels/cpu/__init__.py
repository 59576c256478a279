"""Numba CPU kernels (``@njit``, ``parallel=True`` where work splits)."""
