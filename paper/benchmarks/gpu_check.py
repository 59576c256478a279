"""Every GPU check in one command (``make gpu-check``), within 8 minutes on one H200.

Run on a machine with an NVIDIA GPU and what such a machine has (python3 with
numba-cuda and torch; compute-sanitizer on the PATH), from the repository root,
with nothing to install: the repository is put on ``PYTHONPATH``. Steps, each
in its own process with its own time limit:

1. ``tests``: the real-GPU tests, ``tests/test_cuda_gpu.py`` (they skip without a GPU);
2. ``memcheck`` and 3. ``racecheck``: ``compute-sanitizer`` on small runs of
   every kernel kind (``gpu_attention.py --sanitize``: forward with lse,
   weights and statistics under three masks with ragged lengths, float16 and
   float64 inputs);
4. ``benchmark``: ``gpu_attention.py --subset check``: float32, d 64 and 128,
   n 4096 and 16384, full and causal, against torch's float32 SDPA; statistics
   against the forward; ``attention_stats`` at n = 131072
   (-> ``paper/results/gpu_attention_check_<gpu>.json``).

Writes ``paper/results/gpu_check.json`` (every step's command, exit code,
seconds and output tail, and the benchmark's summary) and a short
``paper/results/gpu_check.md``; exits non-zero when a step fails.

``--dry-run`` needs no GPU (CI runs it): it prints the plan, collects the GPU
tests and dry-runs the benchmark subset, so the script and what it calls stay
working.

Usage::

    make gpu-check                                   # = python3 paper/benchmarks/gpu_check.py
    python3 paper/benchmarks/gpu_check.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "paper" / "results"
BENCH = ROOT / "paper" / "benchmarks" / "gpu_attention.py"
#: Seconds for the whole check, and each step's share (compilation included).
TOTAL_S = 480
LIMITS = {"tests": 120, "memcheck": 75, "racecheck": 75, "benchmark": 210}


def find_sanitizer() -> str | None:
    """compute-sanitizer on the PATH, or in the usual CUDA folders."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for folder in ("/usr/local/cuda/bin", "/usr/local/cuda/compute-sanitizer",
                   *sorted(str(p) for p in Path("/usr/local").glob("cuda-*/bin"))):
        candidate = Path(folder) / "compute-sanitizer"
        if candidate.is_file():
            return str(candidate)
    return None


def steps(python: str, slug: str) -> list[dict]:
    """The four steps: name, command, time limit."""
    sanitizer = find_sanitizer() or "compute-sanitizer"
    sanitize = [python, str(BENCH), "--sanitize"]
    return [
        {"name": "tests", "limit": LIMITS["tests"],
         "cmd": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
                 "tests/test_cuda_gpu.py"]},
        {"name": "memcheck", "limit": LIMITS["memcheck"],
         "cmd": [sanitizer, "--tool", "memcheck", "--error-exitcode", "1", *sanitize]},
        {"name": "racecheck", "limit": LIMITS["racecheck"],
         "cmd": [sanitizer, "--tool", "racecheck", "--error-exitcode", "1", *sanitize]},
        {"name": "benchmark", "limit": LIMITS["benchmark"],
         "cmd": [python, str(BENCH), "--subset", "check", "--reps", "3", "--budget", "20",
                 "--out", str(RESULTS / f"gpu_attention_check_{slug}.json")]},
    ]


def environment() -> dict:
    """The repository (and its CLI package) on PYTHONPATH: no install needed."""
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p),
                PYTHONUNBUFFERED="1")


def run_step(step: dict, deadline: float) -> dict:
    """Run one step within its limit and what is left of the whole check's."""
    limit = max(1.0, min(step["limit"], deadline - time.monotonic()))
    start = time.monotonic()
    record = {"name": step["name"], "command": " ".join(step["cmd"]), "limit_s": round(limit)}
    if step["cmd"][0] == "compute-sanitizer":  # find_sanitizer found none
        return dict(record, rc=None, seconds=0.0, passed=False,
                    tail="compute-sanitizer is not on the PATH: memory/race checks not run")
    try:
        proc = subprocess.run(step["cmd"], cwd=ROOT, env=environment(), capture_output=True,
                              text=True, timeout=limit)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = None, exc.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        output += f"\n(timed out after {limit:.0f} s)"
    seconds = time.monotonic() - start
    passed = rc == 0
    if step["name"] in ("memcheck", "racecheck"):
        passed = passed and "ERROR SUMMARY: 0 errors" in output
    return dict(record, rc=rc, seconds=round(seconds, 1), passed=passed,
                tail="\n".join(output.strip().splitlines()[-15:]))


