"""ak.correlate's partial correlations, exact/permutation p-values and groups; ak.adjust_pvalues."""

from __future__ import annotations

import importlib
import itertools
import math
import warnings

import numba
import numpy as np
import pytest
import xarray as xr
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

import attnkit as ak
from attnkit.correlate import AUTO_EXACT_MAX_N, DegenerateInputWarning

# the module (ak.correlate, the attribute, is the function)
correlate_module = importlib.import_module("attnkit.correlate")

TOL = {"rtol": 1e-10, "atol": 1e-12}


def quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateInputWarning)
        return ak.correlate(*args, **kwargs)


def ragged(rng, rows, n, k, ties, low=6):
    """x, y (rows, n) and k controls, NaN-padded after lengths in [low, n]; with ``ties``
    small integer values (many ties in every variable)."""
    draw = ((lambda: rng.integers(0, 4, (rows, n)).astype(float)) if ties
            else (lambda: rng.standard_normal((rows, n))))
    z = [draw() for _ in range(k)]
    x = draw() + sum(z) * 0.7
    y = draw() + 0.5 * x + sum(z) * 0.5
    lengths = rng.integers(low, n + 1, rows)
    for v in (x, y, *z):
        for i, length in enumerate(lengths):
            v[i, length:] = np.nan
    return x, y, z, lengths


def partial_by_hand(x, y, z, ranks):
    """(r, p) from residuals of a least-squares fit on [1, z] (of the ranks for Spearman)."""
    if ranks:
        x, y, z = stats.rankdata(x), stats.rankdata(y), [stats.rankdata(c) for c in z]
    design = np.column_stack([np.ones_like(x), *z])
    rank = np.linalg.matrix_rank(design)
    ex = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ey = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    for e, v in ((ex, x), (ey, y)):
        if np.linalg.norm(e) <= 1e-9 * np.linalg.norm(v - v.mean()):
            return np.nan, np.nan  # explained by the controls (ours is NaN too, checked below)
    r = float(np.dot(ex, ey) / np.sqrt(np.dot(ex, ex) * np.dot(ey, ey)))
    dof = len(x) - 1 - rank
    with np.errstate(divide="ignore"):
        t = r * np.sqrt(dof / (1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), dof))


# ----------------------------------------------------------------------------- partial
@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 2])
def test_partial_matches_residuals_by_hand(rng, method, ties, k):
    x, y, z, lengths = ragged(rng, int(rng.integers(15, 30)), int(rng.integers(8, 25)), k, ties)
    control = z[0] if k == 1 else z
    res = quiet(x, y, method=method, control=control, pvalue_method="asymptotic", n_boot=10)
    assert_array_equal(res.n_positions, lengths)
    assert res.control == ("given" if k == 1 else "given,given")
    checked = 0
    for i, length in enumerate(lengths):
        cols = [c[i, :length] for c in z]
        try:
            ref = partial_by_hand(x[i, :length], y[i, :length], cols, method == "spearman")
        except FloatingPointError:
            continue
        if np.isnan(ref[0]):
            assert np.isnan(res.statistic[i])
            continue
        if abs(ref[0]) > 1 - 1e-9:
            continue
        assert_allclose([res.statistic[i], res.pvalue[i]], ref, **TOL, err_msg=f"row {i}")
        checked += 1
    assert checked > len(lengths) // 2


def test_partial_with_constant_control_is_the_plain_correlation(rng):
    x, y = rng.standard_normal((2, 5, 12))
    plain = ak.correlate(x, y, method="pearson", pvalue_method="asymptotic")
    part = ak.correlate(x, y, method="pearson", control=np.full((5, 12), 3.0),
                        pvalue_method="asymptotic")
    assert_allclose(part.statistic, plain.statistic, rtol=1e-12)
    assert_allclose(part.pvalue, plain.pvalue, rtol=1e-9)  # the constant control costs no dof


