"""Compute kernels: plain loops, no validation; callers allocate the outputs.

``cpu`` holds Numba JIT kernels. They are imported lazily by the public API so
that ``import attnkit`` does not import Numba.
"""
