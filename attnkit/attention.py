"""Public attention API: exact softmax attention, its weights and its statistics.

All three functions share one signature for the problem they compute::

    fn(q, k, [v,] *, scale=None, causal=False, mask=None, score_mod=None,
       q_lengths=None, kv_lengths=None, backend="auto", check_finite=True)

and the same rules for shapes, broadcasting, grouped-query heads, padding and
masks (see :mod:`attnkit._prepare` and :mod:`attnkit.masks`). They validate,
pick a backend and call a kernel; the kernels hold the numerics.
"""

from __future__ import annotations

import numpy as np

from . import _backend, errors
from ._prepare import check_weights_budget, prepare
from .options import get_options

__all__ = ["attention", "attention_weights", "attention_stats", "STAT_NAMES"]

#: Statistics attention_stats can compute (``"max"`` also returns ``"argmax"``).
STAT_NAMES = ("entropy", "received", "max", "distance")


def attention(
    q, k, v, *, scale=None, causal=False, mask=None, score_mod=None,
    q_lengths=None, kv_lengths=None, return_lse=False, backend="auto", check_finite=True,
):
    """Exact scaled dot-product attention, computed tile by tile (flash-style).

    ``softmax(scale * q @ k.T + mods, masked) @ v`` without ever holding the
    ``n x m`` score matrix: extra memory is O(n * d).

    Parameters
    ----------
    q : array_like, shape (..., n, d)
        Queries. float32 or float64; float16/bfloat16 are computed in float32.
    k : array_like, shape (..., m, d)
        Keys. Leading dims broadcast against q's; fewer heads than q (dividing
        q's) gives grouped-query attention.
    v : array_like, shape (..., m, dv)
        Values, same leading dims as k.
    scale : float, optional
        Multiplies the dot products; default ``1 / sqrt(d)``.
    causal : bool
        Shorthand for ``mask & attnkit.masks.causal()`` (query i sees keys <= i).
    mask : attnkit.masks.Mask, optional
        Which (query, key) pairs may attend; tiles the mask rules out are skipped.
    score_mod : callable, optional
        Numba-jittable ``f(score, b, h, q_idx, kv_idx) -> score`` applied to each
        scaled score before the softmax (FlexAttention style); ``h`` indexes the
        last leading dim, ``b`` the flattened dims before it. See
        :mod:`attnkit.positional` for ALiBi, soft-capping and relative bias.
    q_lengths, kv_lengths : int or array of int, optional
        Valid lengths per sequence (shape: a prefix of the batch dims, e.g.
        ``(B,)``). Padded keys get no weight; padded queries output 0.
    return_lse : bool
        Also return the log-sum-exp of each query's scores.
    backend : {"auto", "cpu", "cuda"}
        Where to compute. "cuda" runs the Numba CUDA kernels (see docs/gpu.md);
        "auto" picks them for GPU inputs or when a GPU is present, else the CPU.
        GPU inputs (numba device arrays, or anything with
        ``__cuda_array_interface__``: CuPy, PyTorch) are read in place and the
        results returned as numba device arrays.
    check_finite : bool
        Reject NaN/inf inputs (default True, like SciPy).

    Returns
    -------
    out : ndarray, shape (..., n, dv)
        Attention output, in the inputs' dtype (float16 stays float16), on the
        device for GPU inputs. A query whose every key is masked gets 0.
    lse : ndarray, shape (..., n)
        Only with ``return_lse``: log-sum-exp per query (``-inf`` if fully
        masked), float32, or float64 for float64 inputs.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    >>> out = ak.attention(q, k, v, causal=True)
    >>> out.shape
    (2, 5, 8)
    >>> bool(np.allclose(out[:, 0], v[:, 0]))   # the first query sees only key 0
    True
    """
    target = _backend.choose(backend, q=q, k=k, v=v)
    if v is None:
        raise TypeError("v: expected an array of values (..., m, dv), got None. Fix: pass v, or "
                        "use ak.attention_weights / ak.attention_stats for weights without values.")
    p = prepare(
        q, k, v, scale=scale, causal=causal, mask=mask, score_mod=score_mod,
        q_lengths=q_lengths, kv_lengths=kv_lengths, check_finite=check_finite, target=target,
    )
    return _backend.kernels(target).attention(p, return_lse)


