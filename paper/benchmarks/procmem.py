"""Resident memory of the current process, read from Linux's /proc (benchmark helper).

Imported by the benchmarks as a sibling module (``python paper/benchmarks/x.py``
puts this folder first on ``sys.path``, and dask's spawned workers inherit it).
"""

from __future__ import annotations

from pathlib import Path


def vm_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``, ...); -1 if absent.

    Examples
    --------
    >>> vm_kb("VmRSS") > 0
    True
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