def gpu_slug(python: str) -> str | None:
    """The GPU's name as a file-name slug, asked of ``python`` (None without a GPU)."""
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\n"
            "from paper.benchmarks.gpu_attention import gpu_name\nprint(gpu_name() or '')")
    proc = subprocess.run([python, "-c", code, str(ROOT)], capture_output=True, text=True,
                          env=environment(), timeout=120)
    name = proc.stdout.strip()
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or None


def markdown(report: dict) -> str:
    lines = [f"# make gpu-check: {report['gpu']}, {report['date']}", "",
             "| step | passed | seconds | exit |", "|---|---|---:|---:|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {'yes' if s['passed'] else '**no**'} | {s['seconds']} | "
                     f"{s['rc']} |")
    summary = report.get("benchmark_summary") or {}
    if summary:
        lines += ["", "attnkit float32 speed / torch SDPA float32 (higher is better):", ""]
        for key, ratio in sorted(summary.get("vs_torch_sdpa_fp32", {}).items()):
            lines.append(f"- {key}: {ratio:.2f}x")
        lines += ["", "attention_stats time / forward time:", ""]
        for key, ratio in sorted(summary.get("stats_over_forward", {}).items()):
            lines.append(f"- {key}: {ratio:.2f}x")
        lines += ["", f"goals: {json.dumps(summary.get('goals', {}))}"]
    return "\n".join(lines) + "\n"


def dry_run(python: str) -> int:
    """The plan, the GPU tests collected, the benchmark subset dry-run: no GPU needed."""
    print(f"gpu-check plan (limit {TOTAL_S} s in all):")
    for step in steps(python, "<gpu>"):
        print(f"  {step['name']:<10} {step['limit']:>4} s  {' '.join(step['cmd'])}")
    checks = [
        ("tests collected", [python, "-m", "pytest", "--collect-only", "-q", "-p",
                             "no:cacheprovider", "tests/test_cuda_gpu.py"]),
        ("benchmark subset", [python, str(BENCH), "--dry-run", "--subset", "check"]),
    ]
    failed = 0
    for label, cmd in checks:
        proc = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True,
                              timeout=300)
        first = (proc.stdout.strip().splitlines() or [""])[-1 if label == "tests collected" else 0]
        print(f"{label}: {'ok' if proc.returncode == 0 else 'FAILED'}: {first}")
        if proc.returncode != 0:
            print(proc.stdout[-2000:] + proc.stderr[-2000:], file=sys.stderr)
            failed += 1
    found = find_sanitizer()
    print(f"compute-sanitizer: {found or 'not found here (needed on the GPU machine)'}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="plan and self-check; no GPU")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter with numba-cuda and torch (default: this one)")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run(args.python)
    slug = gpu_slug(args.python)
    if slug is None:
        print("gpu-check: no CUDA GPU is available (numba.cuda.is_available() is False); "
              "nothing checked. Run it on a GPU machine, or use --dry-run.", file=sys.stderr)
        return 2
    deadline = time.monotonic() + TOTAL_S
    report = {"gpu": slug, "date": time.strftime("%Y-%m-%d %H:%M"), "steps": []}
    for step in steps(args.python, slug):
        record = run_step(step, deadline)
        report["steps"].append(record)
        print(f"{record['name']}: {'passed' if record['passed'] else 'FAILED'} "
              f"({record['seconds']} s)\n{record['tail']}\n", flush=True)
    bench = RESULTS / f"gpu_attention_check_{slug}.json"
    if bench.exists():
        report["benchmark_summary"] = json.loads(bench.read_text()).get("summary")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(s["passed"] for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
