"""Every CUDA kernel kind compiles to PTX for sm_90 without a GPU (numba-cuda[cu13]).

Compiling is slow (~10 s per variant through Numba), so the variants are
spread sparsely: each kernel kind once, and across them every input dtype,
mask kind, score_mod kind, several head dims and both array layouts. The
fast path (float32 forward, no mask) is also linked for sm_90 with nvJitLink
to check that it neither spills registers nor uses local memory.
"""

import functools
import re

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason="needs the GPU extra: pip install 'attnkit[gpu]'")

import attnkit as ak  # noqa: E402
from attnkit.kernels.cuda import attention as kern  # noqa: E402
from attnkit.kernels.cuda import masking as mk  # noqa: E402
from attnkit.kernels.cuda import tiling as tl  # noqa: E402

H100_SMEM = 227 * 1024


def _mod(name):
    if name == "alibi":
        return kern.device_score_mod(ak.positional.alibi(ak.positional.alibi_slopes(4)))
    if name == "soft_cap":
        return kern.device_score_mod(ak.positional.soft_cap(30.0))
    if name == "python":
        return kern.device_score_mod(lambda s, b, h, qi, kj: s - 0.5 * abs(qi - kj))
    return None


# (kind, head dim, input dtype, accumulation dtype, mask kind, score_mod, top-k cap, layout)
VARIANTS = {
    "forward-f32-d64": ("forward", 64, "float32", "float32", mk.MASK_NONE, None, 0, "C"),
    "forward-f16-d128-band-alibi": ("forward", 128, "float16", "float32", mk.MASK_BAND, "alibi", 0,
                                    "A"),
    "lse-f32-d256-general-softcap": ("lse", 256, "float32", "float32", mk.MASK_GENERAL,
                                     "soft_cap", 0, "C"),
    "weights-f64-d16-general-python": ("weights", 16, "float64", "float64", mk.MASK_GENERAL,
                                       "python", 0, "C"),
    "query_stats-f32-d64-band-topk8": ("query_stats", 64, "float32", "float32", mk.MASK_BAND,
                                       None, 8, "C"),
    "received-f64-d40": ("received", 40, "float64", "float64", mk.MASK_NONE, None, 0, "A"),
    # top-k cap doubles as the number of weight rows for the received kernel (rollout rows)
    "received8-f32-d64-band": ("received", 64, "float32", "float32", mk.MASK_BAND, None, 8, "C"),
}


@functools.lru_cache(maxsize=None)
def _ptx(name):
    kind, d, in_dtype, acc, mask, mod, cap, layout = VARIANTS[name]
    t = tl.choose(d, d, acc, H100_SMEM)
    dp, dvp = tl.padded_dims(t, d, d)
    rows = cap if kind == "received" and cap else 1
    return kern.compile_ptx(kind, t, dp, dvp, acc, mask, _mod(mod), cap, in_dtype=in_dtype,
                            layout=layout, rows=rows)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_kernel_variant_compiles_for_sm90(name):
    ptx = _ptx(name)
    assert ".target sm_90" in ptx and ".entry" in ptx
    assert "bar.sync" in ptx
    kind, _, _, acc, _, mod, _, _ = VARIANTS[name]
    if acc == "float32" and kind in ("forward", "lse") and mod is None:
        # float32 kernels must stay float32: a stray Python float would promote to f64.
        # (A score_mod computes in its own types: the positional ones use float64.)
        assert ".f64" not in ptx


def test_fast_path_uses_vector_shared_loads_and_no_local_memory():
    ptx = _ptx("forward-f32-d64")
    assert len(re.findall(r"ld\.shared\.v4\.f32", ptx)) >= 8
    assert "ld.shared.f32" not in ptx  # every score/PV operand comes in 16-byte loads
    assert "ld.local" not in ptx and "st.local" not in ptx
    assert "ex2.approx" in ptx


