"""MiniLM forward through attnkit vs a plain NumPy forward, and the full ablation of the shipped data.

Writes paper/results/minilm_forward.json.

* Forward: batch 32 x 128 tokens (random WordPiece ids between [CLS] and
  [SEP], every sequence full length), float32. ``attnkit`` is
  ``MiniLM.forward`` with the fused ``ak.attention`` (no weights kept) and with
  ``ak.attention_weights`` (weights kept, as ``model.run`` does); ``numpy`` is
  the same encoder with attention written in NumPy (``q @ k.T``, softmax,
  ``@ v``) on the same weight arrays. Both share the projections, GELU and
  LayerNorm code paths, so the difference is the attention. The outputs are
  compared (max abs difference of the hidden states). Medians of ``--repeats``
  runs after one warm-up.
* Attention alone on one layer's shapes, (32, 12, 128, 32): ``ak.attention``,
  ``ak.attention_weights`` then ``@ v``, and NumPy softmax attention.
* Ablation: ``ak.ablate(model, ds, method=("delete", "mask"),
  special="compute")`` on datasets/minilm/minilm.nc, timed once: seconds and
  ablated forwards per second.

FLOPs per forward: 2 * params_per_token * tokens for the dense layers plus
4 * B * H * n * n * d for attention (DESIGN.md). The machine's load average
is recorded, since the reference machine is shared.

Usage::

    python paper/benchmarks/minilm_forward.py              # ~5 min on 2 cores
    python paper/benchmarks/minilm_forward.py --quick      # no ablation, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "minilm_forward.json"
BATCH, N = 32, 128


def numpy_forward(model, ids: np.ndarray) -> np.ndarray:
    """The MiniLM encoder with attention in plain NumPy (no padding: full-length batch)."""
    from attnkit.models.minilm import encoder_layer_tail, layer_norm

    batch, n = ids.shape
    H, d = model.n_heads, model.head_dim
    x = model.word[ids] + model.position[:n] + model.token_type[0]
    x = layer_norm(x, *model.embed_norm, model.eps).reshape(batch * n, -1)
    scale = np.float32(1.0 / np.sqrt(d))
    for layer in model.layers:
        w, b = layer["qkv"]
        qkv = (x @ w + b).reshape(batch, n, 3, H, d)
        # Contiguous operands: NumPy's stacked matmul on the strided views is
        # 10-50x slower (it then avoids BLAS), which would flatter attnkit.
        q, v = (np.ascontiguousarray(qkv[:, :, j].transpose(0, 2, 1, 3)) for j in (0, 2))
        k_t = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))
        s = (q @ k_t) * scale
        s = np.exp(s - s.max(-1, keepdims=True))
        p = s / s.sum(-1, keepdims=True)
        ctx = (p @ v).transpose(0, 2, 1, 3).reshape(batch * n, H * d)
        x = encoder_layer_tail(layer, ctx, x, model.eps)
    return x.reshape(batch, n, -1)


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: kernel load/compile, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def flops(model, batch: int, n: int) -> float:
    dense = 0
    for layer in model.layers:
        for name in ("qkv", "attn_out", "inter", "out"):
            dense += layer[name][0].size
    return 2.0 * dense * batch * n + 4.0 * batch * model.n_heads * n * n * model.head_dim * len(model.layers)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, no ablation")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64, help="ablation batch size")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats

    import attnkit as ak
    import numba

    model = ak.models.MiniLM.load()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, model.vocab_size, size=(BATCH, N))
    ids[:, 0], ids[:, -1] = model.cls_token_id, model.sep_token_id
    seqs = list(ids)
    load_start = os.getloadavg()

    results = {}
    reference = numpy_forward(model, ids)
    for name, fn in {
        "attnkit_fused": lambda: model.forward(seqs),
        "attnkit_weights": lambda: model.forward(seqs, weights=True),
        "numpy": lambda: numpy_forward(model, ids),
    }.items():
        median, times = timed(fn, repeats)
        results[name] = {"median_s": median, "times_s": times,
                         "gflops": flops(model, BATCH, N) / median / 1e9}
        print(f"{name:16s} {median * 1e3:8.1f} ms  ({results[name]['gflops']:.1f} GFLOP/s)",
              file=sys.stderr)
    diff = float(np.abs(model.forward(seqs).hidden - reference).max())

    # The attention alone, on one layer's q/k/v of the same batch: the part the
    # two forwards do differently (the dense layers are ~95% of the FLOPs).
    H, d = model.n_heads, model.head_dim
    q, k, v = (rng.standard_normal((BATCH, H, N, d)).astype(np.float32) for _ in range(3))
    k_t = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    scale = np.float32(1.0 / np.sqrt(d))

    def numpy_attention():
        s = (q @ k_t) * scale
        s = np.exp(s - s.max(-1, keepdims=True))
        return (s / s.sum(-1, keepdims=True)) @ v

    attention_only = {}
    attn_flops = 4.0 * BATCH * H * N * N * d
    for name, fn in {
        "attnkit_attention": lambda: ak.attention(q, k, v, check_finite=False),
        "attnkit_attention_weights_then_matmul":
            lambda: ak.attention_weights(q, k, check_finite=False) @ v,
        "numpy": numpy_attention,
    }.items():
        median, times = timed(fn, max(repeats, 5))
        attention_only[name] = {"median_s": median, "times_s": times,
                                "gflops": attn_flops / median / 1e9}
        print(f"attention {name:38s} {median * 1e3:8.2f} ms", file=sys.stderr)
    np.testing.assert_allclose(ak.attention(q, k, v), numpy_attention(), atol=1e-5)
    out = {
        "benchmark": "MiniLM (all-MiniLM-L6-v2) forward, float32, batch 32 x 128 tokens",
        "forward": results,
        "ratio_numpy_over_attnkit_fused": results["numpy"]["median_s"] / results["attnkit_fused"]["median_s"],
        "ratio_numpy_over_attnkit_weights": results["numpy"]["median_s"] / results["attnkit_weights"]["median_s"],
        "max_abs_diff_hidden_attnkit_vs_numpy": diff,
        "flops_per_forward": flops(model, BATCH, N),
        "attention_only": {"shape": f"q, k, v ({BATCH}, {H}, {N}, {d}) float32",
                           "flops": attn_flops, **attention_only},
        "repeats": repeats,
    }

    if not args.quick:
        ds = ak.open_dataset(ROOT / "datasets" / "minilm" / "minilm.nc")
        ds = ds.drop_vars([v for v in ("impact", "method") if v in ds.variables])
        start = time.perf_counter()
        impact = ak.ablate(model, ds, method=("delete", "mask"), special="compute",
                           batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        forwards = int(np.isfinite(impact.values).sum()) + ds.sizes["sample"]
        out["ablation"] = {
            "dataset": "datasets/minilm/minilm.nc",
            "samples": int(ds.sizes["sample"]),
            "tokens": int(ds.length.sum()),
            "methods": ["delete", "mask"],
            "batch_size": args.batch_size,
            "seconds": seconds,
            "forwards": forwards,
            "forwards_per_s": forwards / seconds,
        }
        print(f"ablation: {forwards} forwards in {seconds:.1f} s ({forwards / seconds:.0f}/s)",
              file=sys.stderr)

    out["machine"] = {
        "platform": platform.platform(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "numpy": np.__version__, "numba": numba.__version__,
        "numba_num_threads": numba.config.NUMBA_NUM_THREADS,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "note": "shared 2-core machine; other jobs were running, so times are noisy",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULT}", file=sys.stderr)


if __name__ == "__main__":
    main()
