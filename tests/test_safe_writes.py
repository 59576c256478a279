"""Safe writes: a writer killed or failing mid-write never damages the previous file.

``ak.save_dataset`` (and every CLI writer) writes to a hidden temporary file or
directory next to the target, ``.<name>.tmp-XXXXXXXX<suffix>``, and renames it
into place when complete. These tests kill a real writer process with SIGKILL
while its temporary file is half written, interrupt one with SIGINT, make
writes fail with genuine exceptions, and check that

* the previous file is byte-for-byte what it was and opens to the same data;
* a failed (exception or Ctrl-C) write leaves no temporary file behind;
* a SIGKILLed writer cannot clean up: its hidden ``.tmp-`` file stays, and the
  target (and ``ls``, which hides dot files) is unaffected. Delete such
  leftovers by hand; the next save of the same target does not need them gone.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

import attnkit as ak
from attnkit.data import io as akio
from attnkit_cli.main import cli

FORMATS = ("attn.nc", "attn.zarr")
REPO = Path(__file__).resolve().parents[1]

# The writer process: builds a dataset of `samples` x (2, 4, 128, 128) float32
# attention (512 KiB a sample, one sample per chunk) and saves it to `path`.
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import attnkit as ak

    path, samples = sys.argv[1], int(sys.argv[2])
    a = np.random.default_rng(0).random((samples, 2, 4, 128, 128), dtype=np.float32)
    a /= a.sum(-1, keepdims=True)
    ds = ak.from_arrays(a, model="big", source="test_safe_writes")
    print("saving", flush=True)
    ak.save_dataset(ds, path)
    print("saved", flush=True)
""")


def small_dataset(rng, n_samples=3):
    samples = []
    for n in rng.integers(2, 7, n_samples):
        a = rng.random((2, 3, n, n))
        samples.append(a / a.sum(-1, keepdims=True))
    tokens = [[f"t{i}" for i in range(s.shape[-1])] for s in samples]
    return ak.from_arrays(samples, tokens=tokens, model="small")


def fingerprint(path: Path) -> dict:
    """sha256 of a file, or of every file in a directory (by relative path)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def temp_entries(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}.tmp-"))


def visible(folder: Path) -> list[str]:
    """What ``ls`` shows: no dot files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def data_written(tmp: Path) -> bool:
    """True once the temporary file/store holds real data, i.e. the write is under way."""
    try:
        if tmp.is_dir():
            chunks = tmp / "attention"
            return chunks.is_dir() and sum(1 for p in chunks.iterdir()
                                           if not p.name.startswith(".")) >= 2
        return tmp.stat().st_size > 1 << 20
    except FileNotFoundError:
        return False


def start_writer(path: Path, samples: int, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(samples)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)


def interrupt_mid_write(path: Path, sig: int, *, must_stop: bool = True):
    """Run the writer and send ``sig`` once its temporary file holds data.

    Returns the finished process, the temporary entries seen and the number of
    samples written. The data is sized so the write takes about a second; if
    the writer was too quick to catch (or, with ``must_stop``, survived the
    signal), it is rerun four times larger.
    """
    for samples in (96, 384):
        proc = start_writer(path, samples)
        deadline = time.monotonic() + 120
        seen: list[Path] = []
        while proc.poll() is None and time.monotonic() < deadline:
            seen = temp_entries(path.parent, path.name)
            if seen and data_written(seen[0]):
                proc.send_signal(sig)
                break
            time.sleep(0.002)
        else:
            proc.kill()
        out, err = proc.communicate(timeout=120)
        if seen and (proc.returncode != 0 or not must_stop):
            assert b"saving" in out, err.decode()
            return proc, seen, samples
    pytest.fail(f"the writer finished before it could be interrupted: {err.decode()[-2000:]}")


# ----------------------------------------------------------------------------- SIGKILL
# Opening the half-written leftover: h5netcdf's File.__del__ trips over the file it
# failed to open, and zarr warns that the store has no consolidated metadata yet.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
@pytest.mark.parametrize("name", FORMATS)
def test_sigkill_mid_write_keeps_the_previous_file(tmp_path, rng, name):
    path = tmp_path / name
    first = small_dataset(rng)
    ak.save_dataset(first, path)
    before = fingerprint(path)

    proc, seen, _ = interrupt_mid_write(path, signal.SIGKILL)

    assert proc.returncode == -signal.SIGKILL
    assert fingerprint(path) == before  # byte-for-byte the previous file
    xr.testing.assert_identical(ak.open_dataset(path), first)
    # A killed process cannot clean up: its hidden, partial temp file stays next to the
    # target, named ".<name>.tmp-...". ls does not show it and readers never open it.
    leftovers = temp_entries(tmp_path, name)
    assert leftovers == seen and all(p.name.startswith(f".{name}.tmp-") for p in leftovers)
    assert visible(tmp_path) == [name]
    # the half-written temp file is no valid dataset: netCDF does not open; zarr
    # opens (missing chunks read as the NaN fill value) and fails validation
    with pytest.raises(ValueError):
        ak.validate(ak.open_dataset(leftovers[0]))

    # the next save of the same target works and does not touch the leftover
    second = small_dataset(rng)
    ak.save_dataset(second, path)
    xr.testing.assert_identical(ak.open_dataset(path), second)
    assert temp_entries(tmp_path, name) == leftovers and visible(tmp_path) == [name]


