"""The data of one view: a compact, JSON-ready dict built from one sample of a dataset.

Attention weights are quantised to uint16 (``round(w * 65535)``, an error of at
most 7.7e-6) and stored little-endian in base64: dense (layer, head, query, key)
for short inputs, or the ``k`` largest keys of every query row (indices and
values, each row sorted by weight) for long ones. Scores and small maps are
lists of numbers rounded to 4 significant digits (``None`` for NaN); images
are raw uint8 pixels in base64, downsampled to at most :data:`MAX_IMAGE_SIDE`
pixels a side. :func:`decode_attention` turns the stored weights back into an
array (the tests and the page read the same format).
"""

from __future__ import annotations

import base64
import inspect
import math

import numpy as np

from .. import errors

__all__ = ["build_payload", "decode_attention", "DEFAULT_MAX_TOKENS", "DEFAULT_TOP_K",
           "FLOW_MAX_TOKENS", "SCORE_CHOICES", "MAX_IMAGE_SIDE", "QUANT"]

#: Inputs up to this many tokens embed every weight; longer ones the top-k of each row.
DEFAULT_MAX_TOKENS = 128
#: Keys kept per query row when an input is longer than ``max_tokens``.
DEFAULT_TOP_K = 32
#: ``scores="auto"`` computes attention flow only up to this many tokens (it costs n max-flows).
FLOW_MAX_TOKENS = 128
#: What ``scores=`` may list: kinds of :func:`attnkit.attention_scores` and stored variables.
SCORE_CHOICES = ("raw", "rollout", "flow", "grad", "impact", "attribution")
#: Images (and saliency maps) are downsampled to at most this many pixels a side.
MAX_IMAGE_SIDE = 384
#: uint16 quantisation step of the weights: w = stored / QUANT.
QUANT = 65535

_SCORE_LABELS = {"raw": "raw attention", "rollout": "rollout", "flow": "attention flow",
                 "grad": "gradient rollout"}


# ----------------------------------------------------------------------------- small helpers
def b64(array: np.ndarray) -> str:
    """Little-endian bytes of ``array`` in base64 (ASCII)."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return base64.b64encode(a.tobytes()).decode("ascii")


def rounded(values) -> list:
    """Numbers to 4 significant digits as a (nested) list; NaN and inf become None."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 0:
        v = float(a)
        return float(f"{v:.4g}") if math.isfinite(v) else None
    return [rounded(x) for x in a]


def _indices(name: str, value, size: int, what: str) -> list[int]:
    """None -> all; an int or a sequence of ints -> sorted distinct indices (negatives wrap)."""
    if value is None:
        return list(range(size))
    items = [value] if errors.is_int(value) else value
    try:
        items = list(items)
    except TypeError:
        raise errors.value_error(name, f"an int {what} index or a list of them", repr(value),
                                 f"pass e.g. {name}=[0, 1]") from None
    if not items:
        raise errors.value_error(name, f"at least one {what} index", "an empty list",
                                 f"pass e.g. {name}=[0], or {name}=None for all")
    out = []
    for item in items:
        if not errors.is_int(item) or not -size <= item < size:
            raise errors.value_error(name, f"an int {what} index in [0, {size})", repr(item),
                                     f"count {what}s from 0 (negative counts from the end); "
                                     f"the dataset has {size}")
        out.append(int(item) % size)
    return sorted(set(out))


def _as_dataset(ds):
    """An xarray.Dataset, or an array (layer, head, n, n) / (sample, ...) made into one."""
    import xarray as xr

    if isinstance(ds, xr.Dataset):
        for name in ("attention", "length"):
            if name not in ds.variables:
                raise errors.value_error("ds", "an attention dataset with `attention` and "
                                         "`length` (schema 1)", f"no `{name}` variable",
                                         "build one with ak.from_arrays or open one with "
                                         "ak.open_dataset")
        if ds["attention"].ndim != 5:
            raise errors.shape_error("ds.attention", "(sample, layer, head, query, key)",
                                     ds["attention"].dims, "pass a schema-1 dataset")
        return ds
    if isinstance(ds, xr.DataArray) or hasattr(ds, "shape"):
        from ..data import from_arrays

        return from_arrays(np.asarray(ds))
    raise errors.value_error("ds", "an attention dataset (xarray.Dataset) or an array "
                             "(layer, head, query, key)", type(ds).__name__,
                             "open one with ak.open_dataset")


