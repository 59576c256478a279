"""attnkit.plot: each figure's contents (labels, colour limits, images, data) and saving."""

import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import attnkit as ak  # noqa: E402
from attnkit import plot  # noqa: E402
from attnkit_cli.main import cli  # noqa: E402

TOKENS = [["[CLS]", "the", "cat", ",", "sat", "[SEP]"], ["[CLS]", "hi", "!", "[SEP]"],
          ["[CLS]", "a", "b", "c", ".", "[SEP]"]]


def softmax_rows(rng, shape):
    a = rng.random(shape) ** 3 + 1e-3
    return a / a.sum(-1, keepdims=True)


@pytest.fixture
def ds(rng):
    samples = [softmax_rows(rng, (2, 3, len(t), len(t))) for t in TOKENS]
    return ak.from_arrays(samples, tokens=TOKENS, model="random", source="test")


def ticks(ax, axis):
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in labels]


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


# ----------------------------------------------------------------------------- attention maps
def test_heatmap_labels_limits_and_data(rng):
    tokens = ["[CLS]", "the", "cat", "sat", "[SEP]"]
    a = softmax_rows(rng, (5, 5))
    fig = plot.heatmap(a, tokens=tokens, title="layer 1, head 2")
    (ax,) = image_axes(fig)
    assert ticks(ax, "x") == tokens and ticks(ax, "y") == tokens
    assert ax.get_xticklabels()[0].get_rotation() == 60
    assert ax.get_title() == "layer 1, head 2"
    assert ax.get_xlabel() == "key (attended to)" and ax.get_ylabel() == "query (attending)"
    image = ax.images[0]
    assert image.get_clim() == (0.0, pytest.approx(a.max()))
    np.testing.assert_allclose(image.get_array(), a)
    assert image.get_cmap().name.startswith("viridis")
    assert len(fig.axes) == 2  # the map and its colour bar
    assert fig.axes[1].get_ylabel() == "attention weight"


def test_heatmap_rectangular_with_query_tokens_and_padding(rng):
    a = softmax_rows(rng, (3, 4))
    a[2] = np.nan
    fig = plot.heatmap(a, tokens=list("wxyz"), query_tokens=["q0", "q1", "pad"], vmax=1.0,
                       colorbar=False)
    (ax,) = fig.axes
    assert ticks(ax, "x") == list("wxyz") and ticks(ax, "y") == ["q0", "q1", "pad"]
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert np.ma.getmaskarray(ax.images[0].get_array()).sum() == 4  # NaN row drawn as 'bad'


def test_heatmap_without_tokens_numbers_positions(rng):
    fig = plot.heatmap(softmax_rows(rng, (7, 7)))
    ax = image_axes(fig)[0]
    assert all(t.is_integer() for t in ax.get_xticks())


