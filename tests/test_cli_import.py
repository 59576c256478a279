"""``attnkit import``: Hugging Face output_attentions files in, a checked dataset out; bad files
give one-line errors and write nothing; other commands point such files to `attnkit import`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit_cli.main import cli
from cli_checks import assert_user_error
from test_importers import FakeTorch, assert_matches, hf_batch, padded, save_attentions

needs_zarr = pytest.mark.needs_zarr


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def folders(tmp_path):
    """Inputs in in/, the output in out/ (which must stay empty when a run fails)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


def write_inputs(folder, rng, kind="npz", *, layers=3, token_format="json", mask_format="npy",
                 pad_tokens=False):
    """Save a random Hugging Face batch as attnkit import reads it; returns what was saved
    and the paths of the attention, tokens and mask files."""
    attentions, mask, tokens = hf_batch(rng, layers=layers)
    suffix = {"npz_named": "npz"}.get(kind, kind)
    attn_path = folder / f"attn.{suffix}"
    if kind != "pt":
        save_attentions(attn_path, attentions, kind)
    rows = padded(tokens, mask.shape[1]) if pad_tokens else tokens
    if token_format == "json":
        tok_path = folder / "tokens.json"
        tok_path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    else:
        tok_path = folder / "tokens.txt"
        tok_path.write_text("".join(" ".join(row) + "\n" for row in rows), encoding="utf-8")
    if mask_format == "npy":
        mask_path = folder / "mask.npy"
        np.save(mask_path, mask)
    elif mask_format == "npz":
        mask_path = folder / "batch.npz"
        np.savez(mask_path, input_ids=np.full_like(mask, 101), attention_mask=mask)
    else:
        mask_path = folder / "mask.json"
        mask_path.write_text(json.dumps(mask.tolist()))
    return (attentions, mask, tokens), (attn_path, tok_path, mask_path)


def run_import(runner, attn_path, tok_path, mask_path, output, *extra):
    return runner.invoke(cli, ["import", str(attn_path), "--tokens", str(tok_path),
                               "--attention-mask", str(mask_path), "-o", str(output), *extra])


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind,token_format,mask_format,out", [
    ("npz", "json", "npy", "attn.nc"),
    ("npz_named", "txt", "npz", "attn.nc"),
    ("npy", "txt", "json", "attn.nc"),
    ("safetensors", "json", "npy", "attn.nc"),
    pytest.param("npz", "txt", "npy", "attn.zarr", marks=needs_zarr),
])
def test_round_trip(runner, rng, folders, kind, token_format, mask_format, out):
    inputs, outputs = folders
    (attentions, mask, tokens), paths = write_inputs(
        inputs, rng, kind, layers=int(rng.integers(1, 13)), token_format=token_format,
        mask_format=mask_format, pad_tokens=bool(rng.integers(2)))
    result = run_import(runner, *paths, outputs / out, "--model", "bert-base-uncased",
                        "--readout", "cls")
    assert result.exit_code == 0, result.output
    ds = ak.open_dataset(outputs / out)
    ak.validate(ds)
    assert_matches(ds, attentions, mask, tokens)
    assert ds.length.values.tolist() == mask.sum(1).tolist()
    assert ds.attrs["model"] == "bert-base-uncased" and ds.attrs["readout"] == "cls"
    assert ds.attrs["source"] == paths[0].name
    assert result.output.strip() == (
        f"wrote {outputs / out}: {len(tokens)} samples, {len(attentions)} layers, "
        f"{attentions[0].shape[1]} heads, max length {mask.shape[1]} "
        f"(shortest {mask.sum(1).min()}), from {paths[0]}")
    assert sorted(p.name for p in outputs.iterdir()) == [out]


