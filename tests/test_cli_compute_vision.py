"""``attnkit compute --model saliency-vit``: images (files or folders) -> image attention dataset."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit_cli.main import cli
from cli_checks import assert_user_error


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def images(tmp_path, rng):
    import matplotlib.image

    folder = tmp_path / "images"
    folder.mkdir()
    for name, shape in (("b_wide.png", (60, 90, 3)), ("a_tall.png", (80, 50, 3))):
        matplotlib.image.imsave(folder / name, rng.integers(0, 256, shape, dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_compute_on_a_folder_matches_the_model(runner, images, tmp_path):
    out = tmp_path / "vision.nc"
    result = runner.invoke(cli, ["compute", "--model", "saliency-vit", str(images), "--no-qk",
                                 "-o", str(out), "--batch-size", "1", "-q"])
    assert result.exit_code == 0, result.output
    ds = ak.open_dataset(out)
    ak.validate(ds)
    assert tuple(int(g) for g in ds.attrs["grid"]) == (16, 16)
    assert ds.attrs["readout"] == "patches" and "q" not in ds
    assert ds.token.values[0, :3].tolist() == ["[CLS]", "p(0,0)", "p(0,1)"]
    files = sorted(str(p) for p in images.glob("*.png"))  # the folder's images, sorted
    expected = ak.models.SaliencyViT.load().run(files, batch_size=1)  # same float32 blocking
    np.testing.assert_allclose(ds.attention.values, expected.attention.values, atol=1e-6)
    np.testing.assert_allclose(ds.saliency.values, expected.saliency.values, atol=1e-6)
    np.testing.assert_array_equal(ds.image.values, expected.image.values)


def test_compute_image_errors(runner, images, tmp_path):
    out = str(tmp_path / "x.nc")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(runner.invoke(cli, ["compute", "--model", "saliency-vit", str(empty),
                                          "-o", out]), "expected a folder with .jpg or .png")
    assert_user_error(runner.invoke(cli, ["compute", "--model", "saliency-vit", str(images),
                                          "--max-length", "8", "-o", out]),
                      "--max-length: expected only with --model minilm")
    assert_user_error(runner.invoke(cli, ["compute", str(images / "a_tall.png"),
                                          str(images / "b_wide.png"), "-o", out]),
                      "expected one text file of sentences for --model minilm")
    assert not (tmp_path / "x.nc").exists()
