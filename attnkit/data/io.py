"""Save and open attention datasets, atomically: netCDF4 (h5netcdf) and zarr.

Every write goes to a temporary file (or directory) next to the target and
is then renamed into place: a reader never sees a half-written file, and a
failed write leaves the previous file untouched and no temporary file behind.
Temporary files are created private (mode 0600); before the rename they get
the permissions a normally created file would have (0666 minus the umask,
0777 minus the umask for a zarr directory). :func:`atomic_file` is that
writer for any file (the CLI's CSV and ``.npz`` outputs, figures, reports).

zarr is imported only when a zarr store is written or read.

Packed storage: a float variable whose attrs hold ``packed_quantum_bits = k``
and whose finite values are all multiples of ``2**-k`` in ``[0, 65534 * 2**-k]``
(e.g. attention rounded by largest remainder to ``2**-12``) is written to
netCDF as uint16 counts with ``scale_factor = 2**-k`` (NaN as the fill value
65535): lossless, about 30% smaller than the float32 it decodes back to. Any
value off the grid is an error naming the fix, never a silent rounding.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from ..errors import value_error
from .schema import schema_problem, validate

__all__ = ["save_dataset", "open_dataset", "write_atomic", "read_error", "atomic_file",
           "normal_mode", "zarr_kwargs"]


# ----------------------------------------------------------------------------- atomic files
def normal_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file or directory here."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextlib.contextmanager
def atomic_file(path, suffix: str = ".tmp"):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     target = os.path.join(tmp, "out.txt")
    ...     with atomic_file(target) as part:
    ...         _ = open(part, "w").write("done")
    ...     sorted(os.listdir(tmp)), open(target).read()
    (['out.txt'], 'done')
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, normal_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- storage
def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = format.lower()
        if fmt in ("nc", "netcdf", "netcdf4", "h5netcdf"):
            return "netcdf"
        if fmt == "zarr":
            return "zarr"
        raise value_error("format", "'netcdf' or 'zarr'", format, "pass format='netcdf' or 'zarr'")
    suffix = path.suffix.lower()
    if suffix in (".nc", ".nc4", ".netcdf", ".h5"):
        return "netcdf"
    if suffix == ".zarr":
        return "zarr"
    raise value_error("path", "a name ending in .nc or .zarr", str(path),
                      "use a .nc or .zarr suffix, or pass format='netcdf' / 'zarr'")


def _clean_for_writing(ds):
    """A shallow copy with per-variable encodings dropped (they may come from
    another backend) and the token coordinate as object-dtype str."""
    out = ds.copy()
    for name in out.variables:
        out[name].encoding = {}
    if "token" in out.variables:
        out = out.assign_coords(token=out["token"].astype(object))
    return out


#: The attr that asks for packed uint16 storage (see the module docstring).
PACKED_BITS_ATTR = "packed_quantum_bits"
_PACKED_FILL = 65535


def _packed_encoding(name: str, var) -> dict:
    """uint16 + scale_factor encoding for a variable on a 2**-k grid (checked), else {}."""
    import numpy as np

    bits = var.attrs.get(PACKED_BITS_ATTR)
    if bits is None:
        return {}
    if not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 16:
        raise value_error(f"{name}.attrs[{PACKED_BITS_ATTR!r}]", "an int in [1, 16]", repr(bits),
                          f"set it to the k of the 2**-k grid, or delete it")
    quantum = 2.0 ** -int(bits)
    values = np.asarray(var.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    counts = finite / quantum
    if finite.size and (not np.array_equal(counts, np.rint(counts)) or counts.min() < 0
                        or counts.max() >= _PACKED_FILL):
        raise value_error(
            name, f"values on the grid of multiples of 2**-{int(bits)} in [0, "
            f"{(_PACKED_FILL - 1) * quantum:g}] (its {PACKED_BITS_ATTR} attr)",
            "values off that grid", f"round them first, or delete the {PACKED_BITS_ATTR} attr")
    if np.isinf(values).any():
        raise value_error(name, "finite values or NaN for packed storage", "inf",
                          f"delete the {PACKED_BITS_ATTR} attr")
    return {"dtype": "uint16", "scale_factor": np.float32(quantum), "_FillValue": _PACKED_FILL}


def _write_netcdf(ds, tmp_path: str) -> None:
    encoding = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "OUST" or type(var.dtype).__name__ == "StringDType" or var.ndim == 0:
            continue
        enc = {"zlib": True, "complevel": 4, "shuffle": True, **_packed_encoding(name, var)}
        if var.dims and var.dims[0] == "sample" and var.ndim > 1:
            enc["chunksizes"] = (1, *var.shape[1:])
        encoding[name] = enc
    ds.to_netcdf(tmp_path, engine="h5netcdf", format="NETCDF4", encoding=encoding)


def zarr_kwargs() -> dict:
    """Keyword arguments for ``to_zarr`` that write zarr format 2, as attnkit's stores are.

    Under zarr 3 (format 3 by default) this is ``{"zarr_format": 2}``; under zarr 2, ``{}``.
    """
    import zarr

    major = int(str(zarr.__version__).split(".")[0])
    return {"zarr_format": 2} if major >= 3 else {}


def _write_zarr(ds, tmp_path: str) -> None:
    encoding = {}
    for name, var in ds.variables.items():
        if var.dims and var.dims[0] == "sample" and var.ndim > 1 and var.dtype.kind != "O":
            encoding[name] = {"chunks": (1, *var.shape[1:])}
    ds.to_zarr(tmp_path, mode="w", encoding=encoding, consolidated=True, **zarr_kwargs())


def _exchange(a, b) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    A directory cannot be renamed over a non-empty one, so replacing a zarr
    store otherwise takes two renames (old store aside, new one in), and a
    process killed between them would leave no store at the target. Returns
    False where the call or the file system does not support it.
    """
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(os.fspath(a)), at_fdcwd, os.fsencode(os.fspath(b)),
                     rename_exchange) == 0


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def _wait_for_zarr_writes(timeout: float = 60.0) -> None:
    """Let zarr's in-flight chunk writes finish after a failed or interrupted write.

    zarr 3 writes chunks from its own event-loop thread. When the calling
    thread stops early (an exception, or Ctrl-C), that thread goes on writing
    the rest of the array into the temporary store, and would re-create it
    after it is removed. Waiting (not cancelling: other threads may be using
    zarr's loop) lets the temporary store be removed for good.
    """
    try:
        from zarr.core import sync as zarr_sync
    except ImportError:  # zarr 2 writes synchronously
        return
    loop = zarr_sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def others_done():
        import asyncio

        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    import asyncio

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(others_done(), loop).result(timeout + 1)


