"""Attention datasets: from_arrays, validate, save_dataset / open_dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr

import attnkit as ak
from attnkit.data import io as akio

needs_zarr = pytest.mark.needs_zarr
FORMATS = ["x.nc", pytest.param("x.zarr", marks=needs_zarr)]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def random_attention(rng, n, layers=2, heads=3, dtype=np.float64):
    """Softmax of random scores: strictly positive, rows sum to 1."""
    return softmax(rng.standard_normal((layers, heads, n, n)) * 2).astype(dtype)


def ragged_dataset(rng, *, extras=True, dtype=np.float64):
    ns = [int(x) for x in rng.integers(2, 9, size=3)]
    ns[0] = 9  # at least one full-length and (likely) some shorter samples
    ns[1] = min(ns[1], 8)
    att = [random_attention(rng, n, dtype=dtype) for n in ns]
    words = ["héllo", "日本", "ß", "tok", "ü", "😀", "a b", "x"]
    tokens = [[words[int(j)] for j in rng.integers(0, len(words), size=n)] for n in ns]
    kw = {}
    if extras:
        kw["q"] = [rng.standard_normal((2, 3, n, 4)).astype(dtype) for n in ns]
        kw["k"] = [rng.standard_normal((2, 3, n, 4)).astype(dtype) for n in ns]
        kw["gradient"] = [rng.standard_normal((2, 3, n, n)).astype(dtype) for n in ns]
    return ak.from_arrays(att, tokens=tokens, model="toy-model", source="unit test",
                          attrs={"seed_note": "fresh", "temperature": 0.5, "layers": 2}, **kw), ns


def assert_identical(a, b):
    xr.testing.assert_identical(a, b)
    for name in a.variables:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name].values, b[name].values)


# ----------------------------------------------------------------------------- from_arrays
def test_from_arrays_ragged_layout(rng):
    ds, ns = ragged_dataset(rng)
    n = max(ns)
    assert ds.attention.dims == ("sample", "layer", "head", "query", "key")
    assert dict(ds.attention.sizes) == {"sample": 3, "layer": 2, "head": 3, "query": n, "key": n}
    assert ds.length.values.tolist() == ns
    assert ds.length.dtype.kind == "i"
    assert ds.token.dims == ("sample", "position") and ds.token.dtype == object
    assert ds.q.dims == ("sample", "layer", "head", "position", "dim")
    assert ds.gradient.dims == ds.attention.dims
    for i, L in enumerate(ns):
        assert np.isnan(ds.attention.values[i, :, :, L:, :]).all()
        assert np.isnan(ds.attention.values[i, :, :, :, L:]).all()
        assert not np.isnan(ds.attention.values[i, :, :, :L, :L]).any()
        assert np.isnan(ds.q.values[i, :, :, L:]).all()
        assert all(t == "" for t in ds.token.values[i, L:])
    assert ds.attrs["attnkit_schema"] == ak.SCHEMA_VERSION == 1
    assert ds.attrs["created_with"] == ak.__version__
    assert ds.attrs["model"] == "toy-model" and ds.attrs["source"] == "unit test"
    ak.validate(ds)


def test_from_arrays_single_sample_and_lengths(rng):
    a = random_attention(rng, 5)
    ds = ak.from_arrays(a, tokens=list("abcde"))
    assert ds.sizes["sample"] == 1 and ds.length.values.tolist() == [5]
    np.testing.assert_array_equal(ds.attention.values[0], a)
    # dense input + explicit lengths: padding becomes NaN, valid block renormalised by caller
    dense = np.stack([random_attention(rng, 6) for _ in range(2)])
    dense[1, :, :, :4, :4] = softmax(rng.standard_normal((2, 3, 4, 4)))
    ds = ak.from_arrays(dense, lengths=[6, 4])
    assert np.isnan(ds.attention.values[1, :, :, 4:]).all()
    ak.validate(ds)
    # lengths inferred from tokens
    dense[1] = np.pad(dense[1, :, :, :4, :4], ((0, 0), (0, 0), (0, 2), (0, 2)))
    ds = ak.from_arrays(dense, tokens=[list("abcdef"), list("abcd")])
    assert ds.length.values.tolist() == [6, 4]
    ak.validate(ds)


def test_from_arrays_embedding_has_its_own_dim(rng):
    """``embedding`` is (sample, feature) whether or not q/k exist and whatever
    their width: a shared name would align unrelated axes when the sizes match."""
    a = [random_attention(rng, 4), random_attention(rng, 3)]
    q = [rng.standard_normal((2, 3, n, 8)) for n in (4, 3)]
    emb = rng.standard_normal((2, 16))
    ds = ak.from_arrays(a, q=q, k=q, v=[rng.standard_normal((2, 3, n, 5)) for n in (4, 3)],
                        embedding=emb)
    assert ds.embedding.dims == ("sample", "feature")
    assert ds.v.dims[-1] == "dim_v"
    for qk_width in (None, 16):  # no q/k, and q/k as wide as the embedding
        qk = None if qk_width is None else [rng.standard_normal((2, 3, n, qk_width))
                                            for n in (4, 3)]
        ds = ak.from_arrays(a, q=qk, k=qk, embedding=emb)
        assert ds.embedding.dims == ("sample", "feature")
        np.testing.assert_array_equal(ds.embedding.values, emb)
        ak.validate(ds)


def test_from_arrays_rejects_bad_input(rng):
    a = random_attention(rng, 4)
    with pytest.raises(TypeError, match=r"attrs\['flag'\].*bool.*Fix:"):
        ak.from_arrays(a, attrs={"flag": True})
    with pytest.raises(TypeError, match=r"attrs\['meta'\].*dict.*Fix:"):
        ak.from_arrays(a, attrs={"meta": {"a": 1}})
    with pytest.raises(ValueError, match=r"attention: expected shape .*Fix:"):
        ak.from_arrays(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"as many queries as keys"):
        ak.from_arrays(np.ones((1, 1, 3, 4)))
    with pytest.raises(ValueError, match=r"lengths\[0\]: expected an int in \[1, 4\]"):
        ak.from_arrays(a, lengths=[0])
    with pytest.raises(ValueError, match=r"tokens.*one token list per sample"):
        ak.from_arrays(np.stack([a, a]), tokens=[["a"]])


# ----------------------------------------------------------------------------- validate
def test_validate_catches_each_violation(rng):
    good, ns = ragged_dataset(rng, extras=False)
    short = int(np.argmin(ns))
    L = ns[short]

    def broken(fn):
        ds = good.copy(deep=True)
        out = fn(ds)
        return out if isinstance(out, xr.Dataset) else ds

    cases = [
        (lambda ds: ds.drop_vars("attention"), r"attention: expected a variable .*missing"),
        (lambda ds: ds.assign(attention=ds.attention.rename(query="q_")),
         r"attention: expected dims"),
        (lambda ds: ds.drop_vars("length"), r"length: expected an int variable.*missing"),
        (lambda ds: ds.assign(length=ds.length.astype(float)), r"length: expected an int dtype"),
        (lambda ds: ds.assign(length=ds.length * 0), r"length: expected ints in \[1, 9\]"),
        (lambda ds: ds.attention.values.__setitem__((0, 0, 0, 0), ds.attention.values[0, 0, 0, 0] * 0.9),
         r"sum to 1"),
        (lambda ds: ds.attention.values.__setitem__((0, 1, 2, 1, 0), -1e-3), r"negative"),
        (lambda ds: ds.attention.values.__setitem__((0, 0, 1, 0, 0), np.nan),
         r"no NaN inside the valid length"),
        (lambda ds: ds.attention.values.__setitem__((short, 0, 0, 0, L), 0.0),
         r"NaN in the padding"),
        (lambda ds: ds.attrs.pop("attnkit_schema"), r"attnkit_schema.*missing"),
        (lambda ds: ds.attrs.__setitem__("attnkit_schema", 2), r"written by a newer attnkit"),
        (lambda ds: ds.attrs.__setitem__("flag", False), r"attrs\['flag'\].*got bool"),
        (lambda ds: ds.attrs.__setitem__("meta", {"a": 1}), r"attrs\['meta'\].*got dict"),
        (lambda ds: ds.assign(gradient=ds.attention.transpose("sample", "layer", "query",
                                                              "head", "key")),
         r"gradient: expected dims"),
        (lambda ds: ds.assign(q=(("sample", "layer", "head", "dim"), np.zeros((3, 2, 3, 4)))),
         r"q: expected dims"),
        (lambda ds: ds.assign(embedding=(("dim",), np.zeros(4))), r"embedding: expected dims"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as info:
            ak.validate(broken(fn))
        assert "Fix:" in str(info.value)
        for line in str(info.value).splitlines()[1:]:
            assert line.startswith("- ") and "expected" in line and "Fix:" in line, line
    ak.validate(good)  # untouched


def test_validate_reports_all_problems_at_once(rng):
    ds, ns = ragged_dataset(rng, extras=False)
    ds = ds.copy(deep=True)
    ds.attention.values[0, 0, 0, 0, 0] = -0.5
    ds.attention.values[0, 1, 1, 2, 3] = np.nan
    ds.attrs["flag"] = True
    ds.attrs["attnkit_schema"] = 3
    with pytest.raises(ValueError) as info:
        ak.validate(ds)
    msg = str(info.value)
    assert msg.startswith("invalid attnkit dataset (")
    for part in ("negative", "no NaN inside", "sum to 1", "newer attnkit", "attrs['flag']"):
        assert part in msg, part
    assert len(msg.splitlines()) - 1 == int(msg.split("(")[1].split()[0]) >= 5


def test_validate_atol(rng):
    ds = ak.from_arrays(random_attention(rng, 5))
    ds.attention.values[0, 0, 0, 0] *= 1 + 1e-3
    with pytest.raises(ValueError, match="sum to 1"):
        ak.validate(ds)
    ak.validate(ds, atol=1e-2)


# ----------------------------------------------------------------------------- storage
@needs_zarr  # .nc is also saved again as .zarr
@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_exact(tmp_path, rng, name, dtype):
    ds, _ = ragged_dataset(rng, dtype=dtype)
    path = tmp_path / name
    ak.save_dataset(ds, path)
    back = ak.open_dataset(path)
    assert_identical(back, ds)
    assert back.token.values[0].tolist() == ds.token.values[0].tolist()
    assert sorted(os.listdir(tmp_path)) == [name]
    ak.validate(back)
    # saving what was opened works too, also across formats
    other = tmp_path / ("y.zarr" if name.endswith(".nc") else "y.nc")
    ak.save_dataset(back, other)
    assert_identical(ak.open_dataset(other), ds)


def test_netcdf_storage_settings(tmp_path, rng):
    import h5py

    ds, _ = ragged_dataset(rng)
    path = tmp_path / "x.nc"
    ak.save_dataset(ds, path)
    with h5py.File(path, "r") as f:
        att = f["attention"]
        assert att.compression == "gzip" and att.shuffle
        assert att.chunks[0] == 1 and att.chunks[1:] == att.shape[1:]


@pytest.mark.parametrize("name", FORMATS)
def test_open_with_chunks_is_lazy_and_identical(tmp_path, rng, name):
    pytest.importorskip("dask")
    ds, _ = ragged_dataset(rng, extras=False)
    ak.save_dataset(ds, tmp_path / name)
    back = ak.open_dataset(tmp_path / name, chunks={"sample": 1})
    assert back["attention"].chunks is not None
    assert back["attention"].chunksizes["sample"] == (1,) * ds.sizes["sample"]
    xr.testing.assert_identical(back.load(), ds)


def test_open_with_chunks_without_dask_loads(tmp_path, rng, monkeypatch):
    import attnkit.data.io

    ds, _ = ragged_dataset(rng, extras=False)
    ak.save_dataset(ds, tmp_path / "x.nc")
    monkeypatch.setattr(attnkit.data.io, "_dask_available", lambda: False)
    back = ak.open_dataset(tmp_path / "x.nc", chunks={"sample": 1})
    assert back["attention"].chunks is None
    xr.testing.assert_identical(back, ds)


@pytest.mark.parametrize("name", FORMATS)
def test_atomic_overwrite(tmp_path, rng, name):
    first, _ = ragged_dataset(rng, extras=False)
    second, _ = ragged_dataset(rng)
    path = tmp_path / name
    ak.save_dataset(first, path)
    ak.save_dataset(second, path)
    assert_identical(ak.open_dataset(path), second)
    assert sorted(os.listdir(tmp_path)) == [name]


@pytest.mark.parametrize("name", FORMATS)
def test_interrupted_write_keeps_previous(tmp_path, rng, monkeypatch, name):
    first, _ = ragged_dataset(rng, extras=False)
    second, _ = ragged_dataset(rng)
    path = tmp_path / name
    ak.save_dataset(first, path)
    writer = "_write_netcdf" if name.endswith(".nc") else "_write_zarr"
    real = getattr(akio, writer)
    seen = []

    def crash(ds, tmp):
        real(ds, tmp)  # the temporary file/directory is fully written ...
        seen.append(tmp)
        assert os.path.exists(tmp)
        with open(tmp if os.path.isfile(tmp) else os.path.join(tmp, "junk"), "ab") as f:
            f.write(b"half")
        raise OSError("disk full")  # ... then the write fails halfway

    monkeypatch.setattr(akio, writer, crash)
    with pytest.raises(OSError, match="disk full"):
        ak.save_dataset(second, path)
    assert seen and not os.path.exists(seen[0])
    assert sorted(os.listdir(tmp_path)) == [name]
    assert_identical(ak.open_dataset(path), first)


def test_save_validates_first(tmp_path, rng):
    ds = ak.from_arrays(random_attention(rng, 4))
    ds.attention.values[0, 0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        ak.save_dataset(ds, tmp_path / "x.nc")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"\.nc or \.zarr"):
        ak.save_dataset(ak.from_arrays(random_attention(rng, 4)), tmp_path / "x.txt")


def test_open_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nc"):
        ak.open_dataset(tmp_path / "nope.nc")


@needs_zarr
def test_open_corrupt_and_truncated(tmp_path, rng):
    bad = tmp_path / "x.nc"
    bad.write_bytes(rng.bytes(4096))
    with pytest.raises(ValueError, match=r"x\.nc: expected a readable netCDF4 file.*Fix:"):
        ak.open_dataset(bad)
    ds, _ = ragged_dataset(rng)
    good = tmp_path / "y.nc"
    ak.save_dataset(ds, good)
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"y\.nc: .*Fix:"):
        ak.open_dataset(good)
    store = tmp_path / "z.zarr"
    store.mkdir()
    (store / ".zgroup").write_text("{not json")
    with pytest.raises(ValueError, match=r"z\.zarr: .*Fix:"):
        ak.open_dataset(store)


@pytest.mark.parametrize("name", FORMATS)
def test_open_newer_schema(tmp_path, rng, name):
    ds = ak.from_arrays(random_attention(rng, 4))
    ds.attrs["attnkit_schema"] = 2
    path = tmp_path / name
    if name.endswith(".nc"):
        ds.to_netcdf(path, engine="h5netcdf")
    else:
        ds.to_zarr(path, mode="w", **akio.zarr_kwargs())
    with pytest.raises(ValueError, match="written by a newer attnkit.*Fix: upgrade"):
        ak.open_dataset(path)
    with pytest.raises(ValueError, match="written by a newer attnkit"):
        ak.validate(ds)


@pytest.mark.parametrize("name", FORMATS)
def test_saved_files_get_normal_permissions(tmp_path, rng, name):
    """Atomic writes go through private temp files; the result must not stay 0600."""
    ds, _ = ragged_dataset(rng, extras=False)
    old = os.umask(0o022)
    try:
        ak.save_dataset(ds, tmp_path / name)
    finally:
        os.umask(old)
    assert (tmp_path / name).stat().st_mode & 0o777 == (0o755 if name.endswith(".zarr") else 0o644)