def test_partial_nan_control_drops_positions_and_explained_input_is_nan(rng):
    x, y, z = rng.standard_normal((3, 2, 10))
    z[0, 3] = np.nan
    res = quiet(x, y, method="spearman", control=z, pvalue_method="asymptotic")
    assert res.n_positions.tolist() == [9, 10]
    keep = np.r_[0:3, 4:10]
    ref = partial_by_hand(x[0, keep], y[0, keep], [z[0, keep]], True)
    assert_allclose(res.statistic[0], ref[0], rtol=1e-12)
    # y a linear function of the control: no partial correlation is defined
    with pytest.warns(DegenerateInputWarning, match="controls explain fully"):
        res = ak.correlate(x, 2 * z + 1, method="pearson", control=z)
    assert np.isnan(res.statistic[1]) and np.isnan(res.pvalue[1])


def test_partial_kendall(rng):
    x, y, z, lengths = ragged(rng, 12, 15, 1, ties=True)
    res = quiet(x, y, control=z[0], n_boot=10)
    for i, length in enumerate(lengths):
        a, b, c = x[i, :length], y[i, :length], z[0][i, :length]
        txy, txz, tyz = (stats.kendalltau(u, v)[0] for u, v in ((a, b), (a, c), (b, c)))
        if np.ptp(c) == 0:  # a constant control carries no information
            txz = tyz = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = (txy - txz * tyz) / np.sqrt((1 - txz ** 2) * (1 - tyz ** 2))
        if not np.isfinite(ref):  # |tau| = 1 with the control: undefined
            assert np.isnan(res.statistic[i])
            continue
        assert_allclose(res.statistic[i], ref, rtol=1e-12, atol=1e-12)
    assert np.isnan(res.pvalue).all() and np.isnan(res.significant_fraction)
    assert np.isfinite(res.mean_statistic)


def test_partial_xarray_records_the_control_name(rng):
    x, y, z = rng.standard_normal((3, 8, 10))
    dims = ("sample", "position")
    coords = {"sample": np.arange(8) + 10}
    xa, ya = (xr.DataArray(v, dims=dims, coords=coords) for v in (x, y))
    za = xr.DataArray(z, dims=dims, coords=coords, name="position_score")
    ds = ak.correlate(xa, ya, method="spearman", control=za, n_boot=20)
    ref = ak.correlate(x, y, method="spearman", control=z, n_boot=20)
    assert ds.attrs["control"] == "position_score"
    assert_array_equal(ds.statistic.values, ref.statistic)
    assert_array_equal(ds.pvalue.values, ref.pvalue)
    # an unnamed DataArray, and a NumPy control of x's shape, are "given"
    assert ak.correlate(xa, ya, control=za.rename(None), n_boot=5).attrs["control"] == "given"
    assert ak.correlate(xa, ya, control=z, n_boot=5).attrs["control"] == "given"
    assert "control" not in ak.correlate(xa, ya, n_boot=5).attrs
    # controls broadcast by name, e.g. one per position shared by every sample
    shared = xr.DataArray(np.arange(10.0) ** 2, dims="position", name="pos")
    res = ak.correlate(xa, ya, method="pearson", control=shared, n_boot=5)
    assert_allclose(res.statistic.values,
                    ak.correlate(x, y, method="pearson", control=np.arange(10.0) ** 2,
                                 n_boot=5).statistic, rtol=1e-15)


# ----------------------------------------------------------------------------- exact p-values
def test_kendall_exact_matches_scipy(rng):
    for n in (3, 4, 7, 20, 34, int(rng.integers(35, 80))):
        x = rng.standard_normal(n)
        y = 0.3 * x + rng.standard_normal(n)
        res = ak.correlate(x, y, pvalue_method="exact", n_boot=5)
        ref = stats.kendalltau(x, y, method="exact")
        assert_allclose([res.statistic, res.pvalue], [ref.statistic, ref.pvalue], rtol=1e-10,
                        err_msg=f"n = {n}")


def _abs_pearson(a, b, axis=-1):
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    return np.abs((a * b).sum(axis) / np.sqrt((a * a).sum(axis) * (b * b).sum(axis)))


def _abs_spearman(a, b, axis=-1):
    return _abs_pearson(stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis), axis)


def _abs_kendall_s(a, b, axis=-1):
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    sa = np.sign(a[..., :, None] - a[..., None, :])
    sb = np.sign(b[..., :, None] - b[..., None, :])
    return np.abs((sa * sb).sum((-1, -2)))  # 2 S: the tau-b denominator does not change


