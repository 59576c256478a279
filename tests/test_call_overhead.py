"""The shortcuts that make small calls cheap must not change any result or error.

* :func:`attnkit._prepare._prepare_plain` (plain inputs skip the general
  validation path) builds the same Problem, and bad inputs still get the
  general path's errors.
* The serial copies of the CPU kernels (:func:`attnkit.kernels.cpu.attention.serial`,
  used when a call has one task) give bit for bit the results of the
  parallel kernels, for any problem.
* The BLAS thread limit restores what it changed; float32 calls skip it.
* The one-call finiteness test counts like NumPy.

Timings live in paper/benchmarks/call_overhead.py, never here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import attnkit as ak
from attnkit import _prepare
from attnkit.kernels.cpu import api
from attnkit.kernels.cpu import attention as kernels
from attnkit.kernels.cpu.threads import single_threaded_blas

F16, F32, F64 = np.float16, np.float32, np.float64


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture
def general_only(monkeypatch):
    """Send every call through prepare's general path."""
    monkeypatch.setattr(_prepare, "_prepare_plain", lambda *args: None)


def _same_problem(a, b):
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), field.name
            assert x.dtype == y.dtype and x.shape == y.shape, field.name
            assert x.tobytes() == y.tobytes(), field.name
            assert x.flags.writeable == y.flags.writeable, field.name
        else:
            assert type(x) is type(y) and x == y, (field.name, x, y)


