"""Public attention API: exact softmax attention, its weights and its statistics.

All three functions share one signature for the problem they compute::

    fn(q, k, [v,] *, scale=None, causal=False, mask=None, score_mod=None,
       q_lengths=None, kv_lengths=None, backend="auto", check_finite=True)

and the same rules for shapes, broadcasting, grouped-query heads, padding and
masks (see :mod:`attnkit._prepare` and :mod:`attnkit.masks`). They validate,
pick a backend and call a kernel; the kernels hold the numerics.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from . import errors
from ._prepare import Problem, check_weights_budget, gpu_array_error, is_device_array, prepare
from .options import get_options

__all__ = ["attention", "attention_weights", "attention_stats", "STAT_NAMES"]

#: Statistics attention_stats can compute (``"max"`` also returns ``"argmax"``).
STAT_NAMES = ("entropy", "received", "max", "distance")

# Tile sizes of the CPU kernels (queries x keys); tuned with interleaved A/B runs
# on the 2-core reference machine. Each query tile streams all of its head's keys
# and values, so taller tiles cut that traffic: 256 rows ran 4% faster than 128 at
# n = 2048-8192 and 7% at n = 16384 (128 had been 11% faster than 64 there).
# Taller still (512) lost on causal masks, whose diagonal tiles are computed whole.
CPU_BLOCK_Q = 256
CPU_BLOCK_K = 256
#: Fewest query tiles per thread before _block_q halves the tile height.
_TILES_PER_THREAD = 4

@functools.lru_cache(maxsize=1)
def _cuda_status() -> tuple[bool, bool, str]:
    """(kernels can run, a real GPU is present, why not), computed once per process.

    The simulator (``NUMBA_ENABLE_CUDASIM=1``) can run kernels but is never a
    real GPU. Numba's CUDA package is imported only when a driver may exist.
    """
    import importlib.util
    import sys

    if importlib.util.find_spec("numba_cuda") is None:
        return False, False, "numba-cuda is not installed"
    if sys.platform.startswith("linux") and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0") \
            and not any(os.path.exists(p) for p in
                        ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/proc/driver/nvidia")):
        return False, False, "no NVIDIA driver was found (no /dev/nvidia* device)"
    try:
        from .kernels.cuda import runtime
    except Exception as exc:  # a broken CUDA install must not break the CPU backend
        return False, False, f"numba.cuda failed to import ({exc})"
    ok, reason = runtime.usable()
    return ok, ok and not runtime.SIMULATOR, reason


def _choose_backend(backend: str, **arrays) -> str:
    """"cpu" or "cuda" for ``backend``; GPU ``arrays`` (by argument name) force "cuda".

    ``ATTNKIT_AUTO_BACKEND=cpu`` in the environment keeps "auto" on the CPU for
    host arrays even where a GPU is present (e.g. CPU-focused test runs).
    """
    errors.backend_name(backend)
    on_gpu = [(name, x) for name, x in arrays.items() if is_device_array(x)]
    if backend == "cpu":
        if on_gpu:
            name, x = on_gpu[0]
            raise gpu_array_error(name, x, "backend='cpu' computes on the host",
                                  f"use backend='cuda' (or 'auto'), or copy {name} to the host")
        return "cpu"
    if backend == "cuda" or on_gpu:
        usable, _, reason = _cuda_status()
        if usable:
            return "cuda"
        if backend == "cuda":
            raise errors.BackendUnavailableError(
                f"backend='cuda': the CUDA kernels cannot run here: {reason}. Fix: use "
                "backend='cpu' (or 'auto'), or run on a machine with an NVIDIA GPU and driver, "
                "with the GPU extra installed (pip install 'attnkit[gpu]')."
            )
        name, x = on_gpu[0]
        raise gpu_array_error(
            name, x, f"the CUDA backend cannot run here ({reason})",
            f"copy it to the host first, e.g. {name}.copy_to_host(), {name}.cpu().numpy() or "
            f"cupy.asnumpy({name}), and use backend='cpu'",
        )
    preferred = os.environ.get("ATTNKIT_AUTO_BACKEND", "").strip().lower()
    if preferred == "cpu":
        return "cpu"
    return "cuda" if _cuda_status()[1] else "cpu"


class _CpuKernels:
    """The CPU kernels for one problem, each call run with single-threaded BLAS."""

    def __init__(self, problem: Problem) -> None:
        from .kernels.cpu import attention as cpu
        from .kernels.cpu.threads import single_threaded_blas

        self._module = cpu if problem.score_mod is None else cpu.with_score_mod(problem.score_mod)
        self._limit = single_threaded_blas

    def __getattr__(self, name):
        kernel = getattr(self._module, name)

        def call(*args):
            with self._limit():
                return kernel(*args)

        return call


def _block_q(problem: Problem) -> int:
    """Query rows per tile for the kernels parallel over query tiles.

    :data:`CPU_BLOCK_Q`, halved (down to 64) while the problem has fewer than
    ``_TILES_PER_THREAD`` tiles per Numba thread, so that small problems
    still keep every core busy.
    """
    import numba

    wanted = _TILES_PER_THREAD * numba.get_num_threads()
    block_q = CPU_BLOCK_Q
    while block_q > 64 and problem.n_problems * -(-problem.n // block_q) < wanted:
        block_q //= 2
    return block_q


def _lse(problem: Problem, kern) -> np.ndarray:
    """Log-sum-exp of every query row, (Z, n), in the compute dtype."""
    p = problem
    lse = np.empty((p.n_problems, p.n), dtype=p.q.dtype)
    dummy = np.zeros((1, 1, 1), dtype=p.q.dtype)
    kern.flash_forward(
        p.q, p.k, dummy, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale, p.ops, p.aux,
        p.n_heads, False, _block_q(p), CPU_BLOCK_K, dummy, lse,
    )
    return lse


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
    target = _choose_backend(backend, q=q, k=k, v=v)
    if v is None:
        raise TypeError("v: expected an array of values (..., m, dv), got None. Fix: pass v, or "
                        "use ak.attention_weights / ak.attention_stats for weights without values.")
    p = prepare(
        q, k, v, scale=scale, causal=causal, mask=mask, score_mod=score_mod,
        q_lengths=q_lengths, kv_lengths=kv_lengths, check_finite=check_finite, target=target,
    )
    if target == "cuda":
        from .kernels.cuda import api

        return api.attention(p, return_lse)
    dv = p.v.shape[2]
    out = np.empty((p.n_problems, p.n, dv), dtype=p.q.dtype)
    lse = np.empty((p.n_problems, p.n), dtype=p.q.dtype)
    _CpuKernels(p).flash_forward(
        p.q, p.k, p.v, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale, p.ops, p.aux,
        p.n_heads, True, _block_q(p), CPU_BLOCK_K, out, lse,
    )
    out = out.reshape(p.batch_shape + (p.n, dv)).astype(p.out_dtype, copy=False)
    if return_lse:
        return out, lse.reshape(p.batch_shape + (p.n,))
    return out


def attention_weights(
    q, k, *, scale=None, causal=False, mask=None, score_mod=None,
    q_lengths=None, kv_lengths=None, backend="auto", check_finite=True, max_bytes=None,
):
    """Exact attention probabilities ``softmax(scale * q @ k.T)``, shape (..., n, m).

    Computed in two passes (log-sum-exp, then ``exp(score - lse)`` tile by
    tile), so every row sums to 1 up to rounding. Masked, padded and skipped
    entries are exactly 0; fully masked rows are all 0.

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
    target = _choose_backend(backend, q=q, k=k)
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
    if target == "cuda":
        from .kernels.cuda import api

        return api.weights(p)
    kern = _CpuKernels(p)
    lse = _lse(p, kern)
    out = np.zeros((p.n_problems, p.n, p.m), dtype=p.q.dtype)
    kern.exact_weights(
        p.q, p.k, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale, p.ops, p.aux,
        p.n_heads, lse, _block_q(p), CPU_BLOCK_K, out,
    )
    return out.reshape(p.batch_shape + (p.n, p.m))


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

    A first pass computes each query's log-sum-exp; later passes recompute the
    exact probabilities tile by tile and reduce them, so memory stays
    O(n + m) per head whatever the length.

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
    target = _choose_backend(backend, q=q, k=k)
    stats, topk = _check_stats(stats, topk)
    p = prepare(
        q, k, scale=scale, causal=causal, mask=mask, score_mod=score_mod,
        q_lengths=q_lengths, kv_lengths=kv_lengths, check_finite=check_finite, target=target,
    )
    if target == "cuda":
        from .kernels.cuda import api

        return api.stats(p, stats, topk)
    kern = _CpuKernels(p)
    lse = _lse(p, kern).astype(np.float64)
    z, n, m = p.n_problems, p.n, p.m
    common = (p.q, p.k, p.q_map, p.kv_map, p.q_len, p.kv_len, p.scale, p.ops, p.aux,
              p.n_heads)
    result: dict[str, np.ndarray] = {}
    per_query = {"entropy", "max", "distance"} & set(stats)
    if per_query or topk:
        entropy, maxprob, distance = (np.empty((z, n)) for _ in range(3))
        argmax = np.empty((z, n), dtype=np.int64)
        top_i = np.empty((z, n, topk), dtype=np.int64)
        top_v = np.empty((z, n, topk))
        kern.query_stats(*common, lse, _block_q(p), CPU_BLOCK_K,
                         entropy, maxprob, argmax, distance, top_i, top_v)
        per_query_out = {"entropy": entropy, "max": maxprob, "argmax": argmax,
                         "distance": distance}
        for name in stats:
            if name in per_query:
                result[name] = per_query_out[name]
        if "max" in stats:
            result["argmax"] = argmax
        if topk:
            result["topk_index"], result["topk_value"] = top_i, top_v
    if "received" in stats:
        received = np.empty((z, m))
        kern.key_received(*common, lse, CPU_BLOCK_Q, CPU_BLOCK_K, received)
        result["received"] = received
    batch = p.batch_shape
    return {name: arr.reshape(batch + arr.shape[1:]) for name, arr in result.items()}
