"""attnkit.patches: scores on the patch grid (patch_grid) and the named maps (patch_maps).

Every map is checked against its definition computed here independently: explicit index
arithmetic (position 1 + r*cols + c is patch (r, c)), loops, and a float64 NumPy rollout.
"""

import numpy as np
import pytest
import xarray as xr

import attnkit as ak

GRIDS = [(4, 4), (3, 5)]
PATCH = 14


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def patch_tokens(rows, cols):
    return ["[CLS]"] + [f"p({r},{c})" for r in range(rows) for c in range(cols)]


def image_dataset(rng, grid=(4, 4), *, samples=2, layers=3, heads=4, gradient=True,
                  attribution=True, impact=True, saliency=True, image=True, extra_pixels=(0, 0)):
    """A synthetic image dataset as the vision model writes it ([CLS] + rows x cols patches)."""
    rows, cols = grid
    n = 1 + rows * cols
    attn = softmax(2.0 * rng.standard_normal((samples, layers, heads, n, n)))
    grad = rng.standard_normal(attn.shape) if gradient else None
    ds = ak.from_arrays(attn, tokens=[patch_tokens(rows, cols)] * samples, gradient=grad,
                        model="toy-vit", attrs={"grid": (rows, cols), "readout": "patches"})
    height, width = rows * PATCH + extra_pixels[0], cols * PATCH + extra_pixels[1]
    if image:
        ds["image"] = (("sample", "y", "x", "channel"),
                       rng.integers(0, 256, (samples, height, width, 3), dtype=np.uint8))
    if saliency:
        ds["saliency"] = (("sample", "y", "x"),
                          rng.random((samples, height, width)).astype(np.float32))
    if attribution:
        ds["attribution"] = xr.DataArray(
            rng.standard_normal((samples, n, 2)), dims=("sample", "position", "attribution_method"),
            coords={"attribution_method": ["gradcam", "input_x_gradient"]})
    if impact:
        ds["impact"] = xr.DataArray(rng.random((samples, n, 2)),
                                    dims=("sample", "position", "method"),
                                    coords={"method": ["mask", "key_mask"]})
    return ds


def cell_values(per_position, rows, cols, offset=1):
    """(..., position) -> (..., rows, cols) by explicit index arithmetic (loops)."""
    per_position = np.asarray(per_position)
    out = np.empty(per_position.shape[:-1] + (rows, cols), per_position.dtype)
    for r in range(rows):
        for c in range(cols):
            out[..., r, c] = per_position[..., offset + r * cols + c]
    return out


def reference_rollout(attn, start=0, residual=0.5):
    """Row-normalised (r I + (1 - r) mean_h A_l), multiplied from the last layer down; float64."""
    n = attn.shape[-1]
    out = np.eye(n)
    for layer in range(start, attn.shape[0]):
        a = residual * np.eye(n) + (1 - residual) * attn[layer].mean(0)
        a = a / a.sum(-1, keepdims=True)
        out = a @ out
    return out


def reference_grad_rollout(attn, grad):
    """Chefer et al.'s generic rule: R <- R + mean_h(max(grad * attn, 0)) @ R."""
    n = attn.shape[-1]
    out = np.eye(n)
    for layer in range(attn.shape[0]):
        out = out + np.maximum(grad[layer] * attn[layer], 0).mean(0) @ out
    return out


# ----------------------------------------------------------------------------- patch_grid
@pytest.mark.parametrize("grid", GRIDS)
def test_patch_grid_numpy_matches_index_arithmetic(rng, grid):
    rows, cols = grid
    scores = rng.standard_normal((2, 3, 1 + rows * cols))
    got = ak.patch_grid(scores, grid)
    assert isinstance(got, np.ndarray) and got.shape == (2, 3, rows, cols)
    np.testing.assert_array_equal(got, cell_values(scores, rows, cols))
    # patches only: position r*cols + c
    patches = scores[..., 1:]
    np.testing.assert_array_equal(ak.patch_grid(patches, grid), cell_values(patches, rows, cols, 0))
    # one vector, and the last patch at the bottom right corner
    np.testing.assert_array_equal(ak.patch_grid(scores[0, 0], grid)[-1, -1], scores[0, 0, -1])
    assert ak.patch_grid(scores[0, 0], grid)[0, 1] == scores[0, 0, 2]


