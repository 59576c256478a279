"""paper/benchmarks/cpu_grid.py --quick runs and writes a complete, sane JSON and table.

A smoke test of the script, not a timing: it runs the quick grid (tiny
shapes) in a subprocess of this interpreter, without torch (``--no-torch``,
so the test does not depend on what is installed), and checks that every
cell is there, that the numbers are positive and the errors small.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "paper" / "benchmarks" / "cpu_grid.py"


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu_grid") / "cpu_grid.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-torch", "--rounds", "2",
         "--output", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


def test_every_quick_cell_is_timed(quick_result):
    result, _ = quick_result
    names = {r["cell"] for r in result["records"]}
    for dtype in ("float32", "float64"):
        for mask in ("full", "causal"):
            for shape in ("2x3x64x32", "1x2x200x64"):
                assert f"{dtype} {mask} {shape}" in names
    assert result["quick"] is True
    assert result["summary"]["cells_timed"] == 8
    assert result["summary"]["checks_failed"] == []


def test_numbers_are_positive_and_errors_small(quick_result):
    result, _ = quick_result
    sgemm = result["sgemm"]["numpy_float32_median_gflops"]
    assert sgemm > 0
    for rec in result["records"]:
        ak = rec["attnkit"]
        assert ak["median_s"] > 0 and ak["gflops"] > 0
        assert rec["rounds"] >= 2 and len(ak["times_s"]) == 2 * rec["rounds"] * rec["calls_per_slot"]
        assert rec["sgemm_gflops"] == sgemm and ak["pct_of_sgemm"] > 0
        assert rec["kernel_plan"]["tasks"] >= 1
        assert ak["minor_faults_per_call"] >= 0 and ak["cpu_per_wall"] > 0
        check = rec["check"]
        assert check["passed"]
        sampled = check["vs_float64_sampled"]
        assert sampled["max_abs_ref"] > 0
        tol = {"float32": 1e-4, "float64": 1e-10}[rec["dtype"]]
        assert sampled["max_abs_err"]["attnkit"] <= tol * sampled["max_abs_ref"]
        if rec["dtype"] == "float32":  # no torch here: attnkit's figures alone, and said so
            assert rec["peer"] is None and "speed_ratio" not in rec
        else:  # float64 against NumPy, timed alternately in the same run
            assert rec["peer"] == "numpy"
            assert rec["numpy"]["median_s"] > 0 and rec["speed_ratio"] > 0
            assert len(rec["numpy"]["times_s"]) == len(ak["times_s"])
            assert check["rel_err_vs_peer"] <= 1e-10


def test_missing_torch_is_said(quick_result):
    result, table = quick_result
    assert result["torch_note"] and "torch not measured" in result["torch_note"]
    assert "torch not measured" in table
    assert result["load_average_1min"]["start"] >= 0
    assert "| 1×2×200×64 | causal |" in table
