"""ak.correlate / ak.compare_correlations against scipy.stats, edge cases, summaries."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

import attnkit as ak
from attnkit.correlate import ConstantInputWarning, DegenerateInputWarning, TooFewPositionsWarning
from attnkit.kernels.cpu import correlate as kernels

SCIPY = {"kendall": stats.kendalltau, "spearman": stats.spearmanr, "pearson": stats.pearsonr}
TOL = dict(rtol=1e-12, atol=1e-12)


def scipy_reference(name, x, y, **kwargs):
    """(statistic, pvalue) from scipy, NaN for degenerate input, our n = 2 convention."""
    if len(x) < 2:
        return np.nan, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = SCIPY[name](x, y, **kwargs)
    stat, p = float(res.statistic), float(res.pvalue)
    if len(x) == 2 and not np.isnan(stat):
        p = 1.0  # scipy's Spearman gives NaN here (t test with 0 dof); documented
    return stat, p


def assert_matches_scipy(statistic, pvalue, ref, err_msg=""):
    """(statistic, pvalue) against scipy's, to TOL.

    At |r| = 1 the p-value's slope in r is infinite: scipy's r for x == y can
    come out as 1 - 2e-16, which with 3 positions is p = 1.3e-8 where the exact
    r = 1 gives p = 0. There the p-value only has to be as small as scipy's,
    give or take that rounding.
    """
    assert_allclose(statistic, ref[0], **TOL, err_msg=err_msg)
    if abs(ref[0]) > 1 - 1e-12:
        assert 0.0 <= pvalue <= ref[1] + 1e-7, (err_msg, pvalue, ref)
    else:
        assert_allclose(pvalue, ref[1], **TOL, err_msg=err_msg)


def ragged_pairs(rng, rows, n, ties):
    """(rows, n) x and y with NaN padding after random lengths in [2, n]."""
    if ties:  # integer values from a small range: many ties in x, y and jointly
        k = int(rng.integers(1, 6))
        x = rng.integers(0, k + 1, (rows, n)).astype(float)
        y = rng.integers(0, k + 1, (rows, n)).astype(float)
    else:
        x = rng.standard_normal((rows, n))
        y = rng.random((rows, 1)) * x + rng.standard_normal((rows, n))
    lengths = rng.integers(2, n + 1, rows)
    for i, length in enumerate(lengths):
        x[i, length:] = np.nan
        y[i, length:] = np.nan
    return x, y, lengths


def quiet_correlate(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateInputWarning)
        return ak.correlate(*args, **kwargs)


# ----------------------------------------------------------------------------- vs scipy
@pytest.mark.parametrize("method", ["kendall", "spearman", "pearson"])
@pytest.mark.parametrize("ties", [True, False])
def test_matches_scipy(rng, method, ties):
    rows, n = int(rng.integers(20, 40)), int(rng.integers(3, 70))
    x, y, lengths = ragged_pairs(rng, rows, n, ties)
    # scipy's p-values are asymptotic here except Kendall's without ties, which is exact for
    # n <= 33 in both; our "auto" is exact/permutation for every method at n <= 33 (checked in
    # tests/test_correlate_controls.py)
    pvalue_method = "auto" if method == "kendall" and not ties else "asymptotic"
    kwargs = {"method": "asymptotic"} if method == "kendall" and ties else {}
    res = quiet_correlate(x, y, method=method, n_boot=10, pvalue_method=pvalue_method)
    assert res.statistic.shape == (rows,)
    assert_array_equal(res.n_positions, lengths)
    for i, length in enumerate(lengths):
        # (scipy's asymptotic Kendall divides by n - 2; at n = 2 our p-value is 1 anyway)
        ref = scipy_reference(method, x[i, :length], y[i, :length],
                              **(kwargs if length > 2 else {}))
        assert_matches_scipy(res.statistic[i], res.pvalue[i], ref, err_msg=f"row {i}")


def test_kendall_exact_pvalues_match_scipy(rng):
    """No ties and n <= 33: scipy's 'auto' uses the exact null distribution."""
    for n in (3, 4, 5, 9, int(rng.integers(10, 34)), 33):
        x, y = rng.standard_normal(n), rng.standard_normal(n)
        res = ak.correlate(x, y, n_boot=10)
        assert_allclose([res.statistic, res.pvalue], scipy_reference("kendall", x, y), **TOL)


