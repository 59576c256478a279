"""CPU attention grid (issue 20): attnkit vs torch SDPA (float32) and NumPy (float64), one run.

Writes paper/results/cpu_grid.json and cpu_grid.md. For every cell (shape
B x H x n x d, full or causal mask, dtype) the median time of
``ak.attention`` and of its peer in the same run, GFLOP/s of each, the
attnkit/peer speed ratio, and the same-run sgemm rate (NumPy float32
``4096^3`` matmul, measured between the shapes all through the run) with
attnkit's share of it.

* Peers: float32 cells against ``torch.nn.functional.scaled_dot_product_attention``
  on the CPU with ``torch.set_num_threads`` equal to attnkit's thread count;
  float64 cells against a plain NumPy ``softmax(q k^T / sqrt(d)) v``, skipped
  where its score array (B*H*n*n float64) would exceed :data:`NUMPY_MAX_BYTES`.
  Without torch the float32 cells carry attnkit's figures only (the JSON and the
  table say so).
* Processes: each method runs in a long-lived worker process of its own
  (attnkit, torch, numpy), driven over a pipe, so that one library's thread
  pool never spins on the cores while another is timed, and each worker reports
  the peak memory of a cell's first full-size call (``VmHWM - VmRSS``, the
  high-water mark reset once the inputs exist, the kernels are loaded and
  glibc has returned earlier cells' free pages: ``malloc_trim``; see
  procmem.py), and the minor page faults of its timed calls (fresh memory
  touched: costly in a virtual machine). Idle workers block on the pipe; the parent waits
  :data:`SETTLE_S` (:data:`SETTLE_BLAS_S` after an OpenBLAS call, whose threads
  spin for a while) before each timed slot.
* Correct first: before any cell is timed, each method's warm-up output is
  checked against its peer's (max abs difference relative to the peer's
  max |out|: at most 1e-4 in float32, 1e-10 in float64) and, for both, against
  a float64 NumPy reference on sampled query rows (a check that needs no torch).
* Alternation: within each round a cell's methods run A B B A (the next round
  B A A B), each slot a few calls of a short cell; medians over all calls of all
  rounds. The largest cells get fewer rounds (:func:`plan`) to keep the full grid
  within about 20 minutes on 2 cores. 1-minute load averages are recorded at the
  start, the end and before each cell; a shared machine shows in them.

FLOPs follow DESIGN.md: ``4 * B * H * n * m * d`` forward, half of it causal.

OpenBLAS tuning variables (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) slow NumPy's
BLAS on the reference machines: they are removed from this process's
environment (so from its workers') before NumPy loads; the JSON says which
were set. Tests and CI keep them.

Usage::

    python paper/benchmarks/cpu_grid.py                 # the full grid, ~15-20 min on 2 cores
    python paper/benchmarks/cpu_grid.py --quick         # tiny shapes, seconds (smoke test)
    python paper/benchmarks/cpu_grid.py --only "float32 .* 1x8x4096x"   # regex on cell names
"""

from __future__ import annotations

import os

# Before NumPy (and its OpenBLAS) is imported: this process only (and its workers).
from benchenv import environment_unset, write_atomic  # noqa: E402

import argparse
import gc
import json
import platform
import re
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from procmem import reset_peak, vm_kb

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "cpu_grid.json"

#: (B, H, n, d) of the grid, in the order they run (issue 20).
SHAPES = [(32, 12, 128, 64), (8, 12, 512, 64), (1, 32, 1024, 128)] + [
    (1, 8, n, d) for n in (2048, 4096, 8192, 16384) for d in (64, 128)]
