"""Image figures: patch_overlay over images, image_panel, sink_figure, and `attnkit plot` on them.

Figures are checked by their contents (titles, the arrays each axes shows, colour limits,
outlines) and by the rendered pixels: a drawn image is not blank, and shows the image where
the image should be.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import attnkit as ak  # noqa: E402
from attnkit import plot  # noqa: E402
from attnkit_cli.main import cli  # noqa: E402
from cli_checks import assert_user_error  # noqa: E402
from test_patches import cell_values, image_dataset, patch_tokens, softmax  # noqa: E402


# ----------------------------------------------------------------------------- helpers
def rendered(fig):
    """The figure's pixels (H, W, 3) floats in [0, 1], as Agg draws them."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float64) / 255


def axes_pixels(fig, ax, pixels=None):
    """The rendered pixels inside ``ax``'s data area (a few pixels in from its frame)."""
    pixels = rendered(fig) if pixels is None else pixels
    box = ax.get_window_extent()
    height = pixels.shape[0]
    x0, x1 = int(np.ceil(box.x0)) + 2, int(np.floor(box.x1)) - 2
    y0, y1 = height - int(np.floor(box.y1)) + 2, height - int(np.ceil(box.y0)) - 2
    return pixels[y0:y1, x0:x1]


def not_blank(region, min_std=0.02):
    return region.size > 0 and float(region.std()) > min_std


def map_axes(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_title()]


def halves_image(rows, cols):
    """Left half pure red, right half pure blue: easy to recognise in the rendering."""
    img = np.zeros((rows * 14, cols * 14, 3), np.uint8)
    img[:, : cols * 7, 0] = 255
    img[:, cols * 7:, 2] = 255
    return img


def full_dataset(rng, grid=(4, 4), **kw):
    return image_dataset(rng, grid, **kw)


# ----------------------------------------------------------------------------- patch_overlay
def test_overlay_of_a_signed_map_is_diverging_and_centred(rng):
    signed = rng.standard_normal((3, 5))
    fig = plot.patch_overlay(signed, (3, 5), label="input x gradient")
    image = fig.axes[0].images[0]
    np.testing.assert_array_equal(image.get_array(), signed)
    top = np.abs(signed).max()
    assert image.get_clim() == (pytest.approx(-top), pytest.approx(top))
    assert image.get_cmap().name.startswith("RdBu_r")
    assert fig.axes[1].get_ylabel() == "input x gradient"
    positive = plot.patch_overlay(np.abs(signed), (3, 5)).axes[0].images[0]
    assert positive.get_cmap().name.startswith("magma")
    assert positive.get_clim() == (0.0, pytest.approx(np.abs(signed).max()))
    forced = plot.patch_overlay(np.abs(signed), (3, 5), signed=True, cmap="PuOr").axes[0].images[0]
    assert forced.get_clim()[0] == pytest.approx(-np.abs(signed).max())
    assert forced.get_cmap().name.startswith("PuOr")
    fixed = plot.patch_overlay(signed, (3, 5), vmin=-1, vmax=2).axes[0].images[0]
    assert fixed.get_clim() == (-1.0, 2.0)


def test_overlay_is_nearest_patch_over_the_cropped_image(rng):
    rows, cols = 3, 5
    row = rng.random(1 + rows * cols)
    img = rng.integers(0, 256, (rows * 14 + 2, cols * 14 + 3, 3), dtype=np.uint8)  # 14px patches
    fig = plot.patch_overlay(row, (rows, cols), image=img)
    ax = fig.axes[0]
    assert len(ax.images) == 2
    np.testing.assert_array_equal(ax.images[0].get_array(), img[: rows * 14, : cols * 14])
    heat = ax.images[1]
    np.testing.assert_array_equal(heat.get_array(), row[1:].reshape(rows, cols))
    assert heat.get_interpolation() == "nearest"
    assert heat.get_extent() == [0, cols, rows, 0] == ax.images[0].get_extent()
    smooth = plot.patch_overlay(row, (rows, cols), image=img, interpolation="bilinear")
    assert smooth.axes[0].images[1].get_interpolation() == "bilinear"
    single = plot.patch_overlay(row, (rows, cols), image=img[..., :1])  # (H, W, 1) is grey
    assert single.axes[0].images[0].get_array().shape == (rows * 14, cols * 14)