@pytest.mark.parametrize("bad, match", [
    (np.ones((2, 2, 2)), r"attn|matrix: expected shape \(query, key\)"),
    (np.array([["a", "b"]]), "expected float16"),
])
def test_heatmap_rejects_bad_arrays(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        plot.heatmap(bad)


def test_heatmap_token_count_must_match():
    with pytest.raises(ValueError, match=r"tokens: expected 3 tokens \(one per key\), got 2"):
        plot.heatmap(np.eye(3), tokens=["a", "b"])
    with pytest.raises(ValueError, match="tokens: expected a list"):
        plot.heatmap(np.eye(3), tokens="abc")


def test_heatmap_draws_into_given_axes(rng):
    fig0 = plot.heatmap(np.eye(2), colorbar=False)
    ax = fig0.axes[0]
    fig = plot.heatmap(softmax_rows(rng, (2, 2)), ax=ax, colorbar=False)
    assert fig is fig0 and len(ax.images) == 2


def test_alignment_i_love_you():
    source, target = ["I", "love", "you", "."], ["je", "t'", "aime", "."]
    a = np.array([[0.85, 0.05, 0.05, 0.05],
                  [0.05, 0.15, 0.70, 0.10],
                  [0.05, 0.80, 0.10, 0.05],
                  [0.05, 0.05, 0.10, 0.80]])
    fig = plot.alignment(a, source, target, title="EN -> FR")
    (ax,) = image_axes(fig)
    assert ticks(ax, "x") == source and ticks(ax, "y") == target
    assert ax.xaxis.get_ticks_position() == "top"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("source", "target", "EN -> FR")
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16 and texts[:2] == ["0.85", "0.05"] and texts[6] == "0.70"
    assert ax.images[0].get_cmap().name.startswith("magma")
    assert ax.images[0].get_clim() == (0.0, 0.85)
    with pytest.raises(ValueError, match="target_tokens: expected 4 tokens"):
        plot.alignment(a, source, target[:3])


def test_alignment_no_annotation_for_long_inputs(rng):
    a = softmax_rows(rng, (13, 15))
    fig = plot.alignment(a, [f"s{i}" for i in range(15)], [f"t{i}" for i in range(13)])
    assert len(image_axes(fig)[0].texts) == 0


def test_rollout_and_flow_maps(rng, ds):
    one = ds.isel(sample=[0])
    n = len(TOKENS[0])
    r = ak.rollout(one).values[0, :n, :n]
    fig = plot.rollout_map(r, TOKENS[0])
    ax = image_axes(fig)[0]
    assert ax.get_title() == "Attention rollout" and ax.get_xlabel() == "input token"
    assert ticks(ax, "x") == TOKENS[0]
    assert ax.images[0].get_clim() == (0.0, pytest.approx(r.max()))
    assert fig.axes[1].get_ylabel() == "rollout weight"
    f = ak.attention_flow(one).values[0, :n, :n]
    fig = plot.flow_map(f, TOKENS[0], title="flow!")
    ax = image_axes(fig)[0]
    assert ax.get_title() == "flow!" and fig.axes[1].get_ylabel() == "normalised flow"
    np.testing.assert_allclose(ax.images[0].get_array(), f)


def test_matrix_map_colour_limits_are_settable():
    fig = plot.matrix_map(np.full((3, 3), 0.2), list("abc"), vmin=0.1, vmax=0.5, cmap="cividis")
    image = image_axes(fig)[0].images[0]
    assert image.get_clim() == (0.1, 0.5) and image.get_cmap().name.startswith("cividis")


# ----------------------------------------------------------------------------- head grid
def test_head_grid_from_dataset_crops_to_length_and_shares_scale(ds):
    fig = plot.head_grid(ds, sample=1)
    axes = image_axes(fig)
    assert len(axes) == 2 * 3
    n = len(TOKENS[1])
    block = ds.attention.values[1, :, :, :n, :n]
    for ax in axes:
        assert ax.images[0].get_clim() == (0.0, pytest.approx(block.max()))
    for k, ax in enumerate(axes):
        layer, head = divmod(k, 3)
        assert ax.images[0].get_array().shape == (n, n)
        np.testing.assert_allclose(ax.images[0].get_array(), block[layer, head])
    assert [ax.get_title() for ax in axes[:3]] == ["head 0", "head 1", "head 2"]
    assert [axes[3 * i].get_ylabel() for i in range(2)] == ["layer 0", "layer 1"]
    assert "[CLS] hi ! [SEP]" in fig.get_suptitle()
    assert len(fig.axes) == 7  # one shared colour bar


def test_head_grid_from_arrays_and_errors(rng):
    a = softmax_rows(rng, (3, 2, 2, 5, 5))
    fig = plot.head_grid(a, sample=2, vmax=1.0, title="grid")
    axes = image_axes(fig)
    assert len(axes) == 4 and axes[0].images[0].get_clim() == (0.0, 1.0)
    np.testing.assert_allclose(axes[3].images[0].get_array(), a[2, 1, 1])
    assert fig.get_suptitle() == "grid"
    assert len(image_axes(plot.head_grid(a[0]))) == 4
    with pytest.raises(ValueError, match=r"sample: expected an int in \[0, 3\)"):
        plot.head_grid(a, sample=3)
    with pytest.raises(ValueError, match=r"expected shape \(layer, head, n, n\)"):
        plot.head_grid(a[0, 0])


# ----------------------------------------------------------------------------- [CLS] views
def test_cls_bar_heights_and_trailing_padding():
    row = np.array([0.5, 0.3, 0.2, np.nan, np.nan])
    fig = plot.cls_bar(row, ["[CLS]", "good", "[SEP]", "", ""], title="feeds")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.5, 0.3, 0.2])
    assert ticks(ax, "x") == ["[CLS]", "good", "[SEP]"]
    assert ax.get_title() == "feeds"
    assert ticks(plot.cls_bar([0.1, 0.9]).axes[0], "x") == ["0", "1"]


