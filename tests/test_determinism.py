"""Determinism on the CPU: the same inputs give bit-identical results.

Run to run in one process, across separate processes, and with 1 or 2 Numba
threads. The CPU kernels split work with ``prange`` so that every output
element is written by exactly one iteration (no reductions whose order
depends on the schedule), and BLAS runs single-threaded inside them; these
tests hold them to that. Sizes span several key tiles (256 keys) and several
(sample, head) problems, so the parallel split really happens; query tiles are
256 rows, halved for small problems (``attnkit.kernels.cpu.api.block_q``).
The short float32 problems have their keys packed inside each task, the long
one (``q_long``: each key tile read by 9 query tiles) once per call, into the
buffer the backend keeps between calls (``attnkit.kernels.cpu.api.KEY_SCRATCH``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import attnkit as ak

TESTS = Path(__file__).resolve().parent
FIXED_SEED = 20240917


def inputs(rng):
    q = rng.standard_normal((2, 3, 150, 32)).astype(np.float32)
    k = rng.standard_normal((2, 3, 300, 32)).astype(np.float32)
    v = rng.standard_normal((2, 3, 300, 24)).astype(np.float32)
    q_long = rng.standard_normal((3, 1, 2, 1100, 32)).astype(np.float32)  # q, k, v
    q64 = rng.standard_normal((3, 130, 16))
    k64 = rng.standard_normal((3, 290, 16))
    attn = rng.random((5, 3, 4, 37, 37))
    attn /= attn.sum(-1, keepdims=True)
    small = rng.random((3, 2, 2, 7, 7))
    small /= small.sum(-1, keepdims=True)
    return dict(q=q, k=k, v=v, q_long=q_long, q64=q64, k64=k64, attn=attn, lengths=np.array([37, 20, 33, 9, 37]),
                small=small, grad=rng.standard_normal(attn.shape),
                x=rng.random((40, 3, 25)), y=rng.random((40, 3, 25)))


def compute_all(data) -> dict[str, np.ndarray]:
    """Every CPU analysis on ``data``, as a flat dict of arrays."""
    q, k, v, q64, k64 = (data[n] for n in ("q", "k", "v", "q64", "k64"))
    out = {}
    mask = ak.masks.local(70) | ak.masks.global_tokens([0, 5])
    for tag, kw in (("full", {}), ("causal", {"causal": True, "kv_lengths": [300, 211]}),
                    ("mask", {"mask": mask})):
        o, lse = ak.attention(q, k, v, return_lse=True, backend="cpu", **kw)
        out[f"attention_{tag}"], out[f"lse_{tag}"] = o, lse
        out[f"weights_{tag}"] = ak.attention_weights(q, k, backend="cpu", **kw)
        for name, arr in ak.attention_stats(q, k, backend="cpu", topk=4, **kw).items():
            out[f"stats_{tag}_{name}"] = arr
    ql, kl, vl = data["q_long"]
    for tag, kw in (("full", {}), ("causal", {"causal": True})):
        o, lse = ak.attention(ql, kl, vl, return_lse=True, backend="cpu", **kw)
        out[f"attention_long_{tag}"], out[f"lse_long_{tag}"] = o, lse
        out[f"weights_long_{tag}"] = ak.attention_weights(ql, kl, backend="cpu", **kw)
        for name, arr in ak.attention_stats(ql, kl, backend="cpu", topk=4, **kw).items():
            out[f"stats_long_{tag}_{name}"] = arr
    out["attention_f64"] = ak.attention(q64, k64, k64, backend="cpu")
    for name, arr in ak.attention_stats(q64, k64, backend="cpu").items():
        out[f"stats_f64_{name}"] = arr

    attn, lengths = data["attn"], data["lengths"]
    out["rollout"] = ak.rollout(attn, lengths=lengths)
    out["rollout_max_discard"] = ak.rollout(attn, head_fusion="max", discard_ratio=0.3)
    out["grad_rollout"] = ak.grad_rollout(attn, data["grad"], lengths=lengths)
    st = ak.head_stats(attn, lengths=lengths)
    out.update({f"head_stats_{name}": st[name].values for name in st.data_vars})
    out["flow"] = ak.attention_flow(data["small"])
    r = ak.correlate(data["x"], data["y"], method="kendall", n_boot=200, seed=3)
    out.update({f"kendall_{f}": np.asarray(getattr(r, f))
                for f in ("statistic", "pvalue", "mean_statistic", "ci_low", "ci_high")})
    r = ak.correlate(data["x"], data["y"], method="spearman", n_boot=200, seed=3)
    out["spearman_statistic"] = r.statistic
    return out


def digests(results: dict[str, np.ndarray]) -> dict[str, str]:
    """sha256 of each result's dtype, shape and bytes (NaN-safe, bit-exact)."""
    out = {}
    for name, arr in results.items():
        arr = np.ascontiguousarray(arr)
        h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
        out[name] = h.hexdigest()
    return out


SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
import numpy as np, numba
from test_determinism import FIXED_SEED, compute_all, digests, inputs
results = digests(compute_all(inputs(np.random.default_rng(FIXED_SEED))))
print(json.dumps({{"threads": numba.get_num_threads(), "digests": results}}))
"""


def run_in_subprocess(threads: int) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600, cwd=TESTS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs between runs"


def test_same_process_runs_are_bit_identical(rng):
    data = inputs(rng)
    first = compute_all(data)
    second = compute_all({name: np.array(x, copy=True) for name, x in data.items()})
    assert_bit_identical(first, second)
    assert len(first) > 40


def test_separate_processes_and_thread_counts_agree():
    """NUMBA_NUM_THREADS=1 and =2 in two fresh processes, and this process:
    the same digests for every result."""
    one = run_in_subprocess(1)
    two = run_in_subprocess(2)
    assert one["threads"] == 1 and two["threads"] == 2
    here = digests(compute_all(inputs(np.random.default_rng(FIXED_SEED))))
    for name in here:
        assert one["digests"][name] == two["digests"][name], f"{name}: 1 vs 2 threads"
        assert here[name] == one["digests"][name], f"{name}: this process vs a fresh one"
    assert one["digests"].keys() == here.keys()


def test_lazy_dataset_analyses_match_eager_bitwise(rng):
    """Chunked (dask, 2 threads) head_stats and rollout equal the eager run bit for bit."""
    data = inputs(rng)
    ds = ak.from_arrays([a[:, :, :n, :n] for a, n in zip(data["attn"], data["lengths"])])
    for fn in (ak.head_stats, ak.rollout):
        eager = fn(ds)
        lazy = fn(ds.chunk({"sample": 2})).compute(scheduler="threads", num_workers=2)
        eager = eager.to_dataset() if hasattr(eager, "to_dataset") else eager
        lazy = lazy.to_dataset() if hasattr(lazy, "to_dataset") else lazy
        for name in eager.data_vars:
            assert eager[name].values.tobytes() == lazy[name].values.tobytes(), name

