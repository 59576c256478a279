"""Where the CPU kernels pack their keys changes no result, and the kept buffer is never shared.

float32 kernels read keys packed into panels (:mod:`attnkit.kernels.cpu.gemm`).
A call packs them either inside each task, tile by tile, into a small buffer of
the task's own (when each key tile is read by few tasks:
:func:`attnkit.kernels.cpu.attention.packs_in_tasks`), or once for the whole
call, into the packed-key buffer the CPU backend keeps between calls
(:data:`attnkit.kernels.cpu.api.KEY_SCRATCH`), lent to one call at a time.

* Both ways give the same bits as the default choice, for every kernel and
  for ragged tiles, masks, padding and grouped heads (copies of the kernels
  compiled with the choice forced one way or the other).
* The kept buffer is reused from call to call, capped, and a call that finds
  it lent (another thread) packs into a fresh array: the same results, and
  concurrent calls from several Python threads give the sequential results.
"""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest

import attnkit as ak
from attnkit.kernels.cpu import api, gemm
from attnkit.kernels.cpu import attention as kernels

F32 = np.float32


def _forced(per_task: bool):
    """Serial copies of the query-tile kernels that always (or never) pack keys per task."""
    ns = dict(vars(kernels))
    uses = 10**9 if per_task else 0
    ns["LOCAL_PACK_USES"] = ns["LOCAL_PACK_USES_MASKED"] = uses
    tag = "per_task" if per_task else "per_call"
    ns["packs_in_tasks"] = kernels._recompile(kernels.packs_in_tasks, ns, f"packs_in_tasks_{tag}")
    ns["pack_keys_into"] = kernels._recompile(gemm.pack_keys_into, vars(gemm),
                                              f"pack_keys_into_{tag}", parallel=False)
    for name in ("flash_forward", "query_stats"):
        ns[name] = kernels._recompile(getattr(kernels, name), ns, f"{name}_{tag}",
                                      parallel=False)
    return types.SimpleNamespace(uses=uses, flash_forward=ns["flash_forward"],
                                 query_stats=ns["query_stats"])


@pytest.fixture(scope="module")
def forced():
    return {"per_task": _forced(True), "per_call": _forced(False)}


def _everything(q, k, v, **kw):
    out, lse = ak.attention(q, k, v, return_lse=True, **kw)
    return dict(out=out, lse=lse, weights=ak.attention_weights(q, k, **kw),
                **ak.attention_stats(q, k, topk=3, **kw))