def _tokens(one, n: int, grid) -> list[str]:
    if "token" in one.variables:
        return [str(t) for t in np.asarray(one["token"].values).reshape(-1)[:n]]
    if grid is not None:
        rows, cols = grid
        return ["[CLS]" if i == 0 else
                (f"({(i - 1) // cols},{(i - 1) % cols})" if i <= rows * cols else f"#{i}")
                for i in range(n)]
    return [str(i) for i in range(n)]


def _grid(ds, n: int):
    if "grid" not in ds.attrs:
        return None
    try:
        rows, cols = (int(g) for g in np.asarray(ds.attrs["grid"]).reshape(-1))
    except (TypeError, ValueError):
        raise errors.value_error("ds.attrs['grid']", "(rows, cols): the patch grid",
                                 repr(ds.attrs["grid"]), "store grid=(rows, cols)") from None
    if rows < 1 or cols < 1 or 1 + rows * cols > n:
        raise errors.value_error("ds.attrs['grid']", f"(rows, cols) with 1 + rows*cols <= {n} "
                                 "positions ([CLS] first, then the patches)",
                                 repr((rows, cols)), "store the model's patch grid")
    return rows, cols


# ----------------------------------------------------------------------------- attention
def _attention(attn: np.ndarray, max_tokens: int, top_k: int | None) -> tuple[dict, list[str]]:
    """attn (layer, head, n, n) -> the stored weights and the notes to show."""
    n = attn.shape[-1]
    w = np.clip(np.nan_to_num(attn, nan=0.0), 0.0, 1.0)
    q = np.rint(w * QUANT).astype("<u2")
    if n <= max_tokens and (top_k is None or top_k >= n):
        return {"mode": "dense", "k": n, "scale": QUANT, "values": b64(q)}, []
    k = min(top_k or DEFAULT_TOP_K, n)
    order = np.argsort(-w, axis=-1, kind="stable")[..., :k]
    values = np.take_along_axis(q, order, axis=-1)
    index_dtype = "<u2" if n <= 65535 else "<u4"
    why = (f"the input is longer than max_tokens={max_tokens}" if n > max_tokens
           else f"top_k={k}")
    note = (f"{n} tokens: only the {k} largest weights of every query row are embedded "
            f"({why}); the other weights show as 0. Pass a larger top_k (or max_tokens) "
            f"to embed more.")
    return {"mode": "topk", "k": k, "scale": QUANT, "values": b64(values),
            "index": b64(order.astype(index_dtype)), "index_bytes": np.dtype(index_dtype).itemsize
            }, [note]


def decode_attention(payload: dict) -> np.ndarray:
    """The weights a payload embeds, as float64 (layer, head, query, key); 0 where not kept.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> v = ak.view(np.full((1, 2, 3, 3), 1 / 3))
    >>> decode_attention(v.data).shape, round(float(decode_attention(v.data)[0, 1, 2, 0]), 4)
    ((1, 2, 3, 3), 0.3333)
    """
    meta = payload["attention"]
    n_layers, n_heads, n = len(payload["layers"]), len(payload["heads"]), payload["n"]
    values = np.frombuffer(base64.b64decode(meta["values"]), dtype="<u2")
    values = values.reshape(n_layers, n_heads, n, meta["k"]) / meta["scale"]
    if meta["mode"] == "dense":
        return values
    dtype = "<u2" if meta["index_bytes"] == 2 else "<u4"
    index = np.frombuffer(base64.b64decode(meta["index"]), dtype=dtype).reshape(values.shape)
    out = np.zeros((n_layers, n_heads, n, n))
    np.put_along_axis(out, index.astype(np.intp), values, axis=-1)
    return out