def _link_info(ptx: str) -> str:
    nvjitlink = pytest.importorskip("cuda.bindings.nvjitlink")
    handle = nvjitlink.create(2, ["-arch=sm_90", "-verbose"])
    data = ptx.encode()
    nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "attnkit")
    try:
        nvjitlink.complete(handle)
    finally:
        size = nvjitlink.get_info_log_size(handle)
        log = bytearray(size)
        nvjitlink.get_info_log(handle, log)
        nvjitlink.destroy(handle)
    return log.decode(errors="replace")


@pytest.mark.parametrize("name", ["forward-f32-d64", "received8-f32-d64-band"])
def test_links_for_sm90_without_spills(name):
    info = _link_info(_ptx(name))
    regs = re.search(r"[Uu]sed (\d+) registers", info)
    assert regs and int(regs.group(1)) <= 255, info
    assert re.search(r"\b0 bytes spill stores, 0 bytes spill loads", info), info


@pytest.mark.parametrize("acc", ["float32", "float64"])
@pytest.mark.parametrize("d", [1, 16, 64, 100, 128, 200, 256])
def test_tilings_fit_shared_memory(d, acc):
    itemsize = np.dtype(acc).itemsize
    for limit in (48 * 1024, 99 * 1024, H100_SMEM):
        t = tl.choose(d, d, acc, limit)
        dp, dvp = tl.padded_dims(t, d, d)
        for kind in ("forward", "lse", "weights", "received"):
            assert tl.layout(t, dp, dvp, itemsize, kind).nbytes <= limit
        assert tl.layout(t, dp, dvp, itemsize, "query_stats", topk=True).nbytes <= limit
    if d == 64 and acc == "float32":  # the benchmarked case gets the large tiling on an H100
        assert tl.choose(d, d, acc, H100_SMEM) == tl.Tiling(16, 16, 8, 4, 4)


@pytest.mark.parametrize("t", [tl.Tiling(16, 16, 8, 4, 4), tl.Tiling(8, 16, 4, 4, 4),
                               tl.Tiling(2, 8, 2, 1, 1), tl.Tiling(16, 32, 4, 2, 4)])
def test_layout_padding_avoids_bank_conflicts(t):
    lay = tl.layout(t, 64, 64, 4, "forward")
    assert (lay.dqp // 4) % 2 == 1 and (lay.dkp // 4) % 2 == 1  # quads hit distinct bank groups
    assert lay.pp >= t.block_k and lay.pp % 4 == 0
    if t.tx < 32:
        assert lay.pp % 32 == t.tx  # one warp's probability writes fill distinct banks
    regions = sorted([(lay.q, t.block_q * lay.dqp), (lay.kp, max(t.block_k * lay.dkp,
                      t.block_q * lay.pp)), (lay.v, t.block_k * 64), (lay.red, t.block_q * t.tx)])
    for (a, size), (b, _) in zip(regions, regions[1:]):
        assert a + size <= b and b % 4 == 0


@pytest.mark.parametrize("fusion,dtype", [(0, "float32"), (1, "float64")])
def test_rollout_kernel_compiles_for_sm90(fusion, dtype):
    from numba import cuda, types
    from numba.np.numpy_support import from_dtype

    from attnkit.kernels.cuda import rollout

    kern_fn, nbytes = rollout.layer_kernel(rollout.GPU_TILING, fusion)
    f64 = types.Array(types.float64, 3, "C")
    sig = (types.Array(from_dtype(np.dtype(dtype)), 5, "A"), types.int64, types.int64,
           types.Array(types.int64, 1, "C"), types.float64, f64, f64)
    ptx, _ = cuda.compile_ptx(kern_fn.py_func, sig, cc=(9, 0))
    assert ".target sm_90" in ptx and "bar.sync" in ptx
    assert "ld.local" not in ptx and "fma.rn.f64" in ptx
    assert nbytes <= 48 * 1024
