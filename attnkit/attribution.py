"""Gradient attributions of a built-in model's read-out to its input tokens.

:func:`attribute` takes the gradients of a scalar ``T`` of the model's
read-out (see ``target``) and turns them into one score per token:

* ``gradient_norm``: ``|dT/dx_i|``, the L2 norm of the gradient with respect
  to token ``i``'s word embedding;
* ``input_x_gradient``: ``x_i . dT/dx_i`` (Shrikumar et al. 2016);
* ``integrated_gradients``: ``(x_i - x0_i) . mean_k dT/dx_i(x0 + a_k (x - x0))``
  over ``steps`` midpoints ``a_k = (k + 1/2) / steps`` of the straight path
  from a baseline ``x0`` (Sundararajan et al. 2017). The scores sum to
  ``T(x) - T(x0)`` up to the quadrature error, reported in the attrs;
* ``grad_rollout``: gradient-weighted rollout (Chefer et al. 2021) on the
  model's real attention gradients, read at the model's read-out (MiniLM:
  the mean over its valid positions, not [CLS]).

The model protocol is that of :class:`attnkit.models.MiniLM`:
``word_embeddings(ids)``, ``value_and_gradients(embeds, lengths, target)``,
``hidden_size``, ``readout`` and, for the "mask" baseline, ``mask_token_id``
and ``special_token_ids``.

Image models (``model.modality == "image"``: :class:`attnkit.models.SaliencyViT`)
go to :mod:`attnkit.models._vit_attribution`: one score per patch (pixel
gradients pooled over each 14 x 14 patch), the same methods plus
``gradcam`` (:data:`IMAGE_ATTRIBUTION_METHODS`).
"""

from __future__ import annotations

import numpy as np

from ._model_inputs import input_ids
from .errors import method_names, positive_int, value_error

__all__ = ["attribute", "ATTRIBUTION_METHODS", "IMAGE_ATTRIBUTION_METHODS", "BASELINES",
           "METHOD_DIM"]

#: Attribution methods of :func:`attribute`.
ATTRIBUTION_METHODS = ("input_x_gradient", "integrated_gradients", "gradient_norm",
                       "grad_rollout")
#: Attribution methods for image models: the same, plus Grad-CAM on the output tokens.
IMAGE_ATTRIBUTION_METHODS = ATTRIBUTION_METHODS + ("gradcam",)
#: Integrated-gradients baselines: zero word embeddings, or [MASK] on every
#: token but [CLS]/[SEP]; position and token-type embeddings are kept.
BASELINES = ("zero", "mask")
#: The dim of several methods: not ``method``, which ``impact`` uses with other
#: names in the same dataset.
METHOD_DIM = "attribution_method"
_PROTOCOL = ("word_embeddings", "value_and_gradients", "hidden_size")


def _check_model(model) -> None:
    missing = [name for name in _PROTOCOL if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"model: expected a model with gradient support ({', '.join(_PROTOCOL)}, as "
            f"attnkit.models.MiniLM), got {type(model).__name__} without {', '.join(missing)}. "
            f"Fix: pass ak.models.MiniLM.load(), or use ak.ablate for a black-box model")


def _check_options(model, ds) -> None:
    """A dataset made without position embeddings needs the model configured alike."""
    if ds is None or "position_embeddings" not in ds.attrs:
        return
    made_with = bool(int(ds.attrs["position_embeddings"]))
    if getattr(model, "position_embeddings", True) != made_with:
        raise value_error(
            "model", f"a model run with position_embeddings={made_with} like the dataset",
            f"position_embeddings={not made_with}",
            f"pass model.configured(position_embeddings={made_with})")


def _baseline(model, ids, embeds, baseline) -> np.ndarray:
    """Baseline word embeddings (batch, n, hidden) for ``ids``."""
    if baseline == "zero":
        return np.zeros_like(embeds)
    mask_id = getattr(model, "mask_token_id", None)
    if mask_id is None:
        raise value_error("baseline", "a model with mask_token_id for baseline='mask'", "none",
                          "use baseline='zero'")
    special = np.array(sorted(getattr(model, "special_token_ids", ()) or ()), dtype=np.int64)
    masked = [np.where(np.isin(s, special), s, mask_id) for s in ids]
    return model.word_embeddings(masked)[0]


def _readout_weights(model, lengths, n) -> np.ndarray:
    """Weights over positions (batch, n) of the model's read-out, for grad_rollout."""
    readout = getattr(model, "readout", "mean")
    valid = np.arange(n)[None, :] < lengths[:, None]
    if readout == "mean":
        return valid / lengths[:, None]
    if readout == "cls":
        return ((np.arange(n)[None, :] == 0) & valid).astype(np.float64)
    raise value_error("model.readout", "'mean' or 'cls'", repr(readout),
                      "give the model a read-out grad_rollout can read")