@pytest.mark.parametrize("n", [40, 120, 200])
def test_kendall_exact_pvalue_for_nearly_sorted_long_rows(n):
    """min(discordant, concordant) <= 1 picks the exact method at any n (0 beyond 170!)."""
    x = np.arange(float(n))
    for y in (x.copy(), x[::-1].copy(), np.r_[x[1::-1], x[2:]]):
        res = ak.correlate(x, y, n_boot=10)
        assert_allclose([res.statistic, res.pvalue], scipy_reference("kendall", x, y), **TOL)


def test_kendall_asymptotic_pvalue_method(rng):
    x, y = rng.standard_normal((2, 15))
    res = ak.correlate(x, y, pvalue_method="asymptotic", n_boot=10)
    ref = scipy_reference("kendall", x, y, method="asymptotic")
    assert_allclose([res.statistic, res.pvalue], ref, **TOL)


def test_leading_dims_and_axis(rng):
    x = rng.integers(0, 4, (3, 11, 4)).astype(float)
    y = rng.integers(0, 4, (3, 11, 1)).astype(float)  # broadcasts over the last axis
    res = quiet_correlate(x, y, method="spearman", dim=1, n_boot=10, pvalue_method="asymptotic")
    assert res.statistic.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            ref = scipy_reference("spearman", x[i, :, j], y[i, :, 0])
            assert_matches_scipy(res.statistic[i, j], res.pvalue[i, j], ref)


def test_int_and_float32_inputs(rng):
    x = rng.integers(0, 5, 30)
    y = rng.standard_normal(30).astype(np.float32)
    res = ak.correlate(x, y, method="spearman", n_boot=10)
    assert_allclose(res.statistic, scipy_reference("spearman", x, y.astype(np.float64))[0],
                    **TOL)


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("method", ["kendall", "spearman", "pearson"])
def test_constant_input_gives_nan_and_warns(rng, method):
    x, y = rng.standard_normal((4, 9)), rng.standard_normal((4, 9))
    x[1] = 3.0
    y[2, :5] = -1.0
    with pytest.warns(ConstantInputWarning, match="2 of 4 instances have a constant input"):
        res = ak.correlate(x, y, method=method, lengths=[9, 9, 5, 9], n_boot=10)
    assert np.isnan(res.statistic[[1, 2]]).all() and np.isnan(res.pvalue[[1, 2]]).all()
    for i in (0, 3):
        assert_allclose(res.statistic[i], scipy_reference(method, x[i], y[i])[0], **TOL)
    assert int(res.n_instances) == 2


@pytest.mark.parametrize("method", ["kendall", "spearman", "pearson"])
def test_lengths_two_and_one(rng, method):
    x, y = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    y[0, :2] = x[0, :2] * 2.0  # same order: +1
    y[1, :2] = -x[1, :2]  # opposite order: -1
    with pytest.warns(TooFewPositionsWarning, match="1 of 3 instances have fewer than 2"):
        res = ak.correlate(x, y, method=method, lengths=[2, 2, 1], n_boot=10)
    assert_array_equal(res.statistic[:2], [1.0, -1.0])
    assert_array_equal(res.pvalue[:2], [1.0, 1.0])
    assert np.isnan(res.statistic[2]) and np.isnan(res.pvalue[2])
    assert_array_equal(res.n_positions, [2, 2, 1])


