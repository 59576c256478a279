"""attnkit.positional: ALiBi, soft-capping, relative bias, sinusoidal and RoPE.

Score modifiers are checked twice: their formula (through the Python function
Numba compiled, ``py_func``) against an independent expression, and end to end
through ak.attention against the reference with an explicit dense bias.

Compilation budget: each distinct score_mod re-jits the kernels, so the end-to-end
tests use one object per kind: ALIBI (same parameters as test_attention, so the
factory cache hands back the same function), SOFT_CAP and a relative-bias table
drawn once per session.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import attnkit as ak
import reference
from seeds import fresh_seed

HEADS = 4
ALIBI = ak.positional.alibi(ak.positional.alibi_slopes(HEADS))
CAP = 5.0
SOFT_CAP = ak.positional.soft_cap(CAP)


@pytest.fixture(scope="module")
def bias_table():
    """A random (HEADS, 2 * reach + 1) relative-bias table, fixed for this module."""
    seed = fresh_seed()
    print(f"bias_table seed: {seed}")
    rng = np.random.default_rng(seed)
    reach = int(rng.integers(3, 12))
    return rng.standard_normal((HEADS, 2 * reach + 1))


# ------------------------------------------------------------ ALiBi slopes
def press_slopes(n):
    """The slopes of Press et al.'s reference implementation (ofirpress/attention_with_linear_biases)."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + press_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 32])
def test_alibi_slopes(n):
    slopes = ak.positional.alibi_slopes(n)
    assert slopes.shape == (n,) and slopes.dtype == np.float64
    assert_allclose(slopes, press_slopes(n), rtol=1e-14)
    assert (slopes > 0).all() and (slopes < 1).all()


def test_alibi_slopes_geometric_for_powers_of_two():
    for n in (2, 4, 8, 16):
        slopes = ak.positional.alibi_slopes(n)
        assert_allclose(slopes[1:] / slopes[:-1], slopes[0], rtol=1e-14)
        assert_allclose(slopes[0], 2.0 ** (-8.0 / n), rtol=1e-14)


# ------------------------------------------------------- score-mod formulas
def test_alibi_formula(rng):
    slopes = rng.uniform(0.01, 1.0, size=3)
    mod = ak.positional.alibi(slopes).py_func
    for _ in range(50):
        s, h = float(rng.standard_normal()), int(rng.integers(3))
        i, j, b = (int(x) for x in rng.integers(0, 500, size=3))
        assert mod(s, b, h, i, j) == pytest.approx(s - slopes[h] * abs(i - j), rel=1e-14)


def test_alibi_single_slope_is_shared(rng):
    slope = float(rng.uniform(0.01, 1.0))
    mod = ak.positional.alibi([slope]).py_func
    s = float(rng.standard_normal())
    for h in range(5):
        assert mod(s, 0, h, 7, 2) == pytest.approx(s - 5 * slope, rel=1e-14)


def test_soft_cap_formula(rng):
    cap = float(rng.uniform(1, 50))
    mod = ak.positional.soft_cap(cap).py_func
    for s in rng.standard_normal(30) * 100:
        got = mod(float(s), 0, 0, 0, 0)
        assert got == pytest.approx(cap * math.tanh(s / cap), rel=1e-14, abs=1e-14)
        assert abs(got) <= cap


def test_relative_bias_formula(bias_table):
    mod = ak.positional.relative_bias(bias_table).py_func
    reach = (bias_table.shape[1] - 1) // 2
    for h in range(HEADS):
        for i in range(0, 40, 3):
            for j in range(0, 40, 5):
                offset = min(max(j - i, -reach), reach)
                assert mod(1.5, 0, h, i, j) == 1.5 + bias_table[h, offset + reach]


def test_relative_bias_shared_row(rng):
    row = rng.standard_normal(7)
    for table in (row, row[None, :]):
        mod = ak.positional.relative_bias(table).py_func
        for h in range(3):
            assert mod(0.5, 0, h, 10, 12) == 0.5 + row[3 + 2]
            assert mod(0.5, 0, h, 10, 0) == 0.5 + row[0]  # clipped at -reach


def test_factories_are_cached(rng):
    slopes = rng.uniform(0.1, 1, 4)
    assert ak.positional.alibi(slopes) is ak.positional.alibi(slopes.copy())
    assert ak.positional.alibi(slopes) is not ak.positional.alibi(slopes * 2)
    assert ak.positional.soft_cap(CAP) is SOFT_CAP
    assert ak.positional.alibi(ak.positional.alibi_slopes(HEADS)) is ALIBI
    table = rng.standard_normal((2, 5))
    assert ak.positional.relative_bias(table) is ak.positional.relative_bias(table.tolist())


