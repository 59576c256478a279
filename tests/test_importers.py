"""Importing Hugging Face output_attentions from tuples and files."""

import numpy as np
import pytest

import attnkit as ak


def _layers(rng, layers=3, batch=2, heads=4, n=7):
    scores = rng.standard_normal((layers, batch, heads, n, n))
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return tuple((e / e.sum(-1, keepdims=True)).astype(np.float32))


def _expected(layers):
    return np.stack(layers, axis=1)  # (sample, layer, head, n, n)


def test_tuple_with_attention_mask_sets_lengths_and_nan_padding(rng):
    layers = _layers(rng)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    ds = ak.from_hf_attentions(layers, attention_mask=mask, model="toy",
                               tokens=[list("abcdefg"), list("wxyz")])
    assert ds.length.values.tolist() == [7, 4]
    np.testing.assert_array_equal(ds.attention.values[0], _expected(layers)[0])
    np.testing.assert_array_equal(ds.attention.values[1, :, :, :4, :4],
                                  _expected(layers)[1, :, :, :4, :4])
    assert np.isnan(ds.attention.values[1, :, :, 4:, :]).all()
    assert np.isnan(ds.attention.values[1, :, :, :, 4:]).all()
    assert ds.attrs["model"] == "toy"
    assert ds.token.values[1].tolist()[:4] == list("wxyz")


@pytest.mark.parametrize("kind", ["npz", "npz_named", "npy", "safetensors"])
def test_files_round_trip(rng, tmp_path, kind):
    layers = _layers(rng, layers=12)
    path = tmp_path / f"attn.{kind.split('_')[0]}"
    if kind == "npz":
        np.savez(path, *layers)  # arr_0 .. arr_11: natural order matters past 10
    elif kind == "npz_named":
        np.savez(path, **{f"layer_{i}": layer for i, layer in enumerate(layers)})
    elif kind == "npy":
        np.save(path, np.stack(layers))
    else:
        from safetensors.numpy import save_file

        save_file({f"layer.{i}": np.ascontiguousarray(x) for i, x in enumerate(layers)},
                  str(path))
    ds = ak.from_hf_attentions(path)
    np.testing.assert_array_equal(ds.attention.values, _expected(layers))
    assert ds.attrs["source"] == path.name
    ak.validate(ds)


def test_pt_file_loads_with_torch_or_names_the_fix(rng, tmp_path):
    layers = _layers(rng)
    try:
        import torch
    except ImportError:
        path = tmp_path / "attn.pt"
        path.write_bytes(b"not read")
        with pytest.raises(ImportError, match=r"needs torch.*Fix: pip install torch"):
            ak.from_hf_attentions(path)
        return
    path = tmp_path / "attn.pt"
    torch.save(tuple(torch.from_numpy(x) for x in layers), path)
    ds = ak.from_hf_attentions(path)
    np.testing.assert_array_equal(ds.attention.values, _expected(layers))


def test_left_padding_is_refused_with_the_fix(rng):
    layers = _layers(rng)
    mask = np.array([[1] * 7, [0] * 3 + [1] * 4])
    with pytest.raises(ValueError, match=r"attention_mask: expected right padding.*padding_side='right'"):
        ak.from_hf_attentions(layers, attention_mask=mask)


@pytest.mark.parametrize("bad,match", [
    (lambda rng: _layers(rng)[:1] + (np.ones((2, 4, 6, 6)),), r"attentions: expected shape layers of one shape"),
    (lambda rng: np.ones((2, 4, 7, 7)), r"attentions: expected shape a tuple of \(batch, heads, n, n\)"),
])
def test_bad_shapes(rng, bad, match):
    with pytest.raises(ValueError, match=match):
        ak.from_hf_attentions(bad(rng))


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ak.from_hf_attentions(tmp_path / "missing.npz")
    (tmp_path / "attn.txt").write_text("x")
    with pytest.raises(ValueError, match=r"expected a \.npz, \.npy, \.safetensors or \.pt file"):
        ak.from_hf_attentions(tmp_path / "attn.txt")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="expected at least one array"):
        ak.from_hf_attentions(tmp_path / "empty.npz")