# ----------------------------------------------------------------------------- scores
def _score_kinds(scores, one, n: int) -> tuple[list[str], list[str]]:
    """The score names to embed and the notes saying what was left out."""
    notes = []
    if scores is None:
        return [], notes
    if isinstance(scores, str) and scores == "auto":
        kinds = ["raw", "rollout"]
        if n <= FLOW_MAX_TOKENS:
            kinds.append("flow")
        else:
            notes.append(f"attention flow not computed: {n} tokens > {FLOW_MAX_TOKENS} "
                         "(pass scores=[..., 'flow'] to compute it anyway)")
        if "gradient" in one.variables:
            kinds.append("grad")
        kinds += [name for name in ("impact", "attribution") if name in one.variables]
        return kinds, notes
    names = (scores,) if isinstance(scores, str) else tuple(scores)
    for name in names:
        if name not in SCORE_CHOICES:
            raise errors.value_error("scores", f"'auto', None or a list of {SCORE_CHOICES}",
                                     repr(name), "pick from those")
        if name in ("impact", "attribution") and name not in one.variables:
            raise errors.value_error("scores", f"a dataset with an `{name}` variable for "
                                     f"{name!r}", "none", f"drop {name!r}, or add it to the "
                                     f"dataset (`attnkit {'ablate' if name == 'impact' else 'attribute'}`)")
    return list(dict.fromkeys(names)), notes


def _target(one) -> tuple[dict, str]:
    """Keyword arguments choosing the explained output of attention_scores, and its label."""
    import attnkit as ak

    readout = str(one.attrs.get("readout", "cls"))
    params = inspect.signature(ak.attention_scores).parameters
    if "target" in params:  # the readout of the dataset (its `readout` attr)
        return {"target": None}, f"the model's read-out ({readout})"
    return {"query": 0}, "output position 0 ([CLS])"


def _scores(one, kinds: list[str], layers: list[int], n: int) -> tuple[list[dict], str]:
    """The score strips, and which output the attention scores explain ("" if none)."""
    import attnkit as ak

    out = []
    target_kwargs, target_label = _target(one) if any(k in ("raw", "rollout", "flow", "grad")
                                                      for k in kinds) else ({}, "")
    for kind in kinds:
        if kind in _SCORE_LABELS:
            s = ak.attention_scores(one, kind, layers=layers, **target_kwargs)
            values = np.asarray(s.values)[0, :, :n]
            out.append({"name": kind, "label": _SCORE_LABELS[kind], "by_layer": True,
                        "values": rounded(values), "signed": bool(np.nanmin(values) < 0)
                        if np.isfinite(values).any() else False,
                        "about": f"{_SCORE_LABELS[kind]} of {target_label}, up to each layer"
                        if kind != "raw" else f"head-mean attention of {target_label} in each layer"})
            continue
        var = one[kind]
        dim = next(d for d in var.dims if d not in ("sample", "position"))
        methods = [str(m) for m in np.asarray(var[dim].values)] if dim in var.coords \
            else [str(i) for i in range(var.sizes[dim])]
        for i, method in enumerate(methods):
            values = np.asarray(var.isel({dim: i}).values).reshape(-1)[:n].astype(np.float64)
            about = {"impact": "leave-one-out ablation impact", "attribution": "gradient "
                     "attribution"}[kind]
            metric = var.attrs.get("metric") or var.attrs.get("target") or ""
            out.append({"name": f"{kind}:{method}", "label": f"{kind} · {method}",
                        "by_layer": False, "values": rounded(values),
                        "signed": bool(np.nanmin(values) < 0) if np.isfinite(values).any()
                        else False,
                        "about": f"{about} ({method}){': ' + str(metric) if metric else ''}"})
    return out, target_label


# ----------------------------------------------------------------------------- images
def _resample(a: np.ndarray, max_side: int) -> np.ndarray:
    """Box-average ``a`` (y, x, ...) down to at most ``max_side`` pixels a side."""
    h, w = a.shape[:2]
    f = max(1, math.ceil(max(h, w) / max_side))
    if f == 1:
        return a
    h2, w2 = h // f, w // f
    a = a[: h2 * f, : w2 * f].astype(np.float64)
    return a.reshape(h2, f, w2, f, *a.shape[2:]).mean(axis=(1, 3))


