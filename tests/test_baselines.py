"""ak.baseline_scores: control scores with known values."""

import numpy as np
import pytest

import attnkit as ak
from attnkit.correlate import ConstantInputWarning


@pytest.fixture
def ds():
    tokens = [["[CLS]", "the", "cat", "##s", "[SEP]"], ["[CLS]", "hello", "[SEP]"]]
    samples = [np.full((1, 1, 5, 5), 0.2), np.full((1, 1, 3, 3), 1 / 3)]
    return ak.from_arrays(samples, tokens=tokens)


def test_length_counts_characters_without_wordpiece_marks(ds):
    got = ak.baseline_scores(ds, "length")
    np.testing.assert_array_equal(got.values[0], [5, 3, 3, 1, 5])
    np.testing.assert_array_equal(got.values[1, :3], [5, 5, 5])
    assert np.isnan(got.values[1, 3:]).all()
    assert got.name == "length_baseline" and got.dims == ("sample", "position")
    assert list(got.token.values[0]) == ["[CLS]", "the", "cat", "##s", "[SEP]"]


def test_position_uniform_and_seeded_random(ds):
    np.testing.assert_array_equal(ak.baseline_scores(ds, "position").values[1, :3], [0, 1, 2])
    np.testing.assert_allclose(ak.baseline_scores(ds, "uniform").values[1, :3], 1 / 3)
    a = ak.baseline_scores(ds, "random", seed=3).values
    b = ak.baseline_scores(ds, "random", seed=3).values
    c = ak.baseline_scores(ds, "random", seed=4).values
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(np.nan_to_num(a), np.nan_to_num(c))
    assert ((a[0] >= 0) & (a[0] < 1)).all() and np.isnan(a[1, 3:]).all()


def test_length_control_correlates_with_itself_perfectly(ds):
    length = ak.baseline_scores(ds, "length")
    with pytest.warns(ConstantInputWarning):
        res = ak.correlate(length, length * 2 + 1, method="spearman", dim="position")
    assert res["statistic"].values[0] == pytest.approx(1.0)
    assert np.isnan(res["statistic"].values[1])  # "[CLS] hello [SEP]": 5, 5, 5 is constant


def test_errors(ds):
    with pytest.raises(ValueError, match=r"kind: expected one of \('random'"):
        ak.baseline_scores(ds, "entropy")
    with pytest.raises(ValueError, match="a `token` coordinate for kind='length'"):
        ak.baseline_scores(ak.from_arrays(np.full((1, 1, 1, 2, 2), 0.5)), "length")
    images = ds.copy()
    images.attrs["readout"] = "patches"
    with pytest.raises(ValueError, match="patches have no characters"):
        ak.baseline_scores(images, "length")
    with pytest.raises(ValueError, match="seed: expected an int"):
        ak.baseline_scores(ds, "random", seed=0.5)
