"""Scale-out benchmark: head_stats over a >= 2 GiB zarr store, in-process vs dask.distributed.

Builds a synthetic attention store (float32, 12 layers x 12 heads x 128 x 128
per sample = 9.4 MB, one sample per chunk; 288 samples = 2.7 GB of attention,
about 2.1 GB on disk, since the NaN padding of samples shorter than 128
compresses away and random weights do not compress), generated chunk by chunk
so it is never all in memory, then times ``ak.head_stats`` over it four ways,
each in a fresh child process:

* ``loop``: the CLI's in-process path (``attnkit stats FILE``): blocks of
  samples loaded one at a time, Numba using both cores;
* ``dask-threads``: ``ak.head_stats(ds).compute()`` on dask's threaded
  scheduler, 2 threads, 1 Numba thread each;
* ``cluster-1`` / ``cluster-2``: a ``distributed.LocalCluster`` of 1 or 2
  worker processes, ``threads_per_worker=1`` and ``NUMBA_NUM_THREADS=1`` in
  the workers (``attnkit stats FILE --workers N``).

For each: wall time of the computation alone (the cluster is started, and the
kernels loaded on the workers, before the clock starts), throughput in MB/s of
attention (uncompressed float32), speed-up over ``cluster-1`` (one core), the
peak resident memory of every process that computes (Linux ``VmHWM``, reset
just before the timed run; worker processes and the client), and a digest of
the result, which must be identical across modes.

Usage::

    python paper/benchmarks/scale.py                     # full run, temp store under /tmp
    python paper/benchmarks/scale.py --quick             # 12 samples, seconds (smoke test)
    python paper/benchmarks/scale.py --path /data/s.zarr --keep   # reuse / keep a store

Writes paper/results/scale.json (not with --quick unless --output is given).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procmem import reset_peak, vm_kb

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "paper" / "results" / "scale.json"
LAYERS, HEADS, N = 12, 12, 128
SAMPLES = 288  # 288 x 9.44 MB = 2.7 GB; lengths 96..128 leave about 2.1 GB on disk
MIN_LENGTH = 96
MODES = ("loop", "dask-threads", "cluster-1", "cluster-2")


# ----------------------------------------------------------------------------- the store
def _sample(index: int):
    """Attention of one sample, from its own seed: rows softmax-normalised inside a
    length in [MIN_LENGTH, 128], NaN padding, two heads a layer with planted behaviour."""
    import numpy as np

    rng = np.random.default_rng(index)
    length = int(rng.integers(MIN_LENGTH, N + 1))
    scores = rng.standard_normal((LAYERS, HEADS, length, length), dtype=np.float32) * 2
    scores[:, 0] += 8 * np.eye(length, k=-1, dtype=np.float32)  # previous-token heads
    scores[:, 1, :, 0] += 8                                      # [CLS]-sink heads
    scores -= scores.max(-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(-1, keepdims=True)
    out = np.full((LAYERS, HEADS, N, N), np.nan, dtype=np.float32)
    out[:, :, :length, :length] = scores
    return out, length


def _tokens(length: int, rng) -> list[str]:
    words = ["the", "a", "cat", "sat", "on", "mat", ",", ".", "and", "it", "was", "!"]
    body = [words[i] for i in rng.integers(0, len(words), length - 2)]
    return ["[CLS]", *body, "[SEP]"] + [""] * (N - length)


def make_store(path: Path, samples: int) -> dict:
    """Write the synthetic store chunk by chunk (a dask array of per-sample blocks)."""
    import dask
    import dask.array as da
    import numpy as np
    import xarray as xr

    import attnkit as ak
    from attnkit.data.io import zarr_kwargs

    lengths = np.array([_sample_length(i) for i in range(samples)], dtype=np.int64)
    rng = np.random.default_rng(12345)
    tokens = np.array([_tokens(int(n), rng) for n in lengths], dtype=object)

    def block(block_id=None):
        return _sample(block_id[0])[0][None]

    attention = da.map_blocks(block, dtype=np.float32,
                              chunks=((1,) * samples, (LAYERS,), (HEADS,), (N,), (N,)))
    ds = xr.Dataset({"attention": (("sample", "layer", "head", "query", "key"), attention),
                     "length": ("sample", lengths)},
                    coords={"token": (("sample", "position"), tokens)},
                    attrs={"attnkit_schema": ak.SCHEMA_VERSION, "model": "synthetic",
                           "source": "paper/benchmarks/scale.py", "created_with": ak.__version__})
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        ds.to_zarr(path, mode="w", consolidated=True,
                   encoding={"attention": {"chunks": (1, LAYERS, HEADS, N, N)}}, **zarr_kwargs())
    seconds = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"samples": samples, "attention_bytes": samples * LAYERS * HEADS * N * N * 4,
            "disk_bytes": disk, "write_seconds": round(seconds, 2)}


def _sample_length(index: int) -> int:
    import numpy as np

    return int(np.random.default_rng(index).integers(MIN_LENGTH, N + 1))  # the first draw of _sample


# ----------------------------------------------------------------------------- children
def _memory() -> dict:
    return {"pid": os.getpid(), "peak_rss_mb": round(vm_kb("VmHWM") / 1024, 1),
            "rss_mb": round(vm_kb("VmRSS") / 1024, 1), "cpu_seconds": time.process_time()}


def _digest(result) -> str:
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(result.data_vars):
        h.update(name.encode())
        h.update(np.ascontiguousarray(result[name].values).tobytes())
    return h.hexdigest()


def child(mode: str, path: str) -> dict:
    import attnkit as ak
    from attnkit_cli._datasets import open_input, run_blocks

    record = {"mode": mode, "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    if mode == "loop":
        ds = open_input(path, lazy=False, chunk=None)
        run_blocks(ak.head_stats, ds.isel(sample=slice(0, 2)), client=None, chunk=None,
                   quiet=True, label="")  # loads the kernels
        record["peak_reset"] = reset_peak()
        cpu, start = time.process_time(), time.perf_counter()
        result = run_blocks(ak.head_stats, ds, client=None, chunk=None, quiet=True, label="")
        record["seconds"] = time.perf_counter() - start
        record["processes"] = [dict(_memory(), role="in-process")]
        record["processes"][0]["cpu_seconds"] -= cpu
    elif mode == "dask-threads":
        ds = ak.open_dataset(path, chunks={"sample": 1})
        ak.head_stats(ds.isel(sample=slice(0, 2))).compute(scheduler="threads")
        record["peak_reset"] = reset_peak()
        cpu, start = time.process_time(), time.perf_counter()
        result = ak.head_stats(ds).compute(scheduler="threads", num_workers=2)
        record["seconds"] = time.perf_counter() - start
        record["processes"] = [dict(_memory(), role="in-process")]
        record["processes"][0]["cpu_seconds"] -= cpu
    else:
        from distributed import Client, LocalCluster

        workers = int(mode.split("-")[1])
        start = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=40) as cluster, \
                Client(cluster) as client:
            ds = ak.open_dataset(path, chunks={"sample": 1})
            warm = ak.head_stats(ds.isel(sample=slice(0, 2 * workers)))
            warm.compute()  # imports attnkit and loads the kernels on every worker
            record["cluster_start_seconds"] = time.perf_counter() - start
            record["worker_numba_threads"] = sorted(client.run(
                lambda: __import__("numba").get_num_threads()).values())
            client.run(reset_peak)
            record["peak_reset"] = reset_peak()
            cpu_before = client.run(time.process_time)
            cpu, start = time.process_time(), time.perf_counter()
            result = ak.head_stats(ds).compute()
            record["seconds"] = time.perf_counter() - start
            record["processes"] = []
            for address, memory in client.run(_memory).items():
                memory["cpu_seconds"] -= cpu_before[address]
                record["processes"].append(dict(memory, role="worker"))
            record["processes"].append(dict(_memory(), role="client"))
            record["processes"][-1]["cpu_seconds"] -= cpu
    record["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    for p in record["processes"]:
        p["cpu_seconds"] = round(p["cpu_seconds"], 2)
    computing = [p for p in record["processes"] if p["role"] != "client"]
    record["compute_cpu_seconds"] = round(sum(p["cpu_seconds"] for p in computing), 2)
    # cores this mode actually got: CPU time of the computing processes per wall second
    record["cores_used"] = round(record["compute_cpu_seconds"] / record["seconds"], 2)
    record["digest"] = _digest(result)
    record["result_samples"] = int(result.sizes["sample"])
    return record


def run_child(mode: str, path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    # in-process Numba uses both cores only where nothing else runs in parallel
    env["NUMBA_NUM_THREADS"] = "2" if mode == "loop" else "1"
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--path", str(path)],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def machine() -> dict:
    import dask
    import distributed
    import numba
    import numpy
    import xarray
    import zarr

    import attnkit

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text()
                .splitlines() if line.startswith("MemTotal")), None)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mb": mem,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "numpy": numpy.__version__,
            "numba": numba.__version__, "xarray": xarray.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "zarr": zarr.__version__,
            "attnkit": attnkit.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=None,
                        help="zarr store to use (made if missing); default: a temp dir under /tmp")
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--quick", action="store_true", help="12 samples, no result file")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, str(args.path))))
        return 0

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still delete the temp store
    samples = 12 if args.quick else args.samples
    output = args.output or (None if args.quick else RESULT)
    temp_root = None
    path = args.path
    if path is None:
        temp_root = Path(tempfile.mkdtemp(prefix="attnkit-scale-", dir="/tmp"))
        path = temp_root / "attention.zarr"
    try:
        store = None
        if not path.exists():
            print(f"writing {samples} samples to {path} ...", file=sys.stderr)
            store = make_store(path, samples)
        else:
            import attnkit as ak

            existing = ak.open_dataset(path, chunks={"sample": 1})
            store = {"samples": int(existing.sizes["sample"]),
                     "attention_bytes": int(existing["attention"].nbytes),
                     "disk_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
                     "write_seconds": None}
        store.update(layers=LAYERS, heads=HEADS, n=N, dtype="float32",
                     lengths=f"{MIN_LENGTH}..{N}, NaN padding",
                     chunk="one sample (9.4 MB) per chunk", format="zarr v2, consolidated")
        print(json.dumps(store), file=sys.stderr)

        runs = []
        for mode in args.modes:
            record = run_child(mode, path)
            record["mb_per_s"] = store["attention_bytes"] / 1e6 / record["seconds"]
            record["ms_per_sample"] = 1e3 * record["seconds"] / store["samples"]
            record["cpu_ms_per_sample"] = 1e3 * record["compute_cpu_seconds"] / store["samples"]
            runs.append(record)
            peaks = ", ".join(f"{p['role']} {p['peak_rss_mb']:.0f} MB" for p in record["processes"])
            print(f"{mode:13s} {record['seconds']:7.2f} s  {record['mb_per_s']:7.1f} MB/s  "
                  f"{record['cores_used']:.2f} cores  peak RSS: {peaks}", file=sys.stderr)
    finally:
        if temp_root is not None and not args.keep:
            shutil.rmtree(temp_root, ignore_errors=True)

    base = next((r for r in runs if r["mode"] == "cluster-1"), runs[0])
    for r in runs:
        r["speedup_vs_cluster_1"] = base["seconds"] / r["seconds"]
        r["max_worker_peak_rss_mb"] = max(p["peak_rss_mb"] for p in r["processes"]
                                          if p["role"] in ("worker", "in-process"))
    identical = len({r["digest"] for r in runs}) == 1
    report = {
        "benchmark": "ak.head_stats over a synthetic zarr attention store",
        "machine": machine(),
        "note": ("The machine has 2 CPU cores and was shared with other jobs while this ran "
                 "(load averages per run); the script ran under nice, so it got whatever CPU "
                 "the other jobs left. Wall times are noisy by tens of percent or more; "
                 "cores_used (CPU seconds of the computing processes per wall second) shows "
                 "how much CPU each mode obtained, and cpu_ms_per_sample the work it did, "
                 "independent of the contention. The store was in the page cache after it "
                 "was written, so this measures decompression and compute, not disk reads."),
        "store": store,
        "runs": runs,
        "results_identical_across_modes": identical,
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(json.dumps(report, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
