"""CUDA rollout (ak.rollout, backend="cuda") in the simulator vs a NumPy float64 formula."""

import numpy as np
import pytest
from numba import cuda

import attnkit as ak
from attnkit.kernels.cuda import rollout as gpu


def rollout_formula(attn, lengths, head_fusion, residual, start_layer):
    """R = Ã_start, then R = Ã_l @ R; Ã_l = rownorm(r I + (1 - r) fuse_h A_l); NaN outside."""
    attn = np.asarray(attn, dtype=np.float64)
    s, n_layers, _, n, _ = attn.shape
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    out = np.full((s, n, n), np.nan)
    for k in range(s):
        length = int(lengths[k])
        if length == 0:
            continue
        result = None
        for layer in range(start_layer % n_layers, n_layers):
            a = residual * np.eye(length) + (1 - residual) * fuse(
                attn[k, layer, :, :length, :length], axis=0)
            sums = a.sum(axis=1, keepdims=True)
            a = np.divide(a, sums, out=np.zeros_like(a), where=sums > 0)
            result = a if result is None else a @ result
        out[k, :length, :length] = result
    return out


def cuda_rollout(attn, lengths, head_fusion, residual, start_layer):
    return ak.rollout(attn, lengths=lengths, head_fusion=head_fusion, residual=residual,
                      start_layer=start_layer, backend="cuda")


def _attention(rng, shape, dtype=np.float64):
    a = rng.random(shape)
    a /= a.sum(-1, keepdims=True)
    return a.astype(dtype)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_matches_formula_with_ragged_lengths(rng, fusion):
    attn = _attention(rng, (3, 3, 2, 9, 9))
    lengths = np.array([9, 5, 0])
    got = cuda_rollout(attn, lengths, fusion, 0.5, 0)
    expected = rollout_formula(attn, lengths, fusion, 0.5, 0)
    assert got.dtype == np.float64 and got.shape == (3, 9, 9)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=1e-13, rtol=0)
    np.testing.assert_allclose(got[0].sum(-1), 1.0, atol=1e-12)  # rows stay stochastic


@pytest.mark.parametrize("residual,start", [(0.0, 1), (1.0, 0), (0.3, -2)])
def test_residual_and_start_layer(rng, residual, start):
    attn = _attention(rng, (2, 4, 3, 7, 7), np.float32)
    attn[0, 2, :, 3, :] = 0.0  # a zero row: stays 0 when residual == 0
    lengths = np.array([7, 6])
    got = cuda_rollout(attn, lengths, "mean", residual, start)
    expected = rollout_formula(attn, lengths, "mean", residual, start)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=1e-12, rtol=0)


def test_single_token_and_single_layer(rng):
    attn = _attention(rng, (2, 1, 2, 5, 5))
    got = cuda_rollout(attn, np.array([1, 5]), "max", 0.5, 0)
    np.testing.assert_allclose(got, rollout_formula(attn, [1, 5], "max", 0.5, 0), atol=1e-14)
    assert got[0, 0, 0] == 1.0 and np.isnan(got[0, 0, 1:]).all()


def test_other_tiling(rng):
    attn = _attention(rng, (1, 2, 2, 11, 11))
    with gpu.use_tiling(gpu.GemmTiling(1, 4, 1, 1, 4)):
        got = cuda_rollout(attn, [11], "mean", 0.5, 0)
    np.testing.assert_allclose(got, rollout_formula(attn, [11], "mean", 0.5, 0), atol=1e-13)


def test_device_in_device_out(rng):
    attn = _attention(rng, (2, 2, 2, 6, 6), np.float32)
    got = cuda_rollout(cuda.to_device(attn), np.array([6, 4]), "mean", 0.5, 0)
    assert hasattr(got, "copy_to_host")
    np.testing.assert_allclose(got.copy_to_host(), rollout_formula(attn, [6, 4], "mean", 0.5, 0),
                               atol=1e-12)


def test_public_rollout_dispatches_and_matches_the_cpu(rng):
    attn = _attention(rng, (2, 3, 2, 8, 8))
    lengths = np.array([8, 6])
    got = ak.rollout(attn, lengths=lengths, head_fusion="min", start_layer=1, backend="cuda")
    cpu = ak.rollout(attn, lengths=lengths, head_fusion="min", start_layer=1, backend="cpu")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(cpu))
    np.testing.assert_allclose(got, cpu, atol=1e-13, rtol=0)
