"""Faithfulness metrics (placeholder: being written; see issue 18)."""

from __future__ import annotations

__all__ = ["faithfulness", "perturbation_curve"]


def faithfulness(model, inputs, scores, *, method="delete", bins=(0.01, 0.05, 0.1, 0.2, 0.5)):
    raise NotImplementedError("faithfulness: not written yet")


def perturbation_curve(model, inputs, scores, *, order="most", mode="deletion", fractions=None):
    raise NotImplementedError("perturbation_curve: not written yet")
