"""What attention_stats and attention_weights cost next to the forward pass, one run.

Writes paper/results/stats_cost.json: at B=1, H=8, d=64, float32 (n = m =
4096 by default), full and causal, the median times of ``ak.attention``
(forward), ``ak.attention_stats`` (every statistic, top-k 0; and without
"received"), and ``ak.attention_weights``, and their ratios to the forward
pass. All run in this one process, alternating call by call within each round
(so a change in a shared machine's load hits them alike); medians over all
rounds. ``check_finite=False`` everywhere, as in cpu_attention.py.
Wall-clock times are the result; process CPU times are recorded beside them
(less sensitive to other work on the machine, but blind to idle waits).

OpenBLAS tuning variables (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) are removed
from the environment before NumPy loads; the JSON says which were set.

Usage::

    python paper/benchmarks/stats_cost.py              # n = 4096, ~2 min on 2 cores
    python paper/benchmarks/stats_cost.py --n 1024 --rounds 3   # quick
"""

from __future__ import annotations

import os

# Before NumPy (and its OpenBLAS) is imported: this process only (and its workers).
from benchenv import environment_unset, write_atomic  # noqa: E402

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "stats_cost.json"
B, H, D = 1, 8, 64
PER_QUERY = ("entropy", "max", "distance")


def measure(n: int, rounds: int) -> list[dict]:
    import attnkit as ak

    rng = np.random.default_rng(n)
    q, k, v = (rng.standard_normal((B, H, n, D), dtype=np.float32) for _ in range(3))
    records = []
    for kind in ("full", "causal"):
        causal = kind == "causal"
        kw = {"causal": causal, "check_finite": False}
        methods = {
            "forward": lambda kw=kw: ak.attention(q, k, v, **kw),
            "stats": lambda kw=kw: ak.attention_stats(q, k, **kw),
            "stats_without_received": lambda kw=kw: ak.attention_stats(q, k, stats=PER_QUERY, **kw),
            "weights": lambda kw=kw: ak.attention_weights(q, k, **kw),
        }
        for fn in methods.values():  # warm-up: kernels loaded, first-touch allocations
            fn()
        wall = {name: [] for name in methods}
        cpu = {name: [] for name in methods}
        for _ in range(rounds):
            for name, fn in methods.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        fw, fw_cpu = statistics.median(wall["forward"]), statistics.median(cpu["forward"])
        for name in methods:
            rec = {"mask": kind, "B": B, "H": H, "n": n, "m": n, "d": D, "dtype": "float32",
                   "method": name, "times_s": wall[name], "median_s": statistics.median(wall[name]),
                   "cpu_median_s": statistics.median(cpu[name])}
            rec["ratio_to_forward"] = rec["median_s"] / fw
            rec["cpu_ratio_to_forward"] = rec["cpu_median_s"] / fw_cpu
            records.append(rec)
            print(f"{kind:6s} {name:24s} {rec['median_s'] * 1e3:8.1f} ms  "
                  f"x{rec['ratio_to_forward']:.3f} (cpu x{rec['cpu_ratio_to_forward']:.3f})",
                  flush=True)
    return records


def machine() -> dict:
    import numba

    import attnkit

    return {
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    records = measure(args.n, args.rounds)
    summary = {f"{r['method']}_over_forward_{r['mask']}": round(r["ratio_to_forward"], 3)
               for r in records if r["method"] != "forward"}
    result = {
        "benchmark": "stats_cost",
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "wall_s": time.time() - started,
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "environment_unset": environment_unset(),
        "machine": machine(),
        "records": records,
        "summary": summary,
    }
    write_atomic(args.output, json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
