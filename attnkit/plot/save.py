"""Writing a figure to .png, .pdf or .svg atomically."""

from __future__ import annotations

import os
from pathlib import Path

from .. import errors

__all__ = ["save_figure", "FORMATS"]

#: Suffixes :func:`save_figure` writes.
FORMATS = (".png", ".pdf", ".svg")


def save_figure(fig, path, *, dpi=150):
    """Write ``fig`` to ``path`` (.png, .pdf or .svg) atomically.

    The figure is rendered to a temporary file next to ``path`` and renamed
    into place, so a failed save never leaves a partial file.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike
        The suffix picks the format.
    dpi : int
        Resolution of PNG output (and of raster parts of PDF/SVG).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from attnkit.plot import heatmap, save_figure
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = save_figure(heatmap(np.eye(2)), os.path.join(tmp, "head.png"), dpi=50)
    ...     sorted(os.listdir(tmp)), open(out, "rb").read(4)
    (['head.png'], b'\\x89PNG')
    """
    from ..data.io import atomic_file

    path = Path(os.fspath(path))
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise errors.value_error("path", "a name ending in .png, .pdf or .svg", repr(str(path)),
                                 "pick the format by the suffix, e.g. figure.png")
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig: expected a matplotlib Figure, got {type(fig).__name__}. "
                        f"Fix: pass what an attnkit.plot function returned")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: expected an existing folder {parent}, got none. "
                                f"Fix: create it first (mkdir -p {parent})")
    with atomic_file(path, suffix=suffix) as tmp:
        fig.savefig(tmp, format=suffix[1:], dpi=dpi)
    return path
