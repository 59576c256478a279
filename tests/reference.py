"""Float64 NumPy references the kernels are checked against.

Deliberately naive: dense scores, dense masks (``Mask.dense``), explicit
loops for score_mod. Broadcasting and grouped-query heads are expanded with
plain NumPy so the reference shares no index logic with attnkit._prepare.
"""

from __future__ import annotations

import numpy as np


def expand_heads(q, k, v=None):
    """Repeat k/v heads for grouped-query attention and broadcast leading dims."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    v = None if v is None else np.asarray(v, dtype=np.float64)
    if q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3] and 1 not in (q.shape[-3], k.shape[-3]):
        g = q.shape[-3] // k.shape[-3]
        k = np.repeat(k, g, axis=-3)
        v = None if v is None else np.repeat(v, g, axis=-3)
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    q = np.broadcast_to(q, batch + q.shape[-2:])
    k = np.broadcast_to(k, batch + k.shape[-2:])
    v = None if v is None else np.broadcast_to(v, batch + v.shape[-2:])
    return q, k, v, batch


def allowed(batch, n, m, *, causal=False, mask=None, q_lengths=None, kv_lengths=None):
    """Boolean (batch..., n, m) of the pairs that may attend."""
    ok = np.ones(batch + (n, m), dtype=bool)
    if mask is not None:
        ok &= mask.dense(n, m)
    if causal:
        ok &= np.tril(np.ones((n, m), dtype=bool))
    for lengths, axis in ((q_lengths, -2), (kv_lengths, -1)):
        if lengths is None:
            continue
        lens = np.asarray(lengths)
        lens = lens.reshape(lens.shape + (1,) * (len(batch) - lens.ndim))
        lens = np.broadcast_to(lens, batch)
        idx = np.arange(n if axis == -2 else m)
        valid = idx < lens[..., None]
        ok &= valid[..., :, None] if axis == -2 else valid[..., None, :]
    return ok


def scores(q, k, *, scale=None, score_mod=None, bias=None):
    """Scaled scores (batch..., n, m); ``bias`` (broadcasting) is added after scaling."""
    q, k, _, batch = expand_heads(q, k)
    d = q.shape[-1]
    s = (q @ np.swapaxes(k, -1, -2)) * (1 / np.sqrt(d) if scale is None else scale)
    if bias is not None:
        s = s + np.asarray(bias, dtype=np.float64)
    if score_mod is not None:
        fn = getattr(score_mod, "py_func", score_mod)
        flat = s.reshape(-1, *s.shape[-2:]).copy()
        heads = batch[-1] if batch else 1
        for z in range(flat.shape[0]):
            for i in range(flat.shape[1]):
                for j in range(flat.shape[2]):
                    flat[z, i, j] = fn(flat[z, i, j], z // heads, z % heads, i, j)
        s = flat.reshape(s.shape)
    return s, batch


def weights(q, k, *, scale=None, causal=False, mask=None, score_mod=None,
            q_lengths=None, kv_lengths=None, bias=None):
    s, batch = scores(q, k, scale=scale, score_mod=score_mod, bias=bias)
    n, m = s.shape[-2:]
    ok = allowed(batch, n, m, causal=causal, mask=mask, q_lengths=q_lengths, kv_lengths=kv_lengths)
    s = np.where(ok, s, -np.inf)
    row_max = s.max(axis=-1, keepdims=True, initial=-np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(ok, np.exp(s - row_max), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        lse = np.where(total[..., 0] > 0, np.log(total[..., 0]) + row_max[..., 0], -np.inf)
        p = np.where(total > 0, e / np.where(total > 0, total, 1), 0.0)
    return p, lse


def attention(q, k, v, **kw):
    p, lse = weights(q, k, **kw)
    _, _, v, _ = expand_heads(q, k, v)
    return p @ v, lse


def stats(p, topk=0):
    """The attention_stats dict computed from dense probabilities."""
    n, m = p.shape[-2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
    dist = np.abs(np.arange(n)[:, None] - np.arange(m)[None, :])
    out = {
        "entropy": -plogp.sum(-1),
        "received": p.sum(-2),
        "max": p.max(-1) if m else np.zeros(p.shape[:-1]),
        "argmax": np.where(p.max(-1) > 0, p.argmax(-1), -1) if m else np.full(p.shape[:-1], -1),
        "distance": (p * dist).sum(-1),
    }
    if topk:
        order = np.argsort(-p, axis=-1, kind="stable")[..., :topk]
        vals = np.take_along_axis(p, order, axis=-1)
        if topk > m:  # fewer keys than asked for: pad with index -1, value 0
            pad = [(0, 0)] * (p.ndim - 1) + [(0, topk - m)]
            order = np.pad(order, pad)
            vals = np.pad(vals, pad)
        out["topk_index"] = np.where(vals > 0, order, -1)
        out["topk_value"] = vals
    return out
