"""Per-position scores of an image model as maps on its patch grid.

An image dataset (a ``grid`` attr ``(rows, cols)``) orders its positions as
[CLS] first, then the patches row by row: position ``1 + r * cols + c`` is
patch ``(r, c)``. :func:`patch_grid` turns any ``(..., position)`` score into
``(..., row, col)``; :func:`patch_maps` builds every map the dataset supports,
named, on one ``(sample, map, row, col)`` array:

========================= ==========================================================
``cls_head_{h}``          last layer's attention from [CLS] to each patch, head ``h``
                          (the DINO-style per-head maps)
``rollout``               row [CLS] of the attention rollout from layer 0
``rollout_from_{s}``      the same, from layer ``s`` on (one per ``start_layers``)
``grad_rollout``          row [CLS] of gradient-weighted rollout (Chefer et al. 2021),
                          when the dataset stores ``gradient``
``attribution:{method}``  each stored ``attribution`` method (e.g. gradcam,
                          input_x_gradient); may be signed
``impact:{method}``       each stored ``impact`` method (occlusion: mask, key_mask, ...)
``saliency``              the stored saliency map averaged over each patch's pixels
========================= ==========================================================
"""

from __future__ import annotations

import numpy as np

from . import errors

__all__ = ["patch_grid", "patch_maps"]

#: The rollout start layers :func:`patch_maps` uses by default (those the model has).
DEFAULT_START_LAYERS = (0, 1)
#: Dims of a patch map.
GRID_DIMS = ("row", "col")


def grid_shape(grid, name: str = "grid") -> tuple[int, int]:
    """``grid`` as ``(rows, cols)``, two positive ints, or a ValueError naming the fix.

    Examples
    --------
    >>> grid_shape((2, 3)), grid_shape(np.array([16, 16]))
    ((2, 3), (16, 16))
    """
    try:
        flat = np.asarray(grid).reshape(-1)
        if flat.size != 2 or flat.dtype.kind not in "iuf" or not np.all(flat == np.round(flat)):
            raise ValueError
        rows, cols = (int(g) for g in flat)
    except (TypeError, ValueError):
        raise errors.value_error(name, "(rows, cols): the patch rows and columns", repr(grid),
                                 "pass e.g. grid=(16, 16) for a 224px ViT with 14px patches"
                                 ) from None
    if rows < 1 or cols < 1:
        raise errors.value_error(name, "two positive ints (rows, cols)", repr(grid),
                                 "pass e.g. grid=(16, 16)")
    return rows, cols


def dataset_grid(ds) -> tuple[int, int]:
    """The ``grid`` attr of an image dataset as ``(rows, cols)``; a clear error without one.

    Examples
    --------
    >>> import attnkit as ak
    >>> ds = ak.from_arrays(np.full((1, 1, 5, 5), 0.2), attrs={"grid": (2, 2)})
    >>> dataset_grid(ds)
    (2, 2)
    >>> dataset_grid(ak.from_arrays(np.full((1, 1, 5, 5), 0.2)))
    Traceback (most recent call last):
    ...
    ValueError: ds.attrs['grid']: expected (rows, cols): the patch grid of an image model, got no grid attr (not an image dataset). Fix: run an image model (ak.models.SaliencyViT, `attnkit compute --model saliency-vit`), or set ds.attrs['grid'] = (rows, cols) when position 1 + r*cols + c is patch (r, c).
    """
    if not hasattr(ds, "attrs") or "grid" not in ds.attrs:
        raise errors.value_error(
            "ds.attrs['grid']", "(rows, cols): the patch grid of an image model",
            "no grid attr (not an image dataset)",
            "run an image model (ak.models.SaliencyViT, `attnkit compute --model saliency-vit`), "
            "or set ds.attrs['grid'] = (rows, cols) when position 1 + r*cols + c is patch (r, c)")
    return grid_shape(ds.attrs["grid"], "ds.attrs['grid']")


def _patch_slice(n: int, rows: int, cols: int, what: str) -> int:
    """Where the patches start along a positions axis of size ``n``: 1 with [CLS], 0 without."""
    patches = rows * cols
    if n == patches + 1:
        return 1
    if n == patches:
        return 0
    raise errors.shape_error(what, f"{patches + 1} positions ([CLS] + {rows}x{cols} patches) or "
                             f"{patches} (patches only) for grid {(rows, cols)}", n,
                             "pass scores over [CLS] and the patches in row-major order, and "
                             "the model's patch grid")