def test_overlay_draws_the_image_under_the_heat(rng):
    rows, cols = 4, 4
    img = halves_image(rows, cols)
    fig = plot.patch_overlay(np.zeros(rows * cols), (rows, cols), image=img, colorbar=False,
                             alpha=0.0, ticks=False)
    region = axes_pixels(fig, fig.axes[0])
    assert not_blank(region)
    left, right = region[:, : region.shape[1] // 3], region[:, -region.shape[1] // 3:]
    assert left[..., 0].mean() > 0.9 and left[..., 2].mean() < 0.1  # red
    assert right[..., 2].mean() > 0.9 and right[..., 0].mean() < 0.1  # blue
    assert fig.axes[0].get_xticks().size == 0


def test_overlay_marks_and_errors(rng):
    fig = plot.patch_overlay(rng.random((3, 5)), (3, 5), mark=[(2, 4), (0, 1)])
    rects = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rects] == [
        (4, 2, 1, 1), (1, 0, 1, 1)]
    with pytest.raises(ValueError, match=r"cls_row: expected shape \(3, 5\) for grid \(3, 5\)"):
        plot.patch_overlay(np.ones((5, 3)), (3, 5))
    with pytest.raises(ValueError, match="mark: expected patches inside the 3x5 grid"):
        plot.patch_overlay(np.ones((3, 5)), (3, 5), mark=(3, 0))
    with pytest.raises(ValueError, match="interpolation: expected 'nearest'"):
        plot.patch_overlay(np.ones((3, 5)), (3, 5), image=np.ones((6, 10)), interpolation="cubic")
    with pytest.raises(ValueError, match="image: expected shape"):
        plot.patch_overlay(np.ones((3, 5)), (3, 5), image=np.ones((6, 10, 2)))


# ----------------------------------------------------------------------------- image_panel
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_image_panel_titles_and_maps(rng, grid):
    rows, cols = grid
    ds = full_dataset(rng, grid, heads=4)
    fig = plot.image_panel(ds, sample=1)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["image", "saliency (model output)", "rollout from layer 0",
                      "rollout from layer 1", "grad rollout (Chefer)", "attribution: gradcam",
                      "attribution: input_x_gradient", "impact: mask", "impact: key_mask",
                      "[CLS] attn. L2 h0", "[CLS] attn. L2 h1", "[CLS] attn. L2 h2",
                      "[CLS] attn. L2 h3"]
    assert "sample 1" in fig.get_suptitle() and f"{rows}×{cols}" in fig.get_suptitle()
    maps = ak.patch_maps(ds, sample=1)
    by_title = dict(zip(titles, fig.axes))
    image = ds["image"].values[1]
    np.testing.assert_array_equal(by_title["image"].images[0].get_array(), image)
    sal = by_title["saliency (model output)"]
    np.testing.assert_allclose(sal.images[1].get_array(), ds["saliency"].values[1])
    for title, name in (("rollout from layer 0", "rollout"),
                        ("impact: key_mask", "impact:key_mask"),
                        ("attribution: gradcam", "attribution:gradcam"),
                        ("[CLS] attn. L2 h3", "cls_head_3")):
        ax = by_title[title]
        np.testing.assert_array_equal(ax.images[0].get_array(), image)  # the image underneath
        np.testing.assert_allclose(ax.images[1].get_array(), maps.sel(map=name).values)
    # the [CLS] head map by its definition: last layer, head 3, row 0, patch (r, c) at
    # position 1 + r*cols + c
    np.testing.assert_allclose(by_title["[CLS] attn. L2 h3"].images[1].get_array(),
                               cell_values(ds["attention"].values[1, -1, 3, 0], rows, cols),
                               rtol=1e-6)
    assert by_title["attribution: gradcam"].images[1].get_cmap().name.startswith("RdBu_r")
    assert by_title["impact: mask"].images[1].get_cmap().name.startswith("magma")
    # heads start a row of their own, under every other panel
    first_head = by_title["[CLS] attn. L2 h0"].get_subplotspec().rowspan.start
    assert first_head > max(ax.get_subplotspec().rowspan.start for ax in fig.axes[:9])
    pixels = rendered(fig)
    for ax in fig.axes:
        assert not_blank(axes_pixels(fig, ax, pixels)), ax.get_title()