def _remove_store(path: str) -> None:
    """Remove a temporary zarr store once no write can bring it back."""
    import time

    _wait_for_zarr_writes()
    for _ in range(20):  # a chunk already handed to a worker thread may still land
        _remove(path)
        time.sleep(0.01)
        if not os.path.lexists(path):
            return


def save_dataset(ds, path, *, format: str | None = None) -> None:
    """Validate ``ds`` and write it atomically to netCDF4 (``.nc``) or zarr (``.zarr``).

    netCDF goes through h5netcdf with zlib compression, shuffle and one sample
    per chunk; zarr stores the tokens as variable-length str. The data is
    first written to a temporary file (or directory) next to ``path`` and then
    renamed into place, so a failure mid-write leaves any previous file intact
    and no temporary files behind.

    Parameters
    ----------
    ds : xarray.Dataset
        A schema-1 attention dataset (see :func:`validate`).
    path : str or os.PathLike
    format : {"netcdf", "zarr"}, optional
        Taken from the suffix of ``path`` when not given.

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((2, 1, 1, 2, 2), 0.5), tokens=[["hi", "ü"], ["a", "b"]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ak.save_dataset(ds, os.path.join(tmp, "attn.nc"))
    ...     back = ak.open_dataset(os.path.join(tmp, "attn.nc"))
    ...     sorted(os.listdir(tmp))
    ['attn.nc']
    >>> back.identical(ds)
    True
    """
    validate(ds)
    write_atomic(ds, path, format=format)


def write_atomic(ds, path, *, format: str | None = None) -> None:
    """Write any Dataset to netCDF4 or zarr atomically, without schema checks.

    :func:`save_dataset` validates and then calls this; analysis results
    (head statistics, rollout, flow) that are not attention datasets are
    written with it directly.

    Examples
    --------
    >>> import os, tempfile, xarray as xr
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_atomic(xr.Dataset({"x": ("a", [1.0, 2.0])}), os.path.join(tmp, "r.nc"))
    ...     sorted(os.listdir(tmp))
    ['r.nc']
    """
    path = Path(os.fspath(path))
    fmt = _format_of(path, format)
    ds = _clean_for_writing(ds)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: expected an existing directory {parent}, got none. "
                                f"Fix: create it first (os.makedirs)")
    prefix = f".{path.name}.tmp-"
    if fmt == "netcdf":
        with atomic_file(path, suffix=".nc") as tmp:
            _write_netcdf(ds, tmp)
        return

    tmp = tempfile.mkdtemp(prefix=prefix, suffix=".zarr", dir=parent)
    aside = None
    try:
        _write_zarr(ds, tmp)
        os.chmod(tmp, normal_mode(directory=True))
        if os.path.lexists(path) and _exchange(tmp, path):
            # one atomic step: path is the new store, tmp holds the old one
            _remove(tmp)
            return
        if os.path.lexists(path):
            aside = tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent)
            os.rmdir(aside)
            os.rename(path, aside)
        try:
            os.rename(tmp, path)
        except BaseException:
            if aside is not None:
                os.rename(aside, path)
                aside = None
            raise
    except BaseException:
        _remove_store(tmp)
        raise
    if aside is not None:
        _remove(aside)