#: --quick: tiny and ragged (n not a multiple of any tile), seconds in all.
QUICK_SHAPES = [(2, 3, 64, 32), (1, 2, 200, 64)]
MASKS = ("full", "causal")
#: float64 cells are skipped where NumPy's (B, H, n, n) float64 scores would pass this.
NUMPY_MAX_BYTES = 4e9
#: Relative tolerance of the output checks (max abs difference / max |reference|).
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
#: Guessed rates (FLOP/s) that size the number of calls per cell, never reported.
PLAN_RATE = {"float32": 150e9, "float64": 50e9}
#: Seconds one timed slot aims at (short cells run several calls per slot).
SLOT_S = 0.25
#: Seconds of calls one cell may take, all methods and rounds together (at least 2 rounds).
CELL_BUDGET_S = 40.0
#: Pause before each timed slot, and after the numpy worker's calls (OpenBLAS spins longer).
SETTLE_S = 0.05
SETTLE_BLAS_S = 0.3
#: Query rows per (batch, head) pair, and pairs, of the float64 reference check.
SAMPLE_ROWS, SAMPLE_PAIRS = 64, 3


# ------------------------------------------------------------------ cells
def cell_name(cell: dict) -> str:
    return f"{cell['dtype']} {cell['mask']} {cell['B']}x{cell['H']}x{cell['n']}x{cell['d']}"


def flops(cell: dict) -> float:
    """DESIGN.md: 4 * B * H * n * m * d forward, half of it for a causal mask."""
    full = 4.0 * cell["B"] * cell["H"] * cell["n"] * cell["n"] * cell["d"]
    return full / 2 if cell["mask"] == "causal" else full


def make_inputs(cell: dict):
    """q, k, v (B, H, n, d) standard normal, the same in every process for a cell."""
    rng = np.random.default_rng(zlib.crc32(cell_name(cell).encode()))
    shape = (cell["B"], cell["H"], cell["n"], cell["d"])
    dtype = np.dtype(cell["dtype"])
    return tuple(rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
                 for _ in range(3))


def numpy_score_bytes(cell: dict) -> float:
    return 8.0 * cell["B"] * cell["H"] * cell["n"] * cell["n"]


def plan(cell: dict, rounds: int) -> tuple[int, int]:
    """(rounds, calls per slot) for a cell: ~SLOT_S per slot, ~CELL_BUDGET_S per cell."""
    est = flops(cell) / PLAN_RATE[cell["dtype"]]
    calls = max(1, min(8, round(SLOT_S / est)))
    budget_rounds = int(CELL_BUDGET_S / (4 * calls * est))  # 4 slots a round
    return max(2, min(rounds, budget_rounds)), calls


# ----------------------------------------------------------------- workers
def _make_runner(method: str, cell: dict, q, k, v, threads: int):
    causal = cell["mask"] == "causal"
    if method == "attnkit":
        import attnkit as ak

        return lambda: ak.attention(q, k, v, causal=causal, check_finite=False)
    if method == "torch":
        import torch

        torch.set_num_threads(threads)
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def run():
            with torch.no_grad():
                return sdpa(tq, tk, tv, is_causal=causal)

        return run
    if method == "numpy":  # a plain softmax(q k^T / sqrt(d)) v
        n = q.shape[-2]
        scale = q.dtype.type(1 / np.sqrt(q.shape[-1]))
        kt = np.swapaxes(k, -1, -2)
        bias = np.triu(np.full((n, n), -np.inf, dtype=q.dtype), 1) if causal else None

        def run():
            s = q @ kt
            s *= scale
            if bias is not None:
                s += bias
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            return s @ v

        return run
    raise ValueError(method)


