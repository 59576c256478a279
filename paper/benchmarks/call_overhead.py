"""Call overhead: tiny attention calls, attnkit against torch SDPA, one run.

Writes paper/results/call_overhead.json. For each tiny problem (B, H, n, d) in
{(1, 1, 16, 64), (1, 1, 1, 64), (1, 8, 64, 64)} x {float32, float64} it times
``ak.attention``, ``ak.attention_weights`` and ``ak.attention_stats`` (default
arguments, so every input check runs) and, where torch is installed,
``torch.nn.functional.scaled_dot_product_attention`` on the same arrays
(``torch.from_numpy``, no copy). The methods alternate call block by call
block within each round, so a change in the machine's load hits them alike;
each figure is the median over every timed call of every round, in
microseconds. ``ratio_to_torch`` divides by torch's median of the same case.

Then a breakdown of where a tiny call's time goes, measured in place (one
timer between the steps of the call, medians over many calls): choosing the
backend, :func:`attnkit._prepare.prepare` (validation, maps, lengths, mask
program), the CPU backend function (allocation, tile choice, BLAS limit,
kernel), and, measured apart, the BLAS thread limit alone and the Numba
kernel alone (outputs preallocated).

Run it where torch is importable to get the peer, e.g.
``PYTHONPATH=.:cli /path/to/torch-venv/bin/python paper/benchmarks/call_overhead.py``.
OpenBLAS tuning variables (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) are removed
from the environment before NumPy loads; the JSON says which were set.
"""

from __future__ import annotations

import os

# Before NumPy (and its OpenBLAS) is imported: this process only (and its workers).
from benchenv import environment_unset, write_atomic  # noqa: E402

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "call_overhead.json"
SHAPES = [(1, 1, 16, 64), (1, 1, 1, 64), (1, 8, 64, 64)]
DTYPES = ["float32", "float64"]


def _methods(q, k, v):
    import attnkit as ak

    methods = {
        "attention": lambda: ak.attention(q, k, v),
        "attention_weights": lambda: ak.attention_weights(q, k),
        "attention_stats": lambda: ak.attention_stats(q, k),
    }
    try:
        import torch
    except ImportError:
        return methods
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    methods["torch_sdpa"] = lambda: sdpa(tq, tk, tv)
    return methods


def _time_block(fn, calls: int) -> list[float]:
    times = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def measure(rounds: int, calls: int) -> list[dict]:
    """Median microseconds of each (case, method), rounds alternating the methods."""
    rng = np.random.default_rng(0)
    records = []
    for shape in SHAPES:
        for dtype in DTYPES:
            q, k, v = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
            methods = _methods(q, k, v)
            for fn in methods.values():  # warm up: compile or load, first-touch
                for _ in range(20):
                    fn()
            times: dict[str, list[int]] = {name: [] for name in methods}
            for _ in range(rounds):
                for name, fn in methods.items():
                    times[name] += _time_block(fn, calls)
            medians = {name: statistics.median(t) / 1e3 for name, t in times.items()}
            for name, med in medians.items():
                rec = {"shape": list(shape), "dtype": dtype, "method": name, "median_us": med,
                       "p10_us": float(np.percentile(times[name], 10)) / 1e3,
                       "p90_us": float(np.percentile(times[name], 90)) / 1e3,
                       "calls": len(times[name])}
                if "torch_sdpa" in medians:
                    rec["ratio_to_torch"] = med / medians["torch_sdpa"]
                records.append(rec)
                ratio = f"  {rec['ratio_to_torch']:.2f}x torch" if "ratio_to_torch" in rec else ""
                print(f"{shape!s:16s} {dtype:8s} {name:18s} {med:9.1f} us{ratio}", flush=True)
    return records