def test_patch_overlay_grid_and_image(rng):
    h, w = 3, 4
    row = rng.random(h * w + 1)
    fig = plot.patch_overlay(row, grid=(h, w))
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), row[1:].reshape(h, w))
    assert ax.images[0].get_extent() == [0, w, h, 0]
    assert fig.axes[1].get_ylabel() == "rollout weight from [CLS]"
    image = rng.random((30, 40, 3))
    fig = plot.patch_overlay(row[1:], (h, w), image=image, alpha=0.4)
    ax = fig.axes[0]
    assert len(ax.images) == 2
    np.testing.assert_allclose(ax.images[0].get_array(), image)
    assert ax.images[1].get_alpha() == 0.4
    with pytest.raises(ValueError, match=r"cls_row: expected shape \(12,\) patches or \(13,\)"):
        plot.patch_overlay(row[:5], (h, w))
    with pytest.raises(ValueError, match="grid: expected"):
        plot.patch_overlay(row, (h,))
    with pytest.raises(ValueError, match="image: expected shape"):
        plot.patch_overlay(row, (h, w), image=np.ones((4, 4, 2)))


# ----------------------------------------------------------------------------- statistics
def test_head_stats_plot_shows_sample_means(ds):
    stats = ak.head_stats(ds)
    fig = plot.head_stats_plot(stats)
    axes = image_axes(fig)
    assert [ax.get_title() for ax in axes] == ["entropy (nats)",
                                               "mean attention distance (positions)"]
    for ax, name in zip(axes, ("entropy", "distance")):
        np.testing.assert_allclose(ax.images[0].get_array(), stats[name].mean("sample").values)
        assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
        assert ticks(ax, "x") == ["0", "1", "2"] and len(ax.texts) == 6
    fig = plot.head_stats_plot(stats, variables=("max_weight",), annotate=False)
    assert len(image_axes(fig)) == 1 and len(image_axes(fig)[0].texts) == 0
    with pytest.raises(ValueError, match="stats: expected a head_stats Dataset with 'nope'"):
        plot.head_stats_plot(stats, variables=("nope",))
    with pytest.raises(TypeError, match="stats: expected the xarray.Dataset"):
        plot.head_stats_plot(np.ones(3))


def test_special_token_plot_lines_are_head_means(ds):
    stats = ak.head_stats(ds)
    fig = plot.special_token_plot(stats)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["[CLS]", "[SEP]", "punctuation"]
    names = ("[CLS]", "[SEP]", "punctuation")
    lines = [line for line in ax.get_lines() if line.get_label() in names]
    for line, name in zip(lines, ("cls_mass", "sep_mass", "punct_mass")):
        expected = stats[name].mean("sample").mean("head").values
        np.testing.assert_allclose(line.get_ydata(), expected)
    assert ax.get_xlabel() == "layer" and list(ax.get_xticks()) == [0, 1]
    no_tokens = ak.head_stats(ds.attention.values, lengths=ds.length.values)
    with pytest.raises(ValueError, match="only NaN"):
        plot.special_token_plot(no_tokens)


