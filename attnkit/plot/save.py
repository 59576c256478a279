"""Writing a figure to .png, .pdf or .svg atomically, alone or a folder of them."""

from __future__ import annotations

import os
from pathlib import Path

from .. import errors

__all__ = ["save_figure", "FigureFolder", "FORMATS"]

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


class FigureFolder:
    """Saves figures into one folder by name, closes each, and lists what it wrote.

    The batch jobs (``attnkit analyze``, ``attnkit evaluate``, ``attnkit paper``)
    draw many figures in one process: each is written with :func:`save_figure`
    and closed at once, on the non-interactive Agg backend.

    Parameters
    ----------
    folder : str or os.PathLike
        An existing folder.

    Attributes
    ----------
    written : list of pathlib.Path
        Every file saved, in order.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from attnkit.plot import FigureFolder, heatmap
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = FigureFolder(tmp)
    ...     _ = out.save(heatmap(np.eye(2)), "eye.png")
    ...     [p.name for p in out.written]
    ['eye.png']
    """

    def __init__(self, folder) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot  # noqa: F401  (figures are then pyplot's, and closed by it)

        self.folder = Path(os.fspath(folder))
        self.written: list[Path] = []

    def save(self, fig, name: str) -> Path:
        """Write ``fig`` as ``folder / name``, close it, and return the path."""
        import matplotlib.pyplot as plt

        try:
            path = save_figure(fig, self.folder / name)
        finally:
            plt.close(fig)
        self.written.append(path)
        return path
