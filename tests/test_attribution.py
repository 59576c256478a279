"""ak.attribute: gradient attributions of MiniLM's read-out, checked against their definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attnkit as ak
from attnkit.attribution import METHOD_DIM
from attnkit.models import MiniLM

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The cat sat on the mat.", "Hello world", "The keys to the cabinet are on the table."]


@pytest.fixture(scope="module")
def model():
    return MiniLM.load()


@pytest.fixture(scope="module")
def model64():
    return MiniLM.load(dtype=np.float64)


@pytest.fixture(scope="module")
def gradients(model64):
    """dT/d(word embeddings), attention and dT/d(attention) from model.run."""
    return model64.run(TEXTS, gradients=True, qk=False)


def test_gradient_methods_follow_their_definitions(model64, gradients):
    a = ak.attribute(model64, TEXTS, method=("gradient_norm", "input_x_gradient", "grad_rollout"))
    assert a.dims == ("sample", "position", METHOD_DIM)
    assert a.token.values[1, :4].tolist() == ["[CLS]", "hello", "world", "[SEP]"]
    for i, ids in enumerate(model64.tokenize(TEXTS)):
        n = ids.size
        x = model64.word[ids]
        dx = gradients.input_gradient.values[i, :n]
        np.testing.assert_allclose(a.sel({METHOD_DIM: "gradient_norm"}).values[i, :n],
                                   np.linalg.norm(dx, axis=-1), rtol=1e-9)
        np.testing.assert_allclose(a.sel({METHOD_DIM: "input_x_gradient"}).values[i, :n],
                                   (x * dx).sum(-1), rtol=1e-8, atol=1e-12)
        # Chefer's rule on the real gradients, read at the mean read-out (not [CLS])
        rel = ak.grad_rollout(gradients.attention.values[i, :, :, :n, :n],
                              gradients.gradient.values[i, :, :, :n, :n])
        np.testing.assert_allclose(a.sel({METHOD_DIM: "grad_rollout"}).values[i, :n],
                                   rel.mean(axis=0), rtol=1e-9)
        assert np.isnan(a.values[i, n:]).all()


def test_integrated_gradients_are_complete_on_shipped_sentences(model):
    """The path integral sums to T(x) - T(baseline) within 1% at 64 steps.

    The "mask" baseline here; the shipped dataset holds the "zero" baseline's
    error over all its sentences (tests/test_minilm_dataset.py).
    """
    texts = (ROOT / "datasets" / "minilm" / "sentences.txt").read_text().splitlines()
    chosen = [texts[i] for i in (27, 126, 261)]  # 7, 33 and 18 tokens
    a = ak.attribute(model, chosen, method="integrated_gradients", steps=64, baseline="mask")
    assert a.dims == ("sample", "position") and a.attrs["method"] == "integrated_gradients"
    assert a.attrs["completeness_relative_error"] < 0.01, a.attrs
    assert a.attrs["steps"] == 64 and a.attrs["baseline"] == "mask"


def test_integrated_gradients_completeness_checked_independently(model64):
    """sum_i IG_i against T(x) - T(x0) computed here from two forward passes."""
    ids = model64.tokenize(["The old man the boat."])
    a = ak.attribute(model64, ids, method="integrated_gradients", steps=64, baseline="mask")
    x, lengths = model64.word_embeddings(ids)
    masked = np.where(np.isin(ids[0], [101, 102]), ids[0], model64.mask_token_id)
    x0, _ = model64.word_embeddings([masked])
    r = model64.encode(x, lengths).pooled[0]
    u = r / np.linalg.norm(r)
    gap = r @ u - model64.encode(x0, lengths).pooled[0] @ u
    total = float(np.nansum(a.values))
    assert abs(total - gap) <= 0.01 * abs(gap), (total, gap)
    assert abs(abs(total - gap) - a.attrs["completeness_error"]) < 1e-9


def test_batched_equals_one_by_one(model64):
    together = ak.attribute(model64, TEXTS, method=("input_x_gradient", "integrated_gradients"),
                            steps=8, batch_size=3)
    for i, text in enumerate(TEXTS):
        alone = ak.attribute(model64, [text], method=("input_x_gradient", "integrated_gradients"),
                             steps=8, batch_size=5)
        n = alone.sizes["position"]
        np.testing.assert_allclose(together.values[i, :n], alone.values[0], rtol=1e-9,
                                   atol=1e-12)


def test_dataset_inputs_align_and_vector_target(model, gradients):
    target = np.zeros(384)
    target[7] = 1.0
    a = ak.attribute(model, gradients, method="input_x_gradient", target=target)
    assert a.sizes["position"] == gradients.sizes["position"]
    assert a.attrs["target"].startswith("vector")
    b = ak.attribute(model, gradients, method="input_x_gradient")
    assert not np.allclose(np.nan_to_num(a.values), np.nan_to_num(b.values))
    ds = gradients.assign(attribution=ak.attribute(model, gradients,
                                                   method=("input_x_gradient", "grad_rollout")))
    ak.validate(ds)


def test_dataset_without_position_embeddings_needs_a_configured_model(model):
    ds = model.run(["Hello world"], position_embeddings=False, qk=False)
    with pytest.raises(ValueError, match=r"configured\(position_embeddings=False\)"):
        ak.attribute(model, ds)
    a = ak.attribute(model.configured(position_embeddings=False), ds)
    assert np.isfinite(a.values[0, :4]).all()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"method": "saliency"}, ValueError, "method: expected one of"),
    ({"method": ()}, ValueError, "method: expected one or more"),
    ({"steps": 0}, ValueError, "steps"),
    ({"baseline": "blur"}, ValueError, r"baseline: expected one of \('zero', 'mask'\)"),
    ({"target": np.ones(3)}, ValueError, r"target: expected shape \(384,\)"),
])
def test_bad_arguments(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        ak.attribute(model, ["Hello world"], **kwargs)


def test_model_without_gradient_support():
    def black_box(ids):
        return np.ones((len(ids), 3))

    with pytest.raises(TypeError, match="model: expected a model with gradient support"):
        ak.attribute(black_box, [[1, 2, 3]])