def test_pt_round_trip_with_a_stand_in_torch(runner, rng, folders, monkeypatch):
    torch = FakeTorch()  # torch is not a dependency; the stand-in drives the .pt branch
    monkeypatch.setitem(sys.modules, "torch", torch)
    inputs, outputs = folders
    (attentions, mask, tokens), paths = write_inputs(inputs, rng, "pt")
    torch.save(tuple(torch.Tensor(a) for a in attentions), paths[0])
    result = run_import(runner, *paths, outputs / "attn.nc", "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    ds = ak.open_dataset(outputs / "attn.nc")
    assert_matches(ds, attentions, mask, tokens)
    assert "readout" not in ds.attrs and ds.attrs["model"] == ""


def test_pt_round_trip_with_real_torch(runner, rng, folders):
    torch = pytest.importorskip("torch")  # the stand-in and no-torch tests always run
    inputs, outputs = folders
    (attentions, mask, tokens), paths = write_inputs(inputs, rng, "pt")
    torch.save(tuple(torch.from_numpy(a) for a in attentions), paths[0])
    result = run_import(runner, *paths, outputs / "attn.nc")
    assert result.exit_code == 0, result.output
    assert_matches(ak.open_dataset(outputs / "attn.nc"), attentions, mask, tokens)


def test_pt_without_torch_names_the_fix(runner, rng, folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    inputs, outputs = folders
    _, paths = write_inputs(inputs, rng, "pt")
    paths[0].write_bytes(b"a torch.save file")
    result = run_import(runner, *paths, outputs / "attn.nc")
    assert_user_error(result, "attn.pt: reading .pt files needs torch",
                      "Fix: pip install torch, or re-save the tuple with numpy (np.savez)")
    assert list(outputs.iterdir()) == []


def test_import_replaces_an_existing_dataset_atomically(runner, rng, folders):
    inputs, outputs = folders
    _, paths = write_inputs(inputs, rng)
    assert run_import(runner, *paths, outputs / "attn.nc").exit_code == 0
    (attentions, mask, tokens), paths = write_inputs(inputs, rng)
    result = run_import(runner, *paths, outputs / "attn.nc")
    assert result.exit_code == 0, result.output
    assert_matches(ak.open_dataset(outputs / "attn.nc"), attentions, mask, tokens)
    assert [p.name for p in outputs.iterdir()] == ["attn.nc"]


# ----------------------------------------------------------------------------- bad files
def _ragged(inputs, attentions, rng):
    other = hf_batch(rng, layers=1, batch=attentions[0].shape[0], heads=attentions[0].shape[1],
                     n=attentions[0].shape[-1] + 1)[0]
    np.savez(inputs / "attn.npz", *attentions[:1], *other, *attentions[1:])


def _stacked_first_sample(inputs, attentions, rng):
    """(layer, heads, n, n) of one sample in a .npy: read as one layer of a batch of 3."""
    (inputs / "attn.npz").unlink()
    np.save(inputs / "attn.npy", np.stack(attentions)[:, 0])


def _not_summing(inputs, attentions, rng):
    layers = [a.copy() for a in attentions]
    layers[-1][0, 0, 0, :] *= 1.5
    np.savez(inputs / "attn.npz", *layers)


def _scores(inputs, attentions, rng):
    np.savez(inputs / "attn.npz", *(np.log(a + 1e-9) for a in attentions))


BAD = {
    "ragged layers": (_ragged, r"in every layer, like layer 0, got", "in layer 1 ('arr_1')",
                      "Fix: save every layer of one forward pass"),
    "missing batch axis": (lambda i, a, r: np.savez(i / "attn.npz", *(x[0] for x in a)),
                           "attentions: expected shape (batch, heads, n, n) in every layer",
                           "keep the batch axis"),
    "stacked without the batch axis": (_stacked_first_sample, "attention_mask: expected shape (",
                                       ("like the attentions (1 layer of (batch, heads, n, n) "
                                        "= (3,"), "with its batch axis"),
    "rows not summing to 1": (_not_summing, "attentions: expected rows summing to 1",
                              "(worst sum 1.5 at sample 0, layer", "head 0, query 0)"),
    "scores, not probabilities": (_scores, "attentions: expected finite probabilities >= 0",
                                  "negative values", "not scores"),
    "tokens not matching lengths": (
        lambda i, a, r: (i / "tokens.json").write_text(json.dumps([["[CLS]"]] * a[0].shape[0])),
        "tokens[", "tokens (sample", "length in attention_mask",
        "Fix: pass tokenizer.convert_ids_to_tokens(ids)"),
    "too few token lists": (
        lambda i, a, r: (i / "tokens.json").write_text('[["[CLS]", "hi"]]'),
        "tokens: expected one token list per sample", "got 1 lists"),
    "bad token JSON": (lambda i, a, r: (i / "tokens.json").write_text('[["[CLS]", "a"'),
                       "tokens.json: expected valid JSON", "line 1"),
    "token ids instead of tokens": (
        lambda i, a, r: (i / "tokens.json").write_text(json.dumps([[101, 2023, 102]])),
        "tokens.json[0]: expected str tokens, got a number 101 at position 0", "not ids"),
    "flat token list": (lambda i, a, r: (i / "tokens.json").write_text('["[CLS]", "hi"]'),
                        "got a flat list of 2 strings", "wrap one sample's tokens"),
    "empty tokens file": (lambda i, a, r: (i / "tokens.json").write_text(""),
                          "tokens.json: expected tokens", "got an empty file"),
    "left padding": (lambda i, a, r: np.save(i / "mask.npy", np.load(i / "mask.npy")[:, ::-1]),
                     "expected right padding (ones, then zeros), got left padding",
                     "padding_side = 'right'"),
    "mask of another batch": (lambda i, a, r: np.save(i / "mask.npy", np.ones((1, 3), int)),
                              "attention_mask: expected shape (", "got (1, 3)"),
    "input_ids as the mask": (lambda i, a, r: np.save(i / "mask.npy", np.load(i / "mask.npy")
                                                      * 2023),
                              "attention_mask: expected only 0 and 1", "not input_ids"),
    "corrupt attention file": (lambda i, a, r: (i / "attn.npz").write_bytes(b"PK\x03\x04junk"),
                               "attn.npz: expected a readable .npz archive",
                               "got an unreadable file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_fail_clearly_and_write_nothing(runner, rng, folders, case):
    inputs, outputs = folders
    spoil, *fragments = BAD[case]
    # every sample 2+ tokens long and some padded: a [CLS]-only token list never fits,
    # reversing the mask is left padding
    attentions, mask, tokens = hf_batch(rng, layers=3, lengths=[2, *rng.integers(2, 9, 2), 9])
    np.savez(inputs / "attn.npz", *attentions)
    np.save(inputs / "mask.npy", mask)
    (inputs / "tokens.json").write_text(json.dumps(tokens))
    spoil(inputs, attentions, rng)
    attn = next(p for p in inputs.iterdir() if p.name.startswith("attn."))
    for output in ("attn.nc", "attn.zarr"):
        result = run_import(runner, attn, inputs / "tokens.json", inputs / "mask.npy",
                            outputs / output)
        assert_user_error(result, *fragments)
        assert list(outputs.iterdir()) == [], "nothing written, not even a temporary file"


def test_bad_arguments(runner, rng, folders):
    inputs, outputs = folders
    _, paths = write_inputs(inputs, rng)
    result = run_import(runner, *paths, outputs / "attn.csv")
    assert_user_error(result, "--output: expected a path ending in .nc or .zarr",
                      "Fix: e.g. -o attention.nc")
    result = run_import(runner, *paths, outputs / "missing" / "attn.nc")
    assert_user_error(result, "--output: expected an existing folder")
    result = run_import(runner, *paths, outputs / "attn.nc", "--readout", "pooler")
    assert result.exit_code == 2 and "Invalid value for '--readout'" in result.output
    result = run_import(runner, *paths, outputs / "attn.nc", "--atol", "0")
    assert result.exit_code == 2 and "Invalid value for '--atol'" in result.output
    result = runner.invoke(cli, ["import", str(paths[0]), "-o", str(outputs / "attn.nc"),
                                 "--attention-mask", str(paths[2])])
    assert result.exit_code == 2 and "Missing option '--tokens'" in result.output
    result = run_import(runner, inputs / "nope.npz", *paths[1:], outputs / "attn.nc")
    assert result.exit_code == 2 and "does not exist" in result.output
    assert list(outputs.iterdir()) == []


def test_atol_lets_half_precision_rounding_in(runner, rng, folders):
    inputs, outputs = folders
    attentions, mask, tokens = hf_batch(rng, layers=2)
    layers = [a.copy() for a in attentions]
    layers[0][0, 0, 0, :] *= 1.004  # like bfloat16 rounding
    np.savez(inputs / "attn.npz", *layers)
    np.save(inputs / "mask.npy", mask)
    (inputs / "tokens.json").write_text(json.dumps(tokens))
    args = (inputs / "attn.npz", inputs / "tokens.json", inputs / "mask.npy",
            outputs / "attn.nc")
    assert_user_error(run_import(runner, *args), "(atol=0.001)", "--atol 1e-2")
    result = run_import(runner, *args, "--atol", "1e-2")
    assert result.exit_code == 0, result.output
    ak.validate(ak.open_dataset(outputs / "attn.nc"))


# ----------------------------------------------------------------------------- other commands
@pytest.mark.parametrize("command", [["info"], ["analyze", "--quick", "--no-figures"],
                                     ["stats"], ["rollout"], ["correlate"],
                                     ["plot", "--kind", "stats", "-o", "stats.png"]])
@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_other_commands_point_to_attnkit_import(runner, rng, tmp_path, command, suffix):
    attentions, _, _ = hf_batch(rng)
    path = tmp_path / f"attn{suffix}"
    if suffix == ".npz":
        np.savez(path, *attentions)
    elif suffix == ".safetensors":
        save_attentions(path, attentions, "safetensors")
    else:
        path.write_bytes(b"a torch.save file")
    args = [command[0], str(path), *command[1:]]
    if command[0] == "analyze":
        args += ["-o", str(tmp_path / "analysis")]
    result = runner.invoke(cli, args)
    assert_user_error(result, f"{path}: expected an attention dataset (.nc or .zarr), got a "
                              f"{suffix} file", f"Fix: bring it in with `attnkit import {path} "
                              f"--tokens T --attention-mask M -o DS`")
    assert not (tmp_path / "analysis").exists()