# ----------------------------------------------------------------------------- correlation
def correlation_rows(impacts=("delete",)):
    return [{"layer": layer, "score": score, "impact": impact, "mean": 0.1 * layer + 0.01 * k,
             "ci_low": 0.1 * layer + 0.01 * k - 0.03, "ci_high": 0.1 * layer + 0.01 * k + 0.05}
            for impact in impacts for layer in range(3)
            for k, score in enumerate(("flow", "raw", "rollout", "grad"))]


def test_correlation_plot_error_bars_per_score():
    fig = plot.correlation_plot(correlation_rows(), method="spearman")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "Spearman ρ with impact (mean, CI)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["raw", "rollout", "flow", "grad"]  # the canonical order
    assert len(ax.containers) == 4
    raw = ax.containers[0]
    x, y = raw.lines[0].get_data()
    np.testing.assert_allclose(y, [0.01, 0.11, 0.21])
    np.testing.assert_allclose(np.diff(x), 1.0)
    assert x[0] < 0  # offset left of the layer tick
    segments = raw.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segments],
                               [[-0.02, 0.06], [0.08, 0.16], [0.18, 0.26]], atol=1e-12)
    assert list(ax.get_xticks()) == [0, 1, 2]


def test_correlation_plot_facets_by_impact_and_reads_csv(tmp_path):
    import pandas as pd

    fig = plot.correlation_plot(correlation_rows(("delete", "mask")))
    assert [ax.get_title() for ax in fig.axes] == ["impact: delete", "impact: mask"]
    path = tmp_path / "corr.csv"
    pd.DataFrame(correlation_rows()).assign(significant=0.5, n=10).to_csv(path, index=False)
    table = plot.correlation_table(path)
    assert table.columns.tolist() == ["layer", "score", "impact", "statistic", "ci_low", "ci_high"]
    assert len(plot.correlation_plot(str(path)).axes[0].containers) == 4
    with pytest.raises(ValueError, match="table: expected columns layer"):
        plot.correlation_table([{"layer": 0, "score": "raw"}])


def test_correlation_table_from_ak_correlate(rng):
    import xarray as xr

    score = xr.DataArray(rng.random((20, 3, 8)), dims=("sample", "layer", "position"))
    impact = xr.DataArray(rng.random((20, 8)), dims=("sample", "position"))
    res = ak.correlate(score, impact, method="kendall", n_boot=200)
    table = plot.correlation_table({"raw": res, "rollout": res})
    assert table.attrs["method"] == "kendall"
    assert table["score"].tolist() == ["raw"] * 3 + ["rollout"] * 3
    np.testing.assert_allclose(table["statistic"][:3], res["mean_statistic"].values)
    fig = plot.correlation_plot(res)
    assert fig.axes[0].get_ylabel().startswith("Kendall τ-b")
    numpy_res = ak.correlate(rng.random((20, 3, 8)), rng.random((20, 1, 8)), over=0, n_boot=200)
    table = plot.correlation_table({"grad": numpy_res})
    assert table["layer"].tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- benchmarks
def cpu_result():
    return {"benchmark": "cpu_attention", "records": [
        {"method": m, "mask": mask, "n": n, "gflops": g * n / 512, "median_s": 1e-3 * n,
         "peak_extra_mb": n / 512}
        for mask in ("full", "causal") for m, g in (("attnkit", 50.0), ("numpy", 30.0))
        for n in (512, 1024, 2048)]}


def gpu_result():
    return {"benchmark": "gpu_attention", "machine": {"gpu": "NVIDIA H100 80GB HBM3"},
            "records": [{"method": "attnkit", "causal": False, "n": n, "tflops": 10.0,
                         "median_s": 1e-4, "peak_extra_mb": 2.0} for n in (1024, 4096)]}


def all_texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


