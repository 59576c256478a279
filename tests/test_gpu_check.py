"""``make gpu-check`` stays runnable where no GPU is: its dry run plans, collects and dry-runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnkit._backend import cuda_status

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "paper" / "benchmarks" / "gpu_check.py"


def test_dry_run_plans_every_step_and_checks_what_it_calls():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("tests", "memcheck", "racecheck", "benchmark"):
        assert f"  {step} " in out
    assert "--tool memcheck" in out and "--tool racecheck" in out
    assert "tests collected: ok:" in out and "tests collected" in out
    # d 64/128 x n 4096/16384 x full/causal x 3 methods, plus the n = 131072 stats run
    assert "benchmark subset: ok: 25 cases" in out


@pytest.mark.skipif(cuda_status()[1], reason="a GPU is present: the real check would run")
def test_without_a_gpu_it_says_so_and_writes_nothing():
    before = sorted((ROOT / "paper" / "results").glob("gpu_check*"))
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2
    assert "no CUDA GPU is available" in proc.stderr and "--dry-run" in proc.stderr
    assert sorted((ROOT / "paper" / "results").glob("gpu_check*")) == before
