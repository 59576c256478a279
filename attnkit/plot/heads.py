"""Every head of every layer as small multiples (a static bertviz model view)."""

from __future__ import annotations

import numpy as np

from .. import errors
from .common import check_index, colormap, new_figure, token_list, token_text

__all__ = ["head_grid"]


def _sample_block(data, sample: int, tokens):
    """(layer, head, n, n) attention of one sample cut to its length, and its tokens."""
    if type(data).__module__.startswith("xarray."):
        ds = data
        if hasattr(ds, "data_vars"):
            if "attention" not in ds:
                raise errors.value_error("ds", "a dataset with an `attention` variable",
                                         sorted(ds.data_vars), "build it with ak.from_arrays")
            da = ds["attention"]
        else:
            da = ds
        if "sample" in da.dims:
            n_samples = da.sizes["sample"]
            check_index("sample", sample, n_samples)
            da = da.isel(sample=sample)
        a = np.asarray(da.transpose("layer", "head", "query", "key").values, dtype=np.float64)
        length = a.shape[-1]
        if hasattr(ds, "data_vars") and "length" in ds:
            lengths = np.asarray(ds["length"].values).reshape(-1)
            length = int(lengths[sample] if lengths.size > 1 else lengths[0])
        if tokens is None and "token" in ds.coords:
            tok = np.asarray(ds["token"].values, dtype=object)
            tokens = tok[sample] if tok.ndim == 2 else tok
            tokens = list(tokens[:length])
        return a[..., :length, :length], tokens
    a = np.asarray(data, dtype=np.float64)
    if a.ndim == 5:
        check_index("sample", sample, a.shape[0])
        a = a[sample]
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise errors.shape_error("data", "(layer, head, n, n) or (sample, layer, head, n, n)",
                                 a.shape, "pass the attention of every layer and head")
    return a, tokens



def head_grid(data, sample=0, *, tokens=None, cmap="viridis", vmax=None, title=None, fig=None,
              cell=None):
    """Every head of every layer as small multiples (a static bertviz model view).

    Rows are layers (0 on top), columns heads; all panels share one colour
    scale (0 .. ``vmax``) and one colour bar. Each panel is one head's
    (query, key) map with query 0 top left, like :func:`heatmap` without labels;
    the tokens are written under the title.

    Parameters
    ----------
    data : xarray.Dataset, DataArray or array
        An attention dataset (its ``length`` and ``token`` are used), or
        attention (layer, head, n, n) / (sample, layer, head, n, n).
    sample : int
        Which sample of a dataset or 5-D array.
    tokens : sequence of str, optional
        The sample's tokens (default: the dataset's), shown in the title.
    cmap : str or Colormap
    vmax : float, optional
        Upper colour limit shared by all panels; default the largest weight.
    title : str, optional
        Default ``"sample <i>: every layer and head"``.
    fig : matplotlib.figure.Figure, optional
        Draw into this (empty) figure.
    cell : float, optional
        Panel side in inches (default 1.0, 1.2 for more than 32 tokens).

    Returns
    -------
    matplotlib.figure.Figure
        ``layers * heads`` image axes plus a colour bar.

    Examples
    --------
    >>> import numpy as np
    >>> from attnkit.plot import head_grid
    >>> a = np.full((2, 3, 4, 4), 0.25)            # 2 layers, 3 heads
    >>> fig = head_grid(a, tokens=["[CLS]", "a", "b", "[SEP]"])
    >>> sum(len(ax.images) for ax in fig.axes), fig.axes[0].get_title()
    (6, 'head 0')
    """
    a, tokens = _sample_block(data, sample, tokens)
    n_layers, n_heads, n, _ = a.shape
    tokens = token_list("tokens", tokens, n, "position")
    if title is None:
        title = f"sample {sample}: every layer and head"
    if tokens is not None:
        title = f"{title}\n{token_text(tokens, limit=max(60, 14 * n_heads))}"
    cell = float(cell) if cell is not None else (1.2 if n > 32 else 1.0)
    fig = new_figure((n_heads * cell + 1.3, n_layers * cell + 1.2), fig)
    axes = np.asarray(fig.subplots(n_layers, n_heads, squeeze=False))
    finite = a[np.isfinite(a)]
    vmax = (float(finite.max()) if finite.size else 1.0) if vmax is None else float(vmax)
    cm = colormap(cmap)
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(a[layer, head], cmap=cm, vmin=0.0, vmax=vmax,
                              interpolation="nearest", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    bar = fig.colorbar(image, ax=axes, shrink=min(0.9, max(0.3, 3.0 / n_layers)), aspect=30,
                       pad=0.01)
    bar.set_label("attention weight")
    fig.suptitle(title, fontsize=11)
    return fig
