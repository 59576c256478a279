"""Headless Chromium for the HTML view's tests, driven by selenium.

:func:`chrome` starts the Debian ``chromium`` through ``chromedriver`` with the
browser console and the DevTools performance log recorded; :func:`console_errors`
and :func:`network_requests` read them back; :func:`screenshot` saves a PNG and
:func:`is_blank` tells whether one shows anything.

Where Chromium or chromedriver is missing, :func:`require_browser` skips the
test, or fails it when ``$CI`` is set (CI must run the browser tests): install
them with ``apt-get install chromium chromium-driver`` or ``make test``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

INSTALL_HINT = ("the HTML view's browser tests need headless Chromium: "
                "`sudo apt-get install chromium chromium-driver` (or `make test`, which installs "
                "them when missing)")
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
#: Window size of every test (and of the README screenshot).
WINDOW = (1400, 1000)


def find_browser() -> tuple[str | None, str | None]:
    """Paths of the Chromium binary and of chromedriver (None where missing)."""
    browser = next((p for p in map(shutil.which, BROWSER_NAMES) if p), None)
    driver = next((p for p in map(shutil.which, DRIVER_NAMES) if p), None)
    return browser, driver


def require_browser() -> tuple[str, str]:
    """The browser and driver paths, or skip (fail under ``$CI``) naming what to install."""
    import pytest

    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "selenium is not installed (pip install -e '.[test]')"
    else:
        browser, driver = find_browser()
        if browser and driver:
            return browser, driver
        missing = ", ".join(name for name, path in (("chromium", browser),
                                                    ("chromedriver", driver)) if not path)
        missing = f"{missing} not found"
    message = f"{missing}: {INSTALL_HINT}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def chrome(window=WINDOW):
    """A headless Chromium driver recording the console and the network; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={window[0]},{window[1]}", "--hide-scrollbars",
                "--force-device-scale-factor=1", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True,
                                                         "enablePage": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def load(driver, path) -> str:
    """Open the file ``path``; wait until the page's script has built it. Returns its URL."""
    from selenium.webdriver.support.ui import WebDriverWait

    url = Path(path).resolve().as_uri()
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get_log("browser")
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "var r = document.getElementById('ak-root'); return r && r.getAttribute('data-ready');"))
    return url


def console_errors(driver) -> list[str]:
    """Console messages at level SEVERE (errors, uncaught exceptions) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"]


def network_requests(driver) -> list[str]:
    """URLs of every request the page sent since the last call (DevTools performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def is_blank(png: bytes, min_std: float = 0.02) -> bool:
    """True when a PNG is (nearly) one flat colour: pixel standard deviation below ``min_std``."""
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return float(pixels.std()) < min_std


def screenshot(driver, path=None, element=None) -> bytes:
    """A PNG of the window (or of ``element``); written to ``path`` when given."""
    png = element.screenshot_as_png if element is not None else driver.get_screenshot_as_png()
    if path is not None:
        Path(path).write_bytes(png)
    return png


# ----------------------------------------------------------------------------- view fixtures
REPO = Path(__file__).resolve().parents[1]
#: The shipped text dataset, and a sentence of it the view tests (and the README) show.
SHIPPED = REPO / "datasets" / "minilm" / "minilm.nc"
SENTENCE = 8  # "Grateful for any help or suggestions you could provide."


def shipped_sentence(sample: int = SENTENCE):
    """One sentence of the shipped MiniLM dataset (read lazily: only that sample)."""
    import attnkit as ak

    ds = ak.open_dataset(SHIPPED, chunks={"sample": 1})
    try:
        return ds.isel(sample=[sample]).load()
    finally:
        ds.close()


def shipped_view(sample: int = SENTENCE, **kwargs):
    """``ak.view`` of one sentence of the shipped MiniLM dataset (only that sample is read)."""
    import attnkit as ak

    ds = ak.open_dataset(SHIPPED, chunks={"sample": 1})
    try:
        return ak.view(ds, sample=sample, **kwargs)
    finally:
        ds.close()


def image_dataset(rng, *, grid=(6, 6), layers=3, heads=4, image=True, saliency=True,
                  attribution=True, size=(96, 120)):
    """A synthetic image dataset: [CLS] + a patch grid, softmax attention, optional uint8
    image (sample, y, x, channel), saliency (sample, y, x) and attributions."""
    import numpy as np
    import xarray as xr

    import attnkit as ak

    rows, cols = grid
    n = 1 + rows * cols
    logits = 2.0 * rng.standard_normal((layers, heads, n, n))
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    ds = ak.from_arrays(attn, model="toy-vit", attrs={"grid": (rows, cols), "readout": "cls"})
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    if image:
        pixels = np.stack([yy * 255 // h, xx * 255 // w, 255 - (yy + xx) * 255 // (h + w)], -1)
        noise = rng.integers(0, 40, size=pixels.shape)
        ds["image"] = (("sample", "y", "x", "channel"),
                       np.clip(pixels + noise, 0, 255).astype(np.uint8)[None])
    if saliency:
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ds["saliency"] = (("sample", "y", "x"),
                          np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 * h * w))[None])
    if attribution:
        ds["attribution"] = xr.DataArray(
            rng.standard_normal((1, n, 2)), dims=("sample", "position", "attribution_method"),
            coords={"attribution_method": ["input_x_gradient", "integrated_gradients"]})
    return ds