CASES = [
    # (q batch, kv batch, n, m, d, dv, kwargs): ragged m (not a multiple of 64 or 256 keys),
    # d a multiple of 16 (blocked packing) or not, masks, padding, grouped heads
    ((2, 3), (2, 3), 150, 300, 32, 24, {}),
    ((1, 2), (1, 2), 700, 517, 64, 64, {"causal": True}),
    ((2, 4), (2, 2), 90, 333, 20, 8, {"mask": "local:40|global:0", "kv_lengths": [333, 100]}),
    ((3,), (3,), 64, 1, 16, 16, {"q_lengths": [64, 0, 17]}),
    ((1,), (1,), 1100, 260, 128, 32, {"causal": True, "kv_lengths": 200}),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_packing_per_task_or_per_call_gives_the_same_bits(rng, monkeypatch, forced, case):
    qb, kb, n, m, d, dv, kw = CASES[case]
    kw = dict(kw)
    if "mask" in kw:
        kw["mask"] = ak.masks.parse(kw["mask"])
    q = rng.standard_normal(qb + (n, d)).astype(F32)
    k = rng.standard_normal(kb + (m, d)).astype(F32)
    v = rng.standard_normal(kb + (m, dv)).astype(F32)
    results = {"default": _everything(q, k, v, **kw)}
    for kind, module in forced.items():
        # the backend asks the same rule (for the kept buffer) as the forced kernels
        monkeypatch.setattr(kernels, "LOCAL_PACK_USES", module.uses)
        monkeypatch.setattr(kernels, "LOCAL_PACK_USES_MASKED", module.uses)
        monkeypatch.setattr(api, "_kernel", lambda p, name, tasks, m=module: getattr(m, name))
        results[kind] = _everything(q, k, v, **kw)
        monkeypatch.undo()
    for kind in forced:
        for name, arr in results["default"].items():
            assert arr.tobytes() == results[kind][name].tobytes(), f"{name}: default vs {kind}"


def test_the_rule_depends_on_shape_and_mask_only():
    rule = kernels.packs_in_tasks.py_func
    assert rule(384, 384, False) and rule(4 * 96, 96, False) and not rule(5 * 96, 96, False)
    assert rule(8 * 8, 8, True) and not rule(9 * 8, 8, True)
    for tasks, zk, masked in ((1, 1, False), (40, 3, True), (1000, 7, False)):
        assert kernels.packs_in_tasks(tasks, zk, masked) == rule(tasks, zk, masked)


# --------------------------------------------------------------- the kept buffer
def test_key_scratch_lends_one_buffer_at_a_time():
    scratch = api.KeyScratch(1 << 20)
    buf, lent = scratch.lend(1000)
    assert lent and buf.size >= 1000 and buf.dtype == F32
    other, lent_again = scratch.lend(1000)  # still lent: a fresh array, never the same memory
    assert not lent_again and not np.shares_memory(buf, other)
    scratch.give_back()
    again, lent = scratch.lend(500)  # reused, not reallocated
    assert lent and again is buf
    scratch.give_back()
    bigger, lent = scratch.lend(5000)  # grows to the largest request
    assert lent and bigger.size >= 5000 and scratch.nbytes == bigger.nbytes
    scratch.give_back()
    huge, lent = scratch.lend((1 << 20) // 4 + 1)  # past the cap: fresh, and not kept
    assert not lent and huge is not bigger and scratch.nbytes == bigger.nbytes
    scratch.release()
    assert scratch.nbytes == 0


def _per_call_problem(rng):
    """float32, each key tile read by 9 tasks: the keys are packed once, into the kept buffer."""
    q, k, v = (rng.standard_normal((1, 2, 1100, 32)).astype(F32) for _ in range(3))
    return q, k, v


def test_calls_reuse_the_kept_buffer(rng, monkeypatch):
    scratch = api.KeyScratch(api.SCRATCH_MAX_BYTES)
    monkeypatch.setattr(api, "KEY_SCRATCH", scratch)
    q, k, v = _per_call_problem(rng)
    first = _everything(q, k, v, causal=True)
    kept = scratch._buf
    assert kept is not None and scratch.nbytes >= 2 * 1100 * 32 * 4
    second = _everything(q, k, v, causal=True)
    assert scratch._buf is kept
    for name in first:
        assert first[name].tobytes() == second[name].tobytes(), name
    # while another caller holds it, a call packs into a fresh array: the same bits
    held, lent = scratch.lend(1)
    assert lent and held is kept
    third = _everything(q, k, v, causal=True)
    scratch.give_back()
    assert scratch._buf is kept
    for name in first:
        assert first[name].tobytes() == third[name].tobytes(), name
    # past the cap nothing is kept, and nothing changes
    small = api.KeyScratch(1024)
    monkeypatch.setattr(api, "KEY_SCRATCH", small)
    fourth = _everything(q, k, v, causal=True)
    assert small.nbytes == 0
    for name in first:
        assert first[name].tobytes() == fourth[name].tobytes(), name


def test_concurrent_threads_get_the_sequential_results(rng):
    inputs = [_per_call_problem(rng) for _ in range(4)]
    inputs.append(tuple(rng.standard_normal((32, 2, 128, 64)).astype(F32) for _ in range(3)))
    expected = [ak.attention(q, k, v, causal=bool(i % 2)) for i, (q, k, v) in enumerate(inputs)]
    got = [[] for _ in inputs]
    errors = []

    def work(i):
        q, k, v = inputs[i]
        try:
            for _ in range(4):
                got[i].append(ak.attention(q, k, v, causal=bool(i % 2)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, outs in enumerate(got):
        assert len(outs) == 4
        for out in outs:
            assert out.tobytes() == expected[i].tobytes(), f"thread {i}"
