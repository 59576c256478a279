"""CPU attention benchmark: attnkit vs plain NumPy vs torch SDPA, one run.

Writes paper/results/cpu_attention.json. Every (method, case) runs in its own
child process so that

* peak memory is measured honestly: after the inputs exist and the kernels
  are loaded, the child resets the kernel's high-water mark
  (``/proc/self/clear_refs``) and reports ``VmHWM - VmRSS`` after the runs,
  i.e. the peak memory beyond inputs and code;
* one peer's thread pools cannot slow another down.

FLOPs follow DESIGN.md: ``4 * B * H * d * pairs`` where ``pairs`` counts the
(query, key) pairs the mask allows (``n * m`` dense, about half causal).
Times are medians of repeated runs after a warm-up, pooled over rounds that
alternate the methods case by case (``--rounds``), so that a shared machine's
changing load does not favour whichever method ran in a quiet moment; the
1-minute load average at the start and end is recorded.

Usage::

    python paper/benchmarks/cpu_attention.py            # full run (~15 min on 2 cores)
    python paper/benchmarks/cpu_attention.py --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from procmem import reset_peak, vm_kb

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "cpu_attention.json"
B, H, D = 1, 8, 64
LOCAL_WINDOW = 256
NUMPY_MAX_N = 8192  # beyond this the dense float32 scores need > 8 GB


def allowed_pairs(kind: str, n: int) -> int:
    if kind == "full":
        return n * n
    if kind == "causal":
        return n * (n + 1) // 2
    if kind == "local":  # |i - j| < w
        w = LOCAL_WINDOW
        return sum(min(n, i + w) - max(0, i - w + 1) for i in range(n))
    raise ValueError(kind)


# ------------------------------------------------------------------- child
def _make_runner(method: str, kind: str, q, k, v):
    import numpy as np

    if method == "attnkit":
        import attnkit as ak

        mask = ak.masks.local(LOCAL_WINDOW) if kind == "local" else None
        return lambda: ak.attention(q, k, v, causal=kind == "causal", mask=mask, check_finite=False)
    if method == "numpy":
        n = q.shape[-2]
        allowed = None
        if kind == "causal":
            allowed = np.tril(np.ones((n, n), dtype=bool))
        elif kind == "local":
            idx = np.arange(n)
            allowed = np.abs(idx[:, None] - idx[None, :]) < LOCAL_WINDOW

        def run():
            s = q @ np.swapaxes(k, -1, -2)
            s *= np.float32(1 / np.sqrt(q.shape[-1]))
            if allowed is not None:
                s[..., ~allowed] = -np.inf
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            return s @ v

        return run
    if method == "torch":
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        if kind == "local":
            n = q.shape[-2]
            idx = torch.arange(n)
            mask = (idx[:, None] - idx[None, :]).abs() < LOCAL_WINDOW
            return lambda: sdpa(tq, tk, tv, attn_mask=mask)
        return lambda: sdpa(tq, tk, tv, is_causal=kind == "causal")
    raise ValueError(method)


def child(method: str, kind: str, n: int, reps: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(n)
    q, k, v = (rng.standard_normal((B, H, n, D), dtype=np.float32) for _ in range(3))
    # Warm up on a small problem: loads or compiles the kernels outside the measurement.
    small = min(n, 256)
    _make_runner(method, kind, q[..., :small, :], k[..., :small, :], v[..., :small, :])()
    run = _make_runner(method, kind, q, k, v)
    before_kb = vm_kb("VmRSS")
    peak_ok = reset_peak()
    run()  # warm-up at full size (first-touch allocations, caches)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak_kb = vm_kb("VmHWM")
    return {
        "times_s": times,
        "peak_extra_mb": (peak_kb - before_kb) / 1024 if peak_ok else None,
    }


# ------------------------------------------------------------------ parent
def run_child(method: str, kind: str, n: int, reps: int, timeout: float) -> dict:
    """One child process: its times and peak memory, or {"error": ...}."""
    cmd = [sys.executable, __file__, "--child", method, kind, str(n), str(reps)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except subprocess.CalledProcessError as exc:
        return {"error": (exc.stderr.strip().splitlines() or ["failed"])[-1]}


def finish_record(method: str, kind: str, n: int, runs: list[dict]) -> dict:
    """Merge the rounds of one (method, case): all times, the largest peak."""
    record = {"method": method, "mask": kind, "B": B, "H": H, "n": n, "m": n, "d": D,
              "dtype": "float32", "rounds": len(runs)}
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        record["error"] = failed[0]
        return record
    record["times_s"] = [t for r in runs for t in r["times_s"]]
    peaks = [r["peak_extra_mb"] for r in runs]
    record["peak_extra_mb"] = None if None in peaks else max(peaks)
    med = statistics.median(record["times_s"])
    flops = 4 * B * H * D * allowed_pairs(kind, n)
    record.update(median_s=med, gflops=flops / med / 1e9)
    return record


def machine() -> dict:
    import numba
    import numpy

    info = {
        "cpu": next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    import attnkit

    info["attnkit"] = attnkit.__version__
    return info


def summarise(records: list[dict]) -> dict:
    def med(method, kind, n):
        for r in records:
            if (r["method"], r["mask"], r["n"]) == (method, kind, n) and "median_s" in r:
                return r["median_s"]
        return None

    summary: dict = {}
    ak_2048, np_2048 = med("attnkit", "full", 2048), med("numpy", "full", 2048)
    if ak_2048 and np_2048:
        summary["speedup_vs_numpy_n2048"] = np_2048 / ak_2048
    ratios = {}
    for r in records:
        if r["method"] == "attnkit" and r["n"] >= 2048 and "median_s" in r:
            t = med("torch", r["mask"], r["n"])
            if t:
                ratios[f"{r['mask']}_n{r['n']}"] = t / r["median_s"]
    summary["speedup_vs_torch_sdpa"] = ratios
    big = [r for r in records if r["method"] == "attnkit" and r["mask"] == "full"
           and r["n"] == 16384 and r.get("peak_extra_mb") is not None]
    if big:
        summary["attnkit_n16384_peak_extra_mb"] = big[0]["peak_extra_mb"]
    local = sorted((r["n"], r["median_s"]) for r in records
                   if r["method"] == "attnkit" and r["mask"] == "local" and "median_s" in r)
    if len(local) >= 3:
        import numpy as np

        ns, ts = np.log([p[0] for p in local]), np.log([p[1] for p in local])
        summary["local256_time_exponent"] = float(np.polyfit(ns, ts, 1)[0])
        summary["local256_series"] = [{"n": n, "median_s": t} for n, t in local]
    return summary


def render_markdown(result: dict) -> str:
    """A human-readable summary of one run (written next to the JSON)."""
    recs = [r for r in result["records"] if "median_s" in r]
    methods = [m for m in ("attnkit", "numpy", "torch") if any(r["method"] == m for r in recs)]
    mach = result["machine"]
    lines = [
        "# CPU attention benchmark",
        "",
        f"Run {result['date']} on {mach['cpu']} ({mach['cores']} cores, Numba threads "
        f"{mach['numba_threads']}); numba {mach['numba']}, numpy {mach['numpy']}, "
        f"torch {mach['torch']}. B={B}, H={H}, d={D}, float32. Medians of repeated runs "
        f"over {result.get('rounds', 1)} rounds that alternate the methods; "
        "GFLOP/s count only the (query, key) pairs the mask allows. "
        + (f"1-minute load average {result['load_average_1min']['start']:.1f} at the start, "
           f"{result['load_average_1min']['end']:.1f} at the end (on {mach['cores']} cores: "
           "values above it mean other work shared the machine). "
           if "load_average_1min" in result else "") +
        "Regenerate: `python paper/benchmarks/cpu_attention.py`.",
        "",
    ]
    for kind in ("full", "causal", "local"):
        lines += [f"## {kind}" + (f" ({LOCAL_WINDOW})" if kind == "local" else ""), "",
                  "| n | " + " | ".join(f"{m} ms (GFLOP/s, +MB)" for m in methods) + " |",
                  "|---:|" + "---:|" * len(methods)]
        for n in sorted({r["n"] for r in recs if r["mask"] == kind}):
            cells = []
            for m in methods:
                hit = [r for r in recs if (r["method"], r["mask"], r["n"]) == (m, kind, n)]
                cells.append(f"{hit[0]['median_s'] * 1e3:.1f} ({hit[0]['gflops']:.1f}, "
                             f"+{hit[0]['peak_extra_mb']:.0f})" if hit else "-")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Summary", "", "```json", json.dumps(result["summary"], indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per case (each method once per round)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, kind, n, reps = args.child
        print(json.dumps(child(method, kind, int(n), int(reps))))
        return

    sizes = [256, 512] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
    try:
        import torch  # noqa: F401

        peers = ["attnkit", "numpy", "torch"]
    except ImportError:
        peers = ["attnkit", "numpy"]
        print("torch not installed: measuring attnkit and NumPy only", file=sys.stderr)
    cases = []
    for kind in ("full", "causal", "local"):
        for n in sizes:
            methods = [m for m in peers
                       if not (m == "numpy" and n > NUMPY_MAX_N)
                       # dense boolean mask; torch has no banded kernel on CPU
                       and not (m == "torch" and kind == "local" and n > 8192)]
            cases.append((kind, n, methods))
    records = []
    started = time.time()
    load_before = os.getloadavg()
    for i, (kind, n, methods) in enumerate(cases, 1):
        # Rounds alternate the methods, so a change in the machine's load
        # (it may be shared) hits every method alike; medians over all rounds.
        reps = 3 if n <= 4096 else 2
        runs = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                runs[m].append(run_child(m, kind, n, reps, timeout=900))
        for m in methods:
            rec = finish_record(m, kind, n, runs[m])
            records.append(rec)
            shown = (f"{rec['median_s'] * 1e3:9.1f} ms {rec['gflops']:7.1f} GFLOP/s "
                     f"peak+{rec['peak_extra_mb']:.0f} MB" if "median_s" in rec else rec["error"])
            print(f"[{i}/{len(cases)}] {m:8s} {kind:6s} n={n:6d} {shown}", flush=True)
    result = {
        "benchmark": "cpu_attention",
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "rounds": args.rounds,
        "wall_s": time.time() - started,
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "machine": machine(),
        "flops_formula": "4*B*H*d*allowed_pairs (allowed_pairs = n*m dense, n(n+1)/2 causal)",
        "records": records,
        "summary": summarise(records),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((args.output, json.dumps(result, indent=1)),
                       (args.output.with_suffix(".md"), render_markdown(result))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
