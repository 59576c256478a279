"""The HTML view in a real browser (headless Chromium through selenium; see tests/browser.py).

Each page is loaded from its file with the console and the network recorded: no console
error, no request but the file itself. Then the interactions are driven and the DOM
checked: change the layer, toggle a head, hover a token, open a model-view cell; on an
image dataset, switch the overlay and hover a patch. One browser for the module.
"""

from __future__ import annotations

import numpy as np
import pytest

import attnkit as ak
import browser
from seeds import fresh_seed



@pytest.fixture(scope="module")
def driver():
    browser.require_browser()
    with browser.chrome() as d:
        yield d


@pytest.fixture(scope="module")
def views():
    """The views: a shipped sentence, tokens that need escaping, image datasets."""
    seed = fresh_seed()
    print(f"random seed: {seed}")
    rng = np.random.default_rng(seed)
    nasty = ["[CLS]", "</script>", "<b>bold</b>", "a&amp;b", "<img src=x onerror=alert(1)>",
             "[SEP]"]
    logits = rng.standard_normal((2, 2, len(nasty), len(nasty)))
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return {
        "text": browser.shipped_view(),
        "nasty": ak.view(ak.from_arrays(attn, tokens=nasty)),
        "image": ak.view(browser.image_dataset(rng)),
        "grid": ak.view(browser.image_dataset(rng, image=False, saliency=False,
                                              attribution=False, grid=(4, 5))),
    }


@pytest.fixture(scope="module")
def pages(views, tmp_path_factory):
    """Each view saved: name -> (path, data)."""
    folder = tmp_path_factory.mktemp("views")
    return {name: (v.save(folder / f"{name}.html"), v.data) for name, v in views.items()}


def open_page(driver, path):
    """Load a page; check it logged no error and requested nothing but itself."""
    url = browser.load(driver, path)
    assert browser.console_errors(driver) == []
    assert browser.network_requests(driver) == [url]
    return url


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def links(driver):
    """The drawn links as (head, query, key) tuples."""
    return [tuple(int(x) for x in t) for t in js(driver, """
        return Array.from(document.querySelectorAll('#ak-links path')).map(
            p => [p.dataset.h, p.dataset.q, p.dataset.k]);""")]


def by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def hover(driver, element, x=None, y=None):
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver)
    if x is None:
        chain.move_to_element(element)
    else:
        chain.move_to_element_with_offset(element, x, y)
    chain.perform()


def assert_clean(driver):
    assert browser.console_errors(driver) == []
    assert browser.network_requests(driver) == []


# ----------------------------------------------------------------------------- text
def test_text_page_renders_offline(driver, pages):
    path, data = pages["text"]
    open_page(driver, path)
    tokens = js(driver, "return Array.from(document.querySelectorAll('#ak-queries .ak-tok'))"
                        ".map(t => t.textContent)")
    assert tokens == data["tokens"]
    assert js(driver, "return document.querySelectorAll('#ak-modelview .ak-cell').length") == 72
    assert js(driver, "return document.querySelectorAll('.ak-strip').length") == len(data["scores"])
    assert data["text"] in by_css(driver, ".ak-text").text
    assert f"sample {browser.SENTENCE} of 270" in by_css(driver, ".ak-sub").text
    assert len(links(driver)) > 50
    assert not browser.is_blank(browser.screenshot(driver))


def test_change_layer(driver, pages):
    path, data = pages["text"]
    open_page(driver, path)
    from selenium.webdriver.support.ui import Select

    root = by_css(driver, "#ak-root")
    assert root.get_attribute("data-layer") == "5"
    before = links(driver)
    strip = by_css(driver, '.ak-strip[data-score="rollout"]')
    values_before = js(driver, "return Array.from(arguments[0].querySelectorAll('.ak-score-tok'))"
                               ".map(c => c.dataset.value)", strip)
    Select(by_css(driver, "#ak-layer")).select_by_visible_text("0")
    assert root.get_attribute("data-layer") == "0"
    after = links(driver)
    assert after and after != before
    assert strip.get_attribute("data-layer") == "0"
    values_after = js(driver, "return Array.from(arguments[0].querySelectorAll('.ak-score-tok'))"
                              ".map(c => c.dataset.value)", strip)
    rollout = next(s for s in data["scores"] if s["name"] == "rollout")
    assert [float(v) for v in values_after] == pytest.approx(rollout["values"][0])
    assert values_after != values_before
    # the model view marks layer 0 as the current one
    current = js(driver, "return Array.from(document.querySelectorAll('.ak-cell.ak-current'))"
                         ".map(c => c.dataset.layer)")
    assert set(current) == {"0"} and len(current) == 12
    assert_clean(driver)