def _kernel_plan(cell: dict, q, k, v) -> dict:
    """How attnkit's CPU forward kernel splits this cell (tasks, tile sizes); diagnostics only."""
    try:
        from attnkit._prepare import prepare
        from attnkit.kernels.cpu import api
        from attnkit.kernels.cpu import attention as kernels

        p = prepare(q, k, v, causal=cell["mask"] == "causal", check_finite=False)
        rows, cols = api.block_q(p), api.block_k(p)
        tasks = api._query_tasks(p, rows)
        plan = {"problems": p.n_problems, "block_q": rows, "block_k": cols, "tasks": tasks,
                "key_tiles_per_task": -(-p.m // cols)}
        if p.q.dtype == np.float32:  # float64 tiles read the keys in place (BLAS)
            per_task = kernels.packs_in_tasks.py_func(tasks, p.k.shape[0], p.ops.shape[0] > 0)
            plan["keys_packed"] = "per task" if per_task else "per call (kept buffer)"
        return plan
    except Exception as exc:  # noqa: BLE001 - internals moved: the benchmark still runs
        return {"error": f"{type(exc).__name__}: {exc}"}


def _versions(method: str) -> dict:
    info = {"numpy": np.__version__}
    if method == "attnkit":
        import numba

        import attnkit

        info.update(attnkit=attnkit.__version__, numba=numba.__version__,
                    numba_threads=numba.config.NUMBA_NUM_THREADS)
    elif method == "torch":
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_parallel_info=torch.__config__.parallel_info().strip().splitlines()[:4])
    else:
        try:
            from threadpoolctl import threadpool_info

            info["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads",
                                                      "architecture")}
                            for lib in threadpool_info() if lib.get("user_api") == "blas"]
        except ImportError:
            pass
    return info


def _malloc_trim() -> None:
    """Return glibc's free heap pages to the system (nothing elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def worker(method: str, threads: int) -> None:
    """Serve JSON requests from stdin, one reply line each, on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    state: dict = {}
    if method == "torch":
        import torch

        torch.set_num_threads(threads)
    elif method == "attnkit":
        import attnkit  # noqa: F401  (kernels load from the disk cache at the first call)
    proto.write(json.dumps({"ready": True, **_versions(method)}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = _handle(method, threads, msg, state)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, recorded for the cell
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply) + "\n")
        if msg["op"] == "quit":
            return


def _handle(method: str, threads: int, msg: dict, state: dict) -> dict:
    op = msg["op"]
    if op == "quit":
        return {}
    if op == "setup":
        state.clear()
        gc.collect()
        cell = msg["cell"]
        q, k, v = make_inputs(cell)
        small = min(cell["n"], 64)
        _make_runner(method, cell, *(x[:1, :1, :small] for x in (q, k, v)), threads)()
        run = _make_runner(method, cell, q, k, v, threads)
        # Peak memory of the first full-size call beyond inputs and code: free heap pages
        # left by earlier cells go back to the system first, so reusing them shows.
        gc.collect()
        _malloc_trim()
        before_kb = vm_kb("VmRSS")
        peak_ok = reset_peak()
        start = time.perf_counter()
        out = run()
        first_s = time.perf_counter() - start
        peak_mb = (vm_kb("VmHWM") - before_kb) / 1024 if peak_ok else None
        out = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
        np.save(msg["save"], out)
        del out
        state.update(run=run, inputs=(q, k, v))
        reply = {"first_call_s": first_s, "peak_extra_mb": peak_mb}
        if method == "attnkit":
            reply["kernel_plan"] = _kernel_plan(cell, q, k, v)
        return reply
    if op == "time":
        run = state["run"]
        times, cpu = [], []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(msg["calls"]):
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        return {"times_s": times, "cpu_s": cpu, "minor_faults": faults}
    if op == "drop":
        state.clear()
        gc.collect()
        return {}
    if op == "sgemm":  # float32 size^3 matmul, `calls` times after one warm-up
        size = msg["size"]
        if method == "torch":
            import torch

            a, b = torch.randn(size, size), torch.randn(size, size)
            c = torch.empty(size, size)
            mm = lambda: torch.mm(a, b, out=c)
        else:
            rng = np.random.default_rng(0)
            a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
            c = np.empty((size, size), dtype=np.float32)
            mm = lambda: np.matmul(a, b, out=c)
        mm()
        times = []
        for _ in range(msg["calls"]):
            t0 = time.perf_counter()
            mm()
            times.append(time.perf_counter() - t0)
        return {"times_s": times, "gflops": [2.0 * size ** 3 / t / 1e9 for t in times]}
    raise ValueError(op)