# --------------------------------------------------------------- end to end
def _dist(n, m):
    return np.abs(np.arange(n)[:, None] - np.arange(m)[None, :])


def test_alibi_attention_matches_explicit_bias(rng):
    n, m = 70, 260
    q = rng.standard_normal((2, HEADS, n, 16))
    k = rng.standard_normal((2, HEADS, m, 16))
    v = rng.standard_normal((2, HEADS, m, 8))
    slopes = ak.positional.alibi_slopes(HEADS)
    bias = -slopes[:, None, None] * _dist(n, m)
    out, lse = ak.attention(q, k, v, causal=True, score_mod=ALIBI, return_lse=True)
    want, want_lse = reference.attention(q, k, v, causal=True, bias=bias)
    assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)
    # ALiBi matters: plain causal attention differs
    assert not np.allclose(out, ak.attention(q, k, v, causal=True), atol=1e-3)


def test_soft_cap_attention_matches_explicit_scores(rng):
    n, m = 66, 258
    q = 4 * rng.standard_normal((3, n, 16))  # large scores, so the cap bites
    k = 4 * rng.standard_normal((3, m, 16))
    v = rng.standard_normal((3, m, 5))
    s, _ = reference.scores(q, k)
    capped = CAP * np.tanh(s / CAP)
    assert np.abs(s).max() > CAP
    out, lse = ak.attention(q, k, v, score_mod=SOFT_CAP, return_lse=True)
    want, want_lse = reference.attention(q, k, v, bias=capped - s)
    assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)
    w = ak.attention_weights(q, k, score_mod=SOFT_CAP)
    assert_allclose(w, reference.weights(q, k, bias=capped - s)[0], rtol=1e-12, atol=1e-12)
    assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-12)


