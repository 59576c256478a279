"""Importing Hugging Face output_attentions from tuples and files: ak.from_hf_attentions,
ak.importers.load_tokens / load_attention_mask, and the `attnkit import` hint of open_dataset."""

import json
import sys
import types

import numpy as np
import pytest

import attnkit as ak
from attnkit.data import importers

WORDS = ("the", "cat", "sat", "on", "a", "mat", "über", "##ing", ",", ".")


# ----------------------------------------------------------------------------- inputs
def hf_batch(rng, layers=3, batch=3, heads=4, n=None, lengths=None):
    """What a Hugging Face model returns for a right-padded batch, plus the tokenizer's side.

    Returns (attentions, mask, tokens): a tuple of float32 (batch, heads, n, n) arrays,
    softmax over the valid keys (padding keys get exactly 0, as an additive mask of
    -inf gives; padded queries hold random softmax rows that must be ignored); the
    0/1 mask (batch, n) with ragged lengths (random unless given), the longest n;
    unpadded token lists.
    """
    if lengths is None:
        n = n or int(rng.integers(4, 12))
        lengths = rng.integers(1, n + 1, size=batch)
        lengths[rng.integers(batch)] = n  # the batch is padded to its longest sample
    else:
        lengths = np.asarray(lengths)
        batch, n = len(lengths), int(lengths.max())
    mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.int64)
    scores = rng.standard_normal((layers, batch, heads, n, n)) * 2
    keys = mask[None, :, None, None, :].astype(bool)
    queries = mask[None, :, None, :, None].astype(bool)
    scores = np.where(keys | ~queries, scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    attn = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    tokens = [["[CLS]", *(WORDS[j] for j in rng.integers(len(WORDS), size=length - 1))]
              for length in lengths]
    return tuple(attn), mask, tokens


def padded(tokens, n):
    return [row + ["[PAD]"] * (n - len(row)) for row in tokens]


def assert_matches(ds, attentions, mask, tokens, *, exact=False):
    """The dataset holds the attentions inside each sample's length (renormalised rows
    differ by float rounding only), NaN outside; lengths and tokens from the inputs."""
    expected = np.stack(attentions, axis=1).astype(np.float64)  # (sample, layer, head, n, n)
    lengths = np.asarray(mask).sum(axis=1)
    assert ds.length.values.tolist() == lengths.tolist()
    assert ds.attention.shape == expected.shape
    for i, length in enumerate(lengths):
        got = ds.attention.values[i]
        inside = got[:, :, :length, :length]
        if exact:
            np.testing.assert_array_equal(inside, expected[i, :, :, :length, :length])
        else:
            np.testing.assert_allclose(inside, expected[i, :, :, :length, :length], rtol=1e-6,
                                       atol=1e-9)
        assert np.isnan(got[:, :, length:, :]).all() and np.isnan(got[:, :, :, length:]).all()
        assert ds.token.values[i, :length].tolist() == tokens[i]
        assert set(ds.token.values[i, length:].tolist()) <= {""}


# ----------------------------------------------------------------------------- tuples
def test_tuple_with_mask_sets_lengths_tokens_and_nan_padding(rng):
    attentions, mask, tokens = hf_batch(rng)
    ds = ak.from_hf_attentions(attentions, attention_mask=mask, tokens=tokens, model="toy",
                               readout="cls")
    assert_matches(ds, attentions, mask, tokens)
    assert ds.attrs["model"] == "toy" and ds.attrs["readout"] == "cls"
    ak.validate(ds)


def test_padded_token_lists_drop_the_padding(rng):
    attentions, mask, tokens = hf_batch(rng)
    n = mask.shape[1]
    ds = ak.from_hf_attentions(attentions, attention_mask=mask, tokens=padded(tokens, n))
    assert_matches(ds, attentions, mask, tokens)
    assert "[PAD]" not in ds.token.values.ravel().tolist()


def test_renormalize_false_keeps_the_values_exactly(rng):
    attentions, mask, tokens = hf_batch(rng)
    ds = ak.from_hf_attentions(attentions, attention_mask=mask, tokens=tokens, renormalize=False)
    assert_matches(ds, attentions, mask, tokens, exact=True)
    assert "readout" not in ds.attrs


def test_rows_within_atol_are_renormalised_to_meet_the_schema(rng):
    attentions, mask, tokens = hf_batch(rng, layers=2)
    lengths = mask.sum(1)
    # rows off by up to 9e-4: inside the import's 1e-3, outside the schema's 1e-4
    scale = 1 + rng.uniform(-9e-4, 9e-4, size=attentions[0].shape[:-1] + (1,))
    scale.flat[0] = 1 + 8e-4
    skewed = tuple((a * scale).astype(np.float32) for a in attentions)
    ds = ak.from_hf_attentions(skewed, attention_mask=mask, tokens=tokens)
    ak.validate(ds)  # the schema's atol=1e-4 holds after renormalisation
    for i, length in enumerate(lengths):
        sums = np.nansum(ds.attention.values[i, :, :, :length], axis=-1)
        np.testing.assert_allclose(sums, 1.0, atol=1e-6)
        np.testing.assert_allclose(ds.attention.values[i, :, :, :length, :length],
                                   np.stack(attentions, 1)[i, :, :, :length, :length],
                                   rtol=1e-3)
    with pytest.raises(ValueError, match="sum to 1"):
        ak.validate(ak.from_hf_attentions(skewed, attention_mask=mask, renormalize=False))


def test_half_precision_arrays(rng, tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    attentions, mask, tokens = hf_batch(rng, n=24)
    half = tuple(a.astype(np.float16) for a in attentions)
    ds = ak.from_hf_attentions(half, attention_mask=mask, tokens=tokens)
    assert ds.attention.dtype == np.float32
    assert_close = np.testing.assert_allclose
    for i, length in enumerate(mask.sum(1)):
        assert_close(ds.attention.values[i, :, :, :length, :length],
                     np.stack(attentions, 1)[i, :, :, :length, :length], rtol=2e-3, atol=1e-6)
    ak.validate(ds)
    # bfloat16 (8 significant bits) gets the looser default, 1e-2, by its dtype
    bf16 = tuple(a.astype(ml_dtypes.bfloat16) for a in attentions)
    sums = np.where(mask[:, None, None, :] > 0, np.stack(bf16).astype(np.float64), 0).sum(-1)
    valid_rows = np.broadcast_to(mask[None, :, None, :] > 0, sums.shape)
    assert np.abs(sums - 1)[valid_rows].max() < 1e-2
    ds = ak.from_hf_attentions(bf16, attention_mask=mask, tokens=tokens)
    ak.validate(ds)
    from safetensors.numpy import save_file

    save_file({f"layer.{i}": np.ascontiguousarray(a) for i, a in enumerate(bf16)},
              str(tmp_path / "bf16.safetensors"))
    back = ak.from_hf_attentions(tmp_path / "bf16.safetensors", attention_mask=mask)
    np.testing.assert_array_equal(back.attention.values, ds.attention.values)


# ----------------------------------------------------------------------------- files
def save_attentions(path, attentions, kind):
    """Write the tuple the way people do: one array per layer, stacked, or named."""
    if kind == "npz":
        np.savez(path, *attentions)  # arr_0 .. arr_11: natural order matters past 10
    elif kind == "npz_named":
        np.savez(path, **{f"layer_{i}": layer for i, layer in enumerate(attentions)})
    elif kind == "npy":
        np.save(path, np.stack(attentions))
    elif kind == "safetensors":
        from safetensors.numpy import save_file

        save_file({f"layer.{i}": np.ascontiguousarray(x) for i, x in enumerate(attentions)},
                  str(path))
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["npz", "npz_named", "npy", "safetensors"])
def test_files_round_trip(rng, tmp_path, kind):
    attentions, mask, tokens = hf_batch(rng, layers=12)
    path = tmp_path / f"attn.{kind.split('_')[0]}"
    save_attentions(path, attentions, kind)
    np.save(tmp_path / "mask.npy", mask)
    (tmp_path / "tokens.json").write_text(json.dumps(tokens), encoding="utf-8")
    ds = ak.from_hf_attentions(path, attention_mask=tmp_path / "mask.npy",
                               tokens=str(tmp_path / "tokens.json"))
    assert_matches(ds, attentions, mask, tokens)
    assert ds.attrs["source"] == path.name
    ak.validate(ds)
    assert [a.shape for a in importers.load_layer_arrays(path)] == [a.shape for a in attentions]


class FakeTorch(types.ModuleType):
    """A stand-in for torch (not installed here): save/load keep the objects in memory,
    Tensor wraps an array. It exercises the .pt branch's handling of tuples, dicts,
    stacked tensors and bfloat16 without torch."""

    bfloat16 = "torch.bfloat16"

    def __init__(self):
        super().__init__("torch")
        self.files = {}
        module = self

        class Tensor:
            def __init__(self, array, dtype=None, requires_grad=False):
                self.array = np.asarray(array)
                self.dtype = dtype or str(self.array.dtype)
                self.requires_grad = requires_grad

            ndim = property(lambda self: self.array.ndim)
            shape = property(lambda self: self.array.shape)

            def detach(self):
                return Tensor(self.array, self.dtype)

            def cpu(self):
                return self

            def float(self):
                return Tensor(self.array.astype(np.float32))

            def numpy(self):
                assert self.dtype != module.bfloat16, "numpy() of a bfloat16 tensor fails in torch"
                assert not self.requires_grad, "Can't call numpy() on Tensor that requires grad"
                return self.array

            def __iter__(self):
                return (Tensor(x, self.dtype) for x in self.array)

        self.Tensor = Tensor

    def save(self, obj, path):
        with open(path, "wb") as f:
            f.write(b"fake torch file")
        self.files[str(path)] = obj

    def load(self, path, map_location=None, weights_only=False):
        assert weights_only is True and map_location == "cpu"
        return self.files[str(path)]


@pytest.fixture
def fake_torch(monkeypatch):
    torch = FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    return torch


@pytest.mark.parametrize("layout", ["tuple", "dict", "stacked", "bfloat16"])
def test_pt_branch_with_a_stand_in_torch(rng, tmp_path, fake_torch, layout):
    attentions, mask, tokens = hf_batch(rng, layers=11)
    T = fake_torch.Tensor
    if layout == "tuple":
        obj = tuple(T(a) for a in attentions)
    elif layout == "dict":
        obj = {f"layer.{i}": T(a) for i, a in reversed(list(enumerate(attentions)))}
    elif layout == "stacked":
        obj = T(np.stack(attentions))
    else:
        obj = tuple(T(a, fake_torch.bfloat16) for a in attentions)
    fake_torch.save(obj, tmp_path / "attn.pt")
    ds = ak.from_hf_attentions(tmp_path / "attn.pt", attention_mask=mask, tokens=tokens)
    assert_matches(ds, attentions, mask, tokens)


def test_tensors_are_detached_and_converted(rng):
    attentions, mask, tokens = hf_batch(rng)
    T = FakeTorch().Tensor  # out.attentions of a forward pass outside torch.no_grad()
    tensors = tuple(T(a, requires_grad=True) for a in attentions)
    assert_matches(ak.from_hf_attentions(tensors, attention_mask=mask, tokens=tokens),
                   attentions, mask, tokens)
    bf16 = tuple(T(a, FakeTorch.bfloat16) for a in attentions)
    assert_matches(ak.from_hf_attentions(bf16, attention_mask=mask, tokens=tokens),
                   attentions, mask, tokens)


def test_pt_file_with_real_torch(rng, tmp_path):
    torch = pytest.importorskip("torch")  # the stand-in and no-torch tests always run
    attentions, mask, tokens = hf_batch(rng)
    torch.save(tuple(torch.from_numpy(a) for a in attentions), tmp_path / "attn.pt")
    ds = ak.from_hf_attentions(tmp_path / "attn.pt", attention_mask=mask, tokens=tokens)
    assert_matches(ds, attentions, mask, tokens)


def test_pt_file_without_torch_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    path = tmp_path / "attn.pt"
    path.write_bytes(b"not read")
    with pytest.raises(ImportError, match=r"needs torch.*Fix: pip install torch.*np\.savez"):
        ak.from_hf_attentions(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ak.from_hf_attentions(tmp_path / "missing.npz")
    (tmp_path / "attn.txt").write_text("x")
    with pytest.raises(ValueError, match=r"expected a \.npz, \.npy, \.safetensors or \.pt file"):
        ak.from_hf_attentions(tmp_path / "attn.txt")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="expected at least one array"):
        ak.from_hf_attentions(tmp_path / "empty.npz")
    for name in ("bad.npz", "bad.npy", "bad.safetensors"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 8)
        with pytest.raises(ValueError, match=rf"{name}: expected a readable .*got an unreadable"
                                             rf" file.*Fix: .*np\.savez"):
            ak.from_hf_attentions(tmp_path / name)


# ----------------------------------------------------------------------------- bad inputs
def test_ragged_layers_name_the_layer_and_shapes(rng, tmp_path):
    attentions, mask, _ = hf_batch(rng, layers=4, batch=2, heads=3, n=7)
    other, _, _ = hf_batch(rng, layers=1, batch=2, heads=3, n=6)
    ragged = attentions[:2] + other + attentions[3:]
    with pytest.raises(ValueError, match=r"attentions: expected shape \(2, 3, 7, 7\) \(batch, "
                                         r"heads, n, n\) in every layer, like layer 0, got "
                                         r"\(2, 3, 6, 6\) in layer 2\. Fix: save every layer of "
                                         r"one forward pass"):
        ak.from_hf_attentions(ragged, attention_mask=mask)
    np.savez(tmp_path / "ragged.npz", **{f"layer_{i}": a for i, a in enumerate(ragged)})
    with pytest.raises(ValueError, match=r"got \(2, 3, 6, 6\) in layer 2 \('layer_2'\)"):
        ak.from_hf_attentions(tmp_path / "ragged.npz")


@pytest.mark.parametrize("make,match", [
    (lambda a: tuple(x[0] for x in a),
     (r"attentions: expected shape \(batch, heads, n, n\) in every layer, got \(\d+, \d+, \d+\) "
      r"in layer 0.*keep the batch axis")),
    (lambda a: tuple(x[..., :-1] for x in a),
     r"with as many queries as keys.*not cross_attentions"),
    (lambda a: np.stack(a)[0],
     r"attentions: expected shape a tuple of \(batch, heads, n, n\)"),
    (lambda a: tuple((x * 100).astype(np.int64) for x in a),
     r"attentions \(layer 0\): expected float16, bfloat16, float32 or float64, got int64"),
])
def test_bad_shapes_and_dtypes(rng, make, match):
    attentions, _, _ = hf_batch(rng)
    with pytest.raises((ValueError, TypeError), match=match):
        ak.from_hf_attentions(make(attentions))


@pytest.mark.parametrize("make,match", [
    (lambda m: m[:, :-1], r"attention_mask: expected shape \(3, \d+\) \(batch, tokens\)"),
    (lambda m: m[:2], r"attention_mask: expected shape \(3, \d+\)"),
    (lambda m: m * 2, r"attention_mask: expected only 0 and 1.*got values \[0, 2\]"),
    (lambda m: np.where(m > 0, 0.0, -np.inf), r"attention_mask: expected only 0 and 1.*additive"),
    (lambda m: np.vstack([m[:2], np.zeros_like(m[:1])]),
     r"attention_mask\[2\]: expected at least one 1 .*got a row of zeros"),
    (lambda m: np.vstack([m[:2], m[2:, ::-1]]),
     (r"attention_mask\[2\]: expected right padding \(ones, then zeros\), got left padding.*"
      r"padding_side = 'right'")),
    (lambda m: np.vstack([m[:2], [[1, 0] + [1] * (m.shape[1] - 2)]]),
     r"attention_mask\[2\]: expected right padding.*got zeros between ones"),
])
def test_bad_masks(rng, make, match):
    attentions, mask, _ = hf_batch(rng, lengths=[int(rng.integers(1, 9)), 8, 5])
    with pytest.raises(ValueError, match=match):
        ak.from_hf_attentions(attentions, attention_mask=make(mask))


def test_tokens_must_match_the_batch_and_the_lengths(rng):
    attentions, mask, tokens = hf_batch(rng, lengths=[9, 5, int(rng.integers(1, 10))])
    with pytest.raises(ValueError, match=r"tokens: expected one token list per sample \(3, the "
                                         r"batch of the attentions\), got 2 lists"):
        ak.from_hf_attentions(attentions, attention_mask=mask, tokens=tokens[:2])
    short = [tokens[0], tokens[1][:-1], tokens[2]]
    with pytest.raises(ValueError, match=r"tokens\[1\]: expected 5 tokens \(sample 1's length in "
                                         r"attention_mask, or 9 with the padding\), got 4\. "
                                         r"Fix: pass tokenizer\.convert_ids_to_tokens\(ids\)"):
        ak.from_hf_attentions(attentions, attention_mask=mask, tokens=short)
    with pytest.raises(ValueError, match=r"tokens\[2\]: expected str tokens, got a number 7 at "
                                         r"position 1.*not ids"):
        ak.from_hf_attentions(attentions, attention_mask=mask,
                              tokens=tokens[:2] + [["[CLS]", 7]])
    with pytest.raises(ValueError, match=r"tokens\[0\]: expected 9 tokens \(the attentions' "
                                         r"length; pass attention_mask for a padded batch\)"):
        ak.from_hf_attentions(attentions, tokens=[["a"]] * 3)


def test_rows_not_summing_to_one_name_the_worst_row(rng):
    attentions, mask, tokens = hf_batch(rng, layers=3, heads=4,
                                        lengths=[8, int(rng.integers(4, 9)), 6])
    layers = [a.copy() for a in attentions]
    layers[1][0, 2, 3, :] *= 1.002     # off by 2e-3
    layers[2][2, 3, 5, :6] *= 0.9      # worst: sum 0.9 (sample 2, layer 2, head 3, query 5)
    with pytest.raises(ValueError, match=r"attentions: expected rows summing to 1 over each "
                                         r"sample's valid keys \(atol=0\.001\), got 2 rows off "
                                         r"\(worst sum 0\.9 at sample 2, layer 2, head 3, query 5\)"
                                         r"\. Fix: pass softmax probabilities.*attention_mask"):
        ak.from_hf_attentions(layers, attention_mask=mask, tokens=tokens)
    # a row of a padded query, or weight on padding keys of a padded query, is not checked
    layers = [a.copy() for a in attentions]
    layers[0][2, 0, 7, :] = 5.0
    ak.from_hf_attentions(layers, attention_mask=mask)
    # weight on padding keys (a model not given the mask): the valid keys sum below 1
    layers[0][2, 1, 0, :] = 1 / 8
    with pytest.raises(ValueError, match=r"worst sum 0\.75 at sample 2, layer 0, head 1, query 0"):
        ak.from_hf_attentions(layers, attention_mask=mask)
    # a looser atol lets the 2e-3 row in
    layers = [a.copy() for a in attentions]
    layers[1][0, 2, 3, :] *= 1.002
    ak.from_hf_attentions(layers, attention_mask=mask, atol=5e-3)
    with pytest.raises(ValueError, match=r"atol: expected a number in \(0, 1\), got 0"):
        ak.from_hf_attentions(layers, attention_mask=mask, atol=0)


@pytest.mark.parametrize("value,kind", [(np.nan, "non-finite"), (np.inf, "non-finite"),
                                        (-0.25, "negative")])
def test_non_finite_or_negative_weights(rng, value, kind):
    attentions, mask, _ = hf_batch(rng, layers=2, batch=2, heads=2, n=6)
    layers = [a.copy() for a in attentions]
    layers[1][1, 0, 0, 0] = value
    with pytest.raises(ValueError, match=rf"attentions: expected finite probabilities >= 0 inside "
                                         rf"each sample's length, got 1 {kind} values in layer 1 "
                                         rf"\(first .* at sample 1, layer 1, head 0, query 0, "
                                         rf"key 0\)\. Fix: "):
        ak.from_hf_attentions(layers, attention_mask=mask)


def test_readout_must_be_known(rng):
    attentions, mask, _ = hf_batch(rng)
    with pytest.raises(ValueError, match=r"readout: expected one of \('cls', 'mean', 'patches'\)"):
        ak.from_hf_attentions(attentions, attention_mask=mask, readout="pooler")


# ----------------------------------------------------------------------------- token and mask files
def test_load_tokens_text_and_json(tmp_path):
    rows = [["[CLS]", "über", "##ing", "[SEP]"], ["[CLS]", ",", "[SEP]"]]
    (tmp_path / "t.txt").write_text("[CLS] über ##ing [SEP]\n[CLS] , [SEP]\n\n", encoding="utf-8")
    assert importers.load_tokens(tmp_path / "t.txt") == rows
    (tmp_path / "t.json").write_text(json.dumps(rows), encoding="utf-8")
    assert importers.load_tokens(tmp_path / "t.json") == rows


@pytest.mark.parametrize("name,content,match", [
    ("t.json", "", r"t\.json: expected tokens .*got an empty file"),
    ("t.txt", "  \n\n", r"t\.txt: expected tokens .*got an empty file"),
    ("t.json", '[["a", "b"],', r"t\.json: expected valid JSON .*got Expecting value at line 1"),
    ("t.json", '{"tokens": [["a"]]}', r"expected a list of token lists .*got an object"),
    ("t.json", '["a", "b"]', r"got a flat list of 2 strings\. Fix: wrap one sample's tokens"),
    ("t.json", "[]", r"expected a list of token lists .*got an empty list"),
    ("t.json", '[["a"], "b"]', r"t\.json\[1\]: expected a list of str tokens, got a string 'b'"),
    ("t.json", '[["a"], [101, 102]]', (r"t\.json\[1\]: expected str tokens, got a number 101 "
                                       r"at position 0.*not ids")),
    ("t.json", '[["a"], []]', r"t\.json\[1\]: expected at least one token, got an empty list"),
    ("t.txt", "a b\n\nc d\n", (r"t\.txt: line 2: expected the space-separated tokens of one "
                               r"sample, got an empty line")),
])
def test_load_tokens_errors(tmp_path, name, content, match):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        importers.load_tokens(tmp_path / name)


def test_load_tokens_not_utf8_or_missing(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"t\.txt: expected UTF-8 text, got undecodable bytes"):
        importers.load_tokens(tmp_path / "t.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        importers.load_tokens(tmp_path / "missing.json")


def test_load_attention_mask(rng, tmp_path):
    mask = (rng.random((3, 6)) < 2).astype(np.int64)
    mask[1, 4:] = 0
    np.save(tmp_path / "m.npy", mask)
    np.savez(tmp_path / "one.npz", mask)
    np.savez(tmp_path / "batch.npz", input_ids=np.ones_like(mask) * 7, attention_mask=mask)
    (tmp_path / "m.json").write_text(json.dumps(mask.tolist()))
    for name in ("m.npy", "one.npz", "batch.npz", "m.json"):
        np.testing.assert_array_equal(importers.load_attention_mask(tmp_path / name), mask)
    np.savez(tmp_path / "two.npz", a=mask, b=mask)
    with pytest.raises(ValueError, match=r"two\.npz: expected one array, or one named "
                                         r"'attention_mask', got arrays \['a', 'b'\]"):
        importers.load_attention_mask(tmp_path / "two.npz")
    (tmp_path / "ragged.json").write_text("[[1, 1], [1]]")
    with pytest.raises(ValueError, match=r"ragged\.json: expected a list of equally long lists.*"
                                         r"got rows of different lengths"):
        importers.load_attention_mask(tmp_path / "ragged.json")
    (tmp_path / "m.csv").write_text("1,1")
    with pytest.raises(ValueError, match=r"m\.csv: expected a \.npy, \.npz or \.json attention"):
        importers.load_attention_mask(tmp_path / "m.csv")


# ----------------------------------------------------------------------------- other readers
@pytest.mark.parametrize("suffix", [".npz", ".npy", ".safetensors", ".pt", ".pth"])
def test_open_dataset_points_attention_files_to_attnkit_import(tmp_path, suffix):
    path = tmp_path / f"attn{suffix}"
    path.write_bytes(b"anything")
    with pytest.raises(ValueError, match=rf"attn\{suffix}: expected an attention dataset \(\.nc "
                                         rf"or \.zarr\), got a \{suffix} file\. Fix: bring it in "
                                         rf"with `attnkit import .*attn\{suffix} --tokens T "
                                         rf"--attention-mask M -o DS` "
                                         rf"\(or ak\.from_hf_attentions\)"):
        ak.open_dataset(path)
    assert "attnkit import" in str(ak.data.read_error(path, OSError("x")))
    assert "attnkit import" not in str(ak.data.read_error(tmp_path / "a.nc", OSError("x")))