PERMUTATION_STATISTIC = {"pearson": _abs_pearson, "spearman": _abs_spearman,
                         "kendall": _abs_kendall_s}


def scipy_permutation_pvalue(method, x, y):
    """Two-sided p of the exact permutation test of |statistic|: scipy's documented form for
    correlations, one sample (x) whose n! orders are paired with y."""
    def statistic(a, axis=-1):
        return PERMUTATION_STATISTIC[method](a, np.broadcast_to(y, a.shape), axis)

    return stats.permutation_test((x,), statistic, vectorized=True, permutation_type="pairings",
                                  n_resamples=np.inf, alternative="greater").pvalue


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall"])
def test_enumerated_permutation_pvalues_match_scipy(rng, method):
    for n in (3, 4, 5, 6, 7, 8):
        for ties in (False, True):
            if ties:  # kendall: only tied instances use permutations (untied ones are exact)
                x = rng.integers(0, 3, n).astype(float)
                y = rng.integers(0, 3, n).astype(float)
            elif method == "kendall":
                continue
            else:
                x = rng.standard_normal(n)
                y = 0.8 * x + rng.standard_normal(n)
            res = quiet(x, y, method=method, pvalue_method="exact", n_boot=5)
            if np.isnan(res.statistic):
                continue
            if abs(res.statistic) < 1e-9:
                # r = 0 exactly: every order is as extreme. scipy's rounding of r (1e-17
                # instead of 0) can leave some out
                assert res.pvalue == 1.0
                continue
            ref = scipy_permutation_pvalue(method, x, y)
            assert_allclose(res.pvalue, ref, rtol=1e-12, err_msg=f"n={n} ties={ties} {x} {y}")


def test_partial_permutation_is_freedman_lane_by_hand(rng):
    """n <= 8: every order of y's residuals, each projected off the controls again."""
    n = 7
    x, z = rng.standard_normal((2, n))
    y = 0.5 * x + z + rng.standard_normal(n)
    res = ak.correlate(x, y, method="pearson", control=z, pvalue_method="exact")
    design = np.column_stack([np.ones(n), z])
    hat = design @ np.linalg.pinv(design)
    ex, ey = x - hat @ x, y - hat @ y
    r_obs = abs(ex @ ey) / np.sqrt((ex @ ex) * (ey @ ey))
    hits = 0
    for perm in itertools.permutations(range(n)):
        e = ey[list(perm)]
        e = e - hat @ e
        hits += abs(ex @ e) / np.sqrt((ex @ ex) * (e @ e)) >= r_obs - 1e-12
    assert_allclose(res.pvalue, hits / math.factorial(n), rtol=1e-12)
    assert_allclose(res.statistic, ex @ ey / np.sqrt((ex @ ex) * (ey @ ey)), rtol=1e-12)


@pytest.mark.parametrize("method, ties, control", [
    ("spearman", True, False), ("pearson", False, False), ("kendall", True, False),
    ("spearman", False, True)])
def test_monte_carlo_within_sampling_error_of_exact(rng, monkeypatch, method, ties, control):
    rows, n, n_perm = 24, 9, 3000
    if ties:
        x = rng.integers(0, 4, (rows, n)).astype(float)
        y = x * rng.integers(0, 2, (rows, 1)) + rng.integers(0, 4, (rows, n))
    else:
        x = rng.standard_normal((rows, n))
        y = 0.6 * rng.random((rows, 1)) * x + rng.standard_normal((rows, n))
    kwargs = {"method": method, "pvalue_method": "exact", "n_boot": 5, "n_permutations": n_perm}
    if control:
        kwargs["control"] = rng.standard_normal((rows, n))
    sampled = quiet(x, y, seed=1, **kwargs)
    monkeypatch.setattr(correlate_module, "ENUMERATE_MAX_N", n)  # 9! = 362880 orders
    exact = quiet(x, y, **kwargs)
    keep = ~np.isnan(exact.pvalue)
    p, q = exact.pvalue[keep], sampled.pvalue[keep]
    assert not np.array_equal(p, q)  # really sampled
    # each within 5 standard errors (+ the 1/(1+B) of the estimator), all together within 4
    se = np.sqrt(p * (1 - p) / n_perm) + 1.0 / n_perm
    assert np.all(np.abs(q - p) <= 5 * se + 1.0 / n_perm), np.c_[p, q]
    assert abs(np.sum(q - p)) <= 4 * np.sqrt(np.sum(se ** 2)) + keep.sum() / n_perm


