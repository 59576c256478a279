"""The ``ds.attn`` accessor: attnkit's functions as methods of attention datasets.

Every method only delegates to the public function of the same job, passing
the dataset as the first argument, so the two spellings always agree::

    ds.attn.head_stats()   == ak.head_stats(ds)
    ds.attn.rollout(...)   == ak.rollout(ds, ...)

The accessor is registered when this module is imported; ``ak.from_arrays``
and ``ak.open_dataset`` import it, so datasets made by attnkit always have it.
For a Dataset built by hand, ``import attnkit.data.accessor`` first.

Examples
--------
>>> import numpy as np, attnkit as ak
>>> ds = ak.from_arrays(np.full((2, 1, 3, 3), 1 / 3))
>>> ds.attn.rollout().dims
('sample', 'query', 'key')
"""

from __future__ import annotations

import importlib

import xarray as xr

__all__ = ["AttentionAccessor", "registered_xarray"]


def _public(name: str):
    """The public attnkit function ``name``, imported when first needed."""
    ak = importlib.import_module("attnkit")
    return getattr(ak, name)


@xr.register_dataset_accessor("attn")
class AttentionAccessor:
    """Methods of an attention dataset (schema 1); see :mod:`attnkit.data.accessor`."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def validate(self, **kwargs):
        """Check the schema; see :func:`attnkit.validate`."""
        return _public("validate")(self._ds, **kwargs)

    def save(self, path, **kwargs):
        """Write atomically; see :func:`attnkit.save_dataset`."""
        return _public("save_dataset")(self._ds, path, **kwargs)

    def head_stats(self, **kwargs):
        """Per-head statistics; see :func:`attnkit.head_stats`."""
        return _public("head_stats")(self._ds, **kwargs)

    stats = head_stats

    def rollout(self, **kwargs):
        """Attention rollout; see :func:`attnkit.rollout`."""
        return _public("rollout")(self._ds, **kwargs)

    def grad_rollout(self, **kwargs):
        """Gradient-weighted rollout from the stored ``gradient``; see :func:`attnkit.grad_rollout`."""
        return _public("grad_rollout")(self._ds, None, **kwargs)

    def flow(self, **kwargs):
        """Attention flow; see :func:`attnkit.attention_flow`."""
        return _public("attention_flow")(self._ds, **kwargs)

    def scores(self, kind: str = "rollout", **kwargs):
        """[CLS] scores per layer; see :func:`attnkit.attention_scores`."""
        return _public("attention_scores")(self._ds, kind, **kwargs)

    def correlate(self, score: str = "rollout", impact=None, *, layers=None, residual=0.5,
                  **kwargs):
        """Correlate a score with the stored ``impact``; see :func:`attnkit.correlate`.

        ``impact`` picks an ablation method (e.g. ``"delete"``); by default every
        method is correlated (the result keeps a ``method`` dim).
        """
        scores = _public("attention_scores")(self._ds, score, layers=layers, residual=residual)
        target = self._ds["impact"]
        if impact is not None:
            # a dict: `sel(method=...)` would be xarray's inexact-matching keyword
            target = target.sel({"method": impact}, drop=True)
        return _public("correlate")(scores, target, **kwargs)

    def plot(self, kind: str = "heatmap", **kwargs):
        """Draw a figure of this dataset; see :mod:`attnkit.plot`."""
        plot = importlib.import_module("attnkit.plot")
        return plot.plot_dataset(self._ds, kind=kind, **kwargs)


def registered_xarray():
    """The xarray module, with ``ds.attn`` registered (importing this module did that).

    The dataset functions (``from_arrays``, ``validate``, ``open_dataset``)
    import this inside their bodies, so ``import attnkit`` does not import
    xarray and every dataset attnkit makes or opens has the accessor.
    """
    return xr
