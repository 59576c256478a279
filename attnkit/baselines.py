"""Control scores (placeholder: being written; see issue 18)."""

from __future__ import annotations

__all__ = ["baseline_scores"]


def baseline_scores(ds, kind="random", seed=0):
    raise NotImplementedError("baseline_scores: not written yet")
