"""The datasets shipped with attnkit, found from any folder.

The repository's ``datasets/`` folder is installed as the package
``attnkit_datasets`` (pyproject.toml maps one onto the other), so the same
lookup finds the files in a checkout (an editable install points the package
at the folder) and in an installed wheel (package data). Set the environment
variable ``ATTNKIT_DATASETS`` to a folder with the same layout to use another
copy.

Exposed as ``ak.datasets``:

* :func:`names` lists the shipped names, :func:`describe` says what each holds;
* :func:`path` gives a name's file, :func:`open` opens a dataset by name;
* :func:`resolve` turns "a path or a shipped name" into a path (the CLI uses it).

Examples
--------
>>> import attnkit as ak
>>> ak.datasets.names()
('minilm', 'minilm_classic_qk', 'planted', 'planted_heads', 'vision', 'vision_images')
>>> ak.datasets.path("minilm").name
'minilm.nc'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import errors

__all__ = ["DEFAULT", "ShippedDataset", "describe", "folder", "is_shipped", "names", "open", "path",
           "resolve"]

#: The name of the default dataset (what ``attnkit analyze`` reads with no argument).
DEFAULT = "minilm"

#: Environment variable naming another folder laid out like ``datasets/``.
ENV_VAR = "ATTNKIT_DATASETS"


@dataclass(frozen=True)
class ShippedDataset:
    """One shipped file: its name, its path inside the datasets folder, what it holds."""

    name: str
    relative_path: str
    kind: str  # "dataset" (schema-1), "tensors" (q/k/v .npz for attend), "images" (a folder)
    description: str


_SHIPPED = (
    ShippedDataset("minilm", "minilm/minilm.nc", "dataset",
                   "all-MiniLM-L6-v2 attention on 270 English sentences, with gradients, "
                   "ablation impacts and attributions (the default)"),
    ShippedDataset("minilm_classic_qk", "minilm/minilm_classic_qk.nc", "dataset",
                   "the same model on the 20 classic sentences, with per-head q and k"),
    ShippedDataset("planted", "synthetic/planted.nc", "dataset",
                   "synthetic attention with planted head roles (48 samples, 4 layers x 6 heads)"),
    ShippedDataset("planted_heads", "demo/planted_heads.npz", "tensors",
                   "q, k, v of 4 heads with planted behaviour, for `attnkit attend`"),
    ShippedDataset("vision", "vision/vision.nc", "dataset",
                   "the SaliencyViT (DINOv2 ViT-S/14) on 3 photographs: attention, saliency, "
                   "occlusion impacts and attributions per patch"),
    ShippedDataset("vision_images", "vision/images", "images",
                   "8 photographs from scikit-image and matplotlib (JPEG), for "
                   "`attnkit compute --model saliency-vit`"),
)
_BY_NAME = {entry.name: entry for entry in _SHIPPED}


def folder() -> Path:
    """The folder holding the shipped datasets.

    ``$ATTNKIT_DATASETS`` when set, else the installed package ``attnkit_datasets``
    (the repository's ``datasets/`` folder in a checkout).

    Examples
    --------
    >>> import attnkit as ak
    >>> (ak.datasets.folder() / "README.md").is_file()
    True
    """
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    try:
        import attnkit_datasets
    except ImportError:
        attnkit_datasets = None
    if attnkit_datasets is not None:
        return Path(attnkit_datasets.__file__).resolve().parent
    # Running from a source tree that was never installed: the folder next to the package.
    return Path(__file__).resolve().parents[2] / "datasets"


def names() -> tuple[str, ...]:
    """The names of the shipped datasets, in a fixed order.

    Examples
    --------
    >>> import attnkit as ak
    >>> "minilm" in ak.datasets.names()
    True
    """
    return tuple(_BY_NAME)


def _entry(name: str) -> ShippedDataset:
    if name not in _BY_NAME:
        raise errors.value_error(
            "name", f"a shipped dataset name, one of {', '.join(_BY_NAME)}", repr(name),
            "list them with ak.datasets.describe() or `attnkit datasets`")
    return _BY_NAME[name]


def path(name: str = DEFAULT) -> Path:
    """The file of the shipped dataset ``name``.

    Raises FileNotFoundError, naming the fix, when the file is missing from
    the installation.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.datasets.path("planted").relative_to(ak.datasets.folder()).as_posix()
    'synthetic/planted.nc'
    """
    entry = _entry(name)
    file = folder() / entry.relative_path
    if not file.exists():
        raise FileNotFoundError(
            f"shipped dataset {name!r}: expected {file}, got no such file. Fix: reinstall "
            f"attnkit (pip install attnkit, or `make demo` in a checkout), or point "
            f"{ENV_VAR} at a folder holding {entry.relative_path}")
    return file


def open(name: str = DEFAULT, **kwargs):  # noqa: A001 - ak.datasets.open reads naturally
    """Open the shipped attention dataset ``name`` (keyword arguments go to
    :func:`attnkit.open_dataset`).

    Examples
    --------
    >>> import attnkit as ak
    >>> ds = ak.datasets.open("planted")
    >>> dict(ds.attention.sizes)
    {'sample': 48, 'layer': 4, 'head': 6, 'query': 32, 'key': 32}
    """
    from .io import open_dataset

    entry = _entry(name)
    if entry.kind != "dataset":
        raise errors.value_error(
            "name", "the name of a shipped attention dataset", f"{name!r}, which holds "
            f"{entry.description}", f"load it with numpy.load(ak.datasets.path({name!r}))")
    return open_dataset(path(name), **kwargs)


def describe() -> list[dict]:
    """One row per shipped dataset: name, kind, file (absolute), size in MB, description.

    Examples
    --------
    >>> import attnkit as ak
    >>> [row["name"] for row in ak.datasets.describe() if row["kind"] == "tensors"]
    ['planted_heads']
    """
    base = folder()
    rows = []
    for entry in _SHIPPED:
        file = base / entry.relative_path
        if file.is_dir():
            size = sum(f.stat().st_size for f in file.iterdir() if f.is_file()) / 1e6
        else:
            size = file.stat().st_size / 1e6 if file.exists() else float("nan")
        rows.append({"name": entry.name, "kind": entry.kind, "file": str(file),
                     "size_mb": round(size, 1), "description": entry.description})
    return rows


def is_shipped(file) -> bool:
    """Whether ``file`` is one of the shipped files (commands never rewrite those in place).

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.datasets.is_shipped(ak.datasets.path("minilm")), ak.datasets.is_shipped("mine.nc")
    (True, False)
    """
    file = Path(file).resolve()
    base = folder().resolve()
    return any(file == base / entry.relative_path for entry in _SHIPPED)


def resolve(value) -> Path:
    """``value`` as a path: an existing path stays itself, a shipped name becomes its file.

    A path wins over a name: a file called ``minilm`` in the working folder is
    that file. Anything else raises FileNotFoundError listing the shipped names.

    Examples
    --------
    >>> import attnkit as ak
    >>> ak.datasets.resolve("planted") == ak.datasets.path("planted")
    True
    """
    candidate = Path(value)
    if candidate.exists():
        return candidate
    if str(value) in _BY_NAME:
        return path(str(value))
    raise FileNotFoundError(
        f"{value} does not exist: expected an existing file or the name of a shipped dataset "
        f"({', '.join(_BY_NAME)}), got neither. Fix: check the path, or run "
        f"`attnkit datasets` to list the shipped ones")