def test_toggle_head(driver, pages):
    open_page(driver, pages["text"][0])
    chip = by_css(driver, '.ak-chip[data-head="0"]')
    assert any(h == 0 for h, _, _ in links(driver))
    chip.click()
    assert "ak-off" in chip.get_attribute("class")
    assert chip.get_attribute("aria-pressed") == "false"
    drawn = links(driver)
    assert drawn and all(h != 0 for h, _, _ in drawn)
    assert by_css(driver, "#ak-root").get_attribute("data-heads") == ",".join(map(str, range(1, 12)))
    by_css(driver, "#ak-heads-none").click()
    assert links(driver) == []
    chip.click()
    assert {h for h, _, _ in links(driver)} == {0}
    assert_clean(driver)


def test_hover_token(driver, pages):
    path, data = pages["text"]
    open_page(driver, path)
    everything = links(driver)
    assert len({q for _, q, _ in everything}) > 1
    token = by_css(driver, '#ak-queries .ak-tok[data-i="3"]')
    hover(driver, token)
    head_view = by_css(driver, "#ak-headview")
    assert head_view.get_attribute("data-hover") == "left:3"
    assert "ak-active" in token.get_attribute("class")
    drawn = links(driver)
    assert drawn and {q for _, q, _ in drawn} == {3}
    assert drawn != everything
    # the keys it attends to are marked, with the weights of row 3
    linked = js(driver, "return Array.from(document.querySelectorAll('#ak-keys .ak-linked'))"
                        ".map(t => +t.dataset.i)")
    assert linked and set(linked) == {k for _, _, k in drawn} & set(linked)
    assert data["tokens"][3] in by_css(driver, "#ak-link-info").text
    # a key token: the links into it
    hover(driver, by_css(driver, '#ak-keys .ak-tok[data-i="0"]'))
    assert head_view.get_attribute("data-hover") == "right:0"
    assert {k for _, _, k in links(driver)} == {0}
    # leaving the head view restores every link
    hover(driver, by_css(driver, ".ak-title"))
    assert head_view.get_attribute("data-hover") == ""
    assert links(driver) == everything
    assert_clean(driver)


def test_open_model_view_cell(driver, pages):
    open_page(driver, pages["text"][0])
    cell = by_css(driver, '.ak-cell[data-layer="2"][data-head="7"]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    cell.click()
    root = by_css(driver, "#ak-root")
    assert root.get_attribute("data-layer") == "2"
    assert root.get_attribute("data-heads") == "7"
    assert by_css(driver, "#ak-layer").get_attribute("value") == "2"  # option index = layer 2
    drawn = links(driver)
    assert drawn and {h for h, _, _ in drawn} == {7}
    assert "ak-current" in cell.get_attribute("class")
    offs = js(driver, "return Array.from(document.querySelectorAll('.ak-chip.ak-off'))"
                      ".map(c => c.dataset.head)")
    assert sorted(offs, key=int) == [str(h) for h in range(12) if h != 7]
    assert_clean(driver)


def test_tokens_render_as_text(driver, pages):
    path, data = pages["nasty"]
    open_page(driver, path)
    texts = js(driver, "return Array.from(document.querySelectorAll('#ak-queries .ak-tok'))"
                       ".map(t => t.textContent)")
    assert texts == data["tokens"]
    assert js(driver, "return document.querySelectorAll('#ak-root b, #ak-root img').length") == 0
    assert js(driver, "return document.scripts.length") == 2
    assert_clean(driver)


def test_notebook_frame(driver, views, tmp_path):
    """What Jupyter shows (_repr_html_): the page in an iframe's srcdoc, working the same."""
    from selenium.webdriver.support.ui import WebDriverWait

    notebook = tmp_path / "notebook.html"
    notebook.write_text(f"<!DOCTYPE html><html><body>{views['nasty']._repr_html_()}</body></html>",
                        encoding="utf-8")
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(notebook.resolve().as_uri())
    driver.switch_to.frame(by_css(driver, "iframe"))
    try:
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(
            "var r = document.getElementById('ak-root'); return r && r.dataset.ready;"))
        texts = js(driver, "return Array.from(document.querySelectorAll('#ak-queries .ak-tok'))"
                           ".map(t => t.textContent)")
        assert texts == views["nasty"].data["tokens"]
    finally:
        driver.switch_to.default_content()
    assert browser.console_errors(driver) == []
    requests = browser.network_requests(driver)
    assert requests and all(url in (notebook.resolve().as_uri(), "about:srcdoc")
                            for url in requests), requests


