"""``ak.view`` and ``attnkit view`` without a browser: what the page embeds, its escaping,
its size, its errors, and the command (the browser drives the page in test_view_browser.py)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from click.testing import CliRunner

import attnkit as ak
from attnkit.view import DEFAULT_MAX_TOKENS, decode_attention
from attnkit.view._payload import QUANT
from attnkit_cli.main import cli
from browser import SENTENCE, SHIPPED, image_dataset, shipped_sentence
from cli_checks import assert_user_error

#: Half a quantisation step (plus float slack): the most a decoded weight may differ.
STEP = 0.5 / QUANT + 1e-7
MAX_PAGE_BYTES = 5_000_000


def softmax_dataset(rng, n=7, layers=2, heads=3, tokens=None, **kwargs):
    logits = rng.standard_normal((layers, heads, n, n))
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return ak.from_arrays(a, tokens=tokens, **kwargs)


def embedded_json(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="ak-data">(.*?)</script>', page, re.S)
    assert match, "no data block"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def sentence():
    return shipped_sentence()


@pytest.fixture(scope="module")
def sentence_view(sentence):
    return ak.view(sentence)


# ----------------------------------------------------------------------------- payload
def test_weights_are_the_datasets_attention(sentence, sentence_view):
    data = sentence_view.data
    n = int(sentence.length.values[0])
    assert data["n"] == n and data["attention"]["mode"] == "dense"
    assert data["tokens"] == [str(t) for t in sentence.token.values[0, :n]]
    assert data["text"] == str(sentence.text.values[0])
    expected = sentence.attention.values[0, :, :, :n, :n]
    got = decode_attention(data)
    assert got.shape == expected.shape == (6, 12, n, n)
    np.testing.assert_allclose(got, expected, atol=STEP, rtol=0)
    # what the page holds is what .data says
    assert embedded_json(sentence_view.html) == json.loads(json.dumps(data))


def test_scores_computed_and_stored(sentence, sentence_view):
    data = sentence_view.data
    names = [s["name"] for s in data["scores"]]
    stored = ([f"impact:{m}" for m in sentence.method.values]
              + [f"attribution:{m}" for m in sentence.attribution_method.values])
    assert names == ["raw", "rollout", "flow", "grad"] + stored
    n = data["n"]
    by_name = {s["name"]: s for s in data["scores"]}
    for kind in ("raw", "rollout", "flow", "grad"):
        expected = ak.attention_scores(sentence, kind).values[0, :, :n]
        got = np.array(by_name[kind]["values"], dtype=float)
        assert by_name[kind]["by_layer"] and got.shape == (6, n)
        np.testing.assert_allclose(got, expected, rtol=6e-4, atol=1e-12)
    for i, m in enumerate(sentence.method.values):
        got = np.array(by_name[f"impact:{m}"]["values"], dtype=float)
        np.testing.assert_allclose(got, sentence.impact.values[0, :n, i], rtol=6e-4,
                                   equal_nan=True)
    attribution = by_name["attribution:input_x_gradient"]
    assert not attribution["by_layer"]
    assert attribution["signed"] == bool(np.nanmin(sentence.attribution.values[0, :n, 0]) < 0)
    assert data["score_target"]


def test_scores_none_and_chosen(rng):
    ds = softmax_dataset(rng)
    assert ak.view(ds, scores=None).data["scores"] == []
    assert [s["name"] for s in ak.view(ds, scores=["rollout"]).data["scores"]] == ["rollout"]
    assert [s["name"] for s in ak.view(ds, scores="raw").data["scores"]] == ["raw"]


def test_chosen_layers_and_heads(sentence):
    v = ak.view(sentence, layers=[0, -1], heads=3)
    assert v.data["layers"] == [0, 5] and v.data["heads"] == [3]
    expected = sentence.attention.values[0][np.ix_([0, 5], [3])][..., :v.data["n"], :v.data["n"]]
    np.testing.assert_allclose(decode_attention(v.data), expected, atol=STEP, rtol=0)
    assert any("2 of 6 layers and 1 of 12 heads" in note for note in v.notes)
    assert "2 of 6 layers and 1 of 12 heads" in embedded_json(v.html)["notes"][0]
    # layer-wise scores follow the chosen layers (layer l still uses layers 0..l)
    rollout = next(s for s in v.data["scores"] if s["name"] == "rollout")
    expected = ak.attention_scores(sentence, "rollout", layers=[0, 5]).values[0, :, :v.data["n"]]
    np.testing.assert_allclose(np.array(rollout["values"], dtype=float), expected, rtol=6e-4)


def test_long_inputs_keep_the_top_k_of_each_row_and_say_so(rng):
    n = DEFAULT_MAX_TOKENS + 22
    ds = softmax_dataset(rng, n=n, layers=1, heads=2)
    v = ak.view(ds, scores=None)
    meta = v.data["attention"]
    assert meta["mode"] == "topk" and meta["k"] == 32
    assert v.notes and "only the 32 largest weights" in v.notes[0]
    assert "only the 32 largest weights" in v.html
    full = ds.attention.values[0]
    got = decode_attention(v.data)
    kept = got > 0
    assert (kept.sum(-1) == 32).all()
    np.testing.assert_allclose(got[kept], full[kept], atol=STEP, rtol=0)
    # the kept ones are the largest of each row
    threshold = np.sort(full, axis=-1)[..., -32]
    assert (full[kept].reshape(1, 2, n, 32) >= threshold[..., None] - 1e-12).all()
    # top_k and max_tokens by hand
    assert ak.view(ds, scores=None, top_k=5).data["attention"]["k"] == 5
    assert ak.view(ds, scores=None, max_tokens=n).data["attention"]["mode"] == "dense"
    small = softmax_dataset(rng, n=9)
    assert ak.view(small, top_k=3, scores=None).data["attention"]["mode"] == "topk"
    assert ak.view(small, max_tokens=4, top_k=50, scores=None).data["attention"]["k"] == 9


def test_flow_skipped_for_long_inputs_unless_asked(rng):
    ds = softmax_dataset(rng, n=140, layers=1, heads=1)
    v = ak.view(ds)
    assert "flow" not in [s["name"] for s in v.data["scores"]]
    assert any("attention flow not computed" in note for note in v.notes)


def test_array_input_and_defaults(rng):
    a = softmax_dataset(rng, n=5).attention.values[0]  # (layer, head, query, key)
    v = ak.view(a)
    assert v.data["tokens"] == ["0", "1", "2", "3", "4"]
    np.testing.assert_allclose(decode_attention(v.data), a, atol=STEP, rtol=0)
    assert "5 tokens" in repr(v) and "dense" in repr(v)


def test_ragged_sample_uses_its_length(rng):
    a = [softmax_dataset(rng, n=n, layers=1, heads=2).attention.values[0] for n in (4, 7)]
    ds = ak.from_arrays(a, tokens=[list("abcd"), list("uvwxyzq")])
    v = ak.view(ds, sample=0)
    assert v.data["n"] == 4 and v.data["tokens"] == list("abcd")
    assert decode_attention(v.data).shape == (1, 2, 4, 4)


# ----------------------------------------------------------------------------- page
NASTY = ["[CLS]", "</script>", "<b>bold</b>", "a&amp;b", "\"quote'", "<!--", "\u2028x",
         "<img src=x onerror=alert(1)>", "[SEP]"]


def test_tokens_are_escaped(rng):
    v = ak.view(softmax_dataset(rng, n=len(NASTY), tokens=NASTY))
    page = v.html
    assert page.count("</script>") == 2  # the data block's end and the script's end
    assert page.lower().count("<script") == 2
    for token in NASTY[2:-1]:  # "</script>" itself: counted above
        if any(c in token for c in "<>&"):
            assert token not in page, token
    assert "<b>" not in page and "<img" not in page and "<!--" not in page
    assert embedded_json(page)["tokens"] == NASTY


def test_page_is_offline():
    v = ak.view(np.full((1, 2, 3, 3), 1 / 3))
    page = v.html
    assert not re.search(r"https?:|//[a-z0-9]", page, re.I)  # no URL at all
    for fragment in (" src=", " href=", "url(", "@import", "fetch(", "XMLHttpRequest",
                     "WebSocket", "<link", "<iframe"):
        assert fragment.lower() not in page.lower(), fragment
    assert "default-src 'none'" in page  # the browser refuses any request anyway


def test_shipped_sentence_page_is_under_5_mb(tmp_path):
    ds = ak.open_dataset(SHIPPED, chunks={"sample": 1})
    try:
        longest = int(np.argmax(ds.length.values))
        start = time.perf_counter()
        v = ak.view(ds, sample=longest)
        seconds = time.perf_counter() - start
    finally:
        ds.close()
    assert v.data["n"] == 62
    path = v.save(tmp_path / "longest.html")
    size = path.stat().st_size
    print(f"longest shipped sentence ({v.data['n']} tokens): {size / 1e6:.2f} MB in "
          f"{seconds:.2f} s")
    assert size == v.nbytes < MAX_PAGE_BYTES
    assert v.data["attention"]["mode"] == "dense"


def test_save_is_atomic_and_repr_html(tmp_path, rng):
    v = ak.view(softmax_dataset(rng, tokens=list("abcdefg")))
    path = v.save(tmp_path / "v.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.html"]
    assert path.read_text(encoding="utf-8") == v.html
    frame = v._repr_html_()
    assert frame.startswith("<iframe srcdoc=\"") and "<script" not in frame
    assert "&lt;script" in frame


def test_image_dataset_payload(rng):
    ds = image_dataset(rng, size=(60, 90))
    ak.validate(ds)
    v = ak.view(ds)
    data = v.data
    assert data["grid"] == [6, 6] and data["tokens"][:2] == ["[CLS]", "(0,0)"]
    assert data["image"]["height"] == 60 and data["image"]["width"] == 90
    assert data["saliency"]["width"] == 90
    import base64

    pixels = np.frombuffer(base64.b64decode(data["image"]["pixels"]), np.uint8)
    np.testing.assert_array_equal(pixels.reshape(60, 90, 3), ds.image.values[0])
    assert [s["name"] for s in data["scores"]] == [
        "raw", "rollout", "flow", "attribution:input_x_gradient",
        "attribution:integrated_gradients"]


def test_image_downsampled_and_grid_only(rng):
    big = image_dataset(rng, size=(800, 500), attribution=False)
    data = ak.view(big, scores=None).data
    assert max(data["image"]["height"], data["image"]["width"]) <= 384
    assert data["saliency"]["height"] == data["image"]["height"]
    bare = image_dataset(rng, image=False, saliency=False, attribution=False)
    data = ak.view(bare, scores=None).data
    assert data["grid"] == [6, 6] and data["image"] is None and data["saliency"] is None


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    ({"sample": 1}, r"sample: expected a position in \[0, 1\), got 1"),
    ({"sample": True}, r"sample: expected a position"),
    ({"layers": 2}, r"layers: expected an int layer index in \[0, 2\), got 2"),
    ({"layers": []}, r"layers: expected at least one layer index"),
    ({"heads": [0, 3]}, r"heads: expected an int head index in \[0, 3\), got 3"),
    ({"heads": "0"}, r"heads: expected an int head index in \[0, 3\), got '0'"),
    ({"scores": ["rollout", "mystery"]}, r"scores: expected 'auto', None or a list of"),
    ({"scores": "grad"}, r"for kind='grad'"),
    ({"scores": ["impact"]}, r"scores: expected a dataset with an `impact` variable"),
    ({"max_tokens": 0}, r"max_tokens: expected a positive int, got 0"),
    ({"top_k": 0}, r"top_k: expected a positive int, got 0"),
])
def test_errors(rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ak.view(softmax_dataset(rng), **kwargs)


def test_errors_on_bad_datasets(rng):
    ds = softmax_dataset(rng, n=5)
    with pytest.raises(ValueError, match=r"grid.*1 \+ rows\*cols <= 5"):
        ak.view(ds.assign_attrs(grid=(3, 3)))
    with pytest.raises(ValueError, match=r"ds: expected an attention dataset.*no `length`"):
        ak.view(ds.drop_vars("length"))
    with pytest.raises(ValueError, match=r"ds: expected an attention dataset"):
        ak.view("attention.nc")


# ----------------------------------------------------------------------------- the command
def test_cli_view(tmp_path):
    out = tmp_path / "view.html"
    result = CliRunner().invoke(cli, ["view", str(SHIPPED), "-o", str(out), "--sample",
                                      str(SENTENCE), "--layers", "0,2", "--layers", "5",
                                      "--heads", "1,3"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "MB" in result.output
    assert "note: only the chosen 3 of 6 layers and 2 of 12 heads" in result.output
    data = embedded_json(out.read_text(encoding="utf-8"))
    assert data["sample"] == SENTENCE and data["layers"] == [0, 2, 5] and data["heads"] == [1, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.html"]


def test_cli_view_options(tmp_path, rng):
    path = tmp_path / "long.nc"
    ak.save_dataset(softmax_dataset(rng, n=20, layers=1, heads=1), path)
    out = tmp_path / "v.html"
    result = CliRunner().invoke(cli, ["view", str(path), "-o", str(out), "--max-tokens", "10",
                                      "--top-k", "4", "--scores", "raw,rollout", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    data = embedded_json(out.read_text(encoding="utf-8"))
    assert data["attention"]["mode"] == "topk" and data["attention"]["k"] == 4
    assert [s["name"] for s in data["scores"]] == ["raw", "rollout"]
    result = CliRunner().invoke(cli, ["view", str(path), "-o", str(out), "--scores", "none"])
    assert result.exit_code == 0 and embedded_json(out.read_text())["scores"] == []


@pytest.mark.parametrize("args, fragments", [
    (["--sample", "270"], ["--sample: expected a position in [0, 270), got 270"]),
    (["--layers", "0,6"], ["--layers: expected an int layer index in [0, 6), got 6"]),
    (["--heads", "12"], ["--heads: expected an int head index in [0, 12), got 12"]),
    (["--heads", "one"], ["--heads: expected comma-separated ints, got 'one'"]),
    (["--layers", ","], ["--layers: expected at least one index"]),
    (["--scores", "vibes"], ["--scores: expected auto, none or names"]),
    (["-o", "view.txt"], ["--output: expected a path ending in .html or .htm"]),
])
def test_cli_view_errors(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    argv = ["view", str(SHIPPED), *args]
    if "-o" not in args:
        argv += ["-o", "v.html"]
    assert_user_error(CliRunner().invoke(cli, argv), *fragments)
    assert list(tmp_path.iterdir()) == []
