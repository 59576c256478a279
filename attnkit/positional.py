"""Positional information: score modifiers and encodings.

Score modifiers plug into ``score_mod=`` of the attention functions; each is a
Numba function ``f(score, b, h, q_idx, kv_idx) -> score``. Factories are
cached on their parameter values, so calling ``alibi(slopes)`` twice with the
same slopes reuses the compiled kernels.

Encodings (:func:`sinusoidal`, :func:`rope`) are plain NumPy transforms of the
inputs.
"""

from __future__ import annotations

import functools

import numpy as np

from .errors import value_error

__all__ = ["alibi", "alibi_slopes", "soft_cap", "relative_bias", "sinusoidal", "rope", "learned"]


def _frozen(arr: np.ndarray):
    return (arr.tobytes(), arr.shape, arr.dtype.str)


def _thaw(key) -> np.ndarray:
    raw, shape, dtype = key
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def alibi_slopes(n_heads: int) -> np.ndarray:
    """The geometric ALiBi slopes of Press et al. (2022) for ``n_heads`` heads.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.positional.alibi_slopes(4).tolist()
    [0.25, 0.0625, 0.015625, 0.00390625]
    """
    if not isinstance(n_heads, (int, np.integer)) or n_heads < 1:
        raise value_error("n_heads", "a positive int", repr(n_heads), "pass n_heads >= 1")
    closest = 2 ** int(np.floor(np.log2(n_heads)))
    base = 2.0 ** (-8.0 / closest)
    slopes = base ** np.arange(1, closest + 1)
    if closest < n_heads:
        extra = (2.0 ** (-4.0 / closest)) ** np.arange(1, 2 * (n_heads - closest) + 1, 2)
        slopes = np.concatenate([slopes, extra])
    return slopes.astype(np.float64)