def test_all_positions_invalid_is_nan_with_warning():
    x = np.full((2, 4), np.nan)
    with pytest.warns(TooFewPositionsWarning):
        res = ak.correlate(x, np.ones((2, 4)), n_boot=10)
    assert np.isnan(res.statistic).all() and np.isnan(res.mean_statistic)
    assert int(res.n_instances) == 0


@pytest.mark.parametrize("method", ["kendall", "spearman", "pearson"])
def test_lengths_and_nan_padding_are_respected(rng, method):
    rows, n = 12, 17
    x, y = rng.standard_normal((rows, n)), rng.standard_normal((rows, n))
    lengths = rng.integers(3, n + 1, rows)
    garbage_x, garbage_y = x.copy(), y.copy()
    padded_x, padded_y = x.copy(), y.copy()
    for i, length in enumerate(lengths):
        garbage_x[i, length:] = rng.standard_normal(n - length) * 1e6
        garbage_y[i, length:] = 7.0
        padded_y[i, length:] = np.nan  # NaN in one input is enough
    # like scipy: Kendall exact without ties (these have none), the others asymptotic
    asymptotic = {"method": method, "n_boot": 10,
                  "pvalue_method": "auto" if method == "kendall" else "asymptotic"}
    by_lengths = ak.correlate(garbage_x, garbage_y, lengths=lengths, **asymptotic)
    by_nan = ak.correlate(padded_x, padded_y, **asymptotic)
    for i, length in enumerate(lengths):
        ref = scipy_reference(method, x[i, :length], y[i, :length])
        assert_allclose([by_lengths.statistic[i], by_lengths.pvalue[i]], ref, **TOL)
        assert_allclose([by_nan.statistic[i], by_nan.pvalue[i]], ref, **TOL)
    assert_array_equal(by_lengths.n_positions, lengths)


def test_exclude_positions_mask_and_special_tokens(rng):
    n = 10
    x, y = rng.standard_normal((3, n)), rng.standard_normal((3, n))
    lengths = np.array([10, 7, 5])
    # [0, -1]: the first and each instance's last valid position ([CLS], [SEP])
    res = ak.correlate(x, y, lengths=lengths, exclude=[0, -1], method="pearson", n_boot=10)
    for i, length in enumerate(lengths):
        ref = scipy_reference("pearson", x[i, 1:length - 1], y[i, 1:length - 1])
        assert_allclose(res.statistic[i], ref[0], **TOL)
    mask = np.zeros((3, n), dtype=bool)
    mask[:, [2, 4]] = True
    res = ak.correlate(x, y, exclude=mask, method="pearson", n_boot=10)
    keep = np.setdiff1d(np.arange(n), [2, 4])
    assert_allclose(res.statistic[1], scipy_reference("pearson", x[1, keep], y[1, keep])[0], **TOL)
    tokens = np.array(["[CLS]", "a", "b", "[SEP]", "c", "d", "e", "f", "g", "[SEP]"])
    res = ak.correlate(x, y, exclude="special", tokens=tokens, method="pearson", n_boot=10)
    keep = [1, 2, 4, 5, 6, 7, 8]
    assert_allclose(res.statistic[2], scipy_reference("pearson", x[2, keep], y[2, keep])[0], **TOL)
    assert_array_equal(res.n_positions, [7, 7, 7])


# ----------------------------------------------------------------------------- summary
def test_bootstrap_reproducible_and_contains_mean(rng):
    x = rng.standard_normal((60, 12))
    y = 0.5 * x + rng.standard_normal((60, 12))
    seed = int(rng.integers(0, 2**31))
    a = ak.correlate(x, y, method="spearman", seed=seed, n_boot=500)
    b = ak.correlate(x, y, method="spearman", seed=seed, n_boot=500)
    c = ak.correlate(x, y, method="spearman", seed=seed + 1, n_boot=500)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.mean_statistic < a.ci_high
    assert_allclose(a.mean_statistic, np.mean(a.statistic), rtol=1e-14)
    assert a.significant_fraction == np.mean(a.pvalue < 0.05)
    wider = ak.correlate(x, y, method="spearman", seed=seed, n_boot=500, ci=0.99)
    assert wider.ci_low <= a.ci_low and wider.ci_high >= a.ci_high
    # a cell's interval does not depend on the other cells summarised alongside it
    both = ak.correlate(np.stack([x, x[::-1]], 1), y[:, None], method="spearman", seed=seed,
                        n_boot=500, over=0)
    assert (both.ci_low[0], both.ci_high[0]) == (a.ci_low, a.ci_high)