def test_patch_grid_non_square_is_row_major(rng):
    rows, cols = 3, 5
    positions = np.arange(1 + rows * cols)
    got = ak.patch_grid(positions, (rows, cols))
    for r in range(rows):
        for c in range(cols):
            assert got[r, c] == 1 + r * cols + c
    assert got.shape == (3, 5)  # not (5, 3): rows first


@pytest.mark.parametrize("grid", GRIDS)
def test_patch_grid_xarray_keeps_labels(rng, grid):
    rows, cols = grid
    ds = image_dataset(rng, grid)
    attribution = ds["attribution"]  # (sample, position, attribution_method), token coordinate
    got = ak.patch_grid(attribution, grid)
    assert got.dims == ("sample", "attribution_method", "row", "col")
    assert got["attribution_method"].values.tolist() == ["gradcam", "input_x_gradient"]
    assert got["row"].values.tolist() == list(range(rows))
    assert got["col"].values.tolist() == list(range(cols))
    assert "token" not in got.coords  # a position coordinate has no place on the grid
    assert got.attrs["grid"].tolist() == [rows, cols] and got.name == "attribution"
    expected = cell_values(attribution.transpose("sample", "attribution_method", "position").values,
                           rows, cols)
    np.testing.assert_array_equal(got.values, expected)
    # another positions dim: a [CLS] attention row over keys
    row = ds["attention"].isel(layer=-1, head=1, query=0)
    np.testing.assert_array_equal(ak.patch_grid(row, grid).values,
                                  cell_values(row.values, rows, cols))
    by_query = ak.patch_grid(ds["attention"].isel(sample=0, layer=0, head=0), grid, dim="query")
    assert by_query.dims == ("key", "row", "col")
    np.testing.assert_array_equal(by_query.values,
                                  cell_values(ds["attention"].values[0, 0, 0].T, rows, cols))


def test_patch_grid_errors():
    with pytest.raises(ValueError, match=r"values: expected shape 17 positions \(\[CLS\] \+ "
                                         r"4x4 patches\) or 16 \(patches only\) for grid \(4, 4\),"
                                         r" got 15\. Fix: pass scores over \[CLS\]"):
        ak.patch_grid(np.ones(15), (4, 4))
    with pytest.raises(ValueError, match=r"16 positions .* or 15 \(patches only\) .* got 14"):
        ak.patch_grid(np.ones(14), (3, 5))
    with pytest.raises(ValueError, match=r"grid: expected \(rows, cols\)"):
        ak.patch_grid(np.ones(17), (4,))
    with pytest.raises(ValueError, match=r"grid: expected \(rows, cols\)"):
        ak.patch_grid(np.ones(17), (4.5, 4))
    with pytest.raises(ValueError, match="grid: expected two positive ints"):
        ak.patch_grid(np.ones(17), (0, 4))
    with pytest.raises(ValueError, match=r"values: expected shape \(..., position\)"):
        ak.patch_grid(np.float64(1.0), (1, 1))
    with pytest.raises(ValueError, match="dim: expected None for a NumPy array"):
        ak.patch_grid(np.ones(17), (4, 4), dim="position")
    da = xr.DataArray(np.ones((2, 17)), dims=("sample", "position"))
    with pytest.raises(ValueError, match="dim: expected one of the dims"):
        ak.patch_grid(da, (4, 4), dim="key")
    with pytest.raises(ValueError, match="values: expected a DataArray or an array"):
        ak.patch_grid(da.to_dataset(name="x"), (4, 4))