def _dask_available() -> bool:
    try:
        import dask  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_chunk_warning():
    """Silence xarray's warning that lazy chunks split stored chunks: the small
    1-D variables (``length``) are stored whole, and splitting them is harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified chunks separate")
        yield


def _import_hint(path: Path) -> ValueError | None:
    """The error for attention saved by another tool (an .npz, .npy, .safetensors or .pt
    file), which `attnkit import` reads; None for any other path."""
    from .importers import ATTENTION_FILE_SUFFIXES

    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in ATTENTION_FILE_SUFFIXES:
        return None
    return ValueError(f"{path}: expected an attention dataset (.nc or .zarr), got a {suffix} "
                      f"file. Fix: bring it in with `attnkit import {path} --tokens T "
                      f"--attention-mask M -o DS` (or ak.from_hf_attentions)")


def read_error(path, exc: BaseException) -> ValueError:
    """The ValueError for a dataset file that cannot be read (corrupt, truncated,
    not netCDF/zarr). Lazily opened data fails only when a chunk is read: callers
    that compute on it use this for the same message. Attention saved by another
    tool (.npz, .npy, .safetensors, .pt) gets the `attnkit import` hint instead."""
    path = Path(os.fspath(path))
    hint = _import_hint(path)
    if hint is not None:
        return hint
    zarr_like = path.is_dir() or path.suffix.lower() == ".zarr"
    kind, fmt = ("zarr store", "zarr") if zarr_like else ("netCDF4 file", "netcdf")
    return ValueError(f"{path}: expected a readable {kind}, got an unreadable or truncated one "
                      f"({type(exc).__name__}: {exc}). Fix: re-create it with ak.save_dataset; "
                      f"the file may be corrupt or not a {fmt} file")


def open_dataset(path, *, chunks=None):
    """Open an attention dataset saved by :func:`save_dataset` (netCDF or zarr).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.nc`` file or a ``.zarr`` directory.
    chunks : dict or "auto", optional
        When given and dask is installed, the data stays lazy (dask arrays);
        otherwise everything is loaded into memory and the file closed.

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is corrupt or truncated, is not an attnkit dataset, or was
        written by a newer attnkit (schema version above 1). Attention saved by
        another tool (.npz, .npy, .safetensors, .pt) is refused with the fix:
        ``attnkit import`` (or :func:`attnkit.from_hf_attentions`).

    Examples
    --------
    >>> import os, tempfile, numpy as np, attnkit as ak
    >>> ds = ak.from_arrays(np.full((1, 1, 4, 4), 0.25), tokens=list("abcd"))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ak.save_dataset(ds, os.path.join(tmp, "attn.zarr"))
    ...     back = ak.open_dataset(os.path.join(tmp, "attn.zarr"))
    >>> back.token.values.tolist(), int(back.attrs["attnkit_schema"])
    ([['a', 'b', 'c', 'd']], 1)
    """
    from .accessor import registered_xarray  # here, so `import attnkit` stays light

    xr = registered_xarray()
    path = Path(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: expected an attnkit dataset (.nc file or .zarr directory), "
                                f"got no such file. Fix: check the path, or write one with "
                                f"ak.save_dataset")
    hint = _import_hint(path)
    if hint is not None:
        raise hint
    fmt = "zarr" if (path.is_dir() or path.suffix.lower() == ".zarr") else "netcdf"
    lazy = chunks is not None and _dask_available()
    try:
        if fmt == "zarr":
            import zarr  # noqa: F401

            with _quiet_chunk_warning():
                ds = xr.open_zarr(path, chunks=chunks if lazy else None)
        else:
            with _quiet_chunk_warning():
                ds = xr.open_dataset(path, engine="h5netcdf", chunks=chunks if lazy else None)
        if not lazy:
            loaded = ds.load()
            ds.close()
            ds = loaded
    except ImportError:
        raise
    except Exception as exc:
        raise read_error(path, exc) from exc
    problem = schema_problem(ds.attrs)
    if problem is not None:
        ds.close()
        raise ValueError(f"{path}: {problem}.")
    if "token" in ds.variables and ds["token"].dtype != object:
        ds = ds.assign_coords(token=ds["token"].astype(object))
    if "attnkit_schema" in ds.attrs:
        ds.attrs["attnkit_schema"] = int(ds.attrs["attnkit_schema"])
    for name in ds.variables:
        ds[name].encoding.pop("source", None)
    return ds