# --------------------------------------------------------------- prepare_plain
PLAIN_SHAPES = [
    ((), 1, 1, 4, 4), ((), 7, 9, 8, 5), ((3,), 16, 16, 64, 64), ((2, 4), 33, 70, 16, 24),
    ((1, 1), 1, 300, 64, 64), ((2, 0), 5, 6, 8, 8), ((2, 3), 0, 4, 8, 8), ((1, 2), 5, 0, 8, 8),
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch, n, m, d, dv", PLAIN_SHAPES)
def test_plain_path_builds_the_general_problem(rng, dtype, batch, n, m, d, dv):
    q, k, v = randn(rng, batch + (n, d), dtype), randn(rng, batch + (m, d), dtype), \
        randn(rng, batch + (m, dv), dtype)
    for values in (v, None):
        for causal in (False, True):
            for check_finite in (True, False):
                fast = _prepare._prepare_plain(q, k, values, causal, check_finite)
                assert fast is not None, "plain inputs should take the plain path"
                # an explicit default scale takes the general path: the same Problem
                general = _prepare.prepare(q, k, values, causal=causal, check_finite=check_finite,
                                           scale=1.0 / math.sqrt(d))
                _same_problem(fast, general)
                _same_problem(_prepare.prepare(q, k, values, causal=causal,
                                               check_finite=check_finite), general)


def test_plain_path_declines_what_is_not_plain(rng):
    q, k, v = (randn(rng, (2, 3, 9, 8), F32) for _ in range(3))
    plain = _prepare._prepare_plain
    assert plain(q, k, v, False, True) is not None
    declined = {
        "list": (q.tolist(), k, v),
        "float16": (q.astype(F16), k.astype(F16), v.astype(F16)),
        "mixed": (q, k.astype(F64), v),
        "strided": (q[..., ::2, :], k, v),
        "transposed": (np.swapaxes(q, -1, -2), k, v),
        "byteswapped": (q.astype(">f4"), k.astype(">f4"), v.astype(">f4")),
        "broadcast batch": (q, k[:1], v[:1]),
        "grouped heads": (np.concatenate([q, q], axis=1), k, v),
        "1-d": (q[0, 0, 0], k, v),
        "d mismatch": (q, k[..., :4], v),
        "v positions": (q, k, v[..., :5, :]),
        "v batch": (q, k, v[:1]),
        "integer": (q.astype(np.int32), k, v),
    }
    for name, args in declined.items():
        assert plain(*args, False, True) is None, name
    for bad in (np.nan, np.inf, -np.inf):
        k_bad = k.copy()
        k_bad[1, 2, 3, 4] = bad
        assert plain(q, k_bad, v, False, True) is None
        assert plain(q, k_bad, v, False, False) is not None  # check_finite=False: nothing to check


BAD_INPUTS = {
    "nan_q": lambda q, k, v: ((np.where(q > 1, np.nan, q), k, v), {}),
    "inf_v": lambda q, k, v: ((q, k, np.where(v > 2, np.inf, v)), {}),
    "nan_k_and_inf_q": lambda q, k, v: ((np.where(q > 2, np.inf, q), np.where(k > 1, np.nan, k), v), {}),
    "d_mismatch": lambda q, k, v: ((q, k[..., :5], v), {}),
    "v_positions": lambda q, k, v: ((q, k, v[..., :3, :]), {}),
    "v_batch": lambda q, k, v: ((q, k, v[:1]), {}),
    "batch_mismatch": lambda q, k, v: ((q, np.concatenate([k, k[:1]]), np.concatenate([v, v[:1]])), {}),
    "heads_not_dividing": lambda q, k, v: ((q[:, :3], k[:, :2], v[:, :2]), {}),
    "one_dim": lambda q, k, v: ((q[0, 0, 0], k, v), {}),
    "empty_d": lambda q, k, v: ((q[..., :0], k[..., :0], v), {}),
    "bad_scale": lambda q, k, v: ((q, k, v), {"scale": float("nan")}),
    "int_dtype": lambda q, k, v: ((q.astype(np.int64), k, v), {}),
    "bad_backend": lambda q, k, v: ((q, k, v), {"backend": "gpu"}),
    "bad_mask": lambda q, k, v: ((q, k, v), {"mask": "causal"}),
    "bad_lengths": lambda q, k, v: ((q, k, v), {"kv_lengths": [99, 1]}),
}


def _error_of(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - the error is what is compared
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_errors_are_the_general_paths(rng, monkeypatch, case, dtype):
    q, k, v = (randn(rng, (2, 4, 12, 8), dtype) for _ in range(3))
    args, kw = BAD_INPUTS[case](q, k, v)
    errors = [(_error_of(ak.attention, *args, **kw), _error_of(ak.attention_weights, *args[:2], **kw),
               _error_of(ak.attention_stats, *args[:2], **kw))]
    monkeypatch.setattr(_prepare, "_prepare_plain", lambda *a: None)
    errors.append((_error_of(ak.attention, *args, **kw), _error_of(ak.attention_weights, *args[:2], **kw),
                   _error_of(ak.attention_stats, *args[:2], **kw)))
    assert errors[0] == errors[1]
    assert errors[0][0] is not None, "the case must be an error"


def test_nonfinite_error_counts_and_names(rng):
    q, k, v = (randn(rng, (2, 3, 10, 4), F32) for _ in range(3))
    v[0, 1, 2, 3] = np.nan
    v[1, 2, 3, :2] = np.inf
    with pytest.raises(ValueError, match=r"^v: expected finite values, got 3 NaN/inf entries"):
        ak.attention(q, k, v)
    k[0, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"^k: expected finite values, got 1 NaN/inf"):
        ak.attention(q, k, v)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_count_nonfinite_matches_numpy(rng, dtype):
    for size in (0, 1, 15, 16, 17, 1000, 4099):
        x = randn(rng, size, dtype)
        picks = rng.integers(0, max(size, 1), size=min(size, 7))
        for value, at in zip((np.nan, np.inf, -np.inf) * 3, picks):
            x[at] = value
        want = int(size - np.count_nonzero(np.isfinite(x)))
        empty = np.empty(0, dtype)
        assert kernels.count_nonfinite(x, empty, empty) == want
        assert kernels.count_nonfinite(x, x, x) == 3 * want
        assert kernels.count_nonfinite(empty, x, empty) == want


# ----------------------------------------------- end to end: plain vs general
RAGGED = [
    # (q batch, kv batch, n, m, d, kwargs): the general path's inputs, and plain ones
    ((2, 4), (2, 4), 65, 257, 16, {}),
    ((2, 4), (2, 4), 65, 257, 16, {"causal": True}),
    ((1, 1), (1, 1), 16, 16, 64, {}),
    ((1, 1), (1, 1), 1, 1, 64, {"causal": True}),
    ((3,), (3,), 130, 70, 8, {}),
    ((2, 4), (2, 2), 70, 300, 16, {"causal": True}),                # grouped-query heads
    ((2, 3), (1, 3), 33, 45, 8, {}),                               # broadcast batch
    ((2, 3), (2, 3), 50, 300, 16, {"kv_lengths": [300, 17], "q_lengths": [3, 50]}),
    ((2, 3), (2, 3), 50, 300, 16, {"mask": "local:20|global:0,7"}),
]


@pytest.mark.parametrize("dtype", [F16, F32, F64], ids=["f16", "f32", "f64"])
@pytest.mark.parametrize("case", range(len(RAGGED)))
def test_results_bit_identical_to_general_path(rng, monkeypatch, case, dtype):
    qb, kb, n, m, d, kw = RAGGED[case]
    kw = dict(kw)
    if "mask" in kw:
        kw["mask"] = ak.masks.parse(kw["mask"])
    q, k, v = randn(rng, qb + (n, d), dtype), randn(rng, kb + (m, d), dtype), \
        randn(rng, kb + (m, d + 3), dtype)

    def run():
        out, lse = ak.attention(q, k, v, return_lse=True, **kw)
        return dict(out=out, lse=lse, weights=ak.attention_weights(q, k, **kw),
                    **ak.attention_stats(q, k, topk=3, **kw))

    fast = run()
    monkeypatch.setattr(_prepare, "_prepare_plain", lambda *a: None)
    general = run()
    assert fast.keys() == general.keys()
    for name in fast:
        assert fast[name].dtype == general[name].dtype, name
        assert fast[name].tobytes() == general[name].tobytes(), name


# ------------------------------------------------------ serial vs parallel
def _forced(kind):
    """api._kernel that always runs the serial (or always the parallel) kernels."""

    def pick(p, name, tasks):
        assert p.score_mod is None
        kernel = getattr(kernels.serial() if kind == "serial" else kernels, name)

        def call(*args):
            with single_threaded_blas():
                return kernel(*args)

        return call

    return pick


SERIAL_CASES = [
    ((1,), (1,), 16, 16, 64, {}),                                   # one task: serial by default
    ((1, 1), (1, 1), 1, 300, 32, {"causal": True}),
    ((1,), (1,), 64, 513, 16, {"mask": "local:40", "kv_lengths": 400}),
    ((2, 4), (2, 2), 150, 520, 32, {"causal": True, "kv_lengths": [520, 333]}),  # many tasks
    ((3, 2), (3, 2), 333, 300, 16, {"mask": "local:50|global:0", "q_lengths": [333, 7, 100]}),
    ((1,), (1,), 1100, 300, 16, {}),  # 18 query tiles: keys packed once per call, not per task
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(SERIAL_CASES)))
def test_serial_kernels_match_parallel_bit_for_bit(rng, monkeypatch, case, dtype):
    qb, kb, n, m, d, kw = SERIAL_CASES[case]
    kw = dict(kw)
    if "mask" in kw:
        kw["mask"] = ak.masks.parse(kw["mask"])
    q, k, v = randn(rng, qb + (n, d), dtype), randn(rng, kb + (m, d), dtype), \
        randn(rng, kb + (m, d), dtype)
    results = {}
    for kind in ("serial", "parallel"):
        monkeypatch.setattr(api, "_kernel", _forced(kind))
        out, lse = ak.attention(q, k, v, return_lse=True, **kw)
        results[kind] = dict(out=out, lse=lse, weights=ak.attention_weights(q, k, **kw),
                             **ak.attention_stats(q, k, topk=4, **kw))
    monkeypatch.undo()
    out, lse = ak.attention(q, k, v, return_lse=True, **kw)  # the default choice
    results["default"] = dict(out=out, lse=lse, weights=ak.attention_weights(q, k, **kw),
                              **ak.attention_stats(q, k, topk=4, **kw))
    for kind in ("parallel", "default"):
        for name, arr in results["serial"].items():
            assert arr.tobytes() == results[kind][name].tobytes(), f"{name}: serial vs {kind}"


def test_single_task_calls_use_the_serial_kernels(rng, monkeypatch):
    calls = []
    serial = kernels.serial()

    def spy(p, name, tasks):
        calls.append((name, tasks))
        return original(p, name, tasks)

    original = api._kernel
    monkeypatch.setattr(api, "_kernel", spy)
    q, k, v = (randn(rng, (1, 1, 16, 64), F32) for _ in range(3))
    ak.attention(q, k, v)
    ak.attention_weights(q, k)
    ak.attention_stats(q, k)
    assert calls == [("flash_forward", 1), ("flash_forward", 1), ("query_stats", 1)]
    assert serial.flash_forward is not kernels.flash_forward
    assert not serial.flash_forward.targetoptions.get("parallel")
    assert kernels.flash_forward.targetoptions.get("parallel")


# ----------------------------------------------------------------- BLAS limit
def _blas_threads():
    return [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]


def test_blas_limit_sets_one_thread_and_restores(rng):
    before = _blas_threads()
    with single_threaded_blas():
        assert all(n == 1 for _, n in _blas_threads())
        with single_threaded_blas():  # nested: still 1, and the outer one restores
            assert all(n == 1 for _, n in _blas_threads())
        assert all(n == 1 for _, n in _blas_threads())
    assert _blas_threads() == before
    with pytest.raises(RuntimeError), single_threaded_blas():
        raise RuntimeError("inside")
    assert _blas_threads() == before
    q, k, v = (randn(rng, (2, 3, 40, 8), F64) for _ in range(3))
    ak.attention(q, k, v)
    assert _blas_threads() == before


def test_float32_kernels_skip_the_blas_limit(rng, monkeypatch):
    entered = []

    class Spy:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(api, "single_threaded_blas", Spy)
    q, k, v = (randn(rng, (2, 3, 40, 8), F32) for _ in range(3))
    ak.attention(q, k, v)
    ak.attention_stats(q.astype(F16), k.astype(F16))
    assert entered == []
    ak.attention(q.astype(F64), k, v)
    assert entered == [True]
    # a score_mod could call anything: its kernels keep the limit (not run: a compile is slow)
    p = _prepare.prepare(q, k, v, score_mod=ak.positional.soft_cap(5.0))
    kernel = api._kernel(p, "flash_forward", 6)
    assert kernel is not kernels.flash_forward and kernel.__name__ == "call"
    p = _prepare.prepare(q, k, v)
    assert api._kernel(p, "flash_forward", 6) is kernels.flash_forward
    assert api._kernel(p, "flash_forward", 1) is kernels.serial().flash_forward