class Worker:
    """A worker process of one method, driven over its stdin/stdout."""

    def __init__(self, method: str, threads: int) -> None:
        self.method = method
        env = dict(os.environ)
        env["NUMBA_NUM_THREADS"] = str(threads)
        if method == "numpy":
            env["OPENBLAS_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", method, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read(600)

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"{self.method} worker gave no answer"
                               + (f" within {timeout:.0f} s" if not ready else " (it exited)"))
        return json.loads(line)

    def call(self, timeout: float = 1800, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def start_workers(threads: int, want_torch: bool) -> tuple[dict, str | None]:
    workers = {"attnkit": Worker("attnkit", threads), "numpy": Worker("numpy", threads)}
    note = None
    if not want_torch:
        note = "torch not measured (--no-torch): float32 cells carry attnkit's figures only"
    else:
        try:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                raise RuntimeError("torch is not installed in this Python")
            workers["torch"] = Worker("torch", threads)
        except RuntimeError as exc:
            note = f"torch not measured ({exc}): float32 cells carry attnkit's figures only"
    return workers, note


# ------------------------------------------------------------------ checks
def sampled_reference_errors(cell: dict, outputs: dict) -> dict:
    """Each method's max abs error against float64 NumPy on sampled query rows (and the scale)."""
    q, k, v = make_inputs(cell)
    B, H, n, d = (cell[x] for x in "BHnd")
    pairs = sorted({(0, 0), (B - 1, H - 1), (B // 2, H // 2)})[:SAMPLE_PAIRS]
    rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).astype(np.int64))
    errs = {m: 0.0 for m in outputs}
    ref_max = 0.0
    for b, h in pairs:
        s = (q[b, h, rows].astype(np.float64) @ k[b, h].astype(np.float64).T) / np.sqrt(d)
        if cell["mask"] == "causal":
            s[np.arange(n)[None, :] > rows[:, None]] = -np.inf
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        ref = (s / s.sum(axis=-1, keepdims=True)) @ v[b, h].astype(np.float64)
        ref_max = max(ref_max, float(np.abs(ref).max()))
        for m, out in outputs.items():
            errs[m] = max(errs[m], float(np.abs(out[b, h, rows].astype(np.float64) - ref).max()))
    return {"max_abs_ref": ref_max, "max_abs_err": errs, "rows_per_pair": len(rows),
            "pairs": [list(p) for p in pairs]}


def check_cell(cell: dict, files: dict, peer: str | None) -> dict:
    tol = TOLERANCE[cell["dtype"]]
    outputs = {m: np.load(path, mmap_mode="r") for m, path in files.items()}
    sampled = sampled_reference_errors(cell, outputs)
    check = {"tolerance_rel": tol, "vs_float64_sampled": sampled}
    ok = all(e <= tol * sampled["max_abs_ref"] for e in sampled["max_abs_err"].values())
    if peer is not None:
        ref = outputs[peer]
        scale = float(np.abs(ref).max())
        err = float(np.abs(outputs["attnkit"].astype(np.float64) - ref).max())
        check.update(peer=peer, max_abs_err_vs_peer=err, peer_max_abs_out=scale,
                     rel_err_vs_peer=err / scale if scale else err)
        ok = ok and err <= tol * scale
    check["passed"] = bool(ok)
    return check


# ------------------------------------------------------------------- parent
def measure_sgemm(workers: dict, size: int, label: str, samples: list, torch_too=False) -> None:
    time.sleep(SETTLE_S)
    rec = workers["numpy"].call(op="sgemm", size=size, calls=3)
    rec.update(after=label, at_s=time.time(), load_1min=os.getloadavg()[0], library="numpy")
    if "error" not in rec:
        rec["median_gflops"] = statistics.median(rec["gflops"])
        print(f"  sgemm {size}^3 numpy: {rec['median_gflops']:.1f} GFLOP/s ({label})", flush=True)
    samples.append(rec)
    time.sleep(SETTLE_BLAS_S)
    if torch_too and "torch" in workers:
        rec = workers["torch"].call(op="sgemm", size=size, calls=3)
        rec.update(after=label, at_s=time.time(), load_1min=os.getloadavg()[0], library="torch")
        if "error" not in rec:
            rec["median_gflops"] = statistics.median(rec["gflops"])
            print(f"  sgemm {size}^3 torch: {rec['median_gflops']:.1f} GFLOP/s ({label})",
                  flush=True)
        samples.append(rec)


def run_cell(cell: dict, workers: dict, rounds: int, tmp: Path) -> dict:
    name = cell_name(cell)
    peer = "torch" if cell["dtype"] == "float32" else "numpy"
    record = {"cell": name, **cell, "flops": flops(cell), "load_1min_before": os.getloadavg()[0]}
    if peer not in workers:
        peer = None
    methods = ["attnkit"] + ([peer] if peer else [])
    n_rounds, calls = plan(cell, rounds)
    record.update(rounds=n_rounds, calls_per_slot=calls, peer=peer)
    files, setups = {}, {}
    for m in methods:
        files[m] = tmp / f"{m}.npy"
        setups[m] = workers[m].call(op="setup", cell=cell, save=str(files[m]))
        if m == "numpy":
            time.sleep(SETTLE_BLAS_S)
    failed = {m: s["error"] for m, s in setups.items() if "error" in s}
    if failed:
        record["error"] = failed
        for m in methods:
            workers[m].call(op="drop")
        return record
    record["kernel_plan"] = setups["attnkit"].get("kernel_plan")
    record["check"] = check_cell(cell, files, peer)
    for path in files.values():
        path.unlink(missing_ok=True)
    runs = {m: {"times_s": [], "cpu_s": [], "minor_faults": 0} for m in methods}
    for r in range(n_rounds):
        order = methods + methods[::-1]  # A B B A
        if r % 2:
            order = order[::-1]  # B A A B: no method always goes first
        for m in order:
            time.sleep(SETTLE_S)
            got = workers[m].call(op="time", calls=calls)
            if "error" in got:
                record.setdefault("error", {})[m] = got["error"]
                break
            runs[m]["times_s"] += got["times_s"]
            runs[m]["cpu_s"] += got["cpu_s"]
            runs[m]["minor_faults"] += got["minor_faults"]
            if m == "numpy":
                time.sleep(SETTLE_BLAS_S)
    for m in methods:
        res = runs[m]
        res["first_call_s"] = setups[m]["first_call_s"]
        res["peak_extra_mb"] = setups[m]["peak_extra_mb"]
        workers[m].call(op="drop")
        if res["times_s"]:
            res["median_s"] = statistics.median(res["times_s"])
            res["gflops"] = flops(cell) / res["median_s"] / 1e9
            res["cpu_per_wall"] = statistics.median(
                c / t for c, t in zip(res["cpu_s"], res["times_s"]))
            # page faults per timed call: fresh memory the call touched (costly in a VM)
            res["minor_faults_per_call"] = res.pop("minor_faults") / len(res["times_s"])
        record[m] = res
    if peer and "median_s" in record["attnkit"] and "median_s" in record[peer]:
        record["speed_ratio"] = record[peer]["median_s"] / record["attnkit"]["median_s"]
    return record


def add_sgemm(records: list[dict], samples: list[dict]) -> dict:
    """The run's sgemm median on every cell, attnkit's (and the peer's) share of it."""
    numpy_samples = [s for s in samples if s.get("library") == "numpy" and "median_gflops" in s]
    all_calls = [g for s in numpy_samples for g in s["gflops"]]
    run_median = statistics.median(all_calls) if all_calls else None
    for rec in records:
        if run_median is None or "attnkit" not in rec:
            continue
        rec["sgemm_gflops"] = run_median
        # the measurements just before and after this cell's shape
        near = [s["median_gflops"] for s in numpy_samples
                if s["after"] in (rec.get("sgemm_before"), rec.get("sgemm_after"))]
        if near:
            rec["sgemm_gflops_nearby"] = statistics.mean(near)
        for m in ("attnkit", rec.get("peer")):
            if m and "gflops" in rec.get(m, {}):
                rec[m]["pct_of_sgemm"] = 100 * rec[m]["gflops"] / run_median
    torch_calls = [g for s in samples if s.get("library") == "torch" and "gflops" in s
                   for g in s["gflops"]]
    return {"numpy_float32_median_gflops": run_median, "numpy_calls": len(all_calls),
            "torch_float32_median_gflops": statistics.median(torch_calls) if torch_calls else None}


def summarise(records: list[dict], torch_note: str | None) -> dict:
    done = [r for r in records if "attnkit" in r and "median_s" in r["attnkit"]]
    f32 = [r for r in done if r["dtype"] == "float32"]
    f64 = [r for r in done if r["dtype"] == "float64"]
    summary: dict = {"cells_timed": len(done),
                     "checks_failed": [r["cell"] for r in done if not r["check"]["passed"]]}
    if torch_note:
        summary["torch"] = torch_note
    for label, group in (("vs_torch", f32), ("vs_numpy", f64)):
        ratios = {r["cell"]: round(r["speed_ratio"], 3) for r in group if "speed_ratio" in r}
        if ratios:
            summary[f"ratio_{label}"] = ratios
            summary[f"min_ratio_{label}"] = min(ratios.values())
            summary[f"cells_below_1x_{label}"] = [c for c, x in ratios.items() if x < 1.0]
    pct = {r["cell"]: round(r["attnkit"]["pct_of_sgemm"], 1) for r in f32
           if "pct_of_sgemm" in r["attnkit"]}
    if pct:
        summary["attnkit_pct_of_sgemm_float32"] = pct
        summary["cells_n4096_up_below_60pct_sgemm"] = [
            r["cell"] for r in f32 if r["n"] >= 4096 and pct.get(r["cell"], 100) < 60]
    return summary


def render_markdown(result: dict) -> str:
    mach = result["machine"]
    sg = result["sgemm"]
    lines = [
        "# CPU attention grid (issue 20)",
        "",
        (f"Run {result['date']} on {mach['cpu']} ({mach['cores']} cores), {result['threads']} "
         f"threads for every method; attnkit {mach.get('attnkit')}, numba {mach.get('numba')}, "
         f"numpy {mach.get('numpy')}, torch {mach.get('torch')}. Inputs standard normal; "
         "FLOPs 4·B·H·n²·d (half for causal). Each method in its own worker process; per cell "
         "the methods alternate A B B A / B A A B over the rounds, medians of all calls "
         f"(rounds x calls per slot in the table). Wall time {result['wall_s'] / 60:.1f} min; "
         f"1-minute load average {result['load_average_1min']['start']:.1f} at the start, "
         f"{result['load_average_1min']['end']:.1f} at the end (on {mach['cores']} cores: more "
         "means other work shared the machine). OpenBLAS variables unset in this run: "
         f"{', '.join(result['environment_unset']['variables']) or 'none were set'}."),
        "",
        (f"sgemm: NumPy float32 {sg['size']}³ matmul, {sg['numpy_calls']} calls spread over the "
         f"run, median **{sg['numpy_float32_median_gflops']:.1f} GFLOP/s**"
         + (f" (torch.mm: {sg['torch_float32_median_gflops']:.1f})"
            if sg.get("torch_float32_median_gflops") else "")
         + "; “% sgemm” divides a method's GFLOP/s by the NumPy median; “sgemm nearby” is "
         "the mean of the measurements just before and after the cell's shape."),
        "",
    ]
    if result.get("torch_note"):
        lines += [f"**{result['torch_note']}.**", ""]
    lines += ["Regenerate: `python paper/benchmarks/cpu_grid.py` (with torch installed).", ""]

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for dtype, peer in (("float32", "torch"), ("float64", "numpy")):
        recs = [r for r in result["records"] if r["dtype"] == dtype]
        if not recs:
            continue
        lines += [f"## {dtype} (peer: {'torch SDPA' if peer == 'torch' else 'NumPy softmax(QKᵀ)V'})",
                  "",
                  (f"| cell B×H×n×d | mask | attnkit ms | {peer} ms | attnkit GFLOP/s | "
                   f"{peer} GFLOP/s | attnkit/{peer} speed | sgemm nearby | attnkit % sgemm | "
                   f"{peer} % sgemm | rel. err | peak MB ak/{peer} | faults/call ak/{peer} | "
                   "rounds×calls | load |"),
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in recs:
            shape = f"{r['B']}×{r['H']}×{r['n']}×{r['d']}"
            if "attnkit" not in r:
                why = r.get("skipped") or r.get("error")
                lines.append(f"| {shape} | {r['mask']} | " + " | ".join(["-"] * 12)
                             + f" | skipped: {why} |")
                continue
            a, p = r["attnkit"], r.get(peer, {})
            chk = r["check"]
            err = chk.get("rel_err_vs_peer")
            if err is None:
                s = chk["vs_float64_sampled"]
                err = s["max_abs_err"]["attnkit"] / s["max_abs_ref"] if s["max_abs_ref"] else 0
            err_s = f"{err:.1e}" + ("" if chk["passed"] else " **FAIL**")
            ratio = r.get("speed_ratio")
            lines.append(
                f"| {shape} | {r['mask']} | {fmt(a.get('median_s', 0) * 1e3, '.2f')} | "
                f"{fmt(p['median_s'] * 1e3 if 'median_s' in p else None, '.2f')} | "
                f"{fmt(a.get('gflops'), '.1f')} | {fmt(p.get('gflops'), '.1f')} | "
                f"{'**' if ratio is not None and ratio < 1 else ''}{fmt(ratio, '.2f')}"
                f"{'**' if ratio is not None and ratio < 1 else ''} | "
                f"{fmt(r.get('sgemm_gflops_nearby'), '.0f')} | {fmt(a.get('pct_of_sgemm'), '.0f')} | "
                f"{fmt(p.get('pct_of_sgemm'), '.0f')} | {err_s} | "
                f"{fmt(a.get('peak_extra_mb'), '.0f')}/{fmt(p.get('peak_extra_mb'), '.0f')} | "
                f"{fmt(a.get('minor_faults_per_call'), '.0f')}/"
                f"{fmt(p.get('minor_faults_per_call'), '.0f')} | "
                f"{r['rounds']}×{r['calls_per_slot']} | {r['load_1min_before']:.1f} |")
        lines.append("")
    lines += ["## Summary", "", "```json", json.dumps(result["summary"], indent=1), "```", ""]
    return "\n".join(lines)


def build_cells(quick: bool, only: str | None) -> list[dict]:
    cells = []
    for dtype in ("float32", "float64"):
        for B, H, n, d in (QUICK_SHAPES if quick else SHAPES):
            for mask in MASKS:
                cell = {"dtype": dtype, "mask": mask, "B": B, "H": H, "n": n, "d": d}
                if only is None or re.search(only, cell_name(cell)):
                    cells.append(cell)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes only (smoke test)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="A B B A rounds per cell (default 5, --quick 2); the largest "
                             "cells get fewer, never under 2")
    parser.add_argument("--only", metavar="PATTERN",
                        help="regular expression searched in the cell names, e.g. "
                             "'float32 causal 1x8x4096x64' or '16384'")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of every method (Numba, torch, OpenBLAS)")
    parser.add_argument("--no-torch", action="store_true",
                        help="do not measure torch even where it is installed")
    parser.add_argument("--sgemm-size", type=int, default=None,
                        help="side of the sgemm reference (default 4096, --quick 512)")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads)
        return
    rounds = args.rounds or (2 if args.quick else 5)
    sgemm_size = args.sgemm_size or (512 if args.quick else 4096)
    cells = build_cells(args.quick, args.only)
    if not cells:
        parser.error(f"--only {args.only!r} matches no cell")

    started = time.time()
    load_before = os.getloadavg()
    workers, torch_note = start_workers(args.threads, not args.no_torch)
    if torch_note:
        print(torch_note, file=sys.stderr)
    estimate = sum(4 * np.prod(plan(c, rounds)) * flops(c) / PLAN_RATE[c["dtype"]] for c in cells)
    print(f"{len(cells)} cells, about {estimate / 60:.1f} min of timed calls", flush=True)
    records, samples = [], []
    try:
        measure_sgemm(workers, sgemm_size, "start", samples, torch_too=True)
        with tempfile.TemporaryDirectory(prefix="cpu_grid_") as tmp:
            previous, pending = "start", []
            for i, cell in enumerate(cells, 1):
                name = cell_name(cell)
                if cell["dtype"] == "float64" and numpy_score_bytes(cell) > NUMPY_MAX_BYTES:
                    records.append({"cell": name, **cell, "skipped": (
                        f"NumPy's float64 scores need {numpy_score_bytes(cell) / 1e9:.1f} GB "
                        f"(> {NUMPY_MAX_BYTES / 1e9:.0f} GB)")})
                    print(f"[{i}/{len(cells)}] {name}: skipped", flush=True)
                    continue
                rec = run_cell(cell, workers, rounds, Path(tmp))
                rec["sgemm_before"] = previous
                records.append(rec)
                pending.append(rec)
                shown = " ".join(
                    f"{m} {rec[m]['median_s'] * 1e3:.2f} ms ({rec[m]['gflops']:.1f} GFLOP/s)"
                    for m in ("attnkit", rec.get("peer")) if m and "median_s" in rec.get(m, {}))
                ratio = f" x{rec['speed_ratio']:.2f}" if "speed_ratio" in rec else ""
                ok = "" if rec.get("check", {}).get("passed") else " CHECK FAILED"
                err = f" ERROR {rec['error']}" if "error" in rec else ""
                print(f"[{i}/{len(cells)}] {name}: {shown}{ratio}{ok}{err}", flush=True)
                # sgemm between shapes: after both masks of a shape (or the last cell)
                nxt = cells[i] if i < len(cells) else None
                same_shape = nxt is not None and all(nxt[x] == cell[x] for x in "BHnd") \
                    and nxt["dtype"] == cell["dtype"]
                if not same_shape:
                    measure_sgemm(workers, sgemm_size, name, samples)
                    for done in pending:
                        done["sgemm_after"] = name
                    previous, pending = name, []
            measure_sgemm(workers, sgemm_size, "end", samples, torch_too=True)
            for done in pending:
                done["sgemm_after"] = "end"
    finally:
        infos = {m: w.info for m, w in workers.items()}
        for w in workers.values():
            w.close()
    sgemm = {"size": sgemm_size, "threads": args.threads, "samples": samples,
             **add_sgemm(records, samples)}
    result = {
        "benchmark": "cpu_grid",
        "issue": 20,
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "only": args.only,
        "threads": args.threads,
        "rounds": rounds,
        "wall_s": time.time() - started,
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "environment_unset": environment_unset(),
        "machine": machine(infos, args.threads),
        "flops_formula": "4*B*H*n*m*d forward (m = n), half of it for causal",
        "tolerance_rel": TOLERANCE,
        "torch_note": torch_note,
        "sgemm": sgemm,
        "records": records,
    }
    result["summary"] = summarise(records, torch_note)
    write_atomic(args.output, json.dumps(result, indent=1))
    write_atomic(args.output.with_suffix(".md"), render_markdown(result))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {args.output} and {args.output.with_suffix('.md').name}")


def machine(infos: dict, threads: int) -> dict:
    info = {
        "cpu": next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "threads": threads,
        "torch": None,
    }
    for m, worker_info in infos.items():
        info.update({k: v for k, v in worker_info.items() if k != "ready"})
        info[f"{m}_worker"] = worker_info
    return info


if __name__ == "__main__":
    main()
