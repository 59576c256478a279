"""GPU attention benchmark: attnkit CUDA vs torch SDPA vs naive attention, one run.

Writes paper/results/gpu_attention_<gpu>.json (``<gpu>`` from the device
name, e.g. ``nvidia_h100_80gb_hbm3``). Side by side, in one run on one GPU:

* ``attnkit``: ``ak.attention`` (float32 in, float32 math) on device arrays;
* ``attnkit_stats``: ``ak.attention_stats`` (entropy, received, max/argmax,
  distance; exact, streaming) on the same inputs;
* ``torch_sdpa_fp32`` / ``torch_sdpa_fp16``: ``scaled_dot_product_attention``
  (float16 runs on tensor cores: reference only, not a like-for-like peer);
* ``naive_fp32``: ``softmax(q @ k.T * scale) @ v`` in torch, float32.

Cases: B*H = 16 (B=1, H=16), d in {64, 128}, n = m in 1024..32768, causal and
not. Then the largest n (doubling from 32768) each method runs at d = 64
within the time limit, and ``attention_stats`` at n = 131072.

FLOPs follow DESIGN.md: ``4 * B * H * d * pairs`` with ``pairs = n * m``
(``n (n + 1) / 2`` causal); attention_stats is reported against the same
count (its cost relative to the forward is the ``stats_over_forward``
ratio). Times are medians of repeated, synchronised runs after a warm-up
(which also compiles the Numba kernels). Peak device memory is the peak
allocated beyond the inputs: torch's ``max_memory_allocated``, and for
attnkit a counting Numba memory manager (inputs and outputs included in the
count; the kernels allocate nothing else). Each method family runs in its
own child process so one allocator cannot starve the other.

Usage::

    python paper/benchmarks/gpu_attention.py              # full run (H100: ~15 min)
    python paper/benchmarks/gpu_attention.py --quick      # small sizes, a minute
    python paper/benchmarks/gpu_attention.py --dry-run    # print the plan; no GPU needed
    python paper/benchmarks/gpu_attention.py --subset check   # the cases of make gpu-check
    python paper/benchmarks/gpu_attention.py --sweep      # time candidate tilings (tuning)
    compute-sanitizer --tool memcheck python paper/benchmarks/gpu_attention.py --sanitize
    compute-sanitizer --tool racecheck python paper/benchmarks/gpu_attention.py --sanitize
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "paper" / "results"
B, H = 1, 16
DIMS = (64, 128)
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
QUICK_LENGTHS = (1024, 2048)
MAX_N_START, MAX_N_LIMIT = 32768, 524288
STATS_LONG_N = 131072
METHODS = ("attnkit", "attnkit_stats", "torch_sdpa_fp32", "torch_sdpa_fp16", "naive_fp32")
FAMILY = {"attnkit": "attnkit", "attnkit_stats": "attnkit", "torch_sdpa_fp32": "torch",
          "torch_sdpa_fp16": "torch", "naive_fp32": "torch"}
GOALS = {"forward_tflops_fp32_n4096_d64": 33.0, "stats_over_forward_max": 2.5}


def flops(n: int, d: int, causal: bool) -> float:
    pairs = n * (n + 1) // 2 if causal else n * n
    return 4.0 * B * H * d * pairs


#: ``--subset check`` (``make gpu-check``): the cases that answer "is it fast and right on this
#: GPU?" within minutes: d 64 and 128, n 4096 and 16384, full and causal, against torch's
#: float32 SDPA, stats against the forward, and the long stats run.
CHECK_METHODS = ("attnkit", "attnkit_stats", "torch_sdpa_fp32")
CHECK_LENGTHS = (4096, 16384)


def check_plan() -> list[dict]:
    cases = [dict(method=method, d=d, n=n, causal=causal, probe=False)
             for method in CHECK_METHODS for d in DIMS for causal in (False, True)
             for n in CHECK_LENGTHS]
    return cases + [dict(method="attnkit_stats", d=64, n=STATS_LONG_N, causal=True, probe=False)]


def plan(quick: bool) -> list[dict]:
    """Every (method, d, n, causal) case, then the largest-n probes."""
    lengths = QUICK_LENGTHS if quick else LENGTHS
    cases = [dict(method=method, d=d, n=n, causal=causal, probe=False)
             for method in METHODS for d in DIMS for causal in (False, True) for n in lengths]
    if not quick:
        n = MAX_N_START
        while n <= MAX_N_LIMIT:
            cases += [dict(method=m, d=64, n=n, causal=False, probe=True) for m in METHODS]
            n *= 2
    return cases


# ------------------------------------------------------------------- child
class _Counter:
    live = 0
    peak = 0

    @classmethod
    def freed(cls, size):
        cls.live -= size


def _install_counting_manager():
    """Count Numba device allocations (must run before the CUDA context exists)."""
    from numba import cuda
    from numba.cuda.cudadrv.driver import NumbaCUDAMemoryManager

    class Counting(NumbaCUDAMemoryManager):
        def memalloc(self, size):
            mem = super().memalloc(size)
            _Counter.live += size
            _Counter.peak = max(_Counter.peak, _Counter.live)
            weakref.finalize(mem, _Counter.freed, size)
            return mem

    cuda.set_memory_manager(Counting)


def _timed(fn, sync, reps: int, budget_s: float) -> list[float]:
    fn()  # warm-up (compiles on first use)
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        if sum(times) > budget_s:
            break
    return times


def _attnkit_case(case: dict, reps: int, budget_s: float) -> dict:
    import numpy as np
    from numba import cuda

    import attnkit as ak

    n, d = case["n"], case["d"]
    rng = np.random.default_rng(n + d)
    base = _Counter.live
    q, k, v = (cuda.to_device(rng.standard_normal((B, H, n, d), dtype=np.float32))
               for _ in range(3))
    inputs = _Counter.live - base
    if case["method"] == "attnkit":
        def fn():
            return ak.attention(q, k, v, causal=case["causal"], check_finite=False)
    else:
        def fn():
            return ak.attention_stats(q, k, causal=case["causal"], check_finite=False)
    _Counter.peak = _Counter.live
    times = _timed(fn, cuda.synchronize, reps, budget_s)
    return {"times_s": times, "peak_extra_mb": (_Counter.peak - _Counter.live) / 2**20,
            "inputs_mb": inputs / 2**20}


def _torch_case(case: dict, reps: int, budget_s: float) -> dict:
    import torch

    n, d = case["n"], case["d"]
    dtype = torch.float16 if case["method"] == "torch_sdpa_fp16" else torch.float32
    gen = torch.Generator(device="cuda").manual_seed(n + d)
    q, k, v = (torch.randn((B, H, n, d), device="cuda", dtype=dtype, generator=gen)
               for _ in range(3))
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 math
    torch.backends.cudnn.allow_tf32 = False
    if case["method"] == "naive_fp32":
        scale = d ** -0.5
        mask = None
        if case["causal"]:
            mask = torch.ones((n, n), dtype=torch.bool, device="cuda").tril()

        def fn():
            s = (q @ k.transpose(-1, -2)) * scale
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            return torch.softmax(s, dim=-1) @ v
    else:
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def fn():
            return sdpa(q, k, v, is_causal=case["causal"])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    times = _timed(fn, torch.cuda.synchronize, reps, budget_s)
    return {"times_s": times,
            "peak_extra_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}


def child(family: str, cases: list[dict], reps: int, budget_s: float) -> None:
    if family == "attnkit":
        _install_counting_manager()
    run = _attnkit_case if family == "attnkit" else _torch_case
    failed_at: dict = {}  # method -> smallest n that failed (probes stop there)
    for case in cases:
        if case["probe"] and case["n"] >= failed_at.get(case["method"], 1 << 62):
            continue
        record = dict(case)
        try:
            record.update(run(case, 1 if case["probe"] else reps, budget_s))
            if case["probe"] and statistics.median(record["times_s"]) > budget_s:
                failed_at[case["method"]] = case["n"] * 2
        except Exception as exc:  # out of memory, launch failure: record and go on
            record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            if case["probe"]:
                failed_at[case["method"]] = case["n"]
            if family == "torch":
                import torch

                torch.cuda.empty_cache()
        print(json.dumps(record), flush=True)


# ------------------------------------------------------------------ parent
def gpu_name() -> str | None:
    """The first GPU's name, or None (never raises)."""
    try:
        from numba import cuda

        if not cuda.is_available():
            return None
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None


