"""``attnkit ablate`` and ``attnkit attribute`` on a SaliencyViT dataset (a 4 x 4 grid, so fast)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit.models.saliency_vit import normalize
from attnkit_cli.main import cli
from cli_checks import assert_user_error


@pytest.fixture(scope="module")
def vit():
    return ak.models.SaliencyViT.load()


@pytest.fixture
def small(vit, tmp_path):
    """A 56 x 56 image dataset (grid 4 x 4) that stores the image it was made from."""
    img = np.random.default_rng(5).integers(0, 256, (1, 56, 56, 3), dtype=np.uint8)
    ds = vit.run(normalize(img).astype(np.float32), image=False)
    ds["image"] = (("sample", "y", "x", "channel"), img)
    path = tmp_path / "small.nc"
    ak.save_dataset(ds, path)
    return path, ds


def test_ablate_defaults_to_both_image_methods_and_matches_the_api(vit, small, tmp_path):
    path, ds = small
    out = tmp_path / "impacts.nc"
    result = CliRunner().invoke(cli, ["ablate", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    impact = ak.open_dataset(out)["impact"]
    assert impact["method"].values.tolist() == ["mask", "key_mask"]
    expected = ak.ablate(vit, ds, method=["mask", "key_mask"])
    np.testing.assert_allclose(impact.values, expected.values, rtol=1e-6, atol=1e-9)
    assert np.isnan(impact.values[0, 0, 0]) and np.isfinite(impact.values[0, 1:]).all()


def test_attribute_defaults_include_gradcam_and_text_methods_refuse_it(vit, small, tmp_path):
    path, ds = small
    out = tmp_path / "attributions.nc"
    result = CliRunner().invoke(cli, ["attribute", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 images in" in result.output
    attribution = ak.open_dataset(out)["attribution"]
    assert attribution["attribution_method"].values.tolist() == ["input_x_gradient",
                                                                 "grad_rollout", "gradcam"]
    expected = ak.attribute(vit, ds, method=["input_x_gradient", "grad_rollout", "gradcam"])
    np.testing.assert_allclose(attribution.values, expected.values, rtol=1e-5, atol=1e-9)
    minilm = ak.datasets.path("minilm_classic_qk")
    result = CliRunner().invoke(cli, ["attribute", str(minilm), "-m", "gradcam", "-o",
                                      str(tmp_path / "x.nc")])
    assert_user_error(result, "gradcam")
    assert not (tmp_path / "x.nc").exists()