def test_throughput_plot_without_gpu_says_so():
    fig = plot.throughput_plot(cpu_result())
    assert any("no GPU results yet" in t for t in all_texts(fig))
    plotted = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in plotted] == ["CPU: full", "CPU: causal"]
    line = plotted[0].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [512, 1024, 2048])
    np.testing.assert_allclose(line.get_ydata(), [50, 100, 200])
    assert plotted[0].get_ylabel() == "GFLOP/s (median)"
    assert plotted[0].get_xaxis().get_major_formatter()(1024, 0) == "1024"


def test_throughput_and_memory_with_gpu_results():
    results = [cpu_result(), gpu_result()]
    fig = plot.throughput_plot(results)
    assert not any("no GPU results yet" in t for t in all_texts(fig))
    titles = [ax.get_title() for ax in fig.axes if ax.get_lines()]
    assert "GPU: full" in titles
    gpu = next(ax for ax in fig.axes if ax.get_title() == "GPU: full")
    np.testing.assert_allclose(gpu.get_lines()[0].get_ydata(), [10, 10])  # in TFLOP/s
    assert gpu.get_ylabel() == "TFLOP/s (median)"
    empty = next(ax for ax in fig.axes if ax.get_title() == "GPU: causal")
    assert [t.get_text() for t in empty.texts] == ["no GPU results for causal"]
    fig = plot.throughput_plot(results, metric="time")
    assert fig.axes[0].get_yscale() == "log"
    fig = plot.memory_plot(results)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "peak extra memory (MB)"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1, 2, 4])
    with pytest.raises(ValueError, match="metric: expected 'gflops' or 'time'"):
        plot.throughput_plot(results, metric="flops")


def test_gpu_records_are_split_by_causal():
    gpu = gpu_result()
    gpu["records"] += [{"method": "attnkit", "causal": True, "n": n, "tflops": 5.0,
                        "median_s": 1e-4, "peak_extra_mb": 1.0} for n in (1024, 4096)]
    fig = plot.throughput_plot([cpu_result(), gpu])
    full = next(ax for ax in fig.axes if ax.get_title() == "GPU: full")
    causal = next(ax for ax in fig.axes if ax.get_title() == "GPU: causal")
    np.testing.assert_allclose(full.get_lines()[0].get_ydata(), [10, 10])
    np.testing.assert_allclose(causal.get_lines()[0].get_ydata(), [5, 5])


def test_cost_plot_series_and_guides():
    result = {"benchmark": "attention_cost", "series": {
        "full": [{"n": n, "median_s": 1e-3 * (n / 512) ** 2} for n in (512, 1024, 2048)],
        "linear": [{"n": n, "median_s": 1e-3 * n / 512} for n in (512, 1024, 2048)]},
        "exponents": {"full": 2.0, "linear": 1.0}}
    fig = plot.cost_plot(result)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["full: fitted n^2.00", "linear: fitted n^1.00", "guide ∝ n^1", "guide ∝ n^2"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1, 4, 16])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    empty = plot.cost_plot([{"benchmark": "cpu_attention", "records": []}])
    assert any("no attention_cost results" in t for t in all_texts(empty))


def test_stored_paper_results_plot():
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "paper" / "results"
    fig = plot.throughput_plot(results)
    assert any(ax.get_title() == "CPU: full" and ax.get_lines() for ax in fig.axes)
    assert len(plot.cost_plot(results).axes[0].get_lines()) >= 4


def test_results_folder_and_stored_results(tmp_path):
    (tmp_path / "cpu_attention.json").write_text(json.dumps(cpu_result()))
    (tmp_path / "notes.json").write_text("[1, 2]")  # not a result: skipped
    results = plot.load_results(tmp_path)
    assert [r["_file"] for r in results] == ["cpu_attention.json"]
    assert any(ax.get_lines() for ax in plot.throughput_plot(tmp_path).axes)
    other = {"benchmark": "minilm_forward", "records": [{"method": "attnkit", "n": 64,
                                                          "median_s": 9.0, "gflops": 1.0}]}
    (tmp_path / "minilm_forward.json").write_text(json.dumps(other))
    fig = plot.throughput_plot(tmp_path)  # not an attention benchmark: left out
    assert [ax.get_title() for ax in fig.axes if ax.get_lines()] == ["CPU: full", "CPU: causal"]
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: expected a JSON results file"):
        plot.load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a results folder"):
        plot.load_results(tmp_path / "missing")