def test_permutation_pvalues_are_reproducible_and_thread_independent(rng):
    x = rng.standard_normal((150, 20))
    y = 0.2 * x + rng.standard_normal((150, 20))
    kwargs = {"method": "spearman", "pvalue_method": "exact", "n_boot": 5, "n_permutations": 999}
    a = ak.correlate(x, y, seed=7, **kwargs)
    b = ak.correlate(x, y, seed=7, **kwargs)
    c = ak.correlate(x, y, seed=8, **kwargs)
    assert a.pvalue.tobytes() == b.pvalue.tobytes()
    assert not np.array_equal(a.pvalue, c.pvalue)
    assert np.all((a.pvalue > 0) & (a.pvalue <= 1))
    # p = (1 + count) / (1 + B): multiples of 1/1000
    assert_allclose(a.pvalue * 1000, np.round(a.pvalue * 1000), atol=1e-9)
    # every instance has its own stream: its p-value does not depend on the others
    alone = ak.correlate(x[:70], y[:70], seed=7, **kwargs)
    assert alone.pvalue.tobytes() == a.pvalue[:70].tobytes()
    if numba.config.NUMBA_NUM_THREADS >= 2:
        before = numba.get_num_threads()
        try:
            numba.set_num_threads(1)
            one = ak.correlate(x, y, seed=7, **kwargs)
        finally:
            numba.set_num_threads(before)
        assert one.pvalue.tobytes() == a.pvalue.tobytes()


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall"])
def test_auto_is_exact_for_short_and_asymptotic_for_long_instances(rng, method):
    short, long = 10, AUTO_EXACT_MAX_N + 7
    # ties, so that Kendall's short instances get a permutation p-value too
    x = rng.integers(0, 6, (6, long)).astype(float)
    y = x + rng.integers(0, 6, (6, long))
    lengths = np.array([short, long] * 3)
    kwargs = {"method": method, "lengths": lengths, "n_boot": 5, "seed": 3}
    auto = ak.correlate(x, y, **kwargs)
    exact = ak.correlate(x, y, pvalue_method="exact", **kwargs)
    asym = ak.correlate(x, y, pvalue_method="asymptotic", **kwargs)
    assert_array_equal(auto.pvalue[::2], exact.pvalue[::2])
    assert_array_equal(auto.pvalue[1::2], asym.pvalue[1::2])
    assert not np.array_equal(exact.pvalue[::2], asym.pvalue[::2])
    assert auto.pvalue_method == "auto"


# ----------------------------------------------------------------------------- groups
def test_group_summaries_match_hand_computation(rng):
    rows = 40
    x = rng.standard_normal((rows, 12))
    y = 0.4 * x + rng.standard_normal((rows, 12))
    labels = np.array(["news", "wiki", "chat", "code"])[rng.integers(0, 4, rows)]
    labels[:4] = ["news", "wiki", "chat", "code"]
    res = ak.correlate(x, y, method="spearman", groups=labels, n_boot=300, seed=5)
    plain = ak.correlate(x, y, method="spearman", n_boot=300, seed=5)
    assert res.groups == "given"
    assert res.group_labels.tolist() == ["chat", "code", "news", "wiki"]
    for j, label in enumerate(res.group_labels):
        member = labels == label
        assert_allclose(res.group_mean_statistic[j], plain.statistic[member].mean(), rtol=1e-13,
                        atol=1e-15)
        assert res.group_n_instances[j] == member.sum()
        assert res.group_significant_fraction[j] == np.mean(plain.pvalue[member] < 0.05)
        assert res.group_ci_low[j] <= res.group_mean_statistic[j] <= res.group_ci_high[j]
    # the pooled mean is unchanged; only its interval comes from the cluster bootstrap
    assert res.mean_statistic == plain.mean_statistic
    assert res.significant_fraction == plain.significant_fraction
    assert_array_equal(res.statistic, plain.statistic)
    assert (res.ci_low, res.ci_high) != (plain.ci_low, plain.ci_high)
    assert sorted(res.to_dataset().group.values.tolist()) == sorted(labels[:4].tolist())


