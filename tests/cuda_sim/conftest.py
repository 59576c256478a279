"""Tests of the CUDA kernels in Numba's CUDA simulator.

They need ``NUMBA_ENABLE_CUDASIM=1`` in the environment before Numba is
imported, so they run in their own pytest process (``make test`` does)::

    NUMBA_ENABLE_CUDASIM=1 .venv/bin/python -m pytest tests/cuda_sim

Without that variable (the main test run) this directory is skipped.
Shapes stay tiny (n <= 40, d <= 16): the simulator runs every GPU thread as
a Python thread.
"""

import os

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

collect_ignore_glob = [] if SIMULATED else ["*.py"]