# ----------------------------------------------------------------------------- dispatcher
@pytest.mark.parametrize("kind", ["heatmap", "grid", "rollout", "flow", "cls", "stats", "special"])
def test_plot_dataset_every_kind(ds, kind):
    fig = ds.attn.plot(kind=kind, sample=2, layer=1, head=2)
    assert fig.axes
    if kind == "heatmap":
        ax = image_axes(fig)[0]
        assert ax.get_title() == "layer 1, head 2 (sample 2)"
        assert ticks(ax, "x") == TOKENS[2]
        np.testing.assert_allclose(ax.images[0].get_array(), ds.attention.values[2, 1, 2])
    if kind in ("rollout", "flow"):
        ax = image_axes(fig)[0]
        expected = (ak.rollout(ds) if kind == "rollout" else ak.attention_flow(ds)).values[2]
        np.testing.assert_allclose(ax.images[0].get_array(), expected, atol=1e-12)
    if kind == "cls":
        heights = [p.get_height() for p in fig.axes[0].patches]
        np.testing.assert_allclose(heights, ak.rollout(ds).values[2, 0], atol=1e-12)


def test_plot_dataset_patch_and_errors(rng):
    a = softmax_rows(rng, (1, 2, 2, 5, 5))
    ds = ak.from_arrays(a, attrs={"grid": (2, 2)})
    fig = plot.plot_dataset(ds, "patch")
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(),
                               ak.rollout(ds).values[0, 0, 1:].reshape(2, 2))
    with pytest.raises(ValueError, match="kind: expected heatmap"):
        plot.plot_dataset(ds, "pie")
    with pytest.raises(ValueError, match=r"layer: expected an int in \[0, 2\)"):
        plot.plot_dataset(ds, "heatmap", layer=5)
    with pytest.raises(ValueError, match="source: expected 'rollout', 'flow' or 'raw'"):
        plot.plot_dataset(ds, "cls", source="grad")
    with pytest.raises(ValueError, match=r"grid"):
        plot.plot_dataset(ds.drop_attrs(), "patch")


# ----------------------------------------------------------------------------- saving
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                           (".svg", b"<?xml")])
def test_save_figure_round_trip(tmp_path, suffix, magic):
    path = tmp_path / f"fig{suffix}"
    out = plot.save_figure(plot.heatmap(np.eye(3), tokens=list("abc")), path, dpi=40)
    assert out == path
    assert path.read_bytes()[:len(magic)] == magic
    assert sorted(os.listdir(tmp_path)) == [path.name]
    if suffix == ".png":
        import matplotlib.image as mpimg

        assert mpimg.imread(path).shape[2] == 4


def test_save_figure_errors(tmp_path):
    fig = plot.heatmap(np.eye(2))
    with pytest.raises(ValueError, match=r"path: expected a name ending in .png, .pdf or .svg"):
        plot.save_figure(fig, tmp_path / "fig.jpg")
    with pytest.raises(FileNotFoundError, match="expected an existing folder"):
        plot.save_figure(fig, tmp_path / "missing" / "fig.png")
    with pytest.raises(TypeError, match="fig: expected a matplotlib Figure"):
        plot.save_figure("not a figure", tmp_path / "fig.png")


