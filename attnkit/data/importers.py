"""Import attention that other tools saved, as schema-1 datasets.

Hugging Face models called with ``output_attentions=True`` return a tuple with
one ``(batch, heads, n, n)`` tensor per layer. People save that tuple as an
``.npz`` (one array per layer), a stacked ``.npy`` ``(layer, batch, heads, n,
n)``, a ``.safetensors`` file or a ``.pt`` pickle; :func:`from_hf_attentions`
reads any of these (``.pt`` only when torch is installed) or the tuple itself,
checks it and builds a dataset. :func:`load_tokens` and
:func:`load_attention_mask` read the tokens and the tokenizer's mask of the
same batch. ``attnkit import`` is the command-line front end of these.

What :func:`from_hf_attentions` checks, each with a message naming the fix:

* every layer has one shape ``(batch, heads, n, n)`` (no ragged layers, no
  missing batch axis, self-attention only) and a float dtype;
* the mask is ``(batch, n)`` of 0/1, right padded, with a token in every row;
* one token list per sample, as long as the sample's length in the mask (or
  the padded width ``n``, padding tokens then dropped);
* inside each sample's length the weights are finite and non-negative, and
  every row sums to 1 over the valid keys within ``atol`` (:data:`ROW_SUM_ATOL`,
  or :data:`BF16_ROW_SUM_ATOL` for bfloat16 arrays).

The rows are then divided by their sums (``renormalize=True``), so that
attention saved in half precision meets the schema's 1e-4; the change is at
most ``atol`` relative, and about 1e-7 for float32 attention.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .. import errors
from .build import from_arrays

__all__ = ["from_hf_attentions", "load_layer_arrays", "load_tokens", "load_attention_mask",
           "ATTENTION_FILE_SUFFIXES", "READOUTS", "ROW_SUM_ATOL", "BF16_ROW_SUM_ATOL"]

#: Suffixes of the attention files :func:`load_layer_arrays` reads (``attnkit import``).
ATTENTION_FILE_SUFFIXES = (".npz", ".npy", ".safetensors", ".pt", ".pth")

#: Values of the ``readout`` attr: how the model reads its output (schema 1).
READOUTS = ("cls", "mean", "patches")

#: Default tolerance on the row sums of imported attention (float16/32/64 arrays).
ROW_SUM_ATOL = 1e-3
#: Default tolerance for bfloat16 arrays (8 significant bits: a weight of 0.9 is
#: rounded by up to 2e-3).
BF16_ROW_SUM_ATOL = 1e-2

_SAVE_FIX = "save the tuple with np.savez(path, *[a.float().numpy() for a in out.attentions])"
_TOKENS_FIX = ("pass tokenizer.convert_ids_to_tokens(ids) for each sample of the same batch, "
               "special tokens included")
_TOKENS_EXAMPLE = 'e.g. [["[CLS]", "hello", "[SEP]"], ["[CLS]", "hi", "there", "[SEP]"]]'


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _layers_from_mapping(path: Path, mapping) -> tuple[list[np.ndarray], list[str]]:
    names = sorted(mapping, key=_natural_key)
    if not names:
        raise errors.value_error(str(path), "at least one array", "an empty file",
                                 "save the attentions tuple, one array per layer")
    if len(names) == 1:
        stacked = np.asarray(mapping[names[0]])
        if stacked.ndim == 5:
            return list(stacked), [f"{names[0]}[{i}]" for i in range(len(stacked))]
        return [stacked], names
    return [np.asarray(mapping[name]) for name in names], names


def _read_error(path: Path, kind: str, exc: BaseException) -> ValueError:
    return errors.value_error(str(path), f"a readable {kind}",
                              f"an unreadable file ({type(exc).__name__}: {exc})",
                              f"check the file, or re-save it: {_SAVE_FIX}")


def _as_numpy(t) -> np.ndarray:
    """A NumPy array of an array or a torch tensor (detached, on the CPU; bfloat16, which
    NumPy lacks, becomes float32), without importing torch."""
    if all(hasattr(t, name) for name in ("detach", "cpu", "numpy")):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def _read_layers(path) -> tuple[list[np.ndarray], list[str]]:
    """The arrays of an attention file and their names (for messages)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file. Fix: check the path.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                mapping = {name: data[name] for name in data.files}
        except Exception as exc:
            raise _read_error(path, ".npz archive (np.savez)", exc) from exc
        return _layers_from_mapping(path, mapping)
    if suffix == ".npy":
        try:
            stacked = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise _read_error(path, ".npy array (np.save)", exc) from exc
        return _layers_from_mapping(path, {"stacked": stacked})
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError(
                f"{path}: reading .safetensors needs the safetensors package. "
                "Fix: pip install safetensors"
            ) from None
        try:
            mapping = load_file(str(path))
        except Exception as exc:
            raise _read_error(path, ".safetensors file", exc) from exc
        return _layers_from_mapping(path, mapping)
    if suffix in (".pt", ".pth"):
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"{path}: reading .pt files needs torch, which attnkit does not require. "
                "Fix: pip install torch, or re-save the tuple with numpy (np.savez) or "
                "safetensors."
            ) from None
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _read_error(path, ".pt file (torch.save)", exc) from exc
        if isinstance(loaded, dict):
            names = sorted(loaded, key=_natural_key)
            loaded = [loaded[key] for key in names]
        elif isinstance(loaded, (list, tuple)):
            names = [f"[{i}]" for i in range(len(loaded))]
        elif getattr(loaded, "ndim", 0) == 5:
            names = [f"[{i}]" for i in range(loaded.shape[0])]
            loaded = list(loaded)
        else:
            names, loaded = ["tensor"], [loaded]
        return [_as_numpy(t) for t in loaded], [str(n) for n in names]
    raise errors.value_error(
        str(path), "a .npz, .npy, .safetensors or .pt file", f"suffix {suffix!r}",
        "save the attentions tuple with np.savez(path, *attentions)",
    )


