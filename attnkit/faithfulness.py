"""Faithfulness of token scores: does removing the tokens they rank highest change the output?

Two families of metrics, both measured on the model's own output: ``s(x')`` is
the cosine similarity of the model's read-out on a perturbed input ``x'`` with
its read-out on the intact input ``x`` (so ``s(x) = 1``). The read-out is the
sentence embedding for MiniLM (cosine ignores its L2 normalisation), the
output vector of any callable text model (the protocol of
:mod:`attnkit.ablation`), and the pre-sigmoid saliency map, flattened, for
:class:`attnkit.models.SaliencyViT`.

* :func:`faithfulness`: ERASER's comprehensiveness and sufficiency (DeYoung et
  al. 2020) at a few fractions of the tokens, and their means (AOPC);
* :func:`perturbation_curve`: the similarity as more and more tokens are
  removed (deletion: Chefer et al.'s positive/negative perturbation, Petsiuk et
  al.'s deletion) or added back to an empty input (insertion), and the area
  under it.

Only *removable* positions are ever removed: the valid positions (inside each
sample's length) that do not hold a special token (``model.special_token_ids``,
[CLS]/[SEP] for MiniLM; position 0, [CLS], for images). ``n`` is their number.
The top ``k`` of a ranking are the ``k`` highest scores; equal scores go to
the lower position first. See docs/faithfulness.md.
"""

from __future__ import annotations

import numpy as np

from ._perturb import Perturber, check_scores, ranking, top_count
from .errors import value_error

__all__ = ["BINS", "FRACTIONS", "faithfulness", "perturbation_curve"]

#: ERASER's bins: 1, 5, 10, 20 and 50 % of the removable tokens.
BINS = (0.01, 0.05, 0.1, 0.2, 0.5)
#: The default fractions of :func:`perturbation_curve`: 0, 0.1, ..., 1.
FRACTIONS = tuple(i / 10 for i in range(11))
ORDERS = ("most", "least")
MODES = ("deletion", "insertion")


def _fractions(name, values, *, zero, min_count):
    """``values`` as an increasing float array inside (0, 1] (or [0, 1] with ``zero``)."""
    interval = "[0, 1]" if zero else "(0, 1]"
    try:
        f = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise value_error(name, f"numbers in {interval}", repr(values),
                          f"pass e.g. {name}={BINS if not zero else (0, 0.5, 1)}") from None
    if f.size < min_count:
        raise value_error(name, f"at least {min_count} fraction{'s' if min_count > 1 else ''}",
                          repr(values), f"pass e.g. {name}={BINS if not zero else (0, 0.5, 1)}")
    low_ok = f >= 0 if zero else f > 0
    if not np.all(np.isfinite(f) & low_ok & (f <= 1)):
        raise value_error(name, f"fractions in {interval}", repr(values),
                          "give fractions of the removable tokens, e.g. 0.1 for 10 %")
    if np.any(np.diff(f) <= 0):
        raise value_error(name, "increasing fractions, each listed once", repr(values),
                          f"sort them: {name}=sorted(set({name}))")
    return f


def _choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise value_error(name, f"one of {allowed}", repr(value), "pick one of those")
    return value


def _array(values, extra, coords, shape, count, last, last_values, name):
    """(C, sample, last) -> DataArray (sample, *extra, last)."""
    import xarray as xr

    data = values.reshape(*shape, count, *values.shape[2:])
    dims = (*extra, "sample") + ((last,) if last else ())
    c = dict(coords)
    if last:
        c[last] = last_values
    arr = xr.DataArray(data, dims=dims, coords=c, name=name)
    return arr.transpose("sample", *extra, *((last,) if last else ()))


def _setup(model, inputs, scores, method, batch_size):
    perturber = Perturber(model, inputs, method, batch_size)
    values, extra, coords, shape = check_scores(scores, perturber)
    n = np.array([r.size for r in perturber.removable], np.int64)
    return perturber, values, extra, coords, shape, n


