"""ak.ablate: leave-one-out impacts on synthetic models with known answers, and MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit as ak

MASK = 0  # mask token id of the synthetic models
CLS, SEP = 1, 2


class BagModel:
    """Output = sum over tokens of weight[id] * vector[id]: leave-one-out by hand.

    ``zero=`` drops the chosen token's contribution (its embedding is zero).
    """

    mask_token_id = MASK
    special_token_ids = frozenset({CLS, SEP})

    def __init__(self, rng, vocab=12, dim=5):
        self.weight = rng.uniform(0.5, 2.0, vocab)
        self.vector = rng.standard_normal((vocab, dim))
        self.calls = 0

    def contributions(self, seq):
        return self.weight[seq][:, None] * self.vector[seq]

    def __call__(self, ids, *, zero=None):
        self.calls += 1
        out = []
        for i, seq in enumerate(ids):
            c = self.contributions(np.asarray(seq))
            if zero is not None and zero[i] >= 0:
                c[zero[i]] = 0.0
            out.append(c.sum(0))
        return np.array(out)


def cosine_distance(a, b):
    return 1.0 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)


@pytest.fixture
def bag(rng):
    return BagModel(rng)


@pytest.fixture
def sequences(rng):
    lengths = rng.integers(3, 9, size=int(rng.integers(2, 6)))
    return [np.r_[CLS, rng.integers(3, 12, size=n - 2), SEP] for n in lengths]


def test_delete_mask_zero_match_hand_computed_impacts(bag, sequences):
    imp = ak.ablate(bag, sequences, method=("delete", "mask", "zero"), batch_size=3)
    assert imp.dims == ("sample", "position", "method")
    assert imp.method.values.tolist() == ["delete", "mask", "zero"]
    n_max = max(s.size for s in sequences)
    assert imp.shape == (len(sequences), n_max, 3)
    for s, seq in enumerate(sequences):
        c = bag.contributions(seq)
        full = c.sum(0)
        for p in range(seq.size):
            got = imp.values[s, p]
            if seq[p] in (CLS, SEP):
                assert np.isnan(got).all()  # special tokens: NaN by default
                continue
            deleted = full - c[p]
            masked = deleted + bag.weight[MASK] * bag.vector[MASK]
            np.testing.assert_allclose(got, [cosine_distance(full, deleted),
                                             cosine_distance(full, masked),
                                             cosine_distance(full, deleted)], atol=1e-12)
        assert np.isnan(imp.values[s, seq.size:]).all()  # padding


def test_score_metric_is_the_token_weight(rng):
    weight = rng.standard_normal(20)

    def score(ids):
        return np.array([weight[s].sum() for s in ids])

    seqs = [rng.integers(1, 20, size=n) for n in (1, 4, 7)]
    imp = ak.ablate(score, seqs, method=["delete", "mask"], metric="score", mask_id=0,
                    batch_size=2)
    for s, seq in enumerate(seqs):
        n = seq.size
        expected_delete = weight[seq] if n > 1 else np.full(1, np.nan)  # nothing left to run
        np.testing.assert_allclose(imp.sel({"method": "delete"}).values[s, :n], expected_delete)
        np.testing.assert_allclose(imp.sel({"method": "mask"}).values[s, :n], weight[seq] - weight[0])


def test_batching_and_progress_do_not_change_results(bag, sequences):
    seen = []
    a = ak.ablate(bag, sequences, method="mask", batch_size=1,
                  progress=lambda done, total: seen.append((done, total)))
    b = ak.ablate(bag, sequences, method="mask", batch_size=1000)
    np.testing.assert_array_equal(a.values, b.values)
    jobs = sum(s.size - 2 for s in sequences)
    assert seen[-1] == (jobs, jobs) and len(seen) == jobs


def test_positions_special_compute_and_euclidean(bag, sequences):
    imp = ak.ablate(bag, sequences, positions=[0, -1, 1], special="compute", metric="euclidean")
    for s, seq in enumerate(sequences):
        c = bag.contributions(seq)
        for p in range(seq.size):
            if p in (0, 1, seq.size - 1):
                np.testing.assert_allclose(imp.values[s, p, 0], np.linalg.norm(c[p]), rtol=1e-12)
            else:
                assert np.isnan(imp.values[s, p, 0])
    assert imp.attrs["special"] == "computed"


def test_callable_metric_gets_rows(bag, sequences):
    def first_component(full, ablated):
        return full[:, 0] - ablated[:, 0]

    imp = ak.ablate(bag, sequences, metric=first_component)
    seq = sequences[0]
    c = bag.contributions(seq)
    np.testing.assert_allclose(imp.values[0, 1:seq.size - 1, 0], c[1:-1, 0], atol=1e-12)
    assert imp.attrs["metric"] == "first_component"


def test_errors_are_clear(bag, sequences):
    with pytest.raises(ValueError, match="method: expected one of"):
        ak.ablate(bag, sequences, method="drop")
    with pytest.raises(ValueError, match="metric: expected one of"):
        ak.ablate(bag, sequences, metric="kl")
    with pytest.raises(ValueError, match="special: expected 'nan' or 'compute'"):
        ak.ablate(bag, sequences, special="skip")
    with pytest.raises(ValueError, match="mask_id: expected the mask token id"):
        ak.ablate(lambda ids: np.ones((len(ids), 2)), sequences, method="mask")
    with pytest.raises(TypeError, match="method='zero': expected a model accepting"):
        ak.ablate(lambda ids: np.ones((len(ids), 2)), sequences, method="zero")
    with pytest.raises(ValueError, match="'score'"):
        ak.ablate(bag, sequences, metric="score")
    with pytest.raises(ValueError, match="for 'cosine'"):
        ak.ablate(lambda ids: np.ones(len(ids)), sequences)
    with pytest.raises(ValueError, match=r"model output \(full\): expected one row per input"):
        ak.ablate(lambda ids: np.ones((1, 3)), sequences)
    with pytest.raises(TypeError, match="tokenize"):
        ak.ablate(lambda ids: np.ones((len(ids), 3)), ["a sentence"])
    with pytest.raises(TypeError, match="model: expected a callable"):
        ak.ablate(object(), sequences)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        ak.ablate(bag, sequences, batch_size=0)


# ----------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm():
    return ak.models.MiniLM.load()


def test_minilm_delete_impact_matches_manual_forward(minilm):
    texts = ["The keys to the cabinet are on the table.", "Dogs bark."]
    imp = ak.ablate(minilm, texts, method=("delete", "mask", "zero"), batch_size=8)
    ids = minilm.tokenize(texts)
    full = minilm.embed(ids)
    for s, seq in enumerate(ids):
        assert np.isnan(imp.values[s, [0, seq.size - 1]]).all()  # [CLS], [SEP]
        for p in (1, seq.size - 2):
            deleted = minilm.embed([np.delete(seq, p)])[0]
            masked = seq.copy()
            masked[p] = minilm.mask_token_id
            expected = [1 - full[s] @ deleted, 1 - full[s] @ minilm.embed([masked])[0],
                        1 - full[s] @ minilm.embed([seq], zero=[p])[0]]
            np.testing.assert_allclose(imp.values[s, p], expected, atol=2e-6)
    valid = imp.values[~np.isnan(imp.values)]
    assert (valid > -1e-6).all() and (valid < 1).all() and valid.max() > 1e-3


def test_minilm_impact_merges_into_its_dataset(minilm, tmp_path):
    ds = minilm.run(["The cat sat on the mat.", "Hello world"])
    ds["impact"] = ak.ablate(minilm, ds, method=["delete", "mask"])
    ak.validate(ds)
    ak.save_dataset(ds, tmp_path / "a.nc")
    back = ak.open_dataset(tmp_path / "a.nc")
    np.testing.assert_array_equal(back.impact.values, ds.impact.values)
    assert back.impact.method.values.tolist() == ["delete", "mask"]
    direct = ak.ablate(minilm, ["The cat sat on the mat.", "Hello world"], method="delete")
    np.testing.assert_allclose(ds.impact.sel({"method": "delete"}).values, direct.values[..., 0],
                               atol=1e-12, equal_nan=True)