# ----------------------------------------------------------------------------- patch_maps
@pytest.mark.parametrize("grid", GRIDS)
def test_patch_maps_names_and_layout(rng, grid):
    rows, cols = grid
    ds = image_dataset(rng, grid)
    maps = ak.patch_maps(ds)
    assert maps.dims == ("sample", "map", "row", "col")
    assert maps.shape == (2, 12, rows, cols)
    assert maps["map"].values.tolist() == [
        "cls_head_0", "cls_head_1", "cls_head_2", "cls_head_3", "rollout", "rollout_from_1",
        "grad_rollout", "attribution:gradcam", "attribution:input_x_gradient", "impact:mask",
        "impact:key_mask", "saliency"]
    descriptions = dict(zip(maps["map"].values.tolist(), maps["description"].values.tolist()))
    assert descriptions["cls_head_3"] == "[CLS] attention, layer 2, head 3"
    assert descriptions["rollout_from_1"] == "rollout from layer 1"
    assert descriptions["impact:mask"] == "impact: mask"
    assert maps.attrs["grid"].tolist() == [rows, cols]
    assert maps.dtype == np.float64


@pytest.mark.parametrize("grid", GRIDS)
def test_patch_maps_match_their_definitions(rng, grid):
    rows, cols = grid
    ds = image_dataset(rng, grid, layers=3, heads=4)
    maps = ak.patch_maps(ds)
    attn = ds["attention"].values.astype(np.float64)
    grad = ds["gradient"].values
    for s in range(2):
        for h in range(4):  # DINO: the last layer's [CLS] row of head h
            expected = np.array([[attn[s, -1, h, 0, 1 + r * cols + c] for c in range(cols)]
                                 for r in range(rows)])
            np.testing.assert_allclose(maps.sel(map=f"cls_head_{h}").values[s], expected,
                                       rtol=1e-6)
        for name, start in (("rollout", 0), ("rollout_from_1", 1)):
            expected = cell_values(reference_rollout(attn[s], start)[0], rows, cols)
            np.testing.assert_allclose(maps.sel(map=name).values[s], expected, rtol=1e-6)
        expected = cell_values(reference_grad_rollout(attn[s], grad[s])[0], rows, cols)
        np.testing.assert_allclose(maps.sel(map="grad_rollout").values[s], expected, rtol=1e-6)
        for i, method in enumerate(("gradcam", "input_x_gradient")):
            expected = cell_values(ds["attribution"].values[s, :, i], rows, cols)
            np.testing.assert_array_equal(maps.sel(map=f"attribution:{method}").values[s],
                                          expected)
        for i, method in enumerate(("mask", "key_mask")):
            expected = cell_values(ds["impact"].values[s, :, i], rows, cols)
            np.testing.assert_array_equal(maps.sel(map=f"impact:{method}").values[s], expected)
    # rollout from layer 1 is not rollout from layer 0: the start layer matters
    assert not np.allclose(maps.sel(map="rollout").values, maps.sel(map="rollout_from_1").values)


@pytest.mark.parametrize("grid, extra", [((4, 4), (0, 0)), ((3, 5), (0, 0)), ((3, 5), (5, 2)),
                                         ((4, 4), (9, 0))])