def _attrs(perturber, scores):
    readout = ("pre-sigmoid saliency map, flattened" if perturber.image else
               "the model's output vector (MiniLM: the sentence embedding)")
    attrs = {"method": perturber.method,
             "similarity": f"cosine similarity of the read-out ({readout}) with the intact "
                           "input's",
             "removable": "valid positions that are not special tokens"
                          + (" (every patch; [CLS] is never removed)" if perturber.image else ""),
             "ties": "equal scores: the lower position ranks first"}
    name = getattr(scores, "name", None)
    if isinstance(name, str):
        attrs["scores"] = name
    return attrs


def faithfulness(model, inputs, scores, *, method=None, bins=BINS, batch_size=64,
                 progress=None):
    """ERASER comprehensiveness and sufficiency of token scores, and their AOPC.

    For each fraction ``f`` in ``bins``, with ``k = ceil(f n)`` clipped to
    ``[1, n]`` (``n`` removable tokens in the sample) and ``r_k`` the ``k``
    tokens with the highest scores::

        comprehensiveness_f = s(x) - s(x without r_k)
        sufficiency_f       = s(x) - s(only r_k, with the special tokens)

    where ``s(x')`` is the cosine similarity of the model's read-out on ``x'``
    with its read-out on ``x`` (``s(x) = 1``). High comprehensiveness and low
    sufficiency mean the scores found the tokens the output depends on. Both
    lie in [0, 2].

    Parameters
    ----------
    model : attnkit.models.MiniLM, attnkit.models.SaliencyViT or callable
        A text model following the protocol of :mod:`attnkit.ablation`
        (``model(ids) -> (N, d)`` output vectors, optional
        ``special_token_ids`` and ``mask_token_id``), or an image model.
    inputs : list of str, list of token-id sequences, images or xarray.Dataset
        What :func:`attnkit.ablate` takes: sentences (the model must have
        ``tokenize``), token ids, an attention dataset made by ``model.run``;
        for an image model images, normalised pixels (N, 3, H, W) or a vision
        dataset.
    scores : array_like (sample, position) or xarray.DataArray
        One score per position, aligned with the inputs (e.g.
        ``ak.attention_scores(ds, "raw").isel(layer=-1)``, ``ak.attribute(...)``;
        for images position ``1 + r * cols + c`` is patch (r, c)). At least
        as many positions as the longest sample. NaN is allowed at special
        tokens and padding only. A DataArray may have more dims than
        ``sample`` and ``position`` (``layer``, ``attribution_method``, ...):
        each of their entries is scored, and the result keeps them.
    method : {"delete", "mask", "key_mask"}, optional
        How a token is removed. Text: ``delete`` (default; the sequence gets
        shorter) or ``mask`` (replaced by ``model.mask_token_id``). Images:
        ``mask`` (default; occlusion, the patch's pixels set to the
        normalisation mean) or ``key_mask`` (the patch token removed as a key
        in every layer).
    bins : sequence of float
        Increasing fractions in (0, 1]; default ERASER's (0.01, 0.05, 0.1,
        0.2, 0.5).
    batch_size : int
        Perturbed sequences (images) per model call; images run at most
        :data:`attnkit.models._vit_ablation.MAX_BATCH` per forward pass.
    progress : bool, callable or None
        A progress bar on stderr (True), ``f(done, total)``, or None for the
        ``progress`` option of :func:`attnkit.set_options`.

    Returns
    -------
    xarray.Dataset
        ``comprehensiveness``, ``sufficiency`` (sample, [extra dims,] bin) and
        ``comprehensiveness_aopc``, ``sufficiency_aopc`` (sample, [extra
        dims]): their means over the bins. Coordinates ``bin`` (the
        fractions), ``k`` (sample, bin): tokens removed or kept, and
        ``removable`` (sample): ``n``. A sample without removable tokens is
        NaN. attrs: ``method``, ``similarity``, ``removable``, ``ties``,
        ``k``, ``aopc`` and ``scores`` (the DataArray's name).

    Notes
    -----
    Identical perturbed inputs run once (short sentences share ``k = 1`` for
    the small bins): at most ``1 + 2 * len(bins)`` forward passes per sample
    and distinct ranking. With ``delete``, a model without special tokens
    left with no token at all (comprehensiveness with ``k = n``) is not run:
    NaN.

    Examples
    --------
    A bag of tokens whose token ``i`` adds ``w[i]`` along axis ``i``: the
    cosine of a sub-bag with the whole is ``sqrt(sum of kept w^2 / sum of w^2)``,
    here with ``|x| = 13``.

    >>> import numpy as np, attnkit as ak
    >>> w = np.array([0.0, 3.0, 4.0, 12.0])
    >>> bag = lambda ids: np.array([np.bincount(s, minlength=4) * w for s in ids])
    >>> r = ak.faithfulness(bag, [[1, 2, 3]], np.array([[1.0, 2.0, 3.0]]), bins=(0.3, 0.5))
    >>> r.k.values.tolist()                   # ceil(0.9) = 1, ceil(1.5) = 2 of 3 tokens
    [[1, 2]]
    >>> r.comprehensiveness.values.round(4)   # 1 - 5/13, 1 - 3/13
    array([[0.6154, 0.7692]])
    >>> r.sufficiency.values.round(4)         # 1 - 12/13, 1 - sqrt(160)/13
    array([[0.0769, 0.027 ]])
    >>> float(r.comprehensiveness_aopc.round(4)[0])
    0.6923
    """
    bins = _fractions("bins", bins, zero=False, min_count=1)
    perturber, values, extra, coords, shape, n = _setup(model, inputs, scores, method,
                                                        batch_size)
    count = perturber.count
    k = np.array([[top_count(f, m, 1) if m else 0 for f in bins] for m in n], np.int64)
    variants, where = [], []
    for c in range(values.shape[0]):
        for s in range(count):
            if not n[s]:
                continue
            ranked = ranking(values[c, s], perturber.removable[s], "most")
            for b in range(bins.size):
                variants += [(s, ranked[: k[s, b]]), (s, ranked[k[s, b]:])]
                where.append((c, s, b))
    sim = perturber.similarity(variants, progress, "faithfulness")
    comp = np.full((values.shape[0], count, bins.size), np.nan)
    suff = comp.copy()
    if where:
        c, s, b = np.array(where).T
        comp[c, s, b] = 1.0 - sim[0::2]
        suff[c, s, b] = 1.0 - sim[1::2]

    import xarray as xr

    def arr(v, last, name):
        return _array(v, extra, coords, shape, count, last, bins, name)

    out = xr.Dataset({
        "comprehensiveness": arr(comp, "bin", "comprehensiveness"),
        "sufficiency": arr(suff, "bin", "sufficiency"),
        "comprehensiveness_aopc": arr(comp.mean(-1), None, "comprehensiveness_aopc"),
        "sufficiency_aopc": arr(suff.mean(-1), None, "sufficiency_aopc"),
    })
    out = out.assign_coords(k=(("sample", "bin"), k), removable=("sample", n))
    out.attrs = _attrs(perturber, scores)
    out.attrs.update({
        "k": "ceil(bin * removable) clipped to [1, removable] (products within 1e-9 of an "
             "integer count as it)",
        "aopc": "mean over the bins (ERASER's area over the perturbation curve)",
        "metrics": "comprehensiveness = 1 - s(x without the top k); sufficiency = "
                   "1 - s(the top k and the special tokens only) (DeYoung et al. 2020)"})
    return out