def test_cluster_bootstrap_is_seeded_and_wider_for_correlated_groups(rng):
    groups = np.repeat(np.arange(10), 20)
    effect = rng.normal(0, 0.6, 10)[groups]  # instances of a group share their correlation
    x = rng.standard_normal((200, 15))
    y = effect[:, None] * x + rng.standard_normal((200, 15))
    kwargs = {"method": "pearson", "n_boot": 1000, "pvalue_method": "asymptotic"}
    a = ak.correlate(x, y, groups=groups, seed=11, **kwargs)
    b = ak.correlate(x, y, groups=groups, seed=11, **kwargs)
    c = ak.correlate(x, y, groups=groups, seed=12, **kwargs)
    plain = ak.correlate(x, y, seed=11, **kwargs)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_high - a.ci_low > 1.5 * (plain.ci_high - plain.ci_low)
    assert a.ci_low < a.mean_statistic < a.ci_high
    # the cluster interval is that of the group-level resampling, by hand
    sums = np.bincount(groups, a.statistic)
    sizes = np.bincount(groups)
    pick = np.random.default_rng(11).integers(0, 10, (1000, 10))
    means = sums[pick].sum(1) / sizes[pick].sum(1)
    assert_allclose([a.ci_low, a.ci_high], np.quantile(means, [0.025, 0.975]), rtol=1e-13)


def test_groups_per_summary_cell_and_xarray_output(rng):
    S, L, n = 30, 3, 9
    score = rng.standard_normal((S, L, n))
    impact = score[:, 1] + rng.standard_normal((S, n))
    source = np.array(["a", "b", "c"])[np.arange(S) % 3]
    coords = {"sample": np.arange(S) + 100}
    sc = xr.DataArray(score, dims=("sample", "layer", "position"), coords=coords)
    im = xr.DataArray(impact, dims=("sample", "position"), coords=coords)
    g = xr.DataArray(source, dims="sample", coords=coords, name="source")
    ds = ak.correlate(sc, im, method="spearman", groups=g, n_boot=200)
    assert ds.attrs["groups"] == "source"
    assert ds.group_mean_statistic.dims == ("layer", "group")
    assert ds.group.values.tolist() == ["a", "b", "c"]
    for name in ("group_ci_low", "group_ci_high", "group_significant_fraction",
                 "group_n_instances"):
        assert ds[name].dims == ("layer", "group")
    assert ds.group_n_instances.values.tolist() == [[10, 10, 10]] * L
    for j, label in enumerate("abc"):
        want = ds.statistic.values[source == label].mean(axis=0)
        assert_allclose(ds.group_mean_statistic.values[:, j], want, rtol=1e-13, atol=1e-15)
    ref = ak.correlate(score, impact[:, None], method="spearman", groups=source, over=0,
                       n_boot=200)
    assert_array_equal(ds.ci_low.values, ref.ci_low)
    assert_array_equal(ds.group_ci_high.values, ref.group_ci_high)
    # a plain list works as well; reordered labels do not
    same = ak.correlate(sc, im, method="spearman", groups=list(source), n_boot=200)
    assert_array_equal(same.ci_low.values, ds.ci_low.values)
    with pytest.raises(ValueError, match="groups: expected the same coordinate labels"):
        ak.correlate(sc, im, groups=g.assign_coords(sample=np.arange(S)), n_boot=5)
    # no groups: no group variables, as before
    assert not any(v.startswith("group") for v in ak.correlate(sc, im, n_boot=5).data_vars)


