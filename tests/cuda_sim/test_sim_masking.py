"""Device mask evaluation and the tile table, against Mask.dense (simulator)."""

import numpy as np
import pytest
from numba import cuda

import attnkit as ak
from attnkit.kernels.cuda import masking as mk


@cuda.jit
def _dense_kernel(ops, aux, band, out):
    """out[i, j] = allowed(i, j): by the band bounds when ``band``, else by the program."""
    i = cuda.blockIdx.x
    for j in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
        if band:
            lo, hi = mk.band_bounds(ops, i)
            out[i, j] = 1 if (j >= lo and j < hi) else 0
        else:
            out[i, j] = 1 if mk.allows(ops, aux, i, j) else 0


MASKS = [
    ak.masks.causal(), ak.masks.causal(2) & ak.masks.local(3), ak.masks.strided(4),
    ak.masks.global_tokens([0, 5]) | ak.masks.local(2), ~ak.masks.causal(),
    ak.masks.block_sparse([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 1, 1]], 4),
    (ak.masks.strided(2) & ~ak.masks.local(2)) | ak.masks.global_tokens([7]),
]


@pytest.mark.parametrize("index", range(len(MASKS)))
def test_device_mask_matches_dense(index):
    mask = MASKS[index]
    n, m = 11, 12
    ops, aux = mask.program(n, m)
    band = mk.mask_kind(ops) == mk.MASK_BAND
    out = np.zeros((n, m), dtype=np.int8)
    d_out = cuda.to_device(out)
    _dense_kernel[n, 4](cuda.to_device(ops), cuda.to_device(aux), band, d_out)
    np.testing.assert_array_equal(d_out.copy_to_host().astype(bool), mask.dense(n, m))


def test_mask_kinds():
    assert mk.mask_kind(np.zeros((0, 5), np.int64)) == mk.MASK_NONE
    assert mk.mask_kind((ak.masks.causal() & ak.masks.local(3)).program(4, 4)[0]) == mk.MASK_BAND
    assert mk.mask_kind(ak.masks.strided(2).program(4, 4)[0]) == mk.MASK_GENERAL
    assert mk.mask_kind((ak.masks.causal() | ak.masks.local(3)).program(4, 4)[0]) == mk.MASK_GENERAL


@pytest.mark.parametrize("index", range(len(MASKS)))
def test_tile_table_is_exact_where_it_skips(index):
    """EMPTY tiles hold no allowed pair, FULL tiles only allowed pairs."""
    mask = MASKS[index]
    n, m, bq, bk = 13, 11, 4, 3
    ops, aux = mask.program(n, m)
    table = mk.tile_table(ops, aux, n, m, bq, bk)
    dense = mask.dense(n, m)
    assert table.shape == (4, 4)
    for qt in range(table.shape[0]):
        for kt in range(table.shape[1]):
            tile = dense[qt * bq:(qt + 1) * bq, kt * bk:(kt + 1) * bk]
            if table[qt, kt] == mk.EMPTY:
                assert not tile.any()
            elif table[qt, kt] == mk.FULL:
                assert tile.all()
    if index == 0:  # causal: tiles above the diagonal are skipped, below need no test
        assert (table == mk.EMPTY).any() and (table == mk.FULL).any()
