"""attnkit: exact, fast attention and attention analysis.

Import as ``import attnkit as ak``. Importing is cheap: Numba kernels are
imported and compiled on first use, and CUDA is touched only by the CUDA
backend.

Examples
--------
>>> import numpy as np, attnkit as ak
>>> q = np.random.default_rng(0).standard_normal((8, 4, 16))
>>> ak.attention(q, q, q).shape
(8, 4, 16)
"""

from . import equivariance, masks, models, positional
from ._version import __version__
from .ablation import ablate
from .attribution import ATTRIBUTION_METHODS, attribute
from .attention import STAT_NAMES, attention, attention_stats, attention_weights
from .baselines import baseline_scores
from .correlate import compare_correlations, correlate
from .data import shipped as datasets
from .data import (SCHEMA_VERSION, from_arrays, from_hf_attentions, importers, open_dataset,
                   save_dataset, validate)
from .errors import AttnkitError, BackendUnavailableError, WeightsTooLargeError
from .equivariance import check_equivariance
from .faithfulness import faithfulness, perturbation_curve
from .flow import attention_flow
from .options import get_options, set_options
from .patches import patch_grid, patch_maps
from .pvalues import adjust_pvalues
from .rollout import augmented_attention, grad_rollout, rollout, rollout_rows
from .scores import SCORE_KINDS, attention_scores
from .sinks import attention_sinks
from .stats import head_stats
from .variants import additive_attention, linear_attention, luong_attention, multi_head_attention
from .view import view

__all__ = [
    "__version__",
    "attention",
    "attention_weights",
    "attention_stats",
    "STAT_NAMES",
    "multi_head_attention",
    "additive_attention",
    "luong_attention",
    "linear_attention",
    "masks",
    "importers",
    "datasets",
    "equivariance",
    "check_equivariance",
    "models",
    "ablate",
    "attribute",
    "ATTRIBUTION_METHODS",
    "from_hf_attentions",
    "positional",
    "get_options",
    "set_options",
    "AttnkitError",
    "BackendUnavailableError",
    "WeightsTooLargeError",
    "from_arrays",
    "validate",
    "save_dataset",
    "open_dataset",
    "SCHEMA_VERSION",
    "rollout",
    "rollout_rows",
    "grad_rollout",
    "augmented_attention",
    "attention_flow",
    "head_stats",
    "attention_scores",
    "attention_sinks",
    "patch_grid",
    "patch_maps",
    "SCORE_KINDS",
    "correlate",
    "compare_correlations",
    "adjust_pvalues",
    "baseline_scores",
    "faithfulness",
    "perturbation_curve",
    "view",
]
