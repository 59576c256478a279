"""ak.head_stats against a direct NumPy computation."""

import numpy as np
import pytest
import reference
from scipy.spatial.distance import jensenshannon

import attnkit as ak
from attnkit.kernels.cpu import api as cpu_api
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


# ----------------------------------- attention_stats / attention_weights, one pass
# The CPU computes the per-query statistics online (entropy from the running
# maximum, sum and sum of p (m - s)), folds "received" into that pass, and
# writes attention_weights in one pass (tiles stored against the running
# maximum, rescaled when the row is done). These check the rescaling paths
# against the float64 reference.
def _rising_scores(rng, jump, dtype, n=70, m=3 * 256 + 40, d=16):
    """Each 256-key tile scores ``jump`` higher than the one before (see test_attention)."""
    q = np.zeros((2, n, d))
    q[..., 0] = 1.0
    q[..., 1:] = 0.1 * rng.standard_normal((2, n, d - 1))
    k = rng.standard_normal((2, m, d))
    k[..., 0] = jump * np.sqrt(d) * (np.arange(m) // 256)
    return q.astype(dtype), k.astype(dtype)


@pytest.mark.parametrize("jump", [0.5, 12.0, 150.0], ids=["keep-shift", "rescale", "redo"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_pass_weights_and_stats_with_rising_maxima(rng, jump, dtype):
    q, k = _rising_scores(rng, jump, dtype)
    p, _ = reference.weights(q.astype(np.float64), k.astype(np.float64))
    want = reference.stats(p, 3)
    tol = (1e-5 if dtype == np.float32 else 1e-12) + 3 * jump * np.finfo(dtype).eps
    w = ak.attention_weights(q, k, backend="cpu")
    np.testing.assert_allclose(w, p, rtol=tol, atol=tol)
    np.testing.assert_allclose(w.sum(-1, dtype=np.float64), 1.0, rtol=0, atol=tol)
    st = ak.attention_stats(q, k, topk=3, backend="cpu")
    for name in ("entropy", "max", "distance", "received", "topk_value"):
        # distance sums up to m: its scale is m times the probabilities'
        scale = k.shape[-2] if name in ("distance", "received") else 1.0
        np.testing.assert_allclose(st[name], want[name], rtol=tol, atol=tol * scale, err_msg=name)
    if dtype == np.float64:
        np.testing.assert_array_equal(st["argmax"], want["argmax"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_entropy_of_peaked_and_flat_rows(rng, dtype):
    """Near one-hot rows (entropy ~1e-6) and near uniform ones, at large score magnitudes."""
    n, m, d = 40, 300, 8
    q = rng.standard_normal((n, d))
    k = rng.standard_normal((m, d))
    q[:20] *= 40.0  # peaked: scores up to ~100
    q[20:] *= 1e-3  # flat: entropy ~ log(m)
    q, k = q.astype(dtype), k.astype(dtype)
    p, _ = reference.weights(q.astype(np.float64), k.astype(np.float64))
    want = reference.stats(p)
    st = ak.attention_stats(q, k, backend="cpu")
    assert (st["entropy"] >= 0).all()
    assert want["entropy"][:20].min() < 1e-6 and want["entropy"][20:].min() > 5.0
    # absolute accuracy: float32 scores of ~100 carry ~1e-5 of rounding, which peaked rows feel
    peaked, flat = (2e-5, 2e-6) if dtype == np.float32 else (1e-12, 1e-12)
    np.testing.assert_allclose(st["entropy"][:20], want["entropy"][:20], rtol=0, atol=peaked)
    np.testing.assert_allclose(st["entropy"][20:], want["entropy"][20:], rtol=0, atol=flat)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_received_folded_or_in_its_own_pass(rng, monkeypatch, dtype):
    """Received attention folded into the per-query pass, and (past the memory bounds)
    in a pass of its own: both match the reference; asking for it alone gives the same
    bits as asking for everything."""
    q = rng.standard_normal((2, 3, 150, 16)).astype(dtype)
    k = rng.standard_normal((2, 3, 520, 16)).astype(dtype)
    kw = {"mask": ak.masks.local(90) | ak.masks.global_tokens([0, 3]), "causal": True,
          "kv_lengths": np.array([520, 311]), "q_lengths": np.array([150, 97]), "backend": "cpu"}
    p, _ = reference.weights(q.astype(np.float64), k.astype(np.float64), **{
        name: kw[name] for name in ("mask", "causal", "kv_lengths", "q_lengths")})
    want = reference.stats(p)["received"]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    everything = ak.attention_stats(q, k, topk=2, **kw)
    folded = everything["received"]
    assert folded.tobytes() == ak.attention_stats(q, k, stats="received", **kw)["received"].tobytes()
    # the per-query statistics do not depend on the tiles that keeping rows asks for
    per_query = ak.attention_stats(q, k, stats=("entropy", "max", "distance"), topk=2, **kw)
    for name, arr in per_query.items():
        assert arr.tobytes() == everything[name].tobytes(), name
    monkeypatch.setattr(cpu_api, "PARTS_BYTES", 0)
    separate = ak.attention_stats(q, k, **kw)["received"]
    assert separate.tobytes() == ak.attention_stats(q, k, stats="received", **kw)["received"].tobytes()
    for got in (folded, separate):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        assert (got[want == 0] == 0).all()  # keys no query may attend to get exactly 0
