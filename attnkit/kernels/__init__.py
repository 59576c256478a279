"""Compute kernels: plain loops, no validation; callers allocate the outputs.

``cpu`` holds Numba JIT kernels. They are imported lazily by the public API so
that ``import attnkit`` does not import Numba.

Caching caveat for developers: Numba's disk cache (``cache=True``) is keyed on
the source file of each kernel only. After editing a helper module that a
kernel in another file inlines (``rowops.py``, ``masking.py``, ``gemm.py``,
``vector_ir.py``), clear the
caches (``make clean`` or delete ``attnkit/kernels/cpu/__pycache__``) or the
old code keeps running. Installs and fresh clones are unaffected.
"""
