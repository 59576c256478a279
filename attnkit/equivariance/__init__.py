"""Permutation equivariance and invariance checks.

Self-attention without positional information treats its input as a *set*:
permuting the queries permutes the output rows the same way (equivariance),
and permuting key/value pairs together leaves the output unchanged
(invariance). Masks that depend on positions (causal, local, global tokens)
and positional encodings (sinusoidal, learned, RoPE, ALiBi, relative bias)
break this on purpose. :func:`check_equivariance` measures it for any
function; :func:`builtin_checks` runs a ready-made suite over attnkit's own
kernels, variants, positional encodings and the built-in model.

The package has three layers, each importing only the ones before it:

* :mod:`.report`: :class:`EquivarianceReport`, :class:`TrialResult`,
  :class:`OutputResult` (plain results);
* :mod:`.checker`: :func:`check_equivariance` and its tolerance rule
  (:func:`default_rtol`);
* :mod:`.checks`: the ready-made checks, :func:`builtin_checks` and
  :class:`BuiltinCheck`.

Examples
--------
>>> import numpy as np, attnkit as ak
>>> x = np.random.default_rng(0).standard_normal((6, 4))
>>> ak.equivariance.check_equivariance(lambda x: ak.attention(x, x, x), x).passed
True
"""

from .checker import EXPECTATIONS, RTOL_FACTOR, check_equivariance, default_rtol
from .checks import BuiltinCheck, builtin_checks
from .report import EquivarianceReport, OutputResult, TrialResult

__all__ = [
    "check_equivariance",
    "EquivarianceReport",
    "TrialResult",
    "OutputResult",
    "default_rtol",
    "builtin_checks",
    "BuiltinCheck",
    "EXPECTATIONS",
    "RTOL_FACTOR",
]
