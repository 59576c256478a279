"""ds.attn delegates to the public functions and gives the same numbers."""

import numpy as np
import pytest

import attnkit as ak


@pytest.fixture
def ds(rng):
    lengths = [5, 3]
    samples = []
    for m in lengths:
        a = rng.random((2, 3, m, m))
        samples.append(a / a.sum(-1, keepdims=True))
    grads = [rng.standard_normal(a.shape) for a in samples]
    return ak.from_arrays(samples, gradient=grads,
                          tokens=[["[CLS]", "a", ",", "b", "[SEP]"], ["[CLS]", "c", "[SEP]"]])


def test_accessor_matches_public_functions(ds):
    np.testing.assert_array_equal(ds.attn.rollout(residual=0.3).values,
                                  ak.rollout(ds, residual=0.3).values)
    np.testing.assert_array_equal(ds.attn.grad_rollout().values, ak.grad_rollout(ds, None).values)
    st = ds.attn.head_stats()
    np.testing.assert_array_equal(st.entropy.values, ak.head_stats(ds).entropy.values)
    assert ds.attn.stats().identical(st)
    assert ds.attn.validate() is None


def test_accessor_save_round_trip(ds, tmp_path):
    ds.attn.save(tmp_path / "a.nc")
    back = ak.open_dataset(tmp_path / "a.nc")
    np.testing.assert_array_equal(back.attention.values, ds.attention.values)
    assert hasattr(back, "attn")


def test_accessor_validate_reports_problems(ds):
    bad = ds.copy(deep=True)
    bad["attention"][0, 0, 0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        bad.attn.validate()


def test_accessor_correlate_uses_scores_and_impact(ds, rng):
    import xarray as xr

    impact = rng.random((2, 5, 2))
    impact[1, 3:] = np.nan
    ds["impact"] = xr.DataArray(impact, dims=("sample", "position", "method"),
                                coords={"method": ["delete", "mask"]})
    got = ds.attn.correlate("raw", "mask", method="pearson", n_boot=50)
    want = ak.correlate(ak.attention_scores(ds, "raw"), ds.impact.sel({"method": "mask"}, drop=True),
                        method="pearson", n_boot=50)
    np.testing.assert_array_equal(got.statistic.values, want.statistic.values)
    assert got.statistic.dims == ("sample", "layer") and np.isfinite(got.statistic.values).all()