def attention_weights(
    q, k, *, scale=None, causal=False, mask=None, score_mod=None,
    q_lengths=None, kv_lengths=None, backend="auto", check_finite=True, max_bytes=None,
):
    """Exact attention probabilities ``softmax(scale * q @ k.T)``, shape (..., n, m).

    Exact up to rounding: every row sums to 1. The CPU makes one online pass
    over the keys, storing each tile's ``exp(score - m)`` against the row's
    running maximum ``m`` and rescaling the row to ``exp(score - lse)`` once
    it is done; the GPU makes two (log-sum-exp, then ``exp(score - lse)``
    tile by tile). Masked, padded and skipped entries are exactly 0; fully
    masked rows are all 0.

    Parameters
    ----------
    q, k, scale, causal, mask, score_mod, q_lengths, kv_lengths, backend, check_finite
        As in :func:`attention`.
    max_bytes : int, optional
        Refuse results larger than this (default: the ``weights_max_bytes``
        option, 2 GiB; see :func:`attnkit.set_options`).

    Returns
    -------
    weights : ndarray, shape (..., n, m)
        Dims (..., query, key); float32, or float64 for float64 inputs.

    Raises
    ------
    WeightsTooLargeError
        When the result would exceed the budget; use :func:`attention_stats`,
        which streams the same exact probabilities in O(n + m) memory.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((4, 8)), rng.standard_normal((6, 8))
    >>> w = ak.attention_weights(q, k)
    >>> w.shape, bool(np.allclose(w.sum(-1), 1.0))
    ((4, 6), True)
    """
    target = _backend.choose(backend, q=q, k=k)
    p = prepare(
        q, k, scale=scale, causal=causal, mask=mask, score_mod=score_mod,
        q_lengths=q_lengths, kv_lengths=kv_lengths, check_finite=check_finite, target=target,
    )
    compute = np.dtype(np.float64 if p.out_dtype == np.float64 else np.float32)
    check_weights_budget(
        "attention_weights", p.batch_shape + (p.n, p.m), compute,
        get_options()["weights_max_bytes"] if max_bytes is None else int(max_bytes),
        "use attnkit.attention_stats for entropy, received attention, max/top-k and "
        "distance in O(n + m) memory, or pass max_bytes=...",
    )
    return _backend.kernels(target).weights(p)


def _check_stats(stats, topk):
    if isinstance(stats, str):
        stats = (stats,)
    stats = tuple(stats)
    unknown = [s for s in stats if s not in STAT_NAMES]
    if unknown:
        raise errors.value_error(
            "stats", f"names from {STAT_NAMES}", unknown, "remove or respell them"
        )
    return stats, errors.nonnegative_int("topk", topk, "pass e.g. topk=5")


def attention_stats(
    q, k, *, scale=None, causal=False, mask=None, score_mod=None,
    q_lengths=None, kv_lengths=None, backend="auto", check_finite=True,
    stats=STAT_NAMES, topk=0,
):
    """Exact statistics of the attention probabilities without storing them.

    The probabilities are recomputed tile by tile and reduced, never stored,
    so memory stays O(n + m) per head whatever the length. On the CPU one
    online pass over the keys gives every per-query statistic together with
    the log-sum-exp (the entropy as ``log l + sum e (m - s) / l`` from the
    running maximum ``m``, sum ``l`` and ``e = exp(s - m)``: no cancellation),
    and "received" is folded into it while its per-tile parts stay small
    (else it takes a second pass, over the queries); the GPU first computes
    the log-sum-exp, then reduces ``exp(score - lse)``.

    Parameters
    ----------
    q, k, scale, causal, mask, score_mod, q_lengths, kv_lengths, backend, check_finite
        As in :func:`attention`.
    stats : sequence of str
        Any of ``"entropy"``, ``"received"``, ``"max"``, ``"distance"``.
    topk : int
        Also return the ``topk`` most attended keys of every query.

    Returns
    -------
    dict of str to ndarray
        ``"entropy"`` (..., n): ``-sum p log p`` in nats (0 for masked rows).
        ``"received"`` (..., m): attention each key receives, summed over valid queries.
        ``"max"`` (..., n) and ``"argmax"`` (..., n): largest probability and its
        key (first on ties; -1 for fully masked rows).
        ``"distance"`` (..., n): mean attention distance ``sum_j p_ij |i - j|``.
        ``"topk_index"`` / ``"topk_value"`` (..., n, topk) when ``topk > 0``:
        keys by descending probability (-1 / 0 where fewer keys exist).
        Floats are float64.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.standard_normal((3, 7, 16)), rng.standard_normal((3, 7, 16))
    >>> st = ak.attention_stats(q, k, causal=True, topk=2)
    >>> sorted(st)
    ['argmax', 'distance', 'entropy', 'max', 'received', 'topk_index', 'topk_value']
    >>> float(st["entropy"][0, 0])   # the first query can only see key 0
    0.0
    >>> bool(np.allclose(st["received"].sum(-1), 7))   # each query hands out 1
    True
    """
    target = _backend.choose(backend, q=q, k=k)
    stats, topk = _check_stats(stats, topk)
    p = prepare(
        q, k, scale=scale, causal=causal, mask=mask, score_mod=score_mod,
        q_lengths=q_lengths, kv_lengths=kv_lengths, check_finite=check_finite, target=target,
    )
    per_query = [name for name in stats if name != "received"]
    computed = _backend.kernels(target).stats(p, bool(per_query), topk, "received" in stats)
    names = per_query + (["argmax"] if "max" in stats else [])
    names += ["topk_index", "topk_value"] if topk else []
    names += ["received"] if "received" in stats else []
    return {name: computed[name] for name in names}
