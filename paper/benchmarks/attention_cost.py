"""Cost growth per attention pattern: time vs sequence length, with fitted exponents.

The comparison table of the seed documents says full attention costs O(n^2 d),
local O(n w d), sparse O(n k d) and linear O(n d^2). This script measures it on
the CPU backend (B=1, H=4, d=64, float32), fits ``time ~ n^p`` per pattern on
log-log axes, and writes

* paper/results/attention_cost.json (every timing and the fitted exponents),
* paper/figures/attention_cost.png (the series on log-log axes).

Sparse patterns use masks whose tiles the kernels skip: ``local(128)``,
Longformer's ``local(128) | global_tokens(first 16)``, and a block-sparse
layout with a fixed number of 64-token tiles per query tile (diagonal, the
previous tile and 2 random ones), so k stays constant as n grows. The strided
pattern of Child et al. is included as measured: its allowed pairs are spread
over every tile, so no tile is skipped (each is masked row by row) and it stays
O(n^2) on this backend.

Usage: ``python paper/benchmarks/attention_cost.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
H, D, BLOCK = 4, 64, 64


def fixed_k_layout(n: int, seed: int = 0) -> np.ndarray:
    """Tiles per query tile: itself, the previous one and two random ones (k fixed)."""
    tiles = -(-n // BLOCK)
    rng = np.random.default_rng(seed)
    layout = np.eye(tiles, dtype=bool) | np.eye(tiles, k=-1, dtype=bool)
    for row in range(tiles):
        layout[row, rng.choice(tiles, size=min(2, tiles), replace=False)] = True
    return layout


def patterns():
    import attnkit as ak

    return {
        "full O(n^2 d)": lambda q, k, v: ak.attention(q, k, v, check_finite=False),
        "local(128) O(n w d)": lambda q, k, v: ak.attention(
            q, k, v, mask=ak.masks.local(128), check_finite=False),
        "local(128) | 16 global O(n (w+g) d)": lambda q, k, v: ak.attention(
            q, k, v, mask=ak.masks.local(128) | ak.masks.global_tokens(np.arange(16)),
            check_finite=False),
        "block-sparse, 4 tiles/row O(n k d)": lambda q, k, v: ak.attention(
            q, k, v, mask=ak.masks.block_sparse(fixed_k_layout(q.shape[-2]), BLOCK),
            check_finite=False),
        "strided(64) | local(64), every tile partial": lambda q, k, v: ak.attention(
            q, k, v, mask=ak.masks.strided(64) | ak.masks.local(64), check_finite=False),
        "linear (elu+1) O(n d^2)": lambda q, k, v: ak.linear_attention(q, k, v),
    }


def measure(fn, n: int, reps: int) -> list[float]:
    rng = np.random.default_rng(n)
    q, k, v = (rng.standard_normal((1, H, n, D), dtype=np.float32) for _ in range(3))
    fn(q[..., :128, :], k[..., :128, :], v[..., :128, :])  # compile / load outside timing
    fn(q, k, v)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(q, k, v)
        times.append(time.perf_counter() - start)
    return times


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(result["series"])))
    for colour, (name, series) in zip(colours, result["series"].items()):
        ns = [p["n"] for p in series]
        ts = [p["median_s"] * 1e3 for p in series]
        ax.loglog(ns, ts, "o-", color=colour,
                  label=f"{name}: fitted n^{result['exponents'][name]:.2f}")
    ax.set_xlabel("sequence length n (tokens)")
    ax.set_ylabel("time per call (ms, median)")
    ax.set_title(f"Attention cost vs length (CPU, B=1, H={H}, d={D}, float32)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [256, 512, 1024] if args.quick else [512, 1024, 2048, 4096, 8192]
    series: dict[str, list] = {}
    exponents = {}
    for name, fn in patterns().items():
        points = []
        for n in sizes:
            times = measure(fn, n, reps=3 if n >= 4096 else 5)
            points.append({"n": n, "median_s": statistics.median(times), "times_s": times})
            print(f"{name:40s} n={n:5d} {points[-1]['median_s'] * 1e3:9.2f} ms", flush=True)
        series[name] = points
        slope = np.polyfit(np.log([p["n"] for p in points]),
                           np.log([p["median_s"] for p in points]), 1)[0]
        exponents[name] = float(slope)
    result = {
        "benchmark": "attention_cost", "date": time.strftime("%Y-%m-%d"), "quick": args.quick,
        "shape": {"B": 1, "H": H, "d": D, "dtype": "float32"}, "cores": os.cpu_count(),
        "series": series, "exponents": exponents,
    }
    suffix = "_quick" if args.quick else ""
    out = ROOT / "paper" / "results" / f"attention_cost{suffix}.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    plot(result, ROOT / "paper" / "figures" / f"attention_cost{suffix}.png")
    print(json.dumps(exponents, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