def perturbation_curve(model, inputs, scores, *, order="most", mode="deletion", method=None,
                       fractions=FRACTIONS, batch_size=64, progress=None):
    """The similarity of the output as the highest (lowest) scored tokens are removed or added.

    At each fraction ``f``, the first ``k = ceil(f n)`` removable tokens in
    ``order`` (``n`` removable tokens in the sample; ``k`` clipped to ``[0,
    n]``) are

    * removed from ``x`` (``mode="deletion"``: Chefer et al.'s positive
      perturbation with ``order="most"``, negative with ``"least"``; Petsiuk et
      al.'s deletion), or
    * the only ones kept, every other removable token removed
      (``mode="insertion"``: the curve starts from the special tokens alone
      and ends at ``x``),

    and ``similarity = s(x')``, the cosine similarity of the model's read-out
    on ``x'`` with its read-out on ``x``.

    A faithful ranking makes the deletion curve with ``order="most"`` drop
    early (small area) and the insertion curve rise early (large area);
    ``order="least"`` reverses both.

    Parameters
    ----------
    model, inputs, scores, method, batch_size, progress
        As :func:`faithfulness`.
    order : {"most", "least"}
        Take the highest scores first (``most``) or the lowest (``least``);
        equal scores go to the lower position first in both.
    mode : {"deletion", "insertion"}
    fractions : sequence of float
        At least two increasing fractions in [0, 1]; default 0, 0.1, ..., 1.

    Returns
    -------
    xarray.Dataset
        ``similarity`` (sample, [extra dims,] fraction) and ``area`` (sample,
        [extra dims]): the trapezoid area under the curve divided by the span
        of the fractions, i.e. the mean similarity over them (with fractions
        spanning [0, 1], the default, exactly the area). Coordinates
        ``fraction``, ``k`` (sample, fraction): tokens removed (deletion) or
        kept (insertion), ``removable`` (sample). A sample without removable
        tokens is NaN. attrs: ``order``, ``mode``, ``method``, ``similarity``,
        ``removable``, ``ties``, ``k``, ``area``, ``scores``.

    Examples
    --------
    The bag of tokens of :func:`faithfulness` (``|x| = 13``), deleting the
    highest scores first:

    >>> import numpy as np, attnkit as ak
    >>> w = np.array([0.0, 3.0, 4.0, 12.0])
    >>> bag = lambda ids: np.array([np.bincount(s, minlength=4) * w for s in ids])
    >>> c = ak.perturbation_curve(bag, [[1, 2, 3]], np.array([[1.0, 2.0, 3.0]]),
    ...                           fractions=(0, 1 / 3, 2 / 3))
    >>> c.similarity.values.round(4)          # 13/13, 5/13, 3/13
    array([[1.    , 0.3846, 0.2308]])
    >>> float(c.area.round(4)[0])              # (1 + 2 * 5/13 + 3/13) / 4
    0.5
    """
    order = _choice("order", order, ORDERS)
    mode = _choice("mode", mode, MODES)
    fractions = _fractions("fractions", fractions, zero=True, min_count=2)
    perturber, values, extra, coords, shape, n = _setup(model, inputs, scores, method,
                                                        batch_size)
    count = perturber.count
    k = np.array([[top_count(f, m, 0) for f in fractions] for m in n], np.int64)
    variants, where = [], []
    for c in range(values.shape[0]):
        for s in range(count):
            if not n[s]:
                continue
            ranked = ranking(values[c, s], perturber.removable[s], order)
            for j in range(fractions.size):
                head, tail = ranked[: k[s, j]], ranked[k[s, j]:]
                variants.append((s, head if mode == "deletion" else tail))
                where.append((c, s, j))
    sim = perturber.similarity(variants, progress, "perturbation curve")
    curve = np.full((values.shape[0], count, fractions.size), np.nan)
    if where:
        c, s, j = np.array(where).T
        curve[c, s, j] = sim
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    area = trapezoid(curve, fractions, axis=-1) / (fractions[-1] - fractions[0])

    import xarray as xr

    out = xr.Dataset({
        "similarity": _array(curve, extra, coords, shape, count, "fraction", fractions,
                             "similarity"),
        "area": _array(area, extra, coords, shape, count, None, None, "area"),
    })
    out = out.assign_coords(k=(("sample", "fraction"), k), removable=("sample", n))
    out.attrs = {"order": order, "mode": mode, **_attrs(perturber, scores)}
    out.attrs.update({
        "k": "ceil(fraction * removable) clipped to [0, removable] (products within 1e-9 of an "
             "integer count as it); removed (deletion) or the only ones kept (insertion)",
        "area": "trapezoid area under similarity(fraction) / (last fraction - first "
                "fraction): the mean similarity over the fractions"})
    return out