def alibi(slopes):
    """ALiBi score_mod: ``score - slopes[h] * |q_idx - kv_idx|``.

    Parameters
    ----------
    slopes : array_like, shape (heads,)
        One slope per head (see :func:`alibi_slopes`); one slope is shared.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> q = np.random.default_rng(0).standard_normal((2, 6, 8))
    >>> mod = ak.positional.alibi(ak.positional.alibi_slopes(2))
    >>> ak.attention(q, q, q, causal=True, score_mod=mod).shape
    (2, 6, 8)
    """
    arr = np.asarray(slopes, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise value_error("slopes", "a non-empty array of finite floats", arr, "see alibi_slopes")
    return _alibi(_frozen(arr))


@functools.lru_cache(maxsize=64)
def _alibi(key):
    from numba import njit

    table = _thaw(key)
    shared = table.size == 1

    @njit(nogil=True)
    def alibi_mod(score, b, h, q_idx, kv_idx):
        slope = table[0] if shared else table[h]
        return score - slope * abs(q_idx - kv_idx)

    alibi_mod.attnkit_heads = table.size
    return alibi_mod


def soft_cap(cap: float):
    """Soft-capping score_mod (Gemma 2, Grok): ``cap * tanh(score / cap)``.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> q = 30 * np.random.default_rng(0).standard_normal((5, 4))
    >>> w = ak.attention_weights(q, q, score_mod=ak.positional.soft_cap(5.0))
    >>> bool(np.allclose(w.sum(-1), 1))
    True
    """
    if isinstance(cap, (bool, np.bool_)) or not np.isscalar(cap) or not np.isfinite(cap) or cap <= 0:
        raise value_error("cap", "a positive finite float", repr(cap), "pass e.g. soft_cap(50.0)")
    return _soft_cap(float(cap))


@functools.lru_cache(maxsize=64)
def _soft_cap(cap):
    from numba import njit

    @njit(nogil=True)
    def soft_cap_mod(score, b, h, q_idx, kv_idx):
        return cap * np.tanh(score / cap)

    return soft_cap_mod


def relative_bias(table):
    """Learned relative-position bias (T5 style, unbucketed) as a score_mod.

    ``score + table[h, clip(kv_idx - q_idx, -D, D) + D]`` for a table of shape
    ``(heads, 2 * D + 1)``; offsets beyond ``D`` share the edge entries. A
    table with one row is shared by all heads.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> table = np.zeros((1, 5)); table[0, 2] = 10.0   # favour kv_idx == q_idx
    >>> q = np.random.default_rng(0).standard_normal((6, 4))
    >>> w = ak.attention_weights(q, q, score_mod=ak.positional.relative_bias(table))
    >>> bool((w.argmax(-1) == np.arange(6)).all())
    True
    """
    arr = np.asarray(table, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] % 2 != 1 or not np.isfinite(arr).all():
        raise value_error(
            "table", "finite floats of shape (heads, 2*D + 1)", f"shape {arr.shape}",
            "use an odd number of offsets centred on 0",
        )
    return _relative_bias(_frozen(np.ascontiguousarray(arr)))


@functools.lru_cache(maxsize=64)
def _relative_bias(key):
    from numba import njit

    table = _thaw(key)
    rows = table.shape[0]
    reach = (table.shape[1] - 1) // 2

    @njit(nogil=True)
    def relative_bias_mod(score, b, h, q_idx, kv_idx):
        offset = min(max(kv_idx - q_idx, -reach), reach) + reach
        return score + table[0 if rows == 1 else h, offset]

    relative_bias_mod.attnkit_heads = rows
    return relative_bias_mod


def sinusoidal(n: int, d: int, base: float = 10000.0) -> np.ndarray:
    """Sinusoidal position encodings of Vaswani et al. (2017), shape (n, d).

    Even columns hold ``sin(pos / base**(2i/d))``, odd ones the cosine.

    Examples
    --------
    >>> import attnkit as ak
    >>> pe = ak.positional.sinusoidal(4, 6)
    >>> pe.shape, float(pe[0, 1])
    ((4, 6), 1.0)
    """
    for name, value in (("n", n), ("d", d)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise value_error(name, "a positive int", repr(value), f"pass {name} >= 1")
    pos = np.arange(n)[:, None]
    freq = base ** (-(np.arange(0, d, 2) / d))
    pe = np.zeros((n, d))
    pe[:, 0::2] = np.sin(pos * freq)
    pe[:, 1::2] = np.cos(pos * freq[: d // 2])
    return pe


def rope(x, positions=None, base: float = 10000.0) -> np.ndarray:
    """Rotary position embedding (Su et al.), rotating feature pairs of ``x``.

    Pairs ``(x[..., i], x[..., i + d/2])`` rotate by ``pos * base**(-2i/d)``
    (the "half" layout used by Llama and GPT-NeoX).

    Parameters
    ----------
    x : array_like, shape (..., n, d)
        Queries or keys; ``d`` must be even.
    positions : array_like of int, shape (n,), optional
        Position of each row; default ``arange(n)``.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> x = np.random.default_rng(0).standard_normal((5, 8))
    >>> y = ak.positional.rope(x)
    >>> bool(np.allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1)))
    True
    """
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.shape[-1] % 2:
        raise value_error("x", "shape (..., n, d) with even d", arr.shape, "pad d to an even size")
    n, d = arr.shape[-2:]
    pos = np.arange(n) if positions is None else np.asarray(positions)
    if pos.shape != (n,):
        raise value_error("positions", f"shape ({n},)", pos.shape, "pass one position per row")
    half = d // 2
    angle = pos[:, None] * base ** (-np.arange(half) / half)
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = arr[..., :half], arr[..., half:]
    out = np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(arr.dtype if arr.dtype.kind == "f" else np.float64, copy=False)


def learned(table, positions=None) -> np.ndarray:
    """Look up learned absolute position embeddings (BERT/GPT-2 style), shape (n, d).

    Parameters
    ----------
    table : array_like, shape (max_positions, d)
        The learned embedding table.
    positions : array_like of int, shape (n,), optional
        Positions to look up; default ``arange(max_positions)``.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> table = np.arange(12.0).reshape(4, 3)
    >>> ak.positional.learned(table, [2, 0]).tolist()
    [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    """
    arr = np.asarray(table)
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise value_error("table", "a 2-d float array (max_positions, d)",
                          f"{arr.dtype} array of shape {arr.shape}", "pass the embedding matrix")
    if positions is None:
        return arr.copy()
    pos = np.asarray(positions)
    if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
        raise value_error("positions", "a 1-d array of int positions", f"{pos.dtype} array of "
                          f"shape {pos.shape}", "pass e.g. np.arange(n)")
    if pos.size and (pos.min() < 0 or pos.max() >= arr.shape[0]):
        raise value_error(
            "positions", f"values in [0, {arr.shape[0]}) (rows of the table)",
            f"values from {pos.min()} to {pos.max()}",
            "truncate the sequence or use a longer table",
        )
    return arr[pos]
