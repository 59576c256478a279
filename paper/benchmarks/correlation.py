"""Per-instance Kendall tau-b and Spearman rho: attnkit vs a scipy.stats loop, one run.

10,000 instances of n = 64 positions (float64, continuous values like attention
scores). The peer is the loop a study script would write::

    [scipy.stats.kendalltau(x[i], y[i]) for i in range(10_000)]

attnkit computes the same statistics and two-sided p-values in one batched
call, ``ak.correlate(x, y, method=..., n_boot=1)`` (``n_boot=1`` keeps the
bootstrap summary, which the loop does not do, out of the timing; the cost
of the default 2000-resample summary is recorded separately). Both sides
are checked to agree before anything is timed. Times are medians of
repeated runs after a warm-up (which also loads the cached Numba kernels);
attnkit runs with all Numba threads and with one thread, so the ratio is
given both ways.

Usage::

    python paper/benchmarks/correlation.py           # scipy 3 runs, attnkit 7 (~2 min on 2 cores)
    python paper/benchmarks/correlation.py --quick   # scipy 1 run, attnkit 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "correlation.json"
INSTANCES, N = 10_000, 64


def timed(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    import numba
    import scipy
    from scipy import stats

    import attnkit as ak

    scipy_reps, ak_reps = (1, 3) if args.quick else (3, 7)
    rng = np.random.default_rng(0)
    x = rng.random((INSTANCES, N))
    y = 0.3 * x + rng.random((INSTANCES, N))
    peers = {"kendall": stats.kendalltau, "spearman": stats.spearmanr}
    threads = numba.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    wall = time.perf_counter()
    records = []
    for method, peer in peers.items():
        ak.correlate(x[:100], y[:100], method=method, n_boot=1)  # load/compile the kernels
        res = ak.correlate(x, y, method=method, n_boot=1)
        loop = [peer(x[i], y[i]) for i in range(INSTANCES)]
        ref_stat = np.array([r.statistic for r in loop])
        ref_p = np.array([r.pvalue for r in loop])
        agreement = {"max_abs_statistic": float(np.max(np.abs(res.statistic - ref_stat))),
                     "max_abs_pvalue": float(np.max(np.abs(res.pvalue - ref_p)))}
        assert agreement["max_abs_statistic"] < 1e-12 and agreement["max_abs_pvalue"] < 1e-12

        scipy_times = timed(lambda: [peer(x[i], y[i]) for i in range(INSTANCES)], scipy_reps)
        ak_times = {}
        for n_threads in sorted({threads, 1}, reverse=True):
            numba.set_num_threads(n_threads)
            ak_times[n_threads] = timed(lambda: ak.correlate(x, y, method=method, n_boot=1),
                                        ak_reps)
        numba.set_num_threads(threads)
        summary_times = timed(lambda: ak.correlate(x, y, method=method), max(1, ak_reps // 2))
        scipy_median = statistics.median(scipy_times)
        record = {
            "method": method, "instances": INSTANCES, "n": N, "dtype": "float64",
            "scipy_loop": {"times_s": scipy_times, "median_s": scipy_median,
                           "per_instance_us": scipy_median / INSTANCES * 1e6},
            "agreement_with_scipy": agreement,
            "attnkit_default_summary_n_boot_2000": {
                "times_s": summary_times, "median_s": statistics.median(summary_times)},
        }
        for n_threads, times in ak_times.items():
            median = statistics.median(times)
            record[f"attnkit_threads_{n_threads}"] = {
                "times_s": times, "median_s": median, "per_instance_us": median / INSTANCES * 1e6,
                "speedup_vs_scipy_loop": scipy_median / median}
        records.append(record)
        line = ", ".join(f"{k}: {v['median_s'] * 1e3:.1f} ms ({v['speedup_vs_scipy_loop']:.0f}x)"
                         for k, v in record.items() if k.startswith("attnkit_threads"))
        print(f"{method}: scipy loop {scipy_median:.2f} s; {line}")

    result = {
        "benchmark": "correlation",
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "wall_s": time.perf_counter() - wall,
        "goal": "attnkit >= 20x a scipy.stats loop for 10,000 instances of n = 64",
        "machine": {
            "cpu": _cpu_name(), "cores": os.cpu_count(), "numba_threads": threads,
            "load_average_1min_at_start": load,
            "note": "shared machine: other jobs ran at the same time, so absolute times are "
                    "noisy; both sides ran in the same process, interleaved per method",
            "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "numba": numba.__version__, "attnkit": ak.__version__,
        },
        "records": records,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
