"""Figures of attention and of attnkit's analyses (matplotlib).

Every function returns a :class:`matplotlib.figure.Figure` with constrained
layout and never calls ``plt.show()``. Functions drawing one panel take
``ax=`` to draw into an existing axes; multi-panel ones take ``fig=``.
Attention maps use perceptually uniform colour maps (viridis, magma,
cividis) with 0 at the dark end; padding (NaN) is drawn light grey.

This package imports matplotlib when it draws; ``import attnkit`` does not import it.
Every public name is re-exported here (``attnkit.plot.<name>``); the modules are

* :mod:`~attnkit.plot.matrices` -- attention and rollout/flow matrices:
  :func:`heatmap`, :func:`matrix_map` (:func:`rollout_map`, :func:`flow_map`),
  :func:`alignment`;
* :mod:`~attnkit.plot.heads` -- every layer and head: :func:`head_grid`;
* :mod:`~attnkit.plot.tokens` -- what feeds [CLS]: :func:`cls_bar`; several per-token
  scores side by side: :func:`token_scores`;
* :mod:`~attnkit.plot.patches` -- maps on an image's patch grid, over the image:
  :func:`patch_overlay` (one map), :func:`image_panel` (every map of one image),
  :func:`sink_figure` (the attention-sink artefact);
* :mod:`~attnkit.plot.stats` -- head statistics: :func:`head_stats_plot`,
  :func:`special_token_plot`;
* :mod:`~attnkit.plot.correlation` -- correlation with ablation:
  :func:`correlation_plot` (:func:`correlation_table`);
* :mod:`~attnkit.plot.evaluation` -- the faithfulness study: :func:`score_forest`
  (scores against controls), :func:`faithfulness_plot` (AOPC),
  :func:`perturbation_plot` (curves);
* :mod:`~attnkit.plot.performance` -- benchmark results: :func:`throughput_plot`,
  :func:`memory_plot`, :func:`cost_plot` (:func:`load_results`);
* :mod:`~attnkit.plot.dataset` -- :func:`plot_dataset` (behind ``ds.attn.plot(kind=...)``);
* :mod:`~attnkit.plot.save` -- :func:`save_figure`, :class:`FigureFolder`;
* :mod:`~attnkit.plot.common` -- what the figures share (figure creation, input
  checks, token ticks, colours).

Examples
--------
>>> import numpy as np, attnkit as ak
>>> from attnkit import plot
>>> a = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]])
>>> fig = plot.heatmap(a, tokens=["the", "cat", "sat"], title="one head")
>>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
['the', 'cat', 'sat']
"""

from __future__ import annotations

from .correlation import correlation_plot, correlation_table
from .dataset import KINDS, plot_dataset
from .evaluation import faithfulness_plot, perturbation_plot, score_forest
from .heads import head_grid
from .matrices import alignment, flow_map, heatmap, matrix_map, rollout_map
from .patches import image_panel, patch_overlay, sink_figure
from .performance import cost_plot, load_results, memory_plot, throughput_plot
from .save import FORMATS, FigureFolder, save_figure
from .stats import head_stats_plot, special_token_plot
from .tokens import cls_bar, token_scores

__all__ = [
    "score_forest",
    "faithfulness_plot",
    "perturbation_plot",
    "heatmap",
    "head_grid",
    "alignment",
    "matrix_map",
    "rollout_map",
    "flow_map",
    "cls_bar",
    "token_scores",
    "patch_overlay",
    "image_panel",
    "sink_figure",
    "head_stats_plot",
    "special_token_plot",
    "correlation_plot",
    "correlation_table",
    "throughput_plot",
    "memory_plot",
    "cost_plot",
    "load_results",
    "plot_dataset",
    "save_figure",
    "FigureFolder",
    "KINDS",
    "FORMATS",
]
