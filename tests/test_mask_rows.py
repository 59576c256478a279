"""mask_row (the kernels' row-at-a-time mask evaluation) against Mask.dense."""

import numpy as np

import attnkit as ak
from attnkit.kernels.cpu.masking import mask_row


def _random_mask(rng, n, m, depth=0):
    leaves = [
        lambda: ak.masks.causal(int(rng.integers(-3, 4))),
        lambda: ak.masks.local(int(rng.integers(1, 9))),
        lambda: ak.masks.strided(int(rng.integers(1, 6))),
        lambda: ak.masks.global_tokens(rng.choice(max(n, m), size=2, replace=False)),
        lambda: ak.masks.block_sparse(rng.random((-(-n // 4), -(-m // 4))) < 0.5, 4),
        lambda: ak.masks.random(0.4, block=5, seed=int(rng.integers(100))),
    ]
    if depth >= 3 or rng.random() < 0.35:
        return leaves[int(rng.integers(len(leaves)))]()
    kind = rng.integers(3)
    left = _random_mask(rng, n, m, depth + 1)
    if kind == 0:
        return ~left
    right = _random_mask(rng, n, m, depth + 1)
    return left & right if kind == 1 else left | right


def test_mask_row_matches_dense_on_random_expressions(rng):
    for _ in range(40):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        mask = _random_mask(rng, n, m)
        ops, aux = mask.program(n, m)
        dense = mask.dense(n, m)
        stack = np.empty((16, m), dtype=np.bool_)
        for qi in range(n):
            k0 = int(rng.integers(0, m))
            width = int(rng.integers(1, m - k0 + 1))
            mask_row(ops, aux, qi, k0, width, stack)
            np.testing.assert_array_equal(stack[0, :width], dense[qi, k0:k0 + width],
                                          err_msg=f"{mask!r} row {qi} keys {k0}+{width}")