# ----------------------------------------------------------------------------- images
def overlay_state(driver):
    return js(driver, """
        var c = document.getElementById('ak-overlay-canvas');
        return [c.dataset.mode, c.dataset.patch, c.toDataURL(),
                document.getElementById('ak-overlay-caption').textContent];""")


def test_image_overlay(driver, pages):
    path, data = pages["image"]
    open_page(driver, path)
    from selenium.webdriver.support.ui import Select

    overlay = by_css(driver, "#ak-overlay-canvas")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", overlay)
    mode, patch, pixels, caption = overlay_state(driver)
    assert mode == "attn" and patch == "" and "[CLS] attention" in caption
    select = Select(by_css(driver, "#ak-overlay"))
    options = [o.get_attribute("value") for o in select.options]
    assert options == ["attn", "score:raw", "score:rollout", "score:flow",
                       "score:attribution:input_x_gradient",
                       "score:attribution:integrated_gradients", "saliency", "none"]
    seen = {pixels}
    for value, words in (("saliency", "saliency map"), ("score:rollout", "rollout"),
                         ("score:attribution:input_x_gradient", "input_x_gradient")):
        select.select_by_value(value)
        mode, patch, pixels, caption = overlay_state(driver)
        assert mode == value and words in caption
        assert pixels not in seen  # the overlay was redrawn with other values
        seen.add(pixels)

    # hover patch (r, c) = (1, 4) of the 6 x 6 grid: its attention row replaces the overlay
    rows, cols = data["grid"]
    width, height = overlay.size["width"], overlay.size["height"]
    r, c = 1, 4
    x = (c + 0.5) / cols * width - width / 2
    y = (r + 0.5) / rows * height - height / 2
    hover(driver, overlay, int(x), int(y))
    mode, patch, pixels, caption = overlay_state(driver)
    assert mode == "patch" and patch == f"{r},{c}"
    assert f"patch ({r}, {c}) attends to" in caption
    assert pixels not in seen
    # another layer changes what the patch attends to
    Select(by_css(driver, "#ak-layer")).select_by_visible_text("0")
    hover(driver, overlay, int(x), int(y))
    assert overlay_state(driver)[2] != pixels
    hover(driver, by_css(driver, ".ak-title"))
    assert overlay_state(driver)[0] == "score:attribution:input_x_gradient"
    assert not browser.is_blank(browser.screenshot(driver, element=by_css(driver, ".ak-stack")))
    assert_clean(driver)


def test_grid_without_image(driver, pages):
    open_page(driver, pages["grid"][0])
    mode, _, pixels, _ = overlay_state(driver)
    assert mode == "attn"
    assert js(driver, "return document.getElementById('ak-overlay-canvas').width") == 5 * 24
    from selenium.webdriver.support.ui import Select

    Select(by_css(driver, "#ak-overlay")).select_by_value("none")
    assert overlay_state(driver)[0] == "none"
    assert overlay_state(driver)[2] != pixels
    assert_clean(driver)