def patch_grid(values, grid, *, dim=None):
    """Scores over [CLS] + patches (or patches only) as maps on the patch grid.

    Position ``1 + r * cols + c`` (or ``r * cols + c`` without [CLS]) becomes
    cell ``(r, c)``; [CLS] is dropped.

    Parameters
    ----------
    values : array_like (..., position) or xarray.DataArray
        ``1 + rows * cols`` entries ([CLS] first, then the patches row by row)
        or ``rows * cols`` (patches only) along the last axis, or along ``dim``
        of a DataArray.
    grid : (int, int)
        Patch rows and columns (an image dataset's ``grid`` attr).
    dim : str, optional
        The positions dim of a DataArray: default "position", else "key", else
        its last dim.

    Returns
    -------
    numpy.ndarray (..., row, col), or xarray.DataArray with dims (..., row, col)
        A DataArray keeps its other dims, coordinates not on ``dim``, name and
        attrs, and gains ``row`` and ``col`` coordinates and a ``grid`` attr.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> scores = np.arange(7.0)                  # [CLS] + 2x3 patches
    >>> ak.patch_grid(scores, (2, 3))
    array([[1., 2., 3.],
           [4., 5., 6.]])
    >>> import xarray as xr
    >>> da = xr.DataArray(np.arange(14.0).reshape(2, 7), dims=("sample", "position"))
    >>> m = ak.patch_grid(da, (2, 3))
    >>> m.dims, m.values[1].tolist()
    (('sample', 'row', 'col'), [[8.0, 9.0, 10.0], [11.0, 12.0, 13.0]])
    >>> ak.patch_grid(np.ones(5), (2, 3))
    Traceback (most recent call last):
    ...
    ValueError: values: expected shape 7 positions ([CLS] + 2x3 patches) or 6 (patches only) for grid (2, 3), got 5. Fix: pass scores over [CLS] and the patches in row-major order, and the model's patch grid.
    """
    rows, cols = grid_shape(grid)
    if type(values).__module__.startswith("xarray.") and hasattr(values, "data_vars"):
        raise errors.value_error("values", "a DataArray or an array (..., position)",
                                 "a Dataset", "pick one variable, e.g. ds['attribution']")
    if type(values).__module__.startswith("xarray."):
        import xarray as xr

        if dim is None:
            dim = next((d for d in ("position", "key") if d in values.dims),
                       values.dims[-1] if values.dims else None)
        if dim is None or dim not in values.dims:
            raise errors.value_error("dim", f"one of the dims {values.dims}", repr(dim),
                                     "name the positions dim, e.g. dim='position'")
        if "row" in values.dims or "col" in values.dims:
            raise errors.value_error("values", "a DataArray without 'row'/'col' dims",
                                     f"dims {values.dims}", "rename those dims first")
        start = _patch_slice(values.sizes[dim], rows, cols, "values")
        part = values.isel({dim: slice(start, start + rows * cols)})
        part = part.drop_vars([c for c, v in part.coords.items() if dim in v.dims])
        part = part.transpose(..., dim)
        data = part.data.reshape(part.shape[:-1] + (rows, cols))
        outer = part.dims[:-1]
        out = xr.DataArray(data, dims=outer + GRID_DIMS,
                           coords={**{c: v for c, v in part.coords.items()},
                                   "row": np.arange(rows), "col": np.arange(cols)},
                           name=values.name, attrs=dict(values.attrs))
        out.attrs["grid"] = np.array([rows, cols], np.int64)
        return out
    if dim is not None:
        raise errors.value_error("dim", "None for a NumPy array (positions are its last axis)",
                                 repr(dim), "move the positions to the last axis, or pass a "
                                 "DataArray")
    a = np.asarray(values)
    if a.ndim == 0:
        raise errors.shape_error("values", "(..., position)", a.shape,
                                 "pass one score per position")
    start = _patch_slice(a.shape[-1], rows, cols, "values")
    return a[..., start:start + rows * cols].reshape(a.shape[:-1] + (rows, cols))