def test_saliency_is_pooled_per_patch(rng, grid, extra):
    """Mean over each patch's H//rows x W//cols pixels; rows/columns past the grid are dropped."""
    rows, cols = grid
    ds = image_dataset(rng, grid, extra_pixels=extra)
    sal = ds["saliency"].values.astype(np.float64)
    height, width = sal.shape[1:]
    ph, pw = height // rows, width // cols
    assert (ph, pw) == (PATCH + extra[0] // rows, PATCH + extra[1] // cols)
    got = ak.patch_maps(ds, heads=False).sel(map="saliency").values
    for s in range(2):
        for r in range(rows):
            for c in range(cols):
                total = 0.0
                for y in range(r * ph, (r + 1) * ph):
                    for x in range(c * pw, (c + 1) * pw):
                        total += sal[s, y, x]
                assert got[s, r, c] == pytest.approx(total / (ph * pw), rel=1e-9)


def test_patch_maps_sample_selection_and_options(rng):
    ds = image_dataset(rng, (3, 5), samples=3, layers=4, heads=2)
    everything = ak.patch_maps(ds)
    one = ak.patch_maps(ds, sample=1)
    assert one.dims == ("map", "row", "col")
    np.testing.assert_array_equal(one.values, everything.values[1])
    np.testing.assert_array_equal(ak.patch_maps(ds, sample=-1).values, everything.values[2])
    two = ak.patch_maps(ds, sample=[2, 0])
    np.testing.assert_array_equal(two.values, everything.values[[2, 0]])
    plain = ak.patch_maps(ds, sample=0, heads=False, start_layers=(0, 2, -1))
    assert plain["map"].values.tolist()[:3] == ["rollout", "rollout_from_2", "rollout_from_3"]
    assert not any(m.startswith("cls_head") for m in plain["map"].values.tolist())
    attn = ds["attention"].values[0].astype(np.float64)
    np.testing.assert_allclose(plain.sel(map="rollout_from_3").values,
                               cell_values(reference_rollout(attn, 3)[0], 3, 5), rtol=1e-6)
    mean_fusion = ak.patch_maps(ds, sample=0, residual=0.0, heads=False).sel(map="rollout_from_1")
    np.testing.assert_allclose(mean_fusion.values,
                               cell_values(reference_rollout(attn, 1, 0.0)[0], 3, 5), rtol=1e-6)
    # only what is stored
    bare = image_dataset(rng, (4, 4), layers=1, gradient=False, attribution=False, impact=False,
                         saliency=False, image=False)
    assert ak.patch_maps(bare, heads=False)["map"].values.tolist() == ["rollout"]  # one layer


def test_patch_maps_attribution_without_method_dim_and_saved_datasets(rng, tmp_path):
    ds = image_dataset(rng, (3, 5), attribution=False, impact=False)
    ds["attribution"] = xr.DataArray(rng.standard_normal((2, 16)), dims=("sample", "position"),
                                     attrs={"method": "grad_rollout"})
    path = tmp_path / "vision.nc"
    ak.save_dataset(ds, path)  # the grid attr comes back as an array
    reopened = ak.open_dataset(path)
    maps = ak.patch_maps(reopened, sample=1)
    assert "attribution:grad_rollout" in maps["map"].values.tolist()
    np.testing.assert_allclose(maps.sel(map="attribution:grad_rollout").values,
                               cell_values(ds["attribution"].values[1], 3, 5))
    np.testing.assert_allclose(maps.values, ak.patch_maps(ds, sample=1).values, rtol=1e-6)


def test_patch_maps_errors(rng):
    text = ak.from_arrays(softmax(rng.standard_normal((1, 2, 2, 5, 5))),
                          tokens=[["[CLS]", "a", "b", "c", "[SEP]"]])
    with pytest.raises(ValueError, match=r"ds.attrs\['grid'\]: expected \(rows, cols\): the patch "
                                         r"grid of an image model, got no grid attr .*Fix: run an "
                                         r"image model .*set ds.attrs\['grid'\] = \(rows, cols\)"):
        ak.patch_maps(text)
    text.attrs["grid"] = (3, 3)
    with pytest.raises(ValueError, match=r"1 \+ rows\*cols <= 5 positions"):
        ak.patch_maps(text)
    ds = image_dataset(rng, (4, 4))
    with pytest.raises(ValueError, match=r"sample: expected an int in \[0, 2\)"):
        ak.patch_maps(ds, sample=2)
    with pytest.raises(ValueError, match=r"start_layers: expected an int layer index in \[0, 3\)"):
        ak.patch_maps(ds, start_layers=(0, 3))
    with pytest.raises(ValueError, match="start_layers: expected distinct layers"):
        ak.patch_maps(ds, start_layers=(2, -1))
    with pytest.raises(ValueError, match="heads: expected True or False"):
        ak.patch_maps(ds, heads="yes")
    with pytest.raises(ValueError, match="ds: expected an attention dataset"):
        ak.patch_maps(ds["attention"])
