"""The seeded random tile mask (BigBird-style random attention)."""

import numpy as np
import pytest

import attnkit as ak
import reference as ref


def test_random_mask_is_reproducible_and_tiled():
    mask = ak.masks.random(0.3, block=8, seed=5)
    dense = mask.dense(70, 50)
    np.testing.assert_array_equal(dense, ak.masks.random(0.3, block=8, seed=5).dense(70, 50))
    assert not np.array_equal(dense, ak.masks.random(0.3, block=8, seed=6).dense(70, 50))
    # constant on every 8 x 8 tile, and equal to the published layout
    layout = mask.layout(70, 50)
    np.testing.assert_array_equal(dense, np.kron(layout, np.ones((8, 8), bool))[:70, :50])
    assert 0.1 < layout.mean() < 0.5


@pytest.mark.parametrize("density", [0.0, 0.25, 1.0])
def test_random_mask_attention_matches_reference(rng, density):
    q, k, v = (rng.standard_normal((2, s, 8)) for s in (90, 130, 130))
    mask = ak.masks.random(density, block=16, seed=int(rng.integers(1000))) | ak.masks.local(3)
    out, lse = ak.attention(q, k, v, mask=mask, return_lse=True)
    want, want_lse = ref.attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-10, atol=1e-12)


def test_random_mask_tiles_are_skipped_so_sparser_is_cheaper():
    """Exactly the tiles the layout leaves out are classified EMPTY by the kernels."""
    from attnkit.kernels.cpu.masking import EMPTY, tile_state

    mask = ak.masks.random(0.2, block=64, seed=3)
    ops, aux = mask.program(640, 640)
    layout = mask.layout(640, 640)
    states = np.array([[tile_state(ops, aux, r * 64, r * 64 + 64, c * 64, c * 64 + 64)
                        for c in range(10)] for r in range(10)])
    np.testing.assert_array_equal(states == EMPTY, ~layout)


@pytest.mark.parametrize("kw,match", [
    (dict(density=1.5), r"density: expected a float in \[0, 1\], got 1.5"),
    (dict(density=0.5, block=0), r"block: expected a positive int, got 0"),
    (dict(density=0.5, seed=-1), r"seed: expected a non-negative int, got -1"),
])
def test_random_mask_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        ak.masks.random(**kw)


def test_parse_random():
    np.testing.assert_array_equal(ak.masks.parse("random:0.5").dense(200),
                                  ak.masks.random(0.5).dense(200))
