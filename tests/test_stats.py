"""ak.head_stats against a direct NumPy computation."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

import attnkit as ak
from attnkit.stats import is_punctuation


def random_attention(rng, shape):
    a = rng.random(shape) ** 3  # peaked rows, some near zero
    return a / a.sum(-1, keepdims=True)


def ref_head(a, tokens=None):
    """Statistics of one head (n, n) straight from the definitions."""
    n = a.shape[0]
    idx = np.arange(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(a > 0, a * np.log(a), 0).sum(1)
    out = {
        "entropy": ent.mean(),
        "distance": (a * np.abs(idx[:, None] - idx[None, :])).sum(1).mean(),
        "max_weight": a.max(1).mean(),
        "self_mass": np.diag(a).mean(),
        "prev_mass": np.diag(a, -1).mean() if n > 1 else np.nan,
        "next_mass": np.diag(a, 1).mean() if n > 1 else np.nan,
    }
    if tokens is not None:
        cls = np.array([t == "[CLS]" for t in tokens])
        sep = np.array([t == "[SEP]" for t in tokens])
        punct = np.array([is_punctuation(t) for t in tokens])
        out.update(cls_mass=a[:, cls].sum(1).mean(), sep_mass=a[:, sep].sum(1).mean(),
                   punct_mass=a[:, punct].sum(1).mean())
    return out


def test_head_stats_match_reference(rng):
    tokens = [["[CLS]", "the", "cat", ",", "sat", ".", "[SEP]"],
              ["[CLS]", "hi", "!", "[SEP]", "", "", ""]]
    lengths = [7, 4]
    a = random_attention(rng, (2, 3, 4, 7, 7))
    for s, m in enumerate(lengths):
        a[s, :, :, m:, :] = np.nan
        a[s, :, :, :, m:] = np.nan
        a[s, :, :, :m, :m] = random_attention(rng, (3, 4, m, m))
    st = ak.head_stats(a, lengths=lengths, tokens=tokens)
    assert st.entropy.dims == ("sample", "layer", "head")
    assert st.js_divergence.dims == ("sample", "layer", "head", "other_head")
    for s, m in enumerate(lengths):
        for layer in range(3):
            for h in range(4):
                want = ref_head(a[s, layer, h, :m, :m], tokens[s][:m])
                for name, value in want.items():
                    np.testing.assert_allclose(st[name].values[s, layer, h], value, rtol=1e-12,
                                               err_msg=name)
                for h2 in range(4):
                    js = np.mean([jensenshannon(a[s, layer, h, i, :m], a[s, layer, h2, i, :m], base=2) ** 2
                                  for i in range(m)])
                    np.testing.assert_allclose(st.js_divergence.values[s, layer, h, h2], js,
                                               rtol=1e-9, atol=1e-12)


def test_without_tokens_token_masses_are_nan(rng):
    st = ak.head_stats(random_attention(rng, (2, 2, 5, 5)))
    assert "sample" not in st.dims
    assert np.isnan(st.cls_mass).all() and np.isnan(st.punct_mass).all()
    assert np.isfinite(st.entropy).all()


def test_planted_heads_are_recognised():
    n = 6
    prev = np.eye(n, k=-1); prev[0, 0] = 1
    nxt = np.eye(n, k=1); nxt[-1, -1] = 1
    sink = np.zeros((n, n)); sink[:, 0] = 1
    uniform = np.full((n, n), 1 / n)
    st = ak.head_stats(np.stack([prev, nxt, sink, uniform])[None],
                       tokens=["[CLS]", "a", "b", ",", "c", "[SEP]"])
    np.testing.assert_allclose(st.prev_mass.values[0], [1, 0, 0.2, 1 / n])
    np.testing.assert_allclose(st.next_mass.values[0], [0, 1, 0, 1 / n])
    np.testing.assert_allclose(st.cls_mass.values[0], [2 / n, 0, 1, 1 / n])  # rows 0 and 1 of prev
    np.testing.assert_allclose(st.entropy.values[0, :3], 0)
    np.testing.assert_allclose(st.entropy.values[0, 3], np.log(n))
    np.testing.assert_allclose(st.punct_mass.values[0, 1], 1 / n)  # row 2 -> key 3 ","


def test_dataset_input_lazy_and_eager_agree(rng):
    lengths = [5, 3, 4]
    samples = [random_attention(rng, (2, 3, m, m)) for m in lengths]
    tokens = [["[CLS]", "x", ".", "y", "[SEP]"], ["[CLS]", "!", "[SEP]"], ["[CLS]", "a", "b", "[SEP]"]]
    ds = ak.from_arrays(samples, tokens=tokens)
    eager = ak.head_stats(ds)
    lazy = ak.head_stats(ds.chunk({"sample": 1}))
    assert lazy.entropy.chunks is not None
    lazy = lazy.compute()
    for name in eager.data_vars:
        np.testing.assert_array_equal(eager[name].values, lazy[name].values)
    for s, m in enumerate(lengths):
        want = ref_head(samples[s][1, 2], tokens[s])
        for name, value in want.items():
            np.testing.assert_allclose(eager[name].values[s, 1, 2], value, rtol=1e-12, err_msg=name)


def test_head_stats_errors(rng):
    with pytest.raises(ValueError, match=r"attn: expected shape \(\.\.\., layer, head, n, n\)"):
        ak.head_stats(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"tokens: expected shape one token list per sample"):
        ak.head_stats(random_attention(rng, (2, 1, 1, 3, 3)), tokens=[["a", "b", "c"]] * 3)
