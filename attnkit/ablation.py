"""Leave-one-out token ablation: how much does the model's output change without each token?

:func:`ablate` removes one position at a time (``delete``), replaces it by the
mask token (``mask``) or zeroes its input embedding (``zero``), runs the
model on every variant in batches, and measures the change of the output under
a named metric or a user function. The result is the ``impact``
(sample, position, method) variable of an attention dataset, ready to be
correlated with attention scores.

The model protocol
------------------
``model`` is :class:`attnkit.models.MiniLM` or any callable
``model(ids) -> outputs``:

* ``ids`` is a list of 1-d int64 arrays (token ids, ragged lengths);
* ``outputs`` is an array with one row per sequence: vectors ``(N, d)`` (e.g.
  sentence embeddings or logits) or scores ``(N,)``;
* for ``method="zero"``, the callable must also accept ``zero=``: an int64
  array ``(N,)`` giving per sequence the position whose input embedding is
  zeroed (-1 for none);
* optional attributes used when present: ``mask_token_id`` (for ``mask``),
  ``special_token_ids`` (positions treated as special, see ``special``),
  ``tokenize(texts)`` (to accept str inputs) and ``token_to_id(tokens)`` (to
  accept an attention dataset as inputs).

Impact of position ``i`` of a sample = ``metric(output(full), output(ablated_i))``.

Image models (``model.modality == "image"``: :class:`attnkit.models.SaliencyViT`)
go to :mod:`attnkit.models._vit_ablation`: methods ``mask`` (occlusion: the
patch's pixels set to the normalisation mean) and ``key_mask`` (the patch token
removed as a key in every layer), on the pre-sigmoid saliency map.
"""

from __future__ import annotations

import numpy as np

from ._model_inputs import input_ids
from .errors import method_names, positive_int, value_error

__all__ = ["ablate", "METHODS", "METRICS"]

#: Ablation methods: drop the token, replace it by [MASK], zero its word embedding.
METHODS = ("delete", "mask", "zero")
#: Named metrics (``score``: full minus ablated for scalar outputs).
METRICS = ("cosine", "euclidean", "score")


# ----------------------------------------------------------------------------- metrics
def _rows(name, out, n):
    a = np.asarray(out, dtype=np.float64)
    if a.ndim == 0 or a.shape[0] != n:
        raise value_error(f"model output ({name})", f"one row per input sequence ({n})",
                          f"shape {a.shape}", "return an array (N, ...) for N sequences")
    return a.reshape(n, -1)


