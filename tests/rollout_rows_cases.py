"""Cases shared by the CPU and CUDA-simulator tests of ``ak.rollout_rows``.

Each backend's rows must equal rows of ``ak.rollout`` of the stored weights
(CPU ``attention_weights`` per layer), including query rows a mask leaves
without any key: rollout keeps their residual path, so rows stay stochastic.
"""

import numpy as np

import attnkit as ak

#: (id, attention kwargs, residual, start_layer, lengths)
CASES = [
    ("empty-rows", dict(mask=ak.masks.causal(offset=-2)), 0.5, 0, None),
    ("empty-rows-padding-start", dict(mask=ak.masks.causal(offset=-2)), 0.3, 1, [9, 5]),
    ("empty-rows-no-residual", dict(mask=ak.masks.causal(offset=-2)), 0.0, 0, [9, 6]),
    ("local-global-padding", dict(mask=ak.masks.local(3) | ak.masks.global_tokens([0])), 0.5,
     -1, [9, 4]),
    ("causal-start", dict(causal=True), 0.8, 2, None),
]
ROWS = [0, 1, 4, 8]


def stored_rollout_rows(q, k, rows, lengths, residual, start_layer, **kwargs):
    """The rows from stored weights: attention_weights per layer (CPU), then ak.rollout."""
    w = np.stack([ak.attention_weights(q[:, layer], k[:, layer], q_lengths=lengths,
                                       kv_lengths=lengths, backend="cpu", **kwargs)
                  for layer in range(q.shape[1])], axis=1).astype(np.float64)
    full = ak.rollout(w, lengths=lengths, residual=residual, start_layer=start_layer,
                      backend="cpu")
    return full[:, rows]


def check_case(rng, case, backend, dtype=np.float64, atol=1e-12):
    """Compare ``rollout_rows`` on ``backend`` with the stored-weights rollout for ``case``."""
    _, kwargs, residual, start, lengths = case
    q = rng.standard_normal((2, 3, 2, 9, 4)).astype(dtype)  # (sample, layer, head, n, d)
    k = rng.standard_normal((2, 3, 2, 9, 4)).astype(dtype)
    got = ak.rollout_rows(q, k, ROWS, residual=residual, start_layer=start, lengths=lengths,
                          backend=backend, **kwargs)
    want = stored_rollout_rows(q, k, ROWS, lengths, residual, start, **kwargs)
    assert got.shape == (2, len(ROWS), 9)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, equal_nan=True)
    if residual > 0:  # every valid row of the rollout sums to 1, empty query rows included
        sums = np.nansum(got, axis=-1)[~np.isnan(got).all(axis=-1)]
        np.testing.assert_allclose(sums, 1.0, atol=max(atol, 1e-12) * 10)
    return got