def _image(one) -> dict | None:
    if "image" not in one.variables:
        return None
    img = np.asarray(one["image"].values)[0]
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise errors.shape_error("ds.image", "(sample, y, x, channel) with 1, 3 or 4 channels",
                                 one["image"].shape, "store RGB uint8 images, channels last")
    if img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img.astype(np.float64)), 0, 255)
    img = _resample(img, MAX_IMAGE_SIDE)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    return {"height": int(img.shape[0]), "width": int(img.shape[1]), "pixels": b64(img)}


def _saliency(one) -> dict | None:
    if "saliency" not in one.variables:
        return None
    sal = np.asarray(one["saliency"].values, dtype=np.float64)[0]
    if sal.ndim != 2:
        raise errors.shape_error("ds.saliency", "(sample, y, x)", one["saliency"].shape,
                                 "store one saliency map per sample")
    sal = _resample(sal, MAX_IMAGE_SIDE)
    finite = np.isfinite(sal)
    lo = float(sal[finite].min()) if finite.any() else 0.0
    hi = float(sal[finite].max()) if finite.any() else 1.0
    scaled = np.where(finite, (sal - lo) / (hi - lo if hi > lo else 1.0), 0.0)
    return {"height": int(sal.shape[0]), "width": int(sal.shape[1]),
            "pixels": b64(np.rint(scaled * 255).astype(np.uint8)),
            "min": rounded(lo), "max": rounded(hi)}


# ----------------------------------------------------------------------------- the payload
def build_payload(ds, *, sample=0, layers=None, heads=None, scores="auto",
                  max_tokens=None, top_k=None) -> dict:
    """Everything the page shows about one sample (see :func:`attnkit.view.view`)."""
    ds = _as_dataset(ds)
    n_samples = ds.sizes["sample"]
    sample = errors.position("sample", sample, n_samples,
                             f"pick a sample in [0, {n_samples})")
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else errors.positive_int(
        "max_tokens", max_tokens)
    top_k = None if top_k is None else errors.positive_int("top_k", top_k)
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    layers = _indices("layers", layers, n_layers, "layer")
    heads = _indices("heads", heads, n_heads, "head")

    unused = [v for v in ("q", "k", "v", "embedding", "input_gradient") if v in ds.variables]
    one = ds.isel(sample=[sample]).drop_vars(unused).load()  # one sample read, nothing more
    n = int(np.asarray(one["length"].values)[0])
    grid = _grid(ds, n)
    attn = np.asarray(one["attention"].values)[0][np.ix_(layers, heads)][..., :n, :n]
    attention, notes = _attention(attn, max_tokens, top_k)
    if len(layers) < n_layers or len(heads) < n_heads:
        notes.append(f"only the chosen {len(layers)} of {n_layers} layers and {len(heads)} of "
                     f"{n_heads} heads are embedded")
    kinds, score_notes = _score_kinds(scores, one, n)
    notes += score_notes
    text = None
    if "text" in one.variables:
        text = str(np.asarray(one["text"].values).reshape(-1)[0])
    score_list, score_target = _scores(one, kinds, layers, n)
    payload = {
        "format": 1,
        "model": str(ds.attrs.get("model", "")),
        "readout": str(ds.attrs.get("readout", "")),
        "sample": sample,
        "n_samples": int(n_samples),
        "text": text,
        "n": n,
        "tokens": _tokens(one, n, grid),
        "layers": layers,
        "heads": heads,
        "n_layers": int(n_layers),
        "n_heads": int(n_heads),
        "attention": attention,
        "scores": score_list,
        "score_target": score_target,
        "grid": list(grid) if grid else None,
        "image": _image(one) if grid else None,
        "saliency": _saliency(one) if grid else None,
        "notes": notes,
    }
    return payload
