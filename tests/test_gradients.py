"""Gradients through MiniLM: finite differences, torch autograd golden values, padding, batching.

tests/fixtures/minilm_gradients.npz was written by
tests/fixtures/make_minilm_gradient_fixture.py (torch + transformers, float64,
eager attention, retain_grad on the attention probabilities and
inputs_embeds); torch is not needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attnkit as ak
from attnkit.models import MiniLM, layers, weights_dir

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "minilm_gradients.npz"


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def model64():
    return MiniLM.load(dtype=np.float64)


@pytest.fixture(scope="module")
def model32():
    return MiniLM.load()


def tiny_model(rng, *, hidden=8, heads=2, n_layers=2, inter=16, dtype=np.float64) -> MiniLM:
    """A BERT of random weights with MiniLM's tokenizer (for finite differences)."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(weights_dir() / "tokenizer.json"))
    config = {"num_hidden_layers": n_layers, "num_attention_heads": heads, "hidden_size": hidden,
              "max_position_embeddings": 64, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}

    def r(*shape, scale=0.7):
        return rng.standard_normal(shape) * scale

    w = {"embeddings.word_embeddings.weight": r(tok.get_vocab_size(), hidden),
         "embeddings.position_embeddings.weight": r(64, hidden),
         "embeddings.token_type_embeddings.weight": r(2, hidden),
         "embeddings.LayerNorm.weight": 1 + r(hidden, scale=0.2),
         "embeddings.LayerNorm.bias": r(hidden, scale=0.2)}
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (hidden, hidden),
                             "attention.self.key": (hidden, hidden),
                             "attention.self.value": (hidden, hidden),
                             "attention.output.dense": (hidden, hidden),
                             "intermediate.dense": (inter, hidden),
                             "output.dense": (hidden, inter)}.items():
            w[p + name + ".weight"] = r(o, n, scale=1.5 / np.sqrt(n))
            w[p + name + ".bias"] = r(o, scale=0.2)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + name + ".weight"] = 1 + r(hidden, scale=0.2)
            w[p + name + ".bias"] = r(hidden, scale=0.2)
    return MiniLM(w, config, tok, dtype=dtype)


def rel_err(got, ref) -> float:
    return float(np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref))


IDS = [np.array([101, 2023, 4937, 2938, 2006, 1996, 13523, 1012, 102]),
       np.array([101, 7592, 2088, 102]),
       np.array([101, 102])]


# ----------------------------------------------------------------------------- finite differences
def test_encoder_input_gradient_matches_finite_differences(rng):
    model = tiny_model(rng)
    embeds, lengths = model.word_embeddings(IDS)
    target = rng.standard_normal((len(IDS), model.hidden_size))
    g = model.value_and_gradients(embeds, lengths, target)

    def T(e):
        return float(np.einsum("bf,bf->", model.encode(e, lengths).pooled, target))

    valid = layers.valid_mask(lengths, embeds.shape[1])[:, :, None]
    for _ in range(3):
        u = rng.standard_normal(embeds.shape) * valid
        h = 1e-6
        fd = (T(embeds + h * u) - T(embeds - h * u)) / (2 * h)
        analytic = float(np.sum(g.input_gradient * u))
        assert abs(fd - analytic) <= 1e-6 * abs(analytic), (fd, analytic)
    assert np.all(g.input_gradient[~valid[..., 0]] == 0.0)


def test_encoder_attention_gradient_matches_finite_differences(rng, monkeypatch):
    """Perturb the probabilities P_l inside the forward (P_l + h E_l) and difference T."""
    model = tiny_model(rng)
    embeds, lengths = model.word_embeddings(IDS)
    g = model.value_and_gradients(embeds, lengths)  # target "self"
    direction = g.direction
    forward = layers.attention_forward
    valid = layers.valid_mask(lengths, embeds.shape[1])
    inside = (valid[:, None, :, None] & valid[:, None, None, :])
    for layer in range(model.n_layers):
        E = rng.standard_normal(g.attention[:, layer].shape) * inside
        calls = []

        def perturbed(q, k, v, lens, *, h=0.0, **kwargs):
            out, cache = forward(q, k, v, lens, **kwargs)
            if len(calls) == layer:
                out = (cache[0] + h * E) @ v
            calls.append(1)
            return out, cache

        def T(h):
            calls.clear()
            monkeypatch.setattr(layers, "attention_forward",
                                lambda *a, **kw: perturbed(*a, h=h, **kw))
            try:
                return float(np.einsum("bf,bf->", model.encode(embeds, lengths, record=True).pooled,
                                       direction))
            finally:
                monkeypatch.setattr(layers, "attention_forward", forward)

        step = 1e-6
        fd = (T(step) - T(-step)) / (2 * step)
        analytic = float(np.sum(g.attention_gradient[:, layer] * E))
        assert abs(fd - analytic) <= 1e-6 * abs(analytic), (layer, fd, analytic)
    assert np.all(g.attention_gradient[np.broadcast_to(~inside[:, None], g.attention_gradient.shape)]
                  == 0.0)