# ----------------------------------------------------------------------------- patch_maps
def _samples(ds, sample):
    """Indices of the chosen samples, and whether the sample dim is dropped (an int)."""
    size = ds.sizes["sample"]

    def check_index(name, value, size):
        if not errors.is_int(value) or not -size <= value < size:
            raise errors.value_error(name, f"an int in [0, {size})", repr(value),
                                     f"the data has {size} samples, counted from 0")
        return int(value) % size

    if sample is None:
        return list(range(size)), False
    if errors.is_int(sample):
        return [check_index("sample", sample, size)], True
    try:
        chosen = list(sample)
    except TypeError:
        raise errors.value_error("sample", "None, an int or a list of ints", repr(sample),
                                 "pass e.g. sample=0") from None
    return [check_index("sample", s, size) for s in chosen], False


def _start_layers(start_layers, n_layers: int) -> list[int]:
    default = start_layers is DEFAULT_START_LAYERS
    if errors.is_int(start_layers):
        start_layers = (start_layers,)
    try:
        chosen = list(start_layers)
    except TypeError:
        raise errors.value_error("start_layers", "a sequence of layer indices", repr(start_layers),
                                 "pass e.g. start_layers=(0, 1)") from None
    if default:  # (0, 1) on a one-layer model is just (0,)
        chosen = [s for s in chosen if s < n_layers]
    layers = [errors.layer_index("start_layers", s, n_layers) for s in chosen]
    if len(set(layers)) != len(layers):
        raise errors.value_error("start_layers", "distinct layers", repr(tuple(chosen)),
                                 "list each start layer once")
    return layers


def _method_names(da, dim: str) -> list[str]:
    if dim not in da.dims:
        return [str(da.attrs.get("method", da.name or "attribution"))]
    if dim in da.coords:
        return [str(m) for m in da[dim].values]
    return [str(i) for i in range(da.sizes[dim])]