def test_summary_over_axes_and_alpha(rng):
    x = rng.standard_normal((30, 3, 15))
    y = x + rng.standard_normal((30, 3, 15)) * np.array([0.1, 1.0, 10.0])[:, None]
    res = ak.correlate(x, y, over=0, alpha=0.01, n_boot=200)
    assert res.mean_statistic.shape == (3,) and res.n_instances.tolist() == [30, 30, 30]
    assert_allclose(res.mean_statistic, res.statistic.mean(axis=0), rtol=1e-14)
    assert_allclose(res.significant_fraction, (res.pvalue < 0.01).mean(axis=0))
    assert res.mean_statistic[0] > res.mean_statistic[1] > res.mean_statistic[2]
    assert np.all(res.ci_low <= res.mean_statistic) and np.all(res.mean_statistic <= res.ci_high)
    assert "mean of shape (3,)" in repr(res)


def test_paired_comparison(rng):
    impact = rng.standard_normal((80, 12))
    good = impact + 0.3 * rng.standard_normal((80, 12))
    poor = impact + 3.0 * rng.standard_normal((80, 12))
    cmp = ak.compare_correlations(good, poor, impact, method="spearman", n_boot=400, seed=3)
    a = ak.correlate(good, impact, method="spearman", n_boot=10)
    b = ak.correlate(poor, impact, method="spearman", n_boot=10)
    assert_allclose(cmp.statistic_a, a.statistic, rtol=1e-15)
    assert_allclose(cmp.difference, a.statistic - b.statistic, rtol=1e-15)
    assert_allclose(cmp.mean_difference, np.mean(a.statistic - b.statistic), rtol=1e-13)
    assert 0 < cmp.ci_low < cmp.mean_difference < cmp.ci_high
    assert cmp.fraction_a_greater == np.mean(a.statistic > b.statistic)
    same = ak.compare_correlations(good, good, impact, n_boot=50)
    assert same.mean_difference == same.ci_low == same.ci_high == 0.0
    assert "mean difference" in repr(cmp)


def test_paired_comparison_shares_positions(rng):
    """A NaN in either score drops that position from both correlations."""
    impact = rng.standard_normal((5, 9))
    a, b = rng.standard_normal((5, 9)), rng.standard_normal((5, 9))
    a[0, 3] = np.nan
    cmp = ak.compare_correlations(a, b, impact, method="pearson", n_boot=10)
    keep = np.r_[0:3, 4:9]
    assert_allclose(cmp.statistic_b[0], stats.pearsonr(b[0, keep], impact[0, keep])[0], **TOL)


# ----------------------------------------------------------------------------- xarray
def make_xarray(rng, S=6, L=3, n=9):
    import xarray as xr
    lengths = rng.integers(4, n + 1, S)
    score = rng.integers(0, 5, (S, L, n)).astype(float)
    impact = score[:, 1] + rng.integers(0, 3, (S, n))
    tokens = np.full((S, n), "", dtype=object)
    for s, length in enumerate(lengths):
        score[s, :, length:] = np.nan
        impact[s, length:] = np.nan
        tokens[s, :length] = ["[CLS]"] + [f"w{i}" for i in range(1, length - 1)] + ["[SEP]"]
    coords = {"token": (("sample", "position"), tokens), "sample": np.arange(S) + 100}
    sc = xr.DataArray(score, dims=("sample", "layer", "position"),
                      coords={**coords, "layer": np.arange(L)})
    im = xr.DataArray(impact, dims=("sample", "position"), coords=coords)
    return sc, im, lengths


