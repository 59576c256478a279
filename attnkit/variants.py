"""Attention variants from the literature, each able to return its attention weights.

* :func:`multi_head_attention`: the Transformer's multi-head attention
  (Vaswani et al. 2017), self- or cross-attention, with grouped-query heads
  (Ainslie et al. 2023), on top of :func:`attnkit.attention`.
* :func:`additive_attention`: Bahdanau et al. (2015), ``v_a . tanh(W_q q + W_k k)``.
* :func:`luong_attention`: Luong et al. (2015), "dot", "general" and "concat" scores.
* :func:`linear_attention`: Katharopoulos et al. (2020), kernelised attention
  with feature maps, causal by running sums in O(d * dv) memory.

One convention, that of :func:`attnkit.attention`:

* inputs ``q, k, v`` (``x, context`` for :func:`multi_head_attention`, whose
  projections make q, k and v);
* padding by valid lengths: ``kv_lengths`` for the keys, and for
  :func:`multi_head_attention` also ``q_lengths`` for the queries;
* ``return_weights=False`` returns the output alone, ``return_weights=True``
  returns ``(out, weights)`` with weights of dims (..., query, key);
* ``backend`` "auto" | "cpu" | "cuda": :func:`multi_head_attention` and
  Luong's "dot" and "general" scores run on :func:`attnkit.attention`'s
  backends; additive attention, Luong's "concat" and linear attention have
  CPU kernels only, so "auto" and "cpu" run them on the CPU and "cuda"
  raises :class:`attnkit.BackendUnavailableError`.

Weight convention: every weight matrix is stored ``(in_features, out_features)``
and applied on the right, ``x @ w`` (plus an optional bias of shape
``(out_features,)``). PyTorch's ``nn.Linear`` and ``nn.MultiheadAttention``
store the transpose: pass ``module.weight.T``.

Shapes follow :func:`attnkit.attention`: queries ``(..., n, d)``, keys
``(..., m, dk)``, values ``(..., m, dv)``; leading dims broadcast, and keys
with fewer heads (last leading dim) than the queries, dividing their count,
give grouped-query attention. float32 and float64 compute natively;
float16/bfloat16 inputs are computed and returned in float32.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend, errors
from ._prepare import batch_lengths, batch_maps, check_weights_budget, host_float_array
from .attention import attention, attention_stats, attention_weights
from .masks import Mask
from .options import get_options

__all__ = [
    "multi_head_attention",
    "additive_attention",
    "luong_attention",
    "linear_attention",
]

LUONG_SCORES = ("dot", "general", "concat")
FEATURE_MAPS = ("elu1", "relu")


# ----------------------------------------------------------------- helpers
def _floats(**named):
    """Named array arguments (None kept) cast to one compute dtype.

    float64 if any input is float64, else float32 (half inputs compute in
    float32). Non-float dtypes raise the shared TypeError naming the argument.
    """
    arrays = {name: None if a is None else host_float_array(name, a) for name, a in named.items()}
    present = [a for a in arrays.values() if a is not None]
    dtype = np.dtype(np.float64 if any(a.dtype == np.float64 for a in present) else np.float32)
    cast = [None if a is None else np.asarray(a, dtype=dtype) for a in arrays.values()]
    return dtype, cast


def _check_finite(name: str, arr: np.ndarray) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise ValueError(
            f"{name}: expected finite values, got {bad} NaN/inf entries. Fix: clean the "
            "input; mark padding with the lengths arguments or a mask instead of NaN."
        )


def _sequence(name: str, arr: np.ndarray, features: str) -> None:
    if arr.ndim < 2:
        raise errors.shape_error(
            name, f"(..., sequence, {features}) with at least 2 dims", arr.shape,
            f"add the sequence axis, e.g. {name}[None, :]",
        )


def _matrix(name: str, w: np.ndarray, rows: int, cols, expected: str, fix: str) -> None:
    """Check that ``w`` is 2-d with ``rows`` rows and, when given, ``cols`` columns."""
    ok = w.ndim == 2 and w.shape[0] == rows and w.shape[1] >= 1
    if ok and cols is not None:
        ok = w.shape[1] == cols
    if not ok:
        raise errors.shape_error(name, expected, w.shape, fix)


def _vector(name: str, b, size: int, what: str) -> None:
    if b is not None and b.shape != (size,):
        raise errors.shape_error(
            name, f"({size},), one {what}", b.shape, f"pass a 1-d array of {size} values",
        )


def _check_mask(mask) -> None:
    if mask is not None and not isinstance(mask, Mask):
        raise TypeError(
            f"mask: expected an attnkit mask, got {type(mask).__name__}. Fix: build one "
            "with attnkit.masks (causal(), local(w), strided(s), global_tokens(i), "
            "block_sparse(layout, b)); use kv_lengths for padding."
        )


def _same_keys(k_name: str, v_name: str, keys: np.ndarray, values: np.ndarray) -> None:
    m = keys.shape[-2]
    if values.shape[-2] != m:
        raise errors.shape_error(
            v_name, f"{m} positions to match {k_name} {keys.shape}", values.shape,
            "pass one value vector per key",
        )
    if values.shape[:-2] != keys.shape[:-2]:
        raise errors.shape_error(
            v_name, f"the same leading dims as {k_name}, {keys.shape[:-2]}", values.shape,
            f"give {k_name} and {v_name} the same batch and head dims",
        )


def _cpu_only(fn: str, backend) -> None:
    """Check ``backend`` for a computation that has CPU kernels only.

    "auto" and "cpu" run it on the CPU; "cuda" raises, naming the fix.
    """
    _backend.choose(backend, cuda_supported=False, what=fn)


def _check_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    """q (..., n, dq), k (..., m, dk) and v (..., m, dv) with k and v sharing leading dims."""
    _sequence("q", q, "dq")
    _sequence("k", k, "dk")
    _sequence("v", v, "dv")
    _same_keys("k", "v", k, v)


def _flat(x: np.ndarray) -> np.ndarray:
    """(..., rows, cols) as a C-contiguous (problems, rows, cols) array."""
    return np.ascontiguousarray(x.reshape((math.prod(x.shape[:-2]),) + x.shape[-2:]))


# ------------------------------------------------------ multi-head attention
def multi_head_attention(
    x, w_q, w_k, w_v, w_o, n_heads, *, context=None, b_q=None, b_k=None, b_v=None,
    b_o=None, n_kv_heads=None, causal=False, mask=None, score_mod=None, q_lengths=None,
    kv_lengths=None, return_weights=False, return_stats=False, backend="auto",
):
    """Multi-head attention (Vaswani et al. 2017), self- or cross-attention.

    Projects ``q = x @ w_q + b_q``, ``k = c @ w_k + b_k``, ``v = c @ w_v + b_v``
    (``c`` is ``context``, or ``x`` for self-attention), splits them into heads,
    runs exact attention per head with :func:`attnkit.attention` (scale
    ``1 / sqrt(d_head)``), concatenates the heads and returns
    ``heads @ w_o + b_o``.

    Weight convention: weights are ``(in_features, out_features)`` and applied
    as ``x @ w``. ``torch.nn.MultiheadAttention`` stores the transpose: with
    ``E = embed_dim``, ``w_q = in_proj_weight[:E].T``,
    ``w_k = in_proj_weight[E:2*E].T``, ``w_v = in_proj_weight[2*E:].T`` (or
    ``q_proj_weight.T`` etc. when ``kdim``/``vdim`` differ from ``E``),
    ``w_o = out_proj.weight.T``; biases are ``in_proj_bias`` split in three
    and ``out_proj.bias``. Head ``h`` uses columns ``h*d_head:(h+1)*d_head``
    of the projections, as in PyTorch.

    Parameters
    ----------
    x : array_like, shape (..., n, e)
        Input sequence (the queries' source).
    w_q : array_like, shape (e, n_heads * d_head)
        Query projection.
    w_k : array_like, shape (e_ctx, n_kv_heads * d_head)
        Key projection (``e_ctx = e`` for self-attention).
    w_v : array_like, shape (e_ctx, n_kv_heads * d_v)
        Value projection.
    w_o : array_like, shape (n_heads * d_v, e_out)
        Output projection.
    n_heads : int
        Number of query heads; must divide ``w_q.shape[1]``.
    context : array_like, shape (..., m, e_ctx), optional
        Sequence to attend to (cross-attention); default ``x`` (self-attention).
        Its leading dims broadcast against x's.
    b_q, b_k, b_v, b_o : array_like, optional
        Biases of shape ``(n_heads * d_head,)``, ``(n_kv_heads * d_head,)``,
        ``(n_kv_heads * d_v,)`` and ``(e_out,)``.
    n_kv_heads : int, optional
        Key/value heads (grouped-query attention): must divide ``n_heads``;
        query head ``h`` uses kv head ``h // (n_heads // n_kv_heads)``.
        Default ``n_heads``.
    causal, mask, score_mod, backend
        As in :func:`attnkit.attention`; ``score_mod`` sees the head index as ``h``.
    q_lengths : int or array of int, optional
        Valid lengths of ``x``'s sequences (shape: a prefix of the batch dims).
        Padded query rows of the output and of the weights are 0. In
        self-attention they also pad the keys, unless ``kv_lengths`` is given.
    kv_lengths : int or array of int, optional
        Valid lengths of the sequences attended to: ``context``'s, or ``x``'s
        in self-attention (default there: ``q_lengths``). Padded keys get
        weight 0.
    return_weights : bool
        Also return the per-head attention probabilities (memory-guarded like
        :func:`attnkit.attention_weights`).
    return_stats : bool
        Also return the streaming statistics of :func:`attnkit.attention_stats`.

    Returns
    -------
    out : ndarray, shape (..., n, e_out)
        Dims (..., query, feature). Alone unless a flag asks for more.
    weights : ndarray, shape (..., n_heads, n, m)
        Only with ``return_weights``: dims (..., head, query, key).
    stats : dict of str to ndarray
        Only with ``return_stats``: as :func:`attnkit.attention_stats`, per
        (..., head, query) or (..., head, key).
        With both flags the result is ``(out, weights, stats)``.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 16))                  # (batch, n, e)
    >>> w_q, w_k, w_v, w_o = (rng.standard_normal((16, 16)) / 4 for _ in range(4))
    >>> out, w = ak.multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads=4,
    ...                                  causal=True, return_weights=True)
    >>> out.shape, w.shape                                   # w: (batch, head, n, m)
    ((2, 5, 16), (2, 4, 5, 5))
    >>> bool(np.allclose(w.sum(-1), 1.0)), float(w[0, 0, 0, 0])
    (True, 1.0)

    Grouped-query heads: 4 query heads share 2 key/value heads.

    >>> w_kv = rng.standard_normal((16, 8)) / 4              # 2 heads of d_head = 4
    >>> ak.multi_head_attention(x, w_q, w_kv, w_kv, w_o, n_heads=4, n_kv_heads=2).shape
    (2, 5, 16)

    Padded self-attention: the second sequence has 3 valid tokens, which pad
    the queries (rows of 0) and, in self-attention, the keys.

    >>> out, w = ak.multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads=4,
    ...                                  q_lengths=[5, 3], return_weights=True)
    >>> bool((out[1, 3:] == 0).all()), bool((w[1, :, :3, 3:] == 0).all())
    (True, True)
    """
    n_heads = errors.positive_int("n_heads", n_heads)
    n_kv_heads = n_heads if n_kv_heads is None else errors.positive_int("n_kv_heads", n_kv_heads)
    return_weights = errors.flag("return_weights", return_weights)
    return_stats = errors.flag("return_stats", return_stats)
    errors.backend_name(backend)
    self_attention = context is None
    dtype, (x, context, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o) = _floats(
        x=x, context=context, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o,
        b_q=b_q, b_k=b_k, b_v=b_v, b_o=b_o,
    )
    _sequence("x", x, "e")
    ctx_name = "x" if self_attention else "context"
    ctx = x if self_attention else context
    _sequence("context", ctx, "e_ctx")
    n, e = x.shape[-2:]
    m, e_ctx = ctx.shape[-2:]
    torch_hint = "weights are (in, out), applied as x @ w; torch stores the transpose"
    _matrix("w_q", w_q, e, None, f"(e, n_heads * d_head) with e = {e} from x",
            f"pass the query projection with {e} rows ({torch_hint})")
    width = w_q.shape[1]
    if width % n_heads:
        raise errors.value_error(
            "n_heads", f"a divisor of the query projection width w_q.shape[1] = {width}",
            n_heads, "pick n_heads so that d_head = w_q.shape[1] / n_heads is whole, "
            "or resize w_q",
        )
    d_head = width // n_heads
    if n_heads % n_kv_heads:
        raise errors.value_error(
            "n_kv_heads", f"a divisor of n_heads = {n_heads} (grouped-query attention)",
            n_kv_heads, "pick n_kv_heads dividing n_heads",
        )
    _matrix("w_k", w_k, e_ctx, n_kv_heads * d_head,
            f"(e_ctx, n_kv_heads * d_head) = ({e_ctx}, {n_kv_heads * d_head}) with "
            f"e_ctx from {ctx_name} and d_head = w_q.shape[1] / n_heads = {d_head}",
            f"project keys to n_kv_heads = {n_kv_heads} heads of {d_head} features "
            f"({torch_hint})")
    _matrix("w_v", w_v, e_ctx, None,
            f"(e_ctx, n_kv_heads * d_v) with e_ctx = {e_ctx} from {ctx_name}",
            f"pass the value projection with {e_ctx} rows ({torch_hint})")
    if w_v.shape[1] % n_kv_heads:
        raise errors.shape_error(
            "w_v", f"(e_ctx, n_kv_heads * d_v): a width divisible by n_kv_heads = "
            f"{n_kv_heads}", w_v.shape, "give every value head the same d_v",
        )
    d_v = w_v.shape[1] // n_kv_heads
    _matrix("w_o", w_o, n_heads * d_v, None,
            f"(n_heads * d_v, e_out) = ({n_heads * d_v}, e_out) with d_v = "
            f"w_v.shape[1] / n_kv_heads = {d_v}",
            f"pass the output projection with one row per concatenated head feature "
            f"({torch_hint})")
    _vector("b_q", b_q, width, "bias per column of w_q")
    _vector("b_k", b_k, w_k.shape[1], "bias per column of w_k")
    _vector("b_v", b_v, w_v.shape[1], "bias per column of w_v")
    _vector("b_o", b_o, w_o.shape[1], "bias per column of w_o")
    for name, arr in (("x", x), ("context", context), ("w_q", w_q), ("w_k", w_k),
                      ("w_v", w_v), ("w_o", w_o), ("b_q", b_q), ("b_k", b_k),
                      ("b_v", b_v), ("b_o", b_o)):
        if arr is not None:
            _check_finite(name, arr)
    try:
        batch = tuple(np.broadcast_shapes(x.shape[:-2], ctx.shape[:-2]))
    except ValueError:
        raise errors.shape_error(
            "x, context", "leading (batch) dims that broadcast against each other",
            f"x batch dims {x.shape[:-2]} and context batch dims {ctx.shape[:-2]}",
            "make the leading dims equal, or 1 where one side is shared",
        ) from None
    q_len = batch_lengths("q_lengths", q_lengths, batch, n, "n")
    if kv_lengths is not None:
        batch_lengths("kv_lengths", kv_lengths, batch, m, "m")
    elif self_attention:
        kv_lengths = q_lengths  # the keys are x: its padding pads them too

    def heads(t, proj, bias, count, size):
        p = t @ proj
        if bias is not None:
            p = p + bias
        p = p.reshape(t.shape[:-1] + (count, size))
        return np.moveaxis(p, -2, -3)  # (..., heads, sequence, size)

    q = heads(x, w_q, b_q, n_heads, d_head)
    k = heads(ctx, w_k, b_k, n_kv_heads, d_head)
    v = heads(ctx, w_v, b_v, n_kv_heads, d_v)
    kw = dict(causal=causal, mask=mask, score_mod=score_mod, q_lengths=q_lengths,
              kv_lengths=kv_lengths, backend=backend)
    per_head = attention(q, k, v, **kw)  # (..., n_heads, n, d_v)
    merged = np.moveaxis(per_head, -3, -2)
    merged = merged.reshape(merged.shape[:-2] + (n_heads * d_v,))
    out = merged @ w_o
    if b_o is not None:
        out = out + b_o
    if q_lengths is not None:
        valid = np.arange(n) < q_len.reshape(batch)[..., None]  # (..., n)
        out = np.where(valid[..., None], out, 0.0)
    out = out.astype(dtype, copy=False)
    extra = []
    if return_weights:
        extra.append(attention_weights(q, k, **kw))
    if return_stats:
        extra.append(attention_stats(q, k, **kw))
    return (out, *extra) if extra else out


# ------------------------------------------------------- additive attention
def _additive(q, k, v, w_q, w_k, v_a, mask, kv_lengths, dtype, fn):
    """Shared core of additive_attention and luong_attention(score='concat').

    Returns ``(out, weights)``: the kernel forms the weights to compute the output.
    """
    from .kernels.cpu import variants as kernels

    batch, q_map, kv_map = batch_maps(q.shape[:-2], k.shape[:-2])
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    kv_len = batch_lengths("kv_lengths", kv_lengths, batch, m, "m")
    check_weights_budget(fn, batch + (n, m), dtype, get_options()["weights_max_bytes"],
                         "attend over fewer keys or decoder steps per call")
    pq = _flat(q @ w_q)  # (Zq, n, hidden): projections stay O((n + m) * hidden)
    pk = _flat(k @ w_k)  # (Zk, m, hidden)
    allowed = np.ones((0, 0), dtype=np.bool_) if mask is None else mask.dense(n, m)
    weights = np.empty((q_map.shape[0], n, m), dtype=dtype)
    kernels.additive_weights(pq, pk, np.ascontiguousarray(v_a), q_map, kv_map, kv_len,
                             np.ascontiguousarray(allowed), weights)
    out = np.matmul(weights, _flat(v)[kv_map])
    return out.reshape(batch + (n, dv)), weights.reshape(batch + (n, m))


def additive_attention(q, k, v, w_q, w_k, v_a, *, mask=None, kv_lengths=None,
                       return_weights=False, backend="auto"):
    """Additive attention (Bahdanau et al. 2015) for n decoder steps at once.

    ``score_ij = v_a . tanh(q_i @ w_q + k_j @ w_k)``, a softmax over the keys,
    and ``out_i = sum_j weights_ij v_j`` (Bahdanau's context vector). The
    scores are computed by a Numba kernel that never forms the
    ``(n, m, hidden)`` tensor; it does form the ``(..., n, m)`` weights, so
    the ``weights_max_bytes`` option bounds every call.

    Weights are ``(in_features, out_features)`` and applied on the right:
    ``w_q`` is the transpose of Bahdanau's ``W_a`` (and of
    ``torch.nn.Linear.weight``), ``w_k`` of ``U_a``.

    Parameters
    ----------
    q : array_like, shape (..., n, dq)
        Queries: decoder states, one per decoder step.
    k : array_like, shape (..., m, dk)
        Keys: encoder states (annotations). Leading dims broadcast against q's.
    v : array_like, shape (..., m, dv)
        Values, what is averaged (often ``k`` itself); same leading dims as k.
    w_q : array_like, shape (dq, hidden)
        Query projection.
    w_k : array_like, shape (dk, hidden)
        Key projection.
    v_a : array_like, shape (hidden,)
        Scoring vector.
    mask : attnkit.masks.Mask, optional
        Which (decoder step, key) pairs may attend.
    kv_lengths : int or array of int, optional
        Valid source lengths (shape: a prefix of the batch dims); padded keys
        get weight exactly 0.
    return_weights : bool
        Also return the alignment probabilities.
    backend : {"auto", "cpu", "cuda"}
        "auto" and "cpu" run the CPU kernel; there is no CUDA implementation,
        so "cuda" raises :class:`attnkit.BackendUnavailableError`.

    Returns
    -------
    out : ndarray, shape (..., n, dv)
        Dims (..., query, feature); 0 for a query whose every key is masked.
    weights : ndarray, shape (..., n, m)
        Only with ``return_weights``: alignment probabilities, dims (..., query,
        key): rows sum to 1, masked and padded entries are exactly 0, fully
        masked rows are all 0.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> dec, enc = rng.standard_normal((3, 8)), rng.standard_normal((6, 10))
    >>> w_q, w_k = rng.standard_normal((8, 12)), rng.standard_normal((10, 12))
    >>> v_a = rng.standard_normal(12)
    >>> ak.additive_attention(dec, enc, enc, w_q, w_k, v_a).shape   # 3 decoder steps
    (3, 10)
    >>> out, w = ak.additive_attention(dec, enc, enc, w_q, w_k, v_a, kv_lengths=4,
    ...                                return_weights=True)
    >>> out.shape, w.shape                                   # 3 decoder steps, 6 source tokens
    ((3, 10), (3, 6))
    >>> bool(np.allclose(w.sum(-1), 1.0)), bool((w[:, 4:] == 0).all())
    (True, True)
    """
    return_weights = errors.flag("return_weights", return_weights)
    _cpu_only("additive_attention", backend)
    dtype, (q, k, v, w_q, w_k, v_a) = _floats(q=q, k=k, v=v, w_q=w_q, w_k=w_k, v_a=v_a)
    _check_qkv(q, k, v)
    dq, dk = q.shape[-1], k.shape[-1]
    fix = "weights are (in, out), applied as x @ w; transpose a torch Linear.weight"
    _matrix("w_q", w_q, dq, None, f"(dq, hidden) with dq = {dq} from q",
            f"pass the query projection with {dq} rows ({fix})")
    hidden = w_q.shape[1]
    _matrix("w_k", w_k, dk, hidden, f"(dk, hidden) = ({dk}, {hidden}) with dk from k "
            "and hidden from w_q", f"project keys to the same hidden size as w_q ({fix})")
    if v_a.shape != (hidden,):
        raise errors.shape_error("v_a", f"(hidden,) = ({hidden},)", v_a.shape,
                                 "pass one scoring weight per hidden unit")
    for name, arr in (("q", q), ("k", k), ("v", v), ("w_q", w_q), ("w_k", w_k), ("v_a", v_a)):
        _check_finite(name, arr)
    _check_mask(mask)
    out, weights = _additive(q, k, v, w_q, w_k, v_a, mask, kv_lengths, dtype,
                             "additive_attention")
    return (out, weights) if return_weights else out


# ---------------------------------------------------------- Luong attention
def luong_attention(
    q, k, v, *, score="dot", w=None, w_c=None, v_a=None, mask=None, kv_lengths=None,
    return_weights=False, backend="auto",
):
    """Luong et al. (2015) global attention with the "dot", "general" or "concat" score.

    * ``"dot"``: ``score_ij = q_i . k_j`` (dq == dk);
    * ``"general"``: ``score_ij = q_i . (W k_j) = (q_i @ w) . k_j`` with ``w``
      of shape (dq, dk), Luong's ``W_a`` as written;
    * ``"concat"``: ``score_ij = v_a . tanh([q_i; k_j] @ w_c)`` with ``w_c`` of
      shape (dq + dk, hidden), the transpose of Luong's ``W_a``.

    "dot" and "general" run through :func:`attnkit.attention` (and
    :func:`attnkit.attention_weights` for the weights) with ``scale=1.0`` (no
    ``1/sqrt(d)``), on its backends; "concat" uses the CPU additive-attention
    kernel.

    Parameters
    ----------
    q : array_like, shape (..., n, dq)
        Queries: decoder states ``h_t``, one per decoder step.
    k : array_like, shape (..., m, dk)
        Keys: source states ``h_s``. Leading dims broadcast against q's.
    v : array_like, shape (..., m, dv)
        Values, what is averaged (often ``k``); same leading dims as k.
    score : {"dot", "general", "concat"}
        Score function.
    w : array_like, shape (dq, dk)
        Only for ``score="general"``.
    w_c : array_like, shape (dq + dk, hidden)
        Only for ``score="concat"``.
    v_a : array_like, shape (hidden,)
        Only for ``score="concat"``.
    mask : attnkit.masks.Mask, optional
        Which (decoder step, key) pairs may attend.
    kv_lengths : int or array of int, optional
        Valid source lengths (shape: a prefix of the batch dims).
    return_weights : bool
        Also return the alignment probabilities.
    backend : {"auto", "cpu", "cuda"}
        As in :func:`attnkit.attention` for "dot" and "general". "concat" has
        no CUDA implementation: "auto" and "cpu" run it on the CPU, "cuda"
        raises :class:`attnkit.BackendUnavailableError`.

    Returns
    -------
    out : ndarray, shape (..., n, dv)
        Dims (..., query, feature); 0 for a query whose every key is masked.
    weights : ndarray, shape (..., n, m)
        Only with ``return_weights``: alignment probabilities, dims (..., query,
        key): rows sum to 1, masked and padded entries are exactly 0, fully
        masked rows are all 0.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> h_t, h_s = rng.standard_normal((2, 4, 8)), rng.standard_normal((2, 7, 8))
    >>> ak.luong_attention(h_t, h_s, h_s).shape               # score="dot": (batch, n, dv)
    (2, 4, 8)
    >>> out, w = ak.luong_attention(h_t, h_s, h_s, return_weights=True)
    >>> w.shape                                              # (batch, n, m)
    (2, 4, 7)
    >>> out, w = ak.luong_attention(h_t, h_s, h_s, score="general", w=rng.standard_normal((8, 8)),
    ...                             kv_lengths=[7, 3], return_weights=True)
    >>> bool(np.allclose(w.sum(-1), 1.0)), bool((w[1, :, 3:] == 0).all())
    (True, True)
    """
    if not isinstance(score, str) or score not in LUONG_SCORES:
        raise errors.value_error(
            "score", "one of 'dot', 'general', 'concat'", repr(score),
            "pick one of those (Luong et al. 2015, section 3.1)",
        )
    return_weights = errors.flag("return_weights", return_weights)
    if score == "concat":
        _cpu_only("luong_attention(score='concat')", backend)
    else:
        errors.backend_name(backend)
    needed = {"dot": (), "general": ("w",), "concat": ("w_c", "v_a")}[score]
    for name, value in (("w", w), ("w_c", w_c), ("v_a", v_a)):
        if name in needed and value is None:
            raise errors.value_error(
                name, f"an array for score={score!r}", "None",
                f"pass {name}=... (see the docstring for its shape)",
            )
        if name not in needed and value is not None:
            users = "'general'" if name == "w" else "'concat'"
            raise errors.value_error(
                name, f"None for score={score!r} ({name} is used only by score={users})",
                "an array", f"drop {name}, or pass score={users}",
            )
    dtype, (q, k, v, w, w_c, v_a) = _floats(q=q, k=k, v=v, w=w, w_c=w_c, v_a=v_a)
    _check_qkv(q, k, v)
    dq, dk = q.shape[-1], k.shape[-1]
    if score == "dot" and dq != dk:
        raise errors.shape_error(
            "k", f"last dim dk = dq = {dq} for score='dot' (q {q.shape})",
            k.shape, "use score='general' with w of shape (dq, dk), or equal sizes",
        )
    if score == "general":
        _matrix("w", w, dq, dk, f"(dq, dk) = ({dq}, {dk}) from q and k",
                "pass Luong's W_a, so that score = (q @ w) . k")
    if score == "concat":
        _matrix("w_c", w_c, dq + dk, None,
                f"(dq + dk, hidden) = ({dq + dk}, hidden) from q and k",
                "stack the query rows over the key rows (weights are (in, out); "
                "transpose Luong's W_a)")
        if v_a.shape != (w_c.shape[1],):
            raise errors.shape_error("v_a", f"(hidden,) = ({w_c.shape[1]},)", v_a.shape,
                                     "pass one scoring weight per column of w_c")
    for name, arr in (("q", q), ("k", k), ("v", v), ("w", w), ("w_c", w_c), ("v_a", v_a)):
        if arr is not None:
            _check_finite(name, arr)
    _check_mask(mask)
    if score == "concat":
        out, weights = _additive(q, k, v, w_c[:dq], w_c[dq:], v_a, mask, kv_lengths, dtype,
                                 "luong_attention")
        return (out, weights) if return_weights else out
    batch_maps(q.shape[:-2], k.shape[:-2])  # broadcast errors before the projection
    projected = q if score == "dot" else q @ w
    kw = dict(scale=1.0, mask=mask, kv_lengths=kv_lengths, backend=backend)
    out = attention(projected, k, v, **kw)
    return (out, attention_weights(projected, k, **kw)) if return_weights else out


# --------------------------------------------------------- linear attention
def _elu1(x):
    """elu(x) + 1: x + 1 for x > 0, exp(x) otherwise (always positive)."""
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def _relu(x):
    return np.maximum(x, 0)


def _feature_map(feature_map):
    if isinstance(feature_map, str):
        if feature_map == "elu1":
            return "elu1", _elu1
        if feature_map == "relu":
            return "relu", _relu
    elif callable(feature_map):
        return getattr(feature_map, "__name__", type(feature_map).__name__), feature_map
    raise errors.value_error(
        "feature_map", "'elu1', 'relu' or a function phi(x) -> non-negative features",
        repr(feature_map), "pass feature_map='elu1' (Katharopoulos et al. 2020), 'relu', "
        "or a callable",
    )


def _features(phi, name: str, x: np.ndarray, arg: str, dtype) -> np.ndarray:
    rows = ", ".join(str(s) for s in x.shape[:-1])
    try:
        feats = np.asarray(phi(x), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"feature_map: expected a function returning a float array of shape "
            f"({rows}, r) for {arg} of shape {x.shape}, got an error from {name}: {exc}. "
            "Fix: make it map a NumPy array to a NumPy array of non-negative floats."
        ) from exc
    if feats.shape[:-1] != x.shape[:-1] or feats.ndim != x.ndim or feats.shape[-1] < 1:
        raise errors.shape_error(
            "feature_map", f"({rows}, r) for {arg} of shape {x.shape} (one feature vector "
            f"per row), returned by {name}", feats.shape,
            "map each row's last axis to r >= 1 features, keeping the other axes",
        )
    finite = np.isfinite(feats)
    if not finite.all():
        raise errors.value_error(
            "feature_map", "finite features",
            f"{int(feats.size - np.count_nonzero(finite))} NaN/inf values from {name}({arg})",
            "keep the map bounded on your inputs (e.g. elu(x) + 1 instead of exp(x))",
        )
    negative = feats < 0
    if negative.any():
        raise ValueError(
            f"feature_map: expected non-negative features (linear attention divides by "
            f"phi(q) . sum_j phi(k_j), which must stay positive), got "
            f"{int(np.count_nonzero(negative))} negative values (min {float(feats.min()):.3g}) "
            f"from {name}({arg}). Fix: use a non-negative map, e.g. feature_map='elu1', "
            "'relu', or lambda x: np.maximum(f(x), 0)."
        )
    return feats


def linear_attention(q, k, v, *, feature_map="elu1", causal=False, eps=1e-6, kv_lengths=None,
                     return_weights=False, backend="auto"):
    """Linear (kernelised) attention of Katharopoulos et al. (2020).

    ``out_i = phi(q_i) @ S / (phi(q_i) . z + eps)`` with
    ``S = sum_j outer(phi(k_j), v_j)`` and ``z = sum_j phi(k_j)``: the softmax
    kernel ``exp(q . k)`` is replaced by ``phi(q) . phi(k)``, so the cost is
    O(n * r * dv) instead of O(n * m * d) (``r`` features per row). With
    ``causal=True`` the sums run over ``j <= i`` (the fast-weight / RNN form),
    computed by a Numba kernel with running sums in O(r * dv) extra memory.

    Parameters
    ----------
    q : array_like, shape (..., n, d)
        Queries.
    k : array_like, shape (..., m, d)
        Keys. Leading dims broadcast against q's; fewer heads than q (dividing
        q's) gives grouped-query attention, as in :func:`attnkit.attention`.
    v : array_like, shape (..., m, dv)
        Values, same leading dims as k.
    feature_map : {"elu1", "relu"} or callable
        ``"elu1"``: ``elu(x) + 1`` (the paper's choice, always positive);
        ``"relu"``: ``max(x, 0)``; or a function mapping an array
        ``(..., rows, d)`` to non-negative features ``(..., rows, r)``.
        Negative features raise a ValueError.
    causal : bool
        Query i attends to keys ``j <= i`` (top-left aligned, as
        ``attnkit.attention(causal=True)``).
    eps : float
        Added to every denominator (>= 0); a row whose denominator is exactly
        0 outputs 0, never NaN.
    kv_lengths : int or array of int, optional
        Valid key lengths (shape: a prefix of the batch dims): padded keys
        are left out of every sum and get weight exactly 0.
    return_weights : bool
        Also return the implied attention weights
        ``phi(q_i) . phi(k_j) / (sum_j' phi(q_i) . phi(k_j') + eps)``,
        causal-masked, which reproduce the output (``weights @ v == out``).
        Refused with :class:`attnkit.WeightsTooLargeError` past the
        ``weights_max_bytes`` option.
    backend : {"auto", "cpu", "cuda"}
        "auto" and "cpu" run on the CPU; there is no CUDA implementation, so
        "cuda" raises :class:`attnkit.BackendUnavailableError`.

    Returns
    -------
    out : ndarray, shape (..., n, dv)
        Dims (..., query, feature).
    weights : ndarray, shape (..., n, m)
        Only with ``return_weights``: dims (..., query, key).

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 6, 8)) for _ in range(3))
    >>> out, w = ak.linear_attention(q, k, v, causal=True, return_weights=True)
    >>> out.shape, w.shape
    ((2, 6, 8), (2, 6, 6))
    >>> bool(np.allclose(w @ v, out)), bool(np.allclose(w.sum(-1), 1.0))
    (True, True)
    >>> bool(np.allclose(out[:, 0], v[:, 0]))    # the first query sees only key 0
    True

    Padded keys are left out: with ``kv_lengths=4`` the output is that of the
    first 4 keys alone.

    >>> bool(np.allclose(ak.linear_attention(q, k, v, kv_lengths=4),
    ...                  ak.linear_attention(q, k[:, :4], v[:, :4])))
    True
    """
    name, phi = _feature_map(feature_map)
    causal = errors.flag("causal", causal)
    return_weights = errors.flag("return_weights", return_weights)
    _cpu_only("linear_attention", backend)
    if (
        isinstance(eps, (bool, np.bool_))
        or not isinstance(eps, (int, float, np.integer, np.floating))
        or not np.isfinite(eps) or eps < 0
    ):
        raise errors.value_error("eps", "a finite float >= 0", repr(eps), "pass e.g. eps=1e-6")
    dtype, (q, k, v) = _floats(q=q, k=k, v=v)
    _sequence("q", q, "d")
    _sequence("k", k, "d")
    _sequence("v", v, "dv")
    if k.shape[-1] != q.shape[-1]:
        raise errors.shape_error(
            "k", f"last dim d = {q.shape[-1]} to match q {q.shape}", k.shape,
            "project q and k to the same head dimension",
        )
    _same_keys("k", "v", k, v)
    for arg, arr in (("q", q), ("k", k), ("v", v)):
        _check_finite(arg, arr)
    batch, q_map, kv_map = batch_maps(q.shape[:-2], k.shape[:-2])
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    kv_len = None if kv_lengths is None else batch_lengths("kv_lengths", kv_lengths, batch, m, "m")
    if return_weights:
        check_weights_budget(
            "linear_attention", batch + (n, m), dtype, get_options()["weights_max_bytes"],
            "use return_weights=False (the output needs only O(r * dv) extra memory) or "
            "shorter inputs",
        )
    pq = _flat(_features(phi, name, q, "q", dtype))  # (Zq, n, r)
    pk = _flat(_features(phi, name, k, "k", dtype))  # (Zk, m, r)
    if pq.shape[-1] != pk.shape[-1]:
        raise errors.shape_error(
            "feature_map", f"as many features for k as for q ({pq.shape[-1]})",
            f"{pk.shape[-1]} features for k", "map q and k rows to the same r",
        )
    vf = _flat(v)
    if kv_len is not None:
        # A padded key gets zero features: it adds nothing to any sum or weight. The
        # lengths vary over the broadcast batch, so every problem gets its own keys.
        valid = np.arange(m) < kv_len[:, None]  # (Z, m)
        pk = np.ascontiguousarray(pk[kv_map] * valid[:, :, None].astype(dtype))
        vf = np.ascontiguousarray(vf[kv_map])
        kv_map = np.arange(kv_map.shape[0], dtype=np.int64)
    if causal:
        from .kernels.cpu import variants as kernels

        out = np.empty((q_map.shape[0], n, dv), dtype=dtype)
        kernels.causal_linear_attention(pq, pk, vf, q_map, kv_map, float(eps), out)
    else:
        state = np.matmul(np.swapaxes(pk, 1, 2), vf)  # (Zk, r, dv)
        norm = pk.sum(axis=1)  # (Zk, r)
        fq = pq[q_map]
        num = np.matmul(fq, state[kv_map])  # (Z, n, dv)
        den = np.matmul(fq, norm[kv_map][:, :, None])[:, :, 0] + eps  # (Z, n)
        inv = np.where(den == 0, 0.0, 1.0 / np.where(den == 0, 1.0, den))
        out = (num * inv[:, :, None]).astype(dtype, copy=False)
    out = out.reshape(batch + (n, dv))
    if not return_weights:
        return out
    a = np.matmul(pq[q_map], np.swapaxes(pk, 1, 2)[kv_map])  # (Z, n, m)
    if causal:
        a *= np.tri(n, m, dtype=dtype)
    den = a.sum(axis=-1, keepdims=True) + eps
    a *= np.where(den == 0, 0.0, 1.0 / np.where(den == 0, 1.0, den)).astype(dtype)
    return out, a.reshape(batch + (n, m))