def _integrated_gradients(model, x, x0, length, direction, steps, batch_size):
    """IG scores (n,) of one sequence, T(x) and T(x0) (its direction held fixed)."""
    n = x.shape[0]
    alphas = (np.arange(steps) + 0.5) / steps
    total = np.zeros_like(x, dtype=np.float64)
    value_baseline = None
    for first in range(0, steps, batch_size):
        a = alphas[first: first + batch_size]
        path = x0[None] + a[:, None, None] * (x - x0)[None]
        if first == 0:  # T(x0) rides along with the first chunk
            path = np.concatenate([x0[None], path])
        rows = path.shape[0]
        g = model.value_and_gradients(path, np.full(rows, length),
                                      np.broadcast_to(direction, (rows, direction.size)))
        grads = g.input_gradient
        if first == 0:
            value_baseline = float(g.value[0])
            grads = grads[1:]
        total += grads.sum(axis=0)
    return ((x - x0) * total / steps).sum(-1)[:n], value_baseline


def _integrated_gradients_batch(model, ids, embeds, g, baseline, steps, batch_size):
    """IG scores (batch, n) of a padded batch, and (absolute, relative) completeness errors."""
    x0s = _baseline(model, ids, embeds, baseline)
    scores = np.zeros(embeds.shape[:2])
    errors = []
    for j, length in enumerate(int(n) for n in g.lengths):
        scores[j, :length], value0 = _integrated_gradients(
            model, embeds[j, :length], x0s[j, :length], length, g.direction[j], steps,
            batch_size)
        gap = float(g.value[j]) - value0
        err = abs(float(scores[j, :length].sum()) - gap)
        errors.append((err, err / abs(gap) if gap != 0 else (0.0 if err == 0 else np.inf)))
    return scores, errors


def _gradient_scores(name, model, embeds, g) -> np.ndarray:
    """Scores (batch, n) of the methods that need one forward/backward pass."""
    if name == "gradient_norm":
        return np.linalg.norm(g.input_gradient.astype(np.float64), axis=-1)
    if name == "input_x_gradient":
        return np.einsum("bnf,bnf->bn", embeds.astype(np.float64),
                         g.input_gradient.astype(np.float64))
    from .rollout import grad_rollout  # name == "grad_rollout"

    relevance = grad_rollout(g.attention, g.attention_gradient, lengths=g.lengths)
    weights = _readout_weights(model, g.lengths, embeds.shape[1])
    return np.einsum("bq,bqk->bk", weights, np.nan_to_num(relevance))