def test_relative_bias_attention_matches_explicit_bias(rng, bias_table):
    n, m = 70, 40
    q = rng.standard_normal((2, HEADS, n, 8))
    k = rng.standard_normal((2, HEADS, m, 8))
    v = rng.standard_normal((2, HEADS, m, 8))
    reach = (bias_table.shape[1] - 1) // 2
    offsets = np.clip(np.arange(m)[None, :] - np.arange(n)[:, None], -reach, reach) + reach
    bias = bias_table[:, offsets]  # (HEADS, n, m)
    mod = ak.positional.relative_bias(bias_table)
    kv_lengths = rng.integers(1, m + 1, size=2)
    out = ak.attention(q, k, v, score_mod=mod, kv_lengths=kv_lengths)
    want, _ = reference.attention(q, k, v, bias=bias, kv_lengths=kv_lengths)
    assert_allclose(out, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- sinusoidal
@pytest.mark.parametrize("d", [1, 2, 7, 16, 64])
def test_sinusoidal(rng, d):
    n = int(rng.integers(1, 100))
    pe = ak.positional.sinusoidal(n, d)
    assert pe.shape == (n, d)
    want = np.empty((n, d))
    for pos in range(n):
        for c in range(d):
            i = c // 2
            angle = pos / 10000 ** (2 * i / d)
            want[pos, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    assert_allclose(pe, want, rtol=1e-12, atol=1e-12)


def test_sinusoidal_base(rng):
    n, d = int(rng.integers(2, 50)), 2 * int(rng.integers(1, 10))
    base = float(rng.uniform(100, 1e5))
    pe = ak.positional.sinusoidal(n, d, base=base)
    assert_allclose(pe[:, 0::2], np.sin(np.arange(n)[:, None] / base ** (np.arange(0, d, 2) / d)))
    assert_allclose(pe[0, 1::2], 1.0)


# ---------------------------------------------------------------------- rope
def naive_rope(x, positions, base=10000.0):
    """Rotate pair (x[i], x[i + d/2]) by pos * base**(-2i/d), as complex numbers."""
    d = x.shape[-1]
    half = d // 2
    z = x[..., :half] + 1j * x[..., half:]
    theta = np.array([[p * base ** (-2 * i / d) for i in range(half)] for p in positions])
    z = z * np.exp(1j * theta)
    return np.concatenate([z.real, z.imag], axis=-1)


@pytest.mark.parametrize("d", [2, 8, 64])
def test_rope_matches_naive(rng, d):
    n = int(rng.integers(1, 50))
    x = rng.standard_normal((3, n, d))
    assert_allclose(ak.positional.rope(x), naive_rope(x, range(n)), rtol=1e-12, atol=1e-12)
    pos = rng.integers(0, 1000, size=n)
    assert_allclose(ak.positional.rope(x, pos), naive_rope(x, pos), rtol=1e-12, atol=1e-12)


def test_rope_preserves_norm_and_position_zero(rng):
    x = rng.standard_normal((2, 20, 16))
    y = ak.positional.rope(x)
    assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    assert_allclose(y[:, 0], x[:, 0], rtol=0, atol=0)


def test_rope_scores_depend_on_relative_position(rng):
    n, d = 30, 16
    q, k = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    shift = int(rng.integers(1, 500))
    s0 = ak.positional.rope(q) @ ak.positional.rope(k).T
    s1 = ak.positional.rope(q, np.arange(n) + shift) @ ak.positional.rope(k, np.arange(n) + shift).T
    assert_allclose(s0, s1, rtol=1e-9, atol=1e-9)


def test_rope_dtypes(rng):
    x = rng.standard_normal((5, 8))
    assert ak.positional.rope(x.astype(np.float32)).dtype == np.float32
    y = ak.positional.rope(rng.integers(-5, 5, size=(5, 8)))
    assert y.dtype == np.float64


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ak.positional.alibi_slopes(0), r"n_heads: expected a positive int, got 0"),
        (lambda: ak.positional.alibi_slopes(2.0), r"n_heads: expected a positive int"),
        (lambda: ak.positional.alibi([]), r"slopes: expected a non-empty array of finite floats"),
        (lambda: ak.positional.alibi([0.5, np.nan]), r"slopes: expected a non-empty array"),
        (lambda: ak.positional.soft_cap(0.0), r"cap: expected a positive finite float, got 0.0"),
        (lambda: ak.positional.soft_cap(-3), r"cap: expected a positive finite float"),
        (lambda: ak.positional.soft_cap(np.inf), r"cap: expected a positive finite float"),
        (lambda: ak.positional.soft_cap(True), r"cap: expected a positive finite float"),
        (lambda: ak.positional.relative_bias(np.ones((2, 4))), r"table: expected finite floats of shape \(heads, 2\*D \+ 1\), got shape \(2, 4\)"),
        (lambda: ak.positional.relative_bias(np.ones((2, 3, 3))), r"table: expected finite floats"),
        (lambda: ak.positional.relative_bias([np.nan, 1.0, 2.0]), r"table: expected finite floats"),
        (lambda: ak.positional.sinusoidal(0, 4), r"n: expected a positive int, got 0"),
        (lambda: ak.positional.sinusoidal(4, -1), r"d: expected a positive int, got -1"),
        (lambda: ak.positional.rope(np.ones((4, 5))), r"x: expected shape \(\.\.\., n, d\) with even d, got \(4, 5\)"),
        (lambda: ak.positional.rope(np.ones(6)), r"x: expected shape \(\.\.\., n, d\) with even d"),
        (lambda: ak.positional.rope(np.ones((4, 6)), np.arange(3)), r"positions: expected shape \(4,\), got \(3,\)"),
    ],
)
def test_positional_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "Fix:" in str(info.value)


def test_score_mod_heads_must_match(rng, bias_table):
    q = rng.standard_normal((2, HEADS + 1, 6, 4))
    with pytest.raises(ValueError, match=rf"score_mod: expected parameters for {HEADS + 1} heads"):
        ak.attention(q, q, q, score_mod=ALIBI)
    with pytest.raises(ValueError, match=rf"got parameters for {HEADS} heads"):
        ak.attention_weights(q, q, score_mod=ak.positional.relative_bias(bias_table))
    # a single slope/row is shared by any number of heads
    assert_array_equal(ak.positional.alibi([0.5]).attnkit_heads, 1)


def test_learned_lookup_and_errors(rng):
    table = rng.standard_normal((10, 6))
    positions = rng.permutation(10)[:7]
    np.testing.assert_array_equal(ak.positional.learned(table, positions), table[positions])
    np.testing.assert_array_equal(ak.positional.learned(table), table)
    with pytest.raises(ValueError, match=r"positions: expected values in \[0, 10\)"):
        ak.positional.learned(table, [3, 10])
    with pytest.raises(ValueError, match=r"table: expected a 2-d float array"):
        ak.positional.learned(np.arange(10), [0])
    with pytest.raises(ValueError, match=r"positions: expected a 1-d array of int"):
        ak.positional.learned(table, [0.5])
