"""Multiple-comparison control (placeholder: being written; see issue 18)."""

from __future__ import annotations

__all__ = ["adjust_pvalues"]


def adjust_pvalues(p, method="holm"):
    raise NotImplementedError("adjust_pvalues: not written yet")