def test_save_figure_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    fig = plot.heatmap(np.eye(2))

    def broken_savefig(target, **kwargs):
        with open(target, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot.save_figure(fig, path)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["fig.png"]


def test_matplotlib_is_imported_lazily_and_pyplot_only_when_the_user_did():
    code = (
        "import sys, numpy as np, attnkit\n"
        "print('matplotlib' in sys.modules)\n"
        "from attnkit import plot\n"
        "plot.heatmap(np.eye(2))\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
        "fig = plot.heatmap(np.eye(2))\n"
        "print(plt.get_fignums() == [fig.number])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def saved(tmp_path, ds):
    path = tmp_path / "attn.nc"
    ak.save_dataset(ds, path)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("kind, extra", [("heatmap", ["--layer", "-1", "--head", "1"]),
                                         ("grid", []), ("rollout", ["--sample", "1"]),
                                         ("stats", [])])
def test_cli_plot_writes_png(tmp_path, saved, kind, extra):
    out = tmp_path / f"{kind}.png"
    result = run("plot", saved, "--kind", kind, *extra, "--dpi", 40, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    data = out.read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 1000


def test_cli_plot_results_and_tables(tmp_path):
    import pandas as pd

    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu_attention.json").write_text(json.dumps(cpu_result()))
    for kind in ("throughput", "memory"):
        out = tmp_path / f"{kind}.svg"
        result = run("plot", results, "--kind", kind, "-o", out, "-q")
        assert result.exit_code == 0, result.output
        assert result.output == "" and out.read_bytes().startswith(b"<?xml")
    table = tmp_path / "corr.csv"
    pd.DataFrame(correlation_rows()).to_csv(table, index=False)
    out = tmp_path / "corr.pdf"
    result = run("plot", table, "--kind", "correlation", "--title", "T", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"%PDF"


def test_cli_plot_stats_from_stats_file(tmp_path, saved):
    stats_file = tmp_path / "stats.nc"
    assert run("stats", saved, "-o", stats_file, "-q").exit_code == 0
    out = tmp_path / "special.png"
    result = run("plot", stats_file, "--kind", "special", "--dpi", 40, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--kind", "heatmap", "-o", "{tmp}/x.jpg"], "--output: expected a path ending in .png"),
    (["--kind", "heatmap", "--layer", "7", "-o", "{tmp}/x.png"],
     "layer: expected an int in [0, 2)"),
    (["--kind", "heatmap", "--sample", "9", "-o", "{tmp}/x.png"],
     "sample: expected an int in [0, 3)"),
    (["--kind", "patch", "-o", "{tmp}/x.png"], "grid"),
    (["--kind", "heatmap", "-o", "{tmp}/nope/x.png"], "expected an existing folder"),
    (["--kind", "correlation", "-o", "{tmp}/x.png"], "table: expected a correlation Dataset"),
])
def test_cli_plot_user_errors_exit_2(tmp_path, saved, args, message):
    result = run("plot", saved, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_cli_plot_bad_file_and_help(tmp_path):
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not netcdf")
    result = run("plot", junk, "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Error:" in result.output
    result = run("plot", junk, "--kind", "stats", "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "unreadable" in result.output
    assert run("plot", junk).exit_code == 2  # -o is required
    help_text = run("plot", "--help").output
    assert "Examples:" in help_text and "attnkit plot minilm --kind heatmap" in help_text
    assert "plot" in run("--help").output


def test_token_scores_groups_normalises_and_drops_padding():
    fig = plot.token_scores({"impact": [0.2, 0.4, np.nan], "IG": [-3.0, 1.5, np.nan]},
                            ["[CLS]", "good", ""], title="sample 0")
    heights = [round(float(p.get_height()), 3) for p in fig.axes[0].patches]
    assert heights == [0.5, 1.0, -1.0, 0.5]  # each score / its max |score|; padding dropped
    assert ticks(fig.axes[0], "x") == ["[CLS]", "good"]
    raw = plot.token_scores({"a": [2.0, 4.0]}, normalise=False)
    assert [p.get_height() for p in raw.axes[0].patches] == [2.0, 4.0]
    with pytest.raises(ValueError, match="scores: expected at least one"):
        plot.token_scores({})
