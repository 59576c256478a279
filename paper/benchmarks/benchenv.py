"""What every benchmark script shares: the OpenBLAS variables unset before NumPy is
imported, the record of that, and atomic writes of the results.

Import it first, before NumPy::

    from benchenv import UNSET, environment_unset, write_atomic   # noqa: E402 after it

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are set on the reference machines and slow
NumPy's BLAS; they are removed from the benchmark process (and the workers it
starts) only, never in tests or CI.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The variables removed, with the values they had (empty where none was set).
UNSET = {name: os.environ.pop(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
         if name in os.environ}


def environment_unset() -> dict:
    """The record of :data:`UNSET` that the result files carry."""
    return {"variables": sorted(UNSET), "note": (
        "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from this process's environment "
        "(and its workers') before NumPy is imported; the ones listed were set")}


def write_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