def _pool_saliency(sal: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(S, H, W) -> (S, rows, cols): the mean over each patch's pixels (remainder dropped)."""
    height, width = sal.shape[-2:]
    ph, pw = height // rows, width // cols
    if ph < 1 or pw < 1:
        raise errors.shape_error("ds.saliency", f"(sample, y, x) with at least {rows} x {cols} "
                                 f"pixels (one a patch)", sal.shape,
                                 "store the saliency at the input image's size")
    cut = sal[:, : rows * ph, : cols * pw].astype(np.float64)
    return cut.reshape(sal.shape[0], rows, ph, cols, pw).mean(axis=(2, 4))


def patch_maps(ds, *, sample=None, start_layers=DEFAULT_START_LAYERS, heads=True, residual=0.5,
               head_fusion="mean"):
    """Every map of an image dataset on its patch grid, by name.

    The maps come from what the dataset holds: attention always; gradients,
    attributions, impacts and saliency when stored.

    Parameters
    ----------
    ds : xarray.Dataset
        An attention dataset with a ``grid`` attr ``(rows, cols)`` (position
        ``1 + r * cols + c`` is patch ``(r, c)``; positions past
        ``1 + rows * cols`` are ignored).
    sample : int, list of int or None
        One sample (the ``sample`` dim is dropped), several, or all (None).
    start_layers : sequence of int
        One rollout map per start layer: ``"rollout"`` from layer 0,
        ``"rollout_from_{s}"`` from layer ``s``. Default (0, 1), limited to
        the layers the model has.
    heads : bool
        Include the last layer's [CLS] attention of every head,
        ``"cls_head_{h}"``.
    residual, head_fusion
        Passed to :func:`attnkit.rollout`.

    Returns
    -------
    xarray.DataArray (sample, map, row, col)
        float64; dims (map, row, col) for an int ``sample``. Coordinates
        ``map`` (the names, in the order cls_head_*, rollout*, grad_rollout,
        attribution:*, impact:*, saliency) and ``description`` (map) saying
        what each is. [CLS] (position 0) is not on the grid. Attention maps
        are NaN past a sample's length.

    Examples
    --------
    >>> import numpy as np, attnkit as ak
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((1, 2, 3, 7, 7)); a /= a.sum(-1, keepdims=True)  # [CLS] + 2x3 patches
    >>> ds = ak.from_arrays(a, attrs={"grid": (2, 3), "readout": "patches"})
    >>> maps = ak.patch_maps(ds, sample=0)
    >>> maps.dims, maps.map.values.tolist()
    (('map', 'row', 'col'), ['cls_head_0', 'cls_head_1', 'cls_head_2', 'rollout', 'rollout_from_1'])
    >>> bool(np.allclose(maps.sel(map="cls_head_2"), a[0, -1, 2, 0, 1:].reshape(2, 3)))
    True
    >>> bool(np.allclose(maps.sel(map="rollout"), ak.rollout(a)[0, 0, 1:].reshape(2, 3)))
    True
    """
    import xarray as xr

    from . import grad_rollout, rollout
    from .attribution import METHOD_DIM

    if not hasattr(ds, "data_vars") or "attention" not in ds:
        raise errors.value_error("ds", "an attention dataset (xarray.Dataset with `attention`)",
                                 type(ds).__name__, "open one with ak.open_dataset")
    rows, cols = dataset_grid(ds)
    n = ds.sizes["key"]
    size = 1 + rows * cols
    if n < size:
        raise errors.value_error("ds.attrs['grid']", f"(rows, cols) with 1 + rows*cols <= {n} "
                                 "positions ([CLS] first, then the patches)", repr((rows, cols)),
                                 "store the model's patch grid")
    heads = errors.flag("heads", heads)
    picked, squeeze = _samples(ds, sample)
    one = ds.isel(sample=picked)
    n_layers = one.sizes["layer"]
    starts = _start_layers(start_layers, n_layers)

    names, descriptions, values = [], [], []

    def add(name, description, per_position):
        names.append(name)
        descriptions.append(description)
        values.append(np.asarray(per_position, dtype=np.float64)[:, :size])

    last = n_layers - 1
    if heads:
        cls = np.asarray(one["attention"].isel(layer=-1, query=0).values)  # (S, head, key)
        for h in range(cls.shape[1]):
            add(f"cls_head_{h}", f"[CLS] attention, layer {last}, head {h}", cls[:, h])
    for s in starts:
        r = rollout(one, start_layer=s, residual=residual, head_fusion=head_fusion)
        add("rollout" if s == 0 else f"rollout_from_{s}", f"rollout from layer {s}",
            np.asarray(r.isel(query=0).values))
    if "gradient" in one.variables:
        lengths = np.asarray(one["length"].values) if "length" in one else None
        g = grad_rollout(np.nan_to_num(np.asarray(one["attention"].values, dtype=np.float64)),
                         np.nan_to_num(np.asarray(one["gradient"].values, dtype=np.float64)),
                         lengths=lengths)
        add("grad_rollout", "gradient-weighted rollout (Chefer et al.)", g[:, 0])
    for var, dim in (("attribution", METHOD_DIM), ("impact", "method")):
        if var not in one.variables:
            continue
        da = one[var]
        if "position" not in da.dims or da.sizes["position"] < size:
            raise errors.shape_error(f"ds.{var}", f"(sample, position, ...) with at least {size} "
                                     "positions", dict(da.sizes),
                                     f"store one {var} per position ([CLS] first)")
        for i, method in enumerate(_method_names(da, dim)):
            part = da.isel({dim: i}) if dim in da.dims else da
            add(f"{var}:{method}", f"{var}: {method}",
                np.asarray(part.transpose("sample", "position").values))
    if "saliency" in one.variables:
        sal = np.asarray(one["saliency"].transpose("sample", ...).values)
        if sal.ndim != 3:
            raise errors.shape_error("ds.saliency", "(sample, y, x)", sal.shape,
                                     "store one saliency map per sample")
        pooled = _pool_saliency(sal, rows, cols).reshape(len(picked), rows * cols)
        add("saliency", "saliency, mean over each patch's pixels",
            np.concatenate([np.full((len(picked), 1), np.nan), pooled], axis=1))

    stacked = np.stack(values, axis=1)  # (S, map, 1 + rows*cols)
    grid = patch_grid(stacked, (rows, cols))
    coords = {"map": names, "description": ("map", descriptions),
              "row": np.arange(rows), "col": np.arange(cols)}
    if "sample" in one.coords:
        coords["sample"] = one["sample"].values
    out = xr.DataArray(grid, dims=("sample", "map") + GRID_DIMS, coords=coords, name="patch_map",
                       attrs={"grid": np.array([rows, cols], np.int64),
                              "residual": float(residual), "head_fusion": str(head_fusion)})
    return out.isel(sample=0) if squeeze else out