def load_layer_arrays(path) -> list[np.ndarray]:
    """Read per-layer attention arrays from ``.npz``, ``.npy``, ``.safetensors`` or ``.pt``.

    Several arrays in one file are taken as layers in natural key order
    (``layer_2`` before ``layer_10``); a single 5-d array is split along its
    first axis. A file that cannot be read raises a ValueError naming it.

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> layers = [np.full((1, 2, 3, 3), 1 / 3) for _ in range(2)]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.savez(os.path.join(tmp, "a.npz"), *layers)
    ...     [a.shape for a in ak.importers.load_layer_arrays(os.path.join(tmp, "a.npz"))]
    [(1, 2, 3, 3), (1, 2, 3, 3)]
    """
    return _read_layers(path)[0]


# ----------------------------------------------------------------------------- tokens, mask
def _json_kind(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return f"a string {value!r}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"a number {value!r}"
    return type(value).__name__


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected {what}, got no such file. Fix: check the path.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise errors.value_error(str(path), "UTF-8 text", f"undecodable bytes at byte {exc.start}",
                                 "save it as UTF-8 (open(path, 'w', encoding='utf-8'))") from exc


def _token_rows(where: str, rows) -> list[list[str]]:
    """Check a list of token lists (from JSON or Python); ``where`` names it in messages."""
    expected = f"a list of token lists ({_TOKENS_EXAMPLE})"
    if not isinstance(rows, (list, tuple)):
        raise errors.value_error(where, expected, _json_kind(rows), _TOKENS_FIX)
    if not rows:
        raise errors.value_error(where, expected, "an empty list", _TOKENS_FIX)
    if all(isinstance(t, str) for t in rows):
        raise errors.value_error(where, expected, f"a flat list of {len(rows)} strings",
                                 "wrap one sample's tokens in a list: [tokens]")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise errors.value_error(f"{where}[{i}]", "a list of str tokens", _json_kind(row),
                                     _TOKENS_FIX)
        for j, tok in enumerate(row):
            if not isinstance(tok, str):
                raise errors.value_error(
                    f"{where}[{i}]", "str tokens",
                    f"{_json_kind(tok) if not isinstance(tok, (list, tuple)) else 'a list'} "
                    f"at position {j}",
                    "pass token strings (tokenizer.convert_ids_to_tokens(ids)), not ids")
        if not row:
            raise errors.value_error(f"{where}[{i}]", "at least one token", "an empty list",
                                     "drop empty samples from the batch")
        out.append(list(row))
    return out


def load_tokens(path) -> list[list[str]]:
    """Read the tokens of a batch: one list of str per sample.

    A ``.json`` file holds a list of token lists, e.g.
    ``[["[CLS]", "hello", "[SEP]"], ...]``; any other file is text with one
    sample per line, tokens separated by spaces (so tokens cannot contain
    whitespace; use JSON for those). Blank lines at the end are ignored, a blank
    line between samples is an error (a sample with no tokens).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    list of list of str
        One token list per sample (ragged).

    Raises
    ------
    ValueError
        For an empty file, invalid JSON, another JSON shape (an object, a flat
        list of str, numbers instead of str tokens), or an empty sample.

    Examples
    --------
    >>> import json, os, tempfile, attnkit as ak
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open(os.path.join(tmp, "tokens.txt"), "w") as f:
    ...         _ = f.write("[CLS] hello [SEP]\\n[CLS] hi there [SEP]\\n")
    ...     ak.importers.load_tokens(os.path.join(tmp, "tokens.txt"))
    [['[CLS]', 'hello', '[SEP]'], ['[CLS]', 'hi', 'there', '[SEP]']]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with open(os.path.join(tmp, "tokens.json"), "w") as f:
    ...         json.dump(["[CLS]", "hello", "[SEP]"], f)
    ...     ak.importers.load_tokens(os.path.join(tmp, "tokens.json"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...tokens.json: expected a list of token lists ..., got a flat list of 3 strings...
    """
    path = Path(os.fspath(path))
    text = _read_text(path, "a tokens file (.json, or text with one sample per line)")
    if not text.strip():
        raise errors.value_error(str(path), "tokens (a JSON list of token lists, or one sample "
                                 "per line)", "an empty file", _TOKENS_FIX)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise errors.value_error(str(path), "valid JSON (a list of token lists)",
                                     f"{exc.msg} at line {exc.lineno}, column {exc.colno}",
                                     "write it with json.dump(tokens, f)") from exc
        return _token_rows(str(path), data)
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, line in enumerate(lines):
        tokens = line.split()
        if not tokens:
            raise errors.value_error(f"{path}: line {i + 1}", "the space-separated tokens of one "
                                     "sample", "an empty line",
                                     "write one sample per line, without blank lines")
        rows.append(tokens)
    return rows


def load_attention_mask(path) -> np.ndarray:
    """Read a tokenizer's ``attention_mask`` (batch, n) saved as ``.npy``, ``.npz`` or ``.json``.

    An ``.npz`` must hold one array, or one named ``attention_mask`` (so the
    whole tokenizer output, ``np.savez(path, **batch)``, works). A ``.json``
    file holds a list of equally long lists of 0/1. The values are checked by
    :func:`from_hf_attentions`, which knows the batch.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    numpy.ndarray
        The mask as saved, dims (sample, position).

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.savez(os.path.join(tmp, "batch.npz"), input_ids=np.ones((2, 4), int),
    ...              attention_mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))
    ...     ak.importers.load_attention_mask(os.path.join(tmp, "batch.npz")).tolist()
    [[1, 1, 1, 1], [1, 1, 0, 0]]
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected an attention mask (.npy, .npz or .json), got "
                                f"no such file. Fix: check the path.")
    suffix = path.suffix.lower()
    fix = "np.save(path, batch['attention_mask'])"
    if suffix == ".json":
        text = _read_text(path, "an attention mask")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise errors.value_error(str(path), "valid JSON (a list of 0/1 lists)",
                                     f"{exc.msg} at line {exc.lineno}, column {exc.colno}",
                                     "write it with json.dump(mask.tolist(), f)") from exc
        ok = (isinstance(data, list) and data and all(isinstance(r, list) for r in data)
              and len({len(r) for r in data}) == 1)
        if not ok:
            got = ("rows of different lengths" if isinstance(data, list) and data
                   and all(isinstance(r, list) for r in data) else _json_kind(data)
                   if not isinstance(data, list) else "a list that is not a list of lists")
            raise errors.value_error(str(path), "a list of equally long lists of 0/1 "
                                     "(batch, tokens)", got,
                                     "write the padded mask, json.dump(mask.tolist(), f)")
        try:
            return np.asarray(data)
        except (ValueError, TypeError) as exc:  # pragma: no cover - rejected above
            raise errors.value_error(str(path), "a list of lists of 0/1", str(exc), fix) from exc
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise errors.value_error(str(path), "a readable .npy array",
                                     f"an unreadable file ({type(exc).__name__}: {exc})",
                                     fix) from exc
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                names = list(data.files)
                if "attention_mask" in names:
                    return data["attention_mask"]
                if len(names) == 1:
                    return data[names[0]]
        except Exception as exc:
            raise errors.value_error(str(path), "a readable .npz archive",
                                     f"an unreadable file ({type(exc).__name__}: {exc})",
                                     fix) from exc
        raise errors.value_error(str(path), "one array, or one named 'attention_mask'",
                                 f"arrays {names}",
                                 "np.savez(path, attention_mask=batch['attention_mask'])")
    raise errors.value_error(str(path), "a .npy, .npz or .json attention mask",
                             f"suffix {suffix!r}", fix)


# ----------------------------------------------------------------------------- checks
def _is_pathlike(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _check_layers(layers: list[np.ndarray], names: list[str] | None) -> tuple[int, int, int]:
    """(batch, heads, n) after checking every layer has one square 4-d shape and a float dtype."""
    if not layers:
        raise errors.shape_error("attentions", "one (batch, heads, n, n) array per layer",
                                 "no layers", "pass the model's output_attentions tuple")

    def label(i):
        return f"layer {i}" + (f" ({names[i]!r})" if names else "")

    first = layers[0].shape
    for i, layer in enumerate(layers):
        if layer.ndim != 4:
            raise errors.shape_error(
                "attentions", "(batch, heads, n, n) in every layer", f"{layer.shape} in {label(i)}",
                "keep the batch axis: save the output_attentions tuple as returned "
                "(np.savez(path, *attentions)), not attentions[i][0]")
        if layer.shape != first:
            raise errors.shape_error(
                "attentions", f"{first} (batch, heads, n, n) in every layer, like layer 0",
                f"{layer.shape} in {label(i)}",
                "save every layer of one forward pass over one batch (ragged layers come from "
                "mixing batches or models)")
    batch, heads, n, m = first
    if n != m:
        raise errors.shape_error(
            "attentions", "(batch, heads, n, n) with as many queries as keys", first,
            "import self-attention (attentions or decoder_attentions), not cross_attentions")
    if min(first) == 0:
        raise errors.shape_error("attentions", "(batch, heads, n, n) with no empty axis", first,
                                 "save a batch with at least one token")
    for i, layer in enumerate(layers):
        if layer.dtype.kind != "f" and layer.dtype.name != "bfloat16":
            raise errors.dtype_error(f"attentions ({label(i)})", layer.dtype,
                                     "save the softmax probabilities (output_attentions) as floats")
    return batch, heads, n


def _lengths_from_mask(attention_mask, layers: list[np.ndarray]) -> np.ndarray:
    batch, _, n, _ = layers[0].shape
    mask = _as_numpy(attention_mask)
    if mask.shape != (batch, n):
        read = (f"{len(layers)} layer{'s' if len(layers) > 1 else ''} of (batch, heads, n, n) = "
                f"{layers[0].shape}")
        raise errors.shape_error(
            "attention_mask", f"({batch}, {n}) (batch, tokens) like the attentions ({read})",
            mask.shape, "pass the tokenizer's attention_mask of the same (padded) batch, and "
            "every layer of the attentions with its batch axis",
        )
    if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
        shown = (np.unique(mask)[:6].tolist() if mask.dtype.kind in "biuf"
                 else f"dtype {mask.dtype}")
        raise errors.value_error(
            "attention_mask", "only 0 and 1 (the tokenizer's mask)", f"values {shown}",
            "pass tokenizer(...)['attention_mask'], not input_ids or an additive mask")
    mask = mask.astype(bool)
    lengths = mask.sum(axis=1)
    for i in range(batch):
        if lengths[i] == 0:
            raise errors.value_error(f"attention_mask[{i}]", "at least one 1 (a token)",
                                     "a row of zeros", "drop empty samples from the batch")
        if not mask[i, : lengths[i]].all():
            got = "left padding" if not mask[i, 0] else "zeros between ones"
            raise errors.value_error(
                f"attention_mask[{i}]", "right padding (ones, then zeros)", got,
                "set tokenizer.padding_side = 'right' before tokenizing")
    return lengths.astype(np.int64)


def _token_lists(tokens, batch: int, lengths: np.ndarray, n: int, masked: bool):
    """One token list per sample, each as long as the sample (padding tokens dropped)."""
    if _is_pathlike(tokens):
        rows = load_tokens(tokens)
    else:
        if isinstance(tokens, np.ndarray):
            tokens = tokens.tolist()
        if (batch == 1 and isinstance(tokens, (list, tuple)) and tokens
                and all(isinstance(t, str) for t in tokens)):
            tokens = [tokens]  # one sample, as from_arrays accepts
        rows = _token_rows("tokens", tokens)
    if len(rows) != batch:
        raise errors.value_error(
            "tokens", f"one token list per sample ({batch}, the batch of the attentions)",
            f"{len(rows)} lists", _TOKENS_FIX)
    out = []
    for i, row in enumerate(rows):
        length = int(lengths[i])
        if len(row) == length:
            out.append(row)
        elif len(row) == n:
            out.append(row[:length])  # the padded batch's tokens: drop the padding
        else:
            where = (f"sample {i}'s length in attention_mask" if masked
                     else "the attentions' length; pass attention_mask for a padded batch")
            padded = f", or {n} with the padding" if length < n else ""
            raise errors.value_error(f"tokens[{i}]", f"{length} tokens ({where}{padded})",
                                     len(row), _TOKENS_FIX)
    return out


def _where(index) -> str:
    return ", ".join(f"{name} {int(i)}" for name, i in
                     zip(("sample", "layer", "head", "query", "key"), index))


def _check_values(layers: list[np.ndarray], lengths: np.ndarray, atol: float) -> None:
    """Inside each sample's length: finite, >= 0, rows summing to 1 over the valid keys."""
    n = layers[0].shape[-1]
    valid = np.arange(n)[None, :] < lengths[:, None]  # (sample, position)
    inside = valid[:, None, :, None] & valid[:, None, None, :]
    worst = None  # (deviation, (sample, layer, head, query), sum)
    off = 0
    for li, layer in enumerate(layers):
        a = layer if layer.dtype.kind == "f" else layer.astype(np.float32)
        with np.errstate(invalid="ignore"):
            problems = (("non-finite", ~np.isfinite(a) & inside,
                         ("recompute in float32 (float16 can overflow), with the attention_mask "
                          "given to the model")),
                        ("negative", (a < 0) & inside,
                         "save the softmax probabilities (output_attentions), not scores"))
        for kind, bad, fix in problems:
            if bad.any():
                idx = np.unravel_index(np.argmax(bad), bad.shape)
                where = _where((idx[0], li, *idx[1:]))
                raise errors.value_error(
                    "attentions", "finite probabilities >= 0 inside each sample's length",
                    f"{int(bad.sum())} {kind} values in layer {li} (first {float(a[idx]):.4g} at "
                    f"{where})",
                    fix)
        sums = np.where(valid[:, None, None, :], a, 0).sum(axis=-1, dtype=np.float64)
        deviation = np.where(valid[:, None, :], np.abs(sums - 1.0), 0.0)
        bad = deviation > atol
        if bad.any():
            off += int(bad.sum())
            idx = np.unravel_index(np.argmax(deviation), deviation.shape)
            if worst is None or deviation[idx] > worst[0]:
                worst = (deviation[idx], (idx[0], li, *idx[1:]), sums[idx])
    if worst is not None:
        _, idx, total = worst
        raise errors.value_error(
            "attentions", f"rows summing to 1 over each sample's valid keys (atol={atol:g})",
            f"{off} rows off (worst sum {total:.6g} at {_where(idx)})",
            "pass softmax probabilities (output_attentions) of a model given the same "
            "attention_mask (padding keys must get weight 0); for half-precision attention "
            "pass a larger atol, e.g. atol=1e-2 (--atol 1e-2)")


def _renormalized(layers: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """(sample, layer, head, n, n): rows inside the length divided by their sum over the
    valid keys, in float32 (float64 for float64 input); the padding is left as it is."""
    dtype = np.float64 if any(a.dtype == np.float64 for a in layers) else np.float32
    batch, heads, n, _ = layers[0].shape
    out = np.empty((batch, len(layers), heads, n, n), dtype=dtype)
    valid = np.arange(n)[None, :] < lengths[:, None]
    vk = valid[:, None, None, :]
    vq = valid[:, None, :, None]
    for li, layer in enumerate(layers):
        a = layer.astype(np.float64)
        sums = np.where(vk, a, 0.0).sum(axis=-1, keepdims=True)
        sums = np.where(vq, sums, 1.0)
        out[:, li] = np.where(vk & vq, a / sums, a)
    return out


# ----------------------------------------------------------------------------- from_hf_attentions
def from_hf_attentions(attentions, *, tokens=None, attention_mask=None, model="", source="",
                       readout=None, atol=None, renormalize=True):
    """Build a schema-1 dataset from Hugging Face ``output_attentions``, checked.

    Parameters
    ----------
    attentions : tuple of array_like, array_like or path
        One ``(batch, heads, n, n)`` array per layer (the model's output; torch
        tensors are detached and copied to the CPU), a stacked
        ``(layer, batch, heads, n, n)`` array, or a file (see :func:`load_layer_arrays`).
    tokens : list of list of str or path, optional
        Tokens per sample (ragged allowed), or a tokens file
        (:func:`load_tokens`). Each list is as long as the sample's length in
        ``attention_mask`` (or the padded width n: the padding tokens are then
        dropped); without a mask, n long.
    attention_mask : array_like, shape (batch, n), or path, optional
        The tokenizer's 0/1 mask (right padding), or a file
        (:func:`load_attention_mask`); sets each sample's length, and
        attention outside it becomes NaN. Without it every sample is n long.
    model, source : str
        Provenance attrs (``source`` defaults to the file name when reading one).
    readout : {"cls", "mean", "patches"}, optional
        How the model reads its output; stored as the ``readout`` attr.
    atol : float, optional
        Tolerance on the row sums; :data:`ROW_SUM_ATOL` (1e-3), or
        :data:`BF16_ROW_SUM_ATOL` (1e-2) for bfloat16 arrays, by default.
    renormalize : bool
        Divide every row inside the length by its sum (default), so that the
        dataset meets the schema's 1e-4 however the attention was rounded; with
        False the values are stored exactly as read.

    Returns
    -------
    xarray.Dataset
        Schema-1 dataset with ``attention`` (sample, layer, head, query, key),
        ``length`` (sample) and, with tokens, ``token`` (sample, position).

    Raises
    ------
    ValueError
        Ragged or misshapen layers, a mask that is not (batch, n) right-padded
        0/1, token lists that do not match the batch or the lengths, non-finite
        or negative weights, rows that do not sum to 1; each message names the
        sample, layer, head and query, and the fix.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> e = np.exp(rng.standard_normal((3, 2, 4, 5, 5)))          # 3 layers, batch 2
    >>> mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    >>> e[:, 1, :, :, 3:] = 0                                      # padding keys get weight 0
    >>> layers = tuple(e / e.sum(-1, keepdims=True))
    >>> tokens = [["[CLS]", "a", "b", "c", "[SEP]"], ["[CLS]", "d", "[SEP]"]]
    >>> ds = ak.from_hf_attentions(layers, tokens=tokens, attention_mask=mask)
    >>> dict(ds.attention.sizes), ds.length.values.tolist()
    ({'sample': 2, 'layer': 3, 'head': 4, 'query': 5, 'key': 5}, [5, 3])
    >>> ak.from_hf_attentions(layers, tokens=[tokens[0], ["d"]], attention_mask=mask)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: tokens[1]: expected 3 tokens (sample 1's length in attention_mask, ...), got 1. ...
    """
    names = None
    if _is_pathlike(attentions):
        source = source or Path(attentions).name
        layers, names = _read_layers(attentions)
    elif isinstance(attentions, (list, tuple)):
        layers = [_as_numpy(layer) for layer in attentions]
    else:
        stacked = _as_numpy(attentions)
        if stacked.ndim != 5:
            raise errors.shape_error(
                "attentions", "a tuple of (batch, heads, n, n) arrays or a stacked "
                "(layer, batch, heads, n, n) array", stacked.shape,
                "pass the model's output_attentions tuple",
            )
        layers = list(stacked)
    batch, _, n = _check_layers(layers, names)

    if readout is not None and readout not in READOUTS:
        raise errors.value_error("readout", f"one of {READOUTS}", repr(readout),
                                 "pick one of those, or leave it out")
    if atol is None:
        atol = BF16_ROW_SUM_ATOL if any(a.dtype.name == "bfloat16" for a in layers) \
            else ROW_SUM_ATOL
    elif isinstance(atol, bool) or not isinstance(atol, (int, float, np.integer, np.floating)) \
            or not 0 < float(atol) < 1:
        raise errors.value_error("atol", "a number in (0, 1)", repr(atol), "pass e.g. atol=1e-3")
    renormalize = errors.flag("renormalize", renormalize)

    masked = attention_mask is not None
    if _is_pathlike(attention_mask):
        attention_mask = load_attention_mask(attention_mask)
    lengths = (_lengths_from_mask(attention_mask, layers) if masked
               else np.full(batch, n, dtype=np.int64))
    tok_lists = None if tokens is None else _token_lists(tokens, batch, lengths, n, masked)
    _check_values(layers, lengths, float(atol))

    data = _renormalized(layers, lengths) if renormalize else np.stack(layers, axis=1)
    attrs = {} if readout is None else {"readout": readout}
    return from_arrays(data, tokens=tok_lists, lengths=lengths, model=model, source=source,
                       attrs=attrs)
