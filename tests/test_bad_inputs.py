"""A catalogue of malformed inputs across the API and the CLI, and numerical edge cases.

Every row of ``CASES`` is ``(id, call, expected)``: ``call(ctx)`` feeds one bad
input to attnkit and ``expected`` is one of

* ``Raises(type, argument, match)``: the exception type, a message that names
  the argument (or file) and says ``Fix:``, and a regex for the rest;
* ``Exits(code, match)``: a CLI run's exit code and output (one line, no
  traceback), with no output file or temp file left behind;
* ``Returns(check)``: the documented, correct result, whose values
  ``check(result, ctx)`` asserts.

The second half checks numerics at the edges: logits up to +-1e4, float16 near
its range limit, one-hot and perfectly uniform attention, n = 1.
"""

from __future__ import annotations

import os
import re
import shutil
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import attnkit as ak
import reference
from attnkit.data import io as akio, schema as akschema
from attnkit_cli.main import cli
from seeds import fresh_seed


# ----------------------------------------------------------------------------- expectations
@dataclass
class Raises:
    exc: type
    argument: str  # must appear in the message, as the user wrote it
    match: str = ""  # regex searched in the message
    fix: bool = True  # the message says "Fix:"


@dataclass
class Exits:
    code: int
    match: str  # regex searched in the output


@dataclass
class Returns:
    check: Callable  # check(result, ctx) asserts the values


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def ref_rollout(a, residual=0.5):
    """Abnar & Zuidema rollout of one sample (L, H, n, n): mean heads, add r I, rows to 1."""
    n = a.shape[-1]
    out = np.eye(n)
    for layer in a:
        aug = residual * np.eye(n) + (1 - residual) * layer.mean(0)
        out = (aug / aug.sum(-1, keepdims=True)) @ out
    return out


