"""Validate and normalise attention arguments into the kernels' flat form.

Every public attention function funnels through :func:`prepare`, so the rules
live in one place:

* ``q`` is ``(..., n, d)``, ``k`` is ``(..., m, d)``, ``v`` is ``(..., m, dv)``;
  ``k`` and ``v`` share their leading (batch) dims.
* Leading dims broadcast NumPy-style. When the last leading dim (heads)
  differs and ``k``'s divides ``q``'s, query heads are grouped onto key/value
  heads (grouped-query attention): query head ``h`` uses kv head
  ``h // (Hq // Hkv)``.
* ``q_lengths`` / ``kv_lengths`` are an int or an int array whose shape is a
  *prefix* of the broadcast batch shape (``(B,)`` for ``(B, H, n, d)``
  inputs): they are aligned on the left, not the right.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import errors
from ._backend import gpu_array_error, host_copy_fix, is_device_array
from .masks import Mask, causal as causal_mask, combine_all

_FLOATS = (np.float32, np.float64)


@dataclass
class Problem:
    """Flattened, validated attention problem (see attnkit.kernels.cpu.attention)."""

    q: np.ndarray  # (Zq, n, d), compute dtype, C-contiguous
    k: np.ndarray  # (Zk, m, d)
    v: np.ndarray | None  # (Zk, m, dv) or None
    q_map: np.ndarray  # (Z,) int64
    kv_map: np.ndarray  # (Z,) int64
    q_len: np.ndarray  # (Z,) int64
    kv_len: np.ndarray  # (Z,) int64
    batch_shape: tuple
    n: int
    m: int
    scale: float
    ops: np.ndarray
    aux: np.ndarray
    n_heads: int
    score_mod: object  # numba dispatcher or None
    out_dtype: np.dtype
    # target "cuda": q/k/v are (B, H, rows, cols) in their own dtypes (host
    # arrays, or device views when ``device``); see attnkit.kernels.cuda.api.
    target: str = "cpu"
    device: bool = False

    @property
    def n_problems(self) -> int:
        return int(self.q_map.shape[0])


def host_float_array(name: str, x) -> np.ndarray:
    """``x`` as a host float array (GPU arrays are refused: this path runs on the CPU)."""
    if is_device_array(x):
        raise gpu_array_error(name, x, "this function computes on the CPU", host_copy_fix(name))
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind != "f" and arr.dtype.name != "bfloat16":
        raise errors.dtype_error(name, arr.dtype)
    return arr


_DEVICE_FLOATS = ("float16", "float32", "float64")


def _as_cuda_input(name: str, x):
    """Host float array, or a zero-copy Numba view of a GPU float array."""
    if not is_device_array(x):
        return host_float_array(name, x)
    from .kernels.cuda import runtime

    try:
        dev = runtime.as_device(x)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise TypeError(
            f"{name}: expected a float16, float32 or float64 GPU array, got "
            f"{type(x).__name__} that Numba cannot view ({exc}). Fix: cast it on the device, "
            f"e.g. {name}.float()."
        ) from None
    if dev.dtype.name not in _DEVICE_FLOATS:
        raise errors.dtype_error(
            name, dev.dtype, f"cast it on the device, e.g. {name}.float() or {name}.astype('float32')"
        )
    return dev


def _compute_dtype(*arrays: np.ndarray) -> tuple[np.dtype, np.dtype]:
    """(dtype the kernel computes in, dtype of the result)."""
    return _compute_dtype_of(tuple(a.dtype for a in arrays))


@functools.lru_cache(maxsize=256)
def _compute_dtype_of(dtypes: tuple) -> tuple[np.dtype, np.dtype]:
    # Cached: ``dtype.name`` is a slow property, and every call asks the same few questions.
    names = {dt.name for dt in dtypes}
    if "float64" in names:
        return np.dtype(np.float64), np.dtype(np.float64)
    if len(names) == 1 and names <= {"float16", "bfloat16"}:
        return np.dtype(np.float32), dtypes[0]  # half in, half out
    return np.dtype(np.float32), np.dtype(np.float32)


def _check_finite(name: str, arr) -> None:
    if is_device_array(arr):
        from .kernels.cuda import runtime

        bad = runtime.count_nonfinite(runtime.view4d(name, arr))
    elif np.isfinite(arr).all():
        return
    else:
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(
            f"{name}: expected finite values, got {bad} NaN/inf entries. Fix: clean the "
            "input, use q_lengths/kv_lengths or a mask for padding, or pass "
            "check_finite=False if you accept NaN in the output."
        )


@functools.lru_cache(maxsize=1)
def _nonfinite_counter():
    from .kernels.cpu.attention import count_nonfinite

    return count_nonfinite


def _all_finite_quickly(arrays) -> bool:
    """True when ``arrays`` are all C-contiguous native float32/float64 host arrays and
    every entry is finite, found with one Numba call; False means "check one by one"
    (:func:`_check_finite` then finds the array to name, or passes other layouts)."""
    for arr in arrays:
        if type(arr) is not np.ndarray or arr.dtype.char not in "fd" or not arr.dtype.isnative \
                or not arr.flags.c_contiguous:
            return False
    flat = [arr.reshape(-1) for arr in arrays]  # views: no copies
    return _nonfinite_counter()(flat[0], flat[1], flat[-1]) == 0


def batch_maps(q_batch: tuple, kv_batch: tuple, q_name: str = "q", k_name: str = "k"):
    """Index maps from the broadcast batch shape to the flat q and kv problems.

    Returns ``(batch, q_map, kv_map)``; errors name ``q_name`` / ``k_name``.
    """
    if q_batch == kv_batch:
        # The common case, taken quickly: nothing to group or broadcast, and nothing that
        # the general path below could reject. Two fresh arrays, as below.
        size = math.prod(q_batch)
        return tuple(q_batch), np.arange(size, dtype=np.int64), np.arange(size, dtype=np.int64)
    kv_ids = np.arange(math.prod(kv_batch), dtype=np.int64).reshape(kv_batch)
    if (
        q_batch and kv_batch and q_batch[-1] != kv_batch[-1]
        and kv_batch[-1] != 1 and q_batch[-1] != 1
    ):
        hq, hkv = q_batch[-1], kv_batch[-1]
        if hq % hkv:
            raise errors.shape_error(
                k_name, f"a head count dividing {q_name}'s {hq} heads (grouped-query attention)",
                f"{hkv} heads in shape {kv_batch}",
                f"give {k_name} a number of heads (last leading dim) that divides "
                f"{q_name}'s, or the same number",
            )
        kv_ids = np.repeat(kv_ids, hq // hkv, axis=-1)
    q_ids = np.arange(math.prod(q_batch), dtype=np.int64).reshape(q_batch)
    try:
        batch = np.broadcast_shapes(q_ids.shape, kv_ids.shape)
    except ValueError:
        raise errors.shape_error(
            f"{q_name}, {k_name}", "leading (batch/head) dims that broadcast against each other",
            f"{q_name} batch dims {q_batch} and {k_name} batch dims {kv_batch}",
            "make the leading dims equal, or 1 where one side is shared",
        ) from None
    # Always fresh writable copies: Numba compiles a separate kernel for every
    # read-only/writable combination of its arguments (broadcast views are read-only).
    q_map = np.array(np.broadcast_to(q_ids, batch).ravel(), dtype=np.int64)
    kv_map = np.array(np.broadcast_to(kv_ids, batch).ravel(), dtype=np.int64)
    return tuple(batch), q_map, kv_map


def batch_lengths(name: str, lengths, batch: tuple, limit: int, axis: str) -> np.ndarray:
    """Lengths per problem (flattened batch), from an int or an array aligned on the left."""
    size = math.prod(batch)
    if lengths is None:
        full = np.empty(size, dtype=np.int64)
        full.fill(limit)
        return full
    arr = np.asarray(lengths)
    if not (np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise TypeError(
            f"{name}: expected integer lengths, got dtype {arr.dtype}. "
            f"Fix: pass e.g. np.asarray({name}, dtype=np.int64)."
        )
    prefix_ok = arr.ndim <= len(batch) and all(
        size in (1, batch[i]) for i, size in enumerate(arr.shape)
    )
    if not prefix_ok:
        raise errors.shape_error(
            name, f"a prefix of the batch shape {batch} (left-aligned, e.g. (B,) for "
            "(B, H, n, d) inputs) or a scalar", arr.shape,
            "pass one length per sequence in the leading batch dim",
        )
    if arr.size and (arr.min() < 0 or arr.max() > limit):
        raise errors.value_error(
            name, f"lengths in [0, {limit}] ({axis} = {limit})",
            f"values from {arr.min()} to {arr.max()}", f"clip them to the {axis} axis",
        )
    arr = arr.reshape(arr.shape + (1,) * (len(batch) - arr.ndim))
    return np.array(np.broadcast_to(arr, batch).ravel(), dtype=np.int64)


def check_weights_budget(fn: str, shape: tuple, dtype, max_bytes: int, fix: str) -> None:
    """Refuse to allocate attention weights of ``shape`` past ``max_bytes``."""
    need = math.prod(shape) * np.dtype(dtype).itemsize
    if need > max_bytes:
        raise errors.WeightsTooLargeError(
            f"{fn}: the attention weights need {need / 2**30:.2f} GiB ({shape} x "
            f"{np.dtype(dtype)}), over the budget of {max_bytes / 2**30:.2f} GiB. Fix: {fix}, "
            "or raise the budget with attnkit.set_options(weights_max_bytes=...)."
        )


def _jit_score_mod(score_mod, n_heads: int):
    if score_mod is None:
        return None
    heads = getattr(score_mod, "attnkit_heads", None)
    if heads is not None and heads not in (1, n_heads):
        raise errors.value_error(
            "score_mod", f"parameters for {n_heads} heads (the last batch dim)",
            f"parameters for {heads} heads", "pass one slope / table row per head",
        )
    if not callable(score_mod):
        raise TypeError(
            f"score_mod: expected a function f(score, b, h, q_idx, kv_idx) -> score, got "
            f"{type(score_mod).__name__}. Fix: pass a (numba-jittable) function."
        )
    from numba.core.registry import CPUDispatcher

    if isinstance(score_mod, CPUDispatcher):
        return score_mod
    return _njit_once(score_mod)


@functools.lru_cache(maxsize=64)
def _njit_once(fn):
    """Jit a plain Python score_mod once, so its compiled kernels are reused."""
    from numba import njit

    return njit(fn)


def prepare(
    q, k, v=None, *, scale=None, causal=False, mask=None, score_mod=None,
    q_lengths=None, kv_lengths=None, check_finite=True, target="cpu",
) -> Problem:
    """Validate attention arguments and return the kernels' :class:`Problem`.

    ``target="cpu"`` flattens q/k/v to ``(problems, rows, cols)`` host arrays
    in the compute dtype; ``target="cuda"`` accepts GPU arrays too and keeps
    every array in its own dtype as a ``(B, H, rows, cols)`` view (host
    bfloat16 becomes float32, which the GPU kernels read).

    The common CPU call (plain arrays, default scale, no mask but ``causal``,
    no padding, no score_mod) goes through :func:`_prepare_plain` first: the
    same checks, fewer steps. It builds the same :class:`Problem` or, when
    anything is out of the ordinary, hands the arguments to the general path
    below, which raises the errors.
    """
    if (target == "cpu" and scale is None and mask is None and score_mod is None
            and q_lengths is None and kv_lengths is None):
        plain = _prepare_plain(q, k, v, causal, check_finite)
        if plain is not None:
            return plain
    as_input = _as_cuda_input if target == "cuda" else host_float_array
    q = as_input("q", q)
    k = as_input("k", k)
    arrays = [q, k]
    if v is not None:
        v = as_input("v", v)
        arrays.append(v)
    for name, arr in zip("qkv", arrays):
        if arr.ndim < 2:
            raise errors.shape_error(
                name, "(..., sequence, features) with at least 2 dims", arr.shape,
                f"add the sequence axis, e.g. {name}[None, :]",
            )
    n, d = q.shape[-2:]
    m = k.shape[-2]
    if d == 0:
        raise errors.shape_error("q", "a feature dim d >= 1", q.shape, "pass non-empty vectors")
    if k.shape[-1] != d:
        raise errors.shape_error(
            "k", f"last dim d = {d} to match q {q.shape}", k.shape,
            "project q and k to the same head dimension",
        )
    if v is not None:
        if v.shape[-2] != m:
            raise errors.shape_error(
                "v", f"{m} positions to match k {k.shape}", v.shape,
                "pass one value vector per key",
            )
        if v.shape[:-2] != k.shape[:-2]:
            raise errors.shape_error(
                "v", f"the same leading dims as k, {k.shape[:-2]}", v.shape,
                "give k and v the same batch and head dims",
            )
    if check_finite and not _all_finite_quickly(arrays):
        for name, arr in zip("qkv", arrays):
            _check_finite(name, arr)
    if mask is not None and not isinstance(mask, Mask):
        raise TypeError(
            f"mask: expected an attnkit mask, got {type(mask).__name__}. Fix: build one "
            "with attnkit.masks (causal(), local(w), strided(s), global_tokens(i), "
            "block_sparse(layout, b)); use q_lengths/kv_lengths for padding."
        )
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif (
        isinstance(scale, (bool, np.bool_))
        or not isinstance(scale, (int, float, np.integer, np.floating))
        or not np.isfinite(scale)
    ):
        raise errors.value_error("scale", "a finite float", repr(scale), "pass e.g. 1/sqrt(d)")
    if target == "cuda":
        _check_cuda_head_dims(d, None if v is None else v.shape[-1])
    compute, out_dtype = _compute_dtype(*arrays)
    batch, q_map, kv_map = batch_maps(q.shape[:-2], k.shape[:-2])
    q_len = batch_lengths("q_lengths", q_lengths, batch, n, "n")
    kv_len = batch_lengths("kv_lengths", kv_lengths, batch, m, "m")
    if mask is None and not causal:  # the empty program: every pair allowed
        ops, aux = np.zeros((0, 5), np.int64), np.zeros(1, np.int64)
    else:
        ops, aux = combine_all([mask, causal_mask() if causal else None]).program(n, m)

    if target == "cuda":
        reshape = _four_d
        device = any(is_device_array(a) for a in arrays)
    else:  # host_float_array let no GPU array through
        reshape = functools.partial(_flat, dtype=compute)
        device = False
    return Problem(
        q=reshape(q, n, d, name="q"),
        k=reshape(k, m, d, name="k"),
        v=None if v is None else reshape(v, m, v.shape[-1], name="v"),
        q_map=q_map, kv_map=kv_map, q_len=q_len, kv_len=kv_len,
        batch_shape=tuple(batch), n=n, m=m, scale=float(scale), ops=ops, aux=aux,
        n_heads=int(batch[-1]) if batch else 1,
        score_mod=_jit_score_mod(score_mod, int(batch[-1]) if batch else 1),
        out_dtype=out_dtype, target=target, device=device,
    )


def _prepare_plain(q, k, v, causal, check_finite) -> Problem | None:
    """:func:`prepare`'s answer for plain inputs, or None to take the general path.

    Plain: NumPy arrays of one native float32/float64 dtype, C-contiguous,
    with equal batch dims; everything :func:`prepare` checks holds (shapes,
    finiteness); default scale, no mask other than ``causal``, no lengths,
    no score_mod (the caller checks those). Then the general path would only
    reshape views and build the default maps, lengths and mask program; this
    builds the same without its conversions and broadcasting. Never raises:
    whatever is not plain, or fails a check, returns None, and the general
    path raises its usual error.
    """
    if type(q) is not np.ndarray or type(k) is not np.ndarray:
        return None
    dtype = q.dtype
    if k.dtype != dtype or dtype.char not in "fd" or not dtype.isnative:
        return None
    if q.ndim < 2 or k.ndim < 2 or not (q.flags.c_contiguous and k.flags.c_contiguous):
        return None
    batch = q.shape[:-2]
    n, d = q.shape[-2:]
    m = k.shape[-2]
    if d == 0 or k.shape[-1] != d or k.shape[:-2] != batch:
        return None
    if v is not None and (type(v) is not np.ndarray or v.dtype != dtype or v.ndim < 2
                          or not v.flags.c_contiguous or v.shape[-2] != m
                          or v.shape[:-2] != batch):
        return None
    if check_finite and not _all_finite_quickly((q, k) if v is None else (q, k, v)):
        return None
    size = math.prod(batch)
    q_len = np.empty(size, dtype=np.int64)
    q_len.fill(n)
    kv_len = np.empty(size, dtype=np.int64)
    kv_len.fill(m)
    if causal:
        ops, aux = causal_mask().program(n, m)
    else:
        ops, aux = np.zeros((0, 5), np.int64), np.zeros(1, np.int64)
    return Problem(
        q=q.reshape((size, n, d)), k=k.reshape((size, m, d)),
        v=None if v is None else v.reshape((size, m, v.shape[-1])),
        q_map=np.arange(size, dtype=np.int64), kv_map=np.arange(size, dtype=np.int64),
        q_len=q_len, kv_len=kv_len, batch_shape=batch, n=n, m=m, scale=1.0 / math.sqrt(d),
        ops=ops, aux=aux, n_heads=batch[-1] if batch else 1, score_mod=None,
        out_dtype=dtype, target="cpu", device=False,
    )


def _flat(x, rows, cols, name, dtype):
    """(problems, rows, cols) C-contiguous in ``dtype`` (no copy when it already is)."""
    # An explicit problem count: reshape(-1, ...) is ambiguous for empty arrays.
    problems = math.prod(x.shape[:-2])
    return np.ascontiguousarray(x.reshape((problems, rows, cols)), dtype=dtype)


def _check_cuda_head_dims(d: int, dv) -> None:
    from .kernels.cuda.tiling import MAX_HEAD_DIM

    for name, size in (("d", d), ("dv", dv)):
        if size is not None and size > MAX_HEAD_DIM:
            raise errors.value_error(
                f"head dim {name}", f"at most {MAX_HEAD_DIM} for backend='cuda'", size,
                "use backend='cpu', or split the heads",
            )


def _four_d(x, rows, cols, name):
    """(B, H, rows, cols) view for the CUDA kernels: H is the last batch dim, B the rest."""
    if is_device_array(x):
        from .kernels.cuda import runtime

        return runtime.view4d(name, x)
    lead = x.shape[:-2]
    heads = lead[-1] if lead else 1
    outer = math.prod(lead[:-1]) if lead else 1
    dtype = np.float32 if x.dtype.name == "bfloat16" else x.dtype
    return np.ascontiguousarray(x, dtype=dtype).reshape((outer, heads, rows, cols))
