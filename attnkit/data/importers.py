"""Import attention that other tools saved, as schema-1 datasets.

Hugging Face models called with ``output_attentions=True`` return a tuple with
one ``(batch, heads, n, n)`` tensor per layer. People save that tuple as an
``.npz`` (one array per layer), a stacked ``.npy`` ``(layer, batch, heads, n,
n)``, a ``.safetensors`` file or a ``.pt`` pickle; :func:`from_hf_attentions`
reads any of these (``.pt`` only when torch is installed) or the tuple itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import errors
from .build import from_arrays

__all__ = ["from_hf_attentions", "load_layer_arrays"]


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _layers_from_mapping(path: Path, mapping) -> list[np.ndarray]:
    names = sorted(mapping, key=_natural_key)
    if not names:
        raise errors.value_error(str(path), "at least one array", "an empty file",
                                 "save the attentions tuple, one array per layer")
    if len(names) == 1:
        stacked = np.asarray(mapping[names[0]])
        return list(stacked) if stacked.ndim == 5 else [stacked]
    return [np.asarray(mapping[name]) for name in names]


def load_layer_arrays(path) -> list[np.ndarray]:
    """Read per-layer attention arrays from ``.npz``, ``.npy``, ``.safetensors`` or ``.pt``.

    Several arrays in one file are taken as layers in natural key order
    (``layer_2`` before ``layer_10``); a single 5-d array is split along its
    first axis.

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> layers = [np.full((1, 2, 3, 3), 1 / 3) for _ in range(2)]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.savez(os.path.join(tmp, "a.npz"), *layers)
    ...     [a.shape for a in ak.importers.load_layer_arrays(os.path.join(tmp, "a.npz"))]
    [(1, 2, 3, 3), (1, 2, 3, 3)]
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file. Fix: check the path.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as data:
            return _layers_from_mapping(path, {name: data[name] for name in data.files})
    if suffix == ".npy":
        return _layers_from_mapping(path, {"stacked": np.load(path)})
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError(
                f"{path}: reading .safetensors needs the safetensors package. "
                "Fix: pip install safetensors"
            ) from None
        return _layers_from_mapping(path, load_file(str(path)))
    if suffix in (".pt", ".pth"):
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"{path}: reading .pt files needs torch, which attnkit does not require. "
                "Fix: pip install torch, or re-save the tuple with numpy (np.savez) or "
                "safetensors."
            ) from None
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(loaded, dict):
            loaded = [loaded[key] for key in sorted(loaded, key=_natural_key)]
        if not isinstance(loaded, (list, tuple)):
            loaded = [loaded] if loaded.ndim == 4 else list(loaded)
        return [t.detach().to(torch.float32).numpy() for t in loaded]
    raise errors.value_error(
        str(path), "a .npz, .npy, .safetensors or .pt file", f"suffix {suffix!r}",
        "save the attentions tuple with np.savez(path, *attentions)",
    )


def _lengths_from_mask(attention_mask, batch: int, n: int) -> np.ndarray:
    mask = np.asarray(attention_mask)
    if mask.shape != (batch, n):
        raise errors.shape_error(
            "attention_mask", f"({batch}, {n}) (batch, tokens)", mask.shape,
            "pass the tokenizer's attention_mask for the same batch",
        )
    lengths = mask.astype(bool).sum(axis=1)
    prefix = np.arange(n)[None, :] < lengths[:, None]
    if not np.array_equal(mask.astype(bool), prefix):
        raise errors.value_error(
            "attention_mask", "right padding (ones, then zeros)", "left or inner padding",
            "tokenize with padding_side='right'",
        )
    return lengths.astype(np.int64)


def from_hf_attentions(attentions, *, tokens=None, attention_mask=None, model="", source=""):
    """Build a schema-1 dataset from Hugging Face ``output_attentions``.

    Parameters
    ----------
    attentions : tuple of array_like, array_like or path
        One ``(batch, heads, n, n)`` array per layer (the model's output), a
        stacked ``(layer, batch, heads, n, n)`` array, or a file
        (see :func:`load_layer_arrays`).
    tokens : list of list of str, optional
        Tokens per sample (ragged allowed).
    attention_mask : array_like, shape (batch, n), optional
        The tokenizer's mask (right padding); sets each sample's length, and
        attention outside it becomes NaN.
    model, source : str
        Provenance attrs (``source`` defaults to the file name when reading one).

    Returns
    -------
    xarray.Dataset
        Schema-1 dataset with ``attention`` (sample, layer, head, query, key).

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> e = np.exp(rng.standard_normal((3, 2, 4, 5, 5)))          # 3 layers, batch 2
    >>> layers = tuple(e / e.sum(-1, keepdims=True))
    >>> ds = ak.from_hf_attentions(layers, attention_mask=[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    >>> dict(ds.attention.sizes), ds.length.values.tolist()
    ({'sample': 2, 'layer': 3, 'head': 4, 'query': 5, 'key': 5}, [5, 3])
    """
    if isinstance(attentions, (str, Path)):
        source = source or Path(attentions).name
        layers = load_layer_arrays(attentions)
    elif isinstance(attentions, (list, tuple)):
        layers = [np.asarray(layer) for layer in attentions]
    else:
        stacked = np.asarray(attentions)
        if stacked.ndim != 5:
            raise errors.shape_error(
                "attentions", "a tuple of (batch, heads, n, n) arrays or a stacked "
                "(layer, batch, heads, n, n) array", stacked.shape,
                "pass the model's output_attentions tuple",
            )
        layers = list(stacked)
    shapes = {layer.shape for layer in layers}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise errors.shape_error(
            "attentions", "layers of one shape (batch, heads, n, n)", sorted(shapes),
            "pass every layer of one forward pass",
        )
    stacked = np.stack(layers, axis=1)  # (batch, layer, head, n, n)
    batch, n = stacked.shape[0], stacked.shape[-1]
    lengths = None if attention_mask is None else _lengths_from_mask(attention_mask, batch, n)
    return from_arrays(stacked, tokens=tokens, lengths=lengths, model=model, source=source)