def test_image_panel_shows_the_image(rng):
    rows, cols = 3, 5
    ds = full_dataset(rng, (rows, cols), samples=1)
    ds["image"] = (("sample", "y", "x", "channel"), halves_image(rows, cols)[None])
    fig = plot.image_panel(ds, alpha=0.3)  # the image shows through every map
    region = axes_pixels(fig, fig.axes[0])
    w = region.shape[1]
    assert region[:, : w // 3, 0].mean() > 0.9 and region[:, -w // 3:, 2].mean() > 0.9
    overlay = axes_pixels(fig, fig.axes[2])  # rollout over the image: both halves show through
    assert overlay[:, : w // 3, 0].mean() > overlay[:, : w // 3, 2].mean()
    assert overlay[:, -w // 3:, 2].mean() > overlay[:, -w // 3:, 0].mean()


def test_image_panel_options(rng):
    ds = full_dataset(rng, (4, 4), heads=3)
    fig = plot.image_panel(ds, maps=["rollout_from_1", "saliency"], title="mine")
    assert [ax.get_title() for ax in fig.axes] == ["image", "rollout from layer 1",
                                                  "saliency per patch"]
    assert fig.get_suptitle() == "mine"
    with_bars = plot.image_panel(ds, heads=False, colorbars=True)
    titled = [ax for ax in with_bars.axes if ax.get_title()]
    assert len(with_bars.axes) == 2 * len(titled) - 1  # a colour bar beside every map
    narrow = plot.image_panel(ds, ncols=2, heads=False)
    assert max(ax.get_subplotspec().colspan.stop for ax in narrow.axes) == 2
    bare = image_dataset(rng, (3, 5), image=False, saliency=False, gradient=False,
                         attribution=False, impact=False, heads=2)
    fig = plot.image_panel(bare)
    assert [ax.get_title() for ax in fig.axes] == [
        "rollout from layer 0", "rollout from layer 1", "[CLS] attn. L2 h0", "[CLS] attn. L2 h1"]
    assert all(len(ax.images) == 1 for ax in fig.axes)  # no image: the maps alone
    with pytest.raises(ValueError, match="maps: expected names of this dataset's maps"):
        plot.image_panel(ds, maps=["nope"])
    with pytest.raises(ValueError, match=r"sample: expected an int in \[0, 2\)"):
        plot.image_panel(ds, sample=5)
    text = ak.from_arrays(softmax(rng.standard_normal((1, 1, 1, 4, 4))))
    with pytest.raises(ValueError, match=r"ds.attrs\['grid'\]: expected .* no grid attr"):
        plot.image_panel(text)


# ----------------------------------------------------------------------------- sink_figure
def sink_dataset(rng, grid=(3, 5), sink=(2, 3), layers=3, heads=2):
    """Layer 0 parks most of its attention on patch ``sink``; other layers do not."""
    rows, cols = grid
    n = 1 + rows * cols
    logits = rng.standard_normal((1, layers, heads, n, n))
    logits[:, 0, :, :, 1 + sink[0] * cols + sink[1]] += 5.0
    ds = ak.from_arrays(softmax(logits), tokens=[patch_tokens(rows, cols)], model="toy-vit",
                        attrs={"grid": grid, "readout": "patches"})
    ds["image"] = (("sample", "y", "x", "channel"),
                   rng.integers(0, 256, (1, rows * 14, cols * 14, 3), dtype=np.uint8))
    return ds


def test_sink_figure_finds_and_draws_the_sink(rng):
    rows, cols = 3, 5
    ds = sink_dataset(rng, (rows, cols), sink=(2, 3))
    fig = plot.sink_figure(ds)
    titles = [ax.get_title() for ax in fig.axes]
    attn = ds["attention"].values[0].astype(np.float64)
    share = attn.mean(axis=(1, 2))  # (layer, key): mean over heads and queries
    sink_share = share[0, 1 + 2 * cols + 3]
    assert titles[:4] == ["share of attention received",
                          f"layer 0: p(2,3) takes {sink_share:.0%}",
                          "rollout from layer 0", "rollout from layer 1"]
    assert len(fig.axes) == 5 and fig.axes[4].get_ylabel() == "share of layer 0's attention"
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["top patch"].get_ydata(), share[:, 1:].max(axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(lines["[CLS]"].get_ydata(), share[:, 0], rtol=1e-6)
    assert [t.get_text() for t in fig.axes[0].texts][0] == "p(2,3)"
    # where the sink is: the share map over the image, the sink patch outlined on every map
    np.testing.assert_allclose(fig.axes[1].images[1].get_array(),
                               cell_values(share[0], rows, cols), rtol=1e-6)
    maps = ak.patch_maps(ds, sample=0, heads=False)
    for ax, name in zip(fig.axes[1:4], (None, "rollout", "rollout_from_1")):
        rects = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert [(r.get_x(), r.get_y()) for r in rects] == [(3, 2)]
        if name:
            np.testing.assert_allclose(ax.images[1].get_array(), maps.sel(map=name).values)
    # the artefact: rollout from layer 0 leans on the sink, rollout from layer 1 does not
    assert np.argmax(maps.sel(map="rollout").values) == 2 * cols + 3
    pixels = rendered(fig)
    for ax in fig.axes[:4]:
        assert not_blank(axes_pixels(fig, ax, pixels)), ax.get_title()


def test_sink_figure_options_and_errors(rng):
    ds = sink_dataset(rng, (4, 4), sink=(0, 0), layers=3)
    fig = plot.sink_figure(ds, layer=2, title="sinks")
    assert fig.axes[1].get_title().startswith("layer 2: ") and fig.get_suptitle() == "sinks"
    one_layer = sink_dataset(rng, (4, 4), layers=1)
    fig = plot.sink_figure(one_layer)
    assert [ax.get_title() for ax in fig.axes][2:] == ["rollout from layer 0", ""]  # + colour bar
    with pytest.raises(ValueError, match=r"layer: expected an int in \[0, 3\)"):
        plot.sink_figure(ds, layer=3)
    text = ak.from_arrays(softmax(rng.standard_normal((1, 1, 1, 4, 4))))
    with pytest.raises(ValueError, match=r"ds.attrs\['grid'\]"):
        plot.sink_figure(text)


# ----------------------------------------------------------------------------- CLI
def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def saved(tmp_path, rng):
    path = tmp_path / "vision.nc"
    ak.save_dataset(full_dataset(rng, (3, 5)), path)
    return path


@pytest.fixture
def text_saved(tmp_path, rng):
    path = tmp_path / "text.nc"
    ak.save_dataset(ak.from_arrays(softmax(rng.standard_normal((1, 2, 2, 4, 4))),
                                   tokens=[["[CLS]", "a", "b", "[SEP]"]]), path)
    return path


def png_is_drawn(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    pixels = matplotlib.image.imread(str(path))[..., :3]
    return float(pixels.std()) > 0.05


@pytest.mark.parametrize("args", [["--kind", "patch"], ["--kind", "patch", "--map", "cls_head_1"],
                                  ["--kind", "patch", "--map", "attribution:gradcam"],
                                  ["--kind", "patch", "--source", "flow"],
                                  ["--kind", "panel", "--sample", "1"], ["--kind", "sinks"]])
def test_cli_image_kinds_write_figures(tmp_path, saved, args):
    out = tmp_path / "figure.png"
    result = run("plot", saved, *args, "--dpi", 40, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert png_is_drawn(out)


@pytest.mark.parametrize("name", ["rollout", "rollout_from_1", "impact:key_mask", "saliency"])
def test_cli_patch_draws_the_chosen_map_over_the_stored_image(tmp_path, saved, monkeypatch, name):
    seen = {}
    original = plot.patch_overlay

    def spy(values, grid, image=None, **kwargs):
        seen.update(values=np.asarray(values), grid=grid, image=image, **kwargs)
        return original(values, grid, image=image, **kwargs)

    monkeypatch.setattr(plot, "patch_overlay", spy)
    args = [] if name == "rollout" else ["--map", name]  # rollout is the default
    result = run("plot", saved, "--kind", "patch", *args, "--sample", 1, "-o", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    ds = ak.open_dataset(saved)
    np.testing.assert_allclose(seen["values"], ak.patch_maps(ds, sample=1).sel(map=name).values)
    np.testing.assert_array_equal(seen["image"], ds["image"].values[1])
    assert tuple(seen["grid"]) == (3, 5)


@pytest.mark.parametrize("kind", ["patch", "panel", "sinks"])
def test_cli_image_kinds_need_a_grid(tmp_path, text_saved, kind):
    result = run("plot", text_saved, "--kind", kind, "-o", tmp_path / "x.png")
    assert_user_error(result, "ds.attrs['grid']", "no grid attr", "Fix: run an image model")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--kind", "patch", "--map", "nope"],
     ["--map: expected one of this dataset's maps (cls_head_0,", "impact:key_mask", "'nope'"]),
    (["--kind", "heatmap", "--map", "rollout"], ["--map: expected only with --kind patch"]),
    (["--kind", "patch", "--map", "rollout", "--source", "raw"],
     ["--map rollout and --source raw"]),
    (["--kind", "panel", "--sample", "7"], ["sample: expected an int in [0, 2)"]),
    (["--kind", "patch", "--sample", "7"], ["sample: expected an int in [0, 2)"]),
])
def test_cli_image_kind_user_errors(tmp_path, saved, args, fragments):
    assert_user_error(run("plot", saved, *args, "-o", tmp_path / "x.png"), *fragments)


def test_cli_help_lists_the_image_kinds():
    text = run("plot", "--help").output
    assert "panel" in text and "sinks" in text and "--map NAME" in text