def breakdown(calls: int) -> list[dict]:
    """Where the time of a tiny (1, 1, 16, 64) call goes, step by step, in place."""
    import attnkit as ak
    from attnkit import _backend
    from attnkit._prepare import prepare
    from attnkit.kernels.cpu import api
    from attnkit.kernels.cpu.threads import single_threaded_blas

    rng = np.random.default_rng(1)
    clock = time.perf_counter_ns
    out = []
    for dtype in DTYPES:
        q, k, v = (rng.standard_normal((1, 1, 16, 64)).astype(dtype) for _ in range(3))
        steps = {
            "attention": (lambda q=q, k=k, v=v: ak.attention(q, k, v), (q, k, v),
                          lambda p: api.attention(p, False)),
            "attention_weights": (lambda q=q, k=k: ak.attention_weights(q, k), (q, k),
                                  api.weights),
            "attention_stats": (lambda q=q, k=k: ak.attention_stats(q, k), (q, k),
                                lambda p: api.stats(p, True, 0, True)),
        }
        for name, (public, args, backend_fn) in steps.items():
            arrays = dict(zip("qkv", args))
            parts = []
            for _ in range(calls):
                t0 = clock()
                target = _backend.choose("auto", **arrays)
                t1 = clock()
                p = prepare(*args, target=target)
                t2 = clock()
                backend_fn(p)
                t3 = clock()
                public()
                t4 = clock()
                parts.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
            med = np.median(np.array(parts), axis=0) / 1e3
            rec = {"function": name, "dtype": dtype, "shape": [1, 1, 16, 64],
                   "total_us": med[3], "choose_backend_us": med[0], "prepare_us": med[1],
                   "cpu_backend_us": med[2],
                   "public_wrapper_us": med[3] - med[0] - med[1] - med[2]}
            rec.update(_kernel_alone(p, name, calls))
            blas = []
            for _ in range(calls):
                t0 = clock()
                with single_threaded_blas():
                    pass
                blas.append(clock() - t0)
            rec["blas_limit_alone_us"] = statistics.median(blas) / 1e3
            rec["blas_limit_in_this_call"] = not (p.q.dtype == np.float32 and p.score_mod is None)
            out.append(rec)
            print(f"breakdown {name:18s} {dtype}: " + ", ".join(
                f"{key[:-3]} {value:.1f}" for key, value in rec.items()
                if key.endswith("_us")) + " us", flush=True)
    return out


def _kernel_alone(p, name: str, calls: int) -> dict:
    """The Numba kernel of one tiny call, called directly with preallocated outputs."""
    from attnkit.kernels.cpu import api
    from attnkit.kernels.cpu import attention as kernels

    z, n, m, dt = p.n_problems, p.n, p.m, p.q.dtype
    module = kernels.serial()  # every case here is one task
    dummy = np.empty((1, 1, 1), dtype=dt)
    lse = np.empty((z, n), dtype=dt)
    if name == "attention":
        out = np.empty((z, n, p.v.shape[2]), dtype=dt)
        args = (p.q, p.k, p.v, *api._common(p)[2:], True, api.block_q(p), api.block_k(p), out,
                lse, False, dummy)
        kernel = module.flash_forward
    elif name == "attention_weights":
        w = np.zeros((z, n, m), dtype=dt)
        args = (p.q, p.k, dummy, *api._common(p)[2:], False, api.slab_rows(p), api.block_k(p),
                dummy, lse, True, w)
        kernel = module.flash_forward
    else:
        rows = api.slab_rows(p)
        f64 = [np.empty((z, n)) for _ in range(5)]
        args = (*api._common(p), rows, api.block_k(p), f64[0], f64[1], f64[2],
                np.empty((z, n), np.int64), f64[3], np.empty((z, n, 0), np.int64),
                np.empty((z, n, 0)), True, np.zeros((z, -(-n // rows), m)))
        kernel = module.query_stats
    kernel(*args)
    times = _time_block(lambda: kernel(*args), calls)
    return {"kernel_alone_us": statistics.median(times) / 1e3}


def machine() -> dict:
    import numba

    import attnkit

    info = {
        "cpu": next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "attnkit": attnkit.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per block")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        print("torch not installed: no peer (run under an environment with torch)",
              file=sys.stderr)
    started = time.time()
    load_before = os.getloadavg()
    records = measure(args.rounds, args.calls)
    parts = breakdown(20 * args.calls)
    summary = {}
    for rec in records:
        if rec["method"] != "torch_sdpa" and "ratio_to_torch" in rec:
            key = f"{rec['method']}_{'x'.join(map(str, rec['shape']))}_{rec['dtype']}"
            summary[key] = round(rec["ratio_to_torch"], 2)
    result = {
        "benchmark": "call_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "calls_per_block": args.calls,
        "wall_s": time.time() - started,
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "environment_unset": environment_unset(),
        "machine": machine(),
        "records": records,
        "breakdown_1x1x16x64": parts,
        "summary_ratio_to_torch_sdpa": summary,
    }
    write_atomic(args.output, json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