def _cosine(full, ablated):
    num = (full * ablated).sum(-1)
    den = np.linalg.norm(full, axis=-1) * np.linalg.norm(ablated, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - num / den


def _metric_fn(metric):
    if callable(metric):
        def user(full, ablated):
            out = np.asarray(metric(full, ablated), dtype=np.float64).reshape(-1)
            if out.shape != (full.shape[0],):
                raise value_error("metric", f"a callable returning one value per row "
                                  f"({full.shape[0]},)", f"shape {out.shape}",
                                  "reduce over everything but the first axis")
            return out

        return user, getattr(metric, "__name__", "callable")
    if metric == "cosine":
        def cosine(full, ablated):
            if full.shape[-1] < 2:
                raise value_error("metric", "vector outputs (N, d) for 'cosine'",
                                  "scalar outputs", "pass metric='score' for scores")
            return _cosine(full, ablated)

        return cosine, "cosine distance 1 - cos(full, ablated)"
    if metric == "euclidean":
        return (lambda f, a: np.linalg.norm(f - a, axis=-1)), "euclidean distance |full - ablated|"
    if metric == "score":
        def score(full, ablated):
            if full.shape[-1] != 1:
                raise value_error("metric", "scalar outputs (N,) or (N, 1) for 'score'",
                                  f"outputs of width {full.shape[-1]}",
                                  "return one score per sequence, or use metric='cosine'")
            return full[:, 0] - ablated[:, 0]

        return score, "score change full - ablated"
    raise value_error("metric", f"one of {METRICS} or a callable f(full, ablated)", repr(metric),
                      "pick one of those")


# ----------------------------------------------------------------------------- inputs
def _positions(positions, length):
    """The positions of a sample of ``length`` tokens to ablate (negatives from the end)."""
    if positions is None:
        return np.arange(length)
    p = np.asarray(positions, dtype=np.int64)
    p = np.where(p < 0, p + length, p)
    return np.unique(p[(p >= 0) & (p < length)])


# ----------------------------------------------------------------------------- ablate
def ablate(model, inputs, *, method=None, metric="cosine", positions=None, special="nan",
           mask_id=None, batch_size=64, progress=None):
    """Leave-one-out ablation impact of every token (or chosen positions).

    Parameters
    ----------
    model : attnkit.models.MiniLM or callable
        See the module docstring for the protocol: ``model(ids)`` returns one
        output row per token-id sequence; ``method="zero"`` also passes ``zero=``.
    inputs : list of str, list of token-id sequences, or xarray.Dataset
        Sentences (the model must have ``tokenize``), token ids, or an
        attention dataset made by ``model.run`` (its tokens are mapped back
        with ``model.token_to_id``; the result then aligns with it).
    method : {"delete", "mask", "zero"} or a sequence of them
        ``delete`` (default) drops the token (the sequence gets one shorter); ``mask``
        replaces it by the mask token; ``zero`` zeroes its word embedding
        (position embeddings stay). Image models: ``mask`` (default; occlusion,
        the patch set to the normalisation mean) or ``key_mask`` (the patch
        token removed as a key in every layer).
    metric : {"cosine", "euclidean", "score"} or callable
        ``cosine``: cosine distance ``1 - cos`` between the full and the
        ablated output vectors (default; suits sentence embeddings);
        ``euclidean``: their distance; ``score``: ``full - ablated`` for
        scalar outputs (a score or a class probability: positive when the
        token supports it). A callable ``f(full, ablated) -> (N,)`` gets two
        arrays of N rows (full output repeated per row) and returns one impact
        per row.
    positions : sequence of int, optional
        Positions to ablate in every sample (negative: from the end); the
        others get NaN. Default: every position.
    special : {"nan", "compute"}
        Positions holding a special token (``model.special_token_ids``, for
        MiniLM [CLS] and [SEP]) get NaN (default: their removal changes the
        input format rather than its content, and they are usually left out of
        attention-vs-impact comparisons) or are computed like any token.
    mask_id : int, optional
        The mask token id for ``method="mask"``; default ``model.mask_token_id``.
    batch_size : int
        Ablated sequences per model call.
    progress : bool, callable or None
        A progress bar on stderr (True), ``f(done, total)``, or None for the
        ``progress`` option of :func:`attnkit.set_options` (off by default).

    Returns
    -------
    xarray.DataArray
        ``impact`` (sample, position, method), float64, with the ``method``
        coordinate; NaN beyond each sample's length, at positions not
        ablated, and (with ``special="nan"``) at special tokens. Assign it to
        the attention dataset: ``ds["impact"] = ak.ablate(model, ds)``. Select a
        method with ``imp.sel({"method": "delete"})`` (``sel(method=...)`` is
        xarray's own keyword for inexact matching).

    Examples
    --------
    A model whose score is the sum of per-token weights: deleting a token
    changes the score by exactly its weight.

    >>> import numpy as np, attnkit as ak
    >>> weight = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    >>> score = lambda ids: np.array([weight[s].sum() for s in ids])
    >>> imp = ak.ablate(score, [[1, 2, 3], [4, 4]], metric="score")
    >>> imp.sel({"method": "delete"}).values
    array([[ 1.,  2.,  3.],
           [ 4.,  4., nan]])
    """
    import xarray as xr

    from ._progress import progress_bar

    if getattr(model, "modality", None) == "image":
        from .models import _vit_ablation

        return _vit_ablation.ablate(model, inputs, method=method, metric=metric,
                                    positions=positions, special=special, mask_id=mask_id,
                                    batch_size=batch_size, progress=progress)
    methods = method_names("method", "delete" if method is None else method, METHODS)
    metric_fn, metric_name = _metric_fn(metric)
    batch_size = positive_int("batch_size", batch_size)
    if special not in ("nan", "compute"):
        raise value_error("special", "'nan' or 'compute'", repr(special), "pick one of those")
    if not callable(model):
        raise TypeError(f"model: expected a callable model(ids) -> outputs (or attnkit's MiniLM), "
                        f"got {type(model).__name__}. Fix: wrap it, e.g. lambda ids: f(ids)")
    if "mask" in methods:
        mask_id = getattr(model, "mask_token_id", None) if mask_id is None else mask_id
        if mask_id is None:
            raise value_error("mask_id", "the mask token id for method='mask'", "None",
                              "pass mask_id=..., or give the model a mask_token_id attribute")
        mask_id = int(mask_id)
    ids, n_pos, ds = input_ids(model, inputs)
    special_ids = np.array(sorted(getattr(model, "special_token_ids", ()) or ()), dtype=np.int64)

    # every (sample, position) to ablate
    jobs = []
    for s, seq in enumerate(ids):
        for p in _positions(positions, seq.size):
            if special == "nan" and np.isin(seq[p], special_ids):
                continue
            jobs.append((s, int(p)))

    full = _rows("full", model(ids), len(ids))
    impact = np.full((len(ids), n_pos, len(methods)), np.nan)
    total = len(jobs) * len(methods)
    with progress_bar(progress, total, "ablate") as advance:
        for m, name in enumerate(methods):
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start: start + batch_size]
                seqs, zero, rows = [], [], []
                for s, p in chunk:
                    seq = ids[s]
                    if name == "delete":
                        if seq.size == 1:
                            continue  # nothing left to run: impact stays NaN
                        seq = np.delete(seq, p)
                    elif name == "mask":
                        seq = seq.copy()
                        seq[p] = mask_id
                    else:
                        zero.append(p)
                    seqs.append(seq)
                    rows.append((s, p))
                if seqs:
                    if name == "zero":
                        try:
                            out = model(seqs, zero=np.asarray(zero, dtype=np.int64))
                        except TypeError as exc:
                            if "zero" not in str(exc):
                                raise
                            raise TypeError(
                                "method='zero': expected a model accepting model(ids, zero=...), "
                                f"got one that does not ({exc}). Fix: add the zero= keyword "
                                "(see attnkit.ablation) or use method='delete'/'mask'") from exc
                    else:
                        out = model(seqs)
                    out = _rows(name, out, len(seqs))
                    if out.shape[1] != full.shape[1]:
                        raise value_error(f"model output ({name})", f"width {full.shape[1]} like "
                                          f"the full inputs", out.shape[1],
                                          "return outputs of one shape")
                    s_idx = np.array([r[0] for r in rows])
                    p_idx = np.array([r[1] for r in rows])
                    impact[s_idx, p_idx, m] = metric_fn(full[s_idx], out)
                advance(len(chunk))

    attrs = {"metric": metric_name, "special": "computed" if special == "compute" else
             "NaN at special tokens",
             "positions": "all" if positions is None else " ".join(map(str, np.atleast_1d(positions)))}
    return xr.DataArray(impact, dims=("sample", "position", "method"),
                        coords={"method": list(methods)}, name="impact", attrs=attrs)