# ----------------------------------------------------------------------------- torch golden values
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-4), (np.float32, 1e-3)])
@pytest.mark.parametrize("kind", ["self", "vector"])
def test_gradients_match_torch_autograd(golden, model64, model32, dtype, tol, kind):
    model = model64 if dtype == np.float64 else model32
    sentences = [str(s) for s in golden["sentences"]]
    target = "self" if kind == "self" else golden["target_vector"]
    ds = model.run(sentences, gradients=True, target=target, batch_size=3, qk=False)
    for i, sentence in enumerate(sentences):
        n = int(golden[f"ids_{i}"].size)
        assert int(ds.length[i]) == n
        assert ds.gradient.dtype == dtype
        e_att = rel_err(ds.gradient.values[i, :, :, :n, :n], golden[f"grad_attention_{kind}_{i}"])
        e_in = rel_err(ds.input_gradient.values[i, :n], golden[f"grad_embeds_{kind}_{i}"])
        assert e_att <= tol and e_in <= tol, (sentence, e_att, e_in)


def test_target_value_matches_torch(golden, model64):
    sentences = [str(s) for s in golden["sentences"]]
    for i, sentence in enumerate(sentences):
        embeds, lengths = model64.word_embeddings(model64.tokenize([sentence]))
        g = model64.value_and_gradients(embeds, lengths)
        np.testing.assert_allclose(g.readout[0], golden[f"readout_{i}"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g.value[0], golden[f"T_self_{i}"], rtol=1e-7)


# ----------------------------------------------------------------------------- datasets
def test_run_with_gradients_pads_with_nan_and_batches_like_one_by_one(model64):
    texts = ["The cat sat on the mat.", "Hello world", "Colorless green ideas sleep furiously."]
    together = model64.run(texts, gradients=True, batch_size=3, qk=False)
    ak.validate(together)
    assert together.attrs["gradient_target"].startswith("self")
    assert together.attrs["readout"] == "mean"
    for i, text in enumerate(texts):
        alone = model64.run([text], gradients=True, qk=False)
        n = int(alone.length[0])
        np.testing.assert_allclose(together.gradient.values[i, :, :, :n, :n],
                                   alone.gradient.values[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(together.input_gradient.values[i, :n],
                                   alone.input_gradient.values[0], rtol=1e-9, atol=1e-12)
        assert np.isnan(together.gradient.values[i, :, :, n:, :]).all()
        assert np.isnan(together.gradient.values[i, :, :, :, n:]).all()
        assert np.isnan(together.input_gradient.values[i, n:]).all()
    assert np.isfinite(together.input_gradient.values[1, :4]).all()


def test_run_records_a_vector_target(model32):
    t = np.zeros(384)
    t[3] = 1.0
    ds = model32.run(["Hello world"], gradients=True, target=t, qk=False)
    assert ds.attrs["gradient_target"].startswith("vector")
    np.testing.assert_array_equal(ds.gradient_target.values, t[None])


@pytest.mark.parametrize("target, match", [
    (np.ones(10), r"target: expected shape \(384,\) or \(2, 384\).*got \(10,\)"),
    ("cls", r"target: expected 'self' or an array of 384 floats"),
    (np.full(384, np.nan), "target: expected finite values"),
])
def test_bad_target(model32, target, match):
    with pytest.raises(ValueError, match=match):
        model32.run(["Hello world", "Hi"], gradients=True, target=target)


def test_encode_and_backward_bad_input(model32):
    embeds, lengths = model32.word_embeddings([[101, 7592, 102]])
    with pytest.raises(ValueError, match=r"word_embeds: expected shape \(batch, n, 384\)"):
        model32.encode(embeds[0], lengths)
    with pytest.raises(ValueError, match=r"lengths: expected 1 lengths in \[1, 3\]"):
        model32.encode(embeds, [4])
    out = model32.encode(embeds, lengths)
    with pytest.raises(ValueError, match="record=True"):
        model32.backward(out, np.ones((1, 384)))