# ----------------------------------------------------------------------------- SIGINT
@pytest.mark.parametrize("name", FORMATS)
def test_ctrl_c_mid_write_leaves_old_or_new_file_and_no_temp(tmp_path, rng, name):
    """SIGINT raises KeyboardInterrupt in the writer: the temp file/store is removed
    and the previous file kept. For zarr this needs the wait for zarr's IO thread,
    which otherwise goes on writing into the removed store. h5py (netCDF) often
    runs the KeyboardInterrupt inside a finalizer, where Python ignores it, and the
    write then completes: then the new file is in place, whole. Never a temp file."""
    path = tmp_path / name
    first = small_dataset(rng)
    ak.save_dataset(first, path)
    before = fingerprint(path)

    proc, seen, samples = interrupt_mid_write(path, signal.SIGINT, must_stop=name.endswith(".zarr"))

    assert not any(p.exists() for p in seen)
    assert sorted(os.listdir(tmp_path)) == [name]
    if proc.returncode != 0:  # interrupted: the previous file, untouched
        assert fingerprint(path) == before
        xr.testing.assert_identical(ak.open_dataset(path), first)
    else:  # the interrupt was swallowed and the save finished
        back = ak.open_dataset(path, chunks={"sample": 8})
        assert back.sizes["sample"] == samples and back.attrs["model"] == "big"


# ----------------------------------------------------------------------------- exceptions
@pytest.fixture
def temp_spy(monkeypatch):
    """Record the temporary files/directories the writers create (behaviour unchanged)."""
    import tempfile

    made: list[str] = []
    real_mkstemp, real_mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(name)
        return fd, name

    def mkdtemp(*args, **kwargs):
        name = real_mkdtemp(*args, **kwargs)
        made.append(name)
        return name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


@pytest.mark.parametrize("name", FORMATS)
def test_normal_write_leaves_only_the_target(tmp_path, rng, name, temp_spy):
    path = tmp_path / name
    for _ in range(2):  # a new file, then an overwrite
        ds = small_dataset(rng)
        ak.save_dataset(ds, path)
        assert sorted(os.listdir(tmp_path)) == [name]
        xr.testing.assert_identical(ak.open_dataset(path), ds)
    assert temp_spy and not any(os.path.exists(t) for t in temp_spy)


@pytest.mark.parametrize("name", FORMATS)
def test_failing_write_leaves_no_temp_and_keeps_previous(tmp_path, rng, name, temp_spy):
    """A dataset that validates but cannot be encoded fails inside the writer."""
    path = tmp_path / name
    first = small_dataset(rng)
    ak.save_dataset(first, path)
    before = fingerprint(path)
    temp_spy.clear()

    bad = small_dataset(rng)
    bad["note"] = ("sample", np.array([{"a": 1}, 2, "x"], dtype=object))
    ak.validate(bad)  # valid by the schema; the backend refuses it mid-write
    with pytest.raises(ValueError, match="unable to infer dtype"):
        ak.save_dataset(bad, path)

    assert temp_spy, "the failure should come after the temporary file was made"
    assert not any(os.path.exists(t) for t in temp_spy)
    assert sorted(os.listdir(tmp_path)) == [name]
    assert fingerprint(path) == before
    xr.testing.assert_identical(ak.open_dataset(path), first)


def test_failing_first_write_creates_nothing(tmp_path, rng, temp_spy):
    bad = small_dataset(rng)
    bad["note"] = ("sample", np.array([{"a": 1}, 2, "x"], dtype=object))
    for name in FORMATS:
        with pytest.raises(ValueError):
            ak.save_dataset(bad, tmp_path / name)
    assert os.listdir(tmp_path) == []
    assert len(temp_spy) == 2 and not any(os.path.exists(t) for t in temp_spy)