def test_xarray_inputs_give_a_dataset(rng):
    sc, im, lengths = make_xarray(rng)
    ds = quiet_correlate(sc, im, method="kendall", n_boot=50)
    assert ds.statistic.dims == ("sample", "layer") and ds.pvalue.dims == ("sample", "layer")
    assert ds.mean_statistic.dims == ("layer",) and ds.attrs["over"] == "sample"
    assert ds.layer.values.tolist() == [0, 1, 2] and ds.sample.values[0] == 100
    ref = quiet_correlate(sc.values, im.values[:, None, :], method="kendall", n_boot=50, over=0)
    assert_array_equal(ds.statistic.values, ref.statistic)
    assert_array_equal(ds.pvalue.values, ref.pvalue)
    assert_array_equal(ds.ci_low.values, ref.ci_low)
    assert_array_equal(ds.n_positions.isel(layer=0).values, lengths)
    assert_array_equal(ref.to_dataset().statistic.values, ref.statistic)
    # position order transposed in the input does not matter
    swapped = quiet_correlate(sc.transpose("position", "layer", "sample"), im, n_boot=50)
    assert_array_equal(swapped.statistic.transpose("sample", "layer").values, ds.statistic.values)


def test_xarray_special_tokens_lengths_and_pairing(rng):
    sc, im, lengths = make_xarray(rng)
    ds = quiet_correlate(sc, im, exclude="special", method="spearman", n_boot=50,
                         pvalue_method="asymptotic")
    assert_array_equal(ds.n_positions.isel(layer=0).values, lengths - 2)
    # the token coordinate may sit on either input
    other = quiet_correlate(sc.drop_vars("token"), im, exclude="special", n_boot=5)
    assert_array_equal(other.n_positions.values, ds.n_positions.values)
    s, layer = 2, 1
    length = int(lengths[s])
    ref = scipy_reference("spearman", sc.values[s, layer, 1:length - 1], im.values[s, 1:length - 1])
    assert_allclose([ds.statistic.values[s, layer], ds.pvalue.values[s, layer]], ref, **TOL)
    shorter = quiet_correlate(sc, im, lengths=sc.sample * 0 + 4, n_boot=50)
    assert (shorter.n_positions.values == 4).all()
    cmp = ak.compare_correlations(sc.isel(layer=1), sc.isel(layer=0), im, n_boot=50)
    assert cmp.difference.dims == ("sample",) and cmp.mean_difference.dims == ()
    assert float(cmp.mean_difference) > 0


# ----------------------------------------------------------------------------- properties
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)


@settings(max_examples=40, deadline=None)
@given(data=hnp.arrays(np.float64,
                       hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                       elements=st.one_of(finite, st.integers(-2, 2).map(float))),
       method=st.sampled_from(["kendall", "spearman", "pearson"]))
def test_statistic_is_bounded(data, method):
    x, y = data, data[::-1].copy()
    res = quiet_correlate(x, y, method=method, n_boot=5)
    stat = res.statistic[~np.isnan(res.statistic)]
    assert np.all(np.abs(stat) <= 1.0)
    p = res.pvalue[~np.isnan(res.pvalue)]
    assert np.all((p >= 0) & (p <= 1))


