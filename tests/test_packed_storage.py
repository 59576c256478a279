"""Packed netCDF storage: a variable on a 2**-k grid (packed_quantum_bits attr) is written as
uint16 counts and read back bit for bit; anything off the grid is refused, nothing written."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit as ak


def _grid_dataset(rng, bits):
    lengths = [5, 3]
    attention = []
    for n in lengths:
        counts = rng.integers(1, 50, (2, 2, n, n)).astype(np.float64)
        counts[..., -1] += (2**bits) - counts.sum(-1)  # rows of 2**bits quanta sum to exactly 1
        attention.append(counts / 2**bits)
    ds = ak.from_arrays(attention, tokens=[list("abcde"), list("xyz")])
    ds["attention"] = ds.attention.astype(np.float32)
    ds.attention.attrs["packed_quantum_bits"] = bits
    return ds


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_packed_round_trip_is_exact_and_smaller(rng, tmp_path, bits):
    ds = _grid_dataset(rng, bits)
    ak.save_dataset(ds, tmp_path / "packed.nc")
    back = ak.open_dataset(tmp_path / "packed.nc").load()
    assert back.attention.encoding["dtype"] == np.dtype("uint16")
    assert back.attention.dtype == np.float32
    np.testing.assert_array_equal(back.attention.values, ds.attention.values)  # NaN padding too
    assert int(back.attention.attrs["packed_quantum_bits"]) == bits
    plain = ds.copy()
    plain["attention"] = ds.attention.copy()
    plain.attention.attrs = {}
    ak.save_dataset(plain, tmp_path / "plain.nc")
    ak.save_dataset(back, tmp_path / "again.nc")  # an opened packed dataset re-saves packed
    assert ak.open_dataset(tmp_path / "again.nc").attention.encoding["dtype"] == np.dtype("uint16")


@pytest.mark.parametrize("change, match", [
    (lambda a: a + 2.0**-20, "values on the grid of multiples of 2\\*\\*-12"),
    (lambda a: -a, "values on the grid"),
    (lambda a: np.where(np.isnan(a), a, np.inf), "finite values or NaN"),
])
def test_values_off_the_grid_are_refused_and_nothing_is_written(rng, tmp_path, change, match):
    ds = _grid_dataset(rng, 12)
    grid = rng.integers(0, 4096, (2, 5)) / 4096.0
    ds["packed"] = (("sample", "position"), change(grid), {"packed_quantum_bits": 12})
    target = tmp_path / "bad.nc"
    with pytest.raises(ValueError, match=match):
        ak.save_dataset(ds, target)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_bits_attr_names_the_fix(rng, tmp_path):
    ds = _grid_dataset(rng, 12)
    ds.attention.attrs["packed_quantum_bits"] = 40
    with pytest.raises(ValueError, match="an int in \\[1, 16\\].*delete it"):
        ak.save_dataset(ds, tmp_path / "bad.nc")
