"""attnkit.masks: dense semantics, combination, programs, parsing, tile classification.

``Mask.dense`` is checked against explicit loops over (i, j); the compiled
program is checked element by element with the kernels' ``mask_allows`` and
tile by tile with ``tile_state`` (EMPTY tiles allow nothing, FULL tiles allow
everything: the kernels skip EMPTY tiles and drop per-element tests on FULL ones).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import attnkit as ak
from attnkit import masks
from attnkit.kernels.cpu.masking import (
    EMPTY, FULL, PARTIAL, block_spans, mask_allows, tile_state,
)


def loops(n, m, allows):
    """Dense boolean matrix from a plain Python predicate (independent of Mask._dense)."""
    return np.array([[bool(allows(i, j)) for j in range(m)] for i in range(n)], dtype=bool).reshape(n, m)


def random_sizes(rng):
    return int(rng.integers(1, 60)), int(rng.integers(1, 60))


# ------------------------------------------------------------------- dense
def test_full_dense(rng):
    n, m = random_sizes(rng)
    d = ak.masks.full().dense(n, m)
    assert d.shape == (n, m) and d.dtype == bool and d.all()


def test_dense_square_default(rng):
    n = int(rng.integers(1, 40))
    assert_array_equal(ak.masks.causal().dense(n), ak.masks.causal().dense(n, n))


def test_causal_dense(rng):
    n, m = random_sizes(rng)
    offset = int(rng.integers(-n, m + 1))
    assert_array_equal(ak.masks.causal(offset).dense(n, m), loops(n, m, lambda i, j: j <= i + offset))
    assert_array_equal(ak.masks.causal().dense(n, m), loops(n, m, lambda i, j: j <= i))


def test_local_dense(rng):
    n, m = random_sizes(rng)
    w = int(rng.integers(1, 30))
    assert_array_equal(ak.masks.local(w).dense(n, m), loops(n, m, lambda i, j: abs(i - j) < w))
    assert_array_equal(ak.masks.local(1).dense(n, m), loops(n, m, lambda i, j: i == j))


def test_strided_dense(rng):
    n, m = random_sizes(rng)
    s = int(rng.integers(1, 10))
    assert_array_equal(ak.masks.strided(s).dense(n, m), loops(n, m, lambda i, j: (i - j) % s == 0))


def test_global_tokens_dense(rng):
    n, m = random_sizes(rng)
    limit = max(n, m)
    idx = rng.choice(limit, size=int(rng.integers(1, min(5, limit) + 1)), replace=False)
    g = set(idx.tolist())
    want = loops(n, m, lambda i, j: i in g or j in g)
    assert_array_equal(ak.masks.global_tokens(idx).dense(n, m), want)
    # unsorted with duplicates, or a plain list, is the same mask
    shuffled = np.concatenate([idx, idx])[::-1]
    assert_array_equal(ak.masks.global_tokens(shuffled).dense(n, m), want)
    assert_array_equal(ak.masks.global_tokens(idx.tolist()).dense(n, m), want)


def test_global_tokens_scalar_and_cross_attention(rng):
    n, m = int(rng.integers(2, 10)), int(rng.integers(20, 40))
    j0 = int(rng.integers(n, m))  # a key position past the last query
    d = ak.masks.global_tokens(j0).dense(n, m)
    assert_array_equal(d, loops(n, m, lambda i, j: j == j0))


def test_block_sparse_dense(rng):
    block = int(rng.integers(1, 8))
    rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    layout = rng.random((rows, cols)) < 0.5
    n = int(rng.integers(1, rows * block + 1))
    m = int(rng.integers(1, cols * block + 1))
    want = loops(n, m, lambda i, j: layout[i // block, j // block])
    assert_array_equal(ak.masks.block_sparse(layout, block).dense(n, m), want)
    assert_array_equal(ak.masks.block_sparse(layout.astype(int), block).dense(n, m), want)
    assert_array_equal(ak.masks.block_sparse(layout.tolist(), block).dense(n, m), want)


def test_dense_returns_a_writable_copy(rng):
    n, m = random_sizes(rng)
    d = ak.masks.full().dense(n, m)
    d[0, 0] = False
    assert ak.masks.full().dense(n, m)[0, 0]


# -------------------------------------------------------------- combination
def _random_leaf(rng, n, m):
    kind = int(rng.integers(6))
    if kind == 0:
        return ak.masks.causal(int(rng.integers(-n, m + 1)))
    if kind == 1:
        return ak.masks.local(int(rng.integers(1, 20)))
    if kind == 2:
        return ak.masks.strided(int(rng.integers(1, 7)))
    if kind == 3:
        limit = max(n, m)
        return ak.masks.global_tokens(rng.choice(limit, size=min(3, limit), replace=False))
    if kind == 4:
        block = int(rng.integers(1, 9))
        return ak.masks.block_sparse(rng.random((-(-n // block), -(-m // block))) < 0.5, block)
    return ak.masks.full()


def random_mask(rng, n, m, depth=3):
    """A random expression of leaves combined with &, |, ~ (independent dense kept alongside)."""
    if depth == 0 or rng.random() < 0.3:
        leaf = _random_leaf(rng, n, m)
        return leaf, leaf.dense(n, m)
    op = int(rng.integers(3))
    a, da = random_mask(rng, n, m, depth - 1)
    if op == 2:
        return ~a, ~da
    b, db = random_mask(rng, n, m, depth - 1)
    return (a & b, da & db) if op == 0 else (a | b, da | db)


def test_and_or_not(rng):
    n, m = random_sizes(rng)
    a, b = _random_leaf(rng, n, m), _random_leaf(rng, n, m)
    da, db = a.dense(n, m), b.dense(n, m)
    assert_array_equal((a & b).dense(n, m), da & db)
    assert_array_equal((a | b).dense(n, m), da | db)
    assert_array_equal((~a).dense(n, m), ~da)
    assert_array_equal((~~a).dense(n, m), da)
    # De Morgan
    assert_array_equal((~(a & b)).dense(n, m), (~a | ~b).dense(n, m))
    assert_array_equal((a & ~ak.masks.full()).dense(n, m), np.zeros((n, m), bool))
    assert_array_equal((a | ~ak.masks.full()).dense(n, m), da)


@pytest.mark.parametrize("trial", range(5))
def test_random_expressions_dense(rng, trial):
    n, m = random_sizes(rng)
    mask, want = random_mask(rng, n, m)
    assert_array_equal(mask.dense(n, m), want)


def test_combining_with_non_mask_raises(rng):
    with pytest.raises(TypeError, match=r"mask & bool: both operands must be attnkit masks"):
        ak.masks.causal() & True
    with pytest.raises(TypeError, match=r"mask \| ndarray"):
        ak.masks.causal() | np.ones((3, 3), bool)


def test_repr():
    assert repr(ak.masks.local(3) & ak.masks.causal()) == "(local(3) & causal())"
    assert repr(~ak.masks.strided(2) | ak.masks.causal(4)) == "(~strided(2) | causal(offset=4))"


# ------------------------------------------------------------------ program
def test_program_is_postfix():
    mask = (ak.masks.causal() & ak.masks.local(4)) | ~ak.masks.strided(3)
    ops, aux = mask.program(10, 12)
    assert ops.dtype == np.int64 and ops.shape == (6, 5)
    assert aux.dtype == np.int64 and aux.ndim == 1
    assert ops[:, 0].tolist() == [masks.OP_CAUSAL, masks.OP_LOCAL, masks.OP_AND,
                                  masks.OP_STRIDED, masks.OP_NOT, masks.OP_OR]
    assert ops[1, 1] == 4 and ops[3, 1] == 3


def test_program_global_and_block_aux(rng):
    n, m = 13, 21
    idx = np.sort(rng.choice(m, size=3, replace=False))
    layout = rng.random((2, 3)) < 0.5
    ops, aux = (ak.masks.global_tokens(idx) & ak.masks.block_sparse(layout, 8)).program(n, m)
    op_g, flags_at, prefix_at, length, _ = ops[0]
    assert op_g == masks.OP_GLOBAL and length == max(n, m)
    flags = np.zeros(length, np.int64)
    flags[idx] = 1
    assert_array_equal(aux[flags_at:flags_at + length], flags)
    assert_array_equal(aux[prefix_at:prefix_at + length + 1], np.concatenate([[0], np.cumsum(flags)]))
    op_b, block, at, rows, cols = ops[1]
    assert (op_b, block, rows, cols) == (masks.OP_BLOCK, 8, 2, 3)
    assert_array_equal(aux[at:at + 6], layout.ravel().astype(np.int64))


def program_dense(mask, n, m):
    ops, aux = mask.program(n, m)
    return loops(n, m, lambda i, j: mask_allows(ops, aux, i, j))


@pytest.mark.parametrize("trial", range(8))
def test_mask_allows_matches_dense(rng, trial):
    n, m = int(rng.integers(1, 45)), int(rng.integers(1, 45))
    mask, want = random_mask(rng, n, m, depth=4)
    assert_array_equal(program_dense(mask, n, m), want)


def test_mask_allows_several_aux_users(rng):
    """Two global_tokens and two block layouts in one program: aux offsets must not clash."""
    n, m = 30, 41
    g1 = ak.masks.global_tokens(rng.choice(n, size=2, replace=False))
    g2 = ak.masks.global_tokens(rng.choice(m, size=3, replace=False))
    b1 = ak.masks.block_sparse(rng.random((4, 6)) < 0.5, 8)
    b2 = ak.masks.block_sparse(rng.random((10, 14)) < 0.5, 3)
    mask = (g1 & ~b1) | (g2 & b2) | (b1 & ~g2)
    want = ((g1.dense(n, m) & ~b1.dense(n, m)) | (g2.dense(n, m) & b2.dense(n, m))
            | (b1.dense(n, m) & ~g2.dense(n, m)))
    assert_array_equal(program_dense(mask, n, m), want)


def test_empty_program_allows_everything():
    ops, aux = np.zeros((0, 5), np.int64), np.zeros(1, np.int64)
    assert mask_allows(ops, aux, 3, 7)
    assert tile_state(ops, aux, 0, 64, 0, 256) == FULL


def test_depth_limit(rng):
    mask = ak.masks.causal()
    for _ in range(masks.MAX_STACK_DEPTH):
        mask = ~mask
    with pytest.raises(ValueError, match=r"mask: expected an expression at most 16 levels deep"):
        mask.program(4, 4)
    q = rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match=r"levels deep"):
        ak.attention(q, q, q, mask=mask)
    # the deepest allowed expression still works
    ok = ak.masks.causal()
    for _ in range(masks.MAX_STACK_DEPTH - 1):
        ok = ~ok
    ok.program(4, 4)


# ------------------------------------------------------ tile classification
def check_tiles(mask, n, m, tiles, *, tight=False):
    """tile_state of each tile against the dense mask; returns the states seen."""
    dense = mask.dense(n, m)
    ops, aux = mask.program(n, m)
    seen = set()
    for q0, q1, k0, k1 in tiles:
        state = tile_state(ops, aux, q0, q1, k0, k1)
        block = dense[q0:q1, k0:k1]
        assert state in (EMPTY, PARTIAL, FULL)
        if state == EMPTY:
            assert not block.any(), (mask, q0, q1, k0, k1)
        elif state == FULL:
            assert block.all(), (mask, q0, q1, k0, k1)
        elif tight:
            assert block.any() and not block.all(), (mask, q0, q1, k0, k1)
        seen.add(int(state))
    return seen


def random_tiles(rng, n, m, count):
    tiles = []
    for _ in range(count):
        q0, q1 = sorted(rng.choice(n + 1, size=2, replace=False))
        k0, k1 = sorted(rng.choice(m + 1, size=2, replace=False))
        tiles.append((int(q0), int(q1), int(k0), int(k1)))
    return tiles


def kernel_tiles(n, m, bq=64, bk=256):
    """Tiles of the CPU kernels' geometry (query tiles are 64 to 256 rows, key tiles 256)."""
    return [(q0, min(q0 + bq, n), k0, min(k0 + bk, m))
            for q0 in range(0, n, bq) for k0 in range(0, m, bk)]