# ----------------------------------------------------------------------------- inputs
S, L, H, N = 3, 2, 2, 5  # samples, layers, heads, positions of the attention tensors


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good, truncated and corrupted dataset files, made once for the module."""
    rng = np.random.default_rng(fresh_seed())
    root = tmp_path_factory.mktemp("bad_files")
    attn = softmax(rng.standard_normal((S, L, H, N, N)))
    ds = ak.from_arrays(attn, tokens=[["[CLS]", "a", "b", ",", "[SEP]"]] * S, model="m")
    f = SimpleNamespace(root=root, ds=ds)

    paths = {name: root / name for name in (
        "good.nc", "trunc.nc", "empty.nc", "random.nc", "good.zarr", "trunc_chunk.zarr",
        "missing_chunk.zarr", "bad_meta.zarr", "empty.zarr", "v2.nc", "v2.zarr", "noschema.nc",
        "noattention.nc", "qkv.npz", "qk.npz", "nan.npz", "int.npz", "trunc.npz", "garbage.npz",
        "object.npz")}
    f.__dict__.update({name.replace(".", "_"): path for name, path in paths.items()})

    ak.save_dataset(ds, f.good_nc)
    raw = f.good_nc.read_bytes()
    f.trunc_nc.write_bytes(raw[: len(raw) // 2])
    f.empty_nc.write_bytes(b"")
    f.random_nc.write_bytes(rng.bytes(4096))
    ak.save_dataset(ds, f.good_zarr)
    chunk = Path("attention") / "0.0.0.0.0"  # zarr format 2, one sample per chunk
    assert (f.good_zarr / chunk).is_file()
    for store in (f.trunc_chunk_zarr, f.missing_chunk_zarr, f.bad_meta_zarr):
        shutil.copytree(f.good_zarr, store)
    blob = (f.trunc_chunk_zarr / chunk).read_bytes()
    (f.trunc_chunk_zarr / chunk).write_bytes(blob[: len(blob) // 2])
    (f.missing_chunk_zarr / chunk).unlink()
    (f.bad_meta_zarr / ".zmetadata").write_text("{truncated")
    f.empty_zarr.mkdir()

    v2 = ds.copy()
    v2.attrs["attnkit_schema"] = 2
    v2.to_netcdf(f.v2_nc, engine="h5netcdf")
    v2.to_zarr(f.v2_zarr, mode="w", **akio.zarr_kwargs())
    unversioned = ds.copy()
    del unversioned.attrs["attnkit_schema"]
    unversioned.to_netcdf(f.noschema_nc, engine="h5netcdf")
    ds.drop_vars("attention").to_netcdf(f.noattention_nc, engine="h5netcdf")

    q = rng.standard_normal((2, 4, 8)).astype(np.float32)
    np.savez(f.qkv_npz, q=q, k=q, v=q)
    np.savez(f.qk_npz, q=q, k=q)
    nan_q = q.copy()
    nan_q[0, 1, 2] = np.nan
    np.savez(f.nan_npz, q=nan_q, k=q, v=q)
    np.savez(f.int_npz, q=q.astype(np.int64), k=q, v=q)
    blob = f.qkv_npz.read_bytes()
    f.trunc_npz.write_bytes(blob[: len(blob) // 2])
    f.garbage_npz.write_bytes(rng.bytes(512))
    np.savez(f.object_npz, q=np.array([None, 1.0], dtype=object), k=q, v=q)
    return f


@pytest.fixture
def ctx(rng, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    attn = softmax(rng.standard_normal((S, L, H, N, N)))

    def cli_run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    return SimpleNamespace(
        rng=rng, f=files, out=out, run=cli_run,
        q=rng.standard_normal((2, 5, 4)), k=rng.standard_normal((2, 6, 4)),
        v=rng.standard_normal((2, 6, 3)),
        attn=attn, grad=rng.standard_normal(attn.shape),
        ds=ak.from_arrays(attn, tokens=[["[CLS]", "a", "b", ",", "[SEP]"]] * S),
    )


def with_value(x, index, value):
    x = np.array(x, copy=True)
    x[index] = value
    return x


def modified(ds, fn):
    ds = ds.copy(deep=True)
    out = fn(ds)
    return ds if out is None else out


def set_attn(ds, index, value):
    ds["attention"].values[index] = value


def set_schema(ds, value):
    ds.attrs["attnkit_schema"] = value


def readonly(x):
    x = np.array(x, copy=True)
    x.setflags(write=False)
    return x


def strided(x):
    """A non-contiguous view holding the same values as ``x``."""
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
    big[..., ::2] = x
    view = big[..., ::2]
    assert not view.flags.c_contiguous
    return view


def huge_weights(ctx):
    """q, k of n = m = 200 000 as zero-stride views (6 MB), asking for 298 GiB of weights."""
    row = np.zeros(4)
    q = np.lib.stride_tricks.as_strided(row, shape=(200_000, 4), strides=(0, 8))
    tracemalloc.start()
    try:
        ak.attention_weights(q, q)
    finally:
        ctx.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# checks for Returns ------------------------------------------------------------
def same_as_reference(result, ctx):
    expected, _ = reference.attention(ctx.q, ctx.k, ctx.v)
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


def same_weights(result, ctx):
    expected, _ = reference.weights(ctx.q, ctx.k)
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


def same_stats(result, ctx):
    p, _ = reference.weights(ctx.q, ctx.k)
    for name, expected in reference.stats(p).items():
        np.testing.assert_allclose(result[name], expected, rtol=1e-9, atol=1e-12, err_msg=name)


def empty_queries(result, ctx):
    assert result.shape == (2, 0, 3)


def no_keys_gives_zeros(result, ctx):
    out, lse = result
    assert out.shape == (2, 5, 3) and np.all(out == 0) and np.all(lse == -np.inf)


def zero_kv_length(result, ctx):
    out, lse = result
    assert np.all(out[0] == 0) and np.all(lse[0] == -np.inf)
    expected, _ = reference.attention(ctx.q[1], ctx.k[1], ctx.v[1])
    np.testing.assert_allclose(out[1], expected, rtol=1e-10, atol=1e-12)


def nan_padding_ignored(result, ctx):
    expected, _ = reference.attention(ctx.q[0], ctx.k[0, :4], ctx.v[0, :4])
    np.testing.assert_allclose(result[0], expected, rtol=1e-10, atol=1e-12)
    assert np.isfinite(result).all()


def rollout_is_reference(result, ctx):
    expected = np.stack([ref_rollout(a) for a in ctx.attn])
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


def rollout_rows_renormalised(result, ctx):
    # residual = 0: each layer's fused rows are divided by their own sums, so
    # attention scaled by 2 rolls out exactly like the attention itself
    expected = np.stack([ref_rollout(a, residual=0.0) for a in ctx.attn])
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


def rollout_empty(result, ctx):
    assert result.shape == (S, 0, 0)


def rollout_zero_length(result, ctx):
    assert np.isnan(result[0]).all()
    np.testing.assert_allclose(result[1:], np.stack([ref_rollout(a) for a in ctx.attn[1:]]),
                               rtol=1e-10)


def rollout_nan_padding(result, ctx):
    np.testing.assert_allclose(result[2, :3, :3], ref_rollout(ctx.attn[2, :, :, :3, :3]),
                               rtol=1e-10)
    assert np.isnan(result[2, 3:]).all() and np.isnan(result[2, :, 3:]).all()


def head_stats_like_contiguous(result, ctx):
    expected = ak.head_stats(np.ascontiguousarray(ctx.attn))
    xr.testing.assert_allclose(result, expected)


def int_attention_stored_as_float(result, ctx):
    assert result.attention.dtype == np.float64
    np.testing.assert_array_equal(result.attention.values, np.ones((1, 1, 1, 1, 1)))
    ak.validate(result)


def missing_chunk_reads_nan(result, ctx):
    # zarr fills a missing chunk with the fill value (NaN); validate reports it
    assert np.isnan(result.attention.values[0]).all()
    np.testing.assert_array_equal(result.attention.values[1:], ctx.f.ds.attention.values[1:])
    with pytest.raises(ValueError, match=r"attention: expected no NaN inside the valid length"):
        ak.validate(result)


def opens_without_attention(result, ctx):
    assert "attention" not in result and "length" in result
    with pytest.raises(ValueError, match=r"attention: expected a variable .*Fix:"):
        ak.validate(result)


def lazy_open_then_read_error(ctx):
    ds = ak.open_dataset(ctx.f.trunc_chunk_zarr, chunks={"sample": 1})  # lazy: nothing read yet
    try:
        ds.attention.values
    except Exception as exc:  # the chunk fails to decompress when it is read
        raise akio.read_error(ctx.f.trunc_chunk_zarr, exc) from exc


def run_blocks_read_error(ctx):
    """The lazy (cluster) path of the dataset commands turns a bad chunk into a UserError."""
    from attnkit_cli import _datasets

    ds = ak.open_dataset(ctx.f.trunc_chunk_zarr, chunks={"sample": 1})
    with pytest.raises(_datasets.UserError) as info:  # any non-None client: compute lazily
        _datasets.run_blocks(ak.head_stats, ds, client=object(), chunk=1, quiet=True,
                             label="head stats")
    return SimpleNamespace(output=f"Error: {info.value.format_message()}",
                           exit_code=info.value.exit_code, exception=None)


def save_invalid(ctx):
    bad = modified(ctx.ds, lambda d: set_attn(d, (0, 0, 0, 0, 0), -1.0))
    try:
        ak.save_dataset(bad, ctx.out / "x.nc")
    finally:
        assert os.listdir(ctx.out) == []


# ----------------------------------------------------------------------------- the table

CASES = [
    # --- attention / attention_weights / attention_stats: values ------------------
    ("attention-nan-q", lambda c: ak.attention(with_value(c.q, (0, 0, 0), np.nan), c.k, c.v),
     Raises(ValueError, "q:", r"expected finite values, got 1 NaN/inf")),
    ("attention-inf-k", lambda c: ak.attention(c.q, with_value(c.k, (1, 2, 3), np.inf), c.v),
     Raises(ValueError, "k:", r"finite")),
    ("attention-neginf-v", lambda c: ak.attention(c.q, c.k, with_value(c.v, (0, 0, 0), -np.inf)),
     Raises(ValueError, "v:", r"finite")),
    ("weights-nan-q", lambda c: ak.attention_weights(with_value(c.q, (1, 4, 0), np.nan), c.k),
     Raises(ValueError, "q:", r"finite")),
    ("stats-inf-k", lambda c: ak.attention_stats(c.q, with_value(c.k, (0, 5, 1), -np.inf)),
     Raises(ValueError, "k:", r"finite")),
    ("attention-nan-in-padding-unchecked",
     lambda c: ak.attention(c.q, with_value(c.k, (0, slice(4, None)), np.nan),
                            with_value(c.v, (0, slice(4, None)), np.nan),
                            kv_lengths=[4, 6], check_finite=False),
     Returns(nan_padding_ignored)),
    # --- dtypes ---------------------------------------------------------------------
    ("attention-int-q", lambda c: ak.attention(c.q.astype(np.int64), c.k, c.v),
     Raises(TypeError, "q:", r"got int64.*astype")),
    ("attention-complex-k", lambda c: ak.attention(c.q, c.k.astype(np.complex128), c.v),
     Raises(TypeError, "k:", r"got complex128")),
    ("attention-bool-v", lambda c: ak.attention(c.q, c.k, c.v > 0),
     Raises(TypeError, "v:", r"got bool")),
    ("weights-str-q", lambda c: ak.attention_weights(np.array([["a", "b"]]), c.k[0]),
     Raises(TypeError, "q:", r"got <U1")),
    ("stats-object-q", lambda c: ak.attention_stats(c.q.astype(object), c.k),
     Raises(TypeError, "q:", r"got object")),
    # --- shapes -----------------------------------------------------------------------
    ("attention-1d-q", lambda c: ak.attention(c.q[0, 0], c.k, c.v),
     Raises(ValueError, "q:", r"at least 2 dims")),
    ("attention-0d-q", lambda c: ak.attention(np.float64(1.0), c.k, c.v),
     Raises(ValueError, "q:", r"got \(\)")),
    ("attention-d-mismatch", lambda c: ak.attention(c.q, c.k[..., :3], c.v),
     Raises(ValueError, "k:", r"last dim d = 4")),
    ("attention-m-mismatch", lambda c: ak.attention(c.q, c.k, c.v[:, :5]),
     Raises(ValueError, "v:", r"6 positions")),
    ("attention-zero-d", lambda c: ak.attention(c.q[..., :0], c.k[..., :0], c.v),
     Raises(ValueError, "q:", r"d >= 1")),
    ("attention-heads-not-dividing", lambda c: ak.attention(c.q, np.stack([c.k[0]] * 3),
                                                            np.stack([c.v[0]] * 3)),
     Raises(ValueError, "k:", r"divid")),
    ("attention-v-none", lambda c: ak.attention(c.q, c.k, None),
     Raises(TypeError, "v:", r"got None")),
    ("attention-empty-queries", lambda c: ak.attention(c.q[:, :0], c.k, c.v),
     Returns(empty_queries)),
    ("attention-no-keys", lambda c: ak.attention(c.q, c.k[:, :0], c.v[:, :0], return_lse=True),
     Returns(no_keys_gives_zeros)),
    # --- lengths ----------------------------------------------------------------------
    ("attention-q-lengths-beyond-n", lambda c: ak.attention(c.q, c.k, c.v, q_lengths=[6, 5]),
     Raises(ValueError, "q_lengths:", r"\[0, 5\]")),
    ("attention-kv-lengths-negative", lambda c: ak.attention(c.q, c.k, c.v, kv_lengths=[-1, 6]),
     Raises(ValueError, "kv_lengths:", r"\[0, 6\]")),
    ("attention-kv-lengths-float", lambda c: ak.attention(c.q, c.k, c.v, kv_lengths=[2.5, 6]),
     Raises(TypeError, "kv_lengths:", r"integer")),
    ("attention-kv-lengths-shape", lambda c: ak.attention(c.q, c.k, c.v, kv_lengths=[1, 2, 3]),
     Raises(ValueError, "kv_lengths:", r"got \(3,\)")),
    ("attention-kv-length-zero", lambda c: ak.attention(c.q, c.k, c.v, kv_lengths=[0, 6],
                                                        return_lse=True),
     Returns(zero_kv_length)),
    # --- other arguments ----------------------------------------------------------------
    ("attention-scale-nan", lambda c: ak.attention(c.q, c.k, c.v, scale=float("nan")),
     Raises(ValueError, "scale:", r"finite float")),
    ("attention-dense-mask", lambda c: ak.attention(c.q, c.k, c.v, mask=np.ones((5, 6), bool)),
     Raises(TypeError, "mask:", r"attnkit mask")),
    ("attention-bad-backend", lambda c: ak.attention(c.q, c.k, c.v, backend="tpu"),
     Raises(ValueError, "backend:", r"'tpu'")),
    ("stats-unknown-stat", lambda c: ak.attention_stats(c.q, c.k, stats=("entropy", "mode")),
     Raises(ValueError, "stats:", r"'mode'")),
    ("stats-negative-topk", lambda c: ak.attention_stats(c.q, c.k, topk=-1),
     Raises(ValueError, "topk:", r"-1")),
    # --- memory guard -----------------------------------------------------------------
    ("weights-huge-n-memory-guard", huge_weights,
     Raises(ak.WeightsTooLargeError, "attention_weights:", r"298\.02 GiB.*attention_stats")),
    ("weights-max-bytes", lambda c: ak.attention_weights(c.q, c.k, max_bytes=100),
     Raises(ak.WeightsTooLargeError, "attention_weights:", r"budget")),
    # --- layouts that must simply work -------------------------------------------------
    ("attention-noncontiguous", lambda c: ak.attention(strided(c.q), c.k.transpose(0, 2, 1)
                                                       .copy().transpose(0, 2, 1), strided(c.v)),
     Returns(same_as_reference)),
    ("attention-readonly", lambda c: ak.attention(readonly(c.q), readonly(c.k), readonly(c.v)),
     Returns(same_as_reference)),
    ("weights-noncontiguous-readonly", lambda c: ak.attention_weights(readonly(strided(c.q)),
                                                                      np.asfortranarray(c.k)),
     Returns(same_weights)),
    ("stats-noncontiguous", lambda c: ak.attention_stats(strided(c.q), strided(c.k)),
     Returns(same_stats)),
    # --- rollout / grad_rollout / head_stats / flow --------------------------------------
    ("rollout-nan", lambda c: ak.rollout(with_value(c.attn, (1, 0, 1, 2, 3), np.nan)),
     Raises(ValueError, "attn:", r"got nan at sample \(1,\), layer 0, head 1, query 2, key 3")),
    ("head-stats-nan-in-chunked-dataset", lambda c: ak.head_stats(modified(
        c.ds, lambda d: set_attn(d, (2, 1, 0, 3, 4), np.nan)).chunk({"sample": 1})).compute(),
     Raises(ValueError, "attn:", r"got nan at sample \(2,\), layer 1, head 0, query 3, key 4")),
    ("head-stats-inf", lambda c: ak.head_stats(with_value(c.attn, (0, 1, 0, 0, 0), np.inf)),
     Raises(ValueError, "attn:", r"got inf")),
    ("flow-negative", lambda c: ak.attention_flow(with_value(c.attn, (2, 0, 0, 1, 1), -0.1)),
     Raises(ValueError, "attn:", r"non-negative.*got -0\.1")),
    ("grad-rollout-nan-attention", lambda c: ak.grad_rollout(
        with_value(c.attn, (0, 0, 0, 0, 0), np.nan), c.grad),
     Raises(ValueError, "attn:", r"finite")),
    ("rollout-int", lambda c: ak.rollout((c.attn > 0.2).astype(np.int64)),
     Raises(TypeError, "attn:", r"got int64")),
    ("head-stats-complex", lambda c: ak.head_stats(c.attn.astype(np.complex64)),
     Raises(TypeError, "attn:", r"got complex64")),
    ("rollout-3d", lambda c: ak.rollout(c.attn[0, 0]),
     Raises(ValueError, "attn:", r"\(\.\.\., layer, head, n, n\)")),
    ("rollout-not-square", lambda c: ak.rollout(c.attn[..., :4]),
     Raises(ValueError, "attn:", r"got \(3, 2, 2, 5, 4\)")),
    ("head-stats-2d", lambda c: ak.head_stats(c.attn[0, 0, 0]),
     Raises(ValueError, "attn:", r"got \(5, 5\)")),
    ("rollout-zero-layers", lambda c: ak.rollout(c.attn[:, :0]),
     Raises(ValueError, "attn:", r"at least one layer")),
    ("rollout-empty-sequences", lambda c: ak.rollout(c.attn[..., :0, :0]),
     Returns(rollout_empty)),
    ("flow-empty-sequences", lambda c: ak.attention_flow(c.attn[..., :0, :0]),
     Returns(rollout_empty)),
    ("rollout-length-zero-sample", lambda c: ak.rollout(c.attn, lengths=[0, 5, 5]),
     Returns(rollout_zero_length)),
    ("rollout-nan-padding-with-lengths", lambda c: ak.rollout(
        with_value(with_value(c.attn, (2, ..., slice(3, None), slice(None)), np.nan),
                   (2, ..., slice(3, None)), np.nan), lengths=[5, 5, 3]),
     Returns(rollout_nan_padding)),
    ("rollout-lengths-beyond-n", lambda c: ak.rollout(c.attn, lengths=[6, 5, 5]),
     Raises(ValueError, "lengths:", r"\[0, 5\], got 6")),
    ("head-stats-lengths-shape", lambda c: ak.head_stats(c.attn, lengths=[5, 5]),
     Raises(ValueError, "lengths:", r"got \(2,\)")),
    ("rollout-lengths-float", lambda c: ak.rollout(c.attn, lengths=[4.5, 5, 5]),
     Raises(ValueError, "lengths:", r"integers")),
    ("rollout-rows-not-summing-to-1", lambda c: ak.rollout(2 * c.attn, residual=0.0),
     Returns(rollout_rows_renormalised)),
    ("rollout-readonly-noncontiguous", lambda c: ak.rollout(readonly(strided(c.attn))),
     Returns(rollout_is_reference)),
    ("head-stats-readonly-fortran", lambda c: ak.head_stats(readonly(np.asfortranarray(c.attn))),
     Returns(head_stats_like_contiguous)),
    ("rollout-bad-head-fusion", lambda c: ak.rollout(c.attn, head_fusion="median"),
     Raises(ValueError, "head_fusion:", r"'median'")),
    ("rollout-residual-above-1", lambda c: ak.rollout(c.attn, residual=1.5),
     Raises(ValueError, "residual:", r"\[0, 1\]")),
    ("rollout-start-layer", lambda c: ak.rollout(c.attn, start_layer=L),
     Raises(ValueError, "start_layer:", r"got 2")),
    ("grad-rollout-layer-mismatch", lambda c: ak.grad_rollout(c.attn, c.grad[:, :1]),
     Raises(ValueError, "grad:", r"got \(3, 1, 2, 5, 5\)")),
    ("grad-rollout-int-grad", lambda c: ak.grad_rollout(c.attn, (c.grad > 0).astype(np.int32)),
     Raises(TypeError, "grad:", r"got int32")),
    ("grad-rollout-no-grad", lambda c: ak.grad_rollout(c.attn, None),
     Raises(ValueError, "grad:", r"got None")),
    ("grad-rollout-dataset-without-gradient", lambda c: ak.grad_rollout(c.ds, None),
     Raises(ValueError, "grad:", r"'gradient' variable")),
    ("head-stats-tokens-count", lambda c: ak.head_stats(c.attn, tokens=[list("abcde")] * 2),
     Raises(ValueError, "tokens:", r"one token list per sample")),
    ("flow-source-out-of-range", lambda c: ak.attention_flow(c.attn, sources=[7]),
     Raises(ValueError, "sources:", r"got 7")),
    # --- datasets in memory ----------------------------------------------------------------
    ("from-arrays-empty-list", lambda c: ak.from_arrays([]),
     Raises(ValueError, "attention:", r"empty list")),
    ("from-arrays-complex", lambda c: ak.from_arrays(c.attn.astype(np.complex128)),
     Raises(TypeError, "attention:", r"complex128.*np\.real")),
    ("from-arrays-str", lambda c: ak.from_arrays(np.full((1, 1, 2, 2), "x")),
     Raises(TypeError, "attention:", r"got <U1")),
    ("from-arrays-int-attention", lambda c: ak.from_arrays(np.ones((1, 1, 1, 1, 1), np.int64)),
     Returns(int_attention_stored_as_float)),
    ("from-arrays-gradient-layers", lambda c: ak.from_arrays(c.attn, gradient=c.grad[:, :1]),
     Raises(ValueError, "gradient[0]:", r"layers and heads")),
    ("from-arrays-q-heads", lambda c: ak.from_arrays(c.attn, q=np.ones((S, L, 3, N, 4))),
     Raises(ValueError, "q[0]:", r"layers and heads")),
    ("from-arrays-length-0-sample", lambda c: ak.from_arrays([c.attn[0], c.attn[1, ..., :0, :0]]),
     Raises(ValueError, "attention[1]:", r"n >= 1")),
    ("from-arrays-lengths-beyond", lambda c: ak.from_arrays(c.attn, lengths=[5, 6, 5]),
     Raises(ValueError, "lengths[1]:", r"\[1, 5\], got 6")),
    ("from-arrays-lengths-zero", lambda c: ak.from_arrays(c.attn, lengths=[0, 5, 5]),
     Raises(ValueError, "lengths[0]:", r"got 0")),
    ("validate-rows-not-summing", lambda c: ak.validate(modified(
        c.ds, lambda d: set_attn(d, (1, 0, 0, 2, slice(None)), 0.5))),
     Raises(ValueError, "attention:", r"sum to 1 .*worst sum 2\.5 at sample 1, layer 0, head 0, query 2\)")),
    ("validate-negative", lambda c: ak.validate(modified(
        c.ds, lambda d: set_attn(d, (0, 1, 1, 0, 0), -0.25))),
     Raises(ValueError, "attention:", r"negative values \(first at sample 0, layer 1, head 1")),
    ("validate-nan-inside", lambda c: ak.validate(modified(
        c.ds, lambda d: set_attn(d, (2, 0, 0, 1, 1), np.nan))),
     Raises(ValueError, "attention:", r"no NaN inside the valid length")),
    ("validate-dim-names", lambda c: ak.validate(c.ds.rename(query="row")),
     Raises(ValueError, "attention:", r"expected dims .*got .*'row'")),
    ("validate-missing-length", lambda c: ak.validate(c.ds.drop_vars("length")),
     Raises(ValueError, "length:", r"missing")),
    ("validate-schema-2", lambda c: ak.validate(modified(c.ds, lambda d: set_schema(d, 2))),
     Raises(ValueError, "attnkit_schema", r"newer attnkit.*Fix: upgrade")),
    ("validate-not-a-dataset", lambda c: ak.validate(c.attn),
     Raises(TypeError, "ds:", r"ndarray")),
    ("rollout-dataset-dim-names", lambda c: ak.rollout(c.ds.rename(key="column")),
     Raises(ValueError, "attn:", r"'column'")),
    ("head-stats-dataset-missing-attention", lambda c: ak.head_stats(c.ds.drop_vars("attention")),
     Raises(ValueError, "ds:", r"'attention' variable")),
    # --- files ------------------------------------------------------------------------------
    ("open-truncated-netcdf", lambda c: ak.open_dataset(c.f.trunc_nc),
     Raises(ValueError, "trunc.nc:", r"readable netCDF4 file.*truncated")),
    ("open-random-bytes-netcdf", lambda c: ak.open_dataset(c.f.random_nc),
     Raises(ValueError, "random.nc:", r"readable netCDF4")),
    ("open-empty-netcdf", lambda c: ak.open_dataset(c.f.empty_nc),
     Raises(ValueError, "empty.nc:", r"readable netCDF4")),
    ("open-zarr-truncated-chunk", lambda c: ak.open_dataset(c.f.trunc_chunk_zarr),
     Raises(ValueError, "trunc_chunk.zarr:", r"readable zarr store")),
    ("open-zarr-truncated-chunk-lazily", lazy_open_then_read_error,
     Raises(ValueError, "trunc_chunk.zarr:", r"readable zarr store")),
    ("open-zarr-corrupt-metadata", lambda c: ak.open_dataset(c.f.bad_meta_zarr),
     Raises(ValueError, "bad_meta.zarr:", r"readable zarr store")),
    ("open-zarr-empty-directory", lambda c: ak.open_dataset(c.f.empty_zarr),
     Raises(ValueError, "empty.zarr:", r"readable zarr store")),
    ("open-zarr-missing-chunk", lambda c: ak.open_dataset(c.f.missing_chunk_zarr),
     Returns(missing_chunk_reads_nan)),
    ("open-missing-file", lambda c: ak.open_dataset(c.f.root / "nope.nc"),
     Raises(FileNotFoundError, "nope.nc:", r"no such file")),
    ("open-schema-2-netcdf", lambda c: ak.open_dataset(c.f.v2_nc),
     Raises(ValueError, "v2.nc:", r"expected 1, got 2: the dataset was written by a newer")),
    ("open-schema-2-zarr", lambda c: ak.open_dataset(c.f.v2_zarr),
     Raises(ValueError, "v2.zarr:", r"newer attnkit")),
    ("open-without-schema", lambda c: ak.open_dataset(c.f.noschema_nc),
     Raises(ValueError, "noschema.nc:", r"attnkit_schema.*missing")),
    ("open-missing-attention-variable", lambda c: ak.open_dataset(c.f.noattention_nc),
     Returns(opens_without_attention)),
    ("save-bad-suffix", lambda c: ak.save_dataset(c.ds, c.out / "x.txt"),
     Raises(ValueError, "path:", r"\.nc or \.zarr")),
    ("save-missing-directory", lambda c: ak.save_dataset(c.ds, c.out / "no" / "x.nc"),
     Raises(FileNotFoundError, "x.nc:", r"existing directory")),
    ("save-invalid-dataset", save_invalid,
     Raises(ValueError, "attention:", r"negative")),
    # --- CLI ----------------------------------------------------------------------------------
    ("cli-info-truncated-netcdf", lambda c: c.run("info", c.f.trunc_nc),
     Exits(2, r"trunc\.nc: expected a readable netCDF4 file.*Fix:")),
    ("cli-info-truncated-zarr-chunk", lambda c: c.run("info", c.f.trunc_chunk_zarr),
     Exits(2, r"trunc_chunk\.zarr: expected a readable zarr store.*Fix:")),
    ("cli-info-empty-zarr", lambda c: c.run("info", c.f.empty_zarr),
     Exits(2, r"empty\.zarr: expected a readable zarr store.*Fix:")),
    ("cli-info-missing-attention", lambda c: c.run("info", c.f.noattention_nc),
     Exits(1, r"validation: 1 problem\(s\)\n  attention: expected a variable.*Fix:")),
    ("cli-info-missing-chunk", lambda c: c.run("info", c.f.missing_chunk_zarr),
     Exits(1, r"attention: expected no NaN inside the valid length.*Fix:")),
    ("cli-info-schema-2", lambda c: c.run("info", c.f.v2_zarr),
     Exits(2, r"v2\.zarr: .*newer attnkit.*Fix: upgrade")),
    ("cli-info-unknown-option", lambda c: c.run("info", c.f.good_nc, "--bogus"),
     Exits(2, r"No such option: --bogus|No such option '--bogus'")),
    ("cli-stats-truncated-netcdf", lambda c: c.run("stats", c.f.trunc_nc, "-o", c.out / "s.nc"),
     Exits(2, r"trunc\.nc: expected a readable netCDF4 file.*Fix:")),
    ("cli-stats-corrupt-zarr", lambda c: c.run("stats", c.f.trunc_chunk_zarr, "-o", c.out / "s.zarr"),
     Exits(2, r"trunc_chunk\.zarr: expected a readable zarr store.*Fix:")),
    ("cli-stats-missing-chunk", lambda c: c.run("stats", c.f.missing_chunk_zarr, "-o", c.out / "s.csv"),
     Exits(2, r"attn: expected finite, non-negative weights.*got nan at sample \(0,\).*Fix:")),
    ("cli-stats-schema-2", lambda c: c.run("stats", c.f.v2_nc, "-o", c.out / "s.nc"),
     Exits(2, r"v2\.nc: .*newer attnkit.*Fix:")),
    ("cli-stats-missing-attention", lambda c: c.run("stats", c.f.noattention_nc, "-o", c.out / "s.nc"),
     Exits(2, r"ds: expected a dataset with a 'attention' variable.*Fix:")),
    ("cli-stats-unknown-option", lambda c: c.run("stats", c.f.good_nc, "--bogus"),
     Exits(2, r"No such option")),
    ("cli-stats-workers-0", lambda c: c.run("stats", c.f.good_nc, "--workers", "0"),
     Exits(2, r"--workers.*0 is not in the range")),
    ("cli-stats-workers-and-scheduler", lambda c: c.run(
        "stats", c.f.good_nc, "--workers", "2", "--scheduler", "tcp://x:1", "-o", c.out / "s.nc"),
     Exits(2, r"--workers and --scheduler: expected one of them, got both\. Fix:")),
    ("cli-stats-cluster-read-error", run_blocks_read_error,
     Exits(2, r"input: expected readable chunks, got RuntimeError.*Fix:")),
    ("cli-rollout-query-beyond-n", lambda c: c.run("rollout", c.f.good_nc, "--query", "99",
                                                   "-o", c.out / "r.nc"),
     Exits(2, r"--query: expected a position below 5, got 99\. Fix:")),
    ("cli-rollout-output-suffix", lambda c: c.run("rollout", c.f.good_nc, "-o", c.out / "r.txt"),
     Exits(2, r"--output: expected a path ending in \.nc, \.zarr or \.csv.*Fix:")),
    ("cli-rollout-output-missing-dir", lambda c: c.run("rollout", c.f.good_nc,
                                                       "-o", c.out / "no" / "r.nc"),
     Exits(2, r"--output: expected an existing folder.*Fix: mkdir")),
    ("cli-rollout-residual-range", lambda c: c.run("rollout", c.f.good_nc, "--residual", "2"),
     Exits(2, r"--residual.*2")),
    ("cli-unknown-command", lambda c: c.run("frobnicate"),
     Exits(2, r"No such command 'frobnicate'")),
    ("cli-attend-garbage-npz", lambda c: c.run("attend", c.f.garbage_npz, "-o", c.out / "a.npz"),
     Exits(2, r"garbage\.npz: expected a NumPy \.npz archive.*Fix:")),
    ("cli-attend-two-files", lambda c: c.run("attend", c.f.qkv_npz, c.f.qkv_npz),
     Exits(2, r"expected one \.npz file with q, k, v or three \.npy files.*Fix:")),
    ("cli-attend-truncated-npz", lambda c: c.run("attend", c.f.trunc_npz, "-o", c.out / "a.npz"),
     Exits(2, r"trunc\.npz: expected a NumPy \.npz archive.*Fix:")),
    ("cli-attend-object-npz", lambda c: c.run("attend", c.f.object_npz, "-o", c.out / "a.npz"),
     Exits(2, r"object\.npz: expected a NumPy \.npz archive.*Fix:")),
    ("cli-attend-missing-v", lambda c: c.run("attend", c.f.qk_npz, "-o", c.out / "a.npz"),
     Exits(2, r"qk\.npz: expected arrays named q, k and v, missing \['v'\]\. Fix:")),
    ("cli-attend-nan", lambda c: c.run("attend", c.f.nan_npz, "-o", c.out / "a.npz"),
     Exits(2, r"q: expected finite values.*Fix:")),
    ("cli-attend-int", lambda c: c.run("attend", c.f.int_npz, "-o", c.out / "a.npz"),
     Exits(2, r"q: expected float16.*got int64\. Fix:")),
    ("cli-attend-bad-mask", lambda c: c.run("attend", c.f.qkv_npz, "--mask", "loco:3"),
     Exits(2, r"mask spec: expected terms.*'loco:3'\. Fix:")),
    ("cli-attend-negative-topk", lambda c: c.run("attend", c.f.qkv_npz, "--topk", "-1"),
     Exits(2, r"--topk.*-1 is not in the range")),
    ("cli-attend-unknown-option", lambda c: c.run("attend", c.f.qkv_npz, "--flash"),
     Exits(2, r"No such option")),
]


def test_catalogue_is_large_and_ids_unique():
    ids = [row[0] for row in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40, len(ids)


@pytest.mark.parametrize(
    "call, expected",
    [pytest.param(row[1], row[2], id=row[0], marks=row[3] if len(row) > 3 else ())
     for row in CASES])
def test_catalogue(call, expected, ctx):
    if isinstance(expected, Raises):
        with pytest.raises(expected.exc) as info:
            call(ctx)
        message = str(info.value)
        assert expected.argument in message, message
        assert re.search(expected.match, message, re.S), message
        if expected.fix:
            assert "Fix:" in message, message
        if isinstance(info.value, ak.WeightsTooLargeError) and hasattr(ctx, "peak"):
            assert ctx.peak < 64 * 2**20, f"allocated {ctx.peak / 2**20:.0f} MB before refusing"
    elif isinstance(expected, Exits):
        result = call(ctx)
        output, code = result.output, result.exit_code
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            repr(result.exception)
        assert code == expected.code, output
        assert re.search(expected.match, output, re.S), output
        assert "Traceback" not in output
        # nothing written: no output file, no partial file, no temp file
        assert sorted(os.listdir(ctx.out)) == [], os.listdir(ctx.out)
    else:
        expected.check(call(ctx), ctx)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 2e-3)])
def test_logits_up_to_1e4_stay_finite_and_exact(rng, dtype, tol):
    """Scores up to |s| = 1e4 (exp would overflow float64 at 710): the online
    softmax subtracts the running max, so everything stays finite. The float64
    reference is the stable softmax of the same (rounded) inputs; float32's
    tolerance is its rounding of s itself (1e4 * 2**-24 * d is about 5e-3)."""
    q, k = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((2, 3, 11, 8))
    v = rng.standard_normal((2, 3, 11, 5))
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    s = np.einsum("...nd,...md->...nm", q.astype(np.float64), k.astype(np.float64))
    scale = 1e4 / np.abs(s).max()
    assert np.abs(s * scale).max() == pytest.approx(1e4)
    out, lse = ak.attention(q, k, v, scale=scale, return_lse=True)
    w = ak.attention_weights(q, k, scale=scale)
    st = ak.attention_stats(q, k, scale=scale, topk=2)
    p, ref_lse = reference.weights(q, k, scale=scale)
    for x in (out, lse, w, *st.values()):
        assert np.isfinite(x).all()
    np.testing.assert_allclose(w, p, atol=tol, rtol=0)
    np.testing.assert_allclose(out, p @ v.astype(np.float64), atol=tol * np.abs(v).max(), rtol=0)
    # lse = max score + log(sum): its error is the score's absolute rounding
    # error, not a relative one (a row whose lse is ~50 still carries the
    # ~1e-4 error of scores near 1e4).
    np.testing.assert_allclose(lse, ref_lse, atol=tol, rtol=0)
    ref = reference.stats(p)
    np.testing.assert_allclose(st["max"], ref["max"], atol=tol)
    np.testing.assert_allclose(st["received"], ref["received"], atol=tol * 9)
    np.testing.assert_allclose(st["entropy"], ref["entropy"], atol=50 * tol)
    # the negated logits: the same magnitudes from the other side
    w_neg = ak.attention_weights(-q, k, scale=scale)
    np.testing.assert_allclose(w_neg, reference.weights(-q, k, scale=scale)[0], atol=tol, rtol=0)


def test_float16_near_its_range_limit(rng):
    """float16 values up to ~6e4 (max 65504): scores reach ~1e9, far past
    float16's range, and values near the limit average to near the limit. The
    computation is float32 inside, so the output is finite and matches the
    float64 reference to float16 rounding."""
    q = (rng.uniform(-1, 1, (2, 7, 8)) * 6e4).astype(np.float16)
    k = (rng.uniform(-1, 1, (2, 7, 8)) * 6e4).astype(np.float16)
    v = rng.uniform(6.0e4, 65504, (2, 7, 8)).astype(np.float16)
    assert np.abs(q).max() > 5e4 and np.isfinite(v).all()
    for scale in (None, 1e-9):  # peaked (scores ~1e9) and nearly uniform weights
        out = ak.attention(q, k, v, scale=scale)
        assert out.dtype == np.float16 and np.isfinite(out).all()
        expected, _ = reference.attention(q, k, v, scale=scale)
        np.testing.assert_allclose(out.astype(np.float64), expected, rtol=2e-3)
        w = ak.attention_weights(q, k, scale=scale)
        assert w.dtype == np.float32 and np.isfinite(w).all()
        np.testing.assert_allclose(w, reference.weights(q, k, scale=scale)[0], atol=1e-4)
        st = ak.attention_stats(q, k, scale=scale)
        assert all(np.isfinite(x).all() for x in st.values())


def test_uniform_attention_exact(rng):
    """q = 0 gives exactly uniform weights 1/m: entropy log m, max 1/m (argmax
    the first key), received n/m, distance the mean |i - j|."""
    n, m = 6, 9
    q = np.zeros((2, n, 4))
    k = rng.standard_normal((2, m, 4))
    w = ak.attention_weights(q, k)
    np.testing.assert_allclose(w, 1 / m, rtol=1e-15)
    st = ak.attention_stats(q, k, topk=3)
    np.testing.assert_allclose(st["entropy"], np.log(m), rtol=1e-14)
    np.testing.assert_allclose(st["max"], 1 / m, rtol=1e-14)
    assert (st["argmax"] == 0).all()
    np.testing.assert_allclose(st["received"], n / m, rtol=1e-14)
    dist = np.abs(np.arange(n)[:, None] - np.arange(m)).mean(1)
    np.testing.assert_allclose(st["distance"], np.broadcast_to(dist, (2, n)), rtol=1e-14)
    assert (st["topk_index"] == [0, 1, 2]).all()


def test_peaked_attention_stats(rng):
    """Scores 1e4 apart: one-hot rows, entropy 0 (never 0 * log 0 = NaN)."""
    n = 7
    k = rng.standard_normal((n, 16))
    target = rng.permutation(n)
    k_unit = k / np.linalg.norm(k, axis=1, keepdims=True)
    q = 1e4 * k_unit[target]  # each query aligns with one key: a gap of >= ~1e3 in scores
    st = ak.attention_stats(q, k_unit, scale=1.0)
    np.testing.assert_array_equal(st["argmax"], target)
    np.testing.assert_allclose(st["max"], 1.0, atol=1e-12)
    np.testing.assert_allclose(st["entropy"], 0.0, atol=1e-10)
    np.testing.assert_allclose(st["distance"], np.abs(np.arange(n) - target), atol=1e-9)


def one_hot_and_uniform_heads(n):
    eye = np.eye(n)
    uniform = np.full((n, n), 1 / n)
    prev = np.eye(n, k=-1)
    prev[0, 0] = 1.0
    return np.stack([eye, uniform, prev])  # (head, n, n)


def test_peaked_and_uniform_heads_head_stats():
    n = 6
    a = np.stack([one_hot_and_uniform_heads(n)] * 2)[None]  # (1, L=2, H=3, n, n)
    st = ak.head_stats(a)
    for name in ("entropy", "distance", "max_weight", "self_mass", "prev_mass", "next_mass"):
        assert np.isfinite(st[name].values).all(), name
    np.testing.assert_allclose(st.entropy.values[0, 0], [0.0, np.log(n), 0.0], atol=1e-15)
    mean_dist = np.abs(np.arange(n)[:, None] - np.arange(n)).mean()
    np.testing.assert_allclose(st.distance.values[0, 0], [0, mean_dist, (n - 1) / n], rtol=1e-14)
    np.testing.assert_allclose(st.max_weight.values[0, 0], [1, 1 / n, 1], rtol=1e-14)
    np.testing.assert_allclose(st.self_mass.values[0, 0], [1, 1 / n, 1 / n], rtol=1e-14)
    np.testing.assert_allclose(st.prev_mass.values[0, 0], [0, 1 / n, 1], rtol=1e-14)
    js = st.js_divergence.values[0, 0]
    np.testing.assert_allclose(np.diag(js), 0, atol=1e-15)
    np.testing.assert_allclose(js, js.T, atol=1e-15)
    # identity vs previous-token: disjoint rows except row 0, where both are one-hot on key 0
    np.testing.assert_allclose(js[0, 2], (n - 1) / n, rtol=1e-12)


def test_peaked_and_uniform_rollout_and_flow():
    n = 5
    eye = np.broadcast_to(np.eye(n), (1, 3, 2, n, n))
    np.testing.assert_allclose(ak.rollout(eye), np.eye(n)[None], atol=1e-15)
    np.testing.assert_allclose(ak.attention_flow(eye), np.eye(n)[None], atol=1e-12)
    uniform = np.full((1, 3, 2, n, n), 1 / n)
    for r in (0.0, 0.5, 1.0):
        step = r * np.eye(n) + (1 - r) / n
        expected = np.linalg.matrix_power(step, 3)
        result = ak.rollout(uniform, residual=r)
        np.testing.assert_allclose(result[0], expected, rtol=1e-13)
        assert np.isfinite(result).all()


def test_n_equals_1_everywhere(rng):
    """One token: attention returns v, weights are [[1]], every statistic is
    finite; head_stats' prev/next mass are NaN by definition (no row has a
    previous or next token: docs/interpretation.md)."""
    q, k = rng.standard_normal((3, 1, 4)), rng.standard_normal((3, 1, 4))
    v = rng.standard_normal((3, 1, 2))
    out, lse = ak.attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, v, rtol=1e-15)
    np.testing.assert_allclose(lse, (q * k).sum(-1) / 2, rtol=1e-14)
    np.testing.assert_array_equal(ak.attention_weights(q, k), np.ones((3, 1, 1)))
    st = ak.attention_stats(q, k, topk=2)
    np.testing.assert_array_equal(st["entropy"], 0)
    np.testing.assert_array_equal(st["max"], 1)
    np.testing.assert_array_equal(st["argmax"], 0)
    np.testing.assert_array_equal(st["distance"], 0)
    np.testing.assert_array_equal(st["received"], 1)
    np.testing.assert_array_equal(st["topk_index"][..., 1], -1)

    a = np.ones((2, 3, 4, 1, 1))
    np.testing.assert_array_equal(ak.rollout(a), np.ones((2, 1, 1)))
    np.testing.assert_array_equal(ak.attention_flow(a), np.ones((2, 1, 1)))
    g = rng.standard_normal(a.shape)
    expected = np.prod(1 + np.maximum(g, 0).mean(2)[..., 0, 0], axis=1)  # R <- (1 + c_l) R
    np.testing.assert_allclose(ak.grad_rollout(a, g)[:, 0, 0], expected, rtol=1e-14)
    st = ak.head_stats(a)
    for name in ("entropy", "distance", "self_mass", "max_weight", "js_divergence"):
        assert np.isfinite(st[name].values).all(), name
    np.testing.assert_array_equal(st.entropy.values, 0)
    np.testing.assert_array_equal(st.self_mass.values, 1)
    np.testing.assert_array_equal(st.js_divergence.values, 0)
    assert np.isnan(st.prev_mass.values).all() and np.isnan(st.next_mass.values).all()
    ds = ak.from_arrays(a, tokens=[["[CLS]"]] * 2)
    ak.validate(ds)
    np.testing.assert_array_equal(ak.rollout(ds).values, np.ones((2, 1, 1)))


# ----------------------------------------------------------------------------- streaming validate
def many_problems(rng):
    ds = ak.from_arrays([softmax(rng.standard_normal((2, 3, n, n)))
                         for n in (6, 4, 6, 5, 6, 6, 5, 6, 6)])
    att = ds["attention"].values
    att[2, 1, 0, 3, 1] = np.nan           # NaN inside
    att[5, 0, 2, 0, 0] = -0.5              # negative (and its row off)
    att[7, 1, 1, 2, :] *= 3.0              # the worst row sum
    att[8, 0, 0, 4, 4] += 0.01             # a small row-sum error
    att[6, 0, 0, 5, 5] = 0.25              # padding that is not NaN
    return ds


def test_validate_streams_over_sample_blocks(rng, monkeypatch):
    """validate reads the attention a block of samples at a time; the report is the
    same whatever the block size (counts add up, first/worst are global)."""
    ds = many_problems(rng)
    with pytest.raises(ValueError) as whole:
        ak.validate(ds)
    for block_bytes in (1, 3 * ds["attention"][0].nbytes):  # 1 sample, then 3 per block
        monkeypatch.setattr(akschema, "_VALIDATE_BLOCK_BYTES", block_bytes)
        with pytest.raises(ValueError) as blocked:
            ak.validate(ds)
        assert str(blocked.value) == str(whole.value)
    message = str(whole.value)
    assert "1 NaN values (first at sample 2, layer 1, head 0, query 3, key 1)" in message
    assert "1 negative values (first at sample 5, layer 0, head 2, query 0, key 0: -0.5)" in message
    assert "worst sum 3 at sample 7, layer 1, head 1, query 2" in message
    assert "4 rows off" in message  # the NaN and the negative rows are off too
    assert "first at sample 6, layer 0, head 0, query 5, key 5" in message


def test_validate_lazy_store_reads_one_block_at_a_time(tmp_path, rng, monkeypatch):
    a = rng.random((80, 2, 4, 48, 48)).astype(np.float32)
    a /= a.sum(-1, keepdims=True)
    path = tmp_path / "big.zarr"
    ak.save_dataset(ak.from_arrays(a), path)
    ds = ak.open_dataset(path, chunks={"sample": 1})
    monkeypatch.setattr(akschema, "_VALIDATE_BLOCK_BYTES", 2 * a[0].nbytes)
    ak.validate(ds.isel(sample=slice(0, 2)))  # first-call imports and caches, not measured
    tracemalloc.start()
    try:
        ak.validate(ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < a.nbytes / 4, f"validate held {peak / 1e6:.1f} MB of a {a.nbytes / 1e6:.1f} MB store"


def test_cli_blocks_stream_a_lazy_store(tmp_path, rng):
    """`attnkit stats/rollout` without a cluster load one block of samples at a time."""
    from attnkit_cli import _datasets

    a = rng.random((100, 2, 4, 64, 64)).astype(np.float32)  # 13 MB, 2 samples a block
    a /= a.sum(-1, keepdims=True)
    path = tmp_path / "big.zarr"
    ak.save_dataset(ak.from_arrays(a), path)
    ds = _datasets.open_input(path, lazy=False, chunk=None)
    assert ds["attention"].chunks is not None  # nothing read yet
    expected = ak.head_stats(a)
    _datasets.run_blocks(ak.head_stats, ds.isel(sample=slice(0, 4)), client=None, chunk=2,
                         quiet=True, label="warm-up")
    tracemalloc.start()
    try:
        result = _datasets.run_blocks(ak.head_stats, ds, client=None, chunk=2, quiet=True,
                                      label="head stats")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    xr.testing.assert_allclose(result.drop_vars(["sample"], errors="ignore"), expected)
    assert peak < a.nbytes / 4, f"held {peak / 1e6:.1f} MB of a {a.nbytes / 1e6:.1f} MB store"