def machine(name: str) -> dict:
    import numba
    import numpy

    import attnkit

    info = {"gpu": name, "python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "attnkit": attnkit.__version__}
    try:
        import numba_cuda

        info["numba_cuda"] = numba_cuda.__version__
    except (ImportError, AttributeError):
        info["numba_cuda"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
    except ImportError:
        info["torch"] = None
    return info


def run_family(family: str, cases: list[dict], reps: int, budget_s: float,
               timeout: float) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", family, "--reps", str(reps),
           "--budget", str(budget_s)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(json.dumps(cases), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = {(r["method"], r["d"], r["n"], r["causal"], r["probe"]) for r in records}
    for case in cases:  # cases the child never reached (crash, timeout)
        if (case["method"], case["d"], case["n"], case["causal"], case["probe"]) not in done:
            records.append(dict(case, error=f"not run (child exit {proc.returncode})"))
    for r in records:
        if r.get("times_s"):
            r["median_s"] = statistics.median(r["times_s"])
            r["tflops"] = flops(r["n"], r["d"], r["causal"]) / r["median_s"] / 1e12
    return records


def summarise(records: list[dict]) -> dict:
    def get(method, d, n, causal, probe=False):
        for r in records:
            if (r["method"], r["d"], r["n"], r["causal"], r["probe"]) == (method, d, n, causal,
                                                                         probe):
                return r if "median_s" in r else None
        return None

    summary: dict = {"vs_torch_sdpa_fp32": {}, "stats_over_forward": {}, "largest_n": {}}
    for r in records:
        if r["method"] != "attnkit" or r["probe"] or "median_s" not in r:
            continue
        key = f"d{r['d']}_n{r['n']}_{'causal' if r['causal'] else 'full'}"
        peer = get("torch_sdpa_fp32", r["d"], r["n"], r["causal"])
        if peer:
            summary["vs_torch_sdpa_fp32"][key] = peer["median_s"] / r["median_s"]
        stats = get("attnkit_stats", r["d"], r["n"], r["causal"])
        if stats:
            summary["stats_over_forward"][key] = stats["median_s"] / r["median_s"]
    for method in METHODS:
        ran = [r["n"] for r in records if r["method"] == method and "median_s" in r]
        summary["largest_n"][method] = max(ran) if ran else None
    fwd = [r["tflops"] for r in records if r["method"] == "attnkit" and r["d"] == 64
           and r["n"] >= 4096 and not r["probe"] and "tflops" in r]
    ratios = list(summary["stats_over_forward"].values())
    summary["goals"] = {
        "forward_tflops_fp32_n>=4096_d64_min": min(fwd) if fwd else None,
        "forward_goal_33_tflops_met": bool(fwd) and min(fwd) >= 33.0,
        "at_least_torch_sdpa_fp32": bool(summary["vs_torch_sdpa_fp32"]) and
        min(summary["vs_torch_sdpa_fp32"].values()) >= 1.0,
        "stats_within_2.5x_forward": bool(ratios) and max(ratios) <= 2.5,
        "stats_n131072_ran": any(r["method"] == "attnkit_stats" and r["n"] >= STATS_LONG_N
                                 and "median_s" in r for r in records),
    }
    return summary


def sweep(reps: int) -> list[dict]:
    """Time candidate tilings on this GPU (forward, float32, n = 8192, B*H = 16)."""
    import numpy as np
    from numba import cuda

    import attnkit as ak
    from attnkit.kernels.cuda import api, runtime
    from attnkit.kernels.cuda.tiling import Tiling, fits

    out = []
    n = 8192
    for d in DIMS:
        rng = np.random.default_rng(d)
        q, k, v = (cuda.to_device(rng.standard_normal((B, H, n, d), dtype=np.float32))
                   for _ in range(3))
        for shape in [(16, 16, 8, 4), (16, 16, 4, 4), (16, 16, 4, 8), (8, 16, 8, 4),
                      (8, 16, 4, 4), (16, 16, 8, 8), (32, 16, 4, 4), (8, 32, 8, 2),
                      (16, 8, 4, 8)]:
            t = Tiling(*shape)
            if not fits(t, d, d, 4, runtime.max_shared_bytes()):
                continue
            with api.use_tiling(t):
                try:
                    times = _timed(lambda: ak.attention(q, k, v, check_finite=False),
                                   cuda.synchronize, reps, 30.0)
                except Exception as exc:
                    out.append({"d": d, "tiling": shape, "error": str(exc)[:200]})
                    continue
            med = statistics.median(times)
            out.append({"d": d, "tiling": shape, "median_s": med,
                        "tflops": flops(n, d, False) / med / 1e12})
            print(json.dumps(out[-1]), flush=True)
    return out


def sanitize() -> None:
    """Small runs of every kernel kind, for compute-sanitizer memcheck / racecheck."""
    import numpy as np

    import attnkit as ak

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, s, 64), dtype=np.float32) for s in (333, 290, 290))
    masks = [None, ak.masks.local(50) & ak.masks.causal(), ak.masks.strided(7)]
    for mask in masks:
        kw = dict(mask=mask, q_lengths=np.array([333, 100]), kv_lengths=np.array([0, 290]),
                  backend="cuda")
        ak.attention(q, k, v, return_lse=True, **kw)
        ak.attention_weights(q, k, **kw)
        ak.attention_stats(q, k, topk=4, **kw)
    half = [x.astype(np.float16) for x in (q, k, v)]
    ak.attention(*half, causal=True, backend="cuda")
    ak.attention(*(x[..., :128].astype(np.float64) for x in (q, k, v)), backend="cuda")
    print("sanitize run complete")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--subset", choices=("check",), default=None,
                        help="'check': the few cases make gpu-check runs")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--sweep", action="store_true", help="time candidate tilings")
    parser.add_argument("--sanitize", action="store_true",
                        help="small runs of every kernel (under compute-sanitizer)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per case before stopping repetitions / probes")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: by GPU)")
    parser.add_argument("--child", choices=("attnkit", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child(args.child, json.loads(sys.stdin.read()), args.reps, args.budget)
        return 0
    cases = check_plan() if args.subset == "check" else plan(args.quick)
    if args.dry_run:
        methods = tuple(dict.fromkeys(c["method"] for c in cases))
        print(f"{len(cases)} cases, B*H = {B * H}, d in {DIMS}, methods {methods}")
        for case in cases[:8]:
            print("  ", case, f"{flops(case['n'], case['d'], case['causal']) / 1e12:.3f} TFLOP")
        print("   ...")
        return 0
    name = gpu_name()
    if name is None:
        print("gpu_attention: no CUDA GPU is available (numba.cuda.is_available() is False); "
              "nothing measured. Run it on a GPU machine, or use --dry-run.", file=sys.stderr)
        return 2
    if args.sanitize:
        sanitize()
        return 0
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    start = time.time()
    if args.sweep:
        result = {"benchmark": "gpu_attention_sweep", "machine": machine(name),
                  "records": sweep(args.reps)}
        out = args.out or RESULTS / f"gpu_attention_sweep_{slug}.json"
    else:
        records = []
        for family in ("attnkit", "torch"):
            try:
                import torch  # noqa: F401
            except ImportError:
                if family == "torch":
                    continue
            mine = [c for c in cases if FAMILY[c["method"]] == family]
            if family == "attnkit" and not args.quick and args.subset is None:
                mine.append(dict(method="attnkit_stats", d=64, n=STATS_LONG_N, causal=True,
                                 probe=False))
            records += run_family(family, mine, args.reps, args.budget, timeout=4 * 3600)
        result = {
            "benchmark": "gpu_attention", "date": time.strftime("%Y-%m-%d"),
            "quick": args.quick, "subset": args.subset, "wall_s": time.time() - start, "machine": machine(name),
            "B": B, "H": H,
            "flops_formula": "4*B*H*d*pairs (pairs = n*m, n(n+1)/2 causal)",
            "goals": GOALS, "summary": summarise(records), "records": records,
        }
        out = args.out or RESULTS / f"gpu_attention_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
