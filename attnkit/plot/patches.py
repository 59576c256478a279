"""The [CLS] rollout of an image-patch model on its patch grid, optionally over the image."""

from __future__ import annotations

import numpy as np

from .. import errors
from .common import colormap, figure_and_axes, vector

__all__ = ["patch_overlay"]


def _grid_shape(grid):
    try:
        h, w = (int(g) for g in np.asarray(grid).reshape(-1))
    except (TypeError, ValueError):
        raise errors.value_error("grid", "(h, w): the patch rows and columns", repr(grid),
                                 "pass e.g. grid=(14, 14) for a 224px ViT-B/16") from None
    if h < 1 or w < 1:
        raise errors.value_error("grid", "two positive ints", repr(grid), "pass e.g. grid=(14, 14)")
    return h, w


def patch_overlay(cls_row, grid, image=None, *, title=None, ax=None, cmap="magma", alpha=0.6,
                  colorbar=True):
    """The [CLS] rollout of an image-patch model on the patch grid (over the image).

    Parameters
    ----------
    cls_row : array_like (h*w,) or (h*w + 1,)
        Weights from [CLS] to every patch. With ``h*w + 1`` entries the first
        is [CLS] itself and is dropped; the rest are patches in row-major order.
    grid : (int, int)
        Patch rows ``h`` and columns ``w`` (a dataset's ``grid`` attr).
    image : array_like (H, W) or (H, W, 3|4), optional
        The input image; the heat is stretched over it with ``alpha``.
        Without an image only the patch heat map is drawn, with patch borders.
    title : str, optional
    ax : matplotlib.axes.Axes, optional
    cmap : str or Colormap
    alpha : float
        Opacity of the heat over the image.
    colorbar : bool

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import patch_overlay
    >>> row = np.r_[0.0, np.arange(6.0) / 15]           # [CLS] + 2x3 patches
    >>> fig = patch_overlay(row, grid=(2, 3))
    >>> fig.axes[0].images[0].get_array().shape
    (2, 3)
    """
    h, w = _grid_shape(grid)
    r = vector("cls_row", cls_row)
    if r.size == h * w + 1:
        r = r[1:]
    elif r.size != h * w:
        raise errors.shape_error("cls_row", f"({h * w},) patches or ({h * w + 1},) with [CLS] "
                                 f"first for grid {(h, w)}", r.shape,
                                 "pass the [CLS] row of the rollout and the model's patch grid")
    heat = r.reshape(h, w)
    fig, ax = figure_and_axes(ax, (5.4, 4.3 * h / w + 0.7))
    extent = (0, w, h, 0)
    finite = heat[np.isfinite(heat)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    if image is not None:
        img = np.asarray(image)
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
            raise errors.shape_error("image", "(H, W), (H, W, 3) or (H, W, 4)", img.shape,
                                     "pass one image, channels last")
        ax.imshow(img, extent=extent, cmap="gray" if img.ndim == 2 else None,
                  interpolation="bilinear")
        shown = ax.imshow(heat, extent=extent, cmap=colormap(cmap), vmin=0.0, vmax=vmax,
                          alpha=float(alpha), interpolation="bilinear")
    else:
        shown = ax.imshow(heat, extent=extent, cmap=colormap(cmap), vmin=0.0, vmax=vmax,
                          interpolation="nearest")
        ax.set_xticks(np.arange(w + 1), minor=True)
        ax.set_yticks(np.arange(h + 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6, alpha=0.6)
        ax.tick_params(which="minor", length=0)
    ax.set_xticks(np.arange(w) + 0.5)
    ax.set_xticklabels([str(i) for i in range(w)], fontsize=7)
    ax.set_yticks(np.arange(h) + 0.5)
    ax.set_yticklabels([str(i) for i in range(h)], fontsize=7)
    ax.set_xlabel("patch column")
    ax.set_ylabel("patch row")
    if colorbar:  # an opaque colour bar, also when the heat is drawn translucent
        from matplotlib.cm import ScalarMappable

        opaque = ScalarMappable(norm=shown.norm, cmap=shown.cmap)
        fig.colorbar(opaque, ax=ax, shrink=0.85, pad=0.02).set_label("rollout weight from [CLS]")
    ax.set_title(title if title else "[CLS] rollout on the patch grid")
    return fig