def attribute(model, inputs, *, method="input_x_gradient", target="self", baseline="zero",
              steps: int = 32, batch_size: int = 32, progress=None):
    """Per-token gradient attributions of a built-in model's read-out.

    Parameters
    ----------
    model : attnkit.models.MiniLM or attnkit.models.SaliencyViT
        A model with gradient support (see the module docstring).
    inputs : list of str, list of token-id sequences, or xarray.Dataset
        Sentences, token ids, or an attention dataset made by ``model.run``
        (its tokens are mapped back to ids; the result aligns with it). For an
        image model: images, normalised pixels (N, 3, H, W), or a dataset made
        by ``vit.run`` (its stored ``image`` is used).
    method : str or sequence of str
        One or more of "input_x_gradient", "integrated_gradients",
        "gradient_norm", "grad_rollout"; image models also "gradcam".
    target : "self" or array_like (hidden,) or (sample, hidden)
        The scalar explained, ``T(x') = <r(x'), t>`` with ``r`` the read-out
        before any final normalisation; "self": ``t = r(x)/|r(x)|`` of each
        unperturbed input, held fixed. Image models: "self" or a weight map
        (H, W) or (sample, H, W) on the pre-sigmoid saliency map.
    baseline : {"zero", "mask"}
        Integrated gradients' starting point: zero word embeddings, or the
        [MASK] embedding on every token but [CLS]/[SEP]. Position and
        token-type embeddings are kept. Image models: "zero" (zero normalised
        pixels, the mean colour) or "black".
    steps : int
        Integrated gradients' path points (midpoint rule).
    batch_size : int
        Sequences (or path points) per forward/backward pass.
    progress : bool, callable or None
        A progress bar on stderr (True), ``f(done, total)``, or None for the
        ``progress`` option of :func:`attnkit.set_options` (off by default).

    Returns
    -------
    xarray.DataArray
        ``attribution`` (sample, position) for one method, (sample, position,
        attribution_method) for several (not ``method``: an attention dataset
        uses that dim for the ablation ``impact``); float64, NaN in padding, ``token`` coordinate.
        attrs: ``target``, ``readout``, ``method`` (one method), and for integrated gradients
        ``baseline``, ``steps`` and the completeness error
        ``|sum_i a_i - (T(x) - T(x0))|``: its largest value over samples
        (``completeness_error``) and relative to ``|T(x) - T(x0)|``
        (``completeness_relative_error``). Image models: one score per
        position ([CLS], then the patches row by row), NaN at [CLS] for the
        pixel methods and gradcam; attrs also ``grid``.

    Examples
    --------
    >>> import attnkit as ak
    >>> model = ak.models.MiniLM.load()
    >>> a = ak.attribute(model, ["The cat sat on the mat."], method="integrated_gradients",
    ...                  steps=16)
    >>> a.dims, a.sizes["position"]
    (('sample', 'position'), 9)
    >>> bool(a.attrs["completeness_relative_error"] < 0.05)
    True
    """

    from ._progress import progress_bar
    from .models import _target

    if getattr(model, "modality", None) == "image":
        from .models import _vit_attribution

        return _vit_attribution.attribute(model, inputs, method=method, target=target,
                                          baseline=baseline, steps=steps, batch_size=batch_size,
                                          progress=progress)
    _check_model(model)
    if not isinstance(method, str):
        method = tuple(method)
    if "gradcam" in ((method,) if isinstance(method, str) else method):
        raise value_error("method", f"one of {ATTRIBUTION_METHODS} for a text model",
                          "'gradcam' (for image models: it needs a patch grid)",
                          "pick one of those, or pass an image model (ak.models.SaliencyViT)")
    methods = method_names("method", method, ATTRIBUTION_METHODS)
    steps = positive_int("steps", steps)
    batch_size = positive_int("batch_size", batch_size)
    if baseline not in BASELINES:
        raise value_error("baseline", f"one of {BASELINES}", repr(baseline), "pick one of those")
    ids, n_pos, ds = input_ids(model, inputs)
    _check_options(model, ds)
    target = _target.check_target(target, len(ids), int(model.hidden_size))
    lengths = np.array([s.size for s in ids])
    out = np.full((len(ids), n_pos, len(methods)), np.nan)
    completeness = []  # (absolute, relative) error per sample
    order = np.argsort(lengths, kind="stable")  # alike lengths share a batch
    with progress_bar(progress, len(ids), "attribute") as advance:
        for first in range(0, len(ids), batch_size):
            index = order[first: first + batch_size]
            batch_ids = [ids[i] for i in index]
            embeds, lens = model.word_embeddings(batch_ids)
            g = model.value_and_gradients(embeds, lens, None if target is None else target[index])
            for m, name in enumerate(methods):
                if name == "integrated_gradients":
                    scores, errors = _integrated_gradients_batch(model, batch_ids, embeds, g,
                                                                 baseline, steps, batch_size)
                    completeness += errors
                else:
                    scores = _gradient_scores(name, model, embeds, g)
                for j, i in enumerate(index):
                    out[i, : lens[j], m] = scores[j, : lens[j]]
            advance(len(index))

    attrs = {"target": _target.describe(target), "readout": str(getattr(model, "readout", ""))}
    tokens = None
    if ds is not None and "token" in ds.variables:
        tokens = ds["token"].values
    elif hasattr(model, "id_to_token"):
        tokens = np.full((len(ids), n_pos), "", dtype=object)
        for i, s in enumerate(ids):
            tokens[i, : s.size] = model.id_to_token(s)
    return attribution_array(out, method, methods, attrs, tokens,
                             completeness=completeness, baseline=baseline, steps=steps)


def attribution_array(out, method, methods, attrs, tokens, *, completeness, baseline, steps):
    """The result of :func:`attribute` (text and image models alike).

    ``out`` (sample, position, method) scores, ``tokens`` (sample, position) or
    None; integrated gradients adds its baseline, steps and the largest
    ``completeness`` errors (a list of (absolute, relative) pairs) to ``attrs``.
    One method given as a str gives (sample, position) with its name in the attrs.
    """
    import xarray as xr

    attrs = dict(attrs)
    if "integrated_gradients" in methods:
        attrs.update({"baseline": baseline, "steps": steps,
                      "completeness_error": float(max(e[0] for e in completeness)),
                      "completeness_relative_error": float(max(e[1] for e in completeness))})
    coords = {METHOD_DIM: list(methods)}
    if tokens is not None:
        coords["token"] = (("sample", "position"), tokens)
    result = xr.DataArray(out, dims=("sample", "position", METHOD_DIM), coords=coords,
                          name="attribution", attrs=attrs)
    if isinstance(method, str):
        return result.isel({METHOD_DIM: 0}, drop=True).assign_attrs(method=method)
    return result