@pytest.mark.parametrize("trial", range(10))
def test_tile_state_agrees_with_dense(rng, trial):
    n, m = int(rng.integers(1, 80)), int(rng.integers(1, 80))
    mask, _ = random_mask(rng, n, m, depth=4)
    check_tiles(mask, n, m, random_tiles(rng, n, m, 150))
    # single elements: every classification must be exact there
    dense = mask.dense(n, m)
    ops, aux = mask.program(n, m)
    for i, j in zip(rng.integers(0, n, 40), rng.integers(0, m, 40)):
        state = tile_state(ops, aux, int(i), int(i) + 1, int(j), int(j) + 1)
        if state != PARTIAL:
            assert (state == FULL) == dense[i, j]


LEAVES = {
    "causal": lambda n, m, r: ak.masks.causal(int(r.integers(-n, m))),
    "local": lambda n, m, r: ak.masks.local(int(r.integers(1, 200))),
    "global_tokens": lambda n, m, r: ak.masks.global_tokens(r.choice(max(n, m), size=3, replace=False)),
    "block_sparse": lambda n, m, r: ak.masks.block_sparse(r.random((-(-n // 16), -(-m // 16))) < 0.5, 16),
    "full": lambda n, m, r: ak.masks.full(),
}


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_tile_state_is_tight_for_simple_masks(rng, name):
    """For these leaves EMPTY/FULL are decided exactly, so no tile is needlessly PARTIAL."""
    n, m = int(rng.integers(100, 300)), int(rng.integers(100, 600))
    mask = LEAVES[name](n, m, rng)
    check_tiles(mask, n, m, random_tiles(rng, n, m, 200) + kernel_tiles(n, m), tight=True)
    check_tiles(~mask, n, m, random_tiles(rng, n, m, 100), tight=True)


def test_tile_state_skips_tiles(rng):
    """Kernel-sized tiles far from the diagonal of a sliding window are EMPTY."""
    n = m = 1024
    w = int(rng.integers(1, 64))
    seen = check_tiles(ak.masks.local(w) & ak.masks.causal(), n, m, kernel_tiles(n, m))
    assert EMPTY in seen
    seen = check_tiles(ak.masks.causal(), n, m, kernel_tiles(n, m))
    assert seen == {EMPTY, PARTIAL, FULL}


@pytest.mark.parametrize("trial", range(4))
def test_kernel_tiles_of_random_masks(rng, trial):
    n, m = int(rng.integers(64, 400)), int(rng.integers(64, 700))
    mask, _ = random_mask(rng, n, m, depth=4)
    check_tiles(mask, n, m, kernel_tiles(n, m) + kernel_tiles(n, m, 17, 33))


@pytest.mark.parametrize("trial", range(4))
def test_block_spans_only_drop_masked_panels(rng, trial):
    """Keys outside a row block's span are masked for every row of it; causal spans are tight."""
    n, m = int(rng.integers(20, 300)), int(rng.integers(20, 600))
    mask = ak.masks.causal(int(rng.integers(-20, 20))) if trial == 0 else random_mask(rng, n, m, 4)[0]
    dense = mask.dense(n, m)
    ops, aux = mask.program(n, m)
    mr, nr = int(rng.integers(1, 8)), int(rng.integers(8, 70))
    q0, k0 = int(rng.integers(0, n)), int(rng.integers(0, m))
    q1, k1 = min(n, q0 + int(rng.integers(1, 100))), min(m, k0 + int(rng.integers(1, 300)))
    spans = np.full((-(-(q1 - q0) // mr), 2), -7, dtype=np.int64)
    block_spans(ops, aux, q0, q1 - q0, k0, k1, mr, nr, spans)
    for b, (lo, hi) in enumerate(spans):
        rows = dense[q0 + b * mr: min(q0 + b * mr + mr, q1), k0:k1]
        allowed = np.flatnonzero(rows.any(axis=0))
        assert 0 <= lo <= hi <= -(-(k1 - k0) // nr)
        if allowed.size:
            assert lo * nr <= allowed[0] and allowed[-1] < hi * nr
        if trial == 0:  # causal leaves are classified exactly: the span is the tightest one
            want = (allowed[0] // nr, allowed[-1] // nr + 1) if allowed.size else (0, 0)
            assert (lo, hi) == want or (not allowed.size and lo == hi)


def test_strided_tiles(rng):
    n, m = int(rng.integers(50, 200)), int(rng.integers(50, 200))
    s = int(rng.integers(2, 9))
    mask = ak.masks.strided(s)
    check_tiles(mask, n, m, random_tiles(rng, n, m, 200))
    assert check_tiles(ak.masks.strided(1), n, m, random_tiles(rng, n, m, 20)) == {FULL}


# -------------------------------------------------------------------- parse
def _parse_cases(rng):
    w, s, off = int(rng.integers(1, 50)), int(rng.integers(1, 9)), int(rng.integers(-5, 6))
    g = sorted(rng.choice(30, size=2, replace=False).tolist())
    M = ak.masks
    return [
        ("causal", M.causal()),
        (f"causal:{off}", M.causal(off)),
        ("full", M.full()),
        (f"local:{w}", M.local(w)),
        (f"strided:{s}", M.strided(s)),
        (f"global:{g[0]},{g[1]}", M.global_tokens(g)),
        (f"local:{w}&causal", M.local(w) & M.causal()),
        (f"strided:{s}|local:{w}", M.strided(s) | M.local(w)),
        ("~causal", ~M.causal()),
        (f" local : {w} & ~ strided:{s} ", M.local(w) & ~M.strided(s)),
        # Python's precedence: ~ before & before |, and parentheses group
        (f"causal|local:{w}&strided:{s}", M.causal() | (M.local(w) & M.strided(s))),
        (f"strided:{s}&local:{w}|global:{g[0]}", (M.strided(s) & M.local(w)) | M.global_tokens([g[0]])),
        (f"(causal|local:{w})&strided:{s}", (M.causal() | M.local(w)) & M.strided(s)),
        (f"~(causal|strided:{s})&local:{w}", ~(M.causal() | M.strided(s)) & M.local(w)),
        (f"~~causal|((global:{g[1]}))", ~~M.causal() | M.global_tokens([g[1]])),
    ]


def test_parse(rng):
    n, m = int(rng.integers(31, 70)), int(rng.integers(31, 70))
    for spec, want in _parse_cases(rng):
        assert_array_equal(ak.masks.parse(spec).dense(n, m), want.dense(n, m), err_msg=spec)


def test_parse_follows_python_precedence(rng):
    w, s = int(rng.integers(2, 10)), int(rng.integers(2, 5))
    n = 40
    M = ak.masks
    parsed = M.parse(f"causal|local:{w}&strided:{s}").dense(n)
    python = (M.causal() | M.local(w) & M.strided(s)).dense(n)
    left_to_right = ((M.causal() | M.local(w)) & M.strided(s)).dense(n)
    assert_array_equal(parsed, python)
    assert not np.array_equal(parsed, left_to_right)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", r"mask spec: expected text like 'local:256&causal'"),
        ("   ", r"mask spec: expected text"),
        ("foo", r"mask spec: expected terms from \['causal', 'full', 'global', 'local', 'random', 'strided'\], got 'foo'"),
        ("causal&bogus:3", r"got 'bogus:3'"),
        ("local:x", r"mask spec: expected an integer argument for 'local', got 'x'"),
        ("local:", r"an integer argument for 'local'"),
        ("strided:2.5", r"an integer argument for 'strided'"),
        ("global:a,b", r"an integer argument for 'global'"),
        ("local:0", r"window: expected a positive int, got 0"),
        ("strided:-3", r"stride: expected a positive int, got -3"),
        ("&", r"mask spec: expected at least one term"),
        ("causal&", r"mask spec: expected a term at the end"),
        ("causal&|local:2", r"mask spec: expected a term before '\|'"),
        ("(causal|local:2", r"mask spec: expected a '\)' closing every '\('"),
        ("causal)", r"mask spec: expected an operator & or \| before '\)'"),
        ("causal(local:2)", r"mask spec: expected an operator & or \| before '\('"),
    ],
)
def test_parse_errors(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        ak.masks.parse(spec)
    assert "Fix:" in str(info.value)


def test_parse_rejects_non_text():
    with pytest.raises(ValueError, match=r"mask spec: expected text"):
        ak.masks.parse(None)