# ----------------------------------------------------------------------------- adjust_pvalues
def holm_by_hand(p):
    m = len(p)
    order = np.argsort(p)
    out = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def test_adjust_pvalues_against_scipy_and_hand(rng):
    p = rng.random((7, 9)) ** 3
    p[rng.random((7, 9)) < 0.2] = np.nan
    p[0, 0], p[0, 1] = 0.0, 1.0
    keep = ~np.isnan(p)
    bh = ak.adjust_pvalues(p, "bh")
    holm = ak.adjust_pvalues(p, method="holm")
    assert bh.shape == holm.shape == p.shape
    assert_array_equal(np.isnan(bh), ~keep)
    assert_allclose(bh[keep], stats.false_discovery_control(p[keep], method="bh"), rtol=1e-12)
    assert_allclose(holm[keep], holm_by_hand(p[keep]), rtol=1e-12)
    for adj in (bh, holm):
        order = np.argsort(p[keep])
        assert np.all(np.diff(adj[keep][order]) >= 0)  # monotone in p
        assert np.all((adj[keep] >= p[keep]) & (adj[keep] <= 1.0))
    assert np.all(holm[keep] >= bh[keep])
    # one family per column
    cols = ak.adjust_pvalues(p, "bh", dim=0)
    for j in range(p.shape[1]):
        k = keep[:, j]
        if k.any():
            assert_allclose(cols[k, j], stats.false_discovery_control(p[k, j]), rtol=1e-12)
    # DataArray in, DataArray out, labels kept
    da = xr.DataArray(p, dims=("sample", "layer"), coords={"layer": np.arange(9) * 2},
                      name="pvalue")
    out = ak.adjust_pvalues(da, "holm", dim="sample")
    assert isinstance(out, xr.DataArray) and out.dims == da.dims and out.name == "pvalue"
    assert_array_equal(out.layer.values, da.layer.values)
    assert_allclose(out.values, ak.adjust_pvalues(p, "holm", dim=0), rtol=0, equal_nan=True)
    assert np.isnan(ak.adjust_pvalues([np.nan, np.nan])).all()
    assert ak.adjust_pvalues(0.2).shape == ()


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, error, match", [
    ({"control": np.ones((3, 4))}, ValueError, r"control: expected shape \(2, 4\)"),
    ({"control": [np.ones((2, 4))] * 2}, ValueError, ("control: expected one control for "
                                                     "method='kendall'")),
    ({"control": np.array(["a"] * 4)}, TypeError, "control: expected a real numeric array"),
    ({"groups": [0, 1, 2]}, ValueError, r"groups: expected shape \(2,\)"),
    ({"groups": [0.0, np.nan]}, ValueError, "groups: expected a label for every instance"),
    ({"pvalue_method": "permutation"}, ValueError, "pvalue_method: expected 'auto'"),
    ({"n_permutations": 0}, ValueError, "n_permutations: expected a positive int"),
])
def test_errors(kwargs, error, match):
    x = np.arange(8.0).reshape(2, 4)
    with pytest.raises(error, match=match):
        ak.correlate(x, x ** 2, **kwargs)


def test_xarray_and_adjust_errors():
    da = xr.DataArray(np.arange(8.0).reshape(2, 4), dims=("sample", "position"))
    with pytest.raises(ValueError, match="control.dims: expected a dim named 'position'"):
        ak.correlate(da, da, control=da.isel(position=0))
    with pytest.raises(ValueError, match="control: expected shape"):
        ak.correlate(da, da, control=da.isel(position=slice(0, 3)))
    with pytest.raises(TypeError, match="control: expected an xarray.DataArray like x"):
        ak.correlate(da, da, control=np.ones(3))
    with pytest.raises(ValueError, match="groups.dims: expected the summarised dims"):
        ak.correlate(da, da, groups=xr.DataArray([0, 1, 2, 3], dims="position"))
    with pytest.raises(ValueError, match=r"groups: expected shape \(2,\)"):
        ak.correlate(da, da, groups=[1, 2, 3])
    with pytest.raises(ValueError, match=r"p: expected p-values in \[0, 1\]"):
        ak.adjust_pvalues([0.1, 1.5])
    with pytest.raises(ValueError, match=r"p: expected p-values in \[0, 1\]"):
        ak.adjust_pvalues(np.array([[0.1, -0.01]]))
    with pytest.raises(ValueError, match="method: expected 'holm' | 'bh'"):
        ak.adjust_pvalues([0.1], method="bonferroni")
    with pytest.raises(TypeError, match="p: expected real numbers"):
        ak.adjust_pvalues(["0.1"])
    with pytest.raises(ValueError, match="dim: expected"):
        ak.adjust_pvalues(np.ones((2, 2)) * 0.5, dim=2)