# ----------------------------------------------------------------------------- CLI writers
def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def nan_in_last_sample(tmp_path, rng):
    """A dataset file whose last sample is broken, so the command fails late."""
    ds = small_dataset(rng, n_samples=4)
    ds["attention"].values[-1, 0, 0, 0, 0] = np.nan
    path = tmp_path / "broken.nc"
    ds.to_netcdf(path, engine="h5netcdf")  # bypasses save_dataset's validation
    return path


@pytest.mark.parametrize("command", ["stats", "rollout"])
@pytest.mark.parametrize("suffix", [".nc", ".zarr", ".csv"])
def test_cli_failure_writes_nothing(tmp_path, nan_in_last_sample, command, suffix):
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"result{suffix}"
    result = run(command, nan_in_last_sample, "-o", target, "--chunk", "1")
    assert result.exit_code == 2, result.output
    assert "sample (3,)" in result.output and "Fix:" in result.output
    assert os.listdir(out) == []


@pytest.mark.parametrize("command", ["stats", "rollout"])
@pytest.mark.parametrize("suffix", [".nc", ".zarr", ".csv"])
def test_cli_write_error_keeps_previous_output(tmp_path, rng, monkeypatch, command, suffix):
    """The disk fills up halfway through writing -o: the previous result survives whole."""
    source = tmp_path / "attn.nc"
    ak.save_dataset(small_dataset(rng), source)
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"result{suffix}"
    assert run(command, source, "-o", target, "-q").exit_code == 0
    before = fingerprint(target)

    def half_a_dataset(ds, tmp):
        with open(os.path.join(tmp, "part") if os.path.isdir(tmp) else tmp, "ab") as fh:
            fh.write(b"half a file")
        raise OSError(28, "No space left on device")

    def half_a_csv(frame, fh, **kwargs):
        fh.write("layer,head\n0,")
        raise OSError(28, "No space left on device")

    if suffix == ".csv":
        monkeypatch.setattr(pd.DataFrame, "to_csv", half_a_csv)
    else:
        writer = "_write_netcdf" if suffix == ".nc" else "_write_zarr"
        monkeypatch.setattr(akio, writer, half_a_dataset)
    result = run(command, source, "-o", target, "-q")
    assert result.exit_code == 2, result.output
    assert "No space" in result.output
    assert sorted(os.listdir(out)) == [target.name]
    assert fingerprint(target) == before


def test_cli_attend_write_error_leaves_nothing(tmp_path, rng, monkeypatch):
    q = rng.standard_normal((2, 5, 4))
    np.savez(tmp_path / "qkv.npz", q=q, k=q, v=q)
    out = tmp_path / "out"
    out.mkdir()

    def fail(fh, **arrays):
        fh.write(b"PK\x03\x04 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", fail)
    result = run("attend", tmp_path / "qkv.npz", "-o", out / "r.npz")
    assert result.exit_code == 2 and "No space" in result.output
    assert os.listdir(out) == []


# ----------------------------------------------------------------------------- zarr replace
def test_zarr_replace_is_one_atomic_exchange_on_linux(tmp_path, rng, monkeypatch):
    """A directory cannot be renamed over another; on Linux the new store and the old
    one swap places in one renameat2(RENAME_EXCHANGE), so there is no instant without
    a complete store at the target (two renames would leave a gap)."""
    path = tmp_path / "attn.zarr"
    ak.save_dataset(small_dataset(rng), path)
    calls = []
    real = akio._exchange

    def spy(a, b):
        calls.append(real(a, b))
        return calls[-1]

    monkeypatch.setattr(akio, "_exchange", spy)
    second = small_dataset(rng)
    ak.save_dataset(second, path)
    xr.testing.assert_identical(ak.open_dataset(path), second)
    assert sorted(os.listdir(tmp_path)) == ["attn.zarr"]
    if sys.platform.startswith("linux"):
        assert calls == [True], "renameat2(RENAME_EXCHANGE) was not used"


def test_zarr_replace_without_exchange_falls_back_to_two_renames(tmp_path, rng, monkeypatch):
    path = tmp_path / "attn.zarr"
    ak.save_dataset(small_dataset(rng), path)
    monkeypatch.setattr(akio, "_exchange", lambda a, b: False)
    second = small_dataset(rng)
    ak.save_dataset(second, path)
    xr.testing.assert_identical(ak.open_dataset(path), second)
    assert sorted(os.listdir(tmp_path)) == ["attn.zarr"]


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("a")
    (b / "from_b").write_text("b")
    if not akio._exchange(a, b):
        assert not sys.platform.startswith("linux"), "renameat2 is missing on Linux"
        return
    assert os.listdir(a) == ["from_b"] and os.listdir(b) == ["from_a"]
    assert not akio._exchange(a, tmp_path / "missing")  # an error is False, not a raise