# ----------------------------------------------------------------------------- kernels
def test_merge_sort_kernels_against_numpy(rng):
    for m in (1, 2, 7, 8, 9, 31, 64, 100):
        a = rng.integers(0, 4, m).astype(float)
        b = rng.integers(0, 4, m).astype(float)
        idx, tmp = np.empty(m, np.int64), np.empty(m, np.int64)
        kernels.argsort_pairs(a, b, m, idx, tmp)
        assert_array_equal(idx, np.lexsort((b, a)))  # lexsort is stable too
        v = b.copy()
        brute = sum(int(b[i] > b[j]) for i in range(m) for j in range(i + 1, m))
        assert kernels.count_inversions(v, m, np.empty(m)) == brute
        assert_array_equal(v, np.sort(b))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, error, match", [
    ({"method": "tau"}, ValueError, "method: expected 'kendall'"),
    ({"ci": 1.5}, ValueError, "ci: expected a number strictly between 0 and 1"),
    ({"alpha": 0}, ValueError, "alpha: expected"),
    ({"n_boot": 0}, ValueError, "n_boot: expected a positive int"),
    ({"seed": -1}, ValueError, "seed: expected a non-negative int"),
    ({"dim": 3}, ValueError, "dim: expected an axis in"),
    ({"dim": "position"}, TypeError, "dim: expected an int axis"),
    ({"lengths": [1.5, 2]}, ValueError, "lengths: expected integers"),
    ({"lengths": [3, 9]}, ValueError, r"lengths: expected lengths in \[0, 4\]"),
    ({"lengths": [1, 2, 3]}, ValueError, "lengths: expected shape"),
    ({"exclude": "special"}, ValueError, "exclude: expected tokens"),
    ({"exclude": "cls"}, ValueError, "exclude: expected 'special'"),
    ({"exclude": [5]}, ValueError, r"exclude: expected positions in \[-4, 4\)"),
    ({"exclude": [0.5]}, TypeError, "exclude: expected 'special'"),
    ({"tokens": ["a"] * 4}, ValueError, "tokens: expected exclude='special'"),
    ({"over": 2}, ValueError, "over: expected instance axes"),
    ({"pvalue_method": "permutation"}, ValueError, "pvalue_method: expected"),
])
def test_errors(kwargs, error, match):
    x = np.arange(8.0).reshape(2, 4)
    with pytest.raises(error, match=match):
        ak.correlate(x, x ** 2, **kwargs)


def test_input_errors():
    with pytest.raises(ValueError,
                       match=r"y: expected a shape broadcastable with x \(2, 4\), got \(3, 4\)"):
        ak.correlate(np.ones((2, 4)), np.ones((3, 4)))
    with pytest.raises(TypeError, match="x: expected a real numeric array"):
        ak.correlate(np.array(["a", "b"]), np.ones(2))
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., n\)"):
        ak.correlate(1.0, np.ones(2))
    with pytest.raises(ValueError, match="a, b, y: expected shapes that broadcast"):
        ak.compare_correlations(np.ones((2, 4)), np.ones((3, 4)), np.ones((2, 4)))
    import xarray as xr
    da = xr.DataArray(np.ones((2, 4)), dims=("sample", "position"))
    with pytest.raises(TypeError, match="y: expected an xarray.DataArray"):
        ak.correlate(da, np.ones((2, 4)))
    with pytest.raises(ValueError, match="x.dims: expected a dim named 'token'"):
        ak.correlate(da, da, dim="token")
    with pytest.raises(ValueError, match="over: expected dims among"):
        ak.correlate(da, da, over="layer")


def test_special_tokens_are_the_ones_head_stats_counts():
    """One definition: exclude="special" drops every [CLS]-/[SEP]-like token of head_stats."""
    from attnkit.constants import CLS_TOKENS, SEP_TOKENS, SPECIAL_TOKENS

    assert set(CLS_TOKENS) | set(SEP_TOKENS) <= SPECIAL_TOKENS
    tokens = ["<|begin_of_text|>", "a", "b", "c", "d", "<|end_of_text|>"]
    x = np.array([[9.0, 1.0, 2.0, 3.0, 4.0, -9.0]])
    y = np.array([[-9.0, 1.0, 2.0, 4.0, 3.0, 9.0]])
    kept = ak.correlate(x, y, method="spearman", exclude="special", tokens=[tokens])
    inner = ak.correlate(x[:, 1:-1], y[:, 1:-1], method="spearman")
    np.testing.assert_allclose(kept.statistic, inner.statistic, rtol=1e-12)
    assert np.isfinite(kept.statistic).all()
