"""Attention datasets: build, check, save and open (schema version 1).

An attention dataset is an :class:`xarray.Dataset` holding

* ``attention`` (sample, layer, head, query, key): row-stochastic over ``key``
  inside each sample's valid length; the padding is NaN so accidental use shows;
* ``length`` (sample) int: the number of valid tokens of each sample;
* ``token`` (sample, position) str coordinate, padded with ``""``;
* optional ``q``, ``k``, ``v`` (sample, layer, head, position, dim),
  ``gradient`` (same dims as ``attention``), ``embedding`` (sample, feature) and
  ``impact`` (sample, position, method);
* attrs ``attnkit_schema=1``, ``model``, ``source``, ``created_with``. Attribute
  values must be str, int or float (or a flat sequence of numbers, e.g.
  ``grid=(h, w)``); bool and dict are rejected because netCDF cannot hold them.

One job per module:

* :mod:`~attnkit.data.build`: :func:`from_arrays`;
* :mod:`~attnkit.data.schema`: :func:`validate`, :data:`SCHEMA_VERSION` and the attr checks;
* :mod:`~attnkit.data.io`: :func:`save_dataset`, :func:`open_dataset`, :func:`write_atomic`,
  :func:`read_error` and the atomic file writer :func:`atomic_file`;
* :mod:`~attnkit.data.importers`: :func:`from_hf_attentions`, attention saved by other tools
  (with :func:`load_tokens` and :func:`load_attention_mask`; ``attnkit import``);
* :mod:`~attnkit.data.shipped`: the shipped datasets, found from anywhere (``ak.datasets``);
* :mod:`~attnkit.data.accessor`: the ``ds.attn`` accessor, registered by the functions above
  on every dataset they make or open.

xarray is imported inside the functions and zarr only when a zarr store is
written or read, so ``import attnkit`` stays light.
"""

from . import importers, shipped
from .build import from_arrays
from .importers import from_hf_attentions, load_attention_mask, load_layer_arrays, load_tokens
from .io import atomic_file, normal_mode, open_dataset, read_error, save_dataset, write_atomic
from .schema import SCHEMA_VERSION, validate

__all__ = ["SCHEMA_VERSION", "from_arrays", "validate", "save_dataset", "open_dataset",
           "write_atomic", "read_error", "atomic_file", "normal_mode", "importers", "shipped",
           "from_hf_attentions", "load_layer_arrays", "load_tokens", "load_attention_mask"]
